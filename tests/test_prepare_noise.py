"""Noise/music/babble/RIR CSVs, checked by running SpeechBrain's AddNoise and
AddReverb on them."""

import csv
import logging

import numpy as np
import pytest
import soundfile as sf
import torch
from speechbrain.augment.time_domain import AddNoise, AddReverb

from anchor_reg.data.noise import (
    NOISE_FIELDS,
    merge_noise_csvs,
    prepare_babble,
    prepare_musan,
    prepare_noise_folder,
    prepare_rirs_noises,
)
from anchor_reg.errors import AudioError

SR = 16000
TALKER_HZ = (300, 500, 700, 900)  # one sine per musan/speech "talker"


def read_rows(path):
    with open(path, newline="") as csv_file:
        reader = csv.DictReader(csv_file)
        assert reader.fieldnames == NOISE_FIELDS
        return list(reader)


def write(path, samples):
    path.parent.mkdir(parents=True, exist_ok=True)
    sf.write(path, samples, SR)
    return path


def noise(seconds, seed=0):
    return np.random.default_rng(seed).uniform(-0.3, 0.3, round(seconds * SR))


def sine(hz, seconds):
    return 0.3 * np.sin(2 * np.pi * hz * np.arange(round(seconds * SR)) / SR)


def rir(seconds=0.3, seed=0):
    decay = np.exp(-np.arange(round(seconds * SR)) / (0.05 * SR))
    response = noise(seconds, seed) * decay * 0.5
    response[0] = 1.0
    return response


def clean_batch():
    """Four 0.5 s tones, shape (4, 8000)."""
    return torch.stack(
        [torch.from_numpy(sine(hz, 0.5)).float() for hz in (200, 250, 330, 410)]
    )


def check_add_noise(csv_file):
    """AddNoise at 0 dB: noisy = clean / 2 + noise whose RMS is half the clean's."""
    clean = clean_batch()
    noisy = AddNoise(csv_file=str(csv_file), snr_low=0, snr_high=0)(
        clean, torch.ones(4)
    )
    added = noisy - clean / 2
    assert noisy.shape == clean.shape and torch.isfinite(noisy).all()
    assert torch.allclose(rms(added), rms(clean) / 2, rtol=0.02)


def rms(batch):
    return batch.pow(2).mean(dim=1).sqrt()


def check_add_reverb(csv_file):
    clean = clean_batch()
    reverbed = AddReverb(csv_file=str(csv_file))(clean)
    assert reverbed.shape == clean.shape and torch.isfinite(reverbed).all()
    assert not torch.allclose(reverbed, clean, atol=1e-3)


# ---------------------------------------------------------------- real noise


def test_shared_noise_and_rirs(shared_data, tmp_path):
    if (
        not (shared_data / "noise").is_dir()
        or not (shared_data / "rir").is_dir()
    ):
        pytest.skip("shared noise/rir folders missing")
    noise_csv = prepare_noise_folder(
        shared_data / "noise", tmp_path / "noise.csv", "noise"
    )
    rows = read_rows(noise_csv)
    sources = sorted((shared_data / "noise").glob("*.flac"))
    assert {row["noise_type"] for row in rows} == {"noise"}
    assert len({row["ID"] for row in rows}) == len(rows)
    for row in rows:
        info = sf.info(row["wav"])
        assert (info.samplerate, info.channels) == (SR, 1)
        assert float(row["duration"]) == pytest.approx(info.frames / SR)
        assert 1.0 <= float(row["duration"]) <= 5.0
        assert row["wav_format"] == row["wav"].rsplit(".", 1)[1]
    # Long files are cut into 5 s wav segments written beside the CSV; the
    # others are used in place.
    cut = [
        row
        for row in rows
        if row["wav"].startswith(str(tmp_path / "noise_segments"))
    ]
    assert cut and all(row["wav_format"] == "wav" for row in cut)
    assert len(rows) - len(cut) == sum(
        sf.info(s).duration <= 5.0 for s in sources
    )
    total = sum(sf.info(s).duration for s in sources)
    assert (
        total - len(sources) <= sum(float(r["duration"]) for r in rows) <= total
    )
    check_add_noise(noise_csv)

    rir_csv = prepare_noise_folder(
        shared_data / "rir", tmp_path / "rir.csv", "rir", seg_dur=None
    )
    rows = read_rows(rir_csv)
    assert sorted(row["wav"] for row in rows) == [
        str(p) for p in sorted((shared_data / "rir").glob("*.flac"))
    ]
    check_add_reverb(rir_csv)


# ------------------------------------------------------------ MUSAN-shaped


@pytest.fixture
def musan(tmp_path):
    root = tmp_path / "musan"
    write(
        root / "noise" / "free-sound" / "noise-free-sound-0000.wav", noise(12.0)
    )
    write(
        root / "noise" / "sound-bible" / "noise-sound-bible-0000.wav",
        noise(3.0, 1),
    )
    write(root / "music" / "fma" / "music-fma-0000.wav", sine(440, 11.0))
    for index, hz in enumerate(TALKER_HZ):
        write(
            root / "speech" / "librivox" / f"speech-librivox-{index:04d}.wav",
            sine(hz, 6.0),
        )
    (root / "music" / "fma" / "ANNOTATIONS").write_text("not audio\n")
    return root


def test_prepare_musan(musan, tmp_path, caplog):
    out = tmp_path / "out"
    csvs = prepare_musan(musan, out, n_babble=6, babble_speakers=(3, 7))
    assert csvs == {
        kind: str(out / f"{kind}.csv") for kind in ("noise", "music", "babble")
    }
    noise_rows = read_rows(csvs["noise"])
    assert [r["ID"] for r in noise_rows] == [
        "noise--free-sound--noise-free-sound-0000_0_80000",
        "noise--free-sound--noise-free-sound-0000_80000_160000",
        "noise--free-sound--noise-free-sound-0000_160000_192000",
        "noise--sound-bible--noise-sound-bible-0000",
    ]
    assert noise_rows[-1]["wav"] == str(
        musan / "noise/sound-bible/noise-sound-bible-0000.wav"
    )
    segment, _ = sf.read(noise_rows[1]["wav"])
    original, _ = sf.read(musan / "noise/free-sound/noise-free-sound-0000.wav")
    assert np.allclose(segment, original[80000:160000], atol=1e-4)
    music_rows = read_rows(csvs["music"])
    assert [float(r["duration"]) for r in music_rows] == [5.0, 5.0, 1.0]
    assert {r["noise_type"] for r in music_rows} == {"music"}

    babble_rows = read_rows(csvs["babble"])
    assert len(babble_rows) == 6 and {r["noise_type"] for r in babble_rows} == {
        "babble"
    }
    for row in babble_rows:
        mixture, rate = sf.read(row["wav"])
        assert rate == SR and len(mixture) == 5 * SR
        assert np.abs(mixture).max() == pytest.approx(0.9, abs=1e-3)
        spectrum = np.abs(np.fft.rfft(mixture))
        talkers = [spectrum[hz * 5] > 0.3 * spectrum.max() for hz in TALKER_HZ]
        assert 3 <= sum(talkers) <= 4  # 3-7 talkers, only 4 available

    check_add_noise(csvs["noise"])
    merged = merge_noise_csvs(csvs.values(), out / "all.csv")
    assert len(read_rows(merged)) == 4 + 3 + 6
    check_add_noise(merged)
    with pytest.raises(ValueError, match="ID musan-babble-00000 is in both"):
        merge_noise_csvs([csvs["babble"], csvs["babble"]], out / "twice.csv")

    caplog.clear()
    with caplog.at_level(logging.INFO):
        assert prepare_musan(musan, out, n_babble=6) == csvs
    assert caplog.text.count("Reusing") == 3
    caplog.clear()
    with caplog.at_level(logging.INFO):
        prepare_musan(musan, out, n_babble=2)
    assert caplog.text.count("Reusing") == 2  # only babble is redone
    assert len(read_rows(csvs["babble"])) == 2


def test_musan_layout_error(tmp_path):
    (tmp_path / "musan" / "noise").mkdir(parents=True)
    with pytest.raises(FileNotFoundError, match="music not found"):
        prepare_musan(tmp_path / "musan", tmp_path / "out")


# ------------------------------------------------------ RIRS_NOISES-shaped


@pytest.fixture
def rirs_noises(tmp_path):
    root = tmp_path / "RIRS_NOISES"
    simulated = root / "simulated_rirs"
    write(
        simulated / "smallroom" / "Room001" / "Room001-00001.wav", rir(seed=1)
    )
    write(
        simulated / "smallroom" / "Room001" / "Room001-00002.wav", rir(seed=2)
    )
    write(
        simulated / "mediumroom" / "Room002" / "Room002-00001.wav", rir(seed=3)
    )
    real = root / "real_rirs_isotropic_noises"
    write(real / "air_type1_air_binaural_lecture_1_1.wav", rir(0.5, seed=4))
    two_channels = np.stack([rir(seed=5), rir(seed=6)], axis=1)
    write(real / "RVB2014_type1_rir_largeroom1_far_angla.wav", two_channels)
    write(real / "RVB2014_type1_noise_largeroom1_1.wav", noise(2.0))
    return root


def test_prepare_rirs_noises(rirs_noises, tmp_path):
    rir_csv = prepare_rirs_noises(rirs_noises, tmp_path / "out")
    rows = {row["ID"]: row for row in read_rows(rir_csv)}
    assert sorted(rows) == [
        "rir--real_rirs_isotropic_noises--RVB2014_type1_rir_largeroom1_far_angla",
        "rir--real_rirs_isotropic_noises--air_type1_air_binaural_lecture_1_1",
        "rir--simulated_rirs--mediumroom--Room002--Room002-00001",
        "rir--simulated_rirs--smallroom--Room001--Room001-00001",
        "rir--simulated_rirs--smallroom--Room001--Room001-00002",
    ]
    assert {row["noise_type"] for row in rows.values()} == {"rir"}
    # The 2-channel RIR is replaced by its first channel, written as mono.
    mono = rows[
        "rir--real_rirs_isotropic_noises--RVB2014_type1_rir_largeroom1_far_angla"
    ]
    assert mono["wav"].startswith(str(tmp_path / "out" / "rir_segments"))
    samples, _ = sf.read(mono["wav"])
    assert samples.ndim == 1 and np.allclose(samples, rir(seed=5), atol=1e-4)
    check_add_reverb(rir_csv)

    # With a rir_list, exactly the RIRs it names.
    (rirs_noises / "real_rirs_isotropic_noises" / "rir_list").write_text(
        "--rir-id air_1 --room-id air RIRS_NOISES/real_rirs_isotropic_noises/"
        "air_type1_air_binaural_lecture_1_1.wav\n"
    )
    rows = read_rows(prepare_rirs_noises(rirs_noises, tmp_path / "out2"))
    assert len(rows) == 4 and sum("real_rirs" in r["ID"] for r in rows) == 1


# ------------------------------------------------------ babble and errors


def test_babble_from_speaker_csv(tmp_path):
    speech_rows = []
    for spk, hz in zip(("s1", "s2", "s3"), (300, 500, 700)):
        path = write(tmp_path / spk / "u.wav", sine(hz, 3.0))
        for start in (0, 16000):
            speech_rows.append(
                {
                    "ID": f"{spk}_{start}",
                    "duration": 1.0,
                    "wav": str(path),
                    "start": start,
                    "stop": start + 16000,
                    "spk_id": spk,
                }
            )
    speech_csv = tmp_path / "train.csv"
    with open(speech_csv, "w", newline="") as csv_file:
        writer = csv.DictWriter(csv_file, fieldnames=list(speech_rows[0]))
        writer.writeheader()
        writer.writerows(speech_rows)
    babble_csv = prepare_babble(
        speech_csv, tmp_path / "eval_babble", 3, (2, 3), seg_dur=2.0
    )
    rows = read_rows(babble_csv)
    assert [r["ID"] for r in rows] == [
        "babble-00000",
        "babble-00001",
        "babble-00002",
    ]
    for row in rows:
        mixture, _ = sf.read(row["wav"])
        assert len(mixture) == 2 * SR  # 1 s segments looped to 2 s
        spectrum = np.abs(np.fft.rfft(mixture))
        assert (
            sum(
                spectrum[hz * 2] > 0.3 * spectrum.max()
                for hz in (300, 500, 700)
            )
            >= 2
        )
    check_add_noise(babble_csv)
    with pytest.raises(ValueError, match="at least 4 talkers"):
        prepare_babble(speech_csv, tmp_path / "b", 3, (4, 5))


def test_noise_bad_files(tmp_path, bad_audio_files):
    folder = tmp_path / "noises"
    write(folder / "ok.wav", noise(2.0))
    (folder / "stereo.wav").write_bytes(bad_audio_files["stereo"].read_bytes())
    (folder / "nan.wav").write_bytes(bad_audio_files["nan"].read_bytes())
    with pytest.raises(AudioError) as error:
        prepare_noise_folder(folder, tmp_path / "n.csv", "noise")
    assert f"{folder / 'stereo.wav'}: 2 channels" in str(error.value)
    assert f"{folder / 'nan.wav'}: NaN" in str(error.value)
    assert not (tmp_path / "n.csv").exists()
    csv_path = prepare_noise_folder(
        folder, tmp_path / "n.csv", "noise", skip_bad_files=True
    )
    assert [r["wav"] for r in read_rows(csv_path)] == [str(folder / "ok.wav")]
    report = (tmp_path / "n_bad_files.txt").read_text().splitlines()
    reported = sorted(line.split("\t")[0] for line in report)
    assert reported == [str(folder / "nan.wav"), str(folder / "stereo.wav")]
    with pytest.raises(ValueError, match="noise_type must be one of"):
        prepare_noise_folder(folder, tmp_path / "x.csv", "hum")
    with pytest.raises(ValueError, match="seg_dur=None"):
        prepare_noise_folder(folder, tmp_path / "x.csv", "rir")


def test_musan_babble_merges_with_speaker_babble(musan, tmp_path):
    """VoxCeleb + MUSAN: the training babble holds both babble sets, every ID once."""
    from anchor_reg.data.prepare import prepare_noise

    write(musan / "music" / "fma" / "music-fma-0001.wav", sine(220, 6.0))
    write(musan / "noise" / "free-sound" / "noise-free-sound-0001.wav", noise(6.0, 2))
    rirs = tmp_path / "rirs"
    for index in range(2):
        write(rirs / f"room{index}.wav", rir(seed=index))
    prep = tmp_path / "prep"
    prep.mkdir()
    with open(prep / "train.csv", "w", newline="") as csv_file:
        writer = csv.writer(csv_file)
        writer.writerow(["ID", "duration", "wav", "start", "stop", "spk_id"])
        for index, hz in enumerate((150, 350, 550, 750)):
            path = write(tmp_path / "speech" / f"spk{index}.wav", sine(hz, 4.0))
            writer.writerow([f"spk{index}--u", 4.0, path, 0, 4 * SR, f"spk{index}"])
    hparams = {"prep_folder": str(prep), "data_seed": 3, "sample_rate": SR, "skip_bad_files": False,
               "babble_mixtures": 4}
    outputs = prepare_noise(hparams, {"musan": musan, "rir": rirs})
    ids = [row["ID"] for row in read_rows(outputs["babble_train"])]
    assert len(ids) == len(set(ids))
    assert sum(i.startswith("babble-") for i in ids) == 4
    assert any(i.startswith("musan-babble-") for i in ids)
    assert all(i.startswith("musan-babble-") for i in (r["ID"] for r in read_rows(outputs["eval_babble"])))
    check_add_noise(outputs["babble_train"])
