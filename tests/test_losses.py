"""AnchorDistanceLoss and its schedule: values and gradients on hand-made vectors."""
import math

import pytest
import torch

from anchor_reg.losses import AnchorDistanceLoss, WeightSchedule, anchor_distance


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
    with pytest.raises(ValueError, match="anchor_weight_schedule"):
        WeightSchedule("cosine")
