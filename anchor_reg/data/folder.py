"""Folders of speakers (``<data_folder>/<speaker>/<session>/<utt>.{wav,flac}``) to training CSVs and trials.

Training row IDs are ``<spk>--<session>--<utt>_<start>_<stop>`` (samples, stop exclusive); verification row
IDs are the path below the data folder without extension, or ``spk/session/utt@<start>-<stop>`` for a segment.
"""

import logging
import os
import random
from collections import Counter, defaultdict
from dataclasses import dataclass
from pathlib import Path

from anchor_reg.data.audio import AUDIO_EXTENSIONS, validate_audio_files
from anchor_reg.data.cache import csv_row, input_fingerprint, reuse_outputs, save_options, write_csv
from anchor_reg.data.trials import (
    check_trial_names, generate_trials, map_trial_list, read_trial_list, trial_utterances, write_trials,
)

logger = logging.getLogger(__name__)

OUTPUT_FILES = {"train": "train.csv", "dev": "dev.csv", "enrol": "enrol.csv", "test": "test.csv",
                "trials": "trials.txt"}
OPTS_FILE = "prepare_opts.json"
BAD_FILES_REPORT = "bad_files.txt"


@dataclass(frozen=True)
class Utterance:
    """One audio file: ``relpath`` below its data folder, absolute ``path``, speaker and session names."""

    relpath: str
    path: str
    spk_id: str
    session: str

    @property
    def id(self):
        """The relative path without extension, e.g. ``spk/session/utt``."""
        return os.path.splitext(self.relpath)[0]


def prepare_folder_of_speakers(data_folders, save_folder, *, seg_dur=3.0, dev_ratio=0.05,
                               verification_speakers=0.2, trial_list=None, trials_per_speaker=50, seed=1234,
                               sample_rate=16000, skip_bad_files=False, min_utt_dur=1.0, test_seg_dur=None):
    """Writes train/dev/enrol/test CSVs, trials.txt (and bad_files.txt) of one folder of speakers or a list of
    them (corpora), atomically, the options record last (a rerun with the same options reuses them); returns
    output name -> path.

    ``verification_speakers`` (a number per corpus, a fraction of each, or ids) are held out for
    ``trials_per_speaker`` target and nontarget trials per speaker, unless a ``trial_list`` names the trials.
    Bad audio raises one error listing every bad file, or (``skip_bad_files``) is left out and listed.
    """
    folders = folder_list(data_folders)
    corpora = [scan_speaker_folder(folder) for folder in folders]
    if isinstance(verification_speakers, (list, tuple, set)):
        verification_speakers = sorted(verification_speakers)
    options = {
        "data_folders": [os.path.abspath(f) for f in folders],
        "seg_dur": seg_dur,
        "dev_ratio": dev_ratio,
        "verification_speakers": None if trial_list else verification_speakers,
        "trial_list": os.path.abspath(trial_list) if trial_list else None,
        "trials_per_speaker": None if trial_list else trials_per_speaker,
        "seed": seed,
        "sample_rate": sample_rate,
        "skip_bad_files": skip_bad_files,
        "min_utt_dur": min_utt_dur,
        "test_seg_dur": None if trial_list else test_seg_dur,
        "fingerprint": input_fingerprint((utt.path for corpus in corpora for utt in corpus), trial_list),
    }
    outputs = prepared_outputs(save_folder, skip_bad_files)
    if reuse_outputs(outputs["opts"], options, outputs.values()):
        return outputs
    by_id = _index_utterances(folders, corpora)
    if trial_list:
        trials = read_trial_list(trial_list)
        trial_utts = trial_utterances(trials, by_id, trial_list)
        held_out = {utt.spk_id for utt in trial_utts}
        used = trial_utts + [utt for corpus in corpora for utt in corpus if utt.spk_id not in held_out]
    else:
        held_out = select_verification_speakers(corpora, verification_speakers, seed, folders)
        used = [utt for corpus in corpora for utt in corpus]
    durations = validate_audio_files([utt.path for utt in used], sample_rate, skip_bad_files,
                                     outputs.get("bad_files"))
    n_samples = {path: round(duration * sample_rate) for path, duration in durations.items()}
    train_rows = [row for corpus in corpora for utt in corpus if utt.spk_id not in held_out and utt.path in n_samples
                  for row in training_rows(utt, n_samples[utt.path], seg_dur, min_utt_dur, sample_rate)]
    train_rows, dev_rows = split_dev(train_rows, dev_ratio, seed)
    if trial_list:
        trials, enrol_rows, test_rows = map_trial_list(trials, by_id, n_samples, sample_rate, trial_list)
    else:
        trials, enrol_rows, test_rows = generated_trials(corpora, held_out, n_samples, test_seg_dur, min_utt_dur,
                                                         trials_per_speaker, seed, sample_rate)
    write_prepared(outputs, options, train_rows, dev_rows, enrol_rows, test_rows, trials)
    return outputs


def prepared_outputs(save_folder, skip_bad_files):
    """Output name -> path of a speech preparation in ``save_folder`` (``opts``: the options record)."""
    save_folder = Path(save_folder)
    outputs = {key: str(save_folder / name) for key, name in OUTPUT_FILES.items()}
    if skip_bad_files:
        outputs["bad_files"] = str(save_folder / BAD_FILES_REPORT)
    outputs["opts"] = str(save_folder / OPTS_FILE)
    return outputs


def write_prepared(outputs, options, train_rows, dev_rows, enrol_rows, test_rows, trials):
    """Writes the four CSVs and the trial list, then the options record (it marks the preparation complete)."""
    for name, rows in (("train", train_rows), ("dev", dev_rows), ("enrol", enrol_rows), ("test", test_rows)):
        write_csv(rows, outputs[name])
    write_trials(trials, outputs["trials"])
    save_options(outputs["opts"], options)
    logger.info("Prepared %s: %d train rows (%d labels), %d dev, %d enrol and %d test rows, %d trials",
                Path(outputs["opts"]).parent, len(train_rows), len({row["spk_id"] for row in train_rows}),
                len(dev_rows), len(enrol_rows), len(test_rows), len(trials))


def scan_speaker_folder(folder, extensions=AUDIO_EXTENSIONS):
    """The ``<folder>/<speaker>/<session>/<utt><ext>`` files, sorted, as :class:`Utterance`."""
    folder = os.path.abspath(folder)
    if not os.path.isdir(folder):
        raise FileNotFoundError(f"Data folder not found: {folder}")
    utterances = []
    for spk_id in _subfolders(folder):
        for session in _subfolders(os.path.join(folder, spk_id)):
            for entry in sorted(os.scandir(os.path.join(folder, spk_id, session)), key=lambda e: e.name):
                if not _is_dir(entry) and entry.name.lower().endswith(extensions):
                    utterances.append(Utterance(f"{spk_id}/{session}/{entry.name}", entry.path, spk_id, session))
    if not utterances:
        raise FileNotFoundError(f"No {'/'.join(extensions)} files found as {folder}/<speaker>/<session>/<utt>")
    check_trial_names([utt.path for utt in utterances], folder)
    return utterances


def segment_bounds(n_samples, seg_samples, min_samples):
    """Consecutive ``[start, stop)`` segments of ``seg_samples``; a shorter last one is kept if ``min_samples`` long.

    >>> segment_bounds(10, 4, 2), segment_bounds(9, 4, 2), segment_bounds(3, 4, 2)
    ([(0, 4), (4, 8), (8, 10)], [(0, 4), (4, 8)], [(0, 3)])
    """
    bounds = [(start, min(start + seg_samples, n_samples)) for start in range(0, n_samples, seg_samples)]
    return [(a, b) for a, b in bounds if b - a == seg_samples or b - a >= min_samples]


def training_rows(utterance, n_samples, seg_dur, min_dur, sample_rate):
    """Rows of the ``seg_dur`` segments of an utterance, IDs ``<id with / as -->_<start>_<stop>`` (samples)."""
    prefix = utterance.id.replace("/", "--")
    bounds = segment_bounds(n_samples, round(seg_dur * sample_rate), round(min_dur * sample_rate))
    return [csv_row(f"{prefix}_{a}_{b}", utterance, a, b, sample_rate) for a, b in bounds]


def verification_rows(utterance, n_samples, seg_dur, min_dur, sample_rate):
    """Rows of a verification utterance: the whole of it or (``seg_dur``) its segments.

    Each row also has a ``trial_name`` (not written to CSV), its name in trials.txt.
    """
    if seg_dur is None:
        return [dict(csv_row(utterance.id, utterance, 0, n_samples, sample_rate), trial_name=utterance.relpath)]
    bounds = segment_bounds(n_samples, round(seg_dur * sample_rate), round(min_dur * sample_rate))
    rows = []
    for a, b in bounds or [(0, n_samples)]:
        segment_id = f"{utterance.id}@{a}-{b}"
        rows.append(dict(csv_row(segment_id, utterance, a, b, sample_rate), trial_name=segment_id))
    return rows


def split_dev(rows, dev_ratio, seed):
    """(train rows, dev rows), in input order: about ``dev_ratio`` of the rows held out as whole utterances
    (single rows for a speaker with one utterance); every speaker keeps at least one unit."""
    units = defaultdict(list)  # (spk_id, wav) -> row indices
    for index, row in enumerate(rows):
        units[(row["spk_id"], row["wav"])].append(index)
    files_per_spk = Counter(spk_id for spk_id, _ in units)
    split_units = []
    for (spk_id, _), indices in units.items():
        if files_per_spk[spk_id] > 1:
            split_units.append((spk_id, indices))
        else:
            split_units.extend((spk_id, [i]) for i in indices)
    units_left = Counter(spk_id for spk_id, _ in split_units)
    target, dev_indices = round(dev_ratio * len(rows)), set()
    random.Random(f"{seed}-dev").shuffle(split_units)
    for spk_id, indices in split_units:
        if len(dev_indices) >= target:
            break
        if units_left[spk_id] > 1:
            units_left[spk_id] -= 1
            dev_indices.update(indices)
    return ([r for i, r in enumerate(rows) if i not in dev_indices],
            [r for i, r in enumerate(rows) if i in dev_indices])


def select_verification_speakers(corpora, verification_speakers, seed, data_folders):
    """The held-out speaker ids: a number per corpus, a fraction of each corpus, or explicit ids."""
    speakers = [sorted({utt.spk_id for utt in corpus}) for corpus in corpora]
    if isinstance(verification_speakers, (list, tuple, set)):
        chosen = set(verification_speakers)
        unknown = chosen - {spk for corpus in speakers for spk in corpus}
        if unknown:
            raise ValueError(f"Unknown verification speakers: {sorted(unknown)}")
        per_corpus = [[spk for spk in corpus if spk in chosen] for corpus in speakers]
    else:
        per_corpus = []
        for index, corpus in enumerate(speakers):
            count = _speaker_count(verification_speakers, len(corpus))
            if len(corpus) <= count:
                raise ValueError(
                    f"data folder {data_folders[index]} has {len(corpus)} speaker(s) "
                    f"({', '.join(corpus[:3])}{', ...' if len(corpus) > 3 else ''}); "
                    f"{count} are held out for verification and at least 1 must be left "
                    f"for training, so at least {count + 1} are needed: add speaker "
                    "folders (<speaker>/<session>/<utt>.wav) or lower verification_speakers"
                )
            per_corpus.append(random.Random(f"{seed}-verification-{index}").sample(corpus, count))
    for index, chosen in enumerate(per_corpus):
        if len(chosen) == 1 or len(chosen) >= len(speakers[index]):
            raise ValueError(
                f"data folder {data_folders[index]} has {len(speakers[index])} speakers; {len(chosen)} held out "
                "for verification is not possible (need at least 2, and at least 1 left for training)"
            )
    return {spk for chosen in per_corpus for spk in chosen}


def generated_trials(corpora, held_out, n_samples, test_seg_dur, min_utt_dur, trials_per_speaker, seed,
                     sample_rate):
    """(trials, enrol rows, test rows) of the held-out speakers' readable files, generated corpus by corpus."""
    trials, by_name = [], {}
    for index, corpus in enumerate(corpora):
        rows = [row for utt in corpus if utt.spk_id in held_out and utt.path in n_samples
                for row in verification_rows(utt, n_samples[utt.path], test_seg_dur, min_utt_dur, sample_rate)]
        trials += generate_trials(rows, trials_per_speaker, random.Random(f"{seed}-trials-{index}"))
        by_name.update((row["trial_name"], row) for row in rows)
    enrol = {by_name[e]["ID"]: by_name[e] for _, e, _ in trials}
    test = {by_name[t]["ID"]: by_name[t] for _, _, t in trials}
    return trials, list(enrol.values()), list(test.values())


def folder_list(data_folders):
    """A single folder or a list of folders, as a list."""
    return [data_folders] if isinstance(data_folders, (str, os.PathLike)) else list(data_folders)


def _index_utterances(data_folders, corpora):
    """``{utterance id: Utterance}``; raises on ids or speakers shared by two corpora."""
    by_id, corpus_of_spk = {}, {}
    for folder, corpus in zip(data_folders, corpora):
        for utt in corpus:
            if utt.id in by_id:
                raise ValueError(f"Utterance {utt.id} exists twice: {by_id[utt.id].path} and {utt.path}")
            by_id[utt.id] = utt
            owner = corpus_of_spk.setdefault(utt.spk_id, folder)
            if owner != folder:
                raise ValueError(f"Speaker id {utt.spk_id} appears in both {owner} and {folder}; "
                                 "speaker ids must be unique across data folders")
    return by_id


def _speaker_count(verification_speakers, n_speakers):
    """How many of a corpus' ``n_speakers`` a number or a fraction means."""
    if isinstance(verification_speakers, bool) or not isinstance(verification_speakers, (int, float)):
        raise TypeError("verification_speakers must be an int, a fraction or a list of speaker ids, "
                        f"got {verification_speakers!r}")
    if isinstance(verification_speakers, int):
        return verification_speakers
    if not 0 < verification_speakers < 1:
        raise ValueError(f"verification_speakers fraction must be in (0, 1), got {verification_speakers}")
    return max(2, round(verification_speakers * n_speakers))


def _subfolders(folder):
    """Sorted names of the sub-folders of ``folder``."""
    return sorted(e.name for e in os.scandir(folder) if _is_dir(e))


def _is_dir(entry):
    """Whether a ``os.scandir`` entry is a folder (following links); a looping link is an error naming it."""
    try:
        return entry.is_dir()
    except OSError as err:
        raise ValueError(
            f"{entry.path} cannot be followed ({err.strerror}): a symbolic link that points "
            "to itself or into a loop; remove it or point it at a real folder or audio file"
        ) from None
