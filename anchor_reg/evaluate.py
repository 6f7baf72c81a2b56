#!/usr/bin/env python3
"""Speaker verification under noise: EER/minDCF and embedding geometry per condition.

Conditions: ``clean``; every noise type (noise CSV) at every SNR, named
``<type>_<snr>dB``; ``reverb`` (RIR CSV) -- 17 conditions with three noise
types and five SNRs. Corruption is deterministic (see anchor_reg.corruption).
Each utterance is decoded once and kept in memory (:class:`TrialSet`); per
condition (:func:`evaluate_condition`) each utterance on the corrupted side is
corrupted, embedded once in length-sorted batches, the trials are scored by
cosine similarity (optionally s-norm or adaptive s-norm against a cohort of
training utterances) and the geometry of the embeddings is measured.

Usage
-----
Evaluate a trained stage folder or an exported model folder (the keys of
verify.yaml: ``python -m anchor_reg.evaluate hparams/verify.yaml --help``)::

    python -m anchor_reg.evaluate hparams/verify.yaml \\
        --model_path=results/default/1986/stage2 --output_folder=results/eval

Compare systems (:mod:`anchor_reg.compare`; repeat a name once per seed)::

    python -m anchor_reg.evaluate compare --output_folder=results/compare \\
        base=results/eval_base anchor=results/eval_anchor/results.json

Authors
 * anchor-reg contributors
"""

import csv
import logging
import pathlib
import re
import sys
import tempfile
import traceback

import numpy as np
import speechbrain as sb
import torch
from speechbrain.inference.speaker import EncoderClassifier

from anchor_reg import compare, plots, recipe_hparams
from anchor_reg.config import load_hparams
from anchor_reg.corruption import Corruptor, default_conditions, parse_condition, stable_seed
from anchor_reg.data.audio import read_audio_checked
from anchor_reg.data.batching import pad_by_reflection
from anchor_reg.data.trials import read_trial_list, strip_trial_extension
from anchor_reg.errors import one_line
from anchor_reg.export import export_model
from anchor_reg.metrics import (
    MIN_DCF_NOTE,
    det_curve,
    eer,
    embedding_drift,
    min_dcf,
    speaker_geometry,
)
from anchor_reg.results import results_table, write_results

logger = logging.getLogger(__name__)

NORMS = (None, "s-norm", "as-norm")


def load_encoder(path, device="cpu"):
    """Loads a speaker encoder with ``encode_batch`` from an inference model folder.

    Arguments
    ---------
    path : str or pathlib.Path
        A SpeechBrain inference folder (``hyperparams.yaml`` +
        ``embedding_model.ckpt``), e.g. an :mod:`anchor_reg.export` folder. A
        training stage folder (``hyperparams.yaml`` + ``save/``) is exported
        first (:func:`encoder_of`).
    device : str
        Device to run the encoder on.

    Returns
    -------
    speechbrain.inference.speaker.EncoderClassifier
    """
    path = pathlib.Path(path)
    if not (path / "hyperparams.yaml").is_file():
        raise FileNotFoundError(f"{path} has no hyperparams.yaml: not a model folder.")
    if not (path / "embedding_model.ckpt").is_file():
        kind = "a training stage folder: export it first" if (path / "save").is_dir() else "not an inference folder"
        raise FileNotFoundError(f"{path} has no embedding_model.ckpt ({kind}).")
    return EncoderClassifier.from_hparams(source=str(path), savedir=str(path), run_opts={"device": device})


def encoder_of(path, device="cpu"):
    """The encoder of an inference folder, or of a training stage folder (``hyperparams.yaml`` + ``save/``).

    A stage folder is exported (:func:`anchor_reg.export.export_model`) into a
    temporary folder, loaded from there and removed: nothing is written beside
    the stage, and the encoder is the one users of the export get.
    """
    path = pathlib.Path(path)
    if (path / "embedding_model.ckpt").is_file() or not (path / "save").is_dir():
        return load_encoder(path, device)
    with tempfile.TemporaryDirectory(prefix="anchor_reg_encoder_") as tmp:
        return load_encoder(export_model(path, pathlib.Path(tmp) / "export", allow_unfinished=True), device)  # evaluated, not published


def read_utterances(csv_path):
    """Rows of an enrol/test/cohort CSV (``ID,duration,wav,start,stop,spk_id``).

    Returns
    -------
    dict
        ID -> dict with ``wav`` (str), ``start``, ``stop`` (int samples) and
        ``spk_id`` (str), in file order.
    """
    with open(csv_path, newline="", encoding="utf-8") as stream:
        reader = csv.DictReader(stream)
        missing = {"ID", "wav", "start", "stop", "spk_id"} - set(reader.fieldnames or [])
        if missing:
            raise ValueError(f"{csv_path} lacks the column(s) {sorted(missing)}.")
        return {
            row["ID"]: {
                "wav": row["wav"],
                "start": int(float(row["start"])),
                "stop": int(float(row["stop"])),
                "spk_id": row["spk_id"],
            }
            for row in reader
        }


def read_trials(trials_path):
    """Trials of a VoxCeleb-format list (``1|0 <enrol> <test>`` per line).

    Returns
    -------
    list of (int, str, str)
        (label, enrol ID, test ID); IDs lose a trailing .wav/.flac/.m4a.
    """
    return [
        (label, strip_trial_extension(enrol), strip_trial_extension(test))
        for label, enrol, test in read_trial_list(trials_path)
    ]


@torch.inference_mode()
def embed_utterances(encoder, waveforms, ids, batch_size, transform=None):
    """Embeds utterances in batches of similar length.

    Utterances are sorted by decreasing length (ties by ID), so batch
    composition does not depend on the order of ``ids``. Shorter ones are
    padded by reflection (:func:`pad_by_reflection`) and their relative lengths
    passed as ``wav_lens``. With ``batch_size=1`` every embedding is that of the
    unpadded utterance; with larger batches the convolutions of e.g. ECAPA-TDNN
    see the padding near the end before the length-aware pooling, so padded
    utterances shift slightly (cosine to the unpadded embedding ≈ 0.999).

    Arguments
    ---------
    encoder : object
        Has ``encode_batch(wavs (B, T), wav_lens (B,)) -> (B, 1, D)``.
    waveforms : dict
        ID -> waveform tensor (T,).
    ids : list of str
        Utterances to embed.
    batch_size : int
        Utterances per batch.
    transform : callable, optional
        ``transform(wav, utt_id) -> wav`` applied before embedding (corruption).

    Returns
    -------
    torch.Tensor
        Embeddings in the order of ``ids``, shape (len(ids), D), float32, CPU.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}.")
    device = _encoder_device(encoder)
    order = sorted(range(len(ids)), key=lambda i: (-waveforms[ids[i]].numel(), ids[i]))
    embeddings = [None] * len(ids)
    for begin in range(0, len(order), batch_size):
        batch = order[begin : begin + batch_size]
        wavs = [waveforms[ids[i]] for i in batch]
        if transform is not None:
            wavs = [transform(wav, ids[i]) for wav, i in zip(wavs, batch)]
        lengths = torch.tensor([wav.numel() for wav in wavs], dtype=torch.float32)
        padded = pad_by_reflection(wavs)
        output = encoder.encode_batch(
            padded.to(device), (lengths / lengths.max()).to(device)
        )
        for row, i in enumerate(batch):
            embeddings[i] = output[row].reshape(-1).float().cpu()
    return torch.stack(embeddings)


def score_trials(enrol, test, cohort=None, topk=None):
    """Cosine score of each trial, optionally normalised against a cohort.

    s-norm (``topk=None``): ``0.5 * ((s - mu_e) / sd_e + (s - mu_t) / sd_t)``
    with the mean and standard deviation of the enrol (e) and test (t)
    embeddings' cosine scores against the whole cohort; as-norm (``topk``):
    the same statistics over each embedding's ``topk`` highest cohort scores.

    Arguments
    ---------
    enrol : torch.Tensor
        Enrol embedding of each trial, shape (N, D).
    test : torch.Tensor
        Test embedding of each trial, shape (N, D).
    cohort : torch.Tensor, optional
        Cohort embeddings, shape (C, D); None for raw cosine scores.
    topk : int, optional
        Adaptive s-norm: cohort scores kept per embedding.

    Returns
    -------
    torch.Tensor
        Scores, shape (N,).
    """
    enrol, test = _unit(enrol), _unit(test)
    scores = (enrol * test).sum(dim=1)
    if cohort is None:
        return scores
    normalised = 0
    for side in (enrol, test):
        cohort_scores = side @ _unit(cohort).T
        if topk is not None:
            cohort_scores = cohort_scores.topk(min(topk, cohort_scores.shape[1]), dim=1).values
        mean, std = cohort_scores.mean(dim=1), cohort_scores.std(dim=1).clamp(min=1e-8)
        normalised = normalised + 0.5 * (scores - mean) / std
    return normalised


class TrialSet:
    """The trials of an evaluation with everything every condition shares.

    Reads the enrol/test CSVs and the trial list (optionally a seeded subset
    of ``max_trials``), decodes each trial utterance once (with training's
    reader, :func:`anchor_reg.data.audio.read_audio_checked`: mono files at
    ``sample_rate``), embeds them clean and, for score normalisation, embeds
    the cohort.

    Attributes
    ----------
    trials : list of (int, str, str)
        The evaluated trials.
    index : _TrialIndex
        Rows of the trial utterances and the corrupted side.
    waveforms : dict
        Utterance ID -> (T,) waveform.
    clean : torch.Tensor
        (U, D) clean embeddings in the order of ``index.ids``.
    cohort : torch.Tensor or None
        (C, D) clean cohort embeddings.
    """

    def __init__(self, encoder, *, enrol_csv, test_csv, trials, corrupt, batch_size, seed, max_trials=None,
                 cohort_csv=None, cohort_size=2000, sample_rate=16000):
        utterances = {**read_utterances(enrol_csv), **read_utterances(test_csv)}
        self.trials = _select_trials(read_trials(trials), max_trials, seed)
        self.index = _TrialIndex(self.trials, utterances, corrupt, f"{trials} ({enrol_csv}, {test_csv})")
        self.corrupt = corrupt
        self.batch_size = batch_size
        logger.info("Decoding %d utterances", len(self.index.ids))
        self.waveforms = {utt_id: _load_segment(utterances[utt_id], sample_rate) for utt_id in self.index.ids}
        self.clean = embed_utterances(encoder, self.waveforms, self.index.ids, batch_size)
        self.cohort = None
        if cohort_csv:
            self.cohort = _embed_cohort(encoder, cohort_csv, cohort_size, batch_size, seed, sample_rate)


def evaluate_condition(encoder, trial_set, condition, corruptor, topk=None):
    """Scores the trials in one condition and measures the embeddings' geometry.

    Arguments
    ---------
    encoder : object
        Has ``encode_batch``.
    trial_set : TrialSet
        The trials, their waveforms and clean embeddings.
    condition : anchor_reg.corruption.Condition
        Clean, additive noise at an SNR, or reverb.
    corruptor : anchor_reg.corruption.Corruptor
        Corrupts the corrupted-side utterances.
    topk : int, optional
        as-norm's cohort scores per embedding (None: s-norm when the trial set has a cohort).

    Returns
    -------
    row : dict
        ``noise_type``, ``snr``, ``EER`` (%), ``minDCF``, ``n_trials``,
        ``n_target``, ``geometry``.
    curve : (torch.Tensor, torch.Tensor)
        DET points (p_fa, p_miss).
    side : torch.Tensor
        (N, D) embeddings of the corrupted-side utterances in this condition.
    """
    index, clean = trial_set.index, trial_set.clean
    embeddings = clean.clone()
    if not condition.is_clean:
        embeddings[index.side] = embed_utterances(
            encoder,
            trial_set.waveforms,
            index.side_ids,
            trial_set.batch_size,
            transform=lambda wav, utt_id: corruptor(wav, utt_id, condition),
        )
    enrol_side = embeddings if trial_set.corrupt == "both" else clean
    scores = score_trials(enrol_side[index.enrol_rows], embeddings[index.test_rows], trial_set.cohort, topk)
    target, nontarget = scores[index.labels], scores[~index.labels]
    geometry = speaker_geometry(embeddings[index.side], index.side_speakers)
    geometry["drift"] = embedding_drift(clean[index.side], embeddings[index.side])
    row = {
        "noise_type": condition.noise_type,
        "snr": condition.snr,
        "EER": 100 * eer(target, nontarget)[0],
        "minDCF": min_dcf(target, nontarget)[0],
        "n_trials": len(trial_set.trials),
        "n_target": int(index.labels.sum()),
        "geometry": geometry,
    }
    return row, det_curve(target, nontarget), embeddings[index.side]


def evaluate_model(
    encoder,
    *,
    enrol_csv,
    test_csv,
    trials,
    noise_csvs,
    rir_csv=None,
    snrs=(0, 5, 10, 15, 20),
    corrupt="test",
    norm=None,
    cohort_csv=None,
    batch_size=16,
    seed=1234,
    output_folder=None,
    system_name="model",
    conditions=None,
    max_trials=None,
    cohort_size=2000,
    norm_topk=300,
    sample_rate=16000,
):
    """Evaluates a speaker encoder on clean and corrupted trials, one condition at a time.

    Arguments
    ---------
    encoder : object
        Has ``encode_batch(wavs (B, T), wav_lens (B,)) -> (B, 1, D)``, e.g. an
        EncoderClassifier (see :func:`load_encoder`). An ``nn.Module`` is put
        in eval mode and receives inputs on the device of its parameters.
    enrol_csv, test_csv : str
        Enrol/test CSVs (``ID,duration,wav,start,stop,spk_id``).
    trials : str
        VoxCeleb-format trial list.
    noise_csvs : dict
        Noise type -> noise CSV; types mapped to None are left out.
    rir_csv : str, optional
        RIR CSV; without it there is no ``reverb`` condition.
    snrs : sequence of float
        SNRs (dB) of the additive conditions.
    corrupt : str
        ``test`` (enrol clean, test corrupted) or ``both``.
    norm : str, optional
        None, ``s-norm`` or ``as-norm``.
    cohort_csv : str, optional
        CSV of training utterances for score normalisation (needed with norm).
    batch_size : int
        Utterances per embedding batch (1 = no padding at all).
    seed : int
        Seeds corruption, trial and cohort subsampling.
    output_folder : str, optional
        Where results.json, results.md and the PNG plots go (None: no files).
    system_name : str
        Name of the system in tables and plots.
    conditions : list of str, optional
        Condition names to run (default: all); e.g. ``["clean", "noise_0dB"]``.
    max_trials : int, optional
        Evaluate a random subset of this many trials (seeded).
    cohort_size : int
        Cohort rows kept (random subset, seeded).
    norm_topk : int
        Top cohort scores used by as-norm.
    sample_rate : int
        The sample rate of every speech, noise and RIR file (each must be mono,
        as in training: anything else stops with an AudioError naming the file).

    Returns
    -------
    dict
        ``system``, ``settings``, ``min_dcf_definition`` and ``conditions``:
        name -> :func:`evaluate_condition`'s row.
    """
    if corrupt not in ("test", "both"):
        raise ValueError(f"corrupt must be 'test' or 'both', got {corrupt!r}.")
    if norm not in NORMS:
        raise ValueError(f"norm must be one of {NORMS}, got {norm!r}.")
    if norm and not cohort_csv:
        raise ValueError(f"norm={norm!r} needs cohort_csv.")
    noise_csvs = {kind: path for kind, path in (noise_csvs or {}).items() if path}
    all_conditions = default_conditions(list(noise_csvs), snrs, reverb=bool(rir_csv))
    if conditions is not None:
        all_conditions = [parse_condition(name) for name in conditions]
    corruptor = Corruptor(noise_csvs, rir_csv, seed, sample_rate)
    for condition in all_conditions:
        if not condition.is_clean:
            corruptor.sources(condition)
    if hasattr(encoder, "eval"):
        encoder.eval()

    trial_set = TrialSet(
        encoder, enrol_csv=enrol_csv, test_csv=test_csv, trials=trials, corrupt=corrupt, batch_size=batch_size,
        seed=seed, max_trials=max_trials, cohort_csv=cohort_csv if norm else None, cohort_size=cohort_size,
        sample_rate=sample_rate,
    )
    topk = norm_topk if norm == "as-norm" else None
    results, curves, side_embeddings = {}, {}, {}
    for condition in all_conditions:
        row, curves[condition.name], side_embeddings[condition.name] = evaluate_condition(
            encoder, trial_set, condition, corruptor, topk
        )
        results[condition.name] = row
        logger.info(
            "%s %s: EER %.2f%%, minDCF %.4f, drift %.4f",
            system_name, condition.name, row["EER"], row["minDCF"], row["geometry"]["drift"],
        )

    index = trial_set.index
    output = {
        "system": system_name,
        "settings": {
            "enrol_csv": str(enrol_csv),
            "test_csv": str(test_csv),
            "trials": str(trials),
            "noise_csvs": {kind: str(path) for kind, path in noise_csvs.items()},
            "rir_csv": str(rir_csv) if rir_csv else None,
            "snrs": [float(snr) for snr in snrs],
            "corrupt": corrupt,
            "norm": norm,
            "cohort_csv": str(cohort_csv) if cohort_csv else None,
            "cohort_size": cohort_size if norm else None,
            "norm_topk": topk,
            "batch_size": batch_size,
            "seed": seed,
            "max_trials": max_trials,
            "n_utterances": len(index.ids),
            "n_corrupted_utterances": len(index.side_ids),
        },
        "min_dcf_definition": MIN_DCF_NOTE,
        "conditions": results,
    }
    if output_folder is not None:
        write_results(output, output_folder)
        plots.plot_evaluation(
            output, curves, trial_set.clean[index.side], side_embeddings, index.side_speakers, output_folder
        )
    return output


# ------------------------------------------------------------ command line ----
def evaluate_from_yaml(hparams_file, overrides, device):
    """Loads the encoder and runs :func:`evaluate_model` with a verify.yaml's keys."""
    hparams = load_hparams(hparams_file, overrides)
    encoder = encoder_of(hparams["model_path"], device=device)
    keys = ("enrol_csv", "test_csv", "trials", "noise_csvs", "rir_csv", "snrs", "corrupt", "norm", "cohort_csv",
            "cohort_size", "norm_topk", "batch_size", "seed", "output_folder", "system_name", "conditions",
            "max_trials")
    optional = {key: hparams[key] for key in ("sample_rate",) if key in hparams}
    return evaluate_model(encoder, **{key: hparams[key] for key in keys}, **optional)


def yaml_keys_help(hparams_file):
    """``--key=default  description`` lines of a YAML file's top-level keys (descriptions from its comments)."""
    lines, comment = [], []
    for line in pathlib.Path(hparams_file).read_text(encoding="utf-8").splitlines():
        if line.startswith("#"):
            text = line.lstrip("#").strip()
            if text.strip("#"):
                comment.append(text)
            continue
        match = re.match(r"^([A-Za-z_]\w*):\s*(.*?)\s*$", line)
        if match:
            key, default = match.groups()
            lines.append(f"  --{key}={default or '...'}" + (f"\n      {' '.join(comment)}" if comment else ""))
            comment = []
        elif not line.strip():
            comment = []
    return "\n".join(lines)


def usage(argv):
    """Help text: the command forms, then the keys of the YAML named in ``argv`` (or verify.yaml)."""
    yaml_files = [arg for arg in argv if not arg.startswith("-") and pathlib.Path(arg).is_file()]
    hparams_file = pathlib.Path(yaml_files[0]) if yaml_files else recipe_hparams() / "verify.yaml"
    text = [
        "usage: python -m anchor_reg.evaluate HPARAMS.yaml [--key=value ...] [--device=cpu|cuda:0]",
        "       python -m anchor_reg.evaluate compare --output_folder=DIR NAME=RESULTS [NAME=RESULTS ...]",
        "",
        __doc__.split("\n")[0],
    ]
    if hparams_file.is_file():
        text += ["", f"keys of {hparams_file} (override any with --key=value):", yaml_keys_help(hparams_file)]
    else:
        text += ["", "name the YAML file (e.g. hparams/verify.yaml) before --help to list its keys"]
    return "\n".join(text)


def main(argv=None):
    """Command line: evaluate a model (HyperPyYAML) or ``compare`` systems; returns the exit code.

    Every failure is reported as one ``error:`` line on stderr (the traceback
    is logged at DEBUG level).
    """
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv and argv[0] == "compare":
        return compare.main(argv[1:], prog="python -m anchor_reg.evaluate compare")
    if not argv or "-h" in argv or "--help" in argv:
        print(usage(argv))
        return 0
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    try:
        hparams_file, run_opts, overrides = sb.parse_arguments(argv)
        device = run_opts.get("device") or ("cuda:0" if torch.cuda.is_available() else "cpu")
        results = evaluate_from_yaml(hparams_file, overrides, device)
    except Exception as err:  # noqa: BLE001 -- the command line promises one line for every failure
        logger.debug("".join(traceback.format_exception(err)))
        message = err.args[0] if isinstance(err, KeyError) and err.args else err
        print(f"error: {one_line(message, None)}", file=sys.stderr)
        return 1
    print(results_table(results))
    return 0



class _TrialIndex:
    """Rows of the trial utterances in the embedding matrices.

    ``ids``: every utterance of the trials (sorted); ``side_ids`` / ``side``
    / ``side_speakers``: the utterances corrupted in noisy conditions (test
    side, or all with ``corrupt='both'``), their rows in ``ids`` and
    speakers; ``enrol_rows``, ``test_rows`` (long) and ``labels`` (bool):
    one entry per trial.
    """

    def __init__(self, trial_list, utterances, corrupt, source):
        for _, enrol_id, test_id in trial_list:
            for utt_id in (enrol_id, test_id):
                if utt_id not in utterances:
                    raise KeyError(f"Trial utterance {utt_id} of {source} has no CSV row.")
        self.ids = sorted({utt for _, enrol, test in trial_list for utt in (enrol, test)})
        row = {utt_id: i for i, utt_id in enumerate(self.ids)}
        tests = sorted({test for _, _, test in trial_list})
        self.side_ids = self.ids if corrupt == "both" else tests
        self.side = torch.tensor([row[utt_id] for utt_id in self.side_ids])
        self.side_speakers = [utterances[utt_id]["spk_id"] for utt_id in self.side_ids]
        self.enrol_rows = torch.tensor([row[enrol] for _, enrol, _ in trial_list])
        self.test_rows = torch.tensor([row[test] for _, _, test in trial_list])
        self.labels = torch.tensor([label for label, _, _ in trial_list], dtype=torch.bool)


def _select_trials(trials, max_trials, seed):
    """All trials, or a seeded random subset of ``max_trials`` in file order."""
    if max_trials is None or max_trials >= len(trials):
        return trials
    rng = np.random.default_rng(stable_seed("trials", seed))
    keep = np.sort(rng.choice(len(trials), size=max_trials, replace=False))
    return [trials[i] for i in keep]


def _load_segment(row, sample_rate):
    """Waveform (T,) of a CSV row's [start, stop) segment, read as training reads it."""
    return read_audio_checked(row["wav"], sample_rate, row["start"], row["stop"])


def _embed_cohort(encoder, cohort_csv, cohort_size, batch_size, seed, sample_rate):
    """Clean embeddings (C, D) of a seeded subset of ``cohort_size`` CSV rows."""
    rows = read_utterances(cohort_csv)
    ids = list(rows)
    if len(ids) > cohort_size:
        rng = np.random.default_rng(stable_seed("cohort", seed))
        ids = [ids[i] for i in np.sort(rng.choice(len(ids), cohort_size, replace=False))]
    if len(ids) < 2:
        raise ValueError(f"Cohort {cohort_csv} needs at least 2 rows.")
    waveforms = {utt_id: _load_segment(rows[utt_id], sample_rate) for utt_id in ids}
    return embed_utterances(encoder, waveforms, ids, batch_size)


def _encoder_device(encoder):
    """Device of an nn.Module encoder's parameters (CPU otherwise)."""
    if isinstance(encoder, torch.nn.Module):
        for parameter in encoder.parameters():
            return parameter.device
    return torch.device("cpu")


def _unit(embeddings):
    """L2-normalised rows."""
    return torch.nn.functional.normalize(embeddings, dim=1)


if __name__ == "__main__":
    sys.exit(main())
