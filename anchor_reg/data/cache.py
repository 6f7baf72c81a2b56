"""Preparation outputs: CSV rows and writer, and the options record that lets a rerun reuse them."""

import csv
import io
import json
import logging
import os
from pathlib import Path

from anchor_reg.atomic import write_text_atomic
from anchor_reg.data.audio import read_audio_checked
from anchor_reg.digest import content_digest

logger = logging.getLogger(__name__)

CSV_FIELDS = ["ID", "duration", "wav", "start", "stop", "spk_id"]  # SpeechBrain's VoxCeleb recipe's columns


def csv_row(row_id, utterance, start, stop, sample_rate):
    """One CSV row (keyed by CSV_FIELDS) for samples [start, stop) of an :class:`Utterance`."""
    duration = round((stop - start) / sample_rate, 6)
    return {"ID": row_id, "duration": duration, "wav": utterance.path, "start": start, "stop": stop,
            "spk_id": utterance.spk_id}


def read_csv(path):
    """The rows of a CSV file, as dicts."""
    with open(path, newline="", encoding="utf-8") as stream:
        return list(csv.DictReader(stream))


def read_utterances(csv_path):
    """``{ID: {"wav", "start", "stop" (int samples), "spk_id"}}`` of a prepared CSV, in file order."""
    with open(csv_path, newline="", encoding="utf-8") as stream:
        reader = csv.DictReader(stream)
        missing = {"ID", "wav", "start", "stop", "spk_id"} - set(reader.fieldnames or [])
        if missing:
            raise ValueError(f"{csv_path} lacks the column(s) {sorted(missing)}.")
        return {row["ID"]: {"wav": row["wav"], "start": int(float(row["start"])), "stop": int(float(row["stop"])),
                            "spk_id": row["spk_id"]} for row in reader}


def read_segment(row, sample_rate):
    """Waveform (T,) of a :func:`read_utterances` row's [start, stop) segment, read as training reads it."""
    return read_audio_checked(row["wav"], sample_rate, row["start"], row["stop"])


def write_csv(rows, path, fields=CSV_FIELDS):
    """Writes rows (dicts with ``fields`` keys; other keys ignored) atomically."""
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=fields, extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    write_text_atomic(path, buffer.getvalue())


def input_fingerprint(paths, *files):
    """Digest of input file ``paths`` with their sizes, and of the contents of ``files`` (None skipped)."""
    listing = (f"{path}\t{file_size(path)}\n" for path in paths)
    return content_digest([*listing, *(Path(path) for path in files if path is not None)])


def file_size(path):
    """Size in bytes, or -1 for a path that cannot be read (reported when validated)."""
    try:
        return os.path.getsize(path)
    except OSError:
        return -1


def reuse_outputs(opts_path, options, outputs):
    """True when ``opts_path`` records exactly ``options`` and every output exists; otherwise deletes the
    record, which :func:`save_options` writes again once every output is rewritten."""
    try:
        saved = json.loads(Path(opts_path).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        saved = None
    if saved == json.loads(json.dumps(options)) and all(os.path.exists(path) for path in outputs):
        logger.info("Reusing the outputs recorded in %s (same options and inputs)", opts_path)
        return True
    Path(opts_path).unlink(missing_ok=True)
    return False


def save_options(opts_path, options):
    """Writes the options record (last, once every output is written)."""
    write_text_atomic(opts_path, json.dumps(options, indent=2, sort_keys=True))
