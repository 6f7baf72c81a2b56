"""Trial lists: VoxCeleb-format ``<1|0> <enrol> <test>`` lines.

Reading and writing them, naming their entries (``spk/session/utt.wav`` or a
segment ``spk/session/utt@<start>-<stop>``), generating balanced trials among
verification rows, and mapping a given list onto the files of the data
folders. Consumers strip a trailing ``.wav``/``.flac``/``.m4a`` from an entry
to get its CSV row ID (:func:`strip_trial_extension`).
"""

import logging
import os
from collections import defaultdict

from anchor_reg.atomic import write_text_atomic
from anchor_reg.data.audio import MAX_LISTED_PROBLEMS, listing
from anchor_reg.data.cache import csv_row

logger = logging.getLogger(__name__)

TRIAL_EXTENSIONS = (".wav", ".flac", ".m4a")


def generate_trials(rows, trials_per_speaker, rng):
    """Balanced trials among one corpus' verification rows.

    For each speaker with at least two rows: ``n`` distinct target pairs of
    its rows and ``n`` distinct nontarget pairs (its row, another speaker's
    row), ``n = min(trials_per_speaker, possible target pairs, possible
    nontarget pairs)``.

    Arguments
    ---------
    rows : list of dict
        Verification rows with ``spk_id`` and ``trial_name``.
    trials_per_speaker : int
        Target (and nontarget) trials per speaker at most.
    rng : random.Random
        Source of randomness.

    Returns
    -------
    list of (int, str, str)
        ``(label, enrol trial_name, test trial_name)``.
    """
    by_spk = defaultdict(list)
    for row in rows:
        by_spk[row["spk_id"]].append(row["trial_name"])
    speaker_of = {row["trial_name"]: row["spk_id"] for row in rows}
    names = sorted(speaker_of)
    trials, without_targets = [], []
    for spk_id in sorted(by_spk):
        own = by_spk[spk_id]
        n_target_pairs = len(own) * (len(own) - 1) // 2
        n_nontarget_pairs = len(own) * (len(names) - len(own))
        count = min(trials_per_speaker, n_target_pairs, n_nontarget_pairs)
        if count == 0:
            without_targets.append(spk_id)
            continue
        targets, nontargets = set(), set()
        while len(targets) < count:
            enrol, test = sorted((rng.choice(own), rng.choice(own)))
            if enrol != test:
                targets.add((enrol, test))
        while len(nontargets) < count:
            test = rng.choice(names)
            if speaker_of[test] != spk_id:
                nontargets.add((rng.choice(own), test))
        trials += [(1, e, t) for e, t in sorted(targets)]
        trials += [(0, e, t) for e, t in sorted(nontargets)]
    if without_targets:
        logger.warning(
            "%d verification speaker(s) have fewer than 2 verification rows "
            "and get no trials as enrolment (a smaller test_seg_dur cuts "
            "their utterances into more segments): %s",
            len(without_targets),
            ", ".join(without_targets[:MAX_LISTED_PROBLEMS]),
        )
    return trials


def read_trial_list(path):
    """Reads a VoxCeleb-format trial list: ``[(label, enrol, test), ...]``."""
    trials = []
    with open(path, encoding="utf-8") as trial_file:
        for line_number, line in enumerate(trial_file, 1):
            fields = line.split()
            if not fields:
                continue
            if len(fields) != 3 or fields[0] not in ("0", "1"):
                raise ValueError(
                    f"{path}:{line_number}: expected '<1|0> <enrol> <test>', "
                    f"got {line.strip()!r}"
                )
            trials.append((int(fields[0]), fields[1], fields[2]))
    if not trials:
        raise ValueError(f"Trial list {path} is empty")
    return trials


def map_trial_list(trials, by_id, n_samples, sample_rate, trial_list):
    """Builds enrol/test rows for every entry of a trial list.

    Arguments
    ---------
    trials : list of (int, str, str)
        The trials, as from :func:`read_trial_list`.
    by_id : dict
        ``{utterance id: Utterance}``.
    n_samples : dict
        ``{path: number of samples}`` of the good files; trials that name
        another (a skipped bad file) are dropped with a warning.
    sample_rate : int
        For the duration column.
    trial_list : str or Path
        Named in error messages.

    Returns
    -------
    (list, list, list)
        The kept trials, enrol rows and test rows.
    """
    rows, bad_spans, dropped = {}, [], 0
    for entry in sorted({name for _, e, t in trials for name in (e, t)}):
        utt_id, span = parse_trial_entry(entry)
        utt = by_id[utt_id]
        if utt.path not in n_samples:
            continue
        start, stop = span or (0, n_samples[utt.path])
        if not 0 <= start < stop <= n_samples[utt.path]:
            bad_spans.append(
                f"{entry} (file has {n_samples[utt.path]} samples)"
            )
        row_id = utt_id if span is None else strip_trial_extension(entry)
        rows[entry] = csv_row(row_id, utt, start, stop, sample_rate)
    if bad_spans:
        raise ValueError(
            f"{len(bad_spans)} segment(s) of {trial_list} lie outside their "
            "file:\n" + listing(bad_spans)
        )
    kept, enrol, test = [], {}, {}
    for trial in trials:
        _, e, t = trial
        if e in rows and t in rows:
            kept.append(trial)
            enrol.setdefault(rows[e]["ID"], rows[e])
            test.setdefault(rows[t]["ID"], rows[t])
        else:
            dropped += 1
    if dropped:
        logger.warning(
            "Dropped %d of %d trials of %s that use skipped bad files",
            dropped,
            len(trials),
            trial_list,
        )
    return kept, list(enrol.values()), list(test.values())


def parse_trial_entry(entry):
    """``(utterance id, (start, stop) or None)`` of a trial list entry.

    Example
    -------
    >>> parse_trial_entry("id1/vid/00001.wav")
    ('id1/vid/00001', None)
    >>> parse_trial_entry("spk/s1/utt@0-64000")
    ('spk/s1/utt', (0, 64000))
    """
    name = strip_trial_extension(entry)
    if "@" not in name:
        return name, None
    utt_id, span = name.rsplit("@", 1)
    try:
        start, stop = (int(x) for x in span.split("-"))
    except ValueError:
        raise ValueError(
            f"Bad segment in trial entry {entry!r}: expected "
            "'<relpath-without-ext>@<start>-<stop>' in samples"
        ) from None
    return utt_id, (start, stop)


def strip_trial_extension(entry):
    """Removes a trailing .wav/.flac/.m4a (the row ID of a trial entry)."""
    stem, ext = os.path.splitext(entry)
    return stem if ext.lower() in TRIAL_EXTENSIONS else entry


def check_trial_names(paths, data_folder):
    """Refuses audio files whose path below ``data_folder`` holds whitespace.

    A trial list names each utterance by that path and separates its fields
    with spaces, so such a name cannot be written to (or read back from) it.

    Arguments
    ---------
    paths : list of str
        Absolute paths of the data folder's audio files.
    data_folder : str
        The folder they were found in.
    """
    spaced = [path for path in paths if any(c.isspace() for c in os.path.relpath(path, data_folder))]
    if spaced:
        raise ValueError(
            f"{len(spaced)} audio file(s) in {data_folder} have whitespace in their name or folder "
            f"names, which a trial list (fields separated by spaces) cannot hold: "
            f"{'; '.join(spaced[:5])}{'; ...' if len(spaced) > 5 else ''}. "
            "Rename them without spaces (e.g. replace each space with '_')"
        )


def write_trials(trials, path):
    """Writes ``(label, enrol, test)`` trials as ``label enrol test`` lines."""
    lines = [f"{label} {enrol} {test}\n" for label, enrol, test in trials]
    write_text_atomic(path, "".join(lines))


def trial_utterances(trials, by_id, trial_list):
    """The utterances a trial list names; raises listing missing files."""
    names = sorted({name for _, e, t in trials for name in (e, t)})
    ids = sorted({parse_trial_entry(name)[0] for name in names})
    missing = [i for i in ids if i not in by_id]
    if missing:
        raise FileNotFoundError(
            f"{len(missing)} file(s) named in {trial_list} are not in the data "
            "folders:\n" + listing(missing)
        )
    return [by_id[i] for i in ids]
