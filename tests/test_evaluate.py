"""End-to-end tests of anchor_reg.evaluate with a tiny random ECAPA-TDNN on a
tiny synthetic data set in the project's CSV / trial formats."""

import csv
import itertools
import json
import pathlib

import numpy as np
import pytest
import soundfile
import torch
from speechbrain.lobes.features import Fbank
from speechbrain.lobes.models.ECAPA_TDNN import ECAPA_TDNN
from speechbrain.processing.features import InputNormalization

from anchor_reg.compare import compare_systems
from anchor_reg.data.audio import read_audio_checked
from anchor_reg.errors import AudioError
from anchor_reg.evaluate import (
    embed_utterances,
    evaluate_model,
    load_encoder,
    main,
    read_trials,
    score_trials,
)

SAMPLE_RATE = 16000
N_MELS = 24
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
ECAPA_SIZE = {"channels": [32, 32, 32, 32, 96], "attention_channels": 16, "lin_neurons": 16}
EXPORT_YAML = """\
compute_features: !new:speechbrain.lobes.features.Fbank
    n_mels: {n_mels}
mean_var_norm: !new:speechbrain.processing.features.InputNormalization
    norm_type: sentence
    std_norm: False
embedding_model: !new:speechbrain.lobes.models.ECAPA_TDNN.ECAPA_TDNN
    input_size: {n_mels}
    channels: [32, 32, 32, 32, 96]
    attention_channels: 16
    lin_neurons: 16
modules:
    compute_features: !ref <compute_features>
    mean_var_norm: !ref <mean_var_norm>
    embedding_model: !ref <embedding_model>
pretrainer: !new:speechbrain.utils.parameter_transfer.Pretrainer
    loadables:
        embedding_model: !ref <embedding_model>
    paths:
        embedding_model: {folder}/embedding_model.ckpt
"""


class TinyEncoder(torch.nn.Module):
    """Fbank + sentence mean normalisation + ECAPA-TDNN (C=32), like
    EncoderClassifier.encode_batch."""

    def __init__(self, seed=0):
        super().__init__()
        torch.manual_seed(seed)
        self.compute_features = Fbank(n_mels=N_MELS)
        self.mean_var_norm = InputNormalization(norm_type="sentence", std_norm=False)
        self.embedding_model = ECAPA_TDNN(N_MELS, **ECAPA_SIZE)

    def encode_batch(self, wavs, wav_lens):
        feats = self.mean_var_norm(self.compute_features(wavs), wav_lens)
        return self.embedding_model(feats, wav_lens)


class SpectrumEncoder:
    """Centred log band energies (20 Hz bands up to 2 kHz) of the unpadded
    signal: a transparent 'speaker' embedding for the harmonic test voices."""

    def encode_batch(self, wavs, wav_lens):
        rows = []
        for wav, relative in zip(wavs, wav_lens):
            valid = wav[: int(round(relative.item() * wavs.shape[1]))]
            bands = torch.fft.rfft(valid, n=SAMPLE_RATE).abs()[:2000].reshape(100, 20).sum(1)
            log_bands = torch.log(bands + 1e-2)
            rows.append(log_bands - log_bands.mean())
        return torch.stack(rows)[:, None]


def _write_csv(path, header, rows):
    with open(path, "w", newline="", encoding="utf-8") as stream:
        writer = csv.writer(stream)
        writer.writerow(header)
        writer.writerows(rows)
    return str(path)


def _voice(rng, f0, length):
    """Sine-ish 'speaker': harmonics of f0 with a random envelope."""
    t = np.arange(length) / SAMPLE_RATE
    wav = sum(np.sin(2 * np.pi * k * f0 * t + rng.uniform(0, 6)) / k for k in range(1, 6))
    envelope = 0.6 + 0.4 * np.sin(2 * np.pi * rng.uniform(2, 5) * t)
    return 0.1 * wav * envelope + 0.005 * rng.standard_normal(length)


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory):
    """4 speakers x 3 utterances (0.6-1.0 s), noise CSVs, an RIR CSV, a
    training-like cohort CSV, enrol/test CSVs and all-pairs trials."""
    root = tmp_path_factory.mktemp("tiny")
    rng = np.random.default_rng(0)
    utterances = []
    for spk_number, f0 in enumerate((110, 150, 210, 270)):
        spk = f"id1000{spk_number}"
        for utt_number in range(3):
            length = int(rng.integers(9600, 16000))
            relative = f"{spk}/vid{utt_number % 2}/0000{utt_number}"
            path = root / "wav" / f"{relative}.wav"
            path.parent.mkdir(parents=True, exist_ok=True)
            soundfile.write(path, _voice(rng, f0, length), SAMPLE_RATE)
            utterances.append((relative, length / SAMPLE_RATE, str(path), 0, length, spk))
    header = ["ID", "duration", "wav", "start", "stop", "spk_id"]
    enrol_csv = _write_csv(root / "enrol.csv", header, utterances)
    test_csv = _write_csv(root / "test.csv", header, utterances)
    cohort_rows = [
        (f"{spk}--s--u_{start}_{start + 8000}", 0.5, wav, start, start + 8000, spk)
        for (_, _, wav, _, stop, spk) in utterances
        for start in (0, stop - 8000)
    ]
    cohort_csv = _write_csv(root / "cohort.csv", header, cohort_rows)

    trials = root / "trials.txt"
    lines = []
    for (a, *_, spk_a), (b, *_, spk_b) in itertools.combinations(utterances, 2):
        lines.append(f"{int(spk_a == spk_b)} {a}.wav {b}.wav")
    trials.write_text("\n".join(lines) + "\n")

    noise_header = ["ID", "duration", "wav", "wav_format", "wav_opts", "noise_type"]
    noise_rows = []
    for kind in ("noise", "music", "babble"):
        for number in range(2):
            path = root / "noise" / f"{kind}{number}.wav"
            path.parent.mkdir(exist_ok=True)
            soundfile.write(path, 0.2 * rng.standard_normal(6000), SAMPLE_RATE)
            noise_rows.append((f"{kind}{number}", 6000 / SAMPLE_RATE, str(path), "wav", "", kind))
    # One CSV holding all three types: each condition keeps its own rows.
    noise_csv = _write_csv(root / "noises.csv", noise_header, noise_rows)
    rir = np.zeros(2000)
    rir[40] = 1.0
    rir[50:] = 0.05 * rng.standard_normal(1950) * np.exp(-np.arange(1950) / 300)
    soundfile.write(root / "rir.wav", rir, SAMPLE_RATE)
    rir_csv = _write_csv(
        root / "rir.csv", noise_header, [("rir0", 0.125, str(root / "rir.wav"), "wav", "", "rir")]
    )
    return {
        "root": root,
        "enrol_csv": enrol_csv,
        "test_csv": test_csv,
        "trials": str(trials),
        "noise_csvs": {"noise": noise_csv, "music": noise_csv, "babble": noise_csv},
        "rir_csv": rir_csv,
        "cohort_csv": cohort_csv,
        "n_trials": len(lines),
        "n_target": sum(line.startswith("1") for line in lines),
    }


@pytest.fixture(scope="module")
def encoder():
    return TinyEncoder().eval()


def _data_kwargs(tiny_data):
    keys = ("enrol_csv", "test_csv", "trials", "noise_csvs", "rir_csv")
    return {key: tiny_data[key] for key in keys}


def test_full_evaluation(tiny_data, encoder, tmp_path):
    out = tmp_path / "eval"
    results = evaluate_model(
        encoder, **_data_kwargs(tiny_data), output_folder=out, system_name="tiny", batch_size=4
    )
    conditions = results["conditions"]
    assert len(conditions) == 17
    assert list(conditions)[:2] == ["clean", "noise_0dB"] and "babble_20dB" in conditions
    for name, cond in conditions.items():
        assert 0.0 <= cond["EER"] <= 100.0
        assert 0.0 <= cond["minDCF"] <= 1.0 + 1e-9
        assert cond["n_trials"] == tiny_data["n_trials"]
        assert cond["n_target"] == tiny_data["n_target"]
        geometry = cond["geometry"]
        assert -1.0 <= geometry["compactness"] <= 1.0
        assert 0.0 <= geometry["nearest_centroid_distance"] <= geometry["separation"] + 1e-9
        assert (geometry["drift"] < 1e-9) == (name == "clean")
    assert conditions["music_0dB"] == {**conditions["music_0dB"], "noise_type": "music", "snr": 0.0}
    # Louder noise moves embeddings further from their clean versions.
    drift = {name: cond["geometry"]["drift"] for name, cond in conditions.items()}
    assert drift["noise_0dB"] > drift["noise_20dB"]
    assert results["settings"]["corrupt"] == "test" and results["system"] == "tiny"

    saved = json.loads((out / "results.json").read_text())
    assert saved == json.loads(json.dumps(results))
    table = (out / "results.md").read_text()
    assert "| noise_0dB |" in table and "| reverb |" in table
    assert "min(p_target*c_miss, (1-p_target)*c_fa)" in table
    for name in ("eer_vs_snr.png", "det.png", "embeddings_pca.png"):
        assert (out / name).read_bytes()[:8] == PNG_MAGIC
    assert not list(out.glob("*.tmp"))

    # Deterministic: a second run of two conditions reproduces the numbers.
    again = evaluate_model(
        encoder, **_data_kwargs(tiny_data), conditions=["clean", "babble_5dB"], batch_size=4
    )
    assert list(again["conditions"]) == ["clean", "babble_5dB"]
    for name in again["conditions"]:
        assert again["conditions"][name] == conditions[name]


def test_scores_follow_the_corruption(tiny_data):
    # A meaningful embedding separates the four voices when clean and loses
    # them only when the noise is far louder than the speech.
    results = evaluate_model(
        SpectrumEncoder(), **{**_data_kwargs(tiny_data), "snrs": (-20, 0, 20)}
    )
    conditions = results["conditions"]
    assert conditions["clean"]["EER"] == 0.0 and conditions["clean"]["minDCF"] == 0.0
    for kind in ("noise", "music", "babble"):
        drifts = [conditions[f"{kind}_{snr}dB"]["geometry"]["drift"] for snr in (-20, 0, 20)]
        assert drifts[0] > drifts[1] > drifts[2] > 0.0
        assert conditions[f"{kind}_-20dB"]["EER"] > 0.0
        assert conditions[f"{kind}_20dB"]["EER"] == 0.0
        compactness = conditions[f"{kind}_-20dB"]["geometry"]["compactness"]
        assert compactness < conditions["clean"]["geometry"]["compactness"]


def test_corrupt_both_and_max_trials(tiny_data, encoder):
    kwargs = dict(**_data_kwargs(tiny_data), conditions=["clean", "noise_5dB"], max_trials=30)
    both = evaluate_model(encoder, **kwargs, corrupt="both")
    test_only = evaluate_model(encoder, **kwargs)
    assert both["settings"]["n_corrupted_utterances"] == both["settings"]["n_utterances"]
    assert test_only["settings"]["n_corrupted_utterances"] < test_only["settings"]["n_utterances"]
    for results in (both, test_only):
        assert all(cond["n_trials"] == 30 for cond in results["conditions"].values())
    # Same seeded trial subset; clean is the same whichever side is corrupted.
    assert both["conditions"]["clean"]["EER"] == test_only["conditions"]["clean"]["EER"]
    assert both["conditions"]["noise_5dB"] != test_only["conditions"]["noise_5dB"]
    with pytest.raises(ValueError, match="corrupt"):
        evaluate_model(encoder, **kwargs, corrupt="enrol")


def test_score_normalisation(tiny_data, encoder):
    common = dict(
        **_data_kwargs(tiny_data),
        conditions=["clean", "music_5dB", "noise_0dB"],
        cohort_csv=tiny_data["cohort_csv"],
    )
    raw = evaluate_model(encoder, **common)
    s_norm = evaluate_model(encoder, **common, norm="s-norm", cohort_size=20)
    as_norm = evaluate_model(encoder, **common, norm="as-norm", cohort_size=20, norm_topk=5)
    # With top-k covering the whole cohort, as-norm is s-norm.
    as_norm_all = evaluate_model(encoder, **common, norm="as-norm", cohort_size=20, norm_topk=20)
    for results in (s_norm, as_norm):
        assert results["settings"]["cohort_size"] == 20
        for cond in results["conditions"].values():
            assert 0.0 <= cond["EER"] <= 100.0
    assert as_norm_all["conditions"] == s_norm["conditions"]
    changed = [
        s_norm["conditions"][name]["minDCF"] != raw["conditions"][name]["minDCF"]
        or s_norm["conditions"][name]["EER"] != raw["conditions"][name]["EER"]
        or as_norm["conditions"][name]["EER"] != raw["conditions"][name]["EER"]
        for name in raw["conditions"]
    ]
    assert any(changed)
    with pytest.raises(ValueError, match="cohort_csv"):
        evaluate_model(encoder, **_data_kwargs(tiny_data), norm="s-norm")


def test_score_trials_formulas():
    generator = torch.Generator().manual_seed(0)
    enrol, test, cohort = (torch.randn(n, 8, generator=generator) for n in (5, 5, 12))
    raw = torch.nn.functional.cosine_similarity(enrol, test, dim=1)
    assert torch.allclose(score_trials(enrol, test), raw, atol=1e-6)

    def against_cohort(side, topk):
        scores = torch.nn.functional.cosine_similarity(side[:, None], cohort[None], dim=2)
        best = scores.sort(dim=1, descending=True).values[:, :topk]
        return best.mean(dim=1), best.std(dim=1)

    for topk, name in ((12, "s-norm"), (3, "as-norm")):
        (mu_e, sd_e), (mu_t, sd_t) = against_cohort(enrol, topk), against_cohort(test, topk)
        expected = 0.5 * ((raw - mu_e) / sd_e + (raw - mu_t) / sd_t)
        got = score_trials(enrol, test, cohort, topk=None if name == "s-norm" else topk)
        assert torch.allclose(got, expected, atol=1e-5), name


def test_batching_matches_one_at_a_time(encoder):
    generator = torch.Generator().manual_seed(3)
    equal = {f"u{i}": torch.randn(8000, generator=generator) for i in range(5)}
    single = torch.stack(
        [encoder.encode_batch(wav[None], torch.ones(1)).reshape(-1) for wav in equal.values()]
    ).detach()
    batched = embed_utterances(encoder, equal, list(equal), batch_size=3)
    assert torch.allclose(batched, single, atol=1e-5)

    # Different lengths: each batch is padded and wav_lens passed. batch_size=1
    # is exactly one at a time; order of ids does not change anything.
    lengths = [8000, 7990, 7950, 6000, 5990, 12000]
    varied = {f"v{i}": torch.randn(n, generator=generator) for i, n in enumerate(lengths)}
    ids = list(varied)
    single = torch.stack(
        [encoder.encode_batch(varied[i][None], torch.ones(1)).reshape(-1) for i in ids]
    ).detach()
    assert torch.allclose(embed_utterances(encoder, varied, ids, batch_size=1), single, atol=1e-5)
    batched = embed_utterances(encoder, varied, ids, batch_size=2)
    shuffled = ids[::-1]
    assert torch.equal(embed_utterances(encoder, varied, shuffled, batch_size=2), batched.flip(0))
    # Length sorting pairs 12000|8000, 7990|7950, 6000|5990: the longest of each
    # batch is unpadded; near-equal lengths give near-equal embeddings.
    for row in (5, 1, 3):
        assert torch.allclose(batched[row], single[row], atol=1e-5)
    # Padding by reflection keeps even the 8000-sample utterance padded to 12000 close to its
    # unpadded embedding (zero padding gave a cosine of 0.75 for it with this encoder).
    cosine = torch.nn.functional.cosine_similarity(batched, single, dim=1)
    assert cosine.min() > 0.999


def test_compare_systems(tiny_data, encoder, tmp_path):
    base = evaluate_model(
        encoder,
        **_data_kwargs(tiny_data),
        conditions=["clean", "noise_0dB", "noise_10dB", "reverb"],
    )
    seeds = []
    for shift in (0.0, 1.0, 2.0):
        run = json.loads(json.dumps(base))
        run["system"] = "anchor"
        for cond in run["conditions"].values():
            cond["EER"] += shift
        seeds.append(run)
    base_path = tmp_path / "base"
    base_path.mkdir()
    (base_path / "results.json").write_text(json.dumps(base))

    summary = compare_systems({"base": str(base_path), "anchor": seeds}, tmp_path / "cmp")
    table = (tmp_path / "cmp" / "comparison.md").read_text()
    eers = {name: cond["EER"] for name, cond in base["conditions"].items()}
    noise_mean = (eers["noise_0dB"] + eers["noise_10dB"]) / 2
    assert summary["base"]["noise EER (%)"] == [pytest.approx(noise_mean)]
    assert summary["anchor"]["Clean EER (%)"] == pytest.approx(
        [base["conditions"]["clean"]["EER"] + s for s in (0.0, 1.0, 2.0)]
    )
    clean = base["conditions"]["clean"]["EER"]
    assert f"| base | {clean:.2f} |" in table
    assert f"{clean + 1:.2f} ± 1.00 (n=3)" in table
    assert (tmp_path / "cmp" / "eer_vs_snr.png").read_bytes()[:8] == PNG_MAGIC

    main(["compare", f"--output_folder={tmp_path / 'cli'}", f"base={base_path}",
          f"base={base_path / 'results.json'}"])
    assert f"{clean:.2f} ± 0.00 (n=2)" in (tmp_path / "cli" / "comparison.md").read_text()


def test_cli_with_exported_model(tiny_data, tmp_path):
    model = tmp_path / "export"
    model.mkdir()
    tiny = TinyEncoder(seed=1)
    torch.save(tiny.embedding_model.state_dict(), model / "embedding_model.ckpt")
    (model / "hyperparams.yaml").write_text(EXPORT_YAML.format(n_mels=N_MELS, folder=model))
    loaded = load_encoder(model)
    wav = torch.randn(1, 8000)
    assert torch.allclose(
        loaded.encode_batch(wav, torch.ones(1)),
        tiny.eval().encode_batch(wav, torch.ones(1)),
        atol=1e-5,
    )

    out = tmp_path / "cli_eval"
    verify_yaml = pathlib.Path(__file__).resolve().parents[1] / "hparams" / "verify.yaml"
    main([
        str(verify_yaml),
        f"--model_path={model}",
        f"--output_folder={out}",
        f"--enrol_csv={tiny_data['enrol_csv']}",
        f"--test_csv={tiny_data['test_csv']}",
        f"--trials={tiny_data['trials']}",
        f"--noise_csv={tiny_data['noise_csvs']['noise']}",
        f"--rir_csv={tiny_data['rir_csv']}",
        "--conditions=[clean, noise_5dB, reverb]",
        "--system_name=exported",
        "--device=cpu",
    ])
    saved = json.loads((out / "results.json").read_text())
    assert saved["system"] == "exported"
    assert list(saved["conditions"]) == ["clean", "noise_5dB", "reverb"]
    assert saved["settings"]["noise_csvs"] == {"noise": tiny_data["noise_csvs"]["noise"]}


def test_bad_inputs(tiny_data, encoder, tmp_path):
    bad_trials = tmp_path / "bad.txt"
    bad_trials.write_text("1 a.wav\n")
    with pytest.raises(ValueError, match="bad.txt:1"):
        read_trials(bad_trials)
    unknown = tmp_path / "unknown.txt"
    unknown.write_text("1 nobody/x/1.wav nobody/x/2.flac\n")
    kwargs = {**_data_kwargs(tiny_data), "trials": str(unknown)}
    with pytest.raises(KeyError, match="nobody/x/1"):
        evaluate_model(encoder, **kwargs)
    with pytest.raises(ValueError, match="music"):
        no_noise = {**_data_kwargs(tiny_data), "noise_csvs": {}}
        evaluate_model(encoder, **no_noise, conditions=["music_5dB"])
    with pytest.raises(FileNotFoundError, match="hyperparams.yaml"):
        load_encoder(tmp_path)
    stage = tmp_path / "stage"
    (stage / "save").mkdir(parents=True)
    (stage / "hyperparams.yaml").write_text("{}\n")
    with pytest.raises(FileNotFoundError, match="a training stage folder: export it first"):
        load_encoder(stage)


def test_cli_failures_are_one_error_line(tiny_data, tmp_path, capsys):
    verify_yaml = pathlib.Path(__file__).resolve().parents[1] / "hparams" / "verify.yaml"
    common = [f"--enrol_csv={tiny_data['enrol_csv']}", f"--test_csv={tiny_data['test_csv']}",
              f"--trials={tiny_data['trials']}", f"--output_folder={tmp_path / 'out'}", "--device=cpu"]
    for argv, named in (
        ([str(verify_yaml), f"--model_path={tmp_path / 'nowhere'}", *common], "nowhere has no hyperparams.yaml"),
        ([str(tmp_path / "missing.yaml"), "--model_path=x"], "missing.yaml does not exist"),
        ([str(verify_yaml), *common], "model_path"),  # a !PLACEHOLDER left unset
        ([str(verify_yaml), f"--model_path={tmp_path}", "--no_such_key=1", *common], "no_such_key"),
    ):
        assert main(argv) == 1
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith("error: ") and named in err[0], err
    assert not (tmp_path / "out").exists()
    assert main(["compare", f"--output_folder={tmp_path / 'cmp'}", f"a={tmp_path / 'none.json'}"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"error: cannot read results file {tmp_path / 'none.json'}")


def test_cli_help_lists_every_key_of_the_yaml(capsys):
    from anchor_reg.config import keys_of

    verify_yaml = pathlib.Path(__file__).resolve().parents[1] / "hparams" / "verify.yaml"
    assert main([str(verify_yaml), "--help"]) == 0
    listed = [line.split("=")[0].strip()[2:] for line in capsys.readouterr().out.splitlines()
              if line.startswith("  --")]
    assert listed == list(keys_of_in_order(verify_yaml)) and set(listed) == keys_of(verify_yaml)
    assert main(["--help"]) == 0  # without a YAML: the recipe's verify.yaml
    lines = capsys.readouterr().out.splitlines()
    # each key with its default, and under it the comment the YAML gives it
    assert lines[lines.index("  --system_name=model") + 1].strip() == "Name of the system in tables and plots."
    assert "  --norm_topk=300" in lines


def keys_of_in_order(yaml_file):
    """Top-level keys of a YAML file in file order (ruamel round-trip keeps it)."""
    import ruamel.yaml

    return list(ruamel.yaml.YAML().load(pathlib.Path(yaml_file).read_text()))


@pytest.mark.parametrize("kind, problem", [("stereo", "2 channels, expected mono"),
                                           ("8 kHz", "sample rate 8000 Hz, expected 16000 Hz")])
def test_a_stereo_or_8_khz_trial_file_stops_with_trainings_error_line(tiny_data, tmp_path, capsys, kind, problem):
    """Evaluation reads the trial utterances with training's reader: the same one ``error:`` line."""
    model = tmp_path / "export"
    model.mkdir()
    torch.save(TinyEncoder(seed=1).embedding_model.state_dict(), model / "embedding_model.ckpt")
    (model / "hyperparams.yaml").write_text(EXPORT_YAML.format(n_mels=N_MELS, folder=model))
    with open(tiny_data["test_csv"], newline="") as stream:
        rows = list(csv.DictReader(stream))
    speech, _ = soundfile.read(rows[0]["wav"], dtype="float32")
    bad = tmp_path / "bad.wav"
    if kind == "stereo":
        soundfile.write(bad, np.stack([speech, speech], 1), SAMPLE_RATE)
    else:
        soundfile.write(bad, speech, 8000)
    rows[0]["wav"] = str(bad)
    test_csv = _write_csv(tmp_path / "test.csv", list(rows[0]), [list(row.values()) for row in rows])
    with pytest.raises(AudioError) as training:  # what the training data pipeline raises for this row
        read_audio_checked(bad, SAMPLE_RATE, int(rows[0]["start"]), int(rows[0]["stop"]))
    assert str(training.value) == f"{bad}: {problem}"
    verify_yaml = pathlib.Path(__file__).resolve().parents[1] / "hparams" / "verify.yaml"
    assert main([str(verify_yaml), f"--model_path={model}", f"--enrol_csv={tiny_data['enrol_csv']}",
                 f"--test_csv={test_csv}", f"--trials={tiny_data['trials']}", "--conditions=[clean]",
                 f"--output_folder={tmp_path / 'out'}", "--device=cpu"]) == 1
    assert capsys.readouterr().err.strip().splitlines() == [f"error: {bad}: {problem}"]
    assert not (tmp_path / "out").exists()
