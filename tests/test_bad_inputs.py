"""Every bad key value and bad file: one `error:` line naming the key or file, exit status 1, nothing written.

Each case runs ``train.cli`` (what ``python train.py`` runs) in this process;
``sys.exit(message)`` is exit status 1 with the message on stderr, which
:func:`test_cli_exit_status_and_one_line_with_two_loader_workers` checks in a
real subprocess. The tiny synthetic corpus and its preparation are made once
(``prepared``) and only read by the cases.
"""
import csv
import pathlib
import re
import shutil
import subprocess
import sys

import numpy as np
import pytest
import soundfile as sf

from anchor_reg.config import plain_values, resolve
from anchor_reg.data.prepare import check_prepared
from anchor_reg.losses import OBJECTIVES
from tiny import REPO, files, refused, tiny_command, tiny_options, tree

sys.path.insert(0, str(REPO))
import train  # noqa: E402

STAGE1 = REPO / "hparams" / "stage1.yaml"


def prepare(options):
    """train.py's data preparation for stage1.yaml with these overrides."""
    train.prepare(plain_values(resolve(STAGE1, options)))


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    """A tiny synthetic corpus (``corpus/``) and its preparation (``results/default/prepared``)."""
    tmp = tmp_path_factory.mktemp("bad_inputs")
    prepare(tiny_options(tmp, STAGE1))
    return tmp


def read_csv_rows(path):
    """The rows of a CSV (dicts)."""
    with open(path, newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


def folder_dataset(prepared, speech):
    """Overrides that train on ``speech`` (a folder of speakers) with the tiny corpus' noise and RIRs."""
    noise = prepared / "corpus" / "noise"
    return dict(
        dataset="folder", data_folder=str(speech), rir_folder=str(prepared / "corpus" / "rir"),
        noise_folders={"noise": str(noise / "noise"), "music": str(noise / "music")}, verification_speakers=3,
    )


# ------------------------------------------------------------ key values ----
KEY_CASES = [
    ("stage1.yaml", {"number_of_epochs": -1}, "key 'number_of_epochs' must be an integer >= 1, got -1"),
    ("stage1.yaml", {"number_of_epochs": 0}, "key 'number_of_epochs' must be an integer >= 1, got 0"),
    ("stage1.yaml", {"batch_size": 0}, "key 'batch_size' must be an integer >= 1, got 0"),
    ("stage1.yaml", {"batch_size": 8.5}, "key 'batch_size' must be an integer >= 1, got 8.5"),
    ("stage1.yaml", {"snr_low": 30}, "key 'snr_low' must be <= snr_high (20), got 30"),
    ("stage1.yaml", {"dev_ratio": 0}, "key 'dev_ratio' must be a number in (0, 1), got 0"),
    ("stage1.yaml", {"dev_ratio": 1.5}, "key 'dev_ratio' must be a number in (0, 1), got 1.5"),
    ("stage1.yaml", {"seg_dur": 0}, "key 'seg_dur' must be a number > 0, got 0"),
    ("stage1.yaml", {"test_seg_dur": -1}, "key 'test_seg_dur' must be null or a number > 0, got -1"),
    ("stage1.yaml", {"verification_speakers": 1},
     "key 'verification_speakers' must be an integer >= 2, a fraction in (0, 1) or a list of >= 2 speaker ids, got 1"),
    ("stage1.yaml", {"dataset": "foo"}, "key 'dataset' must be one of synthetic, folder, voxceleb, unlabelled, got 'foo'"),
    ("stage1.yaml", {"num_workers": -1}, "key 'num_workers' must be an integer >= 0, got -1"),
    ("stage1.yaml", {"lr": 0}, "key 'lr' must be a number > 0, got 0"),
    ("stage1.yaml", {"weight_decay": -0.1}, "key 'weight_decay' must be a number >= 0, got -0.1"),
    ("stage1.yaml", {"keep_checkpoints": 0}, "key 'keep_checkpoints' must be an integer >= 1, got 0"),
    ("stage1.yaml", {"channels": 2}, "key 'channels' must be an integer >= 4, got 2"),
    ("stage1.yaml", {"synthetic_noises": 1}, "key 'synthetic_noises' must be an integer >= 2, got 1"),
    ("stage1.yaml", {"eval_noise_types": "[noise, rain]"},
     "key 'eval_noise_types' must be a list drawn from noise, music, babble, got ['noise', 'rain']"),
    ("stage2.yaml", {"anchor_weight": -1}, "key 'anchor_weight' must be a number >= 0, got -1"),
    ("stage2.yaml", {"noisy_copies": 0}, "key 'noisy_copies' must be an integer >= 1, got 0"),
    ("stage2.yaml", {"anchor_type": "foo"}, "key 'anchor_type' must be one of utterance, speaker, got 'foo'"),
    ("stage2.yaml", {"anchor_distance": "l1"}, "key 'anchor_distance' must be one of cosine, l2, got 'l1'"),
    ("stage2.yaml", {"anchor_weight_schedule_kind": "cosine"},
     "key 'anchor_weight_schedule_kind' must be one of constant, linear_warmup, linear_decay, got 'cosine'"),
    ("stage2.yaml", {"anchor_batch_size": 0}, "key 'anchor_batch_size' must be an integer >= 1, got 0"),
    ("stage2.yaml", {"snr_low": 5, "snr_high": 0}, "key 'snr_low' must be <= snr_high (0), got 5"),
    ("stage2.yaml", {"classifier_head": "anchor_centroid"},
     "key 'classifier_head' must be one of trainable, anchor_centroids, got 'anchor_centroid'"),
    ("stage2.yaml", {"anchor_objective": "contrastiv"},
     f"key 'anchor_objective' must be one of {', '.join(OBJECTIVES)}, got 'contrastiv'"),
    ("stage2.yaml", {"contrastive_negatives": -1}, "key 'contrastive_negatives' must be an integer in [0, 65536] "
                                                   "(the anchors of the store bound it too), got -1"),
    ("stage2.yaml", {"contrastive_negatives": 100000}, "key 'contrastive_negatives' must be an integer in "
                                                       "[0, 65536] (the anchors of the store bound it too), got 100000"),
    ("stage2.yaml", {"contrastive_scale": 0}, "key 'contrastive_scale' must be a number > 0, got 0"),
    ("stage2.yaml", {"contrastive_margin": 1.5}, "key 'contrastive_margin' must be a number in [0, 1], got 1.5"),
    ("stage2.yaml", {"early_stop_patience": 0}, "key 'early_stop_patience' must be an integer >= 1, got 0"),
    ("joint.yaml", {"consistency_weight": -0.5}, "key 'consistency_weight' must be a number >= 0, got -0.5"),
    ("joint.yaml", {"stage1_epochs": 0}, "key 'stage1_epochs' must be an integer >= 1, got 0"),
]


@pytest.mark.parametrize("yaml_name, overrides, expected", KEY_CASES, ids=lambda c: str(c)[:40])
def test_bad_key_value_one_line_before_any_work(tmp_path, yaml_name, overrides, expected):
    line = refused(yaml_name, tmp_path, **overrides)
    assert line == f"error: {REPO / 'hparams' / yaml_name}: {expected}"
    assert tree(tmp_path) == {}  # not even a folder: no corpus, no preparation, no output


@pytest.mark.parametrize("overrides", [{"classifier_head": "anchor_centroid"}, {"anchor_objective": "contrastiv"},
                                       {"contrastive_negatives": -1}, {"stage1_noise": "yes"}])
def test_the_pipeline_checks_every_step_key_before_any_work(tmp_path, overrides):
    line = refused("stage2.yaml", tmp_path, pipeline=True, **overrides)
    assert line.startswith("error: ") and f"'{next(iter(overrides))}'" in line
    assert tree(tmp_path) == {}


def test_a_crop_longer_than_its_rows_is_warned_before_any_work(tmp_path, caplog):
    with caplog.at_level("WARNING"):
        resolve(STAGE1, tiny_options(tmp_path, STAGE1, crop_dur=2.0))  # seg_dur 1.5
    assert "crop_dur (2.0) is longer than seg_dur (1.5)" in caplog.text
    assert tree(tmp_path) == {}


# ------------------------------------------------------- prepared data ----
def test_fewer_rows_than_one_batch_refused_then_a_smaller_batch_trains(prepared):
    train_csv = prepared / "results" / "default" / "prepared" / "train.csv"
    rows = len(train_csv.read_text().splitlines()) - 1
    before = files(prepared / "results")
    line = refused("stage1.yaml", prepared, batch_size=rows + 1)
    assert line == (f"error: batch_size: {rows + 1} is more than the {rows} rows of {train_csv}, so an epoch "
                    "has no training step: lower --batch_size or give more data")
    assert files(prepared / "results") == before
    check_prepared(dict(prep_folder=train_csv.parent, batch_size=rows))  # the remedy: accepted


def write_bad(kind, path):
    """Replaces ``path`` by a bad file of this kind."""
    speech = 0.1 * np.sin(np.arange(16000, dtype=np.float32) / 5)
    path.unlink()
    if kind == "empty":
        path.write_bytes(b"")
    elif kind == "no_frames":
        sf.write(path, speech[:0], 16000)
    elif kind == "corrupt":
        path.write_bytes(b"RIFF\x00\x00not a wave file" * 8)
    elif kind == "truncated":
        sf.write(path, speech, 16000)
        path.write_bytes(path.read_bytes()[:2000])
    elif kind == "nan":
        sf.write(path, np.where(np.arange(16000) == 100, np.nan, speech), 16000, subtype="FLOAT")
    elif kind == "sample_rate":
        sf.write(path, speech, 8000)
    elif kind == "stereo":
        sf.write(path, np.stack([speech, speech], 1), 16000)
    elif kind == "silent":
        sf.write(path, np.zeros(16000), 16000)


FILE_CASES = {
    "empty": re.escape("empty file (0 bytes)"),
    "no_frames": re.escape("no audio samples (0 frames)"),
    "corrupt": r"unreadable audio \(Error opening .*: Format not recognised\.\)",
    "truncated": r"truncated: header announces 32000 data bytes, file holds \d+",
    "nan": re.escape("NaN or Inf samples"),
    "sample_rate": re.escape("sample rate 8000 Hz, expected 16000 Hz"),
    "stereo": re.escape("2 channels, expected mono"),
    "silent": re.escape("digitally silent (no sample reaches 1/32768)"),
}


def speech_copy(prepared, tmp_path):
    """A copy of the tiny corpus' speakers (a user's folder of speech) under ``tmp_path``."""
    speech = tmp_path / "my_speech"
    shutil.copytree(prepared / "corpus" / "speech", speech)
    return speech


def verification_file(prepared, speech):
    """The copy in ``speech`` of the first utterance the tiny preparation holds out for verification."""
    test_csv = prepared / "results" / "default" / "prepared" / "test.csv"
    wav = pathlib.Path(test_csv.read_text().splitlines()[1].split(",")[2])
    return speech / wav.relative_to(prepared / "corpus" / "speech")


@pytest.mark.parametrize("kind", FILE_CASES)
def test_bad_training_file_named_on_one_line(prepared, tmp_path, kind):
    speech = speech_copy(prepared, tmp_path)
    bad = speech / "spk0001" / "sess1" / "utt00.wav"
    write_bad(kind, bad)
    line = refused("stage1.yaml", tmp_path, **folder_dataset(prepared, speech))
    assert re.fullmatch(
        re.escape(f"error: {bad}: ") + FILE_CASES[kind]
        + re.escape(" (fix or remove the file, or pass --skip_bad_files=True to leave it out)"), line
    ), line
    assert files(tmp_path / "results") == {}


def test_silent_trial_utterance_refused_then_skipped(prepared, tmp_path):
    speech = speech_copy(prepared, tmp_path)
    bad = verification_file(prepared, speech)
    write_bad("silent", bad)
    line = refused("stage1.yaml", tmp_path, **folder_dataset(prepared, speech))
    assert line == (f"error: {bad}: digitally silent (no sample reaches 1/32768) "
                    "(fix or remove the file, or pass --skip_bad_files=True to leave it out)")
    assert files(tmp_path / "results") == {}
    # the remedy: --skip_bad_files=True prepares without it, and lists it
    options = tiny_options(tmp_path, STAGE1, skip_bad_files=True, **folder_dataset(prepared, speech))
    prepare(options)
    prep = tmp_path / "results" / "default" / "prepared"
    assert str(bad) in (prep / "bad_files.txt").read_text()
    assert str(bad) not in (prep / "test.csv").read_text() + (prep / "trials.txt").read_text()


def test_short_verification_utterances_warned_naming_the_file(prepared, tmp_path, caplog):
    speech = speech_copy(prepared, tmp_path)
    short = verification_file(prepared, speech)
    sf.write(short, 0.1 * np.sin(np.arange(4000) / 5), 16000)  # 0.25 s; training crops are 1.5 s
    options = tiny_options(tmp_path, STAGE1, **folder_dataset(prepared, speech))
    with caplog.at_level("WARNING"):
        prepare(options)
    assert "1 verification utterance(s) are shorter than 0.5 x the shortest training crop" in caplog.text
    assert f"e.g. {short} (0.25 s)" in caplog.text


# ------------------------------------------------------- data preparation ----
def prep_cases(prepared):
    corpus = prepared / "corpus"
    speech = str(corpus / "speech")
    noise = {"noise": str(corpus / "noise/noise"), "music": str(corpus / "noise/music")}
    return [
        ({"dataset": "folder", "data_folder": speech, "noise_folders": noise},
         "rir_folder: no RIR folder given (set --rir_folder= to a folder of RIR audio or the RIRS_NOISES root)"),
        ({"dataset": "folder", "data_folder": speech, "rir_folder": str(corpus / "rir")},
         'noise_folders: no noise folders given (set --noise_folders="{noise: <folder>, music: <folder>}")'),
        ({"dataset": "voxceleb", "data_folder": speech, "rir_folder": str(corpus / "rir")},
         "musan_folder: no MUSAN folder given (set --musan_folder= to the MUSAN root)"),
        ({"verification_speakers": 6, "data_folder": str(corpus)},
         f"data preparation (synthetic data): data folder {speech} has 6 speaker(s) (spk0001, spk0002, spk0003, "
         "...); 6 are held out for verification and at least 1 must be left for training, so at least 7 are "
         "needed: add speaker folders (<speaker>/<session>/<utt>.wav) or lower verification_speakers"),
        ({"dataset": "folder", "data_folder": speech, "noise_folders": noise, "rir_folder": str(corpus / "rir"),
          "verification_speakers": 2},
         "verification_speakers: the evaluation babble mixes 3 to 7 verification speakers, so at least 3 are "
         "needed in all, got 2"),
    ]


@pytest.mark.parametrize("case", range(5))
def test_data_preparation_problem_one_line(prepared, tmp_path, case):
    overrides, expected = prep_cases(prepared)[case]
    corpus_before = tree(prepared / "corpus")
    line = refused("stage1.yaml", tmp_path, **dict(overrides, output_base=str(tmp_path / "results")))
    assert line == f"error: {expected}"
    assert files(tmp_path / "results") == {}
    assert tree(prepared / "corpus") == corpus_before


def test_single_rir_names_rir_folder_then_a_second_one_is_enough(prepared, tmp_path):
    speech = speech_copy(prepared, tmp_path)
    rirs = tmp_path / "my rirs"
    rirs.mkdir()
    first, second = sorted((prepared / "corpus" / "rir").glob("*.wav"))[:2]
    shutil.copy(first, rirs / first.name)
    options = dict(folder_dataset(prepared, speech), rir_folder=str(rirs))
    line = refused("stage1.yaml", tmp_path, **options)
    assert line == (f"error: rir_folder: {rirs} holds 1 usable audio file(s); at least 2 are "
                    "needed, one for training and one for evaluation (so that no evaluation condition was heard "
                    "in training): add audio files to it")
    shutil.copy(second, rirs / second.name)  # the remedy
    prepare(tiny_options(tmp_path, STAGE1, **options))
    prep = tmp_path / "results" / "default" / "prepared"
    assert {len(read_csv_rows(prep / name)) for name in ("rir_train.csv", "eval_rir.csv")} == {1}


def test_spaced_file_name_refused_at_preparation(prepared, tmp_path):
    speech = speech_copy(prepared, tmp_path)
    spaced = speech / "spk0002" / "sess1" / "\u00f1and\u00fa caf\u00e9 02.wav"  # ñandú café 02.wav
    (speech / "spk0002" / "sess1" / "utt00.wav").rename(spaced)
    line = refused("stage1.yaml", tmp_path, **folder_dataset(prepared, speech))
    assert line == (f"error: data preparation (folder data): 1 audio file(s) in {speech} have whitespace in "
                    "their name or folder names, which a trial list (fields separated by spaces) cannot hold: "
                    f"{spaced}. Rename them without spaces (e.g. replace each space with '_')")
    assert files(tmp_path / "results") == {}


def test_synthetic_never_written_into_a_folder_of_speech(prepared, tmp_path):
    speech = speech_copy(prepared, tmp_path)
    before = tree(speech)
    line = refused("stage1.yaml", tmp_path, data_folder=str(speech))  # dataset: synthetic (the default)
    assert line == (f"error: data_folder: {speech} holds files that are not a generated synthetic corpus "
                    "(e.g. spk0001) and is never written to: pass --dataset=folder (with --noise_folders and "
                    "--rir_folder) to train on them, or give an empty --data_folder for the synthetic corpus")
    assert tree(speech) == before and files(tmp_path / "results") == {}
    # the remedy: --dataset=folder prepares the user's speech, still without writing into it
    options = tiny_options(tmp_path, STAGE1, **folder_dataset(prepared, speech))
    prepare(options)
    assert str(speech) in (tmp_path / "results" / "default" / "prepared" / "train.csv").read_text()
    assert tree(speech) == before


# ------------------------------------------------- the real command line ----
def test_cli_exit_status_and_one_line_with_two_loader_workers(prepared, tmp_path):
    speech = speech_copy(prepared, tmp_path)
    options = tiny_options(tmp_path, STAGE1, **folder_dataset(prepared, speech))
    prepare(options)
    bad = speech / "spk0001" / "sess1" / "utt00.wav"
    bad.write_bytes(b"XXXX" + bad.read_bytes()[4:])  # same size: the preparation is reused, loading fails
    args = tiny_command("stage1.yaml", tmp_path, num_workers=2, **folder_dataset(prepared, speech))
    proc = subprocess.run([sys.executable, "train.py", *args], cwd=REPO, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 1
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert errors == [f"error: {bad}: unreadable audio (Error opening '{bad}': Format not recognised.)"]
    assert "Traceback" not in proc.stderr + proc.stdout
