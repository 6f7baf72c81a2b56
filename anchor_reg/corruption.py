"""Deterministic test-time corruption: additive noise at a fixed SNR, reverberation.

Every corrupted utterance is a pure function of (utterance id, condition,
global seed): a stable SHA-256 hash of the three seeds a NumPy generator, which
picks the noise file and offset (or the room impulse response). Evaluations
of different systems therefore hear exactly the same noisy audio.

SNR: signal and noise powers are plain mean squares over the whole utterance
(its true length, no padding); no voice-activity detection, so the SNR is the
"global" SNR of the file, met to float precision. The mixture is not
renormalised (it may exceed [-1, 1]; the models take floats).

Reverberation: linear convolution with the impulse response, output aligned on
the direct-path peak (largest absolute sample of the RIR) and cut to the clean
length, then rescaled to the clean RMS level.

Authors
 * anchor-reg contributors
"""

import csv
import dataclasses
import hashlib
import re

import numpy as np
import soundfile
import torch
import torchaudio

from anchor_reg.data.audio import read_audio_checked

_ADDITIVE_NAME = re.compile(r"^(?P<type>[A-Za-z]\w*?)_(?P<snr>-?\d+(\.\d+)?)dB$")


@dataclasses.dataclass(frozen=True)
class Condition:
    """One test condition.

    Arguments
    ---------
    name : str
        ``clean``, ``reverb`` or ``<noise_type>_<snr>dB`` (e.g. ``music_5dB``).
    noise_type : str or None
        Noise type of an additive condition, else None.
    snr : float or None
        SNR in dB of an additive condition, else None.
    """

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
    """Condition from its name: ``clean``, ``reverb`` or ``<type>_<snr>dB``.

    Example
    -------
    >>> parse_condition("babble_10dB")
    Condition(name='babble_10dB', noise_type='babble', snr=10.0)
    """
    if name in ("clean", "reverb"):
        return Condition(name)
    match = _ADDITIVE_NAME.match(name)
    if match is None:
        raise ValueError(
            f"Unknown condition '{name}': expected 'clean', 'reverb' or "
            "'<noise_type>_<snr>dB' (e.g. 'music_5dB')."
        )
    return additive_condition(match["type"], match["snr"])


def default_conditions(noise_types, snrs, reverb):
    """Clean, every noise type at every SNR, then reverb if available.

    Example
    -------
    >>> [c.name for c in default_conditions(["noise"], [0, 5], reverb=True)]
    ['clean', 'noise_0dB', 'noise_5dB', 'reverb']
    """
    conditions = [Condition("clean")]
    for noise_type in noise_types:
        conditions += [additive_condition(noise_type, snr) for snr in snrs]
    if reverb:
        conditions.append(Condition("reverb"))
    return conditions


def stable_seed(*parts):
    """A 63-bit seed from a SHA-256 hash of the parts (unlike ``hash()``,
    identical across processes and machines).

    Example
    -------
    >>> stable_seed("id10270/x6uYqmx31kE/00001", "noise_5dB", 1234) == stable_seed(
    ...     "id10270/x6uYqmx31kE/00001", "noise_5dB", 1234)
    True
    """
    digest = hashlib.sha256("\x1f".join(map(str, parts)).encode("utf-8"))
    return int.from_bytes(digest.digest()[:8], "little") >> 1


def read_noise_csv(csv_path, noise_type):
    """Audio paths of one noise type from a noise CSV.

    The CSV has the columns of speechbrain.augment (``ID,duration,wav,...``);
    when it has a ``noise_type`` column only rows of ``noise_type`` are kept.
    """
    with open(csv_path, newline="", encoding="utf-8") as stream:
        rows = list(csv.DictReader(stream))
    if rows and "wav" not in rows[0]:
        raise ValueError(f"Noise CSV {csv_path} has no 'wav' column.")
    if rows and "noise_type" in rows[0]:
        rows = [row for row in rows if row["noise_type"] == noise_type]
    if not rows:
        raise ValueError(f"Noise CSV {csv_path} has no rows of noise_type '{noise_type}'.")
    return [row["wav"] for row in rows]


def mix_at_snr(clean, noise, snr_db):
    """Adds ``noise`` scaled so that the mixture has the given SNR.

    Arguments
    ---------
    clean : torch.Tensor
        Clean waveform, shape (T,).
    noise : torch.Tensor
        Noise waveform, shape (T,), not silent.
    snr_db : float
        Target SNR: 10 log10(mean(clean^2) / mean(scaled_noise^2)).

    Returns
    -------
    torch.Tensor
        Noisy waveform, shape (T,).
    """
    clean_power = clean.double().pow(2).mean()
    noise_power = noise.double().pow(2).mean()
    gain = torch.sqrt(clean_power / (noise_power * 10 ** (snr_db / 10)))
    return (clean.double() + gain * noise.double()).to(clean.dtype)


def reverberate(clean, rir):
    """Convolves with a room impulse response, aligned and level-matched.

    Arguments
    ---------
    clean : torch.Tensor
        Clean waveform, shape (T,).
    rir : torch.Tensor
        Room impulse response, shape (L,).

    Returns
    -------
    torch.Tensor
        Reverberant waveform, shape (T,), with the RMS of ``clean``; the
        direct path sits where the clean sample was.
    """
    direct = int(rir.abs().argmax())
    wet = torchaudio.functional.fftconvolve(clean.double(), rir.double())
    wet = wet[direct : direct + clean.numel()]
    gain = clean.double().pow(2).mean().sqrt() / wet.pow(2).mean().sqrt().clamp(min=1e-12)
    return (wet * gain).to(clean.dtype)


class Corruptor:
    """Applies a condition to an utterance, deterministically.

    Arguments
    ---------
    noise_csvs : dict
        Noise type (e.g. ``noise``, ``music``, ``babble``) -> noise CSV path.
    rir_csv : str or None
        CSV of room impulse responses (noise_type ``rir``), for ``reverb``.
    seed : int
        Global seed, combined with the utterance id and condition name.
    sample_rate : int
        The sample rate every noise and RIR file must have (mono files, read
        with :func:`anchor_reg.data.audio.read_audio_checked`, like training's).

    Example
    -------
    >>> corrupt = Corruptor({}, None, seed=1)
    >>> wav = torch.randn(100)
    >>> torch.equal(corrupt(wav, "utt1", Condition("clean")), wav)
    True
    """

    def __init__(self, noise_csvs, rir_csv, seed, sample_rate=16000):
        self.noise_csvs = dict(noise_csvs or {})
        self.rir_csv = rir_csv
        self.seed = seed
        self.sample_rate = sample_rate
        self._files = {}

    def sources(self, condition):
        """Audio files a corrupted condition draws from (RIRs or noises);
        its CSV is read on first use."""
        kind = "rir" if condition.name == "reverb" else condition.noise_type
        if kind not in self._files:
            csv_path = self.rir_csv if kind == "rir" else self.noise_csvs.get(kind)
            if not csv_path:
                wanted = "rir_csv" if kind == "rir" else (
                    f"a noise CSV for '{kind}' (have: {sorted(self.noise_csvs)})"
                )
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
