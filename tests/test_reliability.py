"""Bad inputs, stale anchors, interrupted runs: clear errors and nothing lost."""
import os
import pathlib
import shutil
import signal
import subprocess
import sys
import time

import pytest
import torch
from speechbrain.utils.checkpoints import Checkpointer

from anchor_reg.anchors import AnchorStore
from anchor_reg.config import plain_values, resolve
from anchor_reg.data.batching import collate_rows
from anchor_reg.errors import AnchorStoreError, ConfigError, ProvenanceError
from anchor_reg.provenance import read_provenance
from tiny import REPO, run_pipeline, run_train, tiny_command, tiny_options

sys.path.insert(0, str(REPO))
import train  # noqa: E402


def run_cli(args, timeout=240):
    """`python train.py args` in a subprocess; returns (returncode, stdout + stderr)."""
    proc = subprocess.run(
        [sys.executable, "train.py", *args], cwd=REPO, capture_output=True, text=True, timeout=timeout
    )
    return proc.returncode, proc.stdout + proc.stderr


def tree_digest(folder):
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(pathlib.Path(folder).rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def finished_chain(tmp_path_factory):
    """A finished tiny stage1 -> anchors -> stage2 chain (batch 2, so epochs have many steps), never modified."""
    tmp = tmp_path_factory.mktemp("reliable")
    run_pipeline("stage2.yaml", tmp, batch_size=2)
    return tmp


@pytest.fixture
def trained(finished_chain, tmp_path):
    """This test's own copy of the finished chain: (folder, results root)."""
    tmp = tmp_path / "chain"
    shutil.copytree(finished_chain, tmp)
    return tmp, tmp / "results" / "default" / "1986"


# ------------------------------------------------------------------ config
def test_unknown_override_key_is_named(tmp_path):
    with pytest.raises(ConfigError, match="unknown key 'numbr_of_epochs'"):
        train.main(tiny_command("stage1.yaml", tmp_path, numbr_of_epochs=3))


def test_wrong_type_is_named(tmp_path):
    with pytest.raises(ConfigError, match="key 'number_of_epochs' expects a float.*'three'"):
        train.main(tiny_command("stage1.yaml", tmp_path, number_of_epochs="three"))


def test_broken_yaml_names_file_and_line(tmp_path):
    broken = tmp_path / "broken.yaml"
    broken.write_text("stage: stage1\nseed: [1\nlr: 0.1\n")
    with pytest.raises(ConfigError, match=r"broken.yaml.*line"):
        train.main([str(broken)])


def test_missing_data_folder_is_named(tmp_path):
    with pytest.raises(FileNotFoundError, match="data_folders: .*nowhere.* not found"):
        train.main(tiny_command("stage1.yaml", tmp_path, dataset="folder", data_folder=str(tmp_path / "nowhere")))


def test_unwritable_output_is_reported_before_training(tmp_path):
    (tmp_path / "a_file").write_text("not a folder")
    with pytest.raises(ConfigError, match="output_folder: cannot write to"):
        train.main(tiny_command("stage1.yaml", tmp_path, output_base=str(tmp_path / "a_file" / "results")))
    assert not (tmp_path / "corpus").exists()  # nothing was prepared or trained


def test_cli_prints_one_clear_line_not_a_traceback(tmp_path):
    code, out = run_cli(tiny_command("stage1.yaml", tmp_path, numbr_of_epochs=3), timeout=120)
    assert code != 0
    assert "error: " in out and "unknown key 'numbr_of_epochs'" in out
    assert "Traceback" not in out


# ------------------------------------------------------------------- audio
@pytest.mark.slow
def test_bad_audio_at_load_time_names_the_file_or_is_skipped(trained):
    tmp, root = trained
    stage1 = REPO / "hparams" / "stage1.yaml"
    train.prepare(plain_values(resolve(stage1, tiny_options(tmp, stage1))))  # the copy's CSVs name its own files
    prep = root.parent / "prepared"
    row = (prep / "train.csv").read_text().splitlines()[1].split(",")
    wav = pathlib.Path(row[2])
    assert wav.is_relative_to(tmp)
    original = wav.read_bytes()
    try:
        wav.write_bytes(b"XXXX" + original[4:])  # same size: the preparation is reused, loading fails
        stage1 = REPO / "hparams" / "stage1.yaml"
        hparams = plain_values(resolve(stage1, tiny_options(tmp, stage1)))
        train.prepare(hparams)  # data prepared by `trained`
        train_data, _, _ = train.dataio_prep(hparams)
        with pytest.raises(Exception, match=f"{wav}.*unreadable"):
            for i in range(len(train_data)):
                train_data[i]
        hparams["skip_bad_files"] = True
        train_data, _, _ = train.dataio_prep(hparams)
        examples = [train_data[i] for i in range(len(train_data))]
        rows_of_bad_file = (prep / "train.csv").read_text().count(f",{wav},")
        assert rows_of_bad_file >= 1
        assert sum(ex["sig"] is None for ex in examples) == rows_of_bad_file
        batch = collate_rows(examples[:8], skip_bad=True)
        assert len(batch.id) == sum(ex["sig"] is not None for ex in examples[:8])
        assert str(wav) in (pathlib.Path(hparams["output_folder"]) / "skipped_audio.txt").read_text()
    finally:
        wav.write_bytes(original)


# ----------------------------------------------------------------- anchors
@pytest.mark.slow
def test_stale_or_corrupt_anchors_are_refused_then_reextracted(tmp_path):
    run_pipeline("stage2.yaml", tmp_path)
    root = tmp_path / "results" / "default" / "1986"
    anchors = root / "anchors" / "anchors.pt"
    # same base, other anchors (the store was replaced): stage 2 does not resume its checkpoints with them
    original = anchors.read_bytes()
    replaced = AnchorStore.from_file(anchors)
    replaced.embeddings = -replaced.embeddings
    replaced.save(anchors)
    stage2_saved = tree_digest(root / "stage2" / "save")
    with pytest.raises(ProvenanceError, match="trained with other anchors"):
        run_train("stage2.yaml", tmp_path, number_of_epochs=2)
    assert tree_digest(root / "stage2" / "save") == stage2_saved
    anchors.write_bytes(original)
    # stage 1 trained further -> a new base: the anchors are stale
    run_train("stage1.yaml", tmp_path, number_of_epochs=2)
    with pytest.raises(AnchorStoreError, match="stale.*reextract_anchors=True"):
        run_train("stage2.yaml", tmp_path)
    stage2_before = tree_digest(root / "stage2" / "save")
    # re-extracting works, but stage 2's own checkpoints came from the old base: refused, nothing deleted
    with pytest.raises(ProvenanceError, match="trained from another base model"):
        run_train("stage2.yaml", tmp_path, reextract_anchors=True)
    assert tree_digest(root / "stage2" / "save") == stage2_before
    # a truncated store gives a clear error naming the file
    data = anchors.read_bytes()
    anchors.write_bytes(data[: len(data) // 3])
    with pytest.raises(AnchorStoreError, match=f"{anchors}.*corrupt"):
        run_train("stage2.yaml", tmp_path, output_folder=str(root / "stage2_new"))


@pytest.mark.slow
def test_kill_during_extraction_leaves_no_store_and_next_run_extracts(tmp_path, monkeypatch):
    real_save = torch.save

    def dying_save(obj, f, *args, **kwargs):
        if "anchors" in str(f):
            with open(f, "wb") as partial:
                partial.write(b"half written")
            raise KeyboardInterrupt("killed during the write")
        return real_save(obj, f, *args, **kwargs)

    run_train("stage1.yaml", tmp_path)  # the base
    monkeypatch.setattr(torch, "save", dying_save)
    with pytest.raises(KeyboardInterrupt):
        run_train("stage2.yaml", tmp_path)
    anchors_folder = tmp_path / "results" / "default" / "1986" / "anchors"
    assert list(anchors_folder.iterdir()) == []  # neither a store nor a temp file
    monkeypatch.setattr(torch, "save", real_save)
    run_train("stage2.yaml", tmp_path)
    assert (anchors_folder / "anchors.pt").is_file()


# ------------------------------------------------------------ interruption
@pytest.mark.slow
def test_sigkill_mid_epoch_then_same_command_resumes(trained):
    tmp, root = trained
    stage1_before = tree_digest(root / "stage1" / "save")
    anchors_before = tree_digest(root / "anchors")
    args = tiny_command("stage2.yaml", tmp, batch_size=2, number_of_epochs=3, ckpt_interval_steps=1)
    save = root / "stage2" / "save"
    before = {p.name for p in save.iterdir()}
    log = open(tmp / "killed_run.log", "w")
    proc = subprocess.Popen([sys.executable, "train.py", *args], cwd=REPO, stdout=log, stderr=subprocess.STDOUT)
    deadline = time.time() + 600
    killed_mid_epoch = False
    while time.time() < deadline and proc.poll() is None:
        fresh = [p for p in save.glob("CKPT+*") if p.name not in before and (p / "CKPT.yaml").is_file()]
        intra_epoch = [p for p in fresh if "brain_intra_epoch_ckpt" in (p / "CKPT.yaml").read_text()]
        if intra_epoch:
            os.kill(proc.pid, signal.SIGKILL)
            killed_mid_epoch = True
            # intra-epoch checkpoints carry the same provenance as end-of-epoch ones
            assert "anchors_digest" in (intra_epoch[0] / "provenance.ckpt").read_text()
            break
        time.sleep(0.02)
    proc.wait(timeout=60)
    log.close()
    assert killed_mid_epoch, "no intra-epoch checkpoint appeared:\n" + (tmp / "killed_run.log").read_text()[-3000:]
    code, out = run_cli(args)
    assert code == 0, out
    assert "stage2: resuming from" in out and "anchors: reusing" in out
    ckpt = Checkpointer(save).find_checkpoint()
    assert ckpt.meta["epoch"] == 3
    assert {"optimizer", "counter", "embedding_model"} <= set(ckpt.paramfiles)
    recorded = read_provenance(ckpt.paramfiles["provenance"])
    assert recorded["anchors_digest"] and recorded["base_fingerprint"]
    assert tree_digest(root / "stage1" / "save") == stage1_before
    assert tree_digest(root / "anchors") == anchors_before
    log = (root / "stage2" / "train_log.txt").read_text()
    assert log.count("epoch: 3,") == 1 and log.count("epoch: 1,") == 1
