"""The anchor-distance loss of stage 2 and the weight schedule that drives it.

Stage 2 keeps each (noisy) embedding close to a fixed anchor computed once by the
frozen base model::

    loss = AAM(classifier(emb)) + weight(epoch) * AnchorDistanceLoss(emb, anchor)

The anchors never require grad; the gradient only moves the embedding.
"""
import torch
import torch.nn.functional as F

DISTANCES = ("cosine", "l2")


def anchor_distance(embeddings, anchors, distance="cosine"):
    """Per-row distance between embeddings and anchors.

    Arguments
    ---------
    embeddings : torch.Tensor
        (B, D) or (B, 1, D) embeddings.
    anchors : torch.Tensor
        (B, D) or (B, 1, D) anchors, row-aligned with ``embeddings``.
    distance : str
        ``cosine``: ``1 - cos(e, a)`` in [0, 2];
        ``l2``: ``||e/|e| - a/|a| ||^2`` in [0, 4] (= 2 * cosine distance, but a
        different gradient scale; kept separate because that is what users tune).

    Returns
    -------
    torch.Tensor
        (B,) distances, computed in float32 (float64 for float64 inputs).
    """
    if distance not in DISTANCES:
        raise ValueError(
            f"anchor_distance: unknown distance '{distance}', expected one of {DISTANCES}"
        )
    # at least float32: under fp16/bf16 autocast the embeddings arrive in half
    # precision, whose 8-bit (bf16) mantissa cannot resolve small distances
    dtype = torch.promote_types(embeddings.dtype, torch.float32)
    emb = embeddings.reshape(embeddings.shape[0], -1).to(dtype)
    anc = anchors.reshape(anchors.shape[0], -1).to(dtype)
    if emb.shape != anc.shape:
        raise ValueError(
            f"anchor_distance: embeddings {tuple(emb.shape)} and anchors "
            f"{tuple(anc.shape)} are not row-aligned"
        )
    emb = F.normalize(emb, dim=-1)
    anc = F.normalize(anc, dim=-1)
    if distance == "cosine":
        return 1.0 - (emb * anc).sum(dim=-1)
    return (emb - anc).pow(2).sum(dim=-1)


class AnchorDistanceLoss(torch.nn.Module):
    """Weighted mean distance between embeddings and their fixed anchors.

    Arguments
    ---------
    weight : float
        λ, the weight of the term (the schedule, if any, scales it further).
    distance : str
        ``cosine`` or ``l2`` (see :func:`anchor_distance`).
    detach_target : bool
        Stop the gradient on the anchors (always true for fixed anchors; the
        joint baseline sets False so its online clean target is trained too).

    Example
    -------
    >>> loss = AnchorDistanceLoss(weight=2.0)
    >>> emb = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    >>> float(loss(emb, emb))
    0.0
    >>> float(loss(emb, -emb))
    4.0
    """

    def __init__(self, weight=1.0, distance="cosine", detach_target=True):
        super().__init__()
        if distance not in DISTANCES:
            raise ValueError(
                f"AnchorDistanceLoss: unknown distance '{distance}', "
                f"expected one of {DISTANCES} (YAML key anchor_distance)"
            )
        self.weight = float(weight)
        self.distance = distance
        self.detach_target = detach_target

    def forward(self, embeddings, anchors, scale=1.0):
        """Returns ``scale * weight * mean_b distance(embeddings[b], anchors[b])``.

        Arguments
        ---------
        embeddings : torch.Tensor
            (B, D) or (B, 1, D).
        anchors : torch.Tensor
            (B, D) or (B, 1, D), row-aligned (replicate them with
            ``Augmenter.replicate_labels`` when the batch was augmented).
        scale : float
            Extra multiplier from a schedule (see :class:`WeightSchedule`).
        """
        if self.detach_target:
            anchors = anchors.detach()
        dist = anchor_distance(embeddings, anchors, self.distance)
        return scale * self.weight * dist.mean()


class WeightSchedule:
    """Multiplier of λ as a function of training progress.

    Arguments
    ---------
    kind : str
        ``constant`` (1 throughout), ``linear_warmup`` (0 → 1 over
        ``warmup_epochs`` then 1), or ``linear_decay`` (1 → ``final`` over
        the whole run).
    warmup_epochs : int
        Epochs of the warm-up (``linear_warmup``).
    total_epochs : int
        Length of the run (``linear_decay``).
    final : float
        Value reached at the end of ``linear_decay``.

    Example
    -------
    >>> WeightSchedule("linear_warmup", warmup_epochs=4)(epoch=2, progress=0.5)
    0.375
    """

    KINDS = ("constant", "linear_warmup", "linear_decay")

    def __init__(self, kind="constant", warmup_epochs=1, total_epochs=1, final=0.0):
        if kind not in self.KINDS:
            raise ValueError(
                f"WeightSchedule: unknown kind '{kind}', expected one of {self.KINDS} "
                "(YAML key anchor_weight_schedule)"
            )
        self.kind = kind
        self.warmup_epochs = max(1, int(warmup_epochs))
        self.total_epochs = max(1, int(total_epochs))
        self.final = float(final)

    def __call__(self, epoch, progress=1.0):
        """Multiplier at ``epoch`` (1-based) with ``progress`` in [0, 1] within it."""
        position = (epoch - 1) + progress
        if self.kind == "linear_warmup":
            return min(1.0, position / self.warmup_epochs)
        if self.kind == "linear_decay":
            frac = min(1.0, position / self.total_epochs)
            return 1.0 + (self.final - 1.0) * frac
        return 1.0
