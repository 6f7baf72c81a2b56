"""Tests of the synthetic default corpus (anchor_reg.data.synthetic)."""

import hashlib
import json
import logging

import numpy as np
import pytest
import soundfile
from scipy.fft import dct

from anchor_reg.data.synthetic import (
    NOISE_KINDS,
    generate_corpus,
    main,
    sample_voice,
)

TINY = dict(
    num_speakers=3,
    utts_per_speaker=4,
    sessions_per_speaker=2,
    min_dur=1.0,
    max_dur=1.5,
    num_noises=6,
    num_rirs=2,
    noise_dur=1.0,
    num_workers=1,
)
LOGGER = "anchor_reg.data.synthetic"


def _hashes(folder):
    """sha256 of every wav below ``folder``, keyed by relative path."""
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*.wav"))
    }


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    folder = tmp_path_factory.mktemp("tiny")
    return folder, generate_corpus(folder, **TINY)


def test_layout_counts_and_format(tiny):
    folder, manifest = tiny
    speakers = sorted(p.name for p in (folder / "speech").iterdir())
    assert speakers == ["spk0001", "spk0002", "spk0003"]
    expected = ["sess1", "sess1/utt00.wav", "sess1/utt01.wav"]
    expected += ["sess2", "sess2/utt02.wav", "sess2/utt03.wav"]
    for speaker in speakers:
        root = folder / "speech" / speaker
        assert sorted(str(p.relative_to(root)) for p in root.rglob("*")) == (
            expected
        )
    for path in (folder / "speech").rglob("*.wav"):
        info = soundfile.info(path)
        assert (info.samplerate, info.channels) == (16000, 1)
        assert (info.format, info.subtype) == ("WAV", "PCM_16")
        assert 1.0 <= info.duration <= 1.5
        audio, _ = soundfile.read(path)
        assert 0.02 < np.sqrt(np.mean(audio**2)) < 0.3
        assert np.max(np.abs(audio)) < 1.0
    counts = dict(speakers=3, utterances=12, noise=6, music=6, babble=6, rir=2)
    assert manifest["counts"] == counts
    assert manifest["options"]["seed"] == 1986 and manifest["version"] >= 1
    assert json.loads((folder / "manifest.json").read_text()) == manifest
    assert not list(folder.rglob("*.tmp"))
    assert not (folder / ".synthetic_in_progress").exists()


def _spectrum_and_level_track(path):
    """Spectral flatness (1: white, ~0: tonal), spectral centroid (Hz) and the
    std of the 25 ms frame level (dB) of a 1 s file."""
    audio, sr = soundfile.read(path)
    assert sr == 16000 and len(audio) == 16000 and np.std(audio) > 0.01
    frames = audio.reshape(-1, 400) * np.hanning(400)
    power = np.abs(np.fft.rfft(frames, axis=1)) ** 2 + 1e-12
    flatness = np.exp(np.mean(np.log(power))) / np.mean(power)
    spectrum = power.mean(0)
    centroid = spectrum @ np.fft.rfftfreq(400, 1 / sr) / spectrum.sum()
    return flatness, centroid, np.std(10 * np.log10(power.sum(1)))


def test_noise_types_present_and_distinct(tiny):
    folder, _ = tiny
    noise_files = list((folder / "noise" / "noise").glob("*.wav"))
    assert {p.stem.split("_")[0] for p in noise_files} == set(NOISE_KINDS)
    babble_files = list((folder / "noise" / "babble").glob("*.wav"))
    talkers = [int(p.stem.split("_")[0][len("babble") :]) for p in babble_files]
    assert len(talkers) == 6 and all(3 <= t <= 6 for t in talkers)

    noise = {
        p.stem.split("_")[0]: _spectrum_and_level_track(p) for p in noise_files
    }
    white_flatness, white_centroid, white_track = noise["white"]
    assert white_flatness > 0.3 and white_track < 1.0  # flat and steady
    # coloured noise: pink darker than white, brown darker than pink
    assert noise["pink"][1] < white_centroid / 2
    assert noise["brown"][1] < noise["pink"][1]
    assert noise["modulated"][2] > 3 * white_track  # non-stationary
    assert noise["hum"][0] < 0.01  # harmonic lines
    for path in (folder / "noise" / "music").glob("*.wav"):
        assert _spectrum_and_level_track(path)[0] < 0.05  # tonal
    for path in babble_files:  # voiced, speech-shaped, fluctuating
        flatness, centroid, level_track = _spectrum_and_level_track(path)
        assert flatness < 0.05 and 300 < centroid < 2500
        assert level_track > white_track


def test_rirs_decay_with_their_rt60(tiny):
    folder, manifest = tiny
    assert len(manifest["rir_rt60"]) == 2
    for name, rt60 in manifest["rir_rt60"].items():
        assert 0.2 <= rt60 <= 0.8
        rir, sr = soundfile.read(folder / "rir" / name)
        assert np.argmax(np.abs(rir)) < 0.005 * sr  # direct path first
        energy = np.cumsum(rir[::-1] ** 2)[::-1]  # Schroeder integral
        decay_db = 10 * np.log10(energy / energy[0] + 1e-12)
        t20 = 3 * (np.argmax(decay_db < -25) - np.argmax(decay_db < -5)) / sr
        assert 0.7 * rt60 < t20 < 1.2 * rt60
        assert decay_db[-len(rir) // 10] < -40


def test_same_seed_is_bit_identical_and_parallel_safe(tmp_path, tiny):
    folder, manifest = tiny
    options = dict(TINY, num_workers=2)
    generate_corpus(tmp_path / "again", **options)
    assert _hashes(tmp_path / "again") == _hashes(folder)
    other = generate_corpus(tmp_path / "other", **dict(options, seed=7))
    assert other["counts"] == manifest["counts"]
    ours, theirs = _hashes(folder), _hashes(tmp_path / "other")
    speech = [k for k in ours if k.startswith("speech")]
    assert all(ours[k] != theirs[k] for k in speech)


def test_cache_reuse_and_regeneration(tmp_path, caplog):
    small = dict(TINY, num_speakers=2, utts_per_speaker=2)
    small.update(num_noises=1, num_rirs=1)
    generate_corpus(tmp_path, **small)
    first = tmp_path / "speech" / "spk0001" / "sess1" / "utt00.wav"
    stamp = first.stat().st_mtime_ns
    with caplog.at_level(logging.INFO, logger=LOGGER):
        # the number of workers does not change the corpus
        generate_corpus(tmp_path, **dict(small, num_workers=2))
    assert "reusing" in caplog.text
    assert first.stat().st_mtime_ns == stamp

    changed_options = dict(small, num_speakers=1, max_dur=1.2)
    changed = generate_corpus(tmp_path, **changed_options)
    assert changed["counts"]["speakers"] == 1
    assert not (tmp_path / "speech" / "spk0002").exists()
    for path in (tmp_path / "speech").rglob("*.wav"):
        assert soundfile.info(path).duration <= 1.2

    # as if interrupted before the manifest was written: redo
    (tmp_path / "manifest.json").unlink()
    (tmp_path / ".synthetic_in_progress").write_text("{}")
    caplog.clear()
    with caplog.at_level(logging.INFO, logger=LOGGER):
        generate_corpus(tmp_path, **changed_options)
    assert "reusing" not in caplog.text
    assert (tmp_path / "manifest.json").exists()


def test_refuses_foreign_folder_and_bad_options(tmp_path):
    (tmp_path / "speech" / "mine").mkdir(parents=True)
    with pytest.raises(FileExistsError, match="speech"):
        generate_corpus(tmp_path, **TINY)
    assert (tmp_path / "speech" / "mine").exists()
    with pytest.raises(ValueError, match="min_dur"):
        generate_corpus(tmp_path / "x", **dict(TINY, min_dur=3.0, max_dur=2.0))
    with pytest.raises(ValueError, match="num_speakers"):
        generate_corpus(tmp_path / "x", **dict(TINY, num_speakers=0))


def test_cli(tmp_path, capsys):
    arguments = "--num_speakers 1 --utts_per_speaker 2 --min_dur 1 --max_dur 1"
    arguments += " --num_noises 0 --num_rirs 1 --num_workers 1"
    main([str(tmp_path)] + arguments.split())
    counts = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert counts["utterances"] == 2
    last = tmp_path / "speech" / "spk0001" / "sess2" / "utt01.wav"
    assert soundfile.info(last).duration == 1.0


def test_voices_cover_realistic_ranges():
    voices = [sample_voice(np.random.default_rng(i)) for i in range(300)]
    f0 = np.array([v.f0_mean for v in voices])
    scale = np.array([v.formant_scale for v in voices])
    assert 85 <= f0.min() < 110 and 240 < f0.max() <= 300
    # male and female/child voices
    assert np.mean(f0 < 160) > 0.3 and np.mean(f0 > 170) > 0.3
    assert 0.8 <= scale.min() < 0.9 and 1.15 < scale.max() <= 1.25
    # shorter vocal tracts speak higher
    assert np.corrcoef(f0, scale)[0, 1] > 0.5


def _cepstra(audio, sr=16000):
    """Mean, std of cepstra c1-c19 over active 25 ms frames (no c0: level)."""
    windows = np.lib.stride_tricks.sliding_window_view(audio, 400)[::160]
    power = np.abs(np.fft.rfft(windows * np.hamming(400), 512)) ** 2
    edges = np.geomspace(60, sr / 2, 33)
    bins = np.fft.rfftfreq(512, 1 / sr)
    bands = [(bins >= lo) & (bins < hi) for lo, hi in zip(edges, edges[1:])]
    log_bands = np.log(np.stack([power[:, b].sum(1) for b in bands], 1) + 1e-10)
    active = log_bands.max(1) > log_bands.max() - 8
    cepstra = dct(log_bands[active], norm="ortho", axis=1)[:, 1:20]
    return np.concatenate([cepstra.mean(0), cepstra.std(0)])


def _nearest_centroid_accuracy(features, speakers, train):
    mean, std = features[train].mean(0), features[train].std(0) + 1e-9
    z = (features - mean) / std
    labels = np.unique(speakers)
    centroids = np.stack([z[train & (speakers == s)].mean(0) for s in labels])
    distances = ((z[~train, None] - centroids[None]) ** 2).sum(-1)
    return np.mean(labels[distances.argmin(1)] == speakers[~train])


def test_speaker_identity_is_learnable_but_not_from_loudness(tmp_path):
    options = dict(TINY, num_speakers=10, utts_per_speaker=6)
    options.update(min_dur=2.0, max_dur=2.5, num_noises=0, num_rirs=0)
    generate_corpus(tmp_path, **options)
    paths = sorted((tmp_path / "speech").rglob("*.wav"))
    audio = [soundfile.read(p)[0] for p in paths]
    speakers = np.array([p.parts[-3] for p in paths])
    # enrol on the first recording session, test on the second (other channel and mood)
    train = np.array([p.parts[-2] == "sess1" for p in paths])
    cepstra = np.stack([_cepstra(a) for a in audio])
    loudness = np.array([[10 * np.log10(np.mean(a**2))] for a in audio])
    # chance is 0.1
    assert _nearest_centroid_accuracy(cepstra, speakers, train) >= 0.45
    assert _nearest_centroid_accuracy(loudness, speakers, train) <= 0.3
