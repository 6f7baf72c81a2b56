"""Trial lists, VoxCeleb-format ``<1|0> <enrol> <test>`` lines: reading, writing, generating and mapping; an
entry is a file below the data folder, a segment ``<file>@<start>-<stop>`` (samples) or a CSV row ID."""

import logging
import os
from collections import defaultdict

from anchor_reg.atomic import write_text_atomic
from anchor_reg.data.audio import MAX_LISTED_PROBLEMS, listing
from anchor_reg.data.cache import csv_row

logger = logging.getLogger(__name__)

TRIAL_EXTENSIONS = (".wav", ".flac", ".m4a")


def generate_trials(rows, trials_per_speaker, rng):
    """Balanced ``(label, enrol, test)`` trials among one corpus' verification rows (``spk_id``, ``trial_name``):
    per speaker, up to ``trials_per_speaker`` distinct target and as many nontarget pairs, drawn with ``rng``."""
    by_spk = defaultdict(list)
    for row in rows:
        by_spk[row["spk_id"]].append(row["trial_name"])
    speaker_of = {row["trial_name"]: row["spk_id"] for row in rows}
    names = sorted(speaker_of)
    trials, without_targets = [], []
    for spk_id in sorted(by_spk):
        own = by_spk[spk_id]
        count = min(trials_per_speaker, len(own) * (len(own) - 1) // 2, len(own) * (len(names) - len(own)))
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
        trials += [(1, e, t) for e, t in sorted(targets)] + [(0, e, t) for e, t in sorted(nontargets)]
    if without_targets:
        logger.warning(
            "%d verification speaker(s) have fewer than 2 verification rows and get no trials as enrolment "
            "(a smaller test_seg_dur cuts their utterances into more segments): %s",
            len(without_targets), ", ".join(without_targets[:MAX_LISTED_PROBLEMS]),
        )
    return trials


def read_trial_list(path):
    """``[(label, enrol, test), ...]`` of a VoxCeleb-format trial list."""
    trials = []
    with open(path, encoding="utf-8") as trial_file:
        for line_number, line in enumerate(trial_file, 1):
            fields = line.split()
            if not fields:
                continue
            if len(fields) != 3 or fields[0] not in ("0", "1"):
                raise ValueError(f"{path}:{line_number}: expected '<1|0> <enrol> <test>', got {line.strip()!r}")
            trials.append((int(fields[0]), fields[1], fields[2]))
    if not trials:
        raise ValueError(f"Trial list {path} is empty")
    return trials


def map_trial_list(trials, by_id, n_samples, sample_rate, trial_list):
    """(kept trials, enrol rows, test rows) for the entries of a trial list; trials naming a file not in
    ``n_samples`` (path -> length of the readable files) are dropped."""
    rows, bad_spans = {}, []
    for entry in sorted({name for _, e, t in trials for name in (e, t)}):
        utt_id, span = parse_trial_entry(entry)
        utt = by_id[utt_id]
        if utt.path not in n_samples:
            continue
        start, stop = span or (0, n_samples[utt.path])
        if not 0 <= start < stop <= n_samples[utt.path]:
            bad_spans.append(f"{entry} (file has {n_samples[utt.path]} samples)")
        row_id = utt_id if span is None else strip_trial_extension(entry)
        rows[entry] = csv_row(row_id, utt, start, stop, sample_rate)
    if bad_spans:
        raise ValueError(f"{len(bad_spans)} segment(s) of {trial_list} lie outside their file:\n" + listing(bad_spans))
    kept = [trial for trial in trials if trial[1] in rows and trial[2] in rows]
    if len(kept) < len(trials):
        logger.warning("Dropped %d of %d trials of %s that use skipped bad files",
                       len(trials) - len(kept), len(trials), trial_list)
    enrol, test = {}, {}
    for _, e, t in kept:
        enrol.setdefault(rows[e]["ID"], rows[e])
        test.setdefault(rows[t]["ID"], rows[t])
    return kept, list(enrol.values()), list(test.values())


def parse_trial_entry(entry):
    """``(utterance id, (start, stop) or None)`` of a trial list entry, e.g. ``spk/s1/utt@0-64000``."""
    name = strip_trial_extension(entry)
    if "@" not in name:
        return name, None
    utt_id, span = name.rsplit("@", 1)
    try:
        start, stop = (int(x) for x in span.split("-"))
    except ValueError:
        raise ValueError(
            f"Bad segment in trial entry {entry!r}: expected '<relpath-without-ext>@<start>-<stop>' in samples"
        ) from None
    return utt_id, (start, stop)


def strip_trial_extension(entry):
    """The entry without a trailing .wav/.flac/.m4a: its row ID."""
    stem, ext = os.path.splitext(entry)
    return stem if ext.lower() in TRIAL_EXTENSIONS else entry


def check_trial_names(paths, data_folder):
    """Refuses audio files whose path below ``data_folder`` holds whitespace (trial fields are space-separated)."""
    spaced = [path for path in paths if any(c.isspace() for c in os.path.relpath(path, data_folder))]
    if spaced:
        raise ValueError(
            f"{len(spaced)} audio file(s) in {data_folder} have whitespace in their name or folder "
            f"names, which a trial list (fields separated by spaces) cannot hold: "
            f"{'; '.join(spaced[:5])}{'; ...' if len(spaced) > 5 else ''}. "
            "Rename them without spaces (e.g. replace each space with '_')"
        )


def write_trials(trials, path):
    """Writes ``(label, enrol, test)`` trials as ``label enrol test`` lines, atomically."""
    write_text_atomic(path, "".join(f"{label} {enrol} {test}\n" for label, enrol, test in trials))


def trial_utterances(trials, by_id, trial_list):
    """The utterances a trial list names; raises listing the files missing from ``by_id``."""
    names = sorted({name for _, e, t in trials for name in (e, t)})
    ids = sorted({parse_trial_entry(name)[0] for name in names})
    missing = [i for i in ids if i not in by_id]
    if missing:
        raise FileNotFoundError(
            f"{len(missing)} file(s) named in {trial_list} are not in the data folders:\n" + listing(missing)
        )
    return [by_id[i] for i in ids]
