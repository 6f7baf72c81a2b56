"""Tests for anchor_reg.export: SpeechBrain inference export and hub upload.

A tiny trained stage folder is built the way train.py leaves one (resolved
training YAML with training-only objects, Checkpointer save/, label encoder),
exported, and loaded back offline with SpeechBrain's inference interfaces.
"""

import copy
import hashlib
import json
import pathlib
import shutil
import time
import types

import huggingface_hub
import pytest
import soundfile
import torch
from huggingface_hub.utils import HfHubHTTPError, filter_repo_objects
from hyperpyyaml import load_hyperpyyaml, resolve_references

import ruamel.yaml

from anchor_reg import hub, report
from anchor_reg.anchors import AnchorStore
from anchor_reg.errors import ExportError, HubError
from anchor_reg.evaluate import encoder_of
from anchor_reg.export import export_model, main
from anchor_reg.hub import push_to_hub
from anchor_reg.model_card import dataset_names
from speechbrain.core import INTRA_EPOCH_CKPT_FLAG
from speechbrain.dataio.encoder import CategoricalEncoder
from speechbrain.inference.speaker import EncoderClassifier, SpeakerRecognition
from speechbrain.utils.checkpoints import Checkpointer
from speechbrain.utils.epoch_loop import EpochCounter

SAMPLE_RATE = 16000
SPEAKERS = ["id001", "id002", "id003", "id004"]
EXPORTED = {
    "README.md",
    "classifier.ckpt",
    "embedding_model.ckpt",
    "hyperparams.yaml",
    "label_encoder.ckpt",
    "mean_var_norm.ckpt",
    "training_hparams.yaml",
}

ECAPA_MODEL = """
compute_features: !new:speechbrain.lobes.features.Fbank
    n_mels: !ref <n_mels>
mean_var_norm: !new:speechbrain.processing.features.InputNormalization
    norm_type: sentence
    std_norm: False
embedding_model: !new:speechbrain.lobes.models.ECAPA_TDNN.ECAPA_TDNN
    input_size: !ref <n_mels>
    channels: [32, 32, 32, 32, 96]
    kernel_sizes: [5, 3, 3, 3, 1]
    dilations: [1, 2, 3, 4, 1]
    attention_channels: 16
    se_channels: 16
    lin_neurons: !ref <emb_dim>
classifier: !new:speechbrain.lobes.models.ECAPA_TDNN.Classifier
    input_size: !ref <emb_dim>
    out_neurons: 4
"""

# A custom backbone and a stateful (global) feature normaliser.
RESNET_MODEL = """
compute_features: !new:speechbrain.lobes.features.Fbank
    n_mels: !ref <n_mels>
mean_var_norm: !new:speechbrain.processing.features.InputNormalization
    norm_type: global
    std_norm: False
embedding_model: !new:speechbrain.lobes.models.ResNet.ResNet
    input_size: !ref <n_mels>
    channels: [4, 4, 8, 8]
    block_sizes: [1, 1, 1, 1]
    strides: [1, 2, 2, 2]
    lin_neurons: !ref <emb_dim>
    activation: !name:torch.nn.LeakyReLU
classifier: !new:speechbrain.lobes.models.ResNet.Classifier
    input_size: !ref <emb_dim>
    out_neurons: 4
"""

TRAINING_ONLY = """
seed: 1986
__set_seed: !apply:torch.manual_seed [!ref <seed>]
data_folder: /nonexistent/data
output_folder: !ref /nonexistent/results/<seed>/stage2
save_folder: !ref <output_folder>/save
train_annotation: !ref <data_folder>/train.csv
number_of_epochs: 3
batch_size: 8
lr: 0.001
stage: stage2
base_model: /home/someone/models/ecapa-base
anchor_objective: contrastive
anchor_weight: 0.5
anchor_distance: cosine
snr_low: 0
snr_high: 15
add_noise: !new:speechbrain.augment.time_domain.AddNoise
    csv_file: /nonexistent/noise.csv
    snr_low: !ref <snr_low>
    snr_high: !ref <snr_high>
augmenter: !new:speechbrain.augment.augmenter.Augmenter
    augmentations: [!ref <add_noise>]
modules:
    compute_features: !ref <compute_features>
    mean_var_norm: !ref <mean_var_norm>
    embedding_model: !ref <embedding_model>
    classifier: !ref <classifier>
opt_class: !name:torch.optim.Adam
    lr: !ref <lr>
epoch_counter: !new:speechbrain.utils.epoch_loop.EpochCounter
    limit: !ref <number_of_epochs>
checkpointer: !new:speechbrain.utils.checkpoints.Checkpointer
    checkpoints_dir: !ref <save_folder>
    recoverables:
        embedding_model: !ref <embedding_model>
        classifier: !ref <classifier>
        normalizer: !ref <mean_var_norm>
        counter: !ref <epoch_counter>
"""


def finished_counter(epochs):
    """An epoch counter that has counted all of its ``epochs``."""
    counter = EpochCounter(epochs)
    counter.current = epochs
    return counter


def make_stage(folder, model_yaml):
    """Writes a trained-looking stage folder; returns its model modules."""
    head = f"sample_rate: {SAMPLE_RATE}\nn_mels: 80\nemb_dim: 32\n"
    folder.mkdir(parents=True)
    (folder / "train.yaml").write_text(head + model_yaml + TRAINING_ONLY)
    with open(folder / "train.yaml") as fin:
        resolved = resolve_references(fin).getvalue()
    (folder / "hyperparams.yaml").write_text(resolved)
    (folder / "train.yaml").unlink()

    torch.manual_seed(0)
    modules = load_hyperpyyaml(head + model_yaml)
    wavs = torch.randn(3, SAMPLE_RATE // 2)
    lens = torch.ones(3)
    for name in ("mean_var_norm", "embedding_model", "classifier"):
        modules[name].train()  # moves BatchNorm / global-norm statistics
    feats = modules["mean_var_norm"](modules["compute_features"](wavs), lens)
    modules["classifier"](modules["embedding_model"](feats, lens))
    for name in ("mean_var_norm", "embedding_model", "classifier"):
        modules[name].eval()

    Checkpointer(
        folder / "save",
        recoverables={
            "embedding_model": modules["embedding_model"],
            "classifier": modules["classifier"],
            "normalizer": modules["mean_var_norm"],
            "counter": finished_counter(3),  # training state, not exported
        },
    ).save_checkpoint()
    labels = CategoricalEncoder()
    labels.update_from_iterable(SPEAKERS)
    labels.save(folder / "save" / "label_encoder.txt")
    return modules


@pytest.fixture(autouse=True)
def offline(monkeypatch):
    """No test may reach the network (SpeechBrain fetch or the hub client)."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)


@pytest.fixture(scope="module")
def ecapa_stage(tmp_path_factory):
    """An ECAPA-TDNN stage folder and its training modules."""
    folder = tmp_path_factory.mktemp("ecapa") / "stage2"
    return folder, make_stage(folder, ECAPA_MODEL)


@pytest.fixture(scope="module")
def ecapa_export(ecapa_stage, tmp_path_factory):
    """The ECAPA stage exported once (tests must not modify it)."""
    out = tmp_path_factory.mktemp("export") / "ecapa"
    export_model(ecapa_stage[0], out, model_name="someone/anchor-ecapa")
    return out


@pytest.fixture(scope="module")
def wav_files(tmp_path_factory):
    """Two short noise wav files (16 kHz mono) of different lengths."""
    folder = tmp_path_factory.mktemp("wavs")
    generator = torch.Generator().manual_seed(3)
    paths = []
    for index, seconds in enumerate((1.0, 0.7)):
        wav = 0.1 * torch.randn(int(seconds * SAMPLE_RATE), generator=generator)
        paths.append(folder / f"utt{index}.wav")
        soundfile.write(paths[-1], wav.numpy(), SAMPLE_RATE)
    return paths


def training_embeddings(modules, wavs, lens):
    """Embeddings exactly as computed during training, (B, 1, emb_dim)."""
    with torch.no_grad():
        feats = modules["mean_var_norm"](modules["compute_features"](wavs), lens)
        return modules["embedding_model"](feats, lens)


def padded_batch(paths):
    """Loads wav files into a zero-padded batch and relative lengths."""
    wavs = [torch.from_numpy(soundfile.read(p, dtype="float32")[0]) for p in paths]
    batch = torch.nn.utils.rnn.pad_sequence(wavs, batch_first=True)
    lens = torch.tensor([len(w) / batch.shape[1] for w in wavs])
    return batch, lens


def check_embeddings_match(out, modules, wav_files):
    """The exported encoder reproduces the training embeddings."""
    encoder = EncoderClassifier.from_hparams(
        source=str(out), savedir=str(out), run_opts={"device": "cpu"}
    )
    wavs, lens = padded_batch(wav_files)
    expected = training_embeddings(modules, wavs, lens)
    embeddings = encoder.encode_batch(wavs, lens)
    assert embeddings.shape in ((2, 1, 32), (2, 32))  # ResNet has no time axis
    torch.testing.assert_close(embeddings, expected, rtol=1e-4, atol=1e-5)
    _, _, index, labels = encoder.classify_batch(wavs, lens)
    assert set(labels) <= set(SPEAKERS)
    assert labels == [SPEAKERS[i] for i in index.tolist()]


def test_export_layout_and_inference_yaml(ecapa_stage, ecapa_export):
    stage, _ = ecapa_stage
    assert {p.name for p in ecapa_export.iterdir()} == EXPORTED
    text = (ecapa_export / "hyperparams.yaml").read_text()
    for needed in (
        "embedding_model: !new:speechbrain.lobes.models.ECAPA_TDNN.ECAPA_TDNN",
        "channels: [32, 32, 32, 32, 96]",
        "out_neurons: 4",
        "label_encoder: !new:speechbrain.dataio.encoder.CategoricalEncoder",
        "pretrainer: !new:speechbrain.utils.parameter_transfer.Pretrainer",
        "mean_var_norm: !ref <mean_var_norm>",
    ):
        assert needed in text
    for training_only in ("AddNoise", "Adam", "manual_seed", "Checkpointer", "nonexistent"):
        assert training_only not in text
    # the training YAML, with this machine's absolute paths redacted (data_folder is a PATH_ROOTS key)
    expected = (stage / "hyperparams.yaml").read_text()
    for path, published in (
        ("/nonexistent/data/train.csv", "<data_folder>/train.csv"),
        ("/nonexistent/data", "<data_folder>"),
        ("/nonexistent/results/1986/stage2/save", "<redacted>/save"),
        ("/nonexistent/results/1986/stage2", "<redacted>/stage2"),
        ("/nonexistent/noise.csv", "<redacted>/noise.csv"),
        ("/home/someone/models/ecapa-base", "<redacted>/ecapa-base"),
    ):
        assert path in expected
        expected = expected.replace(path, published)
    published = (ecapa_export / "training_hparams.yaml").read_text()
    assert published == expected and "/nonexistent" not in published and "/home" not in published
    assert (ecapa_export / "label_encoder.ckpt").read_bytes() == (
        stage / "save" / "label_encoder.txt"
    ).read_bytes()
    assert not list(ecapa_export.parent.glob(".*"))  # no temp folders left


def test_encoder_classifier_matches_training(ecapa_stage, ecapa_export, wav_files):
    check_embeddings_match(ecapa_export, ecapa_stage[1], wav_files)
    assert {p.name for p in ecapa_export.iterdir()} == EXPORTED  # load added nothing


def test_speaker_recognition_verify_files(ecapa_stage, ecapa_export, wav_files, tmp_path):
    # savedir elsewhere: files are linked from the source folder, still offline
    verification = SpeakerRecognition.from_hparams(
        source=str(ecapa_export), savedir=str(tmp_path / "cache"), run_opts={"device": "cpu"}
    )
    score, decision = verification.verify_files(str(wav_files[0]), str(wav_files[1]))
    # the cosine of the two files' training-time embeddings, thresholded at SpeechBrain's default 0.25
    first, second = (
        training_embeddings(ecapa_stage[1], *padded_batch([path])).reshape(-1) for path in wav_files
    )
    cosine = float(torch.nn.functional.cosine_similarity(first, second, dim=0))
    assert float(score) == pytest.approx(cosine, abs=1e-4)
    assert bool(decision) == (cosine > 0.25)
    same, _ = verification.verify_files(str(wav_files[0]), str(wav_files[0]))
    assert float(same) == pytest.approx(1.0, abs=1e-5)


def test_model_card(ecapa_export):
    card = (ecapa_export / "README.md").read_text()
    metadata = card.split("---\n")[1]
    for entry in (
        "language: en",
        "license: apache-2.0",
        "library_name: speechbrain",
        "- ECAPA-TDNN",
        "- noise-robust",
        "- synthetic",  # no dataset key: the recipe's default
        "- minDCF",
    ):
        assert entry in metadata
    assert "model-index" not in metadata  # no results for this stage
    assert "| anchor loss weight (lambda) | `anchor_weight` | 0.5 |" in card
    assert "| channels | `channels` | [32, 32, 32, 32, 96] |" in card
    assert "| highest training SNR (dB) | `snr_high` | 15 |" in card
    assert "anchor_type" not in card  # missing keys are omitted
    # the base is named without the machine's path
    assert "| base model (stage 2 starts from it) | `base_model` | a local model folder, ecapa-base |" in card
    assert "/home/someone" not in card
    assert "| anchor objective | `anchor_objective` | contrastive |" in card
    assert 'source="someone/anchor-ecapa"' in card
    assert "2510.18530" in card and "SpeechBrain" in card
    assert "Training finished: 3 of 3 planned epochs were trained." in card
    assert "| epochs planned | `number_of_epochs` | 3 |" in card


def stage_copy_with_checkpoint(ecapa_stage, folder, meta, counted):
    """A copy of the ECAPA stage whose only checkpoint has ``meta`` and a counter at epoch ``counted``."""
    shutil.copytree(ecapa_stage[0], folder)
    for old in (folder / "save").glob("CKPT+*"):
        shutil.rmtree(old)
    counter = EpochCounter(3)
    counter.current = counted
    modules = ecapa_stage[1]
    return Checkpointer(folder / "save", recoverables={
        "embedding_model": modules["embedding_model"], "classifier": modules["classifier"],
        "normalizer": modules["mean_var_norm"], "counter": counter,
    }).save_checkpoint(meta=meta)


def test_unfinished_stage_needs_allow_unfinished_and_the_card_says_so(ecapa_stage, tmp_path, capsys):
    stage = tmp_path / "stage2"
    stage_copy_with_checkpoint(ecapa_stage, stage, {"epoch": 1, "ErrorRate": 0.5}, 1)  # killed after 1 of 3
    out = tmp_path / "out"
    assert main([str(stage), str(out)]) == 1
    assert capsys.readouterr().err == (
        f"error: {stage} did not finish training: its latest checkpoint has 1 of 3 epochs; resume it with "
        "the command that trained it, or pass --allow_unfinished to export it as it is (its model card then "
        "says so)\n"
    )
    assert not out.exists()
    assert main([str(stage), str(out), "--allow_unfinished"]) == 0  # the remedy
    card = (out / "README.md").read_text()
    assert "**Unfinished training**: 1 of 3 planned epochs were trained (exported with `--allow_unfinished`)." in card
    assert "Training finished" not in card


def test_a_finished_stage_exports_its_best_earlier_epoch_without_allow_unfinished(ecapa_stage, tmp_path):
    stage = tmp_path / "stage2"
    best = stage_copy_with_checkpoint(ecapa_stage, stage, {"epoch": 2, "ErrorRate": 0.2}, 2)
    time.sleep(0.01)  # checkpoints are ordered by their save time
    modules = ecapa_stage[1]
    counter = EpochCounter(3)
    counter.current = 3
    Checkpointer(stage / "save", recoverables={
        "embedding_model": modules["embedding_model"], "classifier": modules["classifier"],
        "normalizer": modules["mean_var_norm"], "counter": counter,
    }).save_checkpoint(meta={"epoch": 3, "ErrorRate": 0.4})  # the last epoch, worse on dev
    card = (export_model(stage, tmp_path / "out") / "README.md").read_text()
    assert "Training finished: 3 of 3 planned epochs were trained." in card
    assert best.path.name in card  # the exported checkpoint is the best one


def test_early_stopped_and_mid_epoch_checkpoints(ecapa_stage, tmp_path):
    stopped = tmp_path / "stopped"
    stage_copy_with_checkpoint(ecapa_stage, stopped, {"epoch": 2, "stopped_early": True}, 2)
    card = (export_model(stopped, tmp_path / "a") / "README.md").read_text()
    assert "Training finished: early stopping (no better dev ErrorRate) ended it after 2 of 3 planned epochs." in card
    mid = tmp_path / "mid"  # a mid-epoch checkpoint of epoch 3 (no epoch meta): 2 epochs done
    ckpt = stage_copy_with_checkpoint(ecapa_stage, mid, {INTRA_EPOCH_CKPT_FLAG: True}, 3)
    with pytest.raises(ExportError, match="has 2 of 3 epochs"):
        export_model(mid, tmp_path / "b", checkpoint=ckpt.path)
    out = export_model(mid, tmp_path / "b", checkpoint=ckpt.path, allow_unfinished=True)
    assert "**Unfinished training**: 2 of 3 planned epochs" in (out / "README.md").read_text()


def edit_training_yaml(stage, **values):
    """Sets keys of a stage's hyperparams.yaml (round-trip: tags and other keys kept)."""
    yaml = ruamel.yaml.YAML()
    path = stage / "hyperparams.yaml"
    tree = yaml.load(path.read_text())
    tree.update(values)
    with open(path, "w") as out:
        yaml.dump(tree, out)


def test_card_names_the_real_data_the_base_and_redacts_whole_paths(ecapa_stage, tmp_path):
    stage = tmp_path / "stage2"
    shutil.copytree(ecapa_stage[0], stage)
    anchors = tmp_path / "anchors"
    spaced = "/home/John Smith/\u00f1and\u00fa caf\u00e9/dsp"  # /home/John Smith/ñandú café/dsp
    edit_training_yaml(
        stage, dataset="folder", data_folders=["/srv/corpora/asc", spaced], base_model="speechbrain/spkrec-ecapa-voxceleb",
        anchors=str(anchors / "anchors.pt"), rir_folder=f"{spaced}/rirs, room 2/simulated", noise_csv=f"{spaced}/all noise.csv",
    )
    anchors.mkdir()
    AnchorStore.from_embeddings(["a", "b"], ["s1", "s2"], torch.randn(2, 4), provenance={
        "base_kind": "hub", "base_model": "speechbrain/spkrec-ecapa-voxceleb", "base_revision": "0f99f2d",
    }).save(anchors / "anchors.pt")
    out = export_model(stage, tmp_path / "out")
    card = (out / "README.md").read_text()
    metadata = card.split("---\n")[1]
    assert "- asc\n" in metadata and "- dsp\n" in metadata and "synthetic" not in card
    assert "Training data: asc, dsp." in card
    assert "Stage 2 started from: speechbrain/spkrec-ecapa-voxceleb (revision 0f99f2d)." in card
    published = (out / "training_hparams.yaml").read_text()
    for private in ("John", "Smith", "\u00f1and\u00fa", "caf\u00e9", "room 2", "/home", "/srv"):
        assert private not in published, private
    assert "<redacted>/dsp" in published and "<redacted>/all noise.csv" in published and "<redacted>/simulated" in published
    assert dataset_names(None, {"dataset": "voxceleb"}) == ["voxceleb"]


def test_results_in_card_from_stage_folder(ecapa_stage, tmp_path):
    # the layout anchor_reg.evaluate writes, picked up from <stage>/eval/
    stage = tmp_path / "stage2"
    shutil.copytree(ecapa_stage[0], stage)
    (stage / "eval").mkdir()
    (stage / "eval" / "results.json").write_text(
        json.dumps(
            {
                "system": "stage2",
                "settings": {"seed": 1},
                "min_dcf_definition": "minDCF at p_target=0.01.",
                "conditions": {
                    "clean": {"noise_type": "clean", "snr": None, "eer_percent": 1.234,
                              "min_dcf": 0.1, "n_trials": 100, "geometry": {"drift": 0.0}},
                    "babble_0dB": {"noise_type": "babble", "snr": 0.0, "eer_percent": 7.5,
                                   "min_dcf": 0.45, "n_trials": 100, "geometry": {"drift": 0.2}},
                },
            }
        )
    )
    out = export_model(stage, tmp_path / "out", model_name="someone/m")
    card = (out / "README.md").read_text()
    assert "| condition | EER (%) | minDCF | noise_type | snr | n_trials |" in card
    assert "| clean | 1.23 | 0.1 | clean | - | 100 |" in card
    assert "| babble_0dB | 7.50 | 0.45 | babble | 0 | 100 |" in card
    assert "minDCF at p_target=0.01." in card and "drift" not in card
    metadata = card.split("---\n")[1]
    assert "model-index:" in metadata and "name: someone/m" in metadata
    assert "value: 7.5" in metadata and "type: mindcf" in metadata


def test_results_argument(ecapa_stage, tmp_path):
    results = {"system": "s", "conditions": {"noise_5dB": {"EER": 3.0, "minDCF": 0.25}}}
    out = export_model(ecapa_stage[0], tmp_path / "out", results=results)
    assert "| noise_5dB | 3.00 | 0.25 |" in (out / "README.md").read_text()
    with pytest.raises(ExportError, match="condition 'clean' has no EER"):
        export_model(ecapa_stage[0], tmp_path / "bad", results={"conditions": {"clean": {}}})
    with pytest.raises(ExportError, match="cannot read results file"):
        export_model(ecapa_stage[0], tmp_path / "bad", results=tmp_path / "none.json")
    assert not (tmp_path / "bad").exists()


def test_export_refuses_to_replace_files_it_did_not_write(ecapa_stage, ecapa_export, tmp_path):
    out = tmp_path / "out"
    shutil.copytree(ecapa_export, out)
    (out / "notes.txt").write_text("mine")
    with pytest.raises(ExportError, match="also holds notes.txt, which export did not write.*--overwrite"):
        export_model(ecapa_stage[0], out)
    assert (out / "notes.txt").read_text() == "mine"
    assert main([str(ecapa_stage[0]), str(out)]) == 1
    assert (out / "notes.txt").is_file()
    assert main([str(ecapa_stage[0]), str(out), "--overwrite"]) == 0
    assert {p.name for p in out.iterdir()} == EXPORTED


def test_export_evaluates_once_before_writing_the_card(ecapa_stage, tmp_path, wav_files):
    seen = []

    def evaluate(folder):
        seen.append({p.name for p in folder.iterdir()})
        check_embeddings_match(folder, ecapa_stage[1], wav_files)  # the verified export, as users load it
        return {"system": "s", "conditions": {"clean": {"EER": 4.0, "minDCF": 0.5}}}

    out = export_model(ecapa_stage[0], tmp_path / "out", evaluate=evaluate)
    assert seen == [EXPORTED - {"README.md"}]
    assert "| clean | 4.00 | 0.5 |" in (out / "README.md").read_text()


def test_report_exports_each_stage_once(ecapa_stage, tmp_path, monkeypatch):
    exports = []

    def counting_export(*args, **kwargs):
        exports.append(args)
        return export_model(*args, **kwargs)

    def fake_evaluate_model(encoder, **kwargs):
        assert hasattr(encoder, "encode_batch")
        return {"system": kwargs["system_name"], "conditions": {"clean": {"EER": 2.5, "minDCF": 0.125}}}

    monkeypatch.setattr(report, "export_model", counting_export)
    monkeypatch.setattr(report, "evaluate_model", fake_evaluate_model)
    results = report.evaluate_stage(ecapa_stage[0], tmp_path / "prep", tmp_path / "out", system_name="stage2",
                                    noise_types=["noise"], snrs=[0])
    assert len(exports) == 1 and results["conditions"]["clean"]["EER"] == 2.5
    assert "| clean | 2.50 | 0.125 |" in (tmp_path / "out" / "export" / "README.md").read_text()


def test_encoder_of_a_stage_folder_writes_nothing(ecapa_stage, tmp_path, wav_files):
    stage = tmp_path / "stage2"
    shutil.copytree(ecapa_stage[0], stage)
    before = sorted(p.relative_to(stage) for p in stage.rglob("*"))
    encoder = encoder_of(stage)
    assert sorted(p.relative_to(stage) for p in stage.rglob("*")) == before
    wavs, lens = padded_batch(wav_files)
    torch.testing.assert_close(
        encoder.encode_batch(wavs, lens), training_embeddings(ecapa_stage[1], wavs, lens), rtol=1e-4, atol=1e-5
    )


def test_resnet_backbone_exports_and_loads(tmp_path, wav_files):
    modules = make_stage(tmp_path / "stage", RESNET_MODEL)
    assert modules["mean_var_norm"].count > 0  # global statistics to export
    out = export_model(tmp_path / "stage", tmp_path / "out")
    assert "!new:speechbrain.lobes.models.ResNet.ResNet" in (out / "hyperparams.yaml").read_text()
    assert "- ResNet" in (out / "README.md").read_text()
    check_embeddings_match(out, modules, wav_files)


def test_failed_export_keeps_existing_export(ecapa_stage, ecapa_export, tmp_path):
    out = tmp_path / "out"
    shutil.copytree(ecapa_export, out)
    before = {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in out.iterdir()}
    stage = tmp_path / "stage2"
    shutil.copytree(ecapa_stage[0], stage)
    yaml_file = stage / "hyperparams.yaml"
    yaml_file.write_text(yaml_file.read_text().replace("out_neurons: 4", "out_neurons: 5"))

    with pytest.raises(ExportError, match="classifier.ckpt does not match `classifier`"):
        export_model(stage, out)
    after = {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in out.iterdir()}
    assert after == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out", "stage2"]
    assert (stage / "save").is_dir()

    export_model(ecapa_stage[0], out)  # a good export replaces the old one
    assert {p.name for p in out.iterdir()} == EXPORTED
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out", "stage2"]


def test_checkpoint_choice(ecapa_stage, tmp_path):
    stage = tmp_path / "stage2"
    shutil.copytree(ecapa_stage[0], stage)
    (end_of_epoch,) = (stage / "save").glob("CKPT+*")
    changed = copy.deepcopy(ecapa_stage[1]["embedding_model"])
    with torch.no_grad():
        next(changed.parameters()).add_(1.0)
    mid_epoch = Checkpointer(
        stage / "save",
        recoverables={
            "embedding_model": changed,
            "classifier": ecapa_stage[1]["classifier"],
        },
    ).save_checkpoint(meta={INTRA_EPOCH_CKPT_FLAG: True})

    out = export_model(stage, tmp_path / "latest")  # mid-epoch ones are skipped
    assert (out / "embedding_model.ckpt").read_bytes() == (
        end_of_epoch / "embedding_model.ckpt"
    ).read_bytes()
    out = export_model(stage, tmp_path / "chosen", checkpoint=mid_epoch.path, allow_unfinished=True)
    assert (out / "embedding_model.ckpt").read_bytes() == (
        mid_epoch.path / "embedding_model.ckpt"
    ).read_bytes()
    # no normaliser file in that checkpoint: not a Pretrainer loadable
    assert not (out / "mean_var_norm.ckpt").exists()
    assert "    mean_var_norm: !ref" not in (out / "hyperparams.yaml").read_text()


def test_refuses_dangerous_destinations(ecapa_stage, tmp_path):
    stage = ecapa_stage[0]
    with pytest.raises(ExportError, match="contains the stage folder"):
        export_model(stage, stage.parent)
    other = tmp_path / "notes"
    other.mkdir()
    (other / "keep.txt").write_text("precious")
    with pytest.raises(ExportError, match="is not a model export"):
        export_model(stage, other)
    assert (other / "keep.txt").read_text() == "precious"
    with pytest.raises(ExportError, match="not a trained stage folder"):
        export_model(tmp_path / "missing", tmp_path / "out")


def fake_hub(monkeypatch, create_error=None, store=None):
    """Intercepts HfApi.create_repo / upload_folder; returns the call log.

    With ``store``, uploaded files are copied to ``store/<repo_id>/``.
    """
    calls = []

    def create_repo(self, repo_id, **kwargs):
        calls.append(("create_repo", repo_id, kwargs))
        if create_error is not None:
            raise create_error

    def upload_folder(self, *, repo_id, folder_path, allow_patterns=None, **kwargs):
        folder = pathlib.Path(folder_path)
        local = [p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file()]
        uploaded = sorted(filter_repo_objects(local, allow_patterns=allow_patterns))
        calls.append(("upload_folder", repo_id, uploaded, self.token, kwargs))
        for name in uploaded if store else []:
            (store / repo_id / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(folder / name, store / repo_id / name)

    monkeypatch.setattr(huggingface_hub.HfApi, "create_repo", create_repo)
    monkeypatch.setattr(huggingface_hub.HfApi, "upload_folder", upload_folder)
    return calls


def test_push_uploads_exact_files(ecapa_export, monkeypatch):
    calls = fake_hub(monkeypatch)
    (ecapa_export / ".cache").mkdir()  # hidden folders are not uploaded
    try:
        files = push_to_hub(ecapa_export, "someone/anchor-ecapa", token="hf_test", private=True)
    finally:
        (ecapa_export / ".cache").rmdir()
    assert files == sorted(EXPORTED)
    (_, repo, create_kwargs), (_, upload_repo, uploaded, token, upload_kwargs) = calls
    assert repo == upload_repo == "someone/anchor-ecapa"
    assert create_kwargs["private"] is True and create_kwargs["exist_ok"] is False
    assert uploaded == sorted(EXPORTED)
    assert token == "hf_test"
    assert upload_kwargs["repo_type"] == "model"


def test_pushed_repo_loads_from_hub_id(ecapa_stage, ecapa_export, wav_files, tmp_path, monkeypatch):
    store = tmp_path / "hub"
    fake_hub(monkeypatch, store=store)
    push_to_hub(ecapa_export, "someone/anchor-ecapa", token="hf_test")

    def hf_hub_download(repo_id, filename, **kwargs):
        path = store / repo_id / filename
        if not path.is_file():
            raise ValueError(f"{filename} was not uploaded to {repo_id}")
        return str(path)

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", hf_hub_download)
    encoder = EncoderClassifier.from_hparams(
        source="someone/anchor-ecapa",
        savedir=str(tmp_path / "pretrained"),
        run_opts={"device": "cpu"},
    )
    wavs, lens = padded_batch(wav_files)
    torch.testing.assert_close(
        encoder.encode_batch(wavs, lens),
        training_embeddings(ecapa_stage[1], wavs, lens),
        rtol=1e-4,
        atol=1e-5,
    )


def test_push_without_token_fails_before_network(ecapa_export, monkeypatch):
    calls = fake_hub(monkeypatch)
    monkeypatch.delenv("HF_TOKEN", raising=False)
    monkeypatch.delenv("HUGGING_FACE_HUB_TOKEN", raising=False)
    monkeypatch.setattr(hub, "get_token", lambda: None)
    with pytest.raises(HubError, match="no Hugging Face token"):
        push_to_hub(ecapa_export, "someone/anchor-ecapa")
    assert calls == []


def test_push_token_from_environment(ecapa_export, monkeypatch):
    calls = fake_hub(monkeypatch)
    monkeypatch.setenv("HF_TOKEN", "hf_from_env")
    push_to_hub(ecapa_export, "someone/anchor-ecapa", exist_ok=True)
    assert calls[0][2]["exist_ok"] is True
    assert calls[1][3] == "hf_from_env"


def test_push_refuses_existing_repo(ecapa_export, monkeypatch):
    conflict = types.SimpleNamespace(status_code=409, headers={}, request=None)
    calls = fake_hub(monkeypatch, HfHubHTTPError("409 Conflict", response=conflict))
    with pytest.raises(HubError, match="already exists; pass --exist-ok"):
        push_to_hub(ecapa_export, "someone/anchor-ecapa", token="hf_test")
    assert [call[0] for call in calls] == ["create_repo"]


def test_push_network_down_names_repo(ecapa_export):
    # the real client, with offline mode on: no request leaves the machine
    with pytest.raises(HubError, match="someone/anchor-ecapa"):
        push_to_hub(ecapa_export, "someone/anchor-ecapa", token="hf_test")
    assert (ecapa_export / "embedding_model.ckpt").is_file()


def test_dry_run_lists_files_without_token(ecapa_export, monkeypatch):
    calls = fake_hub(monkeypatch)
    monkeypatch.setattr(hub, "get_token", lambda: None)
    assert push_to_hub(ecapa_export, "someone/x", dry_run=True) == sorted(EXPORTED)
    assert calls == []


def test_cli_export_and_dry_run(ecapa_stage, tmp_path, capsys):
    out = tmp_path / "cli"
    code = main(
        [str(ecapa_stage[0]), str(out), "--push", "--dry-run", "--repo-id", "someone/cli"]
    )
    assert code == 0
    printed = capsys.readouterr().out
    assert "would upload to someone/cli:" in printed
    size = (out / "embedding_model.ckpt").stat().st_size
    assert f"embedding_model.ckpt  {size} bytes" in printed
    assert 'source="someone/cli"' in (out / "README.md").read_text()


def test_cli_errors_are_one_line(tmp_path, capsys):
    assert main([str(tmp_path / "nope"), str(tmp_path / "out")]) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: not a trained stage folder") and err.count("\n") == 1
    assert main([str(tmp_path), str(tmp_path / "out"), "--push"]) == 2
    assert "--push needs --repo-id" in capsys.readouterr().err
