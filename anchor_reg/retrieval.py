"""The label-free dev criterion (``dev_criterion: anchor_retrieval``): 1 - accuracy of finding each dev
row's own anchor (the frozen base's clean embedding) as the nearest, by cosine, to its noisy copy."""
import torch
import torch.nn.functional as F


def retrieval_error(queries, own, gallery):
    """Fraction of (Q, D) or (Q, 1, D) queries whose nearest (N, D) ``gallery`` entry is not (Q,) ``own``."""
    if queries.shape[0] == 0:
        return 0.0
    queries = F.normalize(queries.reshape(queries.shape[0], -1).float(), dim=-1)
    gallery = F.normalize(gallery.float(), dim=-1)
    nearest = (queries @ gallery.T).argmax(dim=-1)
    return float((nearest != own.to(nearest.device)).float().mean())


def own_rows_error(queries, ids, store):
    """:func:`retrieval_error` of (Q, D) queries of rows ``ids`` among the anchors of those rows alone in ``store``."""
    return retrieval_error(queries, torch.arange(len(ids)), store.embeddings[store.rows(ids)])


class AnchorRetrievalStats:
    """Dev statistics (``append`` / ``summarize`` as ``error_stats``): the retrieval error against ``store``."""

    def __init__(self, store):
        self.store = store
        self.ids, self.embeddings = [], []

    def append(self, ids, embeddings):
        """Adds the noisy copies' (B,) row IDs and (B, D) or (B, 1, D) embeddings."""
        self.ids.extend(ids)
        self.embeddings.append(embeddings.detach().reshape(len(ids), -1).float().cpu())

    def summarize(self, field=None):
        """The retrieval error over every appended query (``field`` as in ``MetricStats.summarize``)."""
        if not self.ids:
            return 0.0
        return retrieval_error(torch.cat(self.embeddings), self.store.rows(self.ids), self.store.embeddings)
