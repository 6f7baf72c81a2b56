"""The label-free development criterion: noisy -> anchor retrieval (``dev_criterion: anchor_retrieval``).

Each dev row's fixed noisy copy (:mod:`anchor_reg.data.dev_copies`) is embedded
by the model being trained and counted correct when, among the anchors of all
dev rows (the frozen base's clean embeddings), the nearest by cosine is its own
row's. The criterion is ``1 - accuracy``: it needs no labels, and it measures
exactly what the anchors ask of the model, noise invariance relative to the
frozen base's geometry.
"""
import torch
import torch.nn.functional as F


def retrieval_error(queries, own, gallery):
    """Fraction of queries whose nearest gallery entry (cosine) is not their own.

    Arguments
    ---------
    queries : torch.Tensor
        (Q, D) or (Q, 1, D) embeddings (the dev rows' noisy copies).
    own : torch.Tensor
        (Q,) index in ``gallery`` of each query's own anchor.
    gallery : torch.Tensor
        (N, D) anchors of all dev rows.

    Returns
    -------
    float
        In [0, 1]; 0.0 for no query.

    Example
    -------
    >>> retrieval_error(torch.tensor([[1.0, 0.1], [1.0, 0.0]]), torch.tensor([0, 1]), torch.eye(2))
    0.5
    """
    if queries.shape[0] == 0:
        return 0.0
    queries = F.normalize(queries.reshape(queries.shape[0], -1).float(), dim=-1)
    gallery = F.normalize(gallery.float(), dim=-1)
    nearest = (queries @ gallery.T).argmax(dim=-1)
    return float((nearest != own.to(nearest.device)).float().mean())


class AnchorRetrievalStats:
    """Collects dev embeddings over an epoch; ``summarize()`` is the retrieval error.

    Used in place of the classification ``error_stats`` (same ``append`` /
    ``summarize`` calls), so the value is logged, early-stopped on and
    checkpointed as ``ErrorRate``.

    Arguments
    ---------
    store : anchor_reg.anchors.AnchorStore
        The anchors of every dev row (the gallery), from the same frozen base as the training anchors.
    """

    def __init__(self, store):
        self.store = store
        self.ids, self.embeddings = [], []

    def append(self, ids, embeddings):
        """Adds the noisy copies' (B,) row IDs and (B, D) or (B, 1, D) embeddings."""
        self.ids.extend(ids)
        self.embeddings.append(embeddings.detach().reshape(len(ids), -1).float().cpu())

    def summarize(self, field=None):
        """The retrieval error over every appended query (``field`` is accepted for ``MetricStats``' call)."""
        if not self.ids:
            return 0.0
        own = self.store.rows(self.ids)
        return retrieval_error(torch.cat(self.embeddings), own, self.store.embeddings)
