#!/usr/bin/env python3
"""Side-by-side performance checks: every figure is a ratio of two things run in one process.

Needs no dataset: the speech, noises, room impulse responses and the
VoxCeleb2-sized anchor store are generated in a temporary folder (``--data``
takes the speech from real audio files instead). Absolute times depend on the
machine, so each figure compares two variants measured here, interleaved::

    python -m anchor_reg.benchmark --quick            # CPU, < 3 min on 2 cores
    python -m anchor_reg.benchmark --device cuda --precision bf16 \\
        --channels 1024 --batch_size 128 --crop 3.0   # GPU: adds utterances/s

The figures (targets in :data:`TARGETS`):

1. stage-2 step with vs without the anchor term (same model, batch, Augmenter output);
2. stage-2 step with a live teacher (a frozen copy re-embeds the clean crop) vs fixed anchors,
   for the recipe's clean + noisy batch and (no target) a noisy-only batch;
3. evaluation embeddings in length-sorted batches vs one utterance at a time;
4. the 17-condition noisy evaluation vs 17 clean passes;
5. fraction of a training step spent waiting for the DataLoader (num_workers=2);
6. the anchor store at VoxCeleb2 scale: memory, save, load, batch lookup;
7. peak memory of a stage-2 step vs a stage-1 step with as many rows;
8. training throughput (utterances/s) of stage 1 and stage 2 (no target).

A training step is built as the brains build it (``anchor_reg.brains``):
Fbank -> InputNormalization -> embedding_model -> classifier -> AAM-softmax,
plus ``AnchorStore.lookup`` + ``Augmenter.replicate_labels`` +
``AnchorDistanceLoss`` for stage 2, on the modules of ``hparams/stage2.yaml``.
Timed variants alternate (A B, B A, ...) and report medians; CPU timings
still move with whatever else runs on the machine (the table prints the load
average), so compare figures from quiet runs. Memory is compared in fresh
subprocesses (peak RSS on CPU, ``max_memory_allocated`` on GPU).

Authors
 * anchor-reg contributors
"""
import argparse
import contextlib
import copy
import csv
import functools
import importlib.util
import json
import math
import os
import pathlib
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time

import numpy as np
import soundfile
import torch

from anchor_reg.anchors import AnchorStore
from anchor_reg.atomic import write_text_atomic
from anchor_reg.config import load_hparams

REPO = pathlib.Path(__file__).resolve().parents[1]
SAMPLE_RATE = 16000
EMB_DIM = 192
VOXCELEB2_ROWS = 1_092_009  # VoxCeleb2 dev utterances
VOXCELEB2_SPEAKERS = 5994
AUDIO_EXTENSIONS = (".wav", ".flac")

# figure -> (comparison, target); "<=" means lower is better
TARGETS = {
    "anchor_term_overhead": ("<=", 1.05),
    "live_teacher_cost": (">=", 1.3),
    "batched_embedding_speedup": (">=", 3.0),
    "noisy_evaluation_cost": ("<=", 1.1),
    "data_wait_fraction": ("<=", 0.10),
    "anchor_store_memory": ("<=", 1.1),
    "anchor_store_save_s": ("<=", 3.0),
    "anchor_store_load_s": ("<=", 3.0),
    "anchor_store_lookup_ms": ("<=", 1.0),
    "peak_memory_ratio": ("<=", 1.1),
}


def figure(name, value, description, **details):
    """One result: ``value`` against its target from :data:`TARGETS` (if any)."""
    result = {"name": name, "description": description, "value": float(value)}
    if name in TARGETS:
        op, target = TARGETS[name]
        result.update(target=f"{op} {target:g}", passed=bool(value <= target if op == "<=" else value >= target))
    else:
        result.update(target=None, passed=None)
    result["details"] = details
    return result


# ----------------------------------------------------------------- timing ----
def synchronize(device):
    """Waits for queued GPU work, so wall-clock times are the work's."""
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)


def timed(function, device):
    """Seconds one call of ``function()`` takes."""
    synchronize(device)
    start = time.perf_counter()
    function()
    synchronize(device)
    return time.perf_counter() - start


def interleaved(variants, repeats, device, warmup=1):
    """Median seconds of each variant, run in alternating order to cancel drift.

    Arguments
    ---------
    variants : dict
        Name -> callable without arguments.
    repeats : int
        Timed calls of each variant.
    device : str
        Synchronised around each call.
    warmup : int
        Untimed calls of each variant first.

    Returns
    -------
    dict
        Name -> {"median_s", "times_s"}.
    """
    names = list(variants)
    for _ in range(warmup):
        for name in names:
            variants[name]()
    times = {name: [] for name in names}
    for i in range(repeats):
        for name in names if i % 2 == 0 else reversed(names):
            times[name].append(timed(variants[name], device))
    return {name: {"median_s": statistics.median(t), "times_s": [round(x, 5) for x in t]} for name, t in times.items()}


def paired_ratio(timings, numerator, denominator):
    """Median of the per-round ratios of two interleaved variants (robust to load drift)."""
    pairs = zip(timings[numerator]["times_s"], timings[denominator]["times_s"])
    return statistics.median(a / b for a, b in pairs)


# ------------------------------------------------------------------ audio ----
def voice(rng, num_samples):
    """A speech-like waveform (T,): harmonic source, gliding f0, syllable-rate envelope."""
    t = np.arange(num_samples) / SAMPLE_RATE
    f0 = rng.uniform(90, 240) * (1 + 0.08 * np.sin(2 * np.pi * rng.uniform(0.5, 2) * t))
    phase = 2 * np.pi * np.cumsum(f0) / SAMPLE_RATE
    source = sum(np.sin(k * phase) / k for k in range(1, 7))
    envelope = 0.5 * (1 + np.sin(2 * np.pi * rng.uniform(3, 5) * t + rng.uniform(0, 6)))
    wav = envelope * source + 0.01 * rng.standard_normal(num_samples)
    return (0.1 * wav / np.abs(wav).max()).astype(np.float32)


def noise_signal(rng, kind, num_samples):
    """Noise (T,) of a kind: ``noise`` (low-passed white), ``music`` (chords), ``babble``, ``rir``."""
    if kind == "noise":
        white = rng.standard_normal(num_samples)
        wav = np.convolve(white, np.ones(8) / 8, mode="same")
    elif kind == "music":
        t = np.arange(num_samples) / SAMPLE_RATE
        wav = sum(np.sin(2 * np.pi * 220 * 2 ** (rng.integers(0, 12) / 12) * t) for _ in range(3))
    elif kind == "babble":
        wav = sum(voice(rng, num_samples) for _ in range(4))
    elif kind == "rir":
        decay = np.exp(-np.arange(num_samples) / (0.05 * SAMPLE_RATE))
        wav = 0.3 * rng.standard_normal(num_samples) * decay
        wav[40] = 1.0
    else:
        raise ValueError(f"unknown noise kind '{kind}'")
    return (0.1 * wav / np.abs(wav).max()).astype(np.float32)


class SpeechSource:
    """Where benchmark speech comes from: generated voices, or real files (``--data``).

    Arguments
    ---------
    data_folder : str, optional
        Folder searched recursively for .wav/.flac (16 kHz mono); None generates.
    seed : int
        Seed of the generated voices.
    """

    def __init__(self, data_folder=None, seed=0):
        self.rng = np.random.default_rng(seed)
        self.files = []
        if data_folder is not None:
            folder = pathlib.Path(data_folder)
            self.files = sorted(p for p in folder.rglob("*") if p.suffix.lower() in AUDIO_EXTENSIONS)
            if not self.files:
                raise FileNotFoundError(f"--data {folder}: no .wav/.flac files found")
        self._next = 0

    @property
    def real(self):
        """True when the speech comes from real files."""
        return bool(self.files)

    def utterance(self, num_samples=None):
        """A waveform (T,) of ``num_samples`` (None: a real file's own length, or 2-6 s)."""
        if not self.real:
            n = num_samples or int(self.rng.uniform(2, 6) * SAMPLE_RATE)
            return voice(self.rng, n)
        path = self.files[self._next % len(self.files)]
        self._next += 1
        wav, rate = soundfile.read(str(path), dtype="float32", always_2d=True)
        if rate != SAMPLE_RATE:
            raise ValueError(f"{path} is sampled at {rate} Hz, expected {SAMPLE_RATE}")
        wav = wav[:, 0]
        if num_samples is None:
            return wav
        return np.resize(wav, num_samples)  # repeats a short file


def write_wav(path, wav):
    """Writes a 16 kHz PCM-16 file."""
    path = pathlib.Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    soundfile.write(str(path), wav, SAMPLE_RATE, subtype="PCM_16")


def write_csv(path, fieldnames, rows):
    """Writes a CSV with a header."""
    with open(path, "w", newline="", encoding="utf-8") as stream:
        writer = csv.DictWriter(stream, fieldnames=fieldnames)
        writer.writeheader()
        writer.writerows(rows)


def write_noise_set(folder, seed=0, files_per_kind=2, seconds=5.0):
    """Noise, music, babble and RIR files plus their CSVs (the preparation's columns, which
    ``speechbrain.augment`` reads: every field after ``duration`` is a name/_format/_opts triplet).

    Returns
    -------
    dict
        ``noise`` (noise + music rows), ``babble``, ``rir``: CSV paths.
    """
    rng = np.random.default_rng(seed)
    folder = pathlib.Path(folder)
    columns = ["ID", "duration", "wav", "wav_format", "wav_opts", "noise_type", "noise_type_format", "noise_type_opts"]
    rows = {"noise": [], "babble": [], "rir": []}
    for kind in ("noise", "music", "babble", "rir"):
        for k in range(files_per_kind):
            n = int((0.4 if kind == "rir" else seconds) * SAMPLE_RATE)
            path = folder / kind / f"{kind}_{k}.wav"
            write_wav(path, noise_signal(rng, kind, n))
            row = {"ID": f"{kind}_{k}", "duration": n / SAMPLE_RATE, "wav": str(path),
                   "wav_format": "wav", "wav_opts": "", "noise_type": kind, "noise_type_format": "string",
                   "noise_type_opts": ""}
            rows["noise" if kind == "music" else kind].append(row)
    csvs = {}
    for name, kind_rows in rows.items():
        csvs[name] = str(folder / f"{name}.csv")
        write_csv(csvs[name], columns, kind_rows)
    return csvs


# ------------------------------------------------------------- training ----
class TrainingSetup:
    """The stage-2 recipe's modules, losses and augmenters, ready for timed steps.

    Arguments
    ---------
    noise_csvs : dict
        From :func:`write_noise_set`.
    channels : int
        ECAPA-TDNN width C.
    num_speakers : int
        Classifier outputs.
    device : str
        ``cpu`` or ``cuda[:i]``.
    precision : str
        ``fp32``, ``fp16`` or ``bf16`` (autocast of forward and loss).
    hparams_folder : str
        Folder holding stage1.yaml and stage2.yaml.
    work_folder : str
        Where the YAMLs may write (nothing is written at load time).
    """

    def __init__(self, noise_csvs, channels=128, num_speakers=VOXCELEB2_SPEAKERS, device="cpu",
                 precision="fp32", hparams_folder=REPO / "hparams", work_folder=None):
        overrides = {
            "channels": channels,
            "emb_dim": EMB_DIM,
            "num_train_speakers": num_speakers,
            "train_noise_csv": noise_csvs["noise"],
            "train_babble_csv": noise_csvs["babble"],
            "train_rir_csv": noise_csvs["rir"],
            "output_base": str(work_folder or tempfile.gettempdir()),
        }
        self.hparams_folder = pathlib.Path(hparams_folder)
        self.overrides = overrides
        self.hparams = load_hparams(self.hparams_folder / "stage2.yaml", overrides)
        self.device = device
        self.num_speakers = num_speakers
        self.modules = torch.nn.ModuleDict(
            {k: self.hparams[k] for k in ("compute_features", "mean_var_norm", "embedding_model", "classifier")}
        ).to(device)
        self.augmenter = self.hparams["wav_augment"]
        self.optimizer = self.hparams["opt_class"](self.modules.parameters())
        self.precision = precision
        self.scaler = torch.amp.GradScaler(enabled=precision == "fp16" and torch.device(device).type == "cuda")

    @functools.cached_property
    def stage1_augmenter(self):
        """stage1.yaml's Augmenter (half of the batches get one DropFreq/DropChunk copy)."""
        return load_hparams(self.hparams_folder / "stage1.yaml", self.overrides)["wav_augment"]

    @functools.cached_property
    def noisy_only_augmenter(self):
        """stage2.yaml's Augmenter with ``clean_copies: False`` (only the noisy copy of each crop)."""
        overrides = dict(self.overrides, clean_copies=False)
        return load_hparams(self.hparams_folder / "stage2.yaml", overrides)["wav_augment"]

    def autocast(self):
        """Mixed-precision context of forward passes (a no-op for fp32)."""
        if self.precision == "fp32":
            return contextlib.nullcontext()
        dtype = {"fp16": torch.float16, "bf16": torch.bfloat16}[self.precision]
        return torch.autocast(device_type=torch.device(self.device).type, dtype=dtype)

    def embed(self, wavs, lens, modules=None):
        """(B, T) waveforms -> (B, 1, D), as ``SpeakerBrain.compute_embeddings``."""
        modules = self.modules if modules is None else modules
        feats = modules["compute_features"](wavs)
        feats = modules["mean_var_norm"](feats, lens)
        return modules["embedding_model"](feats, lens)

    def batch(self, source, batch_size, crop_seconds, seed=0):
        """A training batch of ``batch_size`` crops: ``ids``, ``wavs`` (B, T), ``lens`` (B,), ``labels`` (B, 1)."""
        n = int(crop_seconds * SAMPLE_RATE)
        wavs = torch.from_numpy(np.stack([source.utterance(n) for _ in range(batch_size)]))
        rng = np.random.default_rng(seed)
        labels = torch.from_numpy(rng.integers(0, self.num_speakers, size=(batch_size, 1)))
        ids = voxceleb2_ids(batch_size, seed=seed)
        return {"ids": ids, "wavs": wavs.to(self.device), "lens": torch.ones(batch_size, device=self.device),
                "labels": labels.to(self.device)}

    def augment(self, batch, augmenter=None):
        """The Augmenter's output for ``batch``; the augmenter keeps the state ``replicate_labels`` needs."""
        augmenter = augmenter or self.augmenter
        with torch.no_grad():
            wavs, lens = augmenter(batch["wavs"], batch["lens"])
        return wavs, lens

    def step(self, wavs, lens, labels, target=None, augmenter=None):
        """One optimizer step: forward, AAM (+ anchor-distance term), backward, update.

        Arguments
        ---------
        wavs, lens : torch.Tensor
            (B', T), (B',): the augmented batch.
        labels : torch.Tensor
            (B, 1) speaker indices of the original batch (replicated here).
        target : callable, optional
            ``target() -> (B, D)`` anchors of the original rows (replicated
            here), for the anchor-distance term; None for a stage-1 step.
        augmenter : Augmenter
            The one whose output ``wavs`` is (its ``replicate_labels`` state).
        """
        augmenter = augmenter or self.augmenter
        with self.autocast():
            emb = self.embed(wavs, lens)
            logits = self.modules["classifier"](emb)
            loss = self.hparams["compute_cost"](logits, augmenter.replicate_labels(labels), lens)
            if target is not None:
                anchors = augmenter.replicate_labels(target())
                scale = self.hparams["anchor_weight_schedule"](1, 0.5)
                loss = loss + self.hparams["anchor_loss"](emb, anchors, scale)
        self.scaler.scale(loss).backward()
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.optimizer.zero_grad(set_to_none=True)
        return loss.detach()

    def frozen_copy(self):
        """A frozen copy of the embedding path (features, normaliser, embedding model), in eval mode."""
        teacher = copy.deepcopy(
            torch.nn.ModuleDict({k: self.modules[k] for k in ("compute_features", "mean_var_norm", "embedding_model")})
        ).eval()
        for parameter in teacher.parameters():
            parameter.requires_grad_(False)
        return teacher

    def encoder(self):
        """A frozen ``EncoderClassifier`` on a copy of the modules, as evaluation loads it."""
        from speechbrain.inference.speaker import EncoderClassifier

        return EncoderClassifier(
            modules=copy.deepcopy(self.modules), hparams={}, run_opts={"device": str(self.device)}
        )


def voxceleb2_ids(num_rows, seed=0, speakers=VOXCELEB2_SPEAKERS):
    """Row IDs shaped like VoxCeleb2 training rows, e.g. ``id00012--21Uxsk56VDQ--00001_0_48000``."""
    rng = np.random.default_rng(seed)
    alphabet = np.array(list("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_-"))
    num_videos = max(1, num_rows // 7)
    videos = ["".join(chars) for chars in alphabet[rng.integers(0, len(alphabet), size=(num_videos, 11))]]
    return [
        f"id{(row % num_videos) % speakers:05d}--{videos[row % num_videos]}--{row // num_videos + 1:05d}_0_48000"
        for row in range(num_rows)
    ]


def random_store(ids, seed=0):
    """An AnchorStore of random unit anchors for ``ids`` (speaker = the ``idXXXXX`` prefix)."""
    generator = torch.Generator().manual_seed(seed)
    embeddings = torch.randn(len(ids), EMB_DIM, generator=generator)
    return AnchorStore.from_embeddings(ids, [i[:7] for i in ids], embeddings, {"base_fingerprint": "benchmark"})


# ---------------------------------------------------------------- figures ----
def bench_anchor_term(setup, batch, store, steps):
    """Figure 1: stage-2 step with / without the anchor term (same augmented batch)."""
    wavs, lens = setup.augment(batch)
    anchor_type = setup.hparams["anchor_type"]

    def lookup():
        return store.lookup(batch["ids"], anchor_type, setup.device)

    timings = interleaved(
        {
            "with_anchor": lambda: setup.step(wavs, lens, batch["labels"], target=lookup),
            "without_anchor": lambda: setup.step(wavs, lens, batch["labels"]),
        },
        steps,
        setup.device,
    )
    ratio = timings["with_anchor"]["median_s"] / timings["without_anchor"]["median_s"]
    emb = torch.randn(wavs.shape[0], 1, EMB_DIM, device=setup.device, requires_grad=True)

    def anchor_term_alone():  # lookup + replication + distance, forward and backward
        anchors = setup.augmenter.replicate_labels(lookup())
        setup.hparams["anchor_loss"](emb, anchors).backward()

    alone = interleaved({"anchor_term": anchor_term_alone}, max(20, steps), setup.device)["anchor_term"]
    return figure(
        "anchor_term_overhead", ratio, "stage-2 step time, with / without the anchor term",
        rows_through_net=int(wavs.shape[0]), store_rows=len(store),
        paired_ratio=paired_ratio(timings, "with_anchor", "without_anchor"),
        anchor_term_alone_ms=1000 * alone["median_s"],
        anchor_term_alone_over_step=alone["median_s"] / timings["without_anchor"]["median_s"], timings=timings,
    )


def bench_live_teacher(setup, batch, store, steps):
    """Figure 2: stage-2 step with a live teacher / with fixed anchors.

    Measured for the recipe's batch (clean + noisy copy of each crop, 2B rows
    through the network) and, without a target, for a noisy-only batch
    (``clean_copies: False``, B rows): the teacher always re-embeds the B clean
    crops, so its share of the step is twice as large in the second case.
    """
    teacher = setup.frozen_copy()
    anchor_type = setup.hparams["anchor_type"]

    def fixed():
        return store.lookup(batch["ids"], anchor_type, setup.device)

    def live():
        with torch.no_grad(), setup.autocast():
            return setup.embed(batch["wavs"], batch["lens"], teacher).reshape(len(batch["ids"]), -1).float()

    results = {}
    for name, augmenter in (("clean_and_noisy", setup.augmenter), ("noisy_only", setup.noisy_only_augmenter)):
        wavs, lens = setup.augment(batch, augmenter)
        timings = interleaved(
            {
                "live_teacher": lambda: setup.step(wavs, lens, batch["labels"], target=live, augmenter=augmenter),
                "fixed_anchors": lambda: setup.step(wavs, lens, batch["labels"], target=fixed, augmenter=augmenter),
            },
            steps,
            setup.device,
        )
        results[name] = dict(
            ratio=timings["live_teacher"]["median_s"] / timings["fixed_anchors"]["median_s"],
            rows_through_net=int(wavs.shape[0]), teacher_rows=len(batch["ids"]),
            paired_ratio=paired_ratio(timings, "live_teacher", "fixed_anchors"), timings=timings,
        )
    main, noisy_only = results["clean_and_noisy"], results["noisy_only"]
    return [
        figure(
            "live_teacher_cost", main.pop("ratio"),
            "stage-2 step time, live teacher (frozen copy re-embeds the clean crop) / fixed anchors", **main,
        ),
        figure(
            "live_teacher_cost_noisy_only", noisy_only.pop("ratio"),
            "the same with clean_copies=False (noisy copy only; no target: not the recipe's default)",
            **noisy_only,
        ),
    ]


def bench_batched_embedding(setup, waveforms, batch_size, repeats=1):
    """Figure 3: ``embed_utterances`` in length-sorted batches vs one utterance at a time."""
    from anchor_reg.evaluate import embed_utterances

    encoder = setup.encoder()
    ids = sorted(waveforms)
    embed_utterances(encoder, waveforms, ids[:2], batch_size)  # warm-up
    results = {}
    timings = interleaved(
        {
            "batched": lambda: results.__setitem__("batched", embed_utterances(encoder, waveforms, ids, batch_size)),
            "one_at_a_time": lambda: results.__setitem__("single", embed_utterances(encoder, waveforms, ids, 1)),
        },
        repeats,
        setup.device,
        warmup=0,
    )
    cosine = torch.nn.functional.cosine_similarity(results["batched"], results["single"], dim=1)
    lengths = [waveforms[i].numel() / SAMPLE_RATE for i in ids]
    speedup = timings["one_at_a_time"]["median_s"] / timings["batched"]["median_s"]
    return figure(
        "batched_embedding_speedup", speedup,
        "evaluation embeddings: one utterance at a time / length-sorted batches (time)",
        utterances=len(ids), batch_size=batch_size, seconds_min=round(min(lengths), 2),
        seconds_max=round(max(lengths), 2), seconds_total=round(sum(lengths), 1),
        cosine_mean=float(cosine.mean()), cosine_min=float(cosine.min()),
        max_cosine_difference=float((1 - cosine).max()), timings=timings,
        note="padded (by reflection) utterances differ slightly: ECAPA convolutions see the padding near the end",
    )


def write_eval_set(folder, source, speakers=6, utts_per_speaker=4, seconds=3.0):
    """Enrol/test CSVs and an all-pairs trial list of generated (or real) speech.

    Returns
    -------
    dict
        ``enrol_csv``, ``test_csv``, ``trials``.
    """
    folder = pathlib.Path(folder)
    columns = ["ID", "duration", "wav", "start", "stop", "spk_id"]
    sides = {"enrol": [], "test": []}
    for s in range(speakers):
        for u in range(utts_per_speaker):
            wav = source.utterance(int(seconds * SAMPLE_RATE))
            utt_id = f"spk{s:02d}/s1/utt{u:02d}"
            write_wav(folder / f"{utt_id}.wav", wav)
            row = {"ID": utt_id, "duration": len(wav) / SAMPLE_RATE, "wav": str(folder / f"{utt_id}.wav"),
                   "start": 0, "stop": len(wav), "spk_id": f"spk{s:02d}"}
            sides["enrol" if u < utts_per_speaker // 2 else "test"].append(row)
    paths = {f"{side}_csv": str(folder / f"{side}.csv") for side in sides}
    for side, rows in sides.items():
        write_csv(paths[f"{side}_csv"], columns, rows)
    paths["trials"] = str(folder / "trials.txt")
    with open(paths["trials"], "w", encoding="utf-8") as stream:
        for enrol in sides["enrol"]:
            for test in sides["test"]:
                label = int(enrol["spk_id"] == test["spk_id"])
                stream.write(f"{label} {enrol['ID']}.wav {test['ID']}.wav\n")
    return paths


def bench_noisy_evaluation(setup, eval_set, noise_csvs, batch_size):
    """Figure 4: ``evaluate_model`` with all 17 conditions / 17 x a clean-only call."""
    from anchor_reg.evaluate import evaluate_model

    encoder = setup.encoder()
    noise = {"noise": noise_csvs["noise"], "music": noise_csvs["noise"], "babble": noise_csvs["babble"]}
    counts = {}

    def run(conditions):
        output = evaluate_model(encoder, **eval_set, noise_csvs=noise, rir_csv=noise_csvs["rir"],
                                batch_size=batch_size, conditions=conditions)
        counts[len(output["conditions"])] = output["settings"]

    run(["clean"])  # warm-up
    all_conditions = None  # evaluate_model's default grid: clean, 3 types x 5 SNRs, reverb
    timings = interleaved({"clean_only": lambda: run(["clean"]), "all_conditions": lambda: run(all_conditions)},
                          1, setup.device, warmup=0)
    n_conditions = max(counts)
    ratio = timings["all_conditions"]["median_s"] / (n_conditions * timings["clean_only"]["median_s"])
    return figure(
        "noisy_evaluation_cost", ratio,
        f"evaluate_model time, {n_conditions} conditions / ({n_conditions} x clean only)",
        conditions=n_conditions, utterances=counts[n_conditions]["n_utterances"],
        corrupted_utterances=counts[n_conditions]["n_corrupted_utterances"],
        all_over_clean=timings["all_conditions"]["median_s"] / timings["clean_only"]["median_s"], timings=timings,
    )


def load_train_module():
    """train.py of the repository (its ``dataio_prep`` is the pipeline under test)."""
    spec = importlib.util.spec_from_file_location("anchor_reg_train", REPO / "train.py")
    if spec is None or not (REPO / "train.py").is_file():
        raise FileNotFoundError(f"{REPO / 'train.py'} not found: run the benchmark from a checkout of the repository")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def write_training_set(folder, source, rows, crop_seconds, crops_per_file=3, speakers=16):
    """Wav files on disk and the train/dev CSVs of ``crop_seconds`` rows (the VoxCeleb recipe's columns)."""
    folder = pathlib.Path(folder)
    crop = int(crop_seconds * SAMPLE_RATE)
    columns = ["ID", "duration", "wav", "start", "stop", "spk_id"]
    table = []
    for f in range(math.ceil(rows / crops_per_file)):
        spk = f"id{f % speakers:05d}"
        path = folder / "wav" / spk / f"utt{f:05d}.wav"
        write_wav(path, source.utterance(crop * crops_per_file))
        for c in range(crops_per_file):
            start, stop = c * crop, (c + 1) * crop
            table.append({"ID": f"{spk}--v{f:05d}--00001_{start}_{stop}", "duration": crop_seconds,
                          "wav": str(path), "start": start, "stop": stop, "spk_id": spk})
    write_csv(folder / "train.csv", columns, table[:rows])
    write_csv(folder / "dev.csv", columns, table[:4])
    return folder


def bench_data_loading(setup, train_folder, batch_size, steps, num_workers=2):
    """Figure 5: share of a stage-2 training step spent waiting for ``next(batch)``."""
    import speechbrain as sb

    train = load_train_module()
    ids, speakers = (train.read_column(train_folder / "train.csv", column) for column in ("ID", "spk_id"))
    hparams = dict(setup.hparams, prep_folder=str(train_folder), output_folder=str(train_folder),
                   save_folder=str(train_folder / "save"), num_train_speakers=len(set(speakers)))
    (train_folder / "save").mkdir(exist_ok=True)
    train_data, _, _ = train.dataio_prep(hparams)
    loader = sb.dataio.dataloader.make_dataloader(
        train_data, batch_size=batch_size, shuffle=True, num_workers=num_workers, drop_last=True
    )
    store = random_store(ids)
    waits, computes = [], []
    iterator = iter(loader)
    for _ in range(steps):
        start = time.perf_counter()
        batch = next(iterator)
        waits.append(time.perf_counter() - start)
        batch = batch.to(setup.device)
        wavs, lens = batch.sig

        def step():
            augmented, augmented_lens = setup.augmenter(wavs, lens)
            setup.step(augmented, augmented_lens, batch.spk_id_encoded.data,
                       target=lambda: store.lookup(batch.id, "utterance", setup.device))

        computes.append(timed(step, setup.device))
    del iterator
    wait, compute = sum(waits[1:]), sum(computes[1:])
    return figure(
        "data_wait_fraction", wait / (wait + compute),
        f"share of a training step waiting for data (num_workers={num_workers}, after the first batch)",
        batch_size=batch_size, steps_measured=steps - 1, first_batch_wait_s=round(waits[0], 4),
        wait_s=[round(w, 4) for w in waits], compute_s=[round(c, 4) for c in computes],
        note="compute = Augmenter + forward + backward + optimizer step of stage 2",
    )


def bench_anchor_store(num_rows, folder, lookups, batch=512):
    """Figure 6: the anchor store at VoxCeleb2 scale: memory, save, load, lookup."""
    ids = voxceleb2_ids(num_rows)
    start = time.perf_counter()
    store = random_store(ids)
    build_s = time.perf_counter() - start
    raw = num_rows * EMB_DIM * 4
    path = pathlib.Path(folder) / "anchors.pt"
    save_s = timed(lambda: store.save(path), "cpu")
    del store
    loaded = {}
    load_s = timed(lambda: loaded.__setitem__("store", AnchorStore.from_file(path)), "cpu")
    store = loaded["store"]
    rng = np.random.default_rng(0)
    queries = [[ids[k] for k in rng.integers(0, num_rows, size=batch)] for _ in range(lookups)]
    # the first pass touches the freshly loaded pages; training does thousands of lookups, so the
    # figure is the steady state (second pass) and the first pass is reported beside it
    first_pass = [timed(lambda q=q: store.lookup(q), "cpu") for q in queries]
    times = [timed(lambda q=q: store.lookup(q), "cpu") for q in queries]
    lookup_ms = 1000 * statistics.median(times)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # index_select is parallelised: on a busy machine waking a thread dominates
    try:
        one_thread_ms = 1000 * statistics.median(timed(lambda q=q: store.lookup(q), "cpu") for q in queries)
    finally:
        torch.set_num_threads(threads)
    details = {"rows": num_rows, "raw_bytes": raw, "store_nbytes": store.nbytes(), "file_bytes": path.stat().st_size,
               "build_s": round(build_s, 2), "example_id": ids[0]}
    path.unlink()
    return [
        figure("anchor_store_memory", store.nbytes() / raw,
               f"AnchorStore.nbytes / raw (N x {EMB_DIM} x 4 B), N = {num_rows:,}", **details),
        figure("anchor_store_save_s", save_s, "AnchorStore.save seconds (atomic temp file + rename)", rows=num_rows),
        figure("anchor_store_load_s", load_s, "AnchorStore.from_file seconds (file in the page cache)", rows=num_rows),
        figure("anchor_store_lookup_ms", lookup_ms,
               f"lookup of {batch} IDs, median ms over {lookups} (after a first pass)",
               rows=num_rows, torch_threads=threads, p90_ms=1000 * float(np.percentile(times, 90)),
               first_pass_median_ms=1000 * statistics.median(first_pass),
               one_thread_median_ms=one_thread_ms),
    ]


def memory_probe(kind, noise_csvs, channels, batch_size, crop, device, precision, num_speakers):
    """Peak memory (bytes) of one training step, in this (fresh) process.

    The batch is augmented by the stage-2 Augmenter (clean + noisy: 2B rows)
    for both kinds, so the same number of rows goes through the network;
    ``stage1`` adds no anchor term, ``stage2`` adds lookup + replication +
    anchor distance. One warm-up step allocates the optimizer state first,
    then the second step is measured: CPU with :func:`cpu_peak`, GPU with
    ``max_memory_allocated`` minus the bytes allocated before.
    """
    setup = TrainingSetup(noise_csvs, channels, num_speakers, device, precision)
    batch = setup.batch(SpeechSource(), batch_size, crop)
    store = random_store(batch["ids"])
    wavs, lens = setup.augment(batch)
    target = (lambda: store.lookup(batch["ids"], "utterance", device)) if kind == "stage2" else None
    setup.step(wavs, lens, batch["labels"], target)
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)
        before = torch.cuda.memory_allocated(device)
        torch.cuda.reset_peak_memory_stats(device)
        setup.step(wavs, lens, batch["labels"], target)
        torch.cuda.synchronize(device)
        peak, method = torch.cuda.max_memory_allocated(device) - before, "torch.cuda.max_memory_allocated"
    else:
        peak, method = cpu_peak(lambda: setup.step(wavs, lens, batch["labels"], target))
    return {"kind": kind, "rows": int(wavs.shape[0]), "step_peak_bytes": peak, "method": method}


def cpu_peak(function):
    """(bytes, method): how far the resident memory rises above its level before ``function()``.

    Linux: reset the peak (``VmHWM``) through ``/proc/self/clear_refs``, read it
    after the call, subtract the RSS before. Elsewhere: growth of ``ru_maxrss``
    (0 when the call stays below an earlier peak).
    """
    try:
        before = _proc_status_bytes("VmRSS")
        with open("/proc/self/clear_refs", "w", encoding="ascii") as stream:
            stream.write("5")
    except OSError:
        unit = 1 if sys.platform == "darwin" else 1024
        before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * unit
        function()
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * unit - before, "ru_maxrss growth"
    function()
    return _proc_status_bytes("VmHWM") - before, "VmHWM (reset by clear_refs) minus VmRSS before"


def _proc_status_bytes(field):
    """A ``/proc/self/status`` memory field (``VmRSS``, ``VmHWM``) in bytes."""
    with open("/proc/self/status", encoding="ascii") as stream:
        for line in stream:
            if line.startswith(f"{field}:"):
                return int(line.split()[1]) * 1024
    raise OSError(f"no {field} in /proc/self/status")


MMAP_THRESHOLD = 1 << 17  # bytes; glibc serves larger blocks with mmap and unmaps them on free


def bench_peak_memory(noise_csvs, channels, batch_size, crop, device, precision, num_speakers):
    """Figure 7: step peak memory, stage 2 / stage 1, each measured in a fresh subprocess."""
    probes = {}
    for kind in ("stage1", "stage2"):
        args = json.dumps([kind, noise_csvs, channels, batch_size, crop, device, precision, num_speakers])
        code = ("import json; from anchor_reg.benchmark import memory_probe; "
                f"print(json.dumps(memory_probe(*json.loads({args!r}))))")
        env = dict(
            os.environ,
            PYTHONPATH=os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])),
            MALLOC_MMAP_THRESHOLD_=str(MMAP_THRESHOLD),  # freed tensors leave the RSS at once
        )
        done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=False)
        if done.returncode != 0:
            raise RuntimeError(f"memory probe '{kind}' failed:\n{done.stderr[-2000:]}")
        probes[kind] = json.loads(done.stdout.strip().splitlines()[-1])
    ratio = probes["stage2"]["step_peak_bytes"] / max(1, probes["stage1"]["step_peak_bytes"])
    return figure(
        "peak_memory_ratio", ratio, f"step peak memory, stage 2 / stage 1, {probes['stage1']['rows']} rows each",
        method=probes["stage1"]["method"] + f"; each kind in a fresh subprocess with MALLOC_MMAP_THRESHOLD_="
        f"{MMAP_THRESHOLD}, second step measured",
        stage1_bytes=probes["stage1"]["step_peak_bytes"], stage2_bytes=probes["stage2"]["step_peak_bytes"],
    )


def bench_throughput(setup, batch, store, steps):
    """Figure 8 (no target): utterances/s of full training steps, augmentation included.

    Stage 1: stage1.yaml's Augmenter (half of the batches get one more
    DropFreq/DropChunk copy) and AAM; stage 2: stage2.yaml's Augmenter
    (clean + noisy copy) and AAM + anchor term.
    """
    def stage1():
        wavs, lens = setup.augment(batch, setup.stage1_augmenter)
        setup.step(wavs, lens, batch["labels"], augmenter=setup.stage1_augmenter)

    def stage2():
        wavs, lens = setup.augment(batch)
        setup.step(wavs, lens, batch["labels"], target=lambda: store.lookup(batch["ids"], "utterance", setup.device))

    timings = interleaved({"stage1": stage1, "stage2": stage2}, steps, setup.device)
    size = len(batch["ids"])
    return [
        figure(f"{stage}_utterances_per_s", size / timings[stage]["median_s"],
               f"{stage} training throughput (utterances/s, augmentation included)",
               batch_size=size, median_step_s=timings[stage]["median_s"])
        for stage in ("stage1", "stage2")
    ]


# -------------------------------------------------------------------- run ----
QUICK = {
    "steps": 4,  # timed training steps per variant (figures 1, 2; half for 8)
    "embed_utterances": 24,  # figure 3
    "utterance_seconds": (2.0, 6.0),
    "eval_speakers": 6,  # figure 4: speakers x utterances (half enrol, half test), all-pairs trials
    "eval_utterances": 4,
    "eval_seconds": 3.0,
    "loader_steps": 5,  # figure 5
    "store_rows": VOXCELEB2_ROWS,  # figure 6
    "lookups": 100,
}
FULL = dict(QUICK, steps=10, embed_utterances=64, utterance_seconds=(4.0, 12.0), eval_speakers=10,
            eval_utterances=6, loader_steps=12, lookups=500)


def run_benchmarks(options, work_folder, sizes=None, log=print):
    """Runs every figure; returns the results dict written as JSON.

    Arguments
    ---------
    options : argparse.Namespace
        See :func:`parse_args`.
    work_folder : pathlib.Path
        Scratch folder for generated audio and the store file.
    sizes : dict, optional
        Replaces entries of :data:`QUICK` / :data:`FULL`.
    log : callable
        Progress messages.
    """
    sizes = dict(QUICK if options.quick else FULL, **(sizes or {}))
    if options.store_rows:
        sizes["store_rows"] = options.store_rows
    if options.steps:
        sizes["steps"] = options.steps
    work_folder = pathlib.Path(work_folder)
    source = SpeechSource(options.data)
    noise_csvs = write_noise_set(work_folder / "noise")
    setup = TrainingSetup(noise_csvs, options.channels, options.speakers, options.device, options.precision,
                          work_folder=work_folder)
    batch = setup.batch(source, options.batch_size, options.crop)
    store = random_store(batch["ids"] + voxceleb2_ids(50_000, seed=1))
    figures = []

    def add(name, run):
        log(f"[benchmark] {name} ...")
        start = time.perf_counter()
        out = run()
        figures.extend(out if isinstance(out, list) else [out])
        log(f"[benchmark] {name}: {time.perf_counter() - start:.1f} s")

    add("1 anchor term", lambda: bench_anchor_term(setup, batch, store, sizes["steps"]))
    add("2 live teacher", lambda: bench_live_teacher(setup, batch, store, sizes["steps"]))
    rng = np.random.default_rng(1)
    waveforms = {
        f"utt{i:03d}": torch.from_numpy(np.ascontiguousarray(
            source.utterance(None if source.real else int(rng.uniform(*sizes["utterance_seconds"]) * SAMPLE_RATE))))
        for i in range(sizes["embed_utterances"])
    }
    add("3 batched embeddings", lambda: bench_batched_embedding(setup, waveforms, options.eval_batch_size))
    eval_set = write_eval_set(work_folder / "eval", source, sizes["eval_speakers"], sizes["eval_utterances"],
                              sizes["eval_seconds"])
    add("4 noisy evaluation", lambda: bench_noisy_evaluation(setup, eval_set, noise_csvs, options.eval_batch_size))
    train_folder = write_training_set(work_folder / "train", source, options.batch_size * sizes["loader_steps"],
                                      options.crop)
    add("5 data loading", lambda: bench_data_loading(setup, train_folder, options.batch_size, sizes["loader_steps"]))
    add("6 anchor store", lambda: bench_anchor_store(sizes["store_rows"], work_folder, sizes["lookups"]))
    add("7 peak memory", lambda: bench_peak_memory(noise_csvs, options.channels, options.batch_size, options.crop,
                                                  options.device, options.precision, options.speakers))
    add("8 throughput", lambda: bench_throughput(setup, batch, store, max(2, sizes["steps"] // 2)))
    device_name = (torch.cuda.get_device_name(options.device) if torch.device(options.device).type == "cuda"
                   else platform.processor() or platform.machine())
    return {
        "settings": {
            "mode": "quick" if options.quick else "full",
            "device": options.device,
            "device_name": device_name,
            "precision": options.precision,
            "channels": options.channels,
            "batch_size": options.batch_size,
            "crop_s": options.crop,
            "eval_batch_size": options.eval_batch_size,
            "speakers": options.speakers,
            "speech": str(options.data) if options.data else "generated",
            "torch": torch.__version__,
            "torch_threads": torch.get_num_threads(),
            "cpu_count": os.cpu_count(),
            "load_average": [round(x, 1) for x in os.getloadavg()] if hasattr(os, "getloadavg") else None,
            **sizes,
        },
        "figures": figures,
        "passed": sum(f["passed"] is True for f in figures),
        "failed": sum(f["passed"] is False for f in figures),
    }


def format_table(results):
    """The results as a Markdown table."""
    s = results["settings"]
    lines = [
        f"anchor-reg benchmark ({s['mode']}): {s['device']} ({s['device_name']}), {s['precision']}, "
        f"ECAPA C={s['channels']}, batch {s['batch_size']} x {s['crop_s']} s, torch {s['torch']}, "
        f"{s['torch_threads']} threads, {s['cpu_count']} CPUs, load average {s['load_average']}; "
        f"speech: {s['speech']}",
        "",
        "| figure | description | measured | target | result |",
        "|---|---|---:|---|---|",
    ]
    for f in results["figures"]:
        verdict = "–" if f["passed"] is None else ("PASS" if f["passed"] else "FAIL")
        lines.append(f"| {f['name']} | {f['description']} | {f['value']:.4g} | {f['target'] or '–'} | {verdict} |")
    lines += ["", f"{results['passed']} passed, {results['failed']} failed."]
    return "\n".join(lines)


def write_json(results, path):
    """Writes ``results`` to ``path`` atomically."""
    write_text_atomic(path, json.dumps(results, indent=2) + "\n")


def parse_args(argv=None):
    """Command-line options."""
    parser = argparse.ArgumentParser(prog="python -m anchor_reg.benchmark", description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="small sizes (< 3 min on 2 CPU cores)")
    parser.add_argument("--output", default="results/benchmark.json", help="JSON file written (atomically)")
    parser.add_argument("--device", default="cpu", help="cpu or cuda[:i]")
    parser.add_argument("--precision", default="fp32", choices=("fp32", "fp16", "bf16"))
    parser.add_argument("--channels", type=int, default=128, help="ECAPA-TDNN width C")
    parser.add_argument("--batch_size", type=int, default=32)
    parser.add_argument("--crop", type=float, default=3.0, help="training crop seconds")
    parser.add_argument("--eval_batch_size", type=int, default=16)
    parser.add_argument("--speakers", type=int, default=VOXCELEB2_SPEAKERS, help="classifier outputs")
    parser.add_argument("--store_rows", type=int, default=None, help="anchor-store rows (default: VoxCeleb2's)")
    parser.add_argument("--steps", type=int, default=None, help="timed steps per variant")
    parser.add_argument("--data", default=None, help="folder of real 16 kHz .wav/.flac speech to use")
    options = parser.parse_args(argv)
    if options.precision == "fp16" and "cuda" not in options.device:
        parser.error("--precision fp16 needs --device cuda")
    return options


def main(argv=None):
    """Runs the benchmark, prints the table, writes the JSON."""
    options = parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="anchor_reg_benchmark_") as work:
        results = run_benchmarks(options, work, log=lambda message: print(message, file=sys.stderr, flush=True))
    write_json(results, options.output)
    print(format_table(results))
    print(f"\nwrote {options.output}")


if __name__ == "__main__":
    main()
