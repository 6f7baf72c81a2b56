"""Stage 2 from a SpeechBrain inference model (a folder or a hub ID): a tiny stage 1, exported, is the base."""
import os
import pathlib
import re
import shutil
import subprocess
import sys
import threading

import pytest
import torch
import torch.nn.functional as F
from speechbrain.dataio.encoder import CategoricalEncoder
from speechbrain.inference.speaker import EncoderClassifier
from speechbrain.utils.checkpoints import Checkpointer

from anchor_reg.anchors import AnchorStore
from anchor_reg.base import load_base
from anchor_reg.brains import AnchorRegBrain
from anchor_reg.data.audio import read_audio_checked
from anchor_reg.export import export_model
from anchor_reg.lock import waiting_lock
from anchor_reg.model_folder import savedir_of
from anchor_reg.provenance import read_provenance
from anchor_reg.errors import ConfigError
from tiny import REPO, run_train, tiny_command


def rows(prep_folder):
    """(ID, wav, start, stop, spk_id) of the training CSV."""
    lines = (pathlib.Path(prep_folder) / "train.csv").read_text().splitlines()[1:]
    return [(f[0], f[2], int(f[3]), int(f[4]), f[5]) for f in (line.split(",") for line in lines)]


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """A tiny stage 1 and its anchor_reg.export folder."""
    tmp = tmp_path_factory.mktemp("base")
    run_train("stage1.yaml", tmp)
    export = export_model(tmp / "results" / "default" / "1986" / "stage1", tmp / "export")
    return tmp, export


def seed_folder(tmp, experiment):
    return tmp / "results" / experiment / "1986"


def test_folder_base_anchors_match_its_encode_batch_then_stage2_trains_resumes_and_evaluates(
        exported, monkeypatch, capsys):
    tmp, export = exported
    options = {"base_model": str(export), "experiment_name": "folder"}
    run_train("stage2.yaml", tmp, number_of_epochs=1, **options)
    root = seed_folder(tmp, "folder")
    assert not (root / "stage1").exists()  # no stage 1 of this experiment: the folder is the base
    assert "classifier: the base's own (same speakers)" in (root / "stage2" / "log.txt").read_text()

    # anchors == the export's own EncoderClassifier embeddings of the training rows
    store = AnchorStore.from_file(root / "anchors" / "anchors.pt")
    encoder = EncoderClassifier.from_hparams(source=str(export), savedir=str(tmp / "sb_savedir"),
                                             run_opts={"device": "cpu"})
    train_rows = rows(root.parent / "prepared")
    assert len(store) == len(train_rows)
    for row_id, wav, start, stop, _ in train_rows:
        expected = encoder.encode_batch(read_audio_checked(wav, 16000, start, stop)[None]).reshape(-1)
        assert F.cosine_similarity(store.lookup([row_id])[0], expected, dim=0) > 0.999
    assert store.provenance["base_kind"] == "folder" and store.provenance["base_model"] == str(export)

    # interrupted during epoch 2 (after an intra-epoch checkpoint), then the same command resumes
    real_fit_batch, calls = AnchorRegBrain.fit_batch, []

    def dying_fit_batch(self, batch):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt("killed mid-epoch")
        return real_fit_batch(self, batch)

    monkeypatch.setattr(AnchorRegBrain, "fit_batch", dying_fit_batch)
    with pytest.raises(KeyboardInterrupt):
        run_train("stage2.yaml", tmp, number_of_epochs=2, ckpt_interval_steps=1, **options)
    monkeypatch.setattr(AnchorRegBrain, "fit_batch", real_fit_batch)
    assert any("intra" in str(c.meta) for c in Checkpointer(root / "stage2" / "save").list_checkpoints())
    run_train("stage2.yaml", tmp, number_of_epochs=2, ckpt_interval_steps=1, **options)
    assert "stage2: resuming from" in (root / "stage2" / "log.txt").read_text()
    log = (root / "stage2" / "train_log.txt").read_text()
    assert log.count("epoch: 1,") == 1 and log.count("epoch: 2,") == 1
    ckpt = Checkpointer(root / "stage2" / "save").find_checkpoint(
        ckpt_predicate=lambda c: "brain_intra_epoch_ckpt" not in c.meta)
    assert ckpt.meta["epoch"] == 2
    assert read_provenance(ckpt.paramfiles["provenance"])["anchors_digest"] == store.digest()

    # the finished stage 2 is evaluated beside its base
    capsys.readouterr()
    run_train("stage2.yaml", tmp, number_of_epochs=2, ckpt_interval_steps=1, evaluate_after_training=True,
              eval_noise_types="[noise]", eval_snrs="[0]", **options)
    table = capsys.readouterr().out
    assert "| system | clean | noise_0dB | mean noisy |" in table
    assert f"| base ({export}) |" in table and "| stage2 |" in table


def hub_snapshot(export, hf_home, repo_id, commit):
    """Lays an export out as huggingface_hub's cache holds a downloaded model repo."""
    repo = pathlib.Path(hf_home) / "hub" / f"models--{repo_id.replace('/', '--')}"
    snapshot = repo / "snapshots" / commit
    shutil.copytree(export, snapshot)
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(commit)


def test_hub_id_loads_offline_from_the_cache_with_the_same_anchors(exported):
    tmp, export = exported
    commit = "0123456789abcdef0123456789abcdef01234567"
    hub_snapshot(export, tmp / "hf_home", "anchor-reg/tiny-ecapa", commit)
    env = dict(os.environ, HF_HOME=str(tmp / "hf_home"), HF_HUB_OFFLINE="1", PYTHONPATH=str(REPO))
    for experiment, base in (("hub", "anchor-reg/tiny-ecapa"), ("hub_folder", str(export))):
        args = tiny_command("stage2.yaml", tmp, base_model=base, experiment_name=experiment)
        done = subprocess.run([sys.executable, "train.py", *args], cwd=REPO, env=env, capture_output=True,
                              text=True, timeout=900)
        assert done.returncode == 0, done.stderr[-3000:]
    hub = AnchorStore.from_file(seed_folder(tmp, "hub") / "anchors" / "anchors.pt")
    folder = AnchorStore.from_file(seed_folder(tmp, "hub_folder") / "anchors" / "anchors.pt")
    assert hub.provenance["base_kind"] == "hub" and hub.provenance["base_revision"] == commit
    assert hub.provenance["base_model"] == "anchor-reg/tiny-ecapa"
    assert (tmp / "results" / "pretrained_models" / "anchor-reg_tiny-ecapa" / "embedding_model.ckpt").exists()
    assert list(hub.ids) == list(folder.ids)
    assert torch.allclose(hub.embeddings, folder.embeddings, atol=1e-6)


def test_runs_loading_one_base_at_once_write_its_savedir_one_at_a_time(exported, tmp_path):
    """Stage-2 jobs of one base started together (seeds in parallel) share its savedir: one writes at a time."""
    _, export = exported
    pretrained = tmp_path / "pretrained_models"
    savedir = savedir_of(export, pretrained)
    pretrained.mkdir()
    loaded = []
    with waiting_lock(pretrained / f".{savedir.name}.lock"):  # another run is loading the base
        worker = threading.Thread(target=lambda: loaded.append(load_base(export, pretrained)))
        worker.start()
        worker.join(timeout=3)
        assert worker.is_alive() and not savedir.exists()  # it waits and writes nothing meanwhile
    worker.join(timeout=120)
    assert len(loaded) == 1 and (savedir / "embedding_model.ckpt").is_file()
    # four processes loading it into a fresh folder at once all get it
    script = "import sys; from anchor_reg.base import load_base; load_base(sys.argv[1], sys.argv[2])"
    fresh = tmp_path / "fresh"
    jobs = [subprocess.Popen([sys.executable, "-c", script, str(export), str(fresh)], cwd=REPO,
                             env=dict(os.environ, PYTHONPATH=str(REPO)), stderr=subprocess.PIPE, text=True)
            for _ in range(4)]
    for job in jobs:
        _, err = job.communicate(timeout=300)
        assert job.returncode == 0, err[-2000:]


def test_new_speakers_get_a_head_of_normalised_anchor_centroids_at_step_0(exported, monkeypatch):
    tmp, export = exported
    seen = {}
    real_on_fit_start = AnchorRegBrain.on_fit_start

    def recording_on_fit_start(self):
        real_on_fit_start(self)
        seen["head"] = self.modules.classifier.weight.detach().clone()

    monkeypatch.setattr(AnchorRegBrain, "on_fit_start", recording_on_fit_start)
    # a corpus of 7 speakers instead of 6: 5 training speakers, the base knows 4
    run_train("stage2.yaml", tmp, base_model=str(export), experiment_name="new_speakers", synthetic_speakers=7,
              data_folder=str(tmp / "corpus7"))
    root = seed_folder(tmp, "new_speakers")
    assert "a new head whose rows are the anchors' speaker centroids" in (root / "stage2" / "log.txt").read_text()
    store = AnchorStore.from_file(root / "anchors" / "anchors.pt")
    labels = CategoricalEncoder()
    labels.load(root / "stage2" / "save" / "label_encoder.txt")
    train_rows = rows(root.parent / "prepared")
    assert len(labels) == 5
    for k in range(len(labels)):
        ids = [r[0] for r in train_rows if r[4] == labels.ind2lab[k]]
        centroid = F.normalize(F.normalize(store.lookup(ids), dim=-1).mean(0), dim=0)
        assert torch.allclose(seen["head"][k], centroid, atol=1e-5)


def test_contradicting_override_is_refused_naming_both_values(exported):
    tmp, export = exported
    with pytest.raises(ConfigError, match="--channels=64 contradicts the base model .* which has channels 32"):
        run_train("stage2.yaml", tmp, base_model=str(export), experiment_name="contradict", channels=64)
    assert not (seed_folder(tmp, "contradict") / "stage2" / "hyperparams.yaml").exists()


def test_folder_without_hyperparams_is_named(exported):
    tmp, export = exported
    folder = tmp / "not_a_model"
    folder.mkdir(exist_ok=True)
    shutil.copy(export / "embedding_model.ckpt", folder)
    args = tiny_command("stage2.yaml", tmp, base_model=str(folder), experiment_name="bad_base")
    done = subprocess.run([sys.executable, "train.py", *args], cwd=REPO, capture_output=True, text=True,
                          timeout=600, env=dict(os.environ, PYTHONPATH=str(REPO)))
    assert done.returncode == 1
    errors = [line for line in done.stderr.splitlines() if line.startswith("error:")]
    assert errors == [f"error: base_model: {folder} has no hyperparams.yaml: not a SpeechBrain inference model "
                      "folder (make one from a trained stage with python -m anchor_reg.export STAGE_FOLDER OUT_FOLDER)"]
    assert "Traceback" not in done.stderr


def test_hyperparams_without_an_embedding_model_are_named(exported):
    tmp, export = exported
    folder = tmp / "no_embedding_model"
    shutil.copytree(export, folder, dirs_exist_ok=True)
    text = (folder / "hyperparams.yaml").read_text()
    start = text.index("embedding_model: !new:")
    end = text.index("classifier: !new:", start)
    text = text[:start] + text[end:]
    text = re.sub(r"(?m)^ *embedding_model: !ref <embedding_model>\n", "", text)
    (folder / "hyperparams.yaml").write_text(text)
    with pytest.raises(ConfigError, match=f"base_model: {folder}: .*has no key.*embedding_model"):
        run_train("stage2.yaml", tmp, base_model=str(folder), experiment_name="no_embedding_model")


def test_a_base_of_another_backbone_reaches_stage2_as_yaml_nodes_and_an_ecapa_base_as_sizes(tmp_path):
    """The base's own model nodes are overrides (structure, not text) exactly where stage2.yaml would build
    something else; an ECAPA-TDNN base that model.yaml builds with its sizes needs only the sizes."""
    import ruamel.yaml

    from anchor_reg.base import Base, architecture_overrides
    from anchor_reg.config import load_hparams, resolve

    stage2 = REPO / "hparams" / "stage2.yaml"
    ecapa = resolve(stage2, {"channels": 16, "emb_dim": 8})
    resnet = ruamel.yaml.YAML().load(
        "embedding_model: !new:speechbrain.lobes.models.ResNet.ResNet\n  input_size: 80\n  channels: [8, 8, 16, 16]\n"
        "  block_sizes: [1, 1, 1, 1]\n  strides: [1, 2, 2, 2]\n  lin_neurons: 8\n")["embedding_model"]

    def base(embedding_node, channels):
        return Base(modules=None, label_encoder=None, label_file=None, source="a base", fingerprint="f",
                    provenance={}, architecture={"n_mels": 80, "channels": channels, "emb_dim": 8},
                    nodes={key: ecapa[key] for key in ("compute_features", "mean_var_norm")}
                    | {"embedding_model": embedding_node})

    assert architecture_overrides(base(ecapa["embedding_model"], 16), stage2, {}) == \
        {"n_mels": 80, "channels": 16, "emb_dim": 8}
    overrides = architecture_overrides(base(resnet, None), stage2, {})
    assert set(overrides) == {"n_mels", "emb_dim", "embedding_model"}
    hparams = load_hparams(stage2, dict(overrides, output_base=str(tmp_path)))
    assert type(hparams["embedding_model"]).__name__ == "ResNet"
    assert hparams["checkpointer"].recoverables["embedding_model"] is hparams["embedding_model"]
