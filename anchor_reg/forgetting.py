"""Forgetting controls that tie the adapted model to its base's weights (beside the anchors).

- :class:`L2SP` (training, key ``l2sp_weight``): ``w * sum_p ||theta_p - theta_base_p||^2``
  over the embedding model's parameters (Li et al., 2018, "L2-SP").
- :func:`interpolate_weights` (export, ``--wise_alpha``): WiSE-FT's weight-space
  ensemble ``alpha * base + (1 - alpha) * adapted`` (Wortsman et al., 2022).
"""
import torch


def unwrapped(module):
    """The module inside a ``DistributedDataParallel`` wrapper (the module itself otherwise)."""
    return getattr(module, "module", module)


class L2SP:
    """L2 penalty towards the base's weights.

    The base's parameters are copied once (fixed, never trained); they come from
    the base model loaded at every (re)start of the stage, whose fingerprint the
    stage's provenance checks, so a resumed run penalises towards the same weights.

    Arguments
    ---------
    weight : float
        ``w`` (key ``l2sp_weight``).
    base_module : torch.nn.Module
        The base's embedding model (same architecture as the trained one).

    Example
    -------
    >>> base = torch.nn.Linear(2, 1)
    >>> float(L2SP(1.0, base)(base))
    0.0
    """

    def __init__(self, weight, base_module):
        self.weight = float(weight)
        self.reference = {
            name: param.detach().clone() for name, param in unwrapped(base_module).named_parameters()
        }

    def __call__(self, module):
        """Returns the penalty (a scalar with grad) of ``module``'s current parameters."""
        params = dict(unwrapped(module).named_parameters())
        if set(params) != set(self.reference):
            raise ValueError("L2SP: the trained model's parameters are not the base's (another architecture?)")
        total = None
        for name, param in params.items():
            if not param.requires_grad:  # frozen parameters stay at the base's values
                continue
            reference = self.reference[name]
            if reference.device != param.device:
                reference = self.reference[name] = reference.to(param.device)
            term = (param - reference).pow(2).sum()
            total = term if total is None else total + term
        if total is None:
            return torch.zeros(())
        return self.weight * total


def interpolate_weights(base_state, adapted_state, alpha):
    """``alpha * base + (1 - alpha) * adapted``, entry by entry of two state dicts.

    Floating-point parameters and buffers (BatchNorm statistics too) are
    interpolated; integer buffers (``num_batches_tracked``) are the adapted
    model's.

    Arguments
    ---------
    base_state, adapted_state : dict
        ``state_dict()`` of the base's and of the adapted embedding model (same keys and shapes).
    alpha : float
        In [0, 1]: 0 is the adapted model, 1 the base.

    Returns
    -------
    dict
        A new state dict.
    """
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
