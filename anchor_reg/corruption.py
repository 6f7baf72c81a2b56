"""Deterministic test-time corruption: additive noise at a fixed SNR, reverberation.

A corrupted utterance is a pure function of (utterance id, condition, seed), so every system hears the same
audio. The SNR is global (no VAD); reverberation is aligned on the RIR's direct path, rescaled to the clean RMS.
"""

import dataclasses
import hashlib
import re

import numpy as np
import soundfile
import torch
import torchaudio

from anchor_reg.data.audio import read_audio_checked
from anchor_reg.data.cache import read_csv

_ADDITIVE_NAME = re.compile(r"^(?P<type>[A-Za-z]\w*?)_(?P<snr>-?\d+(\.\d+)?)dB$")


@dataclasses.dataclass(frozen=True)
class Condition:
    """A test condition: ``clean``, ``reverb`` or ``<noise_type>_<snr>dB`` (its noise type and SNR in dB)."""

    name: str
    noise_type: str = None
    snr: float = None

    @property
    def is_clean(self):
        """True for the clean condition."""
        return self.name == "clean"


def additive_condition(noise_type, snr):
    """The additive-noise condition of one noise type and SNR (dB)."""
    return Condition(f"{noise_type}_{float(snr):g}dB", noise_type, float(snr))


def parse_condition(name):
    """The :class:`Condition` of a name: ``clean``, ``reverb`` or ``<type>_<snr>dB`` (e.g. ``babble_10dB``)."""
    if name in ("clean", "reverb"):
        return Condition(name)
    match = _ADDITIVE_NAME.match(name)
    if match is None:
        raise ValueError(f"Unknown condition '{name}': expected 'clean', 'reverb' or '<noise_type>_<snr>dB' "
                         "(e.g. 'music_5dB').")
    return additive_condition(match["type"], match["snr"])


def default_conditions(noise_types, snrs, reverb):
    """Clean, every noise type at every SNR, then reverb if ``reverb``."""
    conditions = [Condition("clean")]
    for noise_type in noise_types:
        conditions += [additive_condition(noise_type, snr) for snr in snrs]
    if reverb:
        conditions.append(Condition("reverb"))
    return conditions


def stable_seed(*parts):
    """A 63-bit seed from a SHA-256 hash of the parts (unlike ``hash()``, the same in every process)."""
    digest = hashlib.sha256("\x1f".join(map(str, parts)).encode("utf-8"))
    return int.from_bytes(digest.digest()[:8], "little") >> 1


def read_noise_csv(csv_path, noise_type):
    """The ``wav`` paths of a noise CSV's rows of ``noise_type`` (all rows if it has no such column)."""
    rows = read_csv(csv_path)
    if rows and "wav" not in rows[0]:
        raise ValueError(f"Noise CSV {csv_path} has no 'wav' column.")
    if rows and "noise_type" in rows[0]:
        rows = [row for row in rows if row["noise_type"] == noise_type]
    if not rows:
        raise ValueError(f"Noise CSV {csv_path} has no rows of noise_type '{noise_type}'.")
    return [row["wav"] for row in rows]


def mix_at_snr(clean, noise, snr_db):
    """``clean`` (T,) plus ``noise`` (T,), not silent, scaled so that 10 log10(mean(clean^2) /
    mean(scaled_noise^2)) = ``snr_db``; returns (T,)."""
    clean_power = clean.double().pow(2).mean()
    noise_power = noise.double().pow(2).mean()
    gain = torch.sqrt(clean_power / (noise_power * 10 ** (snr_db / 10)))
    return (clean.double() + gain * noise.double()).to(clean.dtype)


def reverberate(clean, rir):
    """``clean`` (T,) convolved with ``rir`` (L,): (T,) at the clean RMS, the direct path where the clean
    sample was."""
    direct = int(rir.abs().argmax())
    wet = torchaudio.functional.fftconvolve(clean.double(), rir.double())
    wet = wet[direct : direct + clean.numel()]
    gain = clean.double().pow(2).mean().sqrt() / wet.pow(2).mean().sqrt().clamp(min=1e-12)
    return (wet * gain).to(clean.dtype)


class Corruptor:
    """``corrupt(wav (T,), utt_id, condition) -> (T,)``, deterministically; ``noise_csvs``: noise type -> CSV,
    ``rir_csv``: the RIRs of ``reverb`` (files read like training's audio)."""

    def __init__(self, noise_csvs, rir_csv, seed, sample_rate=16000):
        self.noise_csvs = dict(noise_csvs or {})
        self.rir_csv = rir_csv
        self.seed = seed
        self.sample_rate = sample_rate
        self._files = {}

    def sources(self, condition):
        """Audio files a corrupted condition draws from (RIRs or noises); its CSV is read on first use."""
        kind = "rir" if condition.name == "reverb" else condition.noise_type
        if kind not in self._files:
            csv_path = self.rir_csv if kind == "rir" else self.noise_csvs.get(kind)
            if not csv_path:
                wanted = "rir_csv" if kind == "rir" else f"a noise CSV for '{kind}' (have: {sorted(self.noise_csvs)})"
                raise ValueError(f"Condition '{condition.name}' needs {wanted}.")
            self._files[kind] = read_noise_csv(csv_path, kind)
        return self._files[kind]

    def __call__(self, wav, utt_id, condition):
        """Corrupted copy of ``wav`` (T,) for utterance ``utt_id``."""
        if condition.is_clean:
            return wav
        rng = np.random.default_rng(stable_seed(utt_id, condition.name, self.seed))
        files = self.sources(condition)
        path = files[rng.integers(len(files))]
        if condition.name == "reverb":
            return reverberate(wav, read_audio_checked(path, self.sample_rate))
        return mix_at_snr(wav, _read_circular(path, rng, wav.numel(), self.sample_rate), condition.snr)


def _read_circular(path, rng, length, sample_rate):
    """``length`` samples of a noise file from a random offset, wrapping around."""
    try:
        total = soundfile.info(str(path)).frames
    except (soundfile.SoundFileError, RuntimeError):
        total = 0
    if total == 0:  # missing, unreadable or empty: the reader's AudioError names the file and the problem
        read_audio_checked(path, sample_rate)
    offset = int(rng.integers(total))
    pieces, needed = [], length
    while needed > 0:
        piece = read_audio_checked(path, sample_rate, offset, min(total, offset + needed))
        pieces.append(piece)
        needed -= piece.numel()
        offset = 0
    noise = torch.cat(pieces)
    if not noise.abs().any():
        raise ValueError(f"Noise file {path} is silent over the chosen segment.")
    return noise
