"""Folder-of-speakers preparation: segments, splits, trials, reruns, bad files."""

import csv
import json
import logging
import random
import re
from collections import Counter, defaultdict

import numpy as np
import pytest
import soundfile as sf

from anchor_reg.data.cache import CSV_FIELDS
from anchor_reg.data.folder import prepare_folder_of_speakers, segment_bounds, split_dev
from anchor_reg.data.trials import generate_trials, read_trial_list, strip_trial_extension
from anchor_reg.errors import AudioError

SR = 16000
CORPORA = ("librispeech-train", "dsp", "asc")


def read_rows(path):
    with open(path, newline="") as csv_file:
        reader = csv.DictReader(csv_file)
        assert reader.fieldnames == CSV_FIELDS
        return list(reader)


def read_trials(path):
    return [tuple(line.split()) for line in open(path)]


def make_tree(root, speakers, session="s1"):
    """Writes ``{spk: [duration, ...]}`` as root/spk/session/NNN.wav noise."""
    rng = np.random.default_rng(0)
    for spk, durations in speakers.items():
        folder = root / spk / session
        folder.mkdir(parents=True)
        for index, duration in enumerate(durations):
            samples = rng.uniform(-0.3, 0.3, round(duration * SR)).astype(
                np.float32
            )
            sf.write(folder / f"{index:03d}.wav", samples, SR)
    return root


# ---------------------------------------------------------------- real speech


@pytest.fixture(scope="module")
def speech_prep(shared_data, tmp_path_factory):
    """The three shared speech corpora, prepared once for this module."""
    folders = [shared_data / "speech" / name for name in CORPORA]
    if not all(folder.is_dir() for folder in folders):
        pytest.skip("shared speech corpora missing")
    save = tmp_path_factory.mktemp("speech_prep")
    outputs = prepare_folder_of_speakers(folders, save, test_seg_dur=4.0)
    return folders, save, outputs


def test_speech_outputs_and_speakers(speech_prep):
    folders, save, outputs = speech_prep
    assert set(outputs) == {"train", "dev", "enrol", "test", "trials", "opts"}
    assert outputs["opts"] == str(save / "prepare_opts.json")
    train, dev = read_rows(outputs["train"]), read_rows(outputs["dev"])
    enrol, test = read_rows(outputs["enrol"]), read_rows(outputs["test"])
    train_spk = {r["spk_id"] for r in train}
    assert {r["spk_id"] for r in dev} <= train_spk
    # 20% of each corpus held out (248, 20 and 24 speakers), the rest trained.
    held_out = [
        {p.name for p in folder.iterdir() if p.is_dir()} - train_spk
        for folder in folders
    ]
    assert [len(speakers) for speakers in held_out] == [50, 4, 5]
    assert len(train_spk) == 292 - 59
    # Verification rows come from held-out speakers only.
    verification_spk = {r["spk_id"] for r in enrol + test}
    assert verification_spk <= set.union(*held_out)
    assert len(verification_spk) >= 59 - 3  # a few 1-segment speakers
    # dev is about 5% of the training rows.
    assert abs(len(dev) / (len(train) + len(dev)) - 0.05) < 0.005


def test_speech_training_segments(speech_prep):
    _, _, outputs = speech_prep
    rows = read_rows(outputs["train"]) + read_rows(outputs["dev"])
    by_wav = defaultdict(list)
    for row in rows:
        start, stop = int(row["start"]), int(row["stop"])
        spk, session, utt = re.fullmatch(
            r"(.+)--(.+)--(.+)_\d+_\d+", row["ID"]
        ).groups()
        assert row["ID"].endswith(f"_{start}_{stop}")
        assert (
            row["wav"].endswith(f"/{spk}/{session}/{utt}.flac")
            and spk == row["spk_id"]
        )
        assert float(row["duration"]) == pytest.approx((stop - start) / SR)
        by_wav[row["wav"]].append((start, stop))
    for wav, bounds in by_wav.items():
        bounds.sort()
        *full, last = bounds
        assert all(b - a == 3 * SR for a, b in full)  # seg_dur 3 s
        assert SR <= last[1] - last[0] <= 3 * SR  # min_utt_dur 1 s
    for wav in list(by_wav)[::20]:  # consecutive, covering the utterance
        assert by_wav[wav] == segment_bounds(sf.info(wav).frames, 3 * SR, SR)


def test_speech_trials_balanced_within_corpus(speech_prep):
    folders, _, outputs = speech_prep
    trials = read_trials(outputs["trials"])
    enrol = {r["ID"]: r for r in read_rows(outputs["enrol"])}
    test = {r["ID"]: r for r in read_rows(outputs["test"])}
    labels = Counter(label for label, _, _ in trials)
    assert labels["1"] == labels["0"] > 300
    assert len(set(trials)) == len(trials)

    def corpus(row):
        return next(f for f in folders if row["wav"].startswith(f"{f}/"))

    for label, e, t in trials:
        e_row, t_row = (
            enrol[strip_trial_extension(e)],
            test[strip_trial_extension(t)],
        )
        assert corpus(e_row) == corpus(t_row)
        assert (label == "1") == (e_row["spk_id"] == t_row["spk_id"])
        assert e != t
    # test_seg_dur=4: rows are 4 s segments named <relpath>@<start>-<stop>;
    # LibriSpeech speakers (one ~12 s utterance each) get target trials.
    for row_id, row in {**enrol, **test}.items():
        relpath, span = row_id.split("@")
        start, stop = map(int, span.split("-"))
        assert (row["start"], row["stop"]) == (str(start), str(stop))
        assert row["wav"].endswith(relpath + ".flac")
        assert stop - start <= 4 * SR
    libri_targets = [
        e
        for label, e, _ in trials
        if label == "1" and corpus(enrol[e]).name == "librispeech-train"
    ]
    assert len(libri_targets) > 40


def test_speech_rerun_is_reused(speech_prep, caplog):
    folders, save, outputs = speech_prep
    before = {
        name: (save / name).stat().st_mtime_ns
        for name in ("train.csv", "trials.txt")
    }
    with caplog.at_level(logging.INFO):
        again = prepare_folder_of_speakers(folders, save, test_seg_dur=4.0)
    assert again == outputs
    assert "Reusing" in caplog.text
    assert {n: (save / n).stat().st_mtime_ns for n in before} == before
    opts = json.loads((save / "prepare_opts.json").read_text())
    assert opts["test_seg_dur"] == 4.0 and opts["seed"] == 1234


# ------------------------------------------------------ small synthetic trees


@pytest.fixture
def tree(tmp_path):
    """Two corpora: 4 speakers with 1.2-7.5 s utterances, 3 with 1.5 s ones."""
    first = make_tree(
        tmp_path / "first", {f"a{i}": [3.5, 2.0, 1.2, 7.5] for i in range(4)}
    )
    second = make_tree(
        tmp_path / "second", {f"b{i}": [1.5] * 5 for i in range(3)}
    )
    return [first, second]


def test_options_change_redoes_and_seed_is_deterministic(
    tree, tmp_path, caplog
):
    kwargs = dict(verification_speakers=2, trials_per_speaker=3, dev_ratio=0.1)
    out_a = prepare_folder_of_speakers(tree, tmp_path / "a", **kwargs)
    out_b = prepare_folder_of_speakers(tree, tmp_path / "b", **kwargs)
    for key in ("train", "dev", "enrol", "test", "trials"):
        assert open(out_a[key]).read().replace(str(tmp_path / "a"), "") == open(
            out_b[key]
        ).read().replace(str(tmp_path / "b"), "")
    trials = read_trials(out_a["trials"])
    with caplog.at_level(logging.INFO):
        prepare_folder_of_speakers(
            tree, tmp_path / "a", **dict(kwargs, seed=99)
        )
    assert "Reusing" not in caplog.text
    assert read_trials(out_a["trials"]) != trials
    assert (
        json.loads((tmp_path / "a" / "prepare_opts.json").read_text())["seed"]
        == 99
    )
    # A missing output or a missing options file means the work is redone.
    (tmp_path / "a" / "train.csv").unlink()
    prepare_folder_of_speakers(tree, tmp_path / "a", **dict(kwargs, seed=99))
    assert (tmp_path / "a" / "train.csv").exists()
    # A changed input file (new size) is seen too.
    wav = tree[0] / "a0" / "s1" / "000.wav"
    sf.write(wav, np.zeros(SR * 4, dtype=np.float32) + 0.1, SR)
    caplog.clear()
    with caplog.at_level(logging.INFO):
        prepare_folder_of_speakers(
            tree, tmp_path / "a", **dict(kwargs, seed=99)
        )
    assert "Reusing" not in caplog.text


def test_crash_midway_is_redone(tree, tmp_path, monkeypatch, caplog):
    save = tmp_path / "p"
    prepare_folder_of_speakers(tree, save, verification_speakers=2)

    def crash(trials, path):
        raise KeyboardInterrupt("killed")

    monkeypatch.setattr("anchor_reg.data.folder.write_trials", crash)
    with pytest.raises(KeyboardInterrupt):
        prepare_folder_of_speakers(tree, save, verification_speakers=2, seed=5)
    # train.csv is already rewritten for seed 5: the old options are gone, so
    # the first options are not "reused" over the mixed outputs.
    assert not (save / "prepare_opts.json").exists()
    monkeypatch.undo()
    with caplog.at_level(logging.INFO):
        prepare_folder_of_speakers(tree, save, verification_speakers=2)
    assert "Reusing" not in caplog.text
    assert (save / "prepare_opts.json").exists()
    assert not [p.name for p in save.iterdir() if ".tmp" in p.name]


def test_short_utterances_and_verification_list(tree, tmp_path):
    out = prepare_folder_of_speakers(
        tree,
        tmp_path / "p",
        verification_speakers=["a0", "a1", "b0", "b1"],
        min_utt_dur=1.4,
        dev_ratio=0,
    )
    train = read_rows(out["train"])
    assert read_rows(out["dev"]) == []
    assert {r["spk_id"] for r in train} == {"a2", "a3", "b2"}
    bounds = sorted(
        (int(r["start"]), int(r["stop"]))
        for r in train
        if r["wav"].endswith("a2/s1/003.wav")
    )
    assert bounds == [(0, 48000), (48000, 96000), (96000, 120000)]  # 7.5 s
    lengths = Counter(
        r["wav"].rsplit("/", 1)[1] for r in train if r["spk_id"] == "a2"
    )
    assert lengths == {
        "000.wav": 1,
        "001.wav": 1,
        "003.wav": 3,
    }  # 1.2 s dropped
    # Whole-utterance verification rows (even the 1.2 s ones) with path IDs.
    enrol = read_rows(out["enrol"])
    assert all(r["start"] == "0" and "@" not in r["ID"] for r in enrol)
    trials = read_trials(out["trials"])
    assert all(e.endswith(".wav") and t.endswith(".wav") for _, e, t in trials)
    speakers = {e.split("/")[0] for _, e, _ in trials}
    assert speakers == {"a0", "a1", "b0", "b1"}


def test_given_trial_list(tree, tmp_path):
    trial_list = tmp_path / "trials.txt"
    trial_list.write_text(
        "1 a0/s1/000.wav a0/s1/001.wav\n"
        "0 a0/s1/000.wav a1/s1/003@16000-48000\n"
        "0 a1/s1/003@16000-48000 b0/s1/004.flac\n"
    )
    out = prepare_folder_of_speakers(
        tree, tmp_path / "p", trial_list=trial_list
    )
    enrol = {r["ID"]: r for r in read_rows(out["enrol"])}
    test = {r["ID"]: r for r in read_rows(out["test"])}
    assert set(enrol) == {"a0/s1/000", "a1/s1/003@16000-48000"}
    assert set(test) == {"a0/s1/001", "a1/s1/003@16000-48000", "b0/s1/004"}
    assert (test["a0/s1/001"]["start"], test["a0/s1/001"]["stop"]) == (
        "0",
        "32000",
    )
    segment = test["a1/s1/003@16000-48000"]
    assert (segment["start"], segment["stop"], segment["duration"]) == (
        "16000",
        "48000",
        "2.0",
    )
    assert read_trials(out["trials"]) == [
        tuple(l.split()) for l in trial_list.read_text().splitlines()
    ]
    train_spk = {
        r["spk_id"] for r in read_rows(out["train"]) + read_rows(out["dev"])
    }
    assert train_spk == {"a2", "a3", "b1", "b2"}

    trial_list.write_text(
        "1 a0/s1/000.wav a0/s1/009.wav\n0 a0/s1/000.wav zz/s1/000.wav\n"
    )
    with pytest.raises(FileNotFoundError) as error:
        prepare_folder_of_speakers(tree, tmp_path / "q", trial_list=trial_list)
    assert "2 file(s) named in" in str(error.value)
    assert "a0/s1/009" in str(error.value) and "zz/s1/000" in str(error.value)


def test_given_trial_list_with_skipped_bad_file(
    tree, tmp_path, bad_audio_files, caplog
):
    bad = tree[0] / "a0" / "s1" / "bad.wav"
    bad.write_bytes(bad_audio_files["nan"].read_bytes())
    trial_list = tmp_path / "trials.txt"
    trial_list.write_text(
        "1 a0/s1/000.wav a0/s1/bad.wav\n0 a0/s1/000.wav b0/s1/000.wav\n"
    )
    with pytest.raises(AudioError, match="bad.wav: NaN"):
        prepare_folder_of_speakers(tree, tmp_path / "p", trial_list=trial_list)
    out = prepare_folder_of_speakers(
        tree, tmp_path / "p", trial_list=trial_list, skip_bad_files=True
    )
    assert read_trials(out["trials"]) == [
        ("0", "a0/s1/000.wav", "b0/s1/000.wav")
    ]
    assert "Dropped 1 of 2 trials" in caplog.text
    assert open(out["bad_files"]).read().startswith(f"{bad}\tNaN")


def test_bad_files_at_preparation(tree, tmp_path, bad_audio_files):
    folder = tree[0] / "a3" / "s1"
    for kind, path in bad_audio_files.items():
        if path.exists():
            (folder / f"bad_{kind}.wav").write_bytes(path.read_bytes())
    (folder / "bad_missing.wav").symlink_to(tmp_path / "nowhere.wav")
    with pytest.raises(AudioError) as error:
        prepare_folder_of_speakers(
            tree, tmp_path / "p", verification_speakers=2
        )
    message = str(error.value)
    for kind in bad_audio_files:
        assert str(folder / f"bad_{kind}.wav") in message
    assert (
        "file not found" in message
        and "NaN" in message
        and "2 channels" in message
    )
    assert not (tmp_path / "p" / "prepare_opts.json").exists()

    out = prepare_folder_of_speakers(
        tree, tmp_path / "p", verification_speakers=2, skip_bad_files=True
    )
    report = dict(
        line.split("\t") for line in open(out["bad_files"]).read().splitlines()
    )
    assert set(report) == {
        str(folder / f"bad_{kind}.wav") for kind in bad_audio_files
    }
    used = {
        r["wav"]
        for key in ("train", "dev", "enrol", "test")
        for r in read_rows(out[key])
    }
    assert not used & set(report) and len(used) == 4 * 4 + 3 * 5


def test_bad_arguments(tree, tmp_path):
    with pytest.raises(ValueError, match="need at least 2"):
        prepare_folder_of_speakers(
            tree, tmp_path / "p", verification_speakers=1
        )
    with pytest.raises(
        ValueError, match="Unknown verification speakers: \\['zz'\\]"
    ):
        prepare_folder_of_speakers(
            tree, tmp_path / "p", verification_speakers=["a0", "zz"]
        )
    with pytest.raises(ValueError, match="exists twice"):
        prepare_folder_of_speakers([tree[0], tree[0]], tmp_path / "p")
    with pytest.raises(FileNotFoundError, match="Data folder not found"):
        prepare_folder_of_speakers(tmp_path / "nothing", tmp_path / "p")


def test_names_with_spaces_refused_before_any_work_then_renamed(tmp_path):
    root = make_tree(tmp_path / "my speech", {f"a{i}": [1.5, 1.5] for i in range(4)})
    spaced = root / "a1" / "s1" / "\u00f1and\u00fa caf\u00e9 02.wav"  # ñandú café 02.wav
    (root / "a1" / "s1" / "001.wav").rename(spaced)
    with pytest.raises(ValueError) as err:
        prepare_folder_of_speakers(root, tmp_path / "p", verification_speakers=2)
    message = str(err.value)
    assert f"1 audio file(s) in {root} have whitespace" in message and str(spaced) in message
    assert "Rename them without spaces" in message
    assert not (tmp_path / "p").exists() or not any((tmp_path / "p").iterdir())  # refused before writing
    # the remedy: renamed, the file is prepared, and the trial list written reads back
    renamed = spaced.with_name(spaced.name.replace(" ", "_"))
    spaced.rename(renamed)
    out = prepare_folder_of_speakers(root, tmp_path / "p", verification_speakers=2, test_seg_dur=0.5)
    trials = read_trial_list(out["trials"])
    listed = {name for _, e, t in trials for name in (e, t)} | {
        row["wav"] for row in read_rows(out["train"]) + read_rows(out["dev"])
    }
    assert any(renamed.stem in name for name in listed)


@pytest.mark.parametrize("where", ["speaker", "session", "file"])
def test_symlink_loop_named_on_one_line(tmp_path, where):
    root = make_tree(tmp_path / "speech", {f"a{i}": [1.5, 1.5] for i in range(4)})
    link = {"speaker": root / "loop", "session": root / "a0" / "loop", "file": root / "a0" / "s1" / "loop.wav"}[where]
    link.symlink_to(link.name)  # points to itself
    with pytest.raises(ValueError) as err:
        prepare_folder_of_speakers(root, tmp_path / "p", verification_speakers=2)
    assert str(err.value).startswith(f"{link} cannot be followed (Too many levels of symbolic links)")
    assert "\n" not in str(err.value)
    link.unlink()  # the remedy
    assert read_rows(prepare_folder_of_speakers(root, tmp_path / "p", verification_speakers=2)["train"])


def test_too_few_speakers_says_how_many_are_needed(tmp_path):
    root = make_tree(tmp_path / "speech", {"only": [3.0, 3.0, 3.0]})
    with pytest.raises(ValueError) as err:
        prepare_folder_of_speakers(root, tmp_path / "p")  # default: 20 %, at least 2, held out
    assert str(err.value).startswith(
        f"data folder {root} has 1 speaker(s) (only); 2 are held out for verification and at least 1 must be "
        "left for training, so at least 3 are needed"
    )
    make_tree(root, {"second": [3.0, 3.0], "third": [3.0, 3.0]})  # the remedy: add speakers
    out = prepare_folder_of_speakers(root, tmp_path / "p")
    assert {row["spk_id"] for row in read_rows(out["train"])} == {"only", "second", "third"} - {
        row["spk_id"] for row in read_rows(out["test"])
    }


# ----------------------------------------------------------------- unit level


def test_segment_bounds():
    assert segment_bounds(10, 4, 2) == [(0, 4), (4, 8), (8, 10)]
    assert segment_bounds(9, 4, 2) == [(0, 4), (4, 8)]
    assert segment_bounds(8, 4, 2) == [(0, 4), (4, 8)]
    assert segment_bounds(3, 4, 2) == [(0, 3)]
    assert segment_bounds(1, 4, 2) == []


def test_split_dev_keeps_every_speaker():
    rows = [
        {"spk_id": spk, "wav": f"{spk}/{utt}"}
        for spk, n_utts in (("many", 20), ("one", 1))
        for utt in range(n_utts)
        for _ in range(3)  # three segments per utterance
    ]
    train, dev = split_dev(rows, 0.5, seed=1)
    assert len(dev) == pytest.approx(len(rows) / 2, abs=3)
    assert {r["spk_id"] for r in train} == {"many", "one"}
    dev_wavs = {r["wav"] for r in dev if r["spk_id"] == "many"}
    assert not dev_wavs & {r["wav"] for r in train}  # whole utterances move
    assert split_dev(rows, 0.5, seed=1) == (train, dev)


def test_generate_trials_balanced_and_capped():
    rows = [
        {"spk_id": spk, "trial_name": f"{spk}{i}"}
        for spk, n in (("x", 3), ("y", 10), ("z", 1))
        for i in range(n)
    ]
    trials = generate_trials(rows, 5, random.Random(0))
    by_enrol_spk = Counter((label, e[0]) for label, e, _ in trials)
    # x: only 3 distinct target pairs; z: no pair at all.
    assert by_enrol_spk == {(1, "x"): 3, (0, "x"): 3, (1, "y"): 5, (0, "y"): 5}
    assert all((label == 1) == (e[0] == t[0]) for label, e, t in trials)
    assert len(set(trials)) == len(trials)
    assert trials == generate_trials(rows, 5, random.Random(0))
