"""Overrides that turn the recipe YAMLs into seconds-long CPU runs (C=32, 6 speakers)."""
import importlib.util
import pathlib
import sys

import pytest
import torch
from speechbrain.utils.checkpoints import Checkpointer

from anchor_reg.anchors import AnchorStore

REPO = pathlib.Path(__file__).resolve().parents[1]


def stage_of(yaml_path):
    """The ``stage`` a YAML file names (stage1 | stage2 | joint)."""
    from anchor_reg.config import merged_tree

    return str(merged_tree(yaml_path)["stage"])


def tiny_options(tmp_path, yaml_path, **extra):
    """Override values (a dict) for a tiny synthetic run under ``tmp_path``."""
    options = {
        "data_folder": str(tmp_path / "corpus"),
        "output_base": str(tmp_path / "results"),
        "synthetic_speakers": 6,
        "synthetic_utts_per_speaker": 4,
        "synthetic_noises": 4,
        "verification_speakers": 2,
        "babble_mixtures": 4,
        "seg_dur": 1.5,
        "channels": 32,
        "emb_dim": 32,
        "batch_size": 4,
        "eval_batch_size": 4,
        "num_workers": 0,
        "evaluate_after_training": False,
    }
    stage = stage_of(yaml_path)
    if stage == "stage2":
        options.update(anchor_batch_size=4, number_of_epochs=1)
    elif stage == "joint":
        options.update(stage1_epochs=1, stage2_epochs=1)
    else:
        options.update(number_of_epochs=1)
    options.update(extra)
    return options


def tiny_overrides(tmp_path, yaml_path, **extra):
    """Command-line overrides (``--key=value``) for a tiny synthetic run under ``tmp_path``."""
    return [f"--{key}={value}" for key, value in tiny_options(tmp_path, yaml_path, **extra).items()]


def tiny_command(yaml_name, tmp_path, *flags, **extra):
    """argv for train.py: hparams/<yaml_name> (or a forked YAML's path) with tiny overrides."""
    yaml_path = REPO / "hparams" / yaml_name
    return [str(yaml_path), *tiny_overrides(tmp_path, yaml_path, **extra), "--device=cpu", "--noprogressbar", *flags]


def run_train(yaml_name, tmp_path, *flags, **extra):
    """Runs train.main in this process with tiny overrides."""
    sys.path.insert(0, str(REPO))
    import train

    return train.main(tiny_command(yaml_name, tmp_path, *flags, **extra))


def run_pipeline(yaml_name, tmp_path, *flags, **extra):
    """Runs ``python -m anchor_reg.pipeline`` in this process with tiny overrides."""
    from anchor_reg import pipeline

    return pipeline.main(tiny_command(yaml_name, tmp_path, *flags, **extra))


def tree(folder):
    """``{relative path: bytes or 'dir'}`` of everything under ``folder`` (empty if absent)."""
    if not folder.exists():
        return {}
    return {
        str(p.relative_to(folder)): "dir" if p.is_dir() else p.read_bytes() for p in sorted(folder.rglob("*"))
    }


def files(folder):
    """``{relative path: bytes}`` of the files under ``folder`` (folders made empty are not a change)."""
    return {path: data for path, data in tree(folder).items() if data != "dir"}


def refused(yaml_name, tmp, pipeline=False, **overrides):
    """Runs train.py's (or the pipeline's) command line; returns its one `error:` line (asserting exit status 1)."""
    sys.path.insert(0, str(REPO))
    import train
    from anchor_reg import pipeline as steps

    with pytest.raises(SystemExit) as stop:
        (steps.cli if pipeline else train.cli)(tiny_command(yaml_name, tmp, **overrides))
    message = stop.value.code
    assert isinstance(message, str), "sys.exit(<str>) is what gives exit status 1"
    lines = message.splitlines()
    assert lines[0].startswith("error: ") and "Traceback" not in message
    assert lines[1:] == [
        "(checkpoints and results already written are kept; fix the problem and run the same command to resume)"
    ]
    return lines[0]


def check_mixed_precision_outputs(stage_folder, with_anchors):
    """After an fp16/bf16 run: finite logged losses, float32 weights (and float32 anchors).

    Returns the stage's last checkpoint.
    """
    stage_folder = pathlib.Path(stage_folder)
    log = (stage_folder / "train_log.txt").read_text()
    assert "nan" not in log and "inf" not in log
    ckpt = Checkpointer(stage_folder / "save").find_checkpoint()
    weights = torch.load(ckpt.paramfiles["embedding_model"], map_location="cpu")
    assert all(tensor.dtype == torch.float32 for tensor in weights.values() if tensor.is_floating_point())
    if with_anchors:
        store = AnchorStore.from_file(stage_folder.parent / "anchors" / "anchors.pt")
        assert store.embeddings.dtype == torch.float32
    return ckpt


def load_script(path, name):
    """A recipe script (not a package module) loaded as the module ``name``."""
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
