"""Audio file checks shared by every data preparation and data pipeline.

A bad file (missing, empty, truncated, corrupt, NaN/Inf samples, wrong sample
rate, several channels) is reported with its path and its problem, instead of
a bare libsndfile traceback in the middle of training.

Example
-------
>>> import numpy as np, soundfile as sf
>>> path = getfixture("tmp_path") / "tone.wav"
>>> sf.write(path, 0.1 * np.sin(np.arange(8000, dtype="float32")), 16000)
>>> inspect_audio(path)
0.5
>>> read_audio_checked(path, start=0, stop=100).shape
torch.Size([100])
"""

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
    """Checks one audio file completely and returns its duration.

    The whole file is decoded once (catching corrupt data and NaN/Inf).

    Arguments
    ---------
    path : str or Path
        The audio file.
    sample_rate : int
        The sample rate the file must have.

    Returns
    -------
    float
        Duration in seconds.

    Raises
    ------
    AudioError
        If the file is missing, empty, truncated, unreadable, has non-finite
        samples, another sample rate or more than one channel.
    """
    duration, problem = _check_file(path, sample_rate)
    if problem is not None:
        raise AudioError(f"{path}: {problem}", {str(path): problem})
    return duration


def read_audio_checked(path, sample_rate=16000, start=None, stop=None):
    """Reads a mono file (or samples ``[start, stop)``) for a data pipeline.

    Arguments
    ---------
    path : str or Path
        The audio file.
    sample_rate : int
        The sample rate the file must have.
    start, stop : int, optional
        First and one-past-last sample to read; default: the whole file.

    Returns
    -------
    torch.Tensor
        The samples, float32, shape ``(T,)``.

    Raises
    ------
    AudioError
        Naming the file, for the same problems as :func:`inspect_audio`
        (NaN/Inf only within the samples read), or a segment past the end.
    """
    problem = _missing_or_empty(path) or _wav_truncation(path)
    if problem is None:
        try:
            with sf.SoundFile(str(path)) as audio:
                problem = _format_problem(audio, sample_rate)
                if problem is None:
                    first = 0 if start is None else int(start)
                    last = audio.frames if stop is None else int(stop)
                    if not 0 <= first < last <= audio.frames:
                        problem = (
                            f"segment [{first}, {last}) outside the file's "
                            f"{audio.frames} samples"
                        )
                    else:
                        audio.seek(first)
                        samples = audio.read(last - first, dtype="float32")
                        problem = _samples_problem(samples, last - first)
        except (sf.SoundFileError, RuntimeError) as error:
            problem = f"unreadable audio ({error})"
    if problem is not None:
        raise AudioError(f"{path}: {problem}", {str(path): problem})
    return torch.from_numpy(samples)


def validate_audio_files(
    paths, sample_rate=16000, skip_bad_files=False, report_path=None, mono=True
):
    """Checks many files, collecting every problem before deciding.

    Arguments
    ---------
    paths : iterable of str or Path
        The audio files.
    sample_rate : int
        The sample rate every file must have.
    skip_bad_files : bool
        If False, any bad file raises one AudioError listing all of them.
        If True, bad files are logged, left out of the result and written to
        ``report_path``.
    report_path : str or Path, optional
        Where to write the report in skip mode (one ``path<TAB>problem`` line
        per bad file; written, possibly empty, whenever given).
    mono : bool
        If False, files with several channels are accepted.

    Returns
    -------
    dict
        ``{path (str): duration in seconds}`` for the good files, in input order.
    """
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
        logger.warning(
            "Skipping %d bad audio file(s)%s:\n%s",
            len(problems),
            f" (report: {report_path})" if report_path else "",
            bad_files,
        )
    if skip_bad_files and report_path is not None:
        lines = "".join(f"{p}\t{why}\n" for p, why in problems.items())
        write_text_atomic(report_path, lines)
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


def _check_file(path, sample_rate, mono=True):
    """Returns ``(duration, None)`` for a good file, else ``(None, problem)``."""
    problem = _missing_or_empty(path) or _wav_truncation(path)
    if problem is not None:
        return None, problem
    try:
        with sf.SoundFile(str(path)) as audio:
            problem = _format_problem(audio, sample_rate, mono)
            if problem is None:
                samples = audio.read(dtype="float32")
                problem = _samples_problem(samples, audio.frames) or _silence_problem(samples)
            duration = audio.frames / audio.samplerate
    except (sf.SoundFileError, RuntimeError) as error:
        return None, f"unreadable audio ({error})"
    return (None, problem) if problem else (duration, None)


def _missing_or_empty(path):
    """The problem with a path that is not a non-empty file, else None."""
    if not os.path.isfile(path):
        return "file not found"
    if os.path.getsize(path) == 0:
        return "empty file (0 bytes)"
    return None


def _format_problem(audio, sample_rate, mono=True):
    """The problem with an open file's format, else None."""
    if audio.frames == 0:
        return "no audio samples (0 frames)"
    if audio.samplerate != sample_rate:
        return f"sample rate {audio.samplerate} Hz, expected {sample_rate} Hz"
    if mono and audio.channels != 1:
        return f"{audio.channels} channels, expected mono"
    return None


def _samples_problem(samples, expected_frames):
    """The problem with decoded samples, else None."""
    if len(samples) < expected_frames:
        return (
            f"truncated: {len(samples)} of {expected_frames} samples readable"
        )
    if not np.isfinite(samples).all():
        return "NaN or Inf samples"
    return None


def _silence_problem(samples):
    """For a whole file without a sample above 16-bit resolution, the problem."""
    if np.abs(samples).max() < SILENCE_PEAK:
        return "digitally silent (no sample reaches 1/32768)"
    return None


def _wav_truncation(path):
    """For a RIFF/WAVE file whose data chunk is cut short, the problem.

    libsndfile silently reads a truncated WAV (the header announces more
    samples than the file holds), so this walks the RIFF chunks.
    """
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
                    return (
                        f"truncated: header announces {chunk_size} data bytes, "
                        f"file holds {available}"
                    )
                return None
            wav_file.seek(chunk_size + chunk_size % 2, os.SEEK_CUR)
