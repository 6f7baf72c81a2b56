#!/usr/bin/env python3
"""Speaker verification under noise: EER/minDCF and embedding geometry per condition.

Conditions: ``clean``; every noise type (noise CSV) at every SNR, named
``<type>_<snr>dB``; ``reverb`` (RIR CSV) -- 17 conditions with three noise
types and five SNRs. Corruption is deterministic (see anchor_reg.corruption).
Each utterance is decoded once and kept in memory; per condition each
utterance on the corrupted side is embedded once, in length-sorted batches.
Trials are scored by cosine similarity, optionally followed by s-norm or
adaptive s-norm (as-norm) against a cohort of training utterances.

Usage
-----
Evaluate a trained stage folder or an exported model folder::

    python -m anchor_reg.evaluate hparams/verify.yaml \\
        --model_path=results/default/1986/stage2 --output_folder=results/eval

Compare systems (repeat a name once per seed to get mean +- sd)::

    python -m anchor_reg.evaluate compare --output_folder=results/compare \\
        base=results/eval_base anchor=results/eval_anchor/results.json

Authors
 * anchor-reg contributors
"""

import argparse
import csv
import json
import logging
import pathlib
import sys

import numpy as np
import speechbrain as sb
import torch
from hyperpyyaml import load_hyperpyyaml

from anchor_reg import plots
from anchor_reg.atomic import write_text_atomic
from anchor_reg.corruption import (
    Corruptor,
    default_conditions,
    parse_condition,
    read_mono,
    stable_seed,
)
from anchor_reg.data.trials import read_trial_list, strip_trial_extension
from anchor_reg.metrics import (
    MIN_DCF_NOTE,
    det_curve,
    eer,
    embedding_drift,
    mean_and_sd,
    min_dcf,
    speaker_geometry,
)

logger = logging.getLogger(__name__)

NORMS = (None, "s-norm", "as-norm")
PROJECTION_SPEAKERS = 6
PROJECTION_UTTERANCES = 20


def load_encoder(path, device="cpu"):
    """Loads a speaker encoder with ``encode_batch`` from a model folder.

    Arguments
    ---------
    path : str or pathlib.Path
        An exported folder (``hyperparams.yaml`` + ``embedding_model.ckpt``)
        or a training stage folder (``hyperparams.yaml`` + ``save/``), which is
        first exported to ``<path>/export`` with anchor_reg.export.
    device : str
        Device to run the encoder on.

    Returns
    -------
    speechbrain.inference.speaker.EncoderClassifier
    """
    from speechbrain.inference.speaker import EncoderClassifier

    path = pathlib.Path(path)
    if not (path / "hyperparams.yaml").is_file():
        raise FileNotFoundError(f"{path} has no hyperparams.yaml: not a model folder.")
    if not (path / "embedding_model.ckpt").is_file():
        if not (path / "save").is_dir():
            raise FileNotFoundError(
                f"{path} has neither embedding_model.ckpt (exported model) "
                "nor save/ (training stage folder)."
            )
        from anchor_reg.export import export_model

        path = pathlib.Path(export_model(path, path / "export"))
    return EncoderClassifier.from_hparams(
        source=str(path), savedir=str(path), run_opts={"device": device}
    )


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


def pad_by_reflection(wavs):
    """Stacks waveforms, extending each shorter one by mirror images of itself.

    ECAPA-TDNN's convolutions pad by reflection at an utterance's end, and its
    pooling ignores frames past ``wav_lens``; a mirrored continuation keeps the
    frames near the end close to what the unpadded utterance gives (zeros, whose
    log filterbank energies are extreme, shift them more).

    Arguments
    ---------
    wavs : list of torch.Tensor
        (T_i,) waveforms, none empty.

    Returns
    -------
    torch.Tensor
        (B, max T_i).

    Example
    -------
    >>> pad_by_reflection([torch.tensor([1.0, 2.0, 3.0]), torch.tensor([4.0, 5.0])])
    tensor([[1., 2., 3.],
            [4., 5., 5.]])
    """
    longest = max(wav.numel() for wav in wavs)
    rows = []
    for wav in wavs:
        if wav.numel() == 0:
            raise ValueError("pad_by_reflection: empty waveform")
        while wav.numel() < longest:
            wav = torch.cat([wav, wav.flip(0)])
        rows.append(wav[:longest])
    return torch.stack(rows)


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
):
    """Evaluates a speaker encoder on clean and corrupted trials.

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

    Returns
    -------
    dict
        ``system``, ``settings``, ``min_dcf_definition`` and ``conditions``:
        name -> ``noise_type``, ``snr``, ``EER`` (%), ``minDCF``,
        ``n_trials``, ``n_target`` and ``geometry`` (``compactness``,
        ``separation``, ``nearest_centroid_distance`` of the corrupted-side
        utterances, and ``drift`` from their clean embeddings).
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
    corruptor = Corruptor(noise_csvs, rir_csv, seed)
    for condition in all_conditions:
        if not condition.is_clean:
            corruptor.sources(condition)
    if hasattr(encoder, "eval"):
        encoder.eval()

    utterances = {**read_utterances(enrol_csv), **read_utterances(test_csv)}
    trial_list = _select_trials(read_trials(trials), max_trials, seed)
    index = _TrialIndex(trial_list, utterances, corrupt, f"{trials} ({enrol_csv}, {test_csv})")

    logger.info("Decoding %d utterances", len(index.ids))
    waveforms = {utt_id: _load_segment(utterances[utt_id]) for utt_id in index.ids}
    clean = embed_utterances(encoder, waveforms, index.ids, batch_size)
    cohort = None
    if norm:
        cohort = _embed_cohort(encoder, cohort_csv, cohort_size, batch_size, seed)
    topk = norm_topk if norm == "as-norm" else None

    results, curves, side_embeddings = {}, {}, {}
    for condition in all_conditions:
        embeddings = clean.clone()
        if not condition.is_clean:
            embeddings[index.side] = embed_utterances(
                encoder,
                waveforms,
                index.side_ids,
                batch_size,
                transform=lambda wav, utt_id, c=condition: corruptor(wav, utt_id, c),
            )
        enrol_side = embeddings if corrupt == "both" else clean
        scores = score_trials(
            enrol_side[index.enrol_rows], embeddings[index.test_rows], cohort, topk
        )
        target, nontarget = scores[index.labels], scores[~index.labels]
        geometry = speaker_geometry(embeddings[index.side], index.side_speakers)
        geometry["drift"] = embedding_drift(clean[index.side], embeddings[index.side])
        results[condition.name] = {
            "noise_type": condition.noise_type,
            "snr": condition.snr,
            "EER": 100 * eer(target, nontarget)[0],
            "minDCF": min_dcf(target, nontarget)[0],
            "n_trials": len(trial_list),
            "n_target": int(index.labels.sum()),
            "geometry": geometry,
        }
        curves[condition.name] = det_curve(target, nontarget)
        side_embeddings[condition.name] = embeddings[index.side]
        logger.info(
            "%s %s: EER %.2f%%, minDCF %.4f, drift %.4f",
            system_name,
            condition.name,
            results[condition.name]["EER"],
            results[condition.name]["minDCF"],
            geometry["drift"],
        )

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
        _write_plots(
            output, curves, clean[index.side], side_embeddings, index.side_speakers, output_folder
        )
    return output


def write_results(results, output_folder):
    """Writes ``results.json`` and ``results.md`` (atomically)."""
    folder = pathlib.Path(output_folder)
    write_text_atomic(folder / "results.json", json.dumps(results, indent=2) + "\n")
    write_text_atomic(folder / "results.md", results_table(results))


def results_table(results):
    """Markdown table of one system: a row per condition, EER % and minDCF."""
    lines = [
        f"# {results['system']}: speaker verification per condition",
        "",
        "| Condition | EER (%) | minDCF | Trials | Drift |",
        "|---|---:|---:|---:|---:|",
    ]
    for name, cond in results["conditions"].items():
        lines.append(
            f"| {name} | {cond['EER']:.2f} | {cond['minDCF']:.4f} | "
            f"{cond['n_trials']} | {cond['geometry']['drift']:.4f} |"
        )
    settings = results["settings"]
    lines += [
        "",
        f"Corrupted side: {settings['corrupt']}; score normalisation: "
        f"{settings['norm'] or 'none'}; seed {settings['seed']}.",
        "",
        f"EER is the equal error rate; {MIN_DCF_NOTE} Drift is the mean "
        "1 - cos between clean and corrupted embeddings of the corrupted-side "
        "utterances.",
        "",
    ]
    return "\n".join(lines)


def compare_systems(systems, output_folder):
    """Side-by-side table (``comparison.md``) and ``eer_vs_snr.png`` of systems.

    Arguments
    ---------
    systems : dict
        System name -> results (a results.json path, a folder holding one, a
        results dict, or a list of those: one per seed, shown as
        ``mean ± sd (n=k)``).
    output_folder : str or pathlib.Path
        Output folder.

    Returns
    -------
    dict
        System name -> column -> list of per-seed values (None where missing).
    """
    runs = {
        name: [_load_results(item) for item in (value if isinstance(value, list) else [value])]
        for name, value in systems.items()
    }
    noise_types = plots.noise_types_in(runs)
    columns = (
        ["Clean EER (%)"]
        + [f"{kind} EER (%)" for kind in noise_types]
        + ["Reverb EER (%)", "Clean minDCF", "Corrupted minDCF", "Drift"]
    )
    per_seed = {name: [_summary(run, noise_types) for run in seeds] for name, seeds in runs.items()}
    summary = {
        name: {column: [row[column] for row in rows] for column in columns}
        for name, rows in per_seed.items()
    }
    lines = [
        "# System comparison",
        "",
        "| System | " + " | ".join(columns) + " |",
        "|---|" + "---:|" * len(columns),
    ]
    for name, values in summary.items():
        cells = [_format_cell(values[column], column) for column in columns]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    lines += [
        "",
        "Noise-type columns average the EER over SNRs; Corrupted minDCF and "
        "Drift (mean 1 - cos between clean and corrupted embeddings) average "
        "over all corrupted conditions. With several seeds: mean ± sample sd "
        f"(n = seeds). {MIN_DCF_NOTE}",
        "",
    ]
    folder = pathlib.Path(output_folder)
    write_text_atomic(folder / "comparison.md", "\n".join(lines))
    plots.plot_eer_vs_snr(runs, folder / "eer_vs_snr.png")
    return summary


def main(argv=None):
    """Command line: evaluate a model (HyperPyYAML) or ``compare`` systems."""
    argv = sys.argv[1:] if argv is None else argv
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    if argv and argv[0] == "compare":
        parser = argparse.ArgumentParser(
            prog="python -m anchor_reg.evaluate compare",
            description="Compare evaluated systems; repeat NAME once per seed.",
        )
        parser.add_argument("--output_folder", required=True)
        parser.add_argument("systems", nargs="+", metavar="NAME=RESULTS")
        args = parser.parse_args(argv[1:])
        systems = {}
        for item in args.systems:
            name, sep, path = item.partition("=")
            if not sep or not name or not path:
                parser.error(f"expected NAME=RESULTS, got {item!r}")
            systems.setdefault(name, []).append(path)
        compare_systems(systems, args.output_folder)
        print((pathlib.Path(args.output_folder) / "comparison.md").read_text())
        return

    hparams_file, run_opts, overrides = sb.parse_arguments(argv)
    with open(hparams_file, encoding="utf-8") as stream:
        hparams = load_hyperpyyaml(stream, overrides)
    device = run_opts.device or ("cuda:0" if torch.cuda.is_available() else "cpu")
    encoder = load_encoder(hparams["model_path"], device=device)
    results = evaluate_model(
        encoder,
        enrol_csv=hparams["enrol_csv"],
        test_csv=hparams["test_csv"],
        trials=hparams["trials"],
        noise_csvs=hparams["noise_csvs"],
        rir_csv=hparams["rir_csv"],
        snrs=hparams["snrs"],
        corrupt=hparams["corrupt"],
        norm=hparams["norm"],
        cohort_csv=hparams["cohort_csv"],
        cohort_size=hparams["cohort_size"],
        norm_topk=hparams["norm_topk"],
        batch_size=hparams["batch_size"],
        seed=hparams["seed"],
        output_folder=hparams["output_folder"],
        system_name=hparams["system_name"],
        conditions=hparams["conditions"],
        max_trials=hparams["max_trials"],
    )
    print(results_table(results))


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


def _load_segment(row):
    """Waveform (T,) of a CSV row's [start, stop) segment."""
    wav = read_mono(row["wav"], row["start"], row["stop"])
    if wav.numel() == 0:
        raise ValueError(f"Empty segment {row['start']}:{row['stop']} of {row['wav']}.")
    return wav


def _embed_cohort(encoder, cohort_csv, cohort_size, batch_size, seed):
    """Clean embeddings (C, D) of a seeded subset of ``cohort_size`` CSV rows."""
    rows = read_utterances(cohort_csv)
    ids = list(rows)
    if len(ids) > cohort_size:
        rng = np.random.default_rng(stable_seed("cohort", seed))
        ids = [ids[i] for i in np.sort(rng.choice(len(ids), cohort_size, replace=False))]
    if len(ids) < 2:
        raise ValueError(f"Cohort {cohort_csv} needs at least 2 rows.")
    waveforms = {utt_id: _load_segment(rows[utt_id]) for utt_id in ids}
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


def _write_plots(results, curves, clean_side, side_embeddings, speakers, output_folder):
    """EER-vs-SNR, DET and PCA figures of one evaluation."""
    folder = pathlib.Path(output_folder)
    conditions = results["conditions"]
    plots.plot_eer_vs_snr({results["system"]: [results]}, folder / "eer_vs_snr.png")

    hardest = {}
    for name, cond in conditions.items():
        kind = cond["noise_type"]
        if kind and (kind not in hardest or cond["snr"] < conditions[hardest[kind]]["snr"]):
            hardest[kind] = name
    shown = ["clean", *hardest.values(), "reverb"]
    plots.plot_det(
        {name: curves[name] for name in shown if name in curves},
        folder / "det.png",
        title=f"{results['system']}: DET",
    )

    corrupted = [name for name in conditions if name != "clean"]
    if not corrupted:
        return
    worst = max(corrupted, key=lambda name: conditions[name]["geometry"]["drift"])
    counts = {spk: speakers.count(spk) for spk in set(speakers)}
    chosen = sorted(counts, key=lambda spk: (-counts[spk], spk))[:PROJECTION_SPEAKERS]
    rows = [
        i
        for spk in chosen
        for i in [j for j, s in enumerate(speakers) if s == spk][:PROJECTION_UTTERANCES]
    ]
    plots.plot_embedding_projection(
        clean_side[rows],
        side_embeddings[worst][rows],
        [speakers[i] for i in rows],
        folder / "embeddings_pca.png",
        title=f"{results['system']}: clean vs {worst} (largest drift)",
    )


def _load_results(item):
    """Results dict from a dict, a results.json path or a folder holding one."""
    if isinstance(item, dict):
        return item
    path = pathlib.Path(item)
    if path.is_dir():
        path = path / "results.json"
    if not path.is_file():
        raise FileNotFoundError(f"No results file at {path}.")
    with open(path, encoding="utf-8") as stream:
        return json.load(stream)


def _summary(results, noise_types):
    """Comparison columns of one run (None where the run lacks them)."""
    conditions = results["conditions"]
    corrupted = [cond for name, cond in conditions.items() if name != "clean"]

    def of(name, key):
        return conditions[name][key] if name in conditions else None

    row = {
        "Clean EER (%)": of("clean", "EER"),
        "Reverb EER (%)": of("reverb", "EER"),
        "Clean minDCF": of("clean", "minDCF"),
        "Corrupted minDCF": mean_and_sd([c["minDCF"] for c in corrupted])[0],
        "Drift": mean_and_sd([c["geometry"]["drift"] for c in corrupted])[0],
    }
    for kind in noise_types:
        row[f"{kind} EER (%)"] = mean_and_sd(
            [c["EER"] for c in corrupted if c["noise_type"] == kind]
        )[0]
    return row


def _format_cell(values, column):
    """``value`` for one run, ``mean ± sd (n=k)`` for several, – when missing."""
    digits = 2 if "EER" in column else 4
    mean, sd = mean_and_sd(values)
    if mean is None:
        return "–"
    present = sum(value is not None for value in values)
    if present == 1:
        return f"{mean:.{digits}f}"
    return f"{mean:.{digits}f} ± {sd:.{digits}f} (n={present})"


if __name__ == "__main__":
    main()
