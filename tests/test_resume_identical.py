"""A run killed at a checkpoint and resumed with the same command ends bit-identical to the run that was not killed."""
import pathlib
import random
import shutil
import signal
import subprocess
import sys
import types

import numpy as np
import pytest
import torch
from speechbrain.utils.checkpoints import Checkpointer

from anchor_reg.anchors import AnchorStore, extract_anchors
from anchor_reg.random_state import RandomState, capture, derived_seed
from tiny import REPO, tiny_command

# train.py's command line in a process that SIGKILLs itself at the end of a chosen training step
KILLED_AT_STEP = """
import os, signal, sys
import train
from anchor_reg.brains import SpeakerBrain
stage, epoch, step = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])

def on_fit_batch_end(self, *args):
    if (self.hparams.stage, self.hparams.epoch_counter.current, self.step) == (stage, epoch, step):
        os.kill(os.getpid(), signal.SIGKILL)

SpeakerBrain.on_fit_batch_end = on_fit_batch_end
train.cli(sys.argv[4:])
"""


def launch(yaml_name, tmp, run_folder, kill_at=None, **overrides):
    """Runs ``train.py hparams/<yaml_name>`` (tiny, corpus in ``tmp``, outputs in ``run_folder``) in a fresh process.

    The one place the tests start a stage: a stage 2 run here finds its finished stage 1 in
    ``run_folder`` (a train.py that trains one stage per call takes it as ``base_model=<stage-1 folder>``).
    ``kill_at``: (stage, epoch, step) at whose end the process is SIGKILLed. Returns the seed's folder.
    """
    command = tiny_command(yaml_name, tmp, output_base=str(run_folder), **overrides)
    killer = [] if kill_at is None else ["-c", KILLED_AT_STEP, *map(str, kill_at)]
    done = subprocess.run([sys.executable, *(killer or ["train.py"]), *command], cwd=REPO,
                          capture_output=True, text=True, timeout=600)
    expected = -signal.SIGKILL if kill_at else 0
    assert done.returncode == expected, done.stdout[-3000:] + done.stderr[-3000:]
    return pathlib.Path(run_folder) / "default" / "1986"


def checkpoints(stage_folder):
    """``{epoch: checkpoint}`` of a stage's checkpoints (end-of-epoch ones only remain after training)."""
    return {ckpt.meta.get("epoch"): ckpt for ckpt in Checkpointer(stage_folder / "save").list_checkpoints()}


def assert_same(saved, other, where):
    """Equal nested structures of tensors (``torch.equal``), numbers and strings."""
    assert type(saved) is type(other), where
    if isinstance(saved, torch.Tensor):
        assert saved.dtype == other.dtype and torch.equal(saved, other), where
    elif isinstance(saved, dict):
        assert saved.keys() == other.keys(), where
        for key in saved:
            assert_same(saved[key], other[key], f"{where}[{key!r}]")
    elif isinstance(saved, (list, tuple)):
        assert len(saved) == len(other), where
        for i, (a, b) in enumerate(zip(saved, other)):
            assert_same(a, b, f"{where}[{i}]")
    else:
        assert saved == other, where


def assert_identical_runs(uninterrupted, resumed):
    """The same train_log lines and checkpoints: every tensor equal, the other files byte-equal."""
    log = (uninterrupted / "train_log.txt").read_text().splitlines()
    assert log and (resumed / "train_log.txt").read_text().splitlines() == log
    ours, theirs = checkpoints(uninterrupted), checkpoints(resumed)
    assert ours.keys() == theirs.keys() and ours
    for epoch, ckpt in ours.items():
        other = theirs[epoch]
        assert {k: v for k, v in ckpt.meta.items() if k != "unixtime"} == {
            k: v for k, v in other.meta.items() if k != "unixtime"}
        assert ckpt.paramfiles.keys() == other.paramfiles.keys()
        assert {"embedding_model", "classifier", "optimizer", "random_state"} <= ckpt.paramfiles.keys()
        for name, path in ckpt.paramfiles.items():
            try:
                saved = torch.load(path, map_location="cpu", weights_only=True)
            except Exception:  # a text file (counter, brain, dataloader position, provenance)
                assert path.read_bytes() == other.paramfiles[name].read_bytes(), f"epoch {epoch} {name}"
                continue
            assert_same(saved, torch.load(other.paramfiles[name], map_location="cpu", weights_only=True),
                        f"epoch {epoch} {name}")


# ------------------------------------------------------------------- slow ----
@pytest.mark.slow
def test_stage1_killed_mid_epoch_resumes_from_its_mid_epoch_checkpoint_identically(tmp_path):
    options = dict(number_of_epochs=2, batch_size=2, ckpt_interval_steps=3)  # 12 steps an epoch
    uninterrupted = launch("stage1.yaml", tmp_path, tmp_path / "a", **options) / "stage1"
    launch("stage1.yaml", tmp_path, tmp_path / "b", kill_at=("stage1", 2, 5), **options)
    killed = tmp_path / "b" / "default" / "1986" / "stage1"
    mid_epoch = [c for c in Checkpointer(killed / "save").list_checkpoints() if "brain_intra_epoch_ckpt" in c.meta]
    assert [c.meta.get("epoch") for c in mid_epoch] == [None]  # epoch 2, step 3: what the resume starts from
    assert "step: 3" in (mid_epoch[0].path / "brain.ckpt").read_text()
    resumed = launch("stage1.yaml", tmp_path, tmp_path / "b", **options) / "stage1"
    assert_identical_runs(uninterrupted, resumed)


@pytest.mark.slow
def test_stage2_killed_in_epoch_2_resumes_identically_whether_or_not_it_extracted_the_anchors(tmp_path):
    launch("stage1.yaml", tmp_path, tmp_path / "a", batch_size=2)  # one base for both runs
    shutil.copytree(tmp_path / "a", tmp_path / "b")
    options = dict(number_of_epochs=2, batch_size=2)
    uninterrupted = launch("stage2.yaml", tmp_path, tmp_path / "a", **options) / "stage2"
    # the killed run extracts the anchors in its process, its resume reads them: no difference
    launch("stage2.yaml", tmp_path, tmp_path / "b", kill_at=("stage2", 2, 5), **options)
    killed = tmp_path / "b" / "default" / "1986"
    assert torch.equal(AnchorStore.from_file(killed / "anchors" / "anchors.pt").embeddings,
                       AnchorStore.from_file(uninterrupted.parent / "anchors" / "anchors.pt").embeddings)
    assert list(checkpoints(killed / "stage2")) == [1]
    resumed = launch("stage2.yaml", tmp_path, tmp_path / "b", **options) / "stage2"
    assert_identical_runs(uninterrupted, resumed)


# ------------------------------------------------------------------- fast ----
def draws():
    """The next draws of torch's, numpy's and Python's global generators."""
    return torch.rand(4).tolist(), np.random.rand(4).tolist(), [random.random() for _ in range(4)]


def test_anchor_extraction_leaves_the_global_random_state_unchanged():
    rows = [types.SimpleNamespace(id=[f"r{i}"], spk_id=[f"s{i % 2}"], sig=(torch.ones(1, 80) * i, torch.ones(1)))
            for i in range(6)]
    loader = torch.utils.data.DataLoader(rows, batch_size=None, shuffle=True)  # draws from torch's generator

    def noisy_embed(wavs, lens):  # a model that draws too (dropout)
        random.random()
        np.random.rand()
        return wavs[:, :4].unsqueeze(1) + torch.rand(len(wavs), 1, 4)

    torch.manual_seed(3), np.random.seed(3), random.seed(3)
    expected = draws()
    torch.manual_seed(3), np.random.seed(3), random.seed(3)
    store = extract_anchors(noisy_embed, loader, progressbar=False)
    assert len(store) == 6
    assert draws() == expected


def test_a_stage_seeds_itself_from_seed_and_stage_whatever_ran_before():
    random.seed(0), np.random.seed(0), torch.manual_seed(0)
    RandomState(1986, "stage2").seed_stage()
    first = draws()
    draws()  # something else ran before it in the process
    RandomState(1986, "stage2").seed_stage()
    assert draws() == first
    RandomState(1986, "stage1").seed_stage()
    assert draws() != first  # another stage, other draws
    assert derived_seed(1986, "stage2") != derived_seed(1987, "stage2")


def test_saved_random_state_recovers_the_next_draws(tmp_path):
    state = RandomState(1986, "stage1")
    state.seed_stage()
    draws()
    state._save(tmp_path / "random_state.ckpt")
    expected = draws()
    draws()
    RandomState(1986, "stage1")._recover(tmp_path / "random_state.ckpt", end_of_epoch=False)
    assert draws() == expected
    assert capture()["numpy"][0] == "MT19937"
