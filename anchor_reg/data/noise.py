"""Noise, music, babble and RIR CSVs for speechbrain.augment AddNoise/AddReverb.

SpeechBrain 1.1.2 reads these CSVs with ``speechbrain.dataio.legacy.
ExtendedCSVDataset``: ``ID``, ``duration``, then *triplets*
``<name>,<name>_format,<name>_opts`` (any other column count is rejected), and
every triplet with an audio format is loaded as a whole file (``_opts`` such
as start/stop are ignored). Hence:

* columns ``ID,duration,wav,wav_format,wav_opts,noise_type,noise_type_format,
  noise_type_opts`` (``noise_type`` in noise/music/babble/rir, stored as a
  ``string`` triplet so the reader accepts it; AddNoise/AddReverb use the
  first triplet, ``wav``);
* files longer than ``seg_dur`` are cut into segments written as separate
  16-bit wav files (SpeechBrain's own ``augment.preparation`` does this by
  rewriting and deleting the source files, so it is not used here).

Each preparation writes ``<csv stem>_opts.json`` last and reuses its outputs
when rerun with the same options and input files. Use the CSVs as
``AddNoise(csv_file=".../noise.csv", snr_low=0, snr_high=15)`` and
``AddReverb(csv_file=".../rir.csv")``.
"""

import csv
import logging
import os
import random
from pathlib import Path

import numpy as np
import soundfile as sf

from anchor_reg.data.audio import (
    AUDIO_EXTENSIONS,
    read_audio_checked,
    validate_audio_files,
    write_audio_atomic,
)
from anchor_reg.data.cache import (
    file_size,
    input_fingerprint,
    options_unchanged,
    save_options,
    write_csv,
)
from anchor_reg.data.folder import segment_bounds

logger = logging.getLogger(__name__)

NOISE_FIELDS = [
    "ID",
    "duration",
    "wav",
    "wav_format",
    "wav_opts",
    "noise_type",
    "noise_type_format",
    "noise_type_opts",
]
NOISE_TYPES = ("noise", "music", "babble", "rir")
BABBLE_TALKERS = (3, 7)  # fewest and most talkers in one babble mixture


def prepare_noise_folder(folder, save_csv, noise_type, **options):
    """Writes a noise CSV for every .wav/.flac file under ``folder``.

    Arguments
    ---------
    folder : str or Path
        Searched recursively; also the root of the row IDs.
    save_csv : str or Path
        The CSV to write.
    noise_type : str
        One of NOISE_TYPES.
    **options
        Keyword arguments of :func:`prepare_noise_files` (``seg_dur=5.0``, ...).

    Returns
    -------
    str
        The CSV path.
    """
    files = find_audio_files(folder)
    if not files:
        raise FileNotFoundError(f"No .wav/.flac files under {folder}")
    return prepare_noise_files(folder, files, save_csv, noise_type, **options)


def prepare_noise_files(
    root,
    files,
    save_csv,
    noise_type,
    *,
    seg_dur=5.0,
    segment_folder=None,
    min_dur=1.0,
    sample_rate=16000,
    skip_bad_files=False,
    first_channel=False,
):
    """Validates audio ``files`` and writes their noise CSV.

    Row IDs are ``<noise_type>--<path relative to root without extension,
    "/" replaced by "--">``, plus ``_<start>_<stop>`` (samples) for segments.

    Arguments
    ---------
    root : str or Path
        The folder the IDs are relative to (files must lie under it).
    files : list of str
        The audio files.
    save_csv : str or Path
        The CSV to write.
    noise_type : str
        One of NOISE_TYPES, written in the noise_type column.
    seg_dur : float, optional
        Files longer than this (seconds) are cut into segments written to
        ``segment_folder``; a last remainder shorter than ``min_dur`` (and a
        file shorter than ``min_dur``) is dropped. None keeps files whole
        (required for RIRs).
    segment_folder : str or Path, optional
        Default: ``<save_csv without .csv>_segments``.
    min_dur : float
        See ``seg_dur``.
    sample_rate : int
        Sample rate every file must have.
    skip_bad_files : bool
        Leave bad files out (listed in ``<csv stem>_bad_files.txt``) instead
        of raising.
    first_channel : bool
        Accept multi-channel files, keeping their first channel (written as
        mono wav files to ``segment_folder``).

    Returns
    -------
    str
        The CSV path.
    """
    if noise_type not in NOISE_TYPES:
        raise ValueError(
            f"noise_type must be one of {NOISE_TYPES}, got {noise_type!r}"
        )
    if noise_type == "rir" and seg_dur is not None:
        raise ValueError("RIRs must not be cut into segments: use seg_dur=None")
    save_csv = Path(save_csv)
    stem = save_csv.with_suffix("")
    segment_folder = Path(segment_folder or f"{stem}_segments")
    opts_path = Path(f"{stem}_opts.json")
    options = {
        "root": os.path.abspath(root),
        "noise_type": noise_type,
        "seg_dur": seg_dur,
        "segment_folder": os.path.abspath(segment_folder),
        "min_dur": min_dur,
        "sample_rate": sample_rate,
        "skip_bad_files": skip_bad_files,
        "first_channel": first_channel,
        "fingerprint": input_fingerprint((p, file_size(p)) for p in files),
    }
    if options_unchanged(opts_path, options, [save_csv]):
        logger.info("Reusing %s (same options)", save_csv)
        return str(save_csv)
    opts_path.unlink(missing_ok=True)  # until every output is rewritten

    report = f"{stem}_bad_files.txt" if skip_bad_files else None
    durations = validate_audio_files(
        files, sample_rate, skip_bad_files, report, mono=not first_channel
    )
    rows = []
    for path, duration in durations.items():
        name = os.path.splitext(os.path.relpath(path, root))[0]
        name = f"{noise_type}--" + name.replace(os.sep, "--")
        n_samples = round(duration * sample_rate)
        bounds = [(0, n_samples)]
        if seg_dur is not None:
            seg = round(seg_dur * sample_rate)
            bounds = segment_bounds(
                n_samples, seg, round(min_dur * sample_rate)
            )
        rewrite = first_channel and sf.info(path).channels > 1
        if bounds == [(0, n_samples)] and not rewrite:
            rows.append(
                _noise_row(name, path, n_samples, sample_rate, noise_type)
            )
            continue
        samples = sf.read(path, dtype="float32", always_2d=True)[0][:, 0]
        for start, stop in bounds:
            whole = (start, stop) == (0, n_samples)
            part = name if whole else f"{name}_{start}_{stop}"
            part_path = segment_folder / f"{part}.wav"
            write_audio_atomic(part_path, samples[start:stop], sample_rate)
            rows.append(
                _noise_row(
                    part, part_path, stop - start, sample_rate, noise_type
                )
            )
    write_csv(rows, save_csv, NOISE_FIELDS)
    save_options(opts_path, options)
    logger.info("Wrote %d %s rows to %s", len(rows), noise_type, save_csv)
    return str(save_csv)


def prepare_musan(
    musan_folder,
    save_folder,
    *,
    seg_dur=5.0,
    n_babble=1000,
    babble_speakers=BABBLE_TALKERS,
    seed=1234,
    sample_rate=16000,
    skip_bad_files=False,
):
    """Writes ``noise.csv``, ``music.csv`` and ``babble.csv`` from MUSAN.

    ``musan/noise`` and ``musan/music`` are cut into ``seg_dur`` segments;
    ``babble.csv`` holds ``n_babble`` mixtures of ``babble_speakers`` (min,
    max) ``musan/speech`` files (see :func:`prepare_babble`).

    Returns
    -------
    dict
        ``{"noise": csv path, "music": ..., "babble": ...}``.
    """
    musan_folder, save_folder = Path(musan_folder), Path(save_folder)
    for sub in ("noise", "music", "speech"):
        if not (musan_folder / sub).is_dir():
            raise FileNotFoundError(
                f"{musan_folder / sub} not found: expected MUSAN's "
                "noise/, music/ and speech/ folders"
            )
    csvs = {
        noise_type: prepare_noise_folder(
            musan_folder / noise_type,
            save_folder / f"{noise_type}.csv",
            noise_type,
            seg_dur=seg_dur,
            sample_rate=sample_rate,
            skip_bad_files=skip_bad_files,
        )
        for noise_type in ("noise", "music")
    }
    csvs["babble"] = prepare_babble(
        find_audio_files(musan_folder / "speech"),
        save_folder,
        n_babble,
        speakers_per_mix=babble_speakers,
        seg_dur=seg_dur,
        seed=seed,
        sample_rate=sample_rate,
        skip_bad_files=skip_bad_files,
    )
    return csvs


def prepare_rirs_noises(
    rirs_folder, save_folder, *, sample_rate=16000, skip_bad_files=False
):
    """Writes ``rir.csv`` from RIRS_NOISES' simulated and real RIRs.

    Uses ``simulated_rirs/**/*.wav`` and the RIRs of
    ``real_rirs_isotropic_noises`` (those named in its ``rir_list`` when
    present, else its wav files without "noise" in their name); isotropic
    noises are left out. Multi-channel RIRs keep their first channel (written
    to ``<save_folder>/rir_segments``).

    Returns
    -------
    str
        The CSV path.
    """
    rirs_folder = Path(rirs_folder)
    files = sorted(
        str(p) for p in (rirs_folder / "simulated_rirs").rglob("*.wav")
    )
    files += _real_rirs(rirs_folder / "real_rirs_isotropic_noises")
    if not files:
        raise FileNotFoundError(
            f"No RIRs under {rirs_folder}: expected simulated_rirs/ and/or "
            "real_rirs_isotropic_noises/"
        )
    return prepare_noise_files(
        rirs_folder,
        files,
        Path(save_folder) / "rir.csv",
        "rir",
        seg_dur=None,
        sample_rate=sample_rate,
        skip_bad_files=skip_bad_files,
        first_channel=True,
    )


def prepare_babble(
    speech,
    save_folder,
    n_mixtures,
    speakers_per_mix=BABBLE_TALKERS,
    seg_dur=5.0,
    seed=1234,
    sample_rate=16000,
    skip_bad_files=False,
):
    """Mixes speech of several talkers into ``n_mixtures`` babble files.

    Each mixture sums ``seg_dur`` seconds (random offset, looped if shorter)
    of k talkers, k drawn uniformly in ``speakers_per_mix``, each scaled to
    the same RMS; the sum is peak-normalised to 0.9. Writes
    ``<save_folder>/babble.csv`` and ``<save_folder>/babble/babble-NNNNN.wav``.

    Arguments
    ---------
    speech : str, Path or list
        A speaker CSV (``wav,start,stop,spk_id`` columns, e.g. train.csv of
        the training speakers or test.csv of held-out speakers; talkers =
        spk_id), or audio files (each file one talker).
    save_folder : str or Path
        Where babble.csv and babble/ are written.
    n_mixtures : int
        Number of babble files.
    speakers_per_mix : (int, int)
        Fewest and most talkers in one mixture.
    seg_dur : float
        Length of each babble file in seconds.
    seed : int
        Seed of the choice of talkers, utterances and offsets.
    sample_rate : int
        Sample rate of the speech.
    skip_bad_files : bool
        For a file list: leave bad files out instead of raising.

    Returns
    -------
    str
        The CSV path.
    """
    save_folder = Path(save_folder)
    save_csv = save_folder / "babble.csv"
    from_csv = isinstance(speech, (str, os.PathLike))
    if from_csv:
        source = os.path.abspath(speech)
        fingerprint = input_fingerprint([], speech)
    else:
        speech = [str(path) for path in speech]
        source = f"{len(speech)} speech files"
        fingerprint = input_fingerprint((p, file_size(p)) for p in speech)
    options = {
        "speech": source,
        "n_mixtures": n_mixtures,
        "speakers_per_mix": list(speakers_per_mix),
        "seg_dur": seg_dur,
        "seed": seed,
        "sample_rate": sample_rate,
        "skip_bad_files": skip_bad_files,
        "fingerprint": fingerprint,
    }
    opts_path = save_folder / "babble_opts.json"
    if options_unchanged(opts_path, options, [save_csv]):
        logger.info("Reusing %s (same options)", save_csv)
        return str(save_csv)
    opts_path.unlink(missing_ok=True)  # until every output is rewritten

    talkers = _speech_by_talker(
        speech, from_csv, sample_rate, skip_bad_files, save_folder
    )
    fewest, most = speakers_per_mix
    if len(talkers) < fewest:
        raise ValueError(
            f"Babble needs at least {fewest} talkers; {source} has "
            f"{len(talkers)} (give it more speakers: more training speakers "
            "for train.csv, a larger verification_speakers for test.csv)"
        )
    rng = random.Random(f"{seed}-babble")
    seg = round(seg_dur * sample_rate)
    names, rows = sorted(talkers), []
    for index in range(n_mixtures):
        count = min(rng.randint(fewest, most), len(names))
        mixture = np.zeros(seg, dtype=np.float32)
        for talker in rng.sample(names, count):
            path, start, stop = rng.choice(talkers[talker])
            offset = start + rng.randrange(max(1, stop - start - seg + 1))
            samples = read_audio_checked(
                path, sample_rate, offset, min(offset + seg, stop)
            ).numpy()
            samples = np.resize(samples, seg)  # loops a short utterance
            rms = np.sqrt(np.mean(samples**2))
            mixture += samples / rms if rms > 1e-6 else samples
        mixture *= 0.9 / max(np.abs(mixture).max(), 1e-6)
        mix_id = f"babble-{index:05d}"
        mix_path = save_folder / "babble" / f"{mix_id}.wav"
        write_audio_atomic(mix_path, mixture, sample_rate)
        rows.append(_noise_row(mix_id, mix_path, seg, sample_rate, "babble"))
    write_csv(rows, save_csv, NOISE_FIELDS)
    save_options(opts_path, options)
    logger.info("Wrote %d babble mixtures to %s", n_mixtures, save_csv)
    return str(save_csv)


def merge_noise_csvs(csvs, out_csv):
    """Concatenates noise CSVs (same columns, distinct IDs) into ``out_csv``.

    Returns
    -------
    str
        ``out_csv``.
    """
    rows, origin = [], {}
    for path in csvs:
        with open(path, newline="", encoding="utf-8") as csv_file:
            reader = csv.DictReader(csv_file)
            if reader.fieldnames != NOISE_FIELDS:
                raise ValueError(
                    f"{path}: columns {reader.fieldnames}, expected {NOISE_FIELDS}"
                )
            for row in reader:
                if row["ID"] in origin:
                    raise ValueError(
                        f"ID {row['ID']} is in both {origin[row['ID']]} and {path}"
                    )
                origin[row["ID"]] = path
                rows.append(row)
    write_csv(rows, out_csv, NOISE_FIELDS)
    return str(out_csv)


def find_audio_files(folder):
    """Sorted paths (str) of the .wav/.flac files under ``folder``."""
    return sorted(
        str(path)
        for path in Path(folder).rglob("*")
        if path.suffix.lower() in AUDIO_EXTENSIONS
    )



def _noise_row(row_id, path, n_samples, sample_rate, noise_type):
    """One noise CSV row (a dict keyed by NOISE_FIELDS)."""
    return {
        "ID": row_id,
        "duration": round(n_samples / sample_rate, 6),
        "wav": os.path.abspath(path),
        "wav_format": os.path.splitext(path)[1].lstrip(".").lower(),
        "wav_opts": "",
        "noise_type": noise_type,
        "noise_type_format": "string",
        "noise_type_opts": "",
    }


def _speech_by_talker(
    speech, from_csv, sample_rate, skip_bad_files, save_folder
):
    """``{talker: [(path, start, stop), ...]}`` from a CSV or a file list."""
    talkers = {}
    if from_csv:
        with open(speech, newline="", encoding="utf-8") as csv_file:
            for row in csv.DictReader(csv_file):
                source = (row["wav"], int(row["start"]), int(row["stop"]))
                talkers.setdefault(row["spk_id"], []).append(source)
        return talkers
    report = save_folder / "babble_bad_files.txt" if skip_bad_files else None
    durations = validate_audio_files(
        speech, sample_rate, skip_bad_files, report
    )
    for path, duration in durations.items():
        talkers[path] = [(path, 0, round(duration * sample_rate))]
    return talkers


def _real_rirs(real_folder):
    """The RIR files of RIRS_NOISES' real_rirs_isotropic_noises folder."""
    if not real_folder.is_dir():
        return []
    rir_list = real_folder / "rir_list"
    if rir_list.is_file():
        lines = rir_list.read_text(encoding="utf-8").split("\n")
        names = [line.split()[-1] for line in lines if line.strip()]
        return [str(real_folder / os.path.basename(name)) for name in names]
    return sorted(
        str(path)
        for path in real_folder.glob("*.wav")
        if "noise" not in path.name.lower()
    )
