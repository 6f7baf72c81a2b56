"""Preparation of folders of speakers: training segments, a dev split, held-out
verification speakers and a trial list.

Input: one or more corpora laid out like VoxCeleb's ``wav/`` folder::

    <data_folder>/<speaker>/<session>/<utt>.{wav,flac}

Outputs, in ``save_folder`` (all written atomically)::

    train.csv, dev.csv   training speakers' utterances cut into fixed segments
    enrol.csv, test.csv  verification utterances used as enrolment / test
    trials.txt           VoxCeleb-style trials ``<1|0> <enrol> <test>``
    bad_files.txt        (skip_bad_files=True only) ``path<TAB>problem`` lines
    prepare_opts.json    options + input fingerprint, written LAST

The CSV columns are SpeechBrain's VoxCeleb recipe's: ``ID,duration,wav,start,
stop,spk_id`` (start/stop in samples, stop exclusive, duration in seconds of
the row's segment, wav an absolute path).

* Training row IDs: ``<spk>--<session>--<utt>_<start>_<stop>``.
* Verification row IDs: the utterance's path relative to its data folder
  without extension (``spk/session/utt``); in trials.txt it appears with its
  extension (``spk/session/utt.flac``). A verification *segment* (see
  ``test_seg_dur``) has the ID ``spk/session/utt@<start>-<stop>`` (samples), used
  as is (no extension) in trials.txt. Consumers strip a trailing
  ``.wav``/``.flac``/``.m4a`` to get the row ID.

A rerun with the same options and the same input files (paths and sizes, and
the trial list's content) reuses the outputs; anything else redoes the work.
"""

import logging
import os
import random
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

from anchor_reg.data.audio import AUDIO_EXTENSIONS, validate_audio_files
from anchor_reg.data.cache import csv_row, file_size, input_fingerprint, options_unchanged, save_options, write_csv
from anchor_reg.data.trials import (
    check_trial_names,
    generate_trials,
    map_trial_list,
    read_trial_list,
    trial_utterances,
    write_trials,
)

logger = logging.getLogger(__name__)

OUTPUT_FILES = {
    "train": "train.csv",
    "dev": "dev.csv",
    "enrol": "enrol.csv",
    "test": "test.csv",
    "trials": "trials.txt",
}
OPTS_FILE = "prepare_opts.json"
BAD_FILES_REPORT = "bad_files.txt"


@dataclass(frozen=True)
class Utterance:
    """One audio file of a folder of speakers.

    Arguments
    ---------
    relpath : str
        ``<speaker>/<session>/<file>``, relative to the data folder.
    path : str
        Absolute path.
    spk_id, session : str
        The speaker and session folder names.
    size : int
        File size in bytes (-1 if it cannot be read), for the fingerprint.
    """

    relpath: str
    path: str
    spk_id: str
    session: str
    size: int

    @property
    def id(self):
        """The relative path without extension, e.g. ``spk/session/utt``."""
        return os.path.splitext(self.relpath)[0]


def prepare_folder_of_speakers(
    data_folders,
    save_folder,
    *,
    seg_dur=3.0,
    dev_ratio=0.05,
    verification_speakers=0.2,
    trial_list=None,
    trials_per_speaker=50,
    seed=1234,
    sample_rate=16000,
    skip_bad_files=False,
    min_utt_dur=1.0,
    test_seg_dur=None,
):
    """Prepares train/dev/enrol/test CSVs and trials from folders of speakers.

    Arguments
    ---------
    data_folders : str, Path or list
        One data folder, or a list of them; each one is a "corpus" and
        generated trials never mix corpora. Speaker ids and utterance paths
        must be unique across corpora.
    save_folder : str or Path
        Where the outputs are written.
    seg_dur : float
        Training segment length in seconds. Each training utterance is cut
        into consecutive ``seg_dur`` segments; the remainder (or a whole
        utterance shorter than ``seg_dur``) becomes one shorter last row if it
        lasts at least ``min_utt_dur``, and is dropped otherwise.
    dev_ratio : float
        Fraction of the training rows held out as dev.csv (for validation
        accuracy). The held-out units are whole utterances, or segments for
        speakers that have a single utterance; every training speaker keeps at
        least one train.csv row.
    verification_speakers : int, float or list of str
        Speakers held out from train/dev for verification: a number per
        corpus, a fraction of each corpus' speakers (at least 2), or explicit
        speaker ids. Ignored when ``trial_list`` is given.
    trial_list : str or Path, optional
        A VoxCeleb-format trial list with paths relative to the data folders.
        Its speakers are the verification speakers; every entry must map to a
        file (or a ``@start-stop`` segment of one), else an error lists the
        missing ones. If None, balanced trials are generated per corpus.
    trials_per_speaker : int
        Generated trials: up to this many target trials per verification
        speaker (distinct pairs of its rows) and as many nontarget trials
        (its rows against other speakers' rows of the same corpus).
        Deterministic given ``seed``.
    seed : int
        Seed of the speaker selection, dev split and trial generation.
    sample_rate : int
        Sample rate every file must have.
    skip_bad_files : bool
        If False, bad audio files raise an error listing them all; if True
        they are left out and listed in ``bad_files.txt``.
    min_utt_dur : float
        Shortest training row in seconds (see ``seg_dur``); also the shortest
        remainder kept as a verification segment.
    test_seg_dur : float, optional
        If given, generated-trial verification utterances are cut into
        segments of this length (IDs ``<relpath-without-ext>@<start>-<stop>``),
        so that speakers with one long utterance get target trials.
        Verification utterances are never dropped for being short.

    Returns
    -------
    dict
        Output paths: train, dev, enrol, test, trials, opts (and bad_files
        when ``skip_bad_files``).
    """
    folders = folder_list(data_folders)
    corpora = [scan_speaker_folder(folder) for folder in folders]
    return prepare_speaker_corpora(
        folders,
        corpora,
        save_folder,
        seg_dur=seg_dur,
        dev_ratio=dev_ratio,
        verification_speakers=verification_speakers,
        trial_list=trial_list,
        trials_per_speaker=trials_per_speaker,
        seed=seed,
        sample_rate=sample_rate,
        skip_bad_files=skip_bad_files,
        min_utt_dur=min_utt_dur,
        test_seg_dur=test_seg_dur,
    )


def prepare_speaker_corpora(
    data_folders,
    corpora,
    save_folder,
    *,
    seg_dur,
    dev_ratio,
    verification_speakers,
    trial_list,
    trials_per_speaker,
    seed,
    sample_rate,
    skip_bad_files,
    min_utt_dur,
    test_seg_dur,
):
    """The preparation behind :func:`prepare_folder_of_speakers` for corpora
    already scanned (one list of :class:`Utterance` per data folder); see
    there for the arguments."""
    save_folder = Path(save_folder)
    outputs = prepared_outputs(save_folder, skip_bad_files)
    opts_path = Path(outputs["opts"])
    if isinstance(verification_speakers, (list, tuple, set)):
        verification_speakers = sorted(verification_speakers)
    options = {
        "data_folders": [os.path.abspath(f) for f in data_folders],
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
        "fingerprint": input_fingerprint(
            ((utt.path, utt.size) for corpus in corpora for utt in corpus),
            trial_list,
        ),
    }
    if options_unchanged(opts_path, options, outputs.values()):
        logger.info(
            "Reusing the data preparation in %s (same options)", save_folder
        )
        return outputs
    opts_path.unlink(missing_ok=True)  # until every output is rewritten
    by_id = _index_utterances(data_folders, corpora)

    if trial_list:
        trials = read_trial_list(trial_list)
        trial_utts = trial_utterances(trials, by_id, trial_list)
        held_out = {utt.spk_id for utt in trial_utts}
        used = trial_utts + [
            utt for c in corpora for utt in c if utt.spk_id not in held_out
        ]
    else:
        held_out = select_verification_speakers(
            corpora, verification_speakers, seed, data_folders
        )
        used = [utt for corpus in corpora for utt in corpus]
    report = outputs.get("bad_files")
    durations = validate_audio_files(
        [utt.path for utt in used], sample_rate, skip_bad_files, report
    )
    n_samples = {p: round(d * sample_rate) for p, d in durations.items()}

    train_rows = [
        row
        for corpus in corpora
        for utt in corpus
        if utt.spk_id not in held_out and utt.path in n_samples
        for row in training_rows(
            utt, n_samples[utt.path], seg_dur, min_utt_dur, sample_rate
        )
    ]
    train_rows, dev_rows = split_dev(train_rows, dev_ratio, seed)
    if trial_list:
        trials, enrol_rows, test_rows = map_trial_list(
            trials, by_id, n_samples, sample_rate, trial_list
        )
    else:
        trials, enrol_rows, test_rows = generated_trials(
            corpora,
            held_out,
            n_samples,
            test_seg_dur,
            min_utt_dur,
            trials_per_speaker,
            seed,
            sample_rate,
        )

    write_prepared(outputs, options, train_rows, dev_rows, enrol_rows, test_rows, trials)
    logger.info(
        "Prepared %s: %d train rows (%d speakers), %d dev rows, "
        "%d enrol and %d test rows, %d trials (%d verification speakers)",
        save_folder,
        len(train_rows),
        len({row["spk_id"] for row in train_rows}),
        len(dev_rows),
        len(enrol_rows),
        len(test_rows),
        len(trials),
        len(held_out),
    )
    return outputs


def prepared_outputs(save_folder, skip_bad_files):
    """The paths a preparation writes in ``save_folder``: :data:`OUTPUT_FILES`, the bad-files report
    (``skip_bad_files``) and the options file (``opts``), by name."""
    save_folder = Path(save_folder)
    outputs = {key: str(save_folder / name) for key, name in OUTPUT_FILES.items()}
    if skip_bad_files:
        outputs["bad_files"] = str(save_folder / BAD_FILES_REPORT)
    outputs["opts"] = str(save_folder / OPTS_FILE)
    return outputs


def write_prepared(outputs, options, train_rows, dev_rows, enrol_rows, test_rows, trials):
    """Writes the four CSVs and the trial list to :func:`prepared_outputs`' paths, then the options (last:
    their file marks the preparation complete)."""
    for name, rows in (("train", train_rows), ("dev", dev_rows), ("enrol", enrol_rows), ("test", test_rows)):
        write_csv(rows, outputs[name])
    write_trials(trials, outputs["trials"])
    save_options(outputs["opts"], options)


def scan_speaker_folder(folder, extensions=AUDIO_EXTENSIONS):
    """Lists ``<folder>/<speaker>/<session>/<utt><ext>`` files, sorted.

    Arguments
    ---------
    folder : str or Path
        The data folder.
    extensions : tuple of str
        Lower-case file extensions to keep.

    Returns
    -------
    list of Utterance
    """
    folder = os.path.abspath(folder)
    if not os.path.isdir(folder):
        raise FileNotFoundError(f"Data folder not found: {folder}")
    utterances = []
    for spk_id in _subfolders(folder):
        for session in _subfolders(os.path.join(folder, spk_id)):
            session_dir = os.path.join(folder, spk_id, session)
            for entry in sorted(os.scandir(session_dir), key=lambda e: e.name):
                if _is_dir(entry) or not entry.name.lower().endswith(
                    extensions
                ):
                    continue
                utterances.append(
                    Utterance(
                        f"{spk_id}/{session}/{entry.name}",
                        entry.path,
                        spk_id,
                        session,
                        file_size(entry.path),
                    )
                )
    if not utterances:
        raise FileNotFoundError(
            f"No {'/'.join(extensions)} files found as "
            f"{folder}/<speaker>/<session>/<utt>"
        )
    check_trial_names([utt.path for utt in utterances], folder)
    return utterances


def segment_bounds(n_samples, seg_samples, min_samples):
    """Cuts ``n_samples`` into consecutive ``[start, stop)`` segments.

    All segments have ``seg_samples`` samples except the last one, which holds
    the remainder and is kept only if it has at least ``min_samples``.

    Example
    -------
    >>> segment_bounds(10, 4, 2)
    [(0, 4), (4, 8), (8, 10)]
    >>> segment_bounds(9, 4, 2)
    [(0, 4), (4, 8)]
    >>> segment_bounds(3, 4, 2)
    [(0, 3)]
    """
    starts = range(0, n_samples, seg_samples)
    bounds = [(s, min(s + seg_samples, n_samples)) for s in starts]
    return [
        (a, b)
        for a, b in bounds
        if b - a == seg_samples or b - a >= min_samples
    ]


def training_rows(utterance, n_samples, seg_dur, min_dur, sample_rate):
    """Rows of fixed ``seg_dur`` segments of a training utterance.

    IDs are ``<spk>--<session>--<utt>_<start>_<stop>`` (samples).
    """
    stem = os.path.splitext(os.path.basename(utterance.relpath))[0]
    prefix = f"{utterance.spk_id}--{utterance.session}--{stem}"
    bounds = segment_bounds(
        n_samples, round(seg_dur * sample_rate), round(min_dur * sample_rate)
    )
    return [
        csv_row(f"{prefix}_{a}_{b}", utterance, a, b, sample_rate)
        for a, b in bounds
    ]


def verification_rows(utterance, n_samples, seg_dur, min_dur, sample_rate):
    """Rows of a verification utterance: the whole of it, or (``seg_dur``
    given) its segments with IDs ``<relpath-without-ext>@<start>-<stop>``.

    Each row also has a ``trial_name`` (not written to CSV): how trials.txt
    names it (the relative path with extension, or the segment ID).
    """
    if seg_dur is None:
        row = csv_row(utterance.id, utterance, 0, n_samples, sample_rate)
        return [dict(row, trial_name=utterance.relpath)]
    bounds = segment_bounds(
        n_samples, round(seg_dur * sample_rate), round(min_dur * sample_rate)
    ) or [(0, n_samples)]
    rows = []
    for a, b in bounds:
        segment_id = f"{utterance.id}@{a}-{b}"
        row = csv_row(segment_id, utterance, a, b, sample_rate)
        rows.append(dict(row, trial_name=segment_id))
    return rows


def split_dev(rows, dev_ratio, seed):
    """Holds out about ``dev_ratio`` of the training rows as dev rows.

    Held-out units are utterances (all rows of one ``wav``), or single rows
    for speakers with one utterance; each speaker keeps at least one unit.

    Returns
    -------
    (list, list)
        Train rows and dev rows, each in input order.
    """
    units = defaultdict(list)  # (spk_id, wav) -> row indices
    for index, row in enumerate(rows):
        units[(row["spk_id"], row["wav"])].append(index)
    files_per_spk = defaultdict(int)
    for spk_id, _ in units:
        files_per_spk[spk_id] += 1
    split_units = []
    for (spk_id, _), indices in units.items():
        if files_per_spk[spk_id] > 1:
            split_units.append((spk_id, indices))
        else:
            split_units.extend((spk_id, [i]) for i in indices)
    units_left = defaultdict(int)
    for spk_id, _ in split_units:
        units_left[spk_id] += 1

    target = round(dev_ratio * len(rows))
    dev_indices = set()
    random.Random(f"{seed}-dev").shuffle(split_units)
    for spk_id, indices in split_units:
        if len(dev_indices) >= target:
            break
        if units_left[spk_id] > 1:
            units_left[spk_id] -= 1
            dev_indices.update(indices)
    train = [r for i, r in enumerate(rows) if i not in dev_indices]
    dev = [r for i, r in enumerate(rows) if i in dev_indices]
    return train, dev


def select_verification_speakers(corpora, verification_speakers, seed, data_folders=None):
    """Chooses the held-out speakers (a set of speaker ids).

    Arguments
    ---------
    corpora : list of list of Utterance
        One list per corpus.
    verification_speakers : int, float or list of str
        A number per corpus, a fraction of each corpus (at least 2 speakers),
        or explicit speaker ids.
    seed : int
        Seed of the choice.
    data_folders : list, optional
        The corpora's folders, named in errors.
    """
    speakers = [sorted({utt.spk_id for utt in corpus}) for corpus in corpora]
    names = [str(f) for f in data_folders] if data_folders else [f"corpus {i}" for i in range(len(corpora))]
    if isinstance(verification_speakers, (list, tuple, set)):
        chosen = set(verification_speakers)
        unknown = chosen - {spk for corpus in speakers for spk in corpus}
        if unknown:
            raise ValueError(
                f"Unknown verification speakers: {sorted(unknown)}"
            )
        per_corpus = [[s for s in corpus if s in chosen] for corpus in speakers]
    else:
        per_corpus = []
        for index, corpus in enumerate(speakers):
            count = _speaker_count(verification_speakers, len(corpus))
            if len(corpus) <= count:
                raise ValueError(
                    f"data folder {names[index]} has {len(corpus)} speaker(s) "
                    f"({', '.join(corpus[:3])}{', ...' if len(corpus) > 3 else ''}); "
                    f"{count} are held out for verification and at least 1 must be left "
                    f"for training, so at least {count + 1} are needed: add speaker "
                    "folders (<speaker>/<session>/<utt>.wav) or lower verification_speakers"
                )
            rng = random.Random(f"{seed}-verification-{index}")
            per_corpus.append(rng.sample(corpus, count))
    for index, chosen in enumerate(per_corpus):
        if len(chosen) == 1 or len(chosen) >= len(speakers[index]):
            raise ValueError(
                f"data folder {names[index]} has {len(speakers[index])} speakers; "
                f"{len(chosen)} held out for verification is not possible "
                "(need at least 2, and at least 1 left for training)"
            )
    return {spk for chosen in per_corpus for spk in chosen}


def generated_trials(
    corpora,
    held_out,
    n_samples,
    test_seg_dur,
    min_utt_dur,
    trials_per_speaker,
    seed,
    sample_rate,
):
    """Verification rows and generated trials, corpus by corpus."""
    trials, by_name = [], {}
    for index, corpus in enumerate(corpora):
        rows = [
            row
            for utt in corpus
            if utt.spk_id in held_out and utt.path in n_samples
            for row in verification_rows(
                utt, n_samples[utt.path], test_seg_dur, min_utt_dur, sample_rate
            )
        ]
        rng = random.Random(f"{seed}-trials-{index}")
        trials += generate_trials(rows, trials_per_speaker, rng)
        for row in rows:
            by_name[row["trial_name"]] = row
    enrol = {by_name[e]["ID"]: by_name[e] for _, e, _ in trials}
    test = {by_name[t]["ID"]: by_name[t] for _, _, t in trials}
    return trials, list(enrol.values()), list(test.values())


def _index_utterances(data_folders, corpora):
    """``{utterance id: Utterance}``; raises on ids or speakers shared by
    two corpora."""
    by_id, corpus_of_spk = {}, {}
    for folder, corpus in zip(data_folders, corpora):
        for utt in corpus:
            if utt.id in by_id:
                raise ValueError(
                    f"Utterance {utt.id} exists twice: {by_id[utt.id].path} "
                    f"and {utt.path}"
                )
            by_id[utt.id] = utt
            owner = corpus_of_spk.setdefault(utt.spk_id, folder)
            if owner != folder:
                raise ValueError(
                    f"Speaker id {utt.spk_id} appears in both {owner} and "
                    f"{folder}; speaker ids must be unique across data folders"
                )
    return by_id


def _speaker_count(verification_speakers, n_speakers):
    """How many speakers of a corpus a number or a fraction means."""
    if isinstance(verification_speakers, bool) or not isinstance(
        verification_speakers, (int, float)
    ):
        raise TypeError(
            "verification_speakers must be an int, a fraction or a list of "
            f"speaker ids, got {verification_speakers!r}"
        )
    if isinstance(verification_speakers, int):
        return verification_speakers
    if not 0 < verification_speakers < 1:
        raise ValueError(
            f"verification_speakers fraction must be in (0, 1), got "
            f"{verification_speakers}"
        )
    return max(2, round(verification_speakers * n_speakers))


def _subfolders(folder):
    """Sorted names of the sub-folders of ``folder``."""
    return sorted(e.name for e in os.scandir(folder) if _is_dir(e))


def _is_dir(entry):
    """Whether a ``os.scandir`` entry is a folder (following links); a link that loops is an error naming it."""
    try:
        return entry.is_dir()
    except OSError as err:
        raise ValueError(
            f"{entry.path} cannot be followed ({err.strerror}): a symbolic link that points "
            "to itself or into a loop; remove it or point it at a real folder or audio file"
        ) from None


def folder_list(data_folders):
    """A single folder or a list of folders, as a list."""
    if isinstance(data_folders, (str, os.PathLike)):
        return [data_folders]
    return list(data_folders)
