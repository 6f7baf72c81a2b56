"""Forgetting controls: L2-SP towards the base's weights and WiSE-FT weight interpolation."""
import pytest
import torch

from anchor_reg.forgetting import L2SP, interpolate_weights


def small_model(seed):
    torch.manual_seed(seed)
    return torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.BatchNorm1d(4), torch.nn.Linear(4, 2))


def test_l2sp_is_zero_at_the_base_weights_and_its_gradient_is_2w_times_the_drift():
    base = small_model(0)
    model = small_model(0)
    penalty = L2SP(0.3, base)
    at_base = penalty(model)
    assert float(at_base.detach()) == 0.0
    with torch.no_grad():
        for param in model.parameters():
            param.add_(torch.randn_like(param))
    value = penalty(model)
    drift = {n: p.detach() - b.detach() for (n, p), (_, b) in zip(model.named_parameters(), base.named_parameters())}
    assert float(value.detach()) == pytest.approx(0.3 * sum(float(d.pow(2).sum()) for d in drift.values()), rel=1e-6)
    value.backward()
    for name, param in model.named_parameters():
        assert torch.allclose(param.grad, 2 * 0.3 * drift[name], atol=1e-6)


def test_l2sp_reference_is_a_copy_that_training_does_not_move():
    base = small_model(0)
    penalty = L2SP(1.0, base)
    with torch.no_grad():
        base[0].weight.add_(1.0)  # the stage trains a copy; even if the base moved, the reference would not
    assert float(penalty(small_model(0)).detach()) == 0.0


def test_interpolated_weights_are_alpha_base_plus_one_minus_alpha_adapted_entry_by_entry():
    base, adapted = small_model(0), small_model(1)
    adapted[1].running_mean.add_(2.0)
    adapted[1].num_batches_tracked.add_(7)
    mixed = interpolate_weights(base.state_dict(), adapted.state_dict(), 0.25)
    for key, value in adapted.state_dict().items():
        if value.is_floating_point():
            assert torch.allclose(mixed[key], 0.25 * base.state_dict()[key] + 0.75 * value)
        else:
            assert torch.equal(mixed[key], value)
    ends = interpolate_weights(base.state_dict(), adapted.state_dict(), 0.0)
    assert all(torch.equal(ends[k], v) for k, v in adapted.state_dict().items())  # alpha 0: the adapted model
    with pytest.raises(ValueError, match="wise_alpha"):
        interpolate_weights(base.state_dict(), adapted.state_dict(), 1.5)
