"""anchor_reg: stage-wise fixed-anchor training for noise-robust speaker verification."""
import pathlib

CHECKOUT_HPARAMS = pathlib.Path(__file__).resolve().parents[1] / "hparams"
INSTALLED_HPARAMS = pathlib.Path(__file__).resolve().parent / "hparams"  # setup.py installs hparams/ there


def recipe_hparams():
    """The folder of the recipe's YAMLs: the checkout's ``hparams/``, else the copy installed with the package."""
    return CHECKOUT_HPARAMS if CHECKOUT_HPARAMS.is_dir() else INSTALLED_HPARAMS
