"""Overrides that turn the recipe YAMLs into seconds-long CPU runs (C=32, 6 speakers)."""
import pathlib

REPO = pathlib.Path(__file__).resolve().parents[1]


def tiny_overrides(tmp_path, **extra):
    """Command-line overrides for a tiny synthetic run under ``tmp_path``."""
    options = {
        "data_folder": str(tmp_path / "corpus"),
        "output_base": str(tmp_path / "results"),
        "synthetic_noises": 4,
        "synthetic_speakers": 6,
        "synthetic_utts_per_speaker": 4,
        "verification_speakers": 2,
        "babble_mixtures": 4,
        "seg_dur": 1.5,
        "channels": 32,
        "emb_dim": 32,
        "batch_size": 4,
        "anchor_batch_size": 4,
        "eval_batch_size": 4,
        "num_workers": 0,
        "number_of_epochs": 1,
        "evaluate_after_training": False,
    }
    options.update(extra)
    return [f"--{key}={value}" for key, value in options.items()]


def run_train(yaml_name, tmp_path, *flags, **extra):
    """Runs train.main on hparams/<yaml_name> with tiny overrides."""
    import sys

    sys.path.insert(0, str(REPO))
    import train

    return train.main([str(REPO / "hparams" / yaml_name), *tiny_overrides(tmp_path, **extra), "--device=cpu",
                       "--noprogressbar", *flags])
