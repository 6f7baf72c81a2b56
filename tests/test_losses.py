"""AnchorDistanceLoss and its schedule: values and gradients on hand-made vectors."""
import math

import pytest
import torch

from anchor_reg.losses import (
    AnchorDistanceLoss,
    ContrastiveAnchorLoss,
    WeightSchedule,
    anchor_distance,
    anchor_objective,
)


def test_cosine_distance_values():
    emb = torch.tensor([[1.0, 0.0], [0.0, 2.0], [1.0, 1.0]])
    anc = torch.tensor([[1.0, 0.0], [3.0, 0.0], [-1.0, -1.0]])
    assert torch.allclose(anchor_distance(emb, anc, "cosine"), torch.tensor([0.0, 1.0, 2.0]))


def test_l2_distance_is_on_unit_vectors():
    emb = torch.tensor([[2.0, 0.0], [0.0, 5.0]])
    anc = torch.tensor([[7.0, 0.0], [1.0, 0.0]])
    # unit vectors: (1,0)-(1,0) -> 0 ; (0,1)-(1,0) -> 2
    assert torch.allclose(anchor_distance(emb, anc, "l2"), torch.tensor([0.0, 2.0]))


def test_loss_weight_scale_and_shapes():
    emb = torch.tensor([[[1.0, 0.0]], [[0.0, 1.0]]])  # (B, 1, D)
    anc = torch.tensor([[0.0, 1.0], [0.0, 1.0]])  # (B, D)
    loss = AnchorDistanceLoss(weight=3.0, distance="cosine")
    # distances 1 and 0 -> mean 0.5, * 3 * scale 0.5
    assert math.isclose(float(loss(emb, anc, scale=0.5)), 0.75, rel_tol=1e-6)


def test_gradient_moves_embedding_towards_anchor_only():
    emb = torch.tensor([[1.0, 0.0]], requires_grad=True)
    anc = torch.tensor([[0.0, 1.0]], requires_grad=True)
    AnchorDistanceLoss(weight=1.0)(emb, anc).backward()
    # d(1 - e.a/|e||a|)/de at e=(1,0), a=(0,1): -(a - cos*e)/|e| = (0, -1)
    assert torch.allclose(emb.grad, torch.tensor([[0.0, -1.0]]), atol=1e-6)
    assert anc.grad is None  # fixed anchors receive no gradient


def test_l2_gradient_is_twice_cosine_gradient():
    emb1 = torch.tensor([[0.6, 0.8, 0.1]], requires_grad=True)
    emb2 = emb1.detach().clone().requires_grad_(True)
    anc = torch.tensor([[0.0, 1.0, 0.5]])
    AnchorDistanceLoss(distance="cosine")(emb1, anc).backward()
    AnchorDistanceLoss(distance="l2")(emb2, anc).backward()
    assert torch.allclose(emb2.grad, 2 * emb1.grad, atol=1e-6)


def test_online_target_gets_gradient_when_not_detached():
    emb = torch.tensor([[1.0, 0.0]], requires_grad=True)
    target = torch.tensor([[0.0, 1.0]], requires_grad=True)
    AnchorDistanceLoss(detach_target=False)(emb, target).backward()
    assert target.grad is not None and target.grad.abs().sum() > 0


def test_half_precision_embeddings_get_a_float32_distance():
    """Under fp16/bf16 autocast the embeddings are half precision; small distances must survive."""
    generator = torch.Generator().manual_seed(0)
    anchors = torch.randn(16, 192, generator=generator)
    emb = (anchors + 0.02 * torch.randn(16, 192, generator=generator)).bfloat16().requires_grad_(True)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        dist = anchor_distance(emb, anchors)
        loss = AnchorDistanceLoss()(emb, anchors)
    exact = anchor_distance(emb.detach().double(), anchors.double())  # same bf16 values, float64 arithmetic
    assert dist.dtype == torch.float32 and loss.dtype == torch.float32
    assert float(exact.min()) > 0 and float(exact.max()) < 2e-3  # far below bf16's resolution near 1
    assert torch.allclose(dist.double(), exact, rtol=1e-3, atol=1e-7)
    loss.backward()
    assert emb.grad.dtype == torch.bfloat16 and torch.isfinite(emb.grad.float()).all()


def test_misaligned_rows_and_bad_distance_are_errors():
    with pytest.raises(ValueError, match="row-aligned"):
        anchor_distance(torch.ones(4, 3), torch.ones(2, 3))
    with pytest.raises(ValueError, match="anchor_distance"):
        AnchorDistanceLoss(distance="manhattan")


def test_weight_schedules():
    assert WeightSchedule("constant")(epoch=3, progress=0.2) == 1.0
    warm = WeightSchedule("linear_warmup", warmup_epochs=2)
    assert warm(1, 0.0) == 0.0 and warm(1, 0.5) == 0.25 and warm(3, 0.0) == 1.0
    decay = WeightSchedule("linear_decay", total_epochs=4, final=0.0)
    assert decay(1, 0.0) == 1.0 and math.isclose(decay(3, 0.0), 0.5) and decay(4, 1.0) == 0.0
    with pytest.raises(ValueError, match="YAML key anchor_weight_schedule_kind"):
        WeightSchedule("cosine")


# ------------------------------------------------------------ contrastive
def manual_infonce(emb, candidates, positive, allowed, scale, margin):
    """-log softmax of the positive among the allowed candidates, written out with math."""
    def unit(v):
        norm = math.sqrt(sum(x * x for x in v))
        return [x / norm for x in v]

    e = [unit(v) for v in emb.tolist()]
    c = [unit(v) for v in candidates.tolist()]
    total = 0.0
    for i, ei in enumerate(e):
        logits = {}
        for j, cj in enumerate(c):
            if j == positive[i] or allowed[i][j]:
                cos = sum(a * b for a, b in zip(ei, cj))
                logits[j] = scale * (cos - (margin if j == positive[i] else 0.0))
        denominator = sum(math.exp(v) for v in logits.values())
        total += -math.log(math.exp(logits[positive[i]]) / denominator)
    return total / len(e)


def test_contrastive_value_on_hand_made_vectors():
    emb = torch.tensor([[1.0, 0.0, 0.0], [0.0, 2.0, 0.0], [0.5, 0.5, 0.0]])
    anchors = torch.tensor([[0.8, 0.6, 0.0], [0.0, 1.0, 0.0], [1.0, 0.0, 1.0]])
    speakers = torch.tensor([0, 1, 2])
    bank = torch.tensor([[0.0, 0.0, 1.0], [1.0, 1.0, 1.0]])
    bank_speakers = torch.tensor([3, 4])
    loss = ContrastiveAnchorLoss(weight=2.0, scale=5.0, margin=0.1, num_negatives=2)
    value = loss(emb, anchors, speakers, bank, bank_speakers, scale=0.5)
    candidates = torch.cat([anchors, bank])
    allowed = [[True] * 5 for _ in range(3)]  # all speakers differ: every other candidate is a negative
    expected = manual_infonce(emb, candidates, [0, 1, 2], allowed, 5.0, 0.1)
    assert math.isclose(float(value), 2.0 * 0.5 * expected, rel_tol=1e-5)


def test_contrastive_gradient_matches_finite_differences_and_spares_the_anchors():
    gen = torch.Generator().manual_seed(3)
    emb = torch.randn(4, 5, generator=gen, dtype=torch.float64, requires_grad=True)
    anchors = torch.randn(4, 5, generator=gen, dtype=torch.float64, requires_grad=True)
    bank = torch.randn(3, 5, generator=gen, dtype=torch.float64)
    speakers, bank_speakers = torch.tensor([0, 1, 0, 2]), torch.tensor([3, 4, 5])
    loss = ContrastiveAnchorLoss(scale=4.0, margin=0.2, num_negatives=3)
    loss(emb, anchors, speakers, bank, bank_speakers).backward()
    assert anchors.grad is None  # fixed anchors receive no gradient
    assert torch.autograd.gradcheck(
        lambda e: loss(e, anchors.detach(), speakers, bank, bank_speakers), (emb.detach().requires_grad_(True),)
    )


def test_contrastive_masks_same_speaker_candidates():
    """Another row of the same speaker is neither a positive nor a negative, even if it points the other way."""
    emb = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 0.1]])
    anchors = torch.tensor([[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0]])  # row 2: speaker 0 again, opposite anchor
    speakers = torch.tensor([0, 1, 0])
    bank = torch.tensor([[0.6, 0.8]])
    bank_speakers = torch.tensor([1])  # a bank entry of row 1's own speaker: masked for row 1 only
    loss = ContrastiveAnchorLoss(scale=3.0, margin=0.0, num_negatives=1)
    value = loss(emb, anchors, speakers, bank, bank_speakers)
    candidates = torch.cat([anchors, bank])
    cand_speakers = [0, 1, 0, 1]
    allowed = [[cand_speakers[j] != int(speakers[i]) for j in range(4)] for i in range(3)]
    expected = manual_infonce(emb, candidates, [0, 1, 2], allowed, 3.0, 0.0)
    assert math.isclose(float(value), expected, rel_tol=1e-5)
    unmasked = manual_infonce(emb, candidates, [0, 1, 2], [[True] * 4] * 3, 3.0, 0.0)
    assert not math.isclose(float(value), unmasked, rel_tol=1e-3)  # the mask changes the value


def test_contrastive_pulls_towards_own_anchor_and_away_from_negatives():
    emb = torch.tensor([[0.6, 0.8]], requires_grad=True)
    own, negative = torch.tensor([[1.0, 0.0]]), torch.tensor([[0.0, 1.0]])
    ContrastiveAnchorLoss(scale=10.0, margin=0.1, num_negatives=1)(
        emb, own, torch.tensor([0]), negative, torch.tensor([1])
    ).backward()
    step = -emb.grad[0]  # gradient descent direction
    assert step[0] > 0 and step[1] < 0


def test_anchor_objective_selects_by_name():
    assert isinstance(anchor_objective("pull", 1.0), AnchorDistanceLoss)
    contrastive = anchor_objective("contrastive", 2.0, scale=7.0, margin=0.3, num_negatives=9)
    assert (contrastive.weight, contrastive.scale, contrastive.margin, contrastive.num_negatives) == (2.0, 7.0, 0.3, 9)
    with pytest.raises(ValueError, match="anchor_objective: unknown objective 'push'"):
        anchor_objective("push", 1.0)
