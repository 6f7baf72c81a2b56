"""Faults during the work: a full disk or read-only save folder, partial checkpoint folders, bad audio met late."""
import errno
import fcntl
import os
import pathlib
import re
import shutil
import sys

import pytest
import torch
from speechbrain.utils.checkpoints import Checkpointer

from anchor_reg.anchors import AnchorStore
from anchor_reg.checkpointer import AtomicCheckpointer
from anchor_reg.errors import AnchorStoreError, CheckpointError
from tiny import REPO, files, refused, run_train, tiny_command

sys.path.insert(0, str(REPO))
import train  # noqa: E402


def failing_save(errno_code, real_save=torch.save):
    """A torch.save that writes half a file into checkpoint folders, then fails with ``errno_code``."""

    def save(obj, f, *args, **kwargs):
        if "CKPT+" in str(f):
            with open(f, "wb") as partial:
                partial.write(b"half")
            raise OSError(errno_code, os.strerror(errno_code), str(f))
        return real_save(obj, f, *args, **kwargs)

    return save


def ckpt_folders(save):
    return sorted(p.name for p in pathlib.Path(save).glob("CKPT+*"))


# ------------------------------------------------------------ checkpoints ----
def test_full_disk_during_a_checkpoint_one_line_no_partial_folder(tmp_path, monkeypatch):
    monkeypatch.setattr(torch, "save", failing_save(errno.ENOSPC))
    line = refused("stage1.yaml", tmp_path, ckpt_interval_steps=1)  # fails at the first (intra-epoch) save
    save = tmp_path / "results" / "default" / "1986" / "stage1" / "save"
    assert re.fullmatch(
        re.escape(f"error: save_folder: cannot write a checkpoint to {save}/") + r"CKPT\+[\d+-]+"
        + re.escape(" (No space left on device); free disk space or make the folder writable "
                    "(the last complete checkpoint is kept)"), line
    ), line
    assert ckpt_folders(save) == []  # the half-written checkpoint folder is gone
    monkeypatch.undo()
    train.cli(tiny_command("stage1.yaml", tmp_path))  # the remedy: space freed, the same command
    assert Checkpointer(save).find_checkpoint().meta["epoch"] == 1


class Counter(torch.nn.Module):
    """A tiny recoverable."""

    def __init__(self):
        super().__init__()
        self.weight = torch.nn.Parameter(torch.zeros(3))


def test_read_only_save_keeps_the_last_complete_checkpoint(tmp_path, monkeypatch):
    module = Counter()
    checkpointer = AtomicCheckpointer(tmp_path / "save", recoverables={"model": module})
    complete = checkpointer.save_checkpoint(meta={"epoch": 1})
    with torch.no_grad():
        module.weight += 1
    monkeypatch.setattr(torch, "save", failing_save(errno.EROFS))
    with pytest.raises(CheckpointError, match=re.escape("(Read-only file system); free disk space or make")):
        checkpointer.save_and_keep_only(meta={"epoch": 2})
    monkeypatch.undo()
    assert ckpt_folders(tmp_path / "save") == [complete.path.name]
    assert checkpointer.recover_if_possible().meta["epoch"] == 1
    assert module.weight.tolist() == [0.0, 0.0, 0.0]


def partial_folder(save, name):
    """What a kill (or a full disk) during a save leaves: parameter files but no CKPT.yaml."""
    folder = save / f"CKPT+{name}"
    folder.mkdir(parents=True)
    (folder / "model.ckpt").write_bytes(b"half written")
    return folder


def test_partial_checkpoint_folders_removed_unless_a_save_is_in_progress(tmp_path):
    module = Counter()
    save = tmp_path / "save"
    checkpointer = AtomicCheckpointer(save, recoverables={"model": module})
    complete = checkpointer.save_checkpoint(meta={"epoch": 1})
    partial = partial_folder(save, "2026-01-01+00-00-00+00")
    not_a_checkpoint = save / "notes"
    not_a_checkpoint.mkdir()
    # another process is saving (it holds the save folder's lock): its folder is not touched
    fd = os.open(save, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        assert checkpointer.remove_partial_checkpoints() == []
        assert partial.is_dir()
    finally:
        os.close(fd)
    # the next run's recovery removes it, keeps everything else, and recovers the complete one
    assert checkpointer.recover_if_possible().path == complete.path
    assert not partial.exists()
    assert ckpt_folders(save) == [complete.path.name] and not_a_checkpoint.is_dir()


def test_a_rerun_removes_the_partial_folder_a_killed_save_left(tmp_path):
    run_train("stage1.yaml", tmp_path, ckpt_interval_steps=2)
    save = tmp_path / "results" / "default" / "1986" / "stage1" / "save"
    kept = ckpt_folders(save)
    partial = partial_folder(save, "2099-01-01+00-00-00+00")
    run_train("stage1.yaml", tmp_path, number_of_epochs=2)
    assert not partial.exists()
    assert Checkpointer(save).find_checkpoint().meta["epoch"] == 2
    assert len(ckpt_folders(save)) == 1 and ckpt_folders(save) != kept


# ---------------------------------------------------------------- anchors ----
def test_corrupt_anchors_message_is_one_line_without_torch_advice(tmp_path):
    anchors = tmp_path / "anchors.pt"
    torch.save({"provenance": {"format_version": 1}, "not": Counter()}, anchors)  # pickled objects
    with pytest.raises(AnchorStoreError) as error:
        AnchorStore().load(anchors)
    assert str(error.value) == (f"anchor store {anchors} is unreadable or corrupt (UnpicklingError); "
                                "delete it and re-run to re-extract the anchors")


class RunsACommand:
    """A pickled object whose unpickling would run a shell command (what a tampered file holds)."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_tampered_parameter_file_one_line_naming_it_and_nothing_runs(tmp_path):
    model, counter = torch.nn.Linear(3, 2), torch.nn.Linear(1, 1)
    checkpointer = AtomicCheckpointer(tmp_path / "save", recoverables={"embedding_model": model, "classifier": counter})
    first = checkpointer.save_checkpoint(meta={"epoch": 1})
    latest = checkpointer.save_checkpoint(meta={"epoch": 2})
    tampered = latest.path / "embedding_model.ckpt"
    marker = tmp_path / "ran"
    torch.save(RunsACommand(marker), tampered)
    with pytest.raises(CheckpointError) as error:
        checkpointer.recover_if_possible()
    assert str(error.value) == (
        f"{tampered} is not a valid checkpoint file (it does not load as saved tensors; nothing in it was run): "
        f"delete the folder {latest.path} to resume from the checkpoint before it (from the start if there is none), "
        "or train again into a new folder"
    )
    assert not marker.exists()
    # the remedy: without the tampered checkpoint, the one before it is recovered
    before = {key: value.clone() for key, value in model.state_dict().items()}
    with torch.no_grad():
        model.weight.add_(1.0)
    shutil.rmtree(latest.path)
    assert checkpointer.recover_if_possible().path == first.path
    assert all(torch.equal(model.state_dict()[key], value) for key, value in before.items())


def test_a_mismatched_but_valid_file_keeps_its_own_error(tmp_path):
    checkpointer = AtomicCheckpointer(tmp_path / "save", recoverables={"embedding_model": torch.nn.Linear(3, 2)})
    checkpointer.save_checkpoint()
    other = AtomicCheckpointer(tmp_path / "save", recoverables={"embedding_model": torch.nn.Linear(4, 2)})
    with pytest.raises(RuntimeError, match="size mismatch"):  # an architecture change, not a bad file
        other.recover_if_possible()


# ------------------------------------------------------------- bad audio ----
def test_skipped_audio_during_extraction_reported_in_stage2_not_stage1(tmp_path):
    run_train("stage1.yaml", tmp_path, skip_bad_files=True)
    root = tmp_path / "results" / "default" / "1986"
    stage1_before = files(root / "stage1")
    row = (root.parent / "prepared" / "train.csv").read_text().splitlines()[1].split(",")
    wav = pathlib.Path(row[2])
    wav.write_bytes(b"XXXX" + wav.read_bytes()[4:])  # same size: the preparation is reused, loading meets it
    run_train("stage2.yaml", tmp_path, skip_bad_files=True)
    # stage 1 stays byte-identical (log.txt aside: in one process, stage 1's log handler stays attached)
    assert {k: v for k, v in files(root / "stage1").items() if k != "log.txt"} == {
        k: v for k, v in stage1_before.items() if k != "log.txt"
    }
    assert str(wav) in (root / "stage2" / "skipped_audio.txt").read_text()  # extraction reads stage 2's data
    assert str(wav) not in " ".join(AnchorStore.from_file(root / "anchors" / "anchors.pt").ids.astype(str))
