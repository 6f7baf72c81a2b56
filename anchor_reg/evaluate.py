#!/usr/bin/env python3
"""Speaker verification under noise: EER/minDCF and embedding geometry per condition (``clean``,
``<noise type>_<snr>dB``, ``reverb``); cosine scores, optionally s-norm / as-norm against a cohort."""
import logging
import pathlib
import re
import sys
import tempfile
import traceback

import numpy as np
import speechbrain as sb
import torch
from torch.nn.functional import normalize

from anchor_reg import compare, plots, recipe_hparams
from anchor_reg.config import load_hparams
from anchor_reg.corruption import Corruptor, default_conditions, parse_condition, stable_seed
from anchor_reg.data.batching import pad_by_reflection
from anchor_reg.data.cache import read_segment, read_utterances
from anchor_reg.data.trials import read_trial_list, strip_trial_extension
from anchor_reg.errors import one_line
from anchor_reg.export import export_model, load_encoder
from anchor_reg.metrics import MIN_DCF_NOTE, det_curve, eer, embedding_drift, min_dcf, speaker_geometry
from anchor_reg.results import results_table, write_results

logger = logging.getLogger(__name__)

NORMS = (None, "s-norm", "as-norm")
# verify.yaml's keys passed to evaluate_model (and sample_rate when the YAML sets it).
VERIFY_KEYS = ("enrol_csv", "test_csv", "trials", "noise_csvs", "rir_csv", "snrs", "corrupt", "norm", "cohort_csv",
               "cohort_size", "norm_topk", "batch_size", "seed", "output_folder", "system_name", "conditions",
               "max_trials")


def encoder_of(path, device="cpu"):
    """The encoder of an inference folder, or of a stage folder exported into a temporary folder (as users get it)."""
    path = pathlib.Path(path)
    if (path / "embedding_model.ckpt").is_file() or not (path / "save").is_dir():
        return load_encoder(path, device)
    with tempfile.TemporaryDirectory(prefix="anchor_reg_encoder_") as tmp:
        return load_encoder(export_model(path, pathlib.Path(tmp) / "export", allow_unfinished=True), device)


def read_trials(trials_path):
    """``[(label, enrol ID, test ID)]`` of a VoxCeleb-format list; IDs lose a trailing .wav/.flac/.m4a."""
    return [(label, strip_trial_extension(enrol), strip_trial_extension(test))
            for label, enrol, test in read_trial_list(trials_path)]


@torch.inference_mode()
def embed_utterances(encoder, waveforms, ids, batch_size, transform=None):
    """Embeddings (len(ids), D), float32 on CPU, of ``transform(waveforms[id], id)`` (T,) by ``encode_batch``,
    in length-sorted batches padded by reflection (only ``batch_size=1`` is exact: cosine about 0.999)."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}.")
    parameter = next(encoder.parameters(), None) if isinstance(encoder, torch.nn.Module) else None
    device = torch.device("cpu") if parameter is None else parameter.device
    order = sorted(range(len(ids)), key=lambda i: (-waveforms[ids[i]].numel(), ids[i]))
    embeddings = [None] * len(ids)
    for begin in range(0, len(order), batch_size):
        batch = order[begin : begin + batch_size]
        wavs = [waveforms[ids[i]] for i in batch]
        if transform is not None:
            wavs = [transform(wav, ids[i]) for wav, i in zip(wavs, batch)]
        lengths = torch.tensor([wav.numel() for wav in wavs], dtype=torch.float32)
        output = encoder.encode_batch(pad_by_reflection(wavs).to(device), (lengths / lengths.max()).to(device))
        for row, i in enumerate(batch):
            embeddings[i] = output[row].reshape(-1).float().cpu()
    return torch.stack(embeddings)


def score_trials(enrol, test, cohort=None, topk=None):
    """Cosine scores (N,) of enrol/test embeddings (N, D); with a cohort (C, D) s-norm
    ``0.5 * ((s - mu_e) / sd_e + (s - mu_t) / sd_t)``, or as-norm over each side's ``topk`` best cohort scores."""
    enrol, test = normalize(enrol, dim=1), normalize(test, dim=1)
    scores = (enrol * test).sum(dim=1)
    if cohort is None:
        return scores
    normalised = 0
    for side in (enrol, test):
        cohort_scores = side @ normalize(cohort, dim=1).T
        if topk is not None:
            cohort_scores = cohort_scores.topk(min(topk, cohort_scores.shape[1]), dim=1).values
        mean, std = cohort_scores.mean(dim=1), cohort_scores.std(dim=1).clamp(min=1e-8)
        normalised = normalised + 0.5 * (scores - mean) / std
    return normalised


class TrialSet:
    """What every condition shares: ``trials`` (a seeded subset of ``max_trials``), ``index``, ``waveforms``
    (ID -> (T,), decoded once by training's reader), ``clean`` ((U, D), ``index.ids`` order), ``cohort`` (C, D)."""

    def __init__(self, encoder, *, enrol_csv, test_csv, trials, corrupt, batch_size, seed, max_trials=None,
                 cohort_csv=None, cohort_size=2000, sample_rate=16000):
        utterances = {**read_utterances(enrol_csv), **read_utterances(test_csv)}
        self.trials = _seeded_subset(read_trials(trials), max_trials, "trials", seed)
        self.index = _TrialIndex(self.trials, utterances, corrupt, f"{trials} ({enrol_csv}, {test_csv})")
        self.corrupt = corrupt
        self.batch_size = batch_size
        logger.info("Decoding %d utterances", len(self.index.ids))
        self.waveforms = {utt_id: read_segment(utterances[utt_id], sample_rate) for utt_id in self.index.ids}
        self.clean = embed_utterances(encoder, self.waveforms, self.index.ids, batch_size)
        self.cohort = None
        if cohort_csv:  # clean embeddings of a seeded subset of cohort_size rows
            rows = read_utterances(cohort_csv)
            ids = _seeded_subset(list(rows), cohort_size, "cohort", seed)
            if len(ids) < 2:
                raise ValueError(f"Cohort {cohort_csv} needs at least 2 rows.")
            cohort = {utt_id: read_segment(rows[utt_id], sample_rate) for utt_id in ids}
            self.cohort = embed_utterances(encoder, cohort, ids, batch_size)


def evaluate_condition(encoder, trial_set, condition, corruptor, topk=None):
    """Scores one condition: its row (``EER`` (%), ``minDCF``, ``geometry`` ...), DET (p_fa, p_miss) and the
    (N, D) corrupted-side embeddings."""
    index, clean = trial_set.index, trial_set.clean
    embeddings = clean.clone()
    if not condition.is_clean:
        embeddings[index.side] = embed_utterances(
            encoder, trial_set.waveforms, index.side_ids, trial_set.batch_size,
            transform=lambda wav, utt_id: corruptor(wav, utt_id, condition))
    enrol_side = embeddings if trial_set.corrupt == "both" else clean
    scores = score_trials(enrol_side[index.enrol_rows], embeddings[index.test_rows], trial_set.cohort, topk)
    target, nontarget = scores[index.labels], scores[~index.labels]
    geometry = speaker_geometry(embeddings[index.side], index.side_speakers)
    geometry["drift"] = embedding_drift(clean[index.side], embeddings[index.side])
    row = {"noise_type": condition.noise_type, "snr": condition.snr, "EER": 100 * eer(target, nontarget)[0],
           "minDCF": min_dcf(target, nontarget)[0], "n_trials": len(trial_set.trials),
           "n_target": int(index.labels.sum()), "geometry": geometry}
    return row, det_curve(target, nontarget), embeddings[index.side]


def evaluate_model(encoder, *, enrol_csv, test_csv, trials, noise_csvs, rir_csv=None, snrs=(0, 5, 10, 15, 20),
                   corrupt="test", norm=None, cohort_csv=None, batch_size=16, seed=1234, output_folder=None,
                   system_name="model", conditions=None, max_trials=None, cohort_size=2000, norm_topk=300,
                   sample_rate=16000):
    """Evaluates an encoder (``encode_batch``) on clean and corrupted trials; returns the results dict
    (:mod:`anchor_reg.results`), also written with the figures to ``output_folder`` unless None.

    ``noise_csvs``: noise type -> CSV; ``rir_csv`` adds ``reverb``; ``corrupt``: ``test`` or ``both``;
    ``norm`` (s-norm, as-norm) needs ``cohort_csv``; audio not mono at ``sample_rate`` raises AudioError.
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

    trial_set = TrialSet(encoder, enrol_csv=enrol_csv, test_csv=test_csv, trials=trials, corrupt=corrupt,
                         batch_size=batch_size, seed=seed, max_trials=max_trials,
                         cohort_csv=cohort_csv if norm else None, cohort_size=cohort_size, sample_rate=sample_rate)
    topk = norm_topk if norm == "as-norm" else None
    results, curves, side_embeddings = {}, {}, {}
    for condition in all_conditions:
        row, curves[condition.name], side_embeddings[condition.name] = evaluate_condition(
            encoder, trial_set, condition, corruptor, topk)
        results[condition.name] = row
        logger.info("%s %s: EER %.2f%%, minDCF %.4f, drift %.4f",
                    system_name, condition.name, row["EER"], row["minDCF"], row["geometry"]["drift"])

    index = trial_set.index
    settings = {
        "enrol_csv": str(enrol_csv), "test_csv": str(test_csv), "trials": str(trials),
        "noise_csvs": {kind: str(path) for kind, path in noise_csvs.items()},
        "rir_csv": str(rir_csv) if rir_csv else None, "snrs": [float(snr) for snr in snrs],
        "corrupt": corrupt, "norm": norm,
        "cohort_csv": str(cohort_csv) if cohort_csv else None, "cohort_size": cohort_size if norm else None,
        "norm_topk": topk, "batch_size": batch_size, "seed": seed, "max_trials": max_trials,
        "n_utterances": len(index.ids), "n_corrupted_utterances": len(index.side_ids),
    }
    output = {"system": system_name, "settings": settings, "min_dcf_definition": MIN_DCF_NOTE, "conditions": results}
    if output_folder is not None:
        write_results(output, output_folder)
        plots.plot_evaluation(output, curves, trial_set.clean[index.side], side_embeddings, index.side_speakers,
                              output_folder)
    return output


def usage(argv):
    """Help text: the command forms, then ``--key=default`` and its comment for each top-level key of the YAML
    named in ``argv`` (or verify.yaml)."""
    yaml_files = [arg for arg in argv if not arg.startswith("-") and pathlib.Path(arg).is_file()]
    hparams_file = pathlib.Path(yaml_files[0]) if yaml_files else recipe_hparams() / "verify.yaml"
    text = ["usage: python -m anchor_reg.evaluate HPARAMS.yaml [--key=value ...] [--device=cpu|cuda:0]",
            "       python -m anchor_reg.evaluate compare --output_folder=DIR NAME=RESULTS [NAME=RESULTS ...]",
            "", __doc__.split("\n")[0], ""]
    if not hparams_file.is_file():
        return "\n".join(text + ["name the YAML file (e.g. hparams/verify.yaml) before --help to list its keys"])
    text.append(f"keys of {hparams_file} (override any with --key=value):")
    comment = []
    for line in hparams_file.read_text(encoding="utf-8").splitlines():
        match = re.match(r"^([A-Za-z_]\w*):\s*(.*?)\s*$", line)
        if line.startswith("#") and line.lstrip("#").strip().strip("#"):
            comment.append(line.lstrip("#").strip())
        elif match:
            text.append(f"  --{match[1]}={match[2] or '...'}" + (f"\n      {' '.join(comment)}" if comment else ""))
        if match or not line.strip():
            comment = []
    return "\n".join(text)


def main(argv=None):
    """Command line: evaluate a model (verify.yaml) or ``compare`` systems; every failure is one ``error:`` line."""
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv and argv[0] == "compare":
        return compare.main(argv[1:], prog="python -m anchor_reg.evaluate compare")
    if not argv or "-h" in argv or "--help" in argv:
        print(usage(argv))
        return 0
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    try:
        hparams_file, run_opts, overrides = sb.parse_arguments(argv)
        hparams = load_hparams(hparams_file, overrides)
        device = run_opts.get("device") or ("cuda:0" if torch.cuda.is_available() else "cpu")
        encoder = encoder_of(hparams["model_path"], device=device)
        optional = {"sample_rate": hparams["sample_rate"]} if "sample_rate" in hparams else {}
        results = evaluate_model(encoder, **{key: hparams[key] for key in VERIFY_KEYS}, **optional)
    except Exception as err:  # noqa: BLE001 -- the command line promises one line for every failure
        logger.debug("".join(traceback.format_exception(err)))
        message = err.args[0] if isinstance(err, KeyError) and err.args else err
        print(f"error: {one_line(message, None)}", file=sys.stderr)
        return 1
    print(results_table(results))
    return 0


class _TrialIndex:
    """Rows in the embedding matrices: ``ids`` (sorted trial utterances); ``side_ids`` / ``side`` / ``side_speakers``
    (the corrupted ones, their rows, speakers); per trial ``enrol_rows``, ``test_rows`` and ``labels`` (bool)."""

    def __init__(self, trial_list, utterances, corrupt, source):
        missing = [utt for _, enrol, test in trial_list for utt in (enrol, test) if utt not in utterances]
        if missing:
            raise KeyError(f"Trial utterance {missing[0]} of {source} has no CSV row.")
        self.ids = sorted({utt for _, enrol, test in trial_list for utt in (enrol, test)})
        row = {utt_id: i for i, utt_id in enumerate(self.ids)}
        self.side_ids = self.ids if corrupt == "both" else sorted({test for _, _, test in trial_list})
        self.side = torch.tensor([row[utt_id] for utt_id in self.side_ids])
        self.side_speakers = [utterances[utt_id]["spk_id"] for utt_id in self.side_ids]
        self.enrol_rows = torch.tensor([row[enrol] for _, enrol, _ in trial_list])
        self.test_rows = torch.tensor([row[test] for _, _, test in trial_list])
        self.labels = torch.tensor([label for label, _, _ in trial_list], dtype=torch.bool)


def _seeded_subset(items, size, name, seed):
    """``items``, or a random subset of ``size`` of them in their order, seeded by ``name`` and ``seed``."""
    if size is None or size >= len(items):
        return items
    rng = np.random.default_rng(stable_seed(name, seed))
    return [items[i] for i in np.sort(rng.choice(len(items), size=size, replace=False))]


if __name__ == "__main__":
    sys.exit(main())
