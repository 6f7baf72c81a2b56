"""Label-free adaptation end to end: a flat folder of audio (no speaker folders) prepares and trains."""
import csv
import pathlib
import os
import shutil

import pytest
import torch
from speechbrain.utils.checkpoints import Checkpointer

from anchor_reg.anchors import AnchorStore
from anchor_reg.export import export_model
from tiny import refused, run_train


@pytest.fixture(scope="module")
def adaptation_data(tmp_path_factory):
    """A tiny exported base, a flat folder of audio, a replay folder and a verification folder of speakers."""
    tmp = tmp_path_factory.mktemp("adapt")
    run_train("stage1.yaml", tmp)
    export = export_model(tmp / "results" / "default" / "1986" / "stage1", tmp / "export")
    speech = tmp / "corpus" / "speech"
    speakers = sorted(os.listdir(speech))
    flat, replay, verification = tmp / "flat", tmp / "replay" / "deep" / "er", tmp / "verification"
    for folder in (flat, replay, verification):
        folder.mkdir(parents=True)
    for index, speaker in enumerate(speakers):
        wavs = sorted((speech / speaker).rglob("*.wav"))
        if index < 2:  # adaptation audio: every file in one flat folder, no speaker structure
            for k, wav in enumerate(wavs):
                shutil.copy(wav, flat / f"recording{index}{k}.wav")
        elif index < 3:
            for k, wav in enumerate(wavs):
                shutil.copy(wav, replay / f"broad{k}.wav")
        else:
            shutil.copytree(speech / speaker, verification / speaker)
    noise = tmp / "corpus" / "noise"
    options = dict(
        dataset="unlabelled", data_folders=f"[{flat}]", verification_folders=f"[{verification}]",
        noise_folders=f"{{noise: {noise / 'noise'}, music: {noise / 'music'}}}", rir_folder=str(tmp / "corpus" / "rir"),
        base_model=str(export), supervision="none", dev_criterion="anchor_retrieval", experiment_name="label_free",
    )
    return tmp, options


@pytest.mark.slow
def test_a_flat_folder_prepares_and_trains_label_free_with_replay(adaptation_data):
    tmp, options = adaptation_data
    run_train("stage2.yaml", tmp, replay_rows=2, replay_folders=f"[{tmp / 'replay'}]", l2sp_weight=0.1,
              consistency_weight=0.5, **options)
    prep = tmp / "results" / "label_free" / "prepared"
    with open(prep / "train.csv") as f:
        train = list(csv.DictReader(f))
    with open(prep / "dev.csv") as f:
        dev = list(csv.DictReader(f))
    assert {row["spk_id"] for row in train} | {row["spk_id"] for row in dev} == {
        f"flat/{name[:-4]}" for name in os.listdir(tmp / "flat")}  # each row's "speaker" is its source file
    assert not {row["spk_id"] for row in train} & {row["spk_id"] for row in dev}  # dev split by file
    assert (prep / "trials.txt").read_text().strip()
    anchors = tmp / "results" / "label_free" / "1986" / "anchors"
    dev_store = AnchorStore.from_file(anchors / "dev_anchors.pt")
    replay_store = AnchorStore.from_file(anchors / "replay_anchors.pt")
    train_store = AnchorStore.from_file(anchors / "anchors.pt")
    assert len(dev_store) == len(dev) and all(s.startswith("replay/") for s in replay_store.speakers)
    fingerprints = {store.provenance["base_fingerprint"] for store in (dev_store, replay_store, train_store)}
    assert len(fingerprints) == 1  # the same frozen base made all three
    stage = tmp / "results" / "label_free" / "1986" / "stage2"
    log = (stage / "train_log.txt").read_text()
    for term in ("loss_anchor", "loss_replay", "loss_l2sp", "loss_consistency", "ErrorRate"):
        assert term in log
    assert "loss_aam" not in log
    ckpt = Checkpointer(stage / "save").find_checkpoint()
    assert 0.0 <= ckpt.meta["ErrorRate"] <= 1.0
    weights = torch.load(ckpt.paramfiles["embedding_model"])
    assert all(torch.isfinite(w).all() for w in weights.values() if w.is_floating_point())


def test_label_free_stage2_refuses_a_classifier_only_key(tmp_path):
    line = refused("stage2.yaml", tmp_path, supervision="none", dev_criterion="anchor_retrieval",
                   classifier_head="anchor_centroids")
    assert "classifier_head" in line and "supervision is none" in line
    line = refused("stage2.yaml", tmp_path, supervision="none", dev_criterion="classification")
    assert "'dev_criterion' must be one of anchor_retrieval when supervision is 'none'" in line


@pytest.mark.slow
def test_wise_export_is_alpha_base_plus_one_minus_alpha_adapted_and_auto_chooses_on_the_dev_criterion(
        adaptation_data):
    from anchor_reg.export import main as export_main
    from anchor_reg.checkpointer import best_checkpoint

    tmp, options = adaptation_data
    run_train("stage2.yaml", tmp, **dict(options, experiment_name="wise"))
    stage = tmp / "results" / "wise" / "1986" / "stage2"
    assert export_main([str(stage), str(tmp / "wise_export"), "--wise_alpha=0.25"]) == 0
    adapted = torch.load(pathlib.Path(best_checkpoint(stage / "save").path) / "embedding_model.ckpt")
    base = torch.load(tmp / "export" / "embedding_model.ckpt")
    mixed = torch.load(tmp / "wise_export" / "embedding_model.ckpt")
    assert set(mixed) == set(adapted)
    for key, value in adapted.items():
        expected = 0.25 * base[key] + 0.75 * value if value.is_floating_point() else value
        assert torch.allclose(mixed[key], expected, atol=1e-7), key
    assert "0.25 x base + 0.75 x adapted" in (tmp / "wise_export" / "README.md").read_text()
    assert export_main([str(stage), str(tmp / "wise_auto"), "--wise_alpha=auto"]) == 0
    card = (tmp / "wise_auto" / "README.md").read_text()
    assert "chosen by the dev criterion" in card and "0.75:" in card
    assert export_main([str(stage), str(tmp / "bad"), "--wise_alpha=1.5"]) == 2  # argparse's usage error


@pytest.mark.slow
def test_adapt_yaml_trains_a_labelled_folder_with_replay_and_early_stopping_on_retrieval(adaptation_data):
    tmp, options = adaptation_data
    import sys

    from tiny import REPO
    sys.path.insert(0, str(REPO))
    import train

    flags = {key: options[key] for key in ("noise_folders", "rir_folder", "base_model")}
    train.main([str(REPO / "hparams" / "adapt.yaml"), f"--data_folders=[{tmp / 'corpus' / 'speech'}]",
                f"--replay_folders=[{tmp / 'replay'}]", f"--output_base={tmp / 'results'}", "--replay_rows=2",
                "--number_of_epochs=2", "--batch_size=4", "--anchor_batch_size=4", "--seg_dur=1.5",
                "--verification_speakers=3", "--babble_mixtures=4", "--num_workers=0",
                "--evaluate_after_training=False", "--device=cpu", "--noprogressbar", "--replay_dev_rows=1",
                *[f"--{key}={value}" for key, value in flags.items()]])
    log = (tmp / "results" / "adapt" / "1986" / "stage2" / "train_log.txt").read_text().splitlines()
    assert len(log) == 2 and all("loss_aam" in line and "loss_replay" in line and "retrieval_broad" in line
                                 for line in log)


@pytest.mark.slow
def test_label_free_replay_stage_logs_both_criterion_parts_and_wise_auto_uses_the_broad_part(adaptation_data):
    import types

    from anchor_reg.export import _load_training_yaml
    from anchor_reg.replay import broad_dev_ids
    from anchor_reg.wise import dev_retrieval_errors

    tmp, options = adaptation_data
    run_train("stage2.yaml", tmp, replay_rows=2, replay_folders=f"[{tmp / 'replay'}]", replay_dev_rows=1,
              **dict(options, experiment_name="broad", number_of_epochs=2))
    stage = tmp / "results" / "broad" / "1986" / "stage2"
    log = (stage / "train_log.txt").read_text().splitlines()
    assert len(log) == 2
    for line in log:
        valid = dict(item.split(": ") for item in line.split("valid ")[1:] if ": " in item)
        parts = {key: float(value.rstrip(", ")) for key, value in valid.items()}
        assert set(parts) == {"loss", "ErrorRate", "retrieval_dev", "retrieval_broad"}
        assert parts["ErrorRate"] == pytest.approx((parts["retrieval_dev"] + parts["retrieval_broad"]) / 2, rel=0.02)
    tree, _ = _load_training_yaml(stage / "hyperparams.yaml")
    prep = pathlib.Path(str(tree["prep_folder"]))
    held = broad_dev_ids(tree)
    with open(prep / "replay.csv") as f:
        replay_files = {row["ID"]: row["spk_id"] for row in csv.DictReader(f)}
    assert held and {replay_files[i] for i in held} < set(replay_files.values())  # some files, not all
    # an encoder that embeds every noisy copy as the first broad row's anchor: among the broad rows' anchors only
    # that row is found, among the dev anchors only the dev row whose anchor is nearest it
    anchors = stage.parent / "anchors"
    target = AnchorStore.from_file(anchors / "replay_anchors.pt").lookup(held[:1])
    encoder = types.SimpleNamespace(mods=types.SimpleNamespace(embedding_model=types.SimpleNamespace(
        load_state_dict=lambda state: None)), encode_batch=lambda wav: target.reshape(1, 1, -1))
    n_dev, n_broad = len(AnchorStore.from_file(anchors / "dev_anchors.pt")), len(held)
    state = {"w": torch.zeros(1)}
    errors = dev_retrieval_errors(tree, encoder, state, state, grid=(0.5,))
    assert errors[0.5] == pytest.approx(((n_dev - 1) / n_dev + (n_broad - 1) / n_broad) / 2)
    tree["replay_dev_rows"] = 0
    assert dev_retrieval_errors(tree, encoder, state, state, grid=(0.5,))[0.5] == pytest.approx((n_dev - 1) / n_dev)
    line = refused("stage2.yaml", tmp, replay_rows=2, replay_folders=f"[{tmp / 'replay'}]", replay_dev_rows=1000,
                   **dict(options, experiment_name="broad_all"))
    assert "replay_dev_rows: 1000 would hold out every replay row" in line
