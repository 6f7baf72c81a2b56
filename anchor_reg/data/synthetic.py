"""A small multi-speaker corpus, noises and RIRs, synthesised offline.

The default recipe runs on it with no data and no network. Speech comes from a
source-filter synthesiser: a Rosenberg glottal pulse train (with jitter,
shimmer, aspiration) drives a cascade of time-varying formant resonators;
fricatives and bursts are shaped noise. Each speaker draws a voice (F0 range,
vocal-tract length, speaking rate, voice quality, formant offsets), each
session a small channel and mood change, each utterance a random phone
sequence. Noises are coloured/hum/modulated noise, music-like tones and babble
of speakers outside the corpus; RIRs are exponentially decaying noise with
early reflections.

Layout written under ``out_folder``::

    speech/spk0001/sess1/utt00.wav   (folder of speakers, 16-bit mono wav)
    noise/{noise,music,babble}/*.wav
    rir/rir000.wav
    manifest.json       (written last; reused when complete with same options)

Example
-------
>>> info = generate_corpus(getfixture("tmp_path"), num_speakers=2,
...     utts_per_speaker=2, num_noises=1, num_rirs=1, num_workers=1)
>>> info["counts"]["utterances"]
4
"""

import argparse
import inspect
import json
import logging
import multiprocessing
import os
import shutil
import sys
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import soundfile
from scipy import signal as sps

from anchor_reg.atomic import atomic_path, write_text_atomic

logger = logging.getLogger(__name__)

VERSION = 1
SPEECH_DIR, NOISE_DIR, RIR_DIR = "speech", "noise", "rir"
MANIFEST = "manifest.json"
IN_PROGRESS = ".synthetic_in_progress"
NOISE_TYPES = ("noise", "music", "babble")
NOISE_KINDS = ("white", "pink", "brown", "band", "hum", "modulated")

# Seed domains: every random stream is keyed by (seed, domain, indices), so
# results depend neither on worker scheduling nor on how many other speakers or
# files are generated. Keys of one domain have one length:
# SeedSequence([1, 2]) equals SeedSequence([1, 2, 0]).
(
    _VOICE,
    _SESSION,
    _UTTERANCE,
    _BABBLE_VOICE,
    _BABBLE_UTTERANCE,
    _BABBLE,
    _NOISE,
    _MUSIC,
    _RIR,
) = range(9)

_BLOCK = 0.005  # seconds per formant-filter update
# Adult-male reference formants F1-F4 in Hz (Peterson & Barney 1952; F4 nominal)
_VOWELS = np.array(
    [
        (270, 2290, 3010, 3700),
        (390, 1990, 2550, 3600),
        (530, 1840, 2480, 3600),
        (660, 1720, 2410, 3500),
        (730, 1090, 2440, 3400),
        (570, 840, 2410, 3400),
        (440, 1020, 2240, 3400),
        (300, 870, 2240, 3400),
        (640, 1190, 2390, 3500),
        (490, 1350, 1690, 3300),
    ],
    dtype=float,
)
_BANDWIDTHS = np.array([80.0, 100.0, 150.0, 250.0, 300.0])
_F5 = 4500.0
# Consonants: kind, formant locus (F1-F4), voiced, noise band (Hz), noise level
_CONSONANTS = {
    "p": ("stop", (250, 900, 2200, 3400), False, (400, 2500), 0.5),
    "b": ("stop", (250, 900, 2200, 3400), True, (400, 2500), 0.3),
    "t": ("stop", (250, 1700, 2600, 3500), False, (3000, 7000), 0.6),
    "d": ("stop", (250, 1700, 2600, 3500), True, (3000, 7000), 0.35),
    "k": ("stop", (250, 1900, 2500, 3400), False, (1500, 3500), 0.6),
    "g": ("stop", (250, 1900, 2500, 3400), True, (1500, 3500), 0.35),
    "f": ("fricative", (250, 1000, 2300, 3400), False, (1200, 7500), 0.08),
    "v": ("fricative", (250, 1000, 2300, 3400), True, (1200, 7500), 0.05),
    "s": ("fricative", (250, 1700, 2600, 3500), False, (3800, 7800), 0.35),
    "z": ("fricative", (250, 1700, 2600, 3500), True, (3800, 7800), 0.2),
    "sh": ("fricative", (250, 1900, 2400, 3400), False, (2000, 6000), 0.4),
    "h": ("aspirate", None, False, None, 0.0),
    "m": ("nasal", (250, 1100, 2200, 3300), True, None, 0.0),
    "n": ("nasal", (250, 1700, 2600, 3400), True, None, 0.0),
    "l": ("approximant", (360, 1300, 2700, 3400), True, None, 0.0),
    "r": ("approximant", (420, 1300, 1600, 3300), True, None, 0.0),
    "w": ("approximant", (300, 700, 2200, 3300), True, None, 0.0),
    "j": ("approximant", (270, 2200, 3000, 3600), True, None, 0.0),
}
_ONSETS = tuple(_CONSONANTS)
_CODAS = tuple("p b t d k g f v s z sh m n l r".split())
_CLUSTERS = tuple(
    tuple(pair.split("-")) for pair in "p-r t-r k-r b-l k-l s-t s-p".split()
)
# (F0 Hz, formant scale) centres of male, female and child voices
_VOICE_GROUPS = ((115.0, 0.92), (205.0, 1.08), (265.0, 1.2))


@dataclass
class Voice:
    """What makes one speaker sound like themselves (drawn once per speaker)."""

    f0_mean: float  # Hz
    f0_range: float  # size of pitch accents, semitones
    declination: float  # F0 drop over an utterance, semitones
    formant_scale: float  # inverse vocal-tract length, 1.0 = adult male
    formant_offsets: np.ndarray  # (4,) individual factors on F1-F4
    vowel_offsets: np.ndarray  # (vowels, 4) individual vowel quality ("accent")
    bandwidth_scale: float
    duration_scale: float  # >1 = slow speaker
    open_quotient: float
    speed_quotient: float
    tilt: float  # extra one-pole low-pass of the source, 0 = bright
    breathiness: float
    jitter: float  # relative std of the period
    shimmer: float  # relative std of the pulse amplitude
    nasal_zero: float  # Hz, anti-resonance frequency
    nasality: float  # anti-resonance depth in [0, 1]
    sibilance: float  # factor on fricative/burst noise bands


def sample_voice(rng):
    """Draws a voice from realistic, overlapping male/female/child ranges."""
    group = rng.choice(3, p=[0.45, 0.45, 0.1])
    f0_centre, scale_centre = _VOICE_GROUPS[group]
    return Voice(
        f0_mean=float(
            np.clip(f0_centre * np.exp(rng.normal(0, 0.13)), 85.0, 300.0)
        ),
        f0_range=float(rng.uniform(1.0, 4.5)),
        declination=float(rng.uniform(0.5, 3.5)),
        formant_scale=float(
            np.clip(scale_centre + rng.normal(0, 0.045), 0.8, 1.25)
        ),
        formant_offsets=np.exp(rng.normal(0, 0.04, 4)),
        vowel_offsets=np.exp(rng.normal(0, 0.04, _VOWELS.shape)),
        bandwidth_scale=float(np.exp(rng.normal(0, 0.2))),
        duration_scale=float(np.exp(rng.normal(0, 0.13))),
        open_quotient=float(rng.uniform(0.4, 0.75)),
        speed_quotient=float(rng.uniform(1.5, 3.5)),
        tilt=float(rng.uniform(0.0, 0.7)),
        breathiness=float(rng.uniform(0.02, 0.3)),
        jitter=float(rng.uniform(0.002, 0.02)),
        shimmer=float(rng.uniform(0.01, 0.08)),
        nasal_zero=float(rng.uniform(600.0, 1500.0)),
        nasality=float(rng.uniform(0.0, 0.6)),
        sibilance=float(np.exp(rng.normal(0, 0.08))),
    )


@dataclass
class Session:
    """A recording session: mood (F0, rate), channel (high-pass, tilt, gain)."""

    f0_shift: float  # semitones
    rate: float
    highpass: float  # Hz
    channel_tilt: float  # 1st-order pre-emphasis, negative = darker
    gain_db: float


def sample_session(rng):
    """Draws the session variability of one speaker's recording session."""
    return Session(
        f0_shift=float(rng.normal(0, 0.7)),
        rate=float(np.exp(rng.normal(0, 0.05))),
        highpass=float(rng.uniform(50.0, 200.0)),
        channel_tilt=float(rng.uniform(-0.3, 0.3)),
        gain_db=float(rng.uniform(-2.0, 2.0)),
    )


_NEUTRAL_SESSION = Session(
    f0_shift=0.0, rate=1.0, highpass=60.0, channel_tilt=0.0, gain_db=0.0
)


@dataclass
class _Segment:
    """One phone-like stretch with constant targets."""

    seconds: float
    formants: np.ndarray  # (4,) targets before speaker scaling
    voicing: float = 0.0
    aspiration: float = 0.0
    noise: float = 0.0
    band: tuple = None  # (low, high) Hz of the noise
    accent: bool = False
    vowel: int = -1  # row of _VOWELS, -1 for consonants and pauses


def _plan_syllable(rng, stressed):
    """The segments of one (C)(C)V(C) syllable (durations at a neutral rate)."""
    vowel = rng.integers(len(_VOWELS))
    target = _VOWELS[vowel]
    nucleus = _Segment(
        rng.uniform(0.12, 0.2) if stressed else rng.uniform(0.06, 0.11),
        target,
        voicing=1.0 if stressed else 0.75,
        accent=stressed and rng.random() < 0.6,
        vowel=vowel,
    )
    onset = ()
    if rng.random() < 0.15:
        onset = _CLUSTERS[rng.integers(len(_CLUSTERS))]
    elif rng.random() < 0.85:
        onset = (_ONSETS[rng.integers(len(_ONSETS))],)
    coda = (_CODAS[rng.integers(len(_CODAS))],) if rng.random() < 0.45 else ()
    segments = [s for c in onset for s in _consonant(rng, c, target)]
    segments.append(nucleus)
    segments += [s for c in coda for s in _consonant(rng, c, target)]
    return segments


def _consonant(rng, name, vowel_target):
    """The segments of one consonant next to a vowel with ``vowel_target``."""
    kind, locus, voiced, band, level = _CONSONANTS[name]
    if kind == "aspirate":
        return [_Segment(rng.uniform(0.05, 0.08), vowel_target, aspiration=0.3)]
    locus = np.asarray(locus, dtype=float)
    if kind == "stop":
        segments = [
            _Segment(
                rng.uniform(0.04, 0.08), locus, voicing=0.08 if voiced else 0.0
            ),
            _Segment(rng.uniform(0.008, 0.015), locus, noise=level, band=band),
        ]
        if not voiced:
            segments.append(
                _Segment(rng.uniform(0.03, 0.06), vowel_target, aspiration=0.25)
            )
        return segments
    if kind == "fricative":
        voicing = 0.3 if voiced else 0.0
        return [
            _Segment(
                rng.uniform(0.07, 0.13),
                locus,
                voicing=voicing,
                noise=level,
                band=band,
            )
        ]
    voicing = 0.3 if kind == "nasal" else 0.6
    return [_Segment(rng.uniform(0.04, 0.09), locus, voicing=voicing)]


def _plan_utterance(rng, seconds, duration_scale):
    """Random words filling ``seconds``; leftover time becomes silence."""
    lead = min(rng.uniform(0.05, 0.2), 0.25 * seconds)
    segments, used = [], lead
    while True:
        word = []
        n_syllables = rng.integers(1, 4)
        stress = rng.integers(n_syllables)
        for i in range(n_syllables):
            word += _plan_syllable(rng, i == stress)
        if rng.random() < 0.25:
            word.append(_Segment(rng.uniform(0.08, 0.3), _VOWELS[8]))
        word_seconds = sum(s.seconds for s in word) * duration_scale
        if used + word_seconds > seconds - 0.05:
            break
        segments += word
        used += word_seconds
    if not segments:  # utterance shorter than any word: one short vowel
        vowel_seconds = max(seconds - lead - 0.05, 0.5 * (seconds - lead))
        segments = [
            _Segment(vowel_seconds / duration_scale, _VOWELS[4], voicing=1.0)
        ]
        used = lead + segments[0].seconds * duration_scale
    for s in segments:
        s.seconds *= duration_scale
    extra_lead = (seconds - used) * rng.uniform(0.0, 0.6)
    pause = _VOWELS[8]
    return (
        [_Segment(lead + extra_lead, pause)]
        + segments
        + [_Segment(seconds - used - extra_lead, pause)]
    )


def _smooth(values, width):
    """Centred moving average of ``values`` (time, ...) over ``width`` steps."""
    if width <= 1:
        return values
    padded = np.concatenate(
        [
            np.repeat(values[:1], width // 2, 0),
            values,
            np.repeat(values[-1:], width, 0),
        ]
    )
    cumulative = np.cumsum(padded, axis=0)
    cumulative = np.concatenate([np.zeros_like(cumulative[:1]), cumulative])
    return (
        cumulative[width : width + len(values)] - cumulative[: len(values)]
    ) / width


def _glottal_source(rng, voice, f0, sample_rate):
    """Rosenberg glottal flow derivative with jitter and shimmer.

    Arguments
    ---------
    f0 : np.ndarray
        (time,) fundamental frequency in Hz per sample.

    Returns
    -------
    source : np.ndarray (time,) unit-RMS glottal flow derivative
    flow : np.ndarray (time,) glottal flow in [0, 1] (for pulsed aspiration)
    """
    n = len(f0)
    boundaries, t = [0.0], 0.0
    while t < n:
        t += (
            sample_rate
            / f0[min(int(t), n - 1)]
            * (1.0 + voice.jitter * rng.standard_normal())
        )
        boundaries.append(t)
    boundaries = np.asarray(boundaries)
    phase = np.interp(np.arange(n), boundaries, np.arange(len(boundaries)))
    period, frac = np.divmod(phase, 1.0)
    rise = (
        voice.open_quotient * voice.speed_quotient / (1 + voice.speed_quotient)
    )
    fall = voice.open_quotient / (1 + voice.speed_quotient)
    flow = np.where(
        frac < rise,
        0.5 * (1 - np.cos(np.pi * frac / rise)),
        np.where(
            frac < rise + fall, np.cos(0.5 * np.pi * (frac - rise) / fall), 0.0
        ),
    )
    amplitude = 1.0 + voice.shimmer * rng.standard_normal(len(boundaries))
    source = np.diff(flow * amplitude[period.astype(int)], prepend=0.0)
    source = sps.lfilter([1 - voice.tilt], [1, -voice.tilt], source)
    return source / (np.sqrt(np.mean(source**2)) + 1e-12), flow


def _vocal_tract(excitation, formants, bandwidths, block, sample_rate):
    """All-pole vocal tract: resonators updated every ``block`` samples.

    Arguments
    ---------
    excitation : np.ndarray (blocks * block,)
    formants, bandwidths : np.ndarray (blocks, resonators) in Hz.

    The resonators of a block are multiplied into one polynomial (one lfilter
    call per block) and the state is rebuilt from the last outputs with the new
    coefficients, y[n] = g x[n] - sum_k a_k(n) y[n-k], so formant changes cause
    no clicks.
    """
    radius = np.exp(-np.pi * bandwidths / sample_rate)
    a1 = -2 * radius * np.cos(2 * np.pi * formants / sample_rate)
    a2 = radius**2
    n_blocks, order = formants.shape[0], 2 * formants.shape[1]
    # A(z) per block, zero-padded so that poly[:, i + 1 + m] is defined
    poly = np.zeros((n_blocks, 2 * order + 1))
    poly[:, 0] = 1.0
    for section in range(formants.shape[1]):
        previous = poly.copy()
        poly[:, 1:] += a1[:, section, None] * previous[:, :-1]
        poly[:, 2:] += a2[:, section, None] * previous[:, :-2]
    gain = poly[:, : order + 1].sum(1)  # unit gain at 0 Hz
    # lfilter state after output y[n]: z_i = -sum_m a_(i+1+m) y[n-m]
    state_taps = np.arange(order)[:, None] + np.arange(order)[None, :] + 1
    out = np.empty_like(excitation)
    state = np.zeros(order)
    for b in range(n_blocks):
        span = slice(b * block, (b + 1) * block)
        if b:
            state = (
                -poly[b, state_taps]
                @ out[span.start - 1 : span.start - 1 - order : -1]
            )
        out[span], _ = sps.lfilter(
            gain[b : b + 1], poly[b, : order + 1], excitation[span], zi=state
        )
    return out


def synthesize_utterance(
    rng, voice, num_samples, sample_rate=16000, session=_NEUTRAL_SESSION
):
    """Synthesises one utterance of random content spoken by ``voice``.

    Returns
    -------
    np.ndarray (num_samples,) float64 with an active-speech RMS of 1.
    """
    segments = _plan_utterance(
        rng, num_samples / sample_rate, voice.duration_scale * session.rate
    )
    edges = np.round(
        np.cumsum([0.0] + [s.seconds for s in segments]) * sample_rate
    ).astype(int)
    edges[-1] = num_samples
    lengths = np.diff(edges)
    block = int(round(_BLOCK * sample_rate))
    n_blocks = -(-num_samples // block)
    padded = n_blocks * block

    # Formant tracks: speaker-scaled targets per block, smoothed transitions
    targets = np.empty((len(segments), 5))
    for i, s in enumerate(segments):
        targets[i, :4] = s.formants * voice.formant_offsets
        if s.vowel >= 0:
            targets[i, :4] *= voice.vowel_offsets[s.vowel]
        targets[i, 4] = _F5
    targets *= voice.formant_scale
    block_segment = np.searchsorted(
        edges[1:], (np.arange(n_blocks) + 0.5) * block, side="right"
    )
    block_segment = np.minimum(block_segment, len(segments) - 1)
    formants = _smooth(targets[block_segment], 5)
    formants = np.minimum(formants, 0.45 * sample_rate)
    formants[:, 1:] = np.maximum(formants[:, 1:], formants[:, :-1] + 150.0)
    formants = np.minimum(formants, 0.47 * sample_rate)
    bandwidths = np.broadcast_to(
        _BANDWIDTHS * voice.bandwidth_scale, formants.shape
    )

    # Per-sample envelopes, ramped over ~8 ms.
    ramp = int(0.008 * sample_rate)
    voicing = _smooth(np.repeat([s.voicing for s in segments], lengths), ramp)
    aspiration = _smooth(
        np.repeat([s.aspiration for s in segments], lengths), ramp
    )

    # Intonation: declination, accents on stressed vowels, slow wander, offsets
    t = np.arange(padded) / sample_rate
    total = num_samples / sample_rate
    semitones = (
        session.f0_shift
        + rng.normal(0, 0.5)
        + voice.declination * (0.5 - t / total)
    )
    for i, s in enumerate(segments):
        if s.accent:
            centre = (edges[i] + edges[i + 1]) / 2 / sample_rate
            height = voice.f0_range * rng.uniform(0.5, 1.2)
            semitones += height * np.exp(
                -0.5 * ((t - centre) / rng.uniform(0.06, 0.12)) ** 2
            )
    if rng.random() < 0.2:  # question-like final rise
        semitones += (
            voice.f0_range * np.clip((t - total + 0.5) / 0.5, 0, 1) ** 2
        )
    knots = rng.normal(0, 0.4, int(total * 4) + 2)
    semitones += np.interp(t, np.linspace(0, total, len(knots)), knots)
    f0 = voice.f0_mean * 2 ** (semitones / 12)

    source, flow = _glottal_source(rng, voice, f0, sample_rate)
    noise = rng.standard_normal(padded)
    breath = voice.breathiness * noise * (0.3 + flow)
    excitation = np.zeros(padded)
    excitation[:num_samples] = voicing * (
        source[:num_samples] + breath[:num_samples]
    )
    excitation[:num_samples] += aspiration * noise[:num_samples]
    speech = _vocal_tract(excitation, formants, bandwidths, block, sample_rate)[
        :num_samples
    ]
    voiced = voicing > 0.5
    reference = np.sqrt(np.mean(speech[voiced] ** 2)) if voiced.any() else 1.0

    # Frication and bursts: band-passed noise, a trapezoid window per segment
    frication = rng.standard_normal(num_samples)
    for i, s in enumerate(segments):
        if not s.noise:
            continue
        lo, hi = (
            f * voice.sibilance * voice.formant_scale**0.5 for f in s.band
        )
        hi = min(hi, 0.46 * sample_rate)
        lo = min(lo, 0.6 * hi)
        start, stop = max(edges[i] - ramp, 0), min(
            edges[i + 1] + ramp, num_samples
        )
        if stop - start < 4:
            continue
        position = np.arange(stop - start)
        window = np.minimum(
            1.0, np.minimum(position + 1, position[::-1] + 1) / (2 * ramp)
        )
        bandpass = sps.butter(
            2, (lo, hi), btype="bandpass", fs=sample_rate, output="sos"
        )
        speech[start:stop] += (
            s.noise
            * reference
            * window
            * sps.sosfilt(bandpass, frication[start:stop])
        )

    if voice.nasality:
        radius, angle = 0.95, 2 * np.pi * voice.nasal_zero / sample_rate
        notch = np.array([1.0, -2 * radius * np.cos(angle), radius**2])
        notch /= notch.sum()
        speech = (1 - voice.nasality) * speech + voice.nasality * sps.lfilter(
            notch, [1.0], speech
        )
    highpass = sps.butter(
        2, session.highpass, btype="highpass", fs=sample_rate, output="sos"
    )
    speech = sps.lfilter(
        [1.0, session.channel_tilt], [1.0], sps.sosfilt(highpass, speech)
    )
    return speech / _active_rms(speech, sample_rate)


def _active_rms(x, sample_rate):
    """RMS over the louder half of 20 ms frames (ignores pauses)."""
    frame = int(0.02 * sample_rate)
    n = max(len(x) // frame, 1)
    energy = np.mean(np.resize(x, n * frame).reshape(n, frame) ** 2, axis=1)
    return float(np.sqrt(np.mean(np.sort(energy)[n // 2 :])) + 1e-12)


def _finish(x, rng, level_db, sample_rate):
    """Scales to an active level (dBFS), limits peaks, adds a -75 dBFS floor."""
    x = x * 10 ** (level_db / 20) / _active_rms(x, sample_rate)
    peak = np.max(np.abs(x))
    if peak > 0.95:
        x *= 0.95 / peak
    return x + 10 ** (-75 / 20) * rng.standard_normal(len(x))


def _colored_noise(rng, n, exponent, sample_rate):
    """Gaussian noise with power spectrum ~ 1/f**exponent (flat below 20 Hz)."""
    spectrum = np.fft.rfft(rng.standard_normal(n))
    freqs = np.maximum(np.fft.rfftfreq(n, 1 / sample_rate), 20.0)
    x = np.fft.irfft(spectrum * freqs ** (-exponent / 2), n)
    return x / np.std(x)


def synthesize_noise(rng, kind, num_samples, sample_rate=16000):
    """Noise of ``kind`` (in NOISE_KINDS); returns (num_samples,) float64."""
    n = num_samples
    if kind == "white":
        return rng.standard_normal(n)
    if kind == "pink":
        return _colored_noise(rng, n, 1.0, sample_rate)
    if kind == "brown":
        return _colored_noise(rng, n, 2.0, sample_rate)
    if kind == "band":
        lo = rng.uniform(100, 3000)
        hi = min(lo * rng.uniform(1.5, 6), 0.45 * sample_rate)
        sos = sps.butter(
            4, (lo, hi), btype="bandpass", fs=sample_rate, output="sos"
        )
        return sps.sosfilt(sos, rng.standard_normal(n))
    if kind == "hum":
        t = np.arange(n) / sample_rate
        mains = rng.choice([50.0, 60.0]) * rng.uniform(0.99, 1.01)
        harmonics = np.arange(1, int(0.45 * sample_rate / mains) + 1)[:40]
        amplitudes = rng.uniform(
            0.2, 1.0, len(harmonics)
        ) / harmonics ** rng.uniform(0.5, 1.5)
        phases = rng.uniform(0, 2 * np.pi, len(harmonics))
        hum = amplitudes @ np.sin(
            2 * np.pi * mains * harmonics[:, None] * t + phases[:, None]
        )
        return hum / np.std(hum) + 0.05 * _colored_noise(
            rng, n, 1.0, sample_rate
        )
    if kind == "modulated":
        base = _colored_noise(rng, n, rng.choice([0.0, 1.0]), sample_rate)
        rate = rng.uniform(0.3, 4.0)  # Hz
        knots = rng.normal(0, 1.2, int(n / sample_rate * rate) + 2)
        envelope = np.exp(
            np.interp(np.arange(n), np.linspace(0, n, len(knots)), knots)
        )
        if rng.random() < 0.5:  # on/off bursts
            gates = np.repeat(
                rng.random(len(knots)) < 0.5, -(-n // (len(knots) - 1))
            )[:n]
            envelope *= _smooth(gates + 0.02, 160)
        return base * envelope
    raise ValueError(
        f"Unknown noise kind {kind!r}; expected one of {NOISE_KINDS}"
    )


def _tone(rng, freq, num_samples, timbre, sample_rate):
    """One harmonic note of ``timbre`` (piano, organ, pluck or pad)."""
    t = np.arange(num_samples) / sample_rate
    harmonics = np.arange(1, max(2, min(16, int(0.45 * sample_rate / freq))))
    if timbre == "organ":
        amplitudes = rng.uniform(0.1, 1.0, len(harmonics)) / harmonics
        envelope = np.minimum(1, np.minimum(t, t[-1] - t) / 0.01)[None, :]
    elif timbre == "pad":
        amplitudes = np.where(harmonics % 2, 1.0, 0.3) / harmonics**1.5
        envelope = np.minimum(1, np.minimum(t / 0.2, (t[-1] - t) / 0.1))[
            None, :
        ]
    else:  # piano, pluck: higher partials decay faster
        amplitudes = 1.0 / harmonics ** (1.0 if timbre == "piano" else 0.7)
        decay = (0.8 if timbre == "piano" else 0.25) / np.sqrt(harmonics)
        envelope = np.exp(-t[None, :] / decay[:, None]) * np.minimum(
            1, (t[-1] - t) / 0.01
        )
    phases = rng.uniform(0, 2 * np.pi, len(harmonics))
    partials = np.sin(
        2 * np.pi * freq * harmonics[:, None] * t[None, :] + phases[:, None]
    )
    return (amplitudes[:, None] * envelope * partials).sum(0)


def _drum(rng, kind, sample_rate):
    """A short kick, snare or hi-hat hit."""
    t = np.arange(int(0.25 * sample_rate)) / sample_rate
    if kind == "kick":
        sweep = 45 + 75 * np.exp(-t / 0.03)
        return np.sin(2 * np.pi * np.cumsum(sweep) / sample_rate) * np.exp(
            -t / 0.12
        )
    band = (
        (1000, 5000)
        if kind == "snare"
        else (0.32 * sample_rate, 0.46 * sample_rate)
    )
    sos = sps.butter(2, band, btype="bandpass", fs=sample_rate, output="sos")
    hit = sps.sosfilt(sos, rng.standard_normal(len(t))) * np.exp(
        -t / (0.08 if kind == "snare" else 0.02)
    )
    if kind == "snare":
        hit += 0.3 * np.sin(2 * np.pi * 180 * t) * np.exp(-t / 0.05)
    return 2 * hit


def _hz(midi_note):
    return 440.0 * 2 ** ((midi_note - 69) / 12)


def _mix_into(out, start, sound):
    """Adds ``sound`` into ``out`` at ``start``, dropping what falls past the end."""
    n = min(len(sound), len(out) - start)
    if n > 0:
        out[start : start + n] += sound[:n]


def synthesize_music(rng, num_samples, sample_rate=16000):
    """Music-like audio: chords, melody, often drums; random key and tempo."""
    out = np.zeros(num_samples + sample_rate * 3)
    beat = 60.0 / rng.uniform(70, 160)
    root = rng.integers(45, 57)
    scale = np.array(
        [0, 2, 4, 5, 7, 9, 11] if rng.random() < 0.5 else [0, 2, 3, 5, 7, 8, 10]
    )
    chord_timbre = rng.choice(["pad", "organ", "piano"])
    melody_timbre = rng.choice(["piano", "pluck", "organ"])
    drums = rng.random() < 0.6
    progression = rng.choice([0, 3, 4, 5], size=4)
    bar, start = 0, 0.0
    while start * sample_rate < num_samples:
        degree = progression[bar % 4]
        chord = [
            root + 12 * ((degree + k) // 7) + scale[(degree + k) % 7]
            for k in (0, 2, 4)
        ]
        for note in chord:
            i = int(start * sample_rate)
            tone = _tone(
                rng,
                _hz(note),
                int(4 * beat * sample_rate),
                chord_timbre,
                sample_rate,
            )
            _mix_into(out, i, 0.3 * tone)
        position = 0.0
        while position < 4:
            length = beat * rng.choice([0.5, 1, 1, 2])
            if rng.random() < 0.8:
                degree = rng.integers(14)
                note = root + 12 + 12 * (degree // 7) + scale[degree % 7]
                i = int((start + position * beat) * sample_rate)
                tone = _tone(
                    rng,
                    _hz(note),
                    int(length * sample_rate),
                    melody_timbre,
                    sample_rate,
                )
                _mix_into(out, i, 0.5 * tone)
            position += length / beat
        for k in range(8 if drums else 0):
            hits = ["hihat"] + (
                ["kick"] if k in (0, 4) else ["snare"] if k in (2, 6) else []
            )
            for hit in hits:
                i = int((start + k * beat / 2) * sample_rate)
                sound = _drum(rng, hit, sample_rate)
                _mix_into(out, i, 0.4 * sound)
        bar, start = bar + 1, start + 4 * beat
    return out[:num_samples]


def synthesize_rir(rng, rt60, sample_rate=16000):
    """Room impulse response: direct path, early reflections, exponential tail.

    Returns
    -------
    np.ndarray (rt60 + a few ms of samples,), peak (the direct path) at 1.
    """
    direct = int(rng.uniform(0.001, 0.004) * sample_rate)
    n = direct + int(rt60 * sample_rate)
    t = (np.arange(n) - direct) / sample_rate
    decay = np.exp(-6.9078 * np.maximum(t, 0) / rt60)  # -60 dB at rt60
    rir = np.zeros(n)
    rir[direct] = 1.0
    for delay in rng.uniform(0.002, 0.05, rng.integers(5, 13)):
        i = direct + int(delay * sample_rate)
        rir[i] += rng.choice([-1, 1]) * rng.uniform(0.2, 0.7) * decay[i]
    pole = rng.uniform(0.2, 0.6)  # air absorption: a darker tail
    tail = sps.lfilter([1 - pole], [1, -pole], rng.standard_normal(n))
    onset = np.clip((t - 0.003) / 0.01, 0, 1)
    rir += rng.uniform(0.04, 0.15) * tail * decay * onset
    return rir / np.max(np.abs(rir))


def _rng(seed, *key):
    return np.random.default_rng(np.random.SeedSequence([seed, *key]))


def _write_wav(path, x, sample_rate):
    """Writes float audio in [-1, 1] as 16-bit PCM wav, atomically."""
    path.parent.mkdir(parents=True, exist_ok=True)
    pcm = np.clip(np.round(x * 32767), -32768, 32767).astype(np.int16)
    with atomic_path(path) as tmp:
        soundfile.write(tmp, pcm, sample_rate, subtype="PCM_16", format="WAV")


def _speaker_job(out, options, speaker):
    """Writes all utterances of corpus speaker ``speaker``; returns seconds."""
    seed, sr = options["seed"], options["sample_rate"]
    voice = sample_voice(_rng(seed, _VOICE, speaker))
    sessions = [
        sample_session(_rng(seed, _SESSION, speaker, s))
        for s in range(options["sessions_per_speaker"])
    ]
    utts, seconds = options["utts_per_speaker"], 0.0
    for u in range(utts):
        s = u * len(sessions) // utts
        rng = _rng(seed, _UTTERANCE, speaker, u)
        n = int(round(rng.uniform(options["min_dur"], options["max_dur"]) * sr))
        speech = synthesize_utterance(rng, voice, n, sr, sessions[s])
        level = -23.0 + sessions[s].gain_db + rng.uniform(-2.0, 2.0)
        folder = out / SPEECH_DIR / f"spk{speaker + 1:04d}" / f"sess{s + 1}"
        _write_wav(
            folder / f"utt{u:02d}.wav", _finish(speech, rng, level, sr), sr
        )
        seconds += n / sr
    return seconds


def _noise_job(out, options, noise_type, index):
    """Writes file ``index`` of ``noise_type`` (noise, music or babble)."""
    seed, sr = options["seed"], options["sample_rate"]
    n = int(round(options["noise_dur"] * sr))
    if noise_type == "noise":
        kind = NOISE_KINDS[index % len(NOISE_KINDS)]
        rng = _rng(seed, _NOISE, index)
        audio, name = synthesize_noise(rng, kind, n, sr), f"{kind}_{index:03d}"
    elif noise_type == "music":
        rng = _rng(seed, _MUSIC, index)
        audio, name = synthesize_music(rng, n, sr), f"music_{index:03d}"
    else:  # babble of speakers who are not in the corpus
        rng = _rng(seed, _BABBLE, index)
        talkers = rng.integers(3, 7)
        audio = np.zeros(n)
        for k in range(talkers):
            voice = sample_voice(_rng(seed, _BABBLE_VOICE, index, k))
            speech = synthesize_utterance(
                _rng(seed, _BABBLE_UTTERANCE, index, k), voice, n, sr
            )
            shift = rng.integers(n)  # so that the talkers' pauses do not align
            audio += 10 ** (rng.uniform(-6, 0) / 20) * np.roll(speech, shift)
        name = f"babble{talkers}_{index:03d}"
    _write_wav(
        out / NOISE_DIR / noise_type / f"{name}.wav",
        _finish(audio, rng, -26.0, sr),
        sr,
    )
    return n / sr


def _rir_job(out, options, index):
    """Writes RIR ``index`` (RT60 within 0.2-0.8 s); returns (name, RT60)."""
    rng = _rng(options["seed"], _RIR, index)
    rt60 = 0.2 + 0.6 * (index + rng.random()) / options["num_rirs"]
    name = f"rir{index:03d}.wav"
    sample_rate = options["sample_rate"]
    _write_wav(
        out / RIR_DIR / name,
        0.9 * synthesize_rir(rng, rt60, sample_rate),
        sample_rate,
    )
    return name, round(rt60, 4)


def _count_files(out):
    """Counts the generated files actually on disk."""
    speech = out / SPEECH_DIR
    counts = {
        "speakers": (
            sum(1 for p in speech.iterdir() if p.is_dir())
            if speech.is_dir()
            else 0
        ),
        "utterances": sum(1 for _ in speech.rglob("*.wav")),
    }
    for noise_type in NOISE_TYPES:
        counts[noise_type] = sum(
            1 for _ in (out / NOISE_DIR / noise_type).glob("*.wav")
        )
    counts["rir"] = sum(1 for _ in (out / RIR_DIR).glob("*.wav"))
    return counts


def _read_manifest(path):
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def _check_options(options):
    minimum = dict(
        num_speakers=1,
        utts_per_speaker=1,
        sessions_per_speaker=1,
        num_noises=0,
        num_rirs=0,
        seed=0,
    )
    for key, low in minimum.items():
        if not isinstance(options[key], int) or options[key] < low:
            raise ValueError(
                f"generate_corpus: {key} must be an integer >= {low}, "
                f"got {options[key]!r}"
            )
    if options["sessions_per_speaker"] > options["utts_per_speaker"]:
        raise ValueError(
            "generate_corpus: sessions_per_speaker must not exceed "
            "utts_per_speaker"
        )
    if not 0 < options["noise_dur"]:
        raise ValueError(
            "generate_corpus: noise_dur must be > 0, "
            f"got {options['noise_dur']}"
        )
    if not 0 < options["min_dur"] <= options["max_dur"]:
        raise ValueError(
            "generate_corpus: need 0 < min_dur <= max_dur, "
            f"got {options['min_dur']}, {options['max_dur']}"
        )
    if options["sample_rate"] < 16000:
        raise ValueError(
            "generate_corpus: sample_rate must be >= 16000, "
            f"got {options['sample_rate']}"
        )


def _refuse_foreign_folder(out, manifest):
    """Raises FileExistsError unless ``out`` is absent, empty or a corpus this module made.

    ``manifest`` is the folder's manifest (None if it has none); a folder with
    the in-progress marker is an interrupted generation, also ours.
    """
    if not out.exists():
        return
    ours = {SPEECH_DIR, NOISE_DIR, RIR_DIR, MANIFEST, IN_PROGRESS, f".{MANIFEST}.tmp"}
    entries = sorted(os.listdir(out)) if out.is_dir() else [out.name]
    foreign = [name for name in entries if name not in ours]
    if not foreign and entries and manifest is None and IN_PROGRESS not in entries:
        foreign = entries  # speech/, noise/ or rir/ that generate_corpus did not make
    if foreign:
        raise FileExistsError(
            f"data_folder: {out} holds files that are not a generated synthetic corpus "
            f"(e.g. {foreign[0]}) and is never written to: pass --dataset=folder (with "
            "--noise_folders and --rir_folder) to train on them, or give an empty --data_folder "
            "for the synthetic corpus"
        )


def generate_corpus(
    out_folder,
    *,
    num_speakers=40,
    utts_per_speaker=12,
    sessions_per_speaker=2,
    seed=1986,
    sample_rate=16000,
    min_dur=2.0,
    max_dur=4.0,
    num_noises=16,
    num_rirs=8,
    noise_dur=6.0,
    num_workers=None,
):
    """Generates (or reuses) the synthetic speech, noises and RIRs.

    Arguments
    ---------
    out_folder : str or Path
    num_speakers, utts_per_speaker, sessions_per_speaker : int
        Utterances are split over sessions in order (by default utt00-05 in
        sess1, utt06-11 in sess2).
    seed : int
        Every file is a deterministic function of the seed and its own indices.
    min_dur, max_dur : float
        Utterance durations are uniform in this range (seconds).
    num_noises : int
        Files per noise type (noise, music, babble), ``noise_dur`` s each.
    num_rirs : int
        RIRs with RT60 spread over 0.2-0.8 s.
    num_workers : int or None
        Processes to use (None: all CPUs). Does not change the output.

    Returns
    -------
    dict: the manifest (version, options, counts of files per kind,
    speech_seconds, rir_rt60).
    """
    options = dict(
        num_speakers=num_speakers,
        utts_per_speaker=utts_per_speaker,
        sessions_per_speaker=sessions_per_speaker,
        seed=seed,
        sample_rate=sample_rate,
        min_dur=float(min_dur),
        max_dur=float(max_dur),
        num_noises=num_noises,
        num_rirs=num_rirs,
        noise_dur=float(noise_dur),
    )
    _check_options(options)
    out = Path(out_folder)
    manifest_path = out / MANIFEST
    previous = _read_manifest(manifest_path)
    if (
        previous is not None
        and previous.get("version") == VERSION
        and previous.get("options") == options
        and previous.get("counts") == _count_files(out)
    ):
        logger.info(
            "Synthetic corpus in %s matches the options, reusing it", out
        )
        return previous

    _refuse_foreign_folder(out, previous)
    ours = [out / d for d in (SPEECH_DIR, NOISE_DIR, RIR_DIR)]
    out.mkdir(parents=True, exist_ok=True)
    (out / IN_PROGRESS).write_text(json.dumps(options))
    manifest_path.unlink(missing_ok=True)
    for path in ours:
        shutil.rmtree(path, ignore_errors=True)
    logger.info(
        "Generating synthetic corpus in %s (%d speakers x %d utterances)",
        out,
        num_speakers,
        utts_per_speaker,
    )

    jobs = [(_speaker_job, (out, options, s)) for s in range(num_speakers)]
    jobs += [
        (_noise_job, (out, options, t, i))
        for t in ("babble", "music", "noise")
        for i in range(num_noises)
    ]
    jobs += [(_rir_job, (out, options, i)) for i in range(num_rirs)]
    workers = num_workers or os.cpu_count() or 1
    if workers > 1:
        # fork: workers need not re-import the caller's __main__ (train.py)
        methods = multiprocessing.get_all_start_methods()
        context = multiprocessing.get_context(
            "fork" if "fork" in methods else "spawn"
        )
        with ProcessPoolExecutor(workers, mp_context=context) as pool:
            futures = [pool.submit(function, *args) for function, args in jobs]
            results = [future.result() for future in futures]
    else:
        results = [function(*args) for function, args in jobs]

    manifest = {
        "version": VERSION,
        "options": options,
        "counts": _count_files(out),
        "speech_seconds": round(sum(results[:num_speakers]), 3),
        "rir_rt60": dict(results[len(jobs) - num_rirs :]),
    }
    write_text_atomic(manifest_path, json.dumps(manifest, indent=2))
    (out / IN_PROGRESS).unlink()
    logger.info("Synthetic corpus ready: %s", manifest["counts"])
    return manifest


def main(argv=None):
    """Command line; ``python -m anchor_reg.data.synthetic --help``."""
    parser = argparse.ArgumentParser(
        prog="python -m anchor_reg.data.synthetic",
        description=__doc__.split("\n")[0],
    )
    parser.add_argument("out_folder")
    options = inspect.signature(generate_corpus).parameters
    for name, parameter in options.items():
        if parameter.kind == parameter.KEYWORD_ONLY:
            default = parameter.default
            parser.add_argument(
                f"--{name}",
                type=int if default is None else type(default),
                default=default,
            )
    args = vars(parser.parse_args(argv))
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    manifest = generate_corpus(args.pop("out_folder"), **args)
    print(json.dumps(manifest["counts"]))


if __name__ == "__main__":
    sys.exit(main())
