"""The one audio reader and file checks of every preparation, data pipeline and evaluation: a bad file is
reported with its path and problem (missing, corrupt, NaN/Inf, silent, wrong rate, several channels)."""

import logging
import os
import struct

import numpy as np
import soundfile as sf
import torch

from anchor_reg.atomic import atomic_path, write_text_atomic
from anchor_reg.errors import AudioError

logger = logging.getLogger(__name__)

MAX_LISTED_PROBLEMS = 20
AUDIO_EXTENSIONS = (".wav", ".flac")  # audio files a data folder may hold
SILENCE_PEAK = 2.0**-15  # a file whose peak is below one 16-bit step holds no signal


def inspect_audio(path, sample_rate=16000):
    """Decodes a whole file once and returns its duration in seconds; raises :class:`AudioError` naming it."""
    duration, problem = _check_file(path, sample_rate)
    _raise_if(path, problem)
    return duration


def read_audio_checked(path, sample_rate=16000, start=None, stop=None):
    """Samples ``[start, stop)`` (default: all) of a mono file at ``sample_rate``, float32 ``(T,)``; AudioError
    naming the file for :func:`inspect_audio`'s problems and a segment past the end."""
    samples, problem = _read(path, sample_rate, start, stop)
    _raise_if(path, problem)
    return torch.from_numpy(samples)


def validate_audio_files(paths, sample_rate=16000, skip_bad_files=False, report_path=None, mono=True):
    """``{path (str): duration in seconds}`` of the good files, in input order; one AudioError listing the bad
    ones, or (``skip_bad_files``) ``path<TAB>problem`` lines in ``report_path``."""
    durations, problems = {}, {}
    for path in paths:
        duration, problem = _check_file(path, sample_rate, mono)
        if problem is None:
            durations[str(path)] = duration
        else:
            problems[str(path)] = problem
    bad_files = listing([f"{path}: {why}" for path, why in problems.items()])
    if problems and not skip_bad_files:
        first = "{}: {}".format(*next(iter(problems.items())))
        if len(problems) == 1:  # one line, naming the file
            message = f"{first} (fix or remove the file, or pass --skip_bad_files=True to leave it out)"
        else:
            message = (
                f"{len(problems)} bad audio file(s), the first {first} (fix or remove them, or pass "
                f"--skip_bad_files=True to leave them out); all of them:\n{bad_files}"
            )
        raise AudioError(message, problems)
    if problems:
        logger.warning("Skipping %d bad audio file(s)%s:\n%s", len(problems),
                       f" (report: {report_path})" if report_path else "", bad_files)
    if skip_bad_files and report_path is not None:
        write_text_atomic(report_path, "".join(f"{p}\t{why}\n" for p, why in problems.items()))
    return durations


def write_audio_atomic(path, samples, sample_rate):
    """Writes float samples ``(T,)`` as a 16-bit wav file, atomically."""
    with atomic_path(path) as tmp:
        sf.write(tmp, np.clip(samples, -1.0, 1.0), sample_rate, subtype="PCM_16", format="WAV")


def listing(items):
    """Indented lines, one per item, cut after MAX_LISTED_PROBLEMS with a count."""
    lines = [f"  {item}" for item in items[:MAX_LISTED_PROBLEMS]]
    if len(items) > MAX_LISTED_PROBLEMS:
        lines.append(f"  ... and {len(items) - MAX_LISTED_PROBLEMS} more")
    return "\n".join(lines)


def _raise_if(path, problem):
    """Raises the :class:`AudioError` of a file's problem, if any."""
    if problem is not None:
        raise AudioError(f"{path}: {problem}", {str(path): problem})


def _check_file(path, sample_rate, mono=True):
    """``(duration, None)`` for a good whole file, else ``(None, problem)``."""
    samples, problem = _read(path, sample_rate, mono=mono)
    if problem is None and np.abs(samples).max() < SILENCE_PEAK:
        problem = "digitally silent (no sample reaches 1/32768)"
    return (None, problem) if problem else (len(samples) / sample_rate, None)


def _read(path, sample_rate, start=None, stop=None, mono=True):
    """``(samples, None)`` of ``[start, stop)`` of a file (``(T,)``, or ``(T, C)`` when not ``mono``), else
    ``(None, problem)``."""
    if not os.path.isfile(path):
        return None, "file not found"
    if os.path.getsize(path) == 0:
        return None, "empty file (0 bytes)"
    problem = _wav_truncation(path)
    if problem:
        return None, problem
    try:
        with sf.SoundFile(str(path)) as audio:
            first, last = 0 if start is None else int(start), audio.frames if stop is None else int(stop)
            if audio.frames == 0:
                return None, "no audio samples (0 frames)"
            if audio.samplerate != sample_rate:
                return None, f"sample rate {audio.samplerate} Hz, expected {sample_rate} Hz"
            if mono and audio.channels != 1:
                return None, f"{audio.channels} channels, expected mono"
            if not 0 <= first < last <= audio.frames:
                return None, f"segment [{first}, {last}) outside the file's {audio.frames} samples"
            if first:
                audio.seek(first)
            samples = audio.read(last - first, dtype="float32")
    except (sf.SoundFileError, RuntimeError) as error:
        return None, f"unreadable audio ({error})"
    if len(samples) < last - first:
        return None, f"truncated: {len(samples)} of {last - first} samples readable"
    if not np.isfinite(samples).all():
        return None, "NaN or Inf samples"
    return samples, None


def _wav_truncation(path):
    """For a RIFF/WAVE file whose data chunk is cut short (libsndfile reads it silently), the problem."""
    with open(path, "rb") as wav_file:
        if wav_file.read(12)[8:] != b"WAVE":
            return None
        file_size = os.fstat(wav_file.fileno()).st_size
        while True:
            header = wav_file.read(8)
            if len(header) < 8:
                return None
            chunk_id, chunk_size = struct.unpack("<4sI", header)
            if chunk_id == b"data":
                # 0 and 0xFFFFFFFF mark a size left unset by a streaming writer.
                available = file_size - wav_file.tell()
                if chunk_size not in (0, 0xFFFFFFFF) and chunk_size > available:
                    return f"truncated: header announces {chunk_size} data bytes, file holds {available}"
                return None
            wav_file.seek(chunk_size + chunk_size % 2, os.SEEK_CUR)
