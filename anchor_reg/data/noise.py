"""Noise, music, babble and RIR CSVs for speechbrain.augment's AddNoise/AddReverb (``ExtendedCSVDataset``).

SpeechBrain loads each file whole (ignoring start/stop), so files longer than ``seg_dur`` are cut into 16-bit
wav segments; ``<csv stem>_opts.json``, written last, lets a rerun with the same options reuse the outputs.
"""

import csv
import logging
import os
import random
from pathlib import Path

import numpy as np
import soundfile as sf

from anchor_reg.data.audio import AUDIO_EXTENSIONS, read_audio_checked, validate_audio_files, write_audio_atomic
from anchor_reg.data.cache import input_fingerprint, read_csv, reuse_outputs, save_options, write_csv
from anchor_reg.data.folder import segment_bounds

logger = logging.getLogger(__name__)

NOISE_FIELDS = ["ID", "duration", "wav", "wav_format", "wav_opts", "noise_type", "noise_type_format",
                "noise_type_opts"]
NOISE_TYPES = ("noise", "music", "babble", "rir")
BABBLE_TALKERS = (3, 7)  # fewest and most talkers in one babble mixture


def prepare_noise_folder(folder, save_csv, noise_type, **options):
    """Writes the noise CSV of every .wav/.flac file under ``folder`` (options: :func:`prepare_noise_files`')."""
    files = find_audio_files(folder)
    if not files:
        raise FileNotFoundError(f"No .wav/.flac files under {folder}")
    return prepare_noise_files(folder, files, save_csv, noise_type, **options)


def prepare_noise_files(root, files, save_csv, noise_type, *, seg_dur=5.0, segment_folder=None, min_dur=1.0,
                        sample_rate=16000, skip_bad_files=False, first_channel=False):
    """Validates audio ``files`` (below ``root``) and writes their noise CSV; returns its path.

    A file longer than ``seg_dur`` (None: keep whole) becomes segments in ``segment_folder`` (a remainder
    under ``min_dur`` dropped); ``first_channel`` writes a multi-channel file's first channel as mono.
    """
    if noise_type not in NOISE_TYPES:
        raise ValueError(f"noise_type must be one of {NOISE_TYPES}, got {noise_type!r}")
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
        "fingerprint": input_fingerprint(files),
    }
    if reuse_outputs(opts_path, options, [save_csv]):
        return str(save_csv)
    report = f"{stem}_bad_files.txt" if skip_bad_files else None
    durations = validate_audio_files(files, sample_rate, skip_bad_files, report, mono=not first_channel)
    rows = []
    for path, duration in durations.items():
        name = f"{noise_type}--" + os.path.splitext(os.path.relpath(path, root))[0].replace(os.sep, "--")
        n_samples = round(duration * sample_rate)
        bounds = [(0, n_samples)]
        if seg_dur is not None:
            bounds = segment_bounds(n_samples, round(seg_dur * sample_rate), round(min_dur * sample_rate))
        if bounds == [(0, n_samples)] and not (first_channel and sf.info(path).channels > 1):
            rows.append(_noise_row(name, path, n_samples, sample_rate, noise_type))
            continue
        samples = sf.read(path, dtype="float32", always_2d=True)[0][:, 0]
        for start, stop in bounds:
            part = name if (start, stop) == (0, n_samples) else f"{name}_{start}_{stop}"
            write_audio_atomic(segment_folder / f"{part}.wav", samples[start:stop], sample_rate)
            rows.append(_noise_row(part, segment_folder / f"{part}.wav", stop - start, sample_rate, noise_type))
    write_csv(rows, save_csv, NOISE_FIELDS)
    save_options(opts_path, options)
    logger.info("Wrote %d %s rows to %s", len(rows), noise_type, save_csv)
    return str(save_csv)


def prepare_musan(musan_folder, save_folder, *, seg_dur=5.0, n_babble=1000, babble_speakers=BABBLE_TALKERS,
                  seed=1234, sample_rate=16000, skip_bad_files=False):
    """``{"noise", "music", "babble": csv path}``: ``seg_dur`` segments of MUSAN's noise/ and music/, and
    ``n_babble`` mixtures of ``musan/speech`` files (:func:`prepare_babble`)."""
    musan_folder, save_folder = Path(musan_folder), Path(save_folder)
    for sub in ("noise", "music", "speech"):
        if not (musan_folder / sub).is_dir():
            raise FileNotFoundError(
                f"{musan_folder / sub} not found: expected MUSAN's noise/, music/ and speech/ folders"
            )
    csvs = {
        kind: prepare_noise_folder(musan_folder / kind, save_folder / f"{kind}.csv", kind, seg_dur=seg_dur,
                                   sample_rate=sample_rate, skip_bad_files=skip_bad_files)
        for kind in ("noise", "music")
    }
    csvs["babble"] = prepare_babble(find_audio_files(musan_folder / "speech"), save_folder, n_babble,
                                    speakers_per_mix=babble_speakers, seg_dur=seg_dur, seed=seed,
                                    sample_rate=sample_rate, skip_bad_files=skip_bad_files, name="musan-babble")
    return csvs


def prepare_rirs_noises(rirs_folder, save_folder, *, sample_rate=16000, skip_bad_files=False):
    """Writes ``rir.csv`` of RIRS_NOISES' simulated and real RIRs (first channel; not its isotropic noises);
    returns its path."""
    rirs_folder = Path(rirs_folder)
    files = sorted(str(p) for p in (rirs_folder / "simulated_rirs").rglob("*.wav"))
    files += _real_rirs(rirs_folder / "real_rirs_isotropic_noises")
    if not files:
        raise FileNotFoundError(
            f"No RIRs under {rirs_folder}: expected simulated_rirs/ and/or real_rirs_isotropic_noises/"
        )
    return prepare_noise_files(rirs_folder, files, Path(save_folder) / "rir.csv", "rir", seg_dur=None,
                               sample_rate=sample_rate, skip_bad_files=skip_bad_files, first_channel=True)


def prepare_babble(speech, save_folder, n_mixtures, speakers_per_mix=BABBLE_TALKERS, seg_dur=5.0, seed=1234,
                   sample_rate=16000, skip_bad_files=False, name="babble"):
    """Mixes ``n_mixtures`` babble files of ``seg_dur`` seconds; returns the path of ``<save_folder>/babble.csv``.

    ``speech``: a speaker CSV (talker = speaker) or audio files (talker = file). A mixture sums unit-RMS windows
    of k talkers (k uniform in ``speakers_per_mix``), peak-normalised to 0.9.
    """
    save_folder = Path(save_folder)
    save_csv, opts_path = save_folder / "babble.csv", save_folder / "babble_opts.json"
    from_csv = isinstance(speech, (str, os.PathLike))
    if from_csv:
        source, fingerprint = os.path.abspath(speech), input_fingerprint([], speech)
    else:
        speech = [str(path) for path in speech]
        source, fingerprint = f"{len(speech)} speech files", input_fingerprint(speech)
    options = {
        "speech": source,
        "n_mixtures": n_mixtures,
        "speakers_per_mix": list(speakers_per_mix),
        "seg_dur": seg_dur,
        "seed": seed,
        "sample_rate": sample_rate,
        "skip_bad_files": skip_bad_files,
        "fingerprint": fingerprint,
        "name": name,
    }
    if reuse_outputs(opts_path, options, [save_csv]):
        return str(save_csv)
    talkers = _speech_by_talker(speech, from_csv, sample_rate, skip_bad_files, save_folder)
    fewest, most = speakers_per_mix
    if len(talkers) < fewest:
        raise ValueError(
            f"Babble needs at least {fewest} talkers; {source} has {len(talkers)} (give it more speakers: more "
            "training speakers for train.csv, a larger verification_speakers for test.csv)"
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
            samples = read_audio_checked(path, sample_rate, offset, min(offset + seg, stop)).numpy()
            samples = np.resize(samples, seg)  # loops a short utterance
            rms = np.sqrt(np.mean(samples**2))
            mixture += samples / rms if rms > 1e-6 else samples
        mixture *= 0.9 / max(np.abs(mixture).max(), 1e-6)
        mix_path = save_folder / "babble" / f"{name}-{index:05d}.wav"
        write_audio_atomic(mix_path, mixture, sample_rate)
        rows.append(_noise_row(mix_path.stem, mix_path, seg, sample_rate, "babble"))
    write_csv(rows, save_csv, NOISE_FIELDS)
    save_options(opts_path, options)
    logger.info("Wrote %d babble mixtures to %s", n_mixtures, save_csv)
    return str(save_csv)


def merge_noise_csvs(csvs, out_csv):
    """Concatenates noise CSVs (same columns, distinct IDs) into ``out_csv``; returns it."""
    rows, origin = [], {}
    for path in csvs:
        with open(path, newline="", encoding="utf-8") as csv_file:
            reader = csv.DictReader(csv_file)
            if reader.fieldnames != NOISE_FIELDS:
                raise ValueError(f"{path}: columns {reader.fieldnames}, expected {NOISE_FIELDS}")
            for row in reader:
                if row["ID"] in origin:
                    raise ValueError(f"ID {row['ID']} is in both {origin[row['ID']]} and {path}")
                origin[row["ID"]] = path
                rows.append(row)
    write_csv(rows, out_csv, NOISE_FIELDS)
    return str(out_csv)


def find_audio_files(folder):
    """Sorted paths (str) of the .wav/.flac files under ``folder``."""
    return sorted(str(path) for path in Path(folder).rglob("*") if path.suffix.lower() in AUDIO_EXTENSIONS)


def _noise_row(row_id, path, n_samples, sample_rate, noise_type):
    """One noise CSV row (keyed by NOISE_FIELDS)."""
    return {"ID": row_id, "duration": round(n_samples / sample_rate, 6), "wav": os.path.abspath(path),
            "wav_format": os.path.splitext(path)[1].lstrip(".").lower(), "wav_opts": "",
            "noise_type": noise_type, "noise_type_format": "string", "noise_type_opts": ""}


def _speech_by_talker(speech, from_csv, sample_rate, skip_bad_files, save_folder):
    """``{talker: [(path, start, stop), ...]}`` from a speaker CSV or a file list."""
    talkers = {}
    if from_csv:
        for row in read_csv(speech):
            talkers.setdefault(row["spk_id"], []).append((row["wav"], int(row["start"]), int(row["stop"])))
        return talkers
    report = save_folder / "babble_bad_files.txt" if skip_bad_files else None
    for path, duration in validate_audio_files(speech, sample_rate, skip_bad_files, report).items():
        talkers[path] = [(path, 0, round(duration * sample_rate))]
    return talkers


def _real_rirs(real_folder):
    """The RIR files of RIRS_NOISES' real_rirs_isotropic_noises folder."""
    if not real_folder.is_dir():
        return []
    rir_list = real_folder / "rir_list"
    if rir_list.is_file():
        names = [line.split()[-1] for line in rir_list.read_text(encoding="utf-8").split("\n") if line.strip()]
        return [str(real_folder / os.path.basename(name)) for name in names]
    return sorted(str(path) for path in real_folder.glob("*.wav") if "noise" not in path.name.lower())
