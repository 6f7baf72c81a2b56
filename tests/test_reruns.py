"""Pipeline reruns never corrupt a finished stage; changed data and bad keys are named before any work starts."""
import hashlib
import pathlib
import shutil

import pytest

from anchor_reg.anchors import AnchorStore
from anchor_reg.export import export_model
from anchor_reg.errors import ConfigError, ProvenanceError
from tiny import run_pipeline, run_train


def tree_digest(folder):
    """sha256 of every file under folder (relative path -> digest), the logs aside.

    ``log.txt`` is left out: in one process, SpeechBrain's file handler of an
    earlier run stays attached and receives the later runs' lines.
    """
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(pathlib.Path(folder).rglob("*"))
        if p.is_file() and p.name != "log.txt"
    }


@pytest.fixture
def finished(tmp_path):
    """A finished tiny stage 1 -> anchors -> stage 2 under tmp_path (the pipeline)."""
    run_pipeline("stage2.yaml", tmp_path)
    return tmp_path, tmp_path / "results" / "default" / "1986"


@pytest.mark.slow  # trains a chain
def test_rerun_with_other_training_keys_stops_and_keeps_the_finished_record(finished):
    tmp, root = finished
    before = tree_digest(root)
    with pytest.raises(ConfigError, match=r"stage2 in .*stage2 finished training with other settings "
                                          r"\(anchor_weight: 1.0 then, 2.0 now\).*--experiment_name=NEW"):
        run_pipeline("stage2.yaml", tmp, anchor_weight=2.0)
    # a rerun that would also fail (another width than the finished stage 1) stops before anything too
    with pytest.raises(ConfigError, match=r"stage1 in .*stage1 finished training with other settings "
                                          r"\(channels: 32 then, 64 now\)"):
        run_pipeline("stage2.yaml", tmp, channels=64)
    with pytest.raises(ConfigError, match=r"key 'anchor_type' must be one of utterance, speaker, got 'foo'"):
        run_pipeline("stage2.yaml", tmp, anchor_type="foo")
    assert tree_digest(root) == before  # nothing of the finished stages was written
    export = export_model(root / "stage2", tmp / "export")  # the record still matches the weights
    assert "| anchor type | `anchor_type` | utterance |" in (export / "README.md").read_text()
    # the suggested remedy works: the new settings train in another experiment folder
    run_pipeline("stage2.yaml", tmp, anchor_weight=2.0, experiment_name="NEW")
    assert "anchor_weight: 2.0" in (tmp / "results" / "NEW" / "1986" / "stage2" / "hyperparams.yaml").read_text()
    # the same settings again: every step done, still nothing written
    run_pipeline("stage2.yaml", tmp)
    assert tree_digest(root) == before


@pytest.mark.slow  # trains a chain
def test_a_moved_experiment_is_the_same_experiment(finished):
    """Locations (output_base, data folders) are not settings: a copied results folder is reused as it is."""
    tmp, root = finished
    shutil.copytree(tmp / "results", tmp / "moved")
    moved = tmp / "moved" / "default" / "1986"
    before = tree_digest(moved)
    run_pipeline("stage2.yaml", tmp, output_base=str(tmp / "moved"))
    assert tree_digest(moved) == before
    with pytest.raises(ConfigError, match=r"\(lr: 0.002 then, 0.003 now\)"):  # a training key still counts
        run_pipeline("stage2.yaml", tmp, output_base=str(tmp / "moved"), lr=0.003)


def folder_corpus(tmp, speakers):
    """A folder dataset of ``speakers`` synthetic speakers (noise and RIRs from the synthetic corpus)."""
    from anchor_reg.data.synthetic import generate_corpus

    corpus = tmp / "corpus"
    generate_corpus(corpus, num_speakers=7, utts_per_speaker=4, num_noises=4, seed=1234, num_workers=1)
    speech = tmp / "speech"
    for folder in sorted((corpus / "speech").iterdir())[:speakers]:
        shutil.copytree(folder, speech / folder.name, dirs_exist_ok=True)
    return {"dataset": "folder", "data_folder": str(speech), "rir_folder": str(corpus / "rir"),
            "noise_folders": f"{{noise: {corpus / 'noise' / 'noise'}, music: {corpus / 'noise' / 'music'}}}",
            "verification_speakers": 3}


@pytest.mark.slow  # trains a chain
def test_stage1_trained_on_other_data_is_named_and_each_remedy_works(tmp_path):
    data = folder_corpus(tmp_path, speakers=6)
    run_pipeline("stage2.yaml", tmp_path, **data)
    root = tmp_path / "results" / "default" / "1986"
    folder_corpus(tmp_path, speakers=7)  # a speaker is added to the data folder; the keys stay the same
    stage1_before = tree_digest(root / "stage1")
    with pytest.raises(ProvenanceError, match=rf"stage 1 in {root / 'stage1'} was trained on other data .*"
                                              rf"retrain it by moving {root} away .*--experiment_name=NEW"):
        run_pipeline("stage2.yaml", tmp_path, **data)
    # so is stage 1 run on its own (train.py resumes only from checkpoints made from this data)
    with pytest.raises(ProvenanceError, match=rf"checkpoints in {root / 'stage1' / 'save'} were trained on other "
                                              r"training data .*--experiment_name=NEW"):
        run_train("stage1.yaml", tmp_path, **data)
    assert tree_digest(root / "stage1") == stage1_before
    # remedy 1: another experiment folder
    run_pipeline("stage2.yaml", tmp_path, experiment_name="NEW", **data)
    assert (tmp_path / "results" / "NEW" / "1986" / "stage2" / "train_log.txt").is_file()
    # remedy 2: move the seed folder away; the same command makes stage 1, anchors and stage 2 again
    root.rename(tmp_path / "moved_away")
    run_pipeline("stage2.yaml", tmp_path, **data)
    train_csv = (root.parent / "prepared" / "train.csv").read_text().splitlines()[1:]
    speakers = {line.split(",")[-1] for line in train_csv}
    assert AnchorStore.from_file(root / "anchors" / "anchors.pt").speakers == sorted(speakers)
    assert (root / "stage2" / "train_log.txt").read_text().count("epoch: 1,") == 1


def test_stage2_keys_and_evaluation_noise_types_are_checked_before_stage1(tmp_path):
    seed = tmp_path / "results" / "default" / "1986"
    with pytest.raises(ConfigError, match=r"key 'anchor_type' must be one of utterance, speaker, got 'foo'"):
        run_pipeline("stage2.yaml", tmp_path, anchor_type="foo")
    with pytest.raises(ConfigError, match=r"key 'eval_noise_types' must be a list drawn from noise, music, babble"):
        run_pipeline("stage2.yaml", tmp_path, evaluate_after_training=True, eval_noise_types="[noise, bogus]")
    assert not (seed / "stage1").exists() and not (seed / "anchors").exists()
