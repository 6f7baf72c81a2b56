"""anchor_reg: stage-wise fixed-anchor training for noise-robust speaker verification."""
import pathlib

PACKAGE = pathlib.Path(__file__).resolve().parent


def recipe_hparams():
    """The recipe's YAML folder: the checkout's ``hparams/``, else the copy setup.py installs in the package."""
    checkout = PACKAGE.parent / "hparams"
    return checkout if checkout.is_dir() else PACKAGE / "hparams"
