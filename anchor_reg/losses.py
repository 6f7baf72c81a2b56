"""Stage 2's anchor objectives, ``pull`` (:class:`AnchorDistanceLoss`) or ``contrastive``
(:class:`ContrastiveAnchorLoss`), and their weight schedule: ``AAM + weight(t) * objective(emb, anchor)``."""
import torch
import torch.nn.functional as F

DISTANCES = ("cosine", "l2")
OBJECTIVES = ("pull", "contrastive")


def flat_rows(tensor):
    """(B, D) of a (B, D) or (B, 1, D) tensor, in at least float32 (bf16 cannot resolve small distances)."""
    return tensor.reshape(tensor.shape[0], -1).to(torch.promote_types(tensor.dtype, torch.float32))


def anchor_distance(embeddings, anchors, distance="cosine"):
    """(B,) ``1 - cos(e, a)`` (``cosine``) or ``||e/|e| - a/|a| ||^2`` (``l2``: twice that, another gradient
    scale) of row-aligned (B, D) or (B, 1, D) embeddings and anchors, in at least float32."""
    if distance not in DISTANCES:
        raise ValueError(f"anchor_distance: unknown distance '{distance}', expected one of {DISTANCES}")
    emb = flat_rows(embeddings)
    anc = anchors.reshape(anchors.shape[0], -1).to(emb.dtype)
    if emb.shape != anc.shape:
        raise ValueError(f"anchor_distance: embeddings {tuple(emb.shape)} and anchors {tuple(anc.shape)} "
                         "are not row-aligned")
    emb, anc = F.normalize(emb, dim=-1), F.normalize(anc, dim=-1)
    if distance == "cosine":
        return 1.0 - (emb * anc).sum(dim=-1)
    return (emb - anc).pow(2).sum(dim=-1)


class AnchorDistanceLoss(torch.nn.Module):
    """``scale * weight * mean_b d(emb_b, anchor_b)``; ``detach_target=False`` trains the target too (the
    joint baseline's online clean embedding)."""

    def __init__(self, weight=1.0, distance="cosine", detach_target=True):
        super().__init__()
        if distance not in DISTANCES:
            raise ValueError(f"AnchorDistanceLoss: unknown distance '{distance}', "
                             f"expected one of {DISTANCES} (YAML key anchor_distance)")
        self.weight = float(weight)
        self.distance = distance
        self.detach_target = detach_target

    def forward(self, embeddings, anchors, scale=1.0):
        """(B, D) or (B, 1, D) embeddings and row-aligned anchors -> scalar; ``scale`` from the schedule."""
        if self.detach_target:
            anchors = anchors.detach()
        return scale * self.weight * anchor_distance(embeddings, anchors, self.distance).mean()


class ContrastiveAnchorLoss(torch.nn.Module):
    """InfoNCE against fixed anchors: ``logit_ij = s * (cos(e_i, a_j) - m * [j == i])`` over every row's anchor
    and a bank of ``num_negatives`` other speakers' anchors; row i's speaker's other candidates are masked."""

    def __init__(self, weight=1.0, scale=20.0, margin=0.1, num_negatives=512):
        super().__init__()
        if scale <= 0 or num_negatives < 0:
            raise ValueError("ContrastiveAnchorLoss: contrastive_scale must be > 0 and "
                             f"contrastive_negatives >= 0, got {scale} and {num_negatives}")
        self.weight = float(weight)
        self.scale = float(scale)
        self.margin = float(margin)
        self.num_negatives = int(num_negatives)

    def forward(self, embeddings, anchors, speakers, bank=None, bank_speakers=None, scale=1.0):
        """Loss of (B, D) or (B, 1, D) embeddings, aligned anchors, (B,) speakers, (K, D) bank or None."""
        emb = F.normalize(flat_rows(embeddings), dim=-1)
        candidates = anchors.detach().reshape(anchors.shape[0], -1).to(emb.dtype)
        cand_speakers = speakers
        if bank is not None and bank.shape[0] > 0:
            candidates = torch.cat([candidates, bank.detach().to(emb.dtype)])
            cand_speakers = torch.cat([speakers, bank_speakers.to(speakers.device)])
        if candidates.shape[0] < emb.shape[0] or emb.shape[1] != candidates.shape[1]:
            raise ValueError(f"ContrastiveAnchorLoss: embeddings {tuple(emb.shape)} and anchors "
                             f"{tuple(anchors.shape)} are not row-aligned")
        cosine = emb @ F.normalize(candidates, dim=-1).T  # (B, B + K)
        rows = torch.arange(emb.shape[0], device=emb.device)
        own = torch.eye(*cosine.shape, dtype=torch.bool, device=cosine.device)
        same_speaker = speakers.view(-1, 1) == cand_speakers.view(1, -1)
        logits = self.scale * (cosine - self.margin * own.to(emb.dtype))
        logits = logits.masked_fill(same_speaker & ~own, float("-inf"))
        return scale * self.weight * F.cross_entropy(logits, rows)


class WeightSchedule:
    """Multiplier of λ: ``constant``, ``linear_warmup`` (0 -> 1) or ``linear_decay`` (1 -> ``final``)."""

    KINDS = ("constant", "linear_warmup", "linear_decay")

    def __init__(self, kind="constant", warmup_epochs=1, total_epochs=1, final=0.0):
        if kind not in self.KINDS:
            raise ValueError(f"WeightSchedule: unknown kind '{kind}', expected one of {self.KINDS} "
                             "(YAML key anchor_weight_schedule_kind)")
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
            return 1.0 + (self.final - 1.0) * min(1.0, position / self.total_epochs)
        return 1.0


def anchor_objective(kind, weight, distance="cosine", scale=20.0, margin=0.1, num_negatives=512):
    """The objective YAML key ``anchor_objective`` names: ``pull`` (with ``distance``) or ``contrastive``."""
    if kind == "pull":
        return AnchorDistanceLoss(weight=weight, distance=distance)
    if kind == "contrastive":
        return ContrastiveAnchorLoss(weight=weight, scale=scale, margin=margin, num_negatives=num_negatives)
    raise ValueError(f"anchor_objective: unknown objective '{kind}', expected one of {OBJECTIVES}")
