"""VoxCeleb preparation on a VoxCeleb-shaped tree with the real VoxCeleb1-O
trial list (37,720 trials over 4,874 files)."""

import csv
import os
from collections import Counter

import pytest
import soundfile as sf

from anchor_reg.data.cache import CSV_FIELDS
from anchor_reg.data.trials import strip_trial_extension
from anchor_reg.data.voxceleb import prepare_voxceleb

SR = 16000
TRAIN_SPEAKERS = {f"id1100{i}": 3.6 + i for i in range(4)}  # spk -> seconds


def read_rows(path):
    with open(path, newline="") as csv_file:
        reader = csv.DictReader(csv_file)
        assert reader.fieldnames == CSV_FIELDS
        return list(reader)


@pytest.fixture(scope="module")
def voxceleb_tree(shared_data, tmp_path_factory):
    """``<root>/wav/idXXXXX/<video>/<nnnnn>.wav`` for every VoxCeleb1 test file
    (0.5 s of real speech, hard links to 20 clips) plus 4 training speakers
    (2 videos x 2 files each); ``<root>/meta/veri_test.txt`` is the real list.
    """
    meta = shared_data / "voxceleb-meta"
    sources = sorted(
        (shared_data / "speech" / "librispeech-train").glob("*/*/*.flac")
    )
    if not (meta / "veri_test.txt").is_file() or len(sources) < 20:
        pytest.skip("VoxCeleb metadata or LibriSpeech samples missing")
    root = tmp_path_factory.mktemp("voxceleb")
    clips = []
    for index, source in enumerate(sources[:20]):
        clips.append(root / f"clip{index}.wav")
        sf.write(
            clips[-1], sf.read(source, frames=SR // 2, dtype="int16")[0], SR
        )
    test_ids = [
        line.split()[0] for line in open(meta / "vox1_test_durations.txt")
    ]
    for index, utt_id in enumerate(test_ids):
        path = root / "wav" / f"{utt_id}.wav"
        path.parent.mkdir(parents=True, exist_ok=True)
        os.link(clips[index % len(clips)], path)
    longest = max(sources, key=lambda source: sf.info(source).frames)
    for spk, seconds in TRAIN_SPEAKERS.items():
        speech = sf.read(longest, frames=round(seconds * SR), dtype="int16")[0]
        assert len(speech) == round(seconds * SR)
        for video in ("vidA", "vidB"):
            for utt in ("00001", "00002"):
                path = root / "wav" / spk / video / f"{utt}.wav"
                path.parent.mkdir(parents=True, exist_ok=True)
                sf.write(path, speech, SR)
    (root / "meta").mkdir()
    os.link(meta / "veri_test.txt", root / "meta" / "veri_test.txt")
    return root, test_ids


@pytest.fixture(scope="module")
def voxceleb_prep(voxceleb_tree, tmp_path_factory):
    root, _ = voxceleb_tree
    save = tmp_path_factory.mktemp("voxceleb_prep")
    return prepare_voxceleb(
        root, save, trial_list="veri_test.txt", dev_ratio=0.1
    )


def test_every_trial_maps_to_enrol_and_test_rows(voxceleb_tree, voxceleb_prep):
    root, test_ids = voxceleb_tree
    trials = [line.split() for line in open(voxceleb_prep["trials"])]
    assert len(trials) == 37720
    assert trials == [
        line.split() for line in open(root / "meta" / "veri_test.txt")
    ]
    enrol = {r["ID"]: r for r in read_rows(voxceleb_prep["enrol"])}
    test = {r["ID"]: r for r in read_rows(voxceleb_prep["test"])}
    assert all(strip_trial_extension(e) in enrol for _, e, _ in trials)
    assert all(strip_trial_extension(t) in test for _, _, t in trials)
    named = {
        strip_trial_extension(name) for trial in trials for name in trial[1:]
    }
    assert set(enrol) | set(test) == named and named <= set(test_ids)
    assert (len(enrol), len(test)) == (4715, 4713)
    row = enrol["id10270/x6uYqmx31kE/00001"]
    assert row["wav"] == str(
        root / "wav" / "id10270" / "x6uYqmx31kE" / "00001.wav"
    )
    assert [row[k] for k in ("start", "stop", "duration", "spk_id")] == [
        "0",
        "8000",
        "0.5",
        "id10270",
    ]


def test_trial_speakers_excluded_from_training(voxceleb_prep):
    train = read_rows(voxceleb_prep["train"])
    dev = read_rows(voxceleb_prep["dev"])
    assert {r["spk_id"] for r in train} == set(TRAIN_SPEAKERS)
    assert {r["spk_id"] for r in dev} <= set(TRAIN_SPEAKERS) and dev
    assert not any(r["spk_id"].startswith("id10") for r in train + dev)
    # 3 s segments, remainders under 1 s dropped: 1 row per 3.6 s file, 2
    # per 4.6, 5.6 or 6.6 s file.
    per_spk = Counter(r["spk_id"] for r in train + dev)
    assert per_spk == {"id11000": 4, "id11001": 8, "id11002": 8, "id11003": 8}
    row = next(
        r for r in train + dev if r["ID"].startswith("id11003--vidB--00002_")
    )
    assert row["wav"].endswith("wav/id11003/vidB/00002.wav")


def test_trial_list_lookup_and_errors(voxceleb_tree, tmp_path):
    root, _ = voxceleb_tree
    with pytest.raises(
        FileNotFoundError, match="veri_test2.txt not found"
    ) as error:
        prepare_voxceleb(root, tmp_path / "p")  # default veri_test2.txt
    assert str(root / "meta" / "veri_test2.txt") in str(error.value)
    assert "Nothing is downloaded" in str(error.value)
    with pytest.raises(
        FileNotFoundError, match="wav/idXXXXX/<video>/<nnnnn>.wav"
    ):
        prepare_voxceleb(tmp_path, tmp_path / "p", trial_list="veri_test.txt")
    # A trial list naming files that are absent: every one is listed.
    own_list = tmp_path / "my_trials.txt"
    own_list.write_text(
        "1 id11000/vidA/00001.wav id11000/vidB/00001.wav\n"
        "0 id11000/vidA/00001.wav id19999/vidZ/00001.wav\n"
    )
    with pytest.raises(
        FileNotFoundError,
        match="(?s)1 file\\(s\\) named in .*id19999/vidZ/00001",
    ):
        prepare_voxceleb(root, tmp_path / "p", trial_list=own_list)
