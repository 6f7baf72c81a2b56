"""Stage 2's anchor objectives and the weight schedule that drives them.

Stage 2 ties each (clean or noisy) embedding to a fixed anchor computed once by the
frozen base model::

    loss = AAM(classifier(emb)) + weight(epoch) * objective(emb, anchor, ...)

Two objectives, chosen in YAML (``anchor_objective``):

- :class:`AnchorDistanceLoss` (``pull``): mean ``d(emb, anchor)``, cosine or l2;
- :class:`ContrastiveAnchorLoss` (``contrastive``): InfoNCE of each embedding
  against its own anchor versus the anchors of the batch's other speakers and a
  bank of other speakers' anchors drawn from the store (negatives cost nothing:
  the anchors are fixed, so no queue or momentum encoder is needed).

The third option, a head fixed at the base's speaker centroids, lives in
:mod:`anchor_reg.heads`. The anchors never require grad; the gradient only moves
the embedding.
"""
import torch
import torch.nn.functional as F

DISTANCES = ("cosine", "l2")
OBJECTIVES = ("pull", "contrastive")


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


class ContrastiveAnchorLoss(torch.nn.Module):
    """InfoNCE against fixed anchors, with negatives from other speakers.

    For embedding ``e_i`` with own anchor ``a_i``, the candidates are every
    row's anchor ``a_j`` and a bank ``n_k`` of other speakers' anchors::

        logit_ij = scale * (cos(e_i, a_j) - margin * [j == i])
        logit_ik = scale * cos(e_i, n_k)
        loss = weight * mean_i CE([logit_i., logit_ik], i)

    Candidates of the same speaker as row ``i`` (its other copies, other rows of
    that speaker, a bank entry of that speaker) are masked out: they are
    neither positives nor negatives.

    Arguments
    ---------
    weight : float
        λ, the weight of the term.
    scale : float
        Logit scale ``s`` (inverse temperature).
    margin : float
        Additive cosine margin ``m`` on the positive.
    num_negatives : int
        K, anchors of other speakers drawn from the store at each step.

    Example
    -------
    >>> loss = ContrastiveAnchorLoss(scale=10.0, margin=0.0, num_negatives=0)
    >>> anchors = torch.eye(2)
    >>> float(loss(anchors, anchors, torch.tensor([0, 1]))) < 1e-4
    True
    """

    def __init__(self, weight=1.0, scale=20.0, margin=0.1, num_negatives=512):
        super().__init__()
        if scale <= 0 or num_negatives < 0:
            raise ValueError(
                "ContrastiveAnchorLoss: contrastive_scale must be > 0 and "
                f"contrastive_negatives >= 0, got {scale} and {num_negatives}"
            )
        self.weight = float(weight)
        self.scale = float(scale)
        self.margin = float(margin)
        self.num_negatives = int(num_negatives)

    def forward(self, embeddings, anchors, speakers, bank=None, bank_speakers=None, scale=1.0):
        """Returns ``scale * weight * mean_i CE_i``.

        Arguments
        ---------
        embeddings : torch.Tensor
            (B, D) or (B, 1, D) embeddings (clean and noisy copies alike).
        anchors : torch.Tensor
            (B, D) or (B, 1, D) each row's own fixed anchor, row-aligned.
        speakers : torch.Tensor
            (B,) speaker index of each row (same index space as ``bank_speakers``).
        bank : torch.Tensor
            (K, D) extra negatives (anchors of other speakers), or None.
        bank_speakers : torch.Tensor
            (K,) their speaker indices.
        scale : float
            Extra multiplier from a schedule (see :class:`WeightSchedule`).
        """
        dtype = torch.promote_types(embeddings.dtype, torch.float32)
        emb = F.normalize(embeddings.reshape(embeddings.shape[0], -1).to(dtype), dim=-1)
        candidates = anchors.detach().reshape(anchors.shape[0], -1).to(dtype)
        cand_speakers = speakers
        if bank is not None and bank.shape[0] > 0:
            candidates = torch.cat([candidates, bank.detach().to(dtype)])
            cand_speakers = torch.cat([speakers, bank_speakers.to(speakers.device)])
        if candidates.shape[0] < emb.shape[0] or emb.shape[1] != candidates.shape[1]:
            raise ValueError(
                f"ContrastiveAnchorLoss: embeddings {tuple(emb.shape)} and anchors "
                f"{tuple(anchors.shape)} are not row-aligned"
            )
        cosine = emb @ F.normalize(candidates, dim=-1).T  # (B, B + K)
        rows = torch.arange(emb.shape[0], device=emb.device)
        own = torch.zeros_like(cosine, dtype=torch.bool)
        own[rows, rows] = True
        same_speaker = speakers.view(-1, 1) == cand_speakers.view(1, -1)
        logits = self.scale * (cosine - self.margin * own.to(dtype))
        logits = logits.masked_fill(same_speaker & ~own, float("-inf"))
        loss = F.cross_entropy(logits, rows)
        return scale * self.weight * loss


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
                "(YAML key anchor_weight_schedule_kind)"
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


def anchor_objective(kind, weight, distance="cosine", scale=20.0, margin=0.1, num_negatives=512):
    """The stage-2 objective a YAML names (key ``anchor_objective``).

    Arguments
    ---------
    kind : str
        ``pull`` (:class:`AnchorDistanceLoss` with ``distance``) or
        ``contrastive`` (:class:`ContrastiveAnchorLoss` with ``scale``,
        ``margin`` and ``num_negatives``).
    weight : float
        λ.
    """
    if kind == "pull":
        return AnchorDistanceLoss(weight=weight, distance=distance)
    if kind == "contrastive":
        return ContrastiveAnchorLoss(weight=weight, scale=scale, margin=margin, num_negatives=num_negatives)
    raise ValueError(f"anchor_objective: unknown objective '{kind}', expected one of {OBJECTIVES}")
