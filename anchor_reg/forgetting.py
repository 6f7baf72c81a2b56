"""Forgetting controls that tie the adapted model to its base's weights: L2-SP (Li et al., 2018) in
training (``l2sp_weight``) and WiSE-FT's weight interpolation (Wortsman et al., 2022) in export."""
import torch


class L2SP:
    """``weight * sum_p ||theta_p - theta_base_p||^2`` over the trainable parameters, towards a copy of
    ``base_module``'s (the base loaded, and fingerprint-checked, at every (re)start)."""

    def __init__(self, weight, base_module):
        self.weight = float(weight)
        self.reference = {name: p.detach().clone() for name, p in unwrapped(base_module).named_parameters()}

    def __call__(self, module):
        """The penalty (a scalar with grad) of ``module``'s current parameters."""
        params = dict(unwrapped(module).named_parameters())
        if set(params) != set(self.reference):
            raise ValueError("L2SP: the trained model's parameters are not the base's (another architecture?)")
        total = None
        for name, param in params.items():
            if not param.requires_grad:  # frozen parameters stay at the base's values
                continue
            if self.reference[name].device != param.device:
                self.reference[name] = self.reference[name].to(param.device)
            term = (param - self.reference[name]).pow(2).sum()
            total = term if total is None else total + term
        return torch.zeros(()) if total is None else self.weight * total


def unwrapped(module):
    """The module inside a ``DistributedDataParallel`` wrapper (the module itself otherwise)."""
    return getattr(module, "module", module)


def interpolate_weights(base_state, adapted_state, alpha):
    """``alpha * base + (1 - alpha) * adapted`` of two state dicts' floating-point entries (BatchNorm statistics
    too; integer buffers are the adapted's); alpha in [0, 1], 1 is the base."""
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"wise_alpha must be in [0, 1], got {alpha}")
    if set(base_state) != set(adapted_state):
        differ = sorted(set(base_state) ^ set(adapted_state))
        raise ValueError(f"the base and the adapted model have different weights (e.g. {differ[:3]})")
    mixed = {}
    for key, adapted in adapted_state.items():
        base = base_state[key]
        if base.shape != adapted.shape:
            raise ValueError(f"weight {key}: the base's shape {tuple(base.shape)}, adapted {tuple(adapted.shape)}")
        if adapted.is_floating_point():
            mixed[key] = alpha * base.to(adapted.dtype) + (1.0 - alpha) * adapted
        else:
            mixed[key] = adapted.clone()
    return mixed
