"""anchor_reg: stage-wise fixed-anchor training for noise-robust speaker verification."""
import pathlib

CHECKOUT_HPARAMS = pathlib.Path(__file__).resolve().parents[1] / "hparams"


def recipe_hparams():
    """The folder of the recipe's YAMLs: the checkout's ``hparams/``, else the copy installed as ``anchor_reg.hparams``."""
    if CHECKOUT_HPARAMS.is_dir():
        return CHECKOUT_HPARAMS
    import importlib.resources

    return pathlib.Path(str(importlib.resources.files("anchor_reg.hparams")))
