"""Preparation of unlabelled audio (``dataset: unlabelled``) and of replay rows (``replay_folders``).

Input: folders of audio files at any depth, no speaker structure. Each file is
cut into ``seg_dur`` segments (rows); a row's ``spk_id`` is its *source file*
(``<folder name>/<path without extension>``), so label-free contrastive
negatives never include rows cut from the same file, and the anchor store's
"speakers" are files.

Outputs, in ``save_folder`` (written atomically, reused when the options and
the input files are unchanged)::

    train.csv, dev.csv   rows of the data folders; dev holds about dev_ratio of the *files*
    enrol.csv, test.csv  rows of the verification folders (every speaker of them is a test speaker)
    trials.txt           trials generated per verification folder, as for ``dataset: folder``
    replay.csv           (:func:`prepare_replay`) every row of the replay folders

Verification folders are laid out as ``dataset: folder``'s data folders
(``<folder>/<speaker>/<session>/<utt>``): label-free training still needs a
labelled trial list to be evaluated.
"""
import logging
import os
import random
from pathlib import Path

from anchor_reg.data.audio import validate_audio_files
from anchor_reg.data.cache import csv_row, file_size, input_fingerprint, options_unchanged, save_options, write_csv
from anchor_reg.data.folder import (
    Utterance, generated_trials, prepared_outputs, scan_speaker_folder, segment_bounds, write_prepared,
)
from anchor_reg.data.noise import BABBLE_TALKERS, find_audio_files

logger = logging.getLogger(__name__)

REPLAY_OPTS_FILE = "replay_opts.json"
TRIALS_PER_SPEAKER = 50


def scan_unlabelled_folders(folders):
    """Every audio file under ``folders`` (any depth), as :class:`Utterance` whose speaker is the file.

    Returns
    -------
    list of Utterance
        ``spk_id`` = ``<folder name>/<path without extension>``, unique across folders.
    """
    utterances, owner = [], {}
    for folder in folders:
        folder = os.path.abspath(folder)
        if not os.path.isdir(folder):
            raise FileNotFoundError(f"data folder not found: {folder}")
        paths = find_audio_files(folder)
        if not paths:
            raise FileNotFoundError(f"no .wav/.flac files under {folder}")
        for path in paths:
            relpath = os.path.relpath(path, folder)
            source = f"{os.path.basename(folder)}/{os.path.splitext(relpath)[0]}"
            if source in owner:
                raise ValueError(f"{path} and {owner[source]} have the same name {source}: rename a folder")
            owner[source] = path
            utterances.append(Utterance(relpath, path, source, "", file_size(path)))
    return utterances


def file_rows(utterances, durations, seg_dur, min_dur, sample_rate):
    """Rows of ``seg_dur`` segments of each readable file (IDs ``<source with / as -->_<start>_<stop>``)."""
    rows = []
    for utt in utterances:
        if utt.path not in durations:  # skipped as bad audio
            continue
        n_samples = round(durations[utt.path] * sample_rate)
        prefix = utt.spk_id.replace("/", "--")
        bounds = segment_bounds(n_samples, round(seg_dur * sample_rate), round(min_dur * sample_rate))
        rows += [csv_row(f"{prefix}_{a}_{b}", utt, a, b, sample_rate) for a, b in bounds]
    return rows


def split_dev_by_file(rows, dev_ratio, seed):
    """(train rows, dev rows): about ``dev_ratio`` of the source files (at least one, never all) go to dev.

    Example
    -------
    >>> rows = [{"spk_id": f, "ID": f"{f}_{k}"} for f in "abcd" for k in range(2)]
    >>> train, dev = split_dev_by_file(rows, 0.25, 1)
    >>> len(dev), len({r["spk_id"] for r in dev} & {r["spk_id"] for r in train})
    (2, 0)
    """
    files = sorted({row["spk_id"] for row in rows})
    if len(files) < 2:
        raise ValueError(f"unlabelled data: {len(files)} usable audio file(s); the dev split needs at least 2")
    random.Random(f"{seed}-dev").shuffle(files)
    dev_files = set(files[:min(len(files) - 1, max(1, round(dev_ratio * len(files))))])
    return ([r for r in rows if r["spk_id"] not in dev_files], [r for r in rows if r["spk_id"] in dev_files])


def prepare_unlabelled(data_folders, verification_folders, save_folder, *, seg_dur=3.0, dev_ratio=0.1,
                       seed=1234, sample_rate=16000, skip_bad_files=False, min_utt_dur=1.0, test_seg_dur=None):
    """Prepares train/dev rows of unlabelled audio and trials of labelled verification folders.

    Arguments
    ---------
    data_folders : list of str
        Folders of audio at any depth (no speaker structure).
    verification_folders : list of str
        Folders of speakers (``<speaker>/<session>/<utt>``), each with at least 2 speakers; all of them
        are test speakers.
    save_folder : str or Path
        Where the outputs are written.
    seg_dur, min_utt_dur, test_seg_dur, sample_rate, skip_bad_files
        As :func:`anchor_reg.data.folder.prepare_folder_of_speakers`.
    dev_ratio : float
        Fraction of the source files held out as dev rows.
    seed : int
        Seed of the dev split and of the trials.

    Returns
    -------
    dict
        Output paths: train, dev, enrol, test, trials, opts (and bad_files with ``skip_bad_files``).
    """
    save_folder = Path(save_folder)
    outputs = prepared_outputs(save_folder, skip_bad_files)
    opts_path = Path(outputs["opts"])
    utterances = scan_unlabelled_folders(data_folders)
    corpora = [scan_speaker_folder(folder) for folder in verification_folders]
    options = {
        "dataset": "unlabelled",
        "data_folders": [os.path.abspath(f) for f in data_folders],
        "verification_folders": [os.path.abspath(f) for f in verification_folders],
        "seg_dur": seg_dur, "dev_ratio": dev_ratio, "seed": seed, "sample_rate": sample_rate,
        "skip_bad_files": skip_bad_files, "min_utt_dur": min_utt_dur, "test_seg_dur": test_seg_dur,
        "fingerprint": input_fingerprint((u.path, u.size) for u in utterances + [u for c in corpora for u in c]),
    }
    if options_unchanged(opts_path, options, outputs.values()):
        logger.info("Reusing the data preparation in %s (same options)", save_folder)
        return outputs
    opts_path.unlink(missing_ok=True)  # until every output is rewritten
    speakers = [sorted({u.spk_id for u in corpus}) for corpus in corpora]
    for folder, corpus_speakers in zip(verification_folders, speakers):
        if len(corpus_speakers) < 2:
            raise ValueError(f"verification_folders: {folder} has {len(corpus_speakers)} speaker(s), trials need 2")
    if sum(map(len, speakers)) < BABBLE_TALKERS[0]:
        raise ValueError(f"verification_folders: the evaluation babble mixes at least {BABBLE_TALKERS[0]} "
                         f"of their speakers, they have {sum(map(len, speakers))}")
    report = outputs.get("bad_files")
    verification = [u for corpus in corpora for u in corpus]
    durations = validate_audio_files([u.path for u in utterances + verification], sample_rate, skip_bad_files, report)
    rows = file_rows(utterances, durations, seg_dur, min_utt_dur, sample_rate)
    train_rows, dev_rows = split_dev_by_file(rows, dev_ratio, seed)
    n_samples = {path: round(d * sample_rate) for path, d in durations.items()}
    held_out = {spk for corpus_speakers in speakers for spk in corpus_speakers}
    trials, enrol_rows, test_rows = generated_trials(
        corpora, held_out, n_samples, test_seg_dur, min_utt_dur, TRIALS_PER_SPEAKER, seed, sample_rate
    )
    write_prepared(outputs, options, train_rows, dev_rows, enrol_rows, test_rows, trials)
    logger.info("Prepared %s: %d train rows (%d files), %d dev rows, %d trials (%d verification speakers)",
                save_folder, len(train_rows), len({r["spk_id"] for r in train_rows}), len(dev_rows), len(trials),
                len(held_out))
    return outputs


def prepare_replay(replay_folders, save_folder, *, seg_dur=3.0, sample_rate=16000, skip_bad_files=False,
                   min_utt_dur=1.0):
    """Writes ``<save_folder>/replay.csv``: every segment of the replay folders (row speaker = source file).

    Returns
    -------
    str
        The CSV's path.
    """
    save_folder = Path(save_folder)
    out, opts_path = save_folder / "replay.csv", save_folder / REPLAY_OPTS_FILE
    utterances = scan_unlabelled_folders(replay_folders)
    options = {
        "replay_folders": [os.path.abspath(f) for f in replay_folders], "seg_dur": seg_dur,
        "sample_rate": sample_rate, "skip_bad_files": skip_bad_files, "min_utt_dur": min_utt_dur,
        "fingerprint": input_fingerprint((u.path, u.size) for u in utterances),
    }
    if options_unchanged(opts_path, options, [out]):
        return str(out)
    opts_path.unlink(missing_ok=True)
    report = save_folder / "bad_replay_files.txt" if skip_bad_files else None
    durations = validate_audio_files([u.path for u in utterances], sample_rate, skip_bad_files, report)
    rows = file_rows(utterances, durations, seg_dur, min_utt_dur, sample_rate)
    if not rows:
        raise ValueError(f"replay_folders: no segment of at least {min_utt_dur} s in {', '.join(replay_folders)}")
    write_csv(rows, out)
    save_options(opts_path, options)
    logger.info("Prepared %s: %d replay rows from %d files", out, len(rows), len({r["spk_id"] for r in rows}))
    return str(out)
