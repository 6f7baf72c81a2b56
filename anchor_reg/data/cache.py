"""Preparation outputs: the CSV rows and writer, and the cache that lets a rerun reuse them.

CSV columns are SpeechBrain's VoxCeleb recipe's (:data:`CSV_FIELDS`). A
preparation records its options and an input fingerprint (file paths and
sizes, plus the content of files such as a trial list) in an options JSON
written last; :func:`options_unchanged` is True only when a rerun's options
and inputs are the same and every output exists.
"""

import csv
import io
import json
import os
from pathlib import Path

from anchor_reg.atomic import write_text_atomic
from anchor_reg.digest import content_digest

CSV_FIELDS = ["ID", "duration", "wav", "start", "stop", "spk_id"]


def csv_row(row_id, utterance, start, stop, sample_rate):
    """One CSV row (a dict keyed by CSV_FIELDS) for samples [start, stop)."""
    return {
        "ID": row_id,
        "duration": round((stop - start) / sample_rate, 6),
        "wav": utterance.path,
        "start": start,
        "stop": stop,
        "spk_id": utterance.spk_id,
    }


def write_csv(rows, path, fields=CSV_FIELDS):
    """Writes rows (dicts with ``fields`` keys; extra keys ignored) atomically."""
    buffer = io.StringIO()
    writer = csv.DictWriter(
        buffer, fieldnames=fields, extrasaction="ignore", lineterminator="\n"
    )
    writer.writeheader()
    writer.writerows(rows)
    write_text_atomic(path, buffer.getvalue())


def input_fingerprint(paths_and_sizes, *files):
    """Hash of a file list (``(path, size)`` pairs) and of the contents of
    extra ``files`` (e.g. a trial list; None entries are ignored)."""
    listing = (f"{path}\t{size}\n" for path, size in paths_and_sizes)
    return content_digest([*listing, *(Path(path) for path in files if path is not None)])


def file_size(path):
    """Size in bytes, or -1 for a path that cannot be read (e.g. a dangling
    link; such files are reported when validated)."""
    try:
        return os.path.getsize(path)
    except OSError:
        return -1


def options_unchanged(opts_path, options, outputs):
    """True if ``opts_path`` holds exactly ``options`` and all outputs exist."""
    try:
        saved = json.loads(Path(opts_path).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    same = saved == json.loads(json.dumps(options))
    return same and all(os.path.exists(path) for path in outputs)


def save_options(opts_path, options):
    """Writes the options JSON (call it last, once all outputs are written)."""
    write_text_atomic(opts_path, json.dumps(options, indent=2, sort_keys=True))
