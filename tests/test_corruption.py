"""Tests of anchor_reg.corruption: determinism, SNR accuracy, reverberation."""

import csv
import os
import pathlib

import numpy as np
import pytest
import soundfile
import torch

from anchor_reg.corruption import (
    Condition,
    Corruptor,
    additive_condition,
    default_conditions,
    mix_at_snr,
    parse_condition,
    read_noise_csv,
    reverberate,
    stable_seed,
)
from anchor_reg.errors import AudioError

SNRS = (0, 5, 10, 15, 20)
NOISE_TYPES = ("noise", "music", "babble")
SHARED_DATA = pathlib.Path(
    os.environ.get(
        "ANCHOR_REG_SHARED_DATA",
        pathlib.Path(__file__).resolve().parents[2] / "shared" / "data",
    )
)


def _write_noise_csv(path, files, noise_type):
    with open(path, "w", newline="", encoding="utf-8") as stream:
        writer = csv.writer(stream)
        writer.writerow(["ID", "duration", "wav", "wav_format", "wav_opts", "noise_type"])
        for number, wav in enumerate(files):
            frames = soundfile.info(str(wav)).frames
            writer.writerow([f"{noise_type}{number}", frames / 16000, wav, "flac", "", noise_type])
    return str(path)


@pytest.fixture
def corruptor_setup(tmp_path):
    """Three noise types with two short noise files each, two RIRs."""
    rng = np.random.default_rng(0)
    noise_csvs = {}
    for kind in NOISE_TYPES:
        files = []
        for number in range(2):
            path = tmp_path / f"{kind}{number}.flac"
            # 0.3 s: shorter than the speech, so the noise has to wrap around.
            soundfile.write(path, 0.3 * rng.standard_normal(4800), 16000)
            files.append(path)
        noise_csvs[kind] = _write_noise_csv(tmp_path / f"{kind}.csv", files, kind)
    rirs = []
    for number in range(2):
        rir = np.zeros(3000)
        rir[50 + number] = 1.0
        rir[60:] += 0.05 * rng.standard_normal(2940) * np.exp(-np.arange(2940) / 400)
        path = tmp_path / f"rir{number}.flac"
        soundfile.write(path, rir, 16000)
        rirs.append(path)
    rir_csv = _write_noise_csv(tmp_path / "rir.csv", rirs, "rir")
    return noise_csvs, rir_csv


def _speech(seed, length=16000):
    """Sine-ish test signal: harmonics with a slow envelope plus a little noise."""
    t = torch.arange(length) / 16000
    generator = torch.Generator().manual_seed(seed)
    f0 = 100 + 50 * torch.rand(1, generator=generator)
    wav = sum(torch.sin(2 * torch.pi * k * f0 * t) / k for k in range(1, 5))
    wav = wav * (0.6 + 0.4 * torch.sin(2 * torch.pi * 3 * t))
    return 0.2 * wav + 0.01 * torch.randn(length, generator=generator)


def _snr_db(clean, noisy):
    residual = noisy.double() - clean.double()
    return 10 * torch.log10(clean.double().pow(2).mean() / residual.pow(2).mean()).item()


def test_stable_seed_is_fixed_across_processes():
    # A constant, so it cannot come from Python's salted hash().
    assert stable_seed("id10270/x6uYqmx31kE/00001", "noise_5dB", 1234) == stable_seed(
        "id10270/x6uYqmx31kE/00001", "noise_5dB", 1234
    )
    assert stable_seed("a", "b", 1) == 4960930889978183260
    assert stable_seed("a", "b", 1) != stable_seed("a", "b", 2)
    assert stable_seed("ab", "c") != stable_seed("a", "bc")


def test_conditions():
    names = [c.name for c in default_conditions(NOISE_TYPES, SNRS, reverb=True)]
    assert len(names) == 17 and names[0] == "clean" and names[-1] == "reverb"
    assert "babble_15dB" in names
    assert parse_condition("music_5dB") == additive_condition("music", 5)
    assert parse_condition("noise_-5dB").snr == -5.0
    assert parse_condition("reverb") == Condition("reverb")
    with pytest.raises(ValueError, match="Unknown condition"):
        parse_condition("music5")


@pytest.mark.parametrize("kind", NOISE_TYPES)
def test_additive_noise_meets_snr_and_is_deterministic(corruptor_setup, kind):
    noise_csvs, rir_csv = corruptor_setup
    corrupt = Corruptor(noise_csvs, rir_csv, seed=1234)
    again = Corruptor(noise_csvs, rir_csv, seed=1234)
    clean = _speech(1)
    outputs = {}
    for snr in SNRS:
        condition = additive_condition(kind, snr)
        noisy = corrupt(clean, "spk1/s1/utt1", condition)
        assert noisy.shape == clean.shape and noisy.dtype == clean.dtype
        assert abs(_snr_db(clean, noisy) - snr) < 0.1
        assert torch.equal(noisy, again(clean, "spk1/s1/utt1", condition))
        outputs[snr] = noisy
    condition = additive_condition(kind, 5)
    other_utt = corrupt(clean, "spk1/s1/utt2", condition)
    other_seed = Corruptor(noise_csvs, rir_csv, seed=99)(clean, "spk1/s1/utt1", condition)
    for different in (other_utt, other_seed, outputs[10]):
        assert not torch.allclose(different, outputs[5])


def test_noise_types_differ(corruptor_setup):
    noise_csvs, rir_csv = corruptor_setup
    corrupt = Corruptor(noise_csvs, rir_csv, seed=1)
    clean = _speech(2)
    noisy = [corrupt(clean, "u", additive_condition(kind, 5)) for kind in NOISE_TYPES]
    assert not torch.allclose(noisy[0], noisy[1]) and not torch.allclose(noisy[1], noisy[2])


def test_mix_at_snr_exact():
    clean, noise = _speech(3, 8000), torch.randn(8000)
    for snr in (-5.0, 0.0, 12.5):
        assert _snr_db(clean, mix_at_snr(clean, noise, snr)) == pytest.approx(snr, abs=1e-3)


def test_reverb_is_deterministic_and_level_matched(corruptor_setup):
    noise_csvs, rir_csv = corruptor_setup
    corrupt = Corruptor(noise_csvs, rir_csv, seed=5)
    clean = _speech(4)
    wet = corrupt(clean, "spk2/s1/utt1", Condition("reverb"))
    again = Corruptor(noise_csvs, rir_csv, seed=5)(clean, "spk2/s1/utt1", Condition("reverb"))
    assert torch.equal(wet, again)
    assert wet.shape == clean.shape
    assert wet.pow(2).mean().sqrt().item() == pytest.approx(
        clean.pow(2).mean().sqrt().item(), rel=1e-4
    )
    assert not torch.allclose(wet, clean, atol=1e-3)
    # Aligned on the direct path: the cross-correlation with the clean signal
    # peaks at lag 0 (lags kept below the pitch period).
    lags = range(-40, 41)
    correlation = [torch.dot(torch.roll(wet, lag), clean).item() for lag in lags]
    assert lags[int(np.argmax(correlation))] == 0


def test_reverberate_aligns_on_direct_path():
    clean = _speech(5, 4000)
    delayed_delta = torch.zeros(500)
    delayed_delta[123] = -0.5  # peak by absolute value, any sign
    assert torch.allclose(reverberate(clean, delayed_delta), -clean, atol=1e-5)


def test_clean_condition_is_identity(corruptor_setup):
    clean = _speech(6)
    assert torch.equal(Corruptor(*corruptor_setup, seed=1)(clean, "u", Condition("clean")), clean)


def test_missing_sources_are_named(corruptor_setup, tmp_path):
    noise_csvs, _ = corruptor_setup
    corrupt = Corruptor({"noise": noise_csvs["noise"]}, None, seed=1)
    with pytest.raises(ValueError, match="music"):
        corrupt.sources(additive_condition("music", 5))
    with pytest.raises(ValueError, match="rir_csv"):
        corrupt.sources(Condition("reverb"))
    with pytest.raises(ValueError, match="babble"):
        read_noise_csv(noise_csvs["noise"], "babble")


def test_wrong_sample_rate_is_an_error(tmp_path):
    path = tmp_path / "n48k.wav"
    soundfile.write(path, np.zeros(4800), 48000)
    noise_csv = _write_noise_csv(tmp_path / "n.csv", [path], "noise")
    with pytest.raises(ValueError, match="48000"):
        corrupt = Corruptor({"noise": noise_csv}, None, seed=1)
        corrupt(_speech(7), "u", additive_condition("noise", 0))


def test_a_stereo_noise_or_rir_file_is_refused_naming_it(tmp_path):
    """Noises and RIRs are read like training's audio: a stereo file is an error, not its first channel."""
    path = tmp_path / "stereo.wav"
    soundfile.write(path, 0.1 * np.ones((4800, 2)), 16000)
    csv_file = _write_noise_csv(tmp_path / "n.csv", [path], "noise")
    rir_csv = _write_noise_csv(tmp_path / "r.csv", [path], "rir")
    corrupt = Corruptor({"noise": csv_file}, rir_csv, seed=1)
    for condition in (additive_condition("noise", 0), Condition("reverb")):
        with pytest.raises(AudioError) as error:
            corrupt(_speech(7), "u", condition)
        assert str(error.value) == f"{path}: 2 channels, expected mono"


@pytest.mark.skipif(not (SHARED_DATA / "noise").is_dir(), reason=f"no shared data at {SHARED_DATA}")
def test_real_noise_and_rir(tmp_path):
    noises = sorted((SHARED_DATA / "noise").glob("*.flac"))
    rirs = sorted((SHARED_DATA / "rir").glob("*.flac"))
    noise_csv = _write_noise_csv(tmp_path / "noise.csv", noises, "noise")
    rir_csv = _write_noise_csv(tmp_path / "rir.csv", rirs, "rir")
    corrupt = Corruptor({"noise": noise_csv}, rir_csv, seed=1234)
    clean = _speech(8, 48000)
    for snr in SNRS:
        for utt in ("a", "b"):
            noisy = corrupt(clean, utt, additive_condition("noise", snr))
            assert abs(_snr_db(clean, noisy) - snr) < 0.1
    wet = corrupt(clean, "a", Condition("reverb"))
    assert wet.shape == clean.shape and torch.isfinite(wet).all()
