"""The whole chain on tiny configs (python -m anchor_reg.pipeline): stage 1 -> anchors -> stage 2, the joint
baseline, resume, fork, and one load of each YAML."""
import hashlib
import pathlib
import shutil

import pytest
import torch
from speechbrain.utils.checkpoints import Checkpointer

from anchor_reg.anchors import AnchorStore
from anchor_reg.provenance import read_provenance
from tiny import run_pipeline, run_train

pytestmark = pytest.mark.slow  # every test trains


def digest_tree(folder):
    """sha256 of every file under folder (relative path -> digest)."""
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(pathlib.Path(folder).rglob("*"))
        if p.is_file()
    }


def last_epoch(stage_folder):
    ckpt = Checkpointer(pathlib.Path(stage_folder) / "save").find_checkpoint()
    return ckpt.meta["epoch"]


@pytest.fixture(scope="module")
def chain(tmp_path_factory):
    """Runs `python -m anchor_reg.pipeline hparams/stage2.yaml` once from nothing (tiny sizes); tests only read it.

    Also notes the stage of every YAML built (``load_hyperpyyaml``) meanwhile.
    """
    from anchor_reg import config

    tmp = tmp_path_factory.mktemp("chain")
    real, built = config.load_hyperpyyaml, []

    def counting(*args, **kwargs):
        hparams = real(*args, **kwargs)
        built.append(hparams["stage"])
        return hparams

    config.load_hyperpyyaml = counting
    try:
        run_pipeline("stage2.yaml", tmp)
    finally:
        config.load_hyperpyyaml = real
    root = tmp / "results" / "default" / "1986"
    return tmp, root, built


def test_the_pipeline_builds_each_yaml_once(chain):
    assert sorted(chain[2]) == ["stage1", "stage2"]


def test_stage2_runs_every_prerequisite(chain):
    _, root, _ = chain
    for stage in ("stage1", "stage2"):
        assert (root / stage / "train_log.txt").read_text().count("epoch: 1") == 1
        assert (root / stage / "hyperparams.yaml").is_file()
        assert (root / stage / "save" / "label_encoder.txt").is_file()
    store = AnchorStore.from_file(root / "anchors" / "anchors.pt")
    train_ids = [line.split(",")[0] for line in (root.parent / "prepared" / "train.csv").read_text().splitlines()[1:]]
    store.check_compatible(row_ids=train_ids, emb_dim=32)
    assert len(store) == len(train_ids) and store.provenance["num_speakers"] == 4
    log = (root / "stage2" / "train_log.txt").read_text()
    assert "loss_anchor" in log and "loss_aam" in log


def test_stage2_starts_from_a_copy_of_the_base(chain):
    _, root, _ = chain
    base = Checkpointer(root / "stage1" / "save").find_checkpoint()
    tuned = Checkpointer(root / "stage2" / "save").find_checkpoint()
    base_w = torch.load(base.paramfiles["embedding_model"])
    tuned_w = torch.load(tuned.paramfiles["embedding_model"])
    assert base_w.keys() == tuned_w.keys()
    assert any(not torch.equal(base_w[k], tuned_w[k]) for k in base_w)  # fine-tuned ...
    learned = [k for k in base_w if base_w[k].is_floating_point() and "running" not in k]
    change = sum((tuned_w[k] - base_w[k]).norm() ** 2 for k in learned) ** 0.5
    assert change / sum(base_w[k].norm() ** 2 for k in learned) ** 0.5 < 0.2  # ... from the base, not from scratch
    assert read_provenance(tuned.paramfiles["provenance"])["base_fingerprint"]


def test_train_py_stage2_resumes_from_stage1_and_anchors_by_path_and_builds_its_yaml_once(chain, tmp_path,
                                                                                        monkeypatch):
    from anchor_reg import config

    tmp = tmp_path / "chain"
    shutil.copytree(chain[0], tmp)  # its own copy: the shared chain stays at one epoch for the other tests
    root = tmp / "results" / "default" / "1986"
    stage1_before = digest_tree(root / "stage1" / "save")
    anchors_before = digest_tree(root / "anchors")
    built = []
    real = config.load_hyperpyyaml
    monkeypatch.setattr(config, "load_hyperpyyaml", lambda *a, **k: built.append(1) or real(*a, **k))
    run_train("stage2.yaml", tmp, number_of_epochs=2)  # stage 2 resumes for one more epoch
    assert len(built) == 1
    assert digest_tree(root / "stage1" / "save") == stage1_before
    assert digest_tree(root / "anchors") == anchors_before
    assert last_epoch(root / "stage2") == 2
    assert last_epoch(root / "stage1") == 1
    log = (root / "stage2" / "train_log.txt").read_text()
    assert "epoch: 2" in log and log.count("epoch: 1,") == 1  # continued, not restarted
    # stage-2 checkpoints hold no copy of the anchors, only the digest of the store they were trained with
    ckpt = Checkpointer(root / "stage2" / "save").find_checkpoint()
    assert "anchors" not in ckpt.paramfiles
    recorded = read_provenance(ckpt.paramfiles["provenance"])
    assert recorded["anchors_digest"] == AnchorStore.from_file(root / "anchors" / "anchors.pt").digest()


def test_joint_baseline_runs_with_its_consistency_term(tmp_path, caplog):
    run_train("joint.yaml", tmp_path, "--precision=bf16", stage1_epochs=1, stage2_epochs=1)
    assert "--precision=bf16 has no effect on CPU" in caplog.text
    folder = tmp_path / "results" / "default" / "1986" / "joint"
    log = (folder / "train_log.txt").read_text()
    assert "epoch: 2" in log and "loss_consistency" in log
    assert last_epoch(folder) == 2  # stage1_epochs + stage2_epochs updates budget
    assert not (folder.parent / "stage1").exists()  # from scratch, no base model


@pytest.mark.parametrize("yaml_name", ["stage2.yaml", "joint.yaml"])
def test_bf16_autocast_path_trains_with_float32_distances(yaml_name, tmp_path, monkeypatch):
    """SpeechBrain's mixed-precision path (as on GPU), driven through torch's CPU bf16 autocast.

    ``main`` turns ``--precision`` off on CPU; calling ``train.train`` directly keeps it, so the
    Brain trains under ``torch.autocast(bfloat16)`` exactly as ``--precision=bf16`` does on a GPU.
    """
    import speechbrain as sb

    import train
    from anchor_reg import losses
    from tiny import check_mixed_precision_outputs, tiny_command

    seen = []

    def recording(function):  # notes (embeddings dtype, result dtype, finite) of each call
        def wrapper(*args, **kwargs):
            result = function(*args, **kwargs)
            embeddings = next(a for a in args if torch.is_tensor(a))  # after ``self`` for a method
            seen.append((embeddings.dtype, result.dtype, bool(torch.isfinite(result).all())))
            return result
        return wrapper

    # joint's consistency term and a pull use anchor_distance; stage 2's default objective is contrastive
    monkeypatch.setattr(losses, "anchor_distance", recording(losses.anchor_distance))
    monkeypatch.setattr(losses.ContrastiveAnchorLoss, "forward", recording(losses.ContrastiveAnchorLoss.forward))
    if yaml_name == "stage2.yaml":
        run_train("stage1.yaml", tmp_path)  # its base
    hparams_file, run_opts, overrides = sb.parse_arguments(tiny_command(yaml_name, tmp_path, "--precision=bf16"))
    hparams = train.train(hparams_file, train.parse_overrides(overrides), run_opts)
    assert seen and all(entry == (torch.bfloat16, torch.float32, True) for entry in seen)
    check_mixed_precision_outputs(hparams["output_folder"], with_anchors=yaml_name == "stage2.yaml")


RESNET = """embedding_model: !new:speechbrain.lobes.models.ResNet.ResNet
    input_size: !ref <n_mels>
    channels: [8, 8, 16, 16]
    block_sizes: [1, 1, 1, 1]
    strides: [1, 2, 2, 2]
    lin_neurons: !ref <emb_dim>
"""


def test_backbone_swap_needs_no_code_change(tmp_path):
    """A forked recipe (train.py + hparams/) whose one model definition (model.yaml) is a tiny ResNet."""
    from tiny import REPO

    forked = tmp_path / "hparams"
    shutil.copytree(REPO / "hparams", forked)
    shutil.copy(REPO / "train.py", tmp_path)
    text = (forked / "model.yaml").read_text()
    start = text.index("embedding_model: !new:")
    end = text.index("classifier: !new:", start)
    (forked / "model.yaml").write_text(text[:start] + RESNET + text[end:])
    run_pipeline(str(forked / "stage2.yaml"), tmp_path)
    root = tmp_path / "results" / "default" / "1986"
    ckpt = Checkpointer(root / "stage2" / "save").find_checkpoint()
    weights = torch.load(ckpt.paramfiles["embedding_model"])
    assert not any(k.startswith("blocks.1.res2net") for k in weights)  # not an ECAPA
    assert "ResNet" in (root / "stage1" / "hyperparams.yaml").read_text()
    assert AnchorStore.from_file(root / "anchors" / "anchors.pt").emb_dim == 32


def test_exported_stage2_embeds_like_training(chain, tmp_path):
    """The exported folder loads offline in both inference interfaces and matches training-time embeddings."""
    from hyperpyyaml import load_hyperpyyaml
    from speechbrain.inference.speaker import EncoderClassifier, SpeakerRecognition

    from anchor_reg.data.audio import read_audio_checked
    from anchor_reg.export import export_model

    _, root, _ = chain
    out = export_model(root / "stage2", tmp_path / "export")
    test_rows = (root.parent / "prepared" / "test.csv").read_text().splitlines()[1:3]
    wav_files = [row.split(",")[2] for row in test_rows]
    wavs = [read_audio_checked(f) for f in wav_files]
    length = min(len(w) for w in wavs)
    batch = torch.stack([w[:length] for w in wavs])
    lens = torch.ones(len(wavs))

    with open(root / "stage2" / "hyperparams.yaml") as f:
        trained = load_hyperpyyaml(f, {"num_train_speakers": 4})
    reader = Checkpointer(root / "stage2" / "save", recoverables={
        "embedding_model": trained["embedding_model"], "normalizer": trained["mean_var_norm"]})
    reader.load_checkpoint(reader.find_checkpoint())
    trained["embedding_model"].eval()

    def training_embedding(wavs, lens):
        with torch.no_grad():
            feats = trained["mean_var_norm"](trained["compute_features"](wavs), lens)
            return trained["embedding_model"](feats, lens)

    encoder = EncoderClassifier.from_hparams(source=str(out), savedir=str(out), run_opts={"device": "cpu"})
    assert torch.allclose(encoder.encode_batch(batch, lens), training_embedding(batch, lens), atol=1e-5)
    verifier = SpeakerRecognition.from_hparams(source=str(out), savedir=str(out), run_opts={"device": "cpu"})
    score, decision = verifier.verify_files(wav_files[0], wav_files[1])
    # verify_files: the cosine of the two whole files' training-time embeddings, thresholded at 0.25
    first, second = (training_embedding(w.unsqueeze(0), torch.ones(1)).reshape(-1) for w in wavs)
    cosine = torch.nn.functional.cosine_similarity(first, second, dim=0)
    assert float(score) == pytest.approx(float(cosine), abs=1e-4)
    assert bool(decision) == (float(cosine) > 0.25)


def test_verification_report_prints_base_and_stage2(chain, tmp_path):
    from anchor_reg.report import verification_report

    _, root, _ = chain
    hparams = {
        "output_folder": str(tmp_path / "report"), "prep_folder": str(root.parent / "prepared"),
        "eval_noise_types": ["noise", "babble"], "eval_snrs": [0], "eval_batch_size": 4, "data_seed": 1234,
    }
    table, figure = verification_report(hparams, {"base (stage 1)": root / "stage1", "stage2": root / "stage2"})
    assert figure == tmp_path / "report" / "verification" / "eer_vs_snr.png" and figure.stat().st_size > 0
    lines = table.splitlines()
    assert lines[0] == "| system | clean | noise_0dB | babble_0dB | mean noisy |"
    assert lines[2].startswith("| base (stage 1) |") and lines[3].startswith("| stage2 |")
    assert (tmp_path / "report" / "verification" / "table.md").read_text() == table
    assert (tmp_path / "report" / "verification" / "stage2" / "export" / "README.md").is_file()
    assert not any((root / "stage1").glob("export"))  # the base folder is only read
