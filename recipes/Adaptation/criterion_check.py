#!/usr/bin/env python3
"""Does the label-free development criterion track held-out EER? A check on a finished adaptation run.

The criterion (``dev_criterion: anchor_retrieval``, :mod:`anchor_reg.retrieval`) is the fraction
of dev rows whose fixed noisy copy, embedded by the model, is not nearest (cosine) to its own
row's anchor among the anchors of all dev rows (the frozen base's clean embeddings). This script
computes it for every model of ``run_experiment.py``'s output folder that has a ``results.json``
(the base, every system, adaptation set and seed), on the same rows for every model:

- *adapted dev*: the labelled adaptation set's dev rows (``runs/adapt_<N>/prepared/dev.csv``) with
  their ``dev_anchors.pt``; no stage 2 trains on them (the label-free split's own dev rows include
  rows the labelled systems train on, so they are not used to compare systems);
- *broad dev*: the base's own dev rows (``runs/broad/prepared/dev.csv``, held out of the base), with
  their anchors read from the replay store (``replay_anchors.pt``, which holds every broad row):
  a probe of forgetting outside the adapted domain. The replay systems train on these rows.

Each value is paired with the model's held-out pooled clean and corrupted-mean EER
(``<run>/seed<S>/results.json``), and Spearman rank correlations are taken over the models of
each adaptation set (with the base). For every label-free run it also reads ``train_log.txt``:
the epoch the logged criterion chose against the kept checkpoint, and the criterion recomputed
here on that run's own dev rows against the logged value.

Usage::

    python recipes/Adaptation/criterion_check.py --experiment results/adaptation --output_folder OUT

Writes ``OUT/criterion.md`` and ``OUT/criterion.json``; reads the experiment folder only.
"""
import argparse
import csv
import json
import pathlib
import re
import sys
import tempfile

import torch
from scipy.stats import spearmanr

from anchor_reg.anchors import AnchorStore
from anchor_reg.checkpointer import best_checkpoint
from anchor_reg.config import plain_values, resolve
from anchor_reg.data.audio import read_audio_checked
from anchor_reg.data.dev_copies import NoisyDevCopies
from anchor_reg.evaluate import encoder_of, load_encoder
from anchor_reg.export import export_model
from anchor_reg.retrieval import retrieval_error

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
from run_experiment import ADAPTED, EQUAL_ROWS, WISE_ALPHA, WISEFT_OF, run_stats  # noqa: E402

EER_KEYS = ("clean", "corrupted", "mean", f"{ADAPTED} corrupted")  # what each criterion is ranked against
LOG_LINE = re.compile(r"epoch: (\d+),.*valid loss: ([-+.\deE]+), valid ErrorRate: ([-+.\deE]+)")


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--experiment", type=pathlib.Path, required=True,
                        help="run_experiment.py's output folder (read only)")
    parser.add_argument("--output_folder", type=pathlib.Path, required=True)
    parser.add_argument("--seeds", type=int, nargs="+", default=None, help="only these stage-2 seeds (default: all)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads")
    args = parser.parse_args(argv)
    if not (args.experiment / "data" / "speakers.json").is_file():
        parser.error(f"--experiment: {args.experiment} has no data/speakers.json (not a run_experiment.py output)")
    return args


# ---------------------------------------------------------------- runs ----
def finished_runs(experiment, seeds=None):
    """``[{"run", "system", "speakers", "seed", "stats"}]`` for every ``<run>/seed<S>/results.json``.

    Run names are ``<system>`` (the full adaptation set) or ``<system>_<N>spk``; ``speakers`` is 0
    for the base. ``stats``: :func:`run_experiment.run_stats` plus ``mean`` (of clean and corrupted).
    """
    adapt = json.loads((experiment / "data" / "speakers.json").read_text())["adapt"]
    full, small = len(adapt["full"]), len(adapt["small"])
    runs = []
    for results in sorted(experiment.glob("*/seed*/results.json")):
        run, seed = results.parent.parent.name, int(results.parent.name[len("seed"):])
        if seeds and seed not in seeds and run != "base":  # one base, whatever the stage-2 seeds
            continue
        system, speakers = (run[:-len(f"_{small}spk")], small) if run.endswith(f"_{small}spk") else (run, full)
        stats = run_stats(json.loads(results.read_text()))
        stats["mean"] = (stats["clean"] + stats["corrupted"]) / 2
        stats[f"{ADAPTED} corrupted"] = stats["corpora"].get(ADAPTED, {}).get("corrupted")
        runs.append({"run": run, "system": system, "speakers": 0 if run == "base" else speakers, "seed": seed,
                     "stats": stats})
    return runs


def stage_folder(experiment, system, speakers, seed):
    """Where a stage 2 trained (``runs/adapt_<N>/<system>/seed<S>``)."""
    return experiment / "runs" / f"adapt_{speakers}" / system / f"seed{seed}"


def settings(hyperparams_file):
    """A stage's resolved YAML values (``prep_folder``, ``anchors_folder``, noise keys ...)."""
    return plain_values(resolve(hyperparams_file))


def load_model(experiment, entry, tmp):
    """(encoder, where it came from) of a finished run, or (None, why not).

    The run's kept export when it is this seed's; otherwise the stage's best checkpoint, or for
    WiSE-FT the same ``--wise_alpha`` export the recipe made, exported under ``tmp``.
    """
    export = experiment / entry["run"] / "export"
    if entry["run"] == "base":
        return load_encoder(export), "base/export"
    kept = export / "training_hparams.yaml"
    if kept.is_file() and settings(kept)["seed"] == entry["seed"]:
        return load_encoder(export), f"{entry['run']}/export"
    if entry["system"] in EQUAL_ROWS:
        return None, "its checkpoint is chosen by run_experiment.py and kept only as the first seed's export"
    if entry["system"] == "wiseft":
        stage = stage_folder(experiment, WISEFT_OF, entry["speakers"], entry["seed"])
        out = export_model(stage, pathlib.Path(tmp) / f"{entry['run']}-{entry['seed']}", wise_alpha=WISE_ALPHA)
        return load_encoder(out), f"{WISEFT_OF} re-exported with --wise_alpha={WISE_ALPHA}"
    return encoder_of(stage_folder(experiment, entry["system"], entry["speakers"], entry["seed"])), "best checkpoint"


# ------------------------------------------------------------ dev rows ----
def audio_key(row):
    """What a prepared row is, whatever its ID: (resolved audio file, start, stop)."""
    return str(pathlib.Path(row["wav"]).resolve()), row["start"], row["stop"]


def read_rows(csv_file):
    with open(csv_file, newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


class DevRows:
    """The criterion's fixed inputs: each dev row's noisy copy (built once) and the anchors of all of them.

    Arguments
    ---------
    prep : pathlib.Path
        Prepared folder with ``dev.csv`` and the training noises the copies are drawn from.
    store_file : pathlib.Path
        An anchor store holding every dev row.
    values : dict
        ``snr_low``, ``snr_high``, ``reverb``, ``data_seed``, ``sample_rate`` (the stage's YAML values).
    store_ids : dict, optional
        audio_key -> the row's ID in the store, where the store names rows differently (replay rows).
    """

    def __init__(self, prep, store_file, values, store_ids=None):
        rows = read_rows(prep / "dev.csv")
        if store_ids is not None:
            rows = [row for row in rows if audio_key(row) in store_ids]
        copies = NoisyDevCopies.of_stage({**values, "prep_folder": prep})
        self.noisy = [copies(read_audio_checked(row["wav"], values["sample_rate"], int(row["start"]), int(row["stop"])),
                             row["ID"]) for row in rows]
        ids = [store_ids[audio_key(row)] if store_ids else row["ID"] for row in rows]
        self.gallery = AnchorStore.from_file(store_file).lookup(ids)  # (N, D): the anchors of all dev rows

    def error(self, encoder):
        """The retrieval error (in [0, 1]) of ``encoder``'s embeddings of the noisy copies."""
        with torch.no_grad():
            queries = torch.cat([encoder.encode_batch(wav.unsqueeze(0)).reshape(1, -1) for wav in self.noisy])
        return retrieval_error(queries, torch.arange(len(self.noisy)), self.gallery)


def adapted_dev(experiment, speakers):
    """The labelled adaptation set's dev rows, as its stages' criterion reads them."""
    values = settings(next(iter(sorted((experiment / "runs" / f"adapt_{speakers}").glob("*/seed*/hyperparams.yaml")))))
    folder = experiment / "runs" / f"adapt_{speakers}"
    return DevRows(folder / "prepared", next(iter(sorted(folder.glob("*/dev_anchors.pt")))), values)


def broad_dev(experiment):
    """The base's dev rows with their anchors from a replay store (None without one)."""
    stores = sorted((experiment / "runs").glob("adapt_*/*/replay_anchors.pt"))
    if not stores:
        return None
    replay = {audio_key(row): row["ID"] for row in read_rows(stores[0].parents[1] / "prepared" / "replay.csv")}
    broad = experiment / "runs" / "broad"
    return DevRows(broad / "prepared", stores[0], settings(broad / "stage1" / "hyperparams.yaml"), replay)


# ---------------------------------------------------------- label-free ----
def logged_epochs(train_log):
    """``{epoch: (valid loss, valid ErrorRate)}`` of a ``train_log.txt`` (the last line of an epoch wins)."""
    epochs = {}
    for line in pathlib.Path(train_log).read_text(encoding="utf-8").splitlines():
        match = LOG_LINE.search(line)
        if match:
            epochs[int(match[1])] = (float(match[2]), float(match[3]))
    return epochs


def epoch_choice(stage, encoder, dev_cache):
    """For a label-free stage: the logged criterion per epoch, its choice, the kept checkpoint's epoch,
    and the criterion recomputed on the stage's own dev rows at that checkpoint."""
    epochs = logged_epochs(stage / "train_log.txt")
    best_error = min(error for _, error in epochs.values())
    ties = [e for e, (_, error) in epochs.items() if error == best_error]
    best_loss = min(loss for loss, _ in epochs.values())
    kept = best_checkpoint(stage / "save")
    values = settings(stage / "hyperparams.yaml")
    # dev_anchors.pt sits beside the anchors file (stages of older YAMLs name its folder, anchors_folder)
    folder = values.get("anchors_folder") or pathlib.Path(values["anchors"]).parent
    key = (values["prep_folder"], str(folder))
    if key not in dev_cache:
        dev_cache[key] = DevRows(pathlib.Path(key[0]), pathlib.Path(key[1]) / "dev_anchors.pt", values)
    return {
        "logged": {e: error for e, (_, error) in epochs.items()},
        "criterion_epochs": ties,
        "chosen": max(ties),  # the latest among equals, as best_checkpoint keeps
        "kept": kept.meta["epoch"] if kept else None,
        "loss_epoch": max(e for e, (loss, _) in epochs.items() if loss == best_loss),
        "logged_at_kept": float(kept.meta["ErrorRate"]) if kept else None,
        "recomputed": dev_cache[key].error(encoder),
        "dev_rows": len(dev_cache[key].noisy),
    }


# ------------------------------------------------------------- report ----
def correlations(points, column):
    """``{eer_key: (rho, p, n)}``: Spearman's rank correlation of ``column`` with each held-out EER (over the
    points that have both; none for fewer than 3 points or a constant side, where it is undefined)."""
    result = {}
    for key in EER_KEYS:
        pairs = [(p[column], p["stats"][key]) for p in points
                 if p.get(column) is not None and p["stats"][key] is not None]
        if len(pairs) >= 3 and all(len(set(side)) > 1 for side in zip(*pairs)):
            rho, pvalue = spearmanr(*zip(*pairs))
            result[key] = (float(rho), float(pvalue), len(pairs))
    return result


def percent(value):
    return "–" if value is None else f"{100 * value:.2f}"


def correlation_lines(title, points, columns):
    lines = [f"{title}", "", "| criterion | n | " + " | ".join(f"ρ vs {k} EER (p)" for k in EER_KEYS) + " |",
             "|---|---:|" + "---:|" * len(EER_KEYS)]
    for column, label in columns:
        found = correlations(points, column)
        if found:
            n = max(v[2] for v in found.values())
            cells = [f"{found[k][0]:+.2f} ({found[k][1]:.2f})" if k in found else "–" for k in EER_KEYS]
            lines.append(f"| {label} | {n} | " + " | ".join(cells) + " |")
    return lines + [""]


def report(groups, checks, dev_sizes, skipped=()):
    """Markdown: per adaptation set, the table and the correlations; the label-free epoch check; the
    ``skipped`` ``(run, seed, why)``."""
    columns = (("adapted", "adapted dev"), ("broad", "broad dev"))
    lines = ["# The label-free dev criterion against held-out EER", "",
             "Criterion: noisy -> anchor retrieval error (%) of the dev rows among all dev anchors "
             "(`anchor_reg.retrieval`). EER (%): held-out test speakers of every corpus, pooled; corrupted = "
             f"mean over noise, music, babble x 0-20 dB and reverb; mean = (clean + corrupted) / 2; {ADAPTED} = "
             "the adapted corpus' own trials. Broad dev rows are training rows of the replay systems.", ""]
    for speakers, points in groups.items():
        lines += [f"## {speakers} adaptation speakers ({dev_sizes[speakers]} adapted dev rows, "
                  f"{dev_sizes['broad']} broad dev rows)", "",
                  "| run | seed | adapted dev | broad dev | clean EER | corrupted EER | mean | "
                  f"{ADAPTED} corrupted | model |", "|---|---:|---:|---:|---:|---:|---:|---:|---|"]
        for p in points:
            s = p["stats"]
            adapted_eer = s[f"{ADAPTED} corrupted"]
            lines.append(f"| {p['run']} | {p['seed']} | {percent(p.get('adapted'))} | {percent(p.get('broad'))} | "
                         f"{s['clean']:.2f} | {s['corrupted']:.2f} | {s['mean']:.2f} | "
                         f"{'–' if adapted_eer is None else f'{adapted_eer:.2f}'} | {p['source']} |")
        lines += [""] + correlation_lines("Spearman ρ over these models (p two-sided):", points, columns)
    everyone = [p for points in groups.values() for p in points]
    unique = list({(p["run"], p["seed"]): p for p in everyone}.values())
    lines += correlation_lines("## Broad dev over every model (both adaptation sets, the base once)", unique,
                               (("broad", "broad dev"),))
    lines += ["## Label-free runs: the epoch the criterion chose", "",
              "| run | seed | logged criterion per epoch (%) | lowest at | chosen | kept checkpoint | "
              "lowest dev loss at | logged at kept (%) | recomputed here (%) | dev rows |",
              "|---|---:|---|---|---:|---:|---:|---:|---:|---:|"]
    for (run, seed), c in checks.items():
        logged = ", ".join(f"{e}: {100 * v:.1f}" for e, v in sorted(c["logged"].items()))
        lines.append(f"| {run} | {seed} | {logged} | {c['criterion_epochs']} | {c['chosen']} | {c['kept']} | "
                     f"{c['loss_epoch']} | {percent(c['logged_at_kept'])} | {percent(c['recomputed'])} | "
                     f"{c['dev_rows']} |")
    lines += ["", "Chosen: the lowest logged criterion, the latest epoch among equals (what the export keeps). "
              "Dev loss: the mean cosine distance of the dev embeddings to their anchors. Recomputed: this "
              "script's criterion on the run's own dev rows at the kept checkpoint (rows embedded one at a "
              "time, training embeds padded batches). Only the kept checkpoint exists, so held-out EER at the "
              "other epochs is not known.", ""]
    if skipped:
        lines += ["Not checked: " + "; ".join(f"{run} seed {seed} ({why})" for run, seed, why in skipped) + ".", ""]
    return "\n".join(lines)


def main(argv=None):
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    experiment = args.experiment.resolve()
    runs = finished_runs(experiment, args.seeds)
    sizes = sorted({entry["speakers"] for entry in runs if entry["speakers"]}, reverse=True)
    devs = {speakers: adapted_dev(experiment, speakers) for speakers in sizes}
    broad = broad_dev(experiment)
    dev_sizes = {**{s: len(d.noisy) for s, d in devs.items()}, "broad": len(broad.noisy) if broad else 0}
    groups, checks, dev_cache, skipped = {speakers: [] for speakers in sizes}, {}, {}, []
    with tempfile.TemporaryDirectory(prefix="criterion_check_") as tmp:
        for entry in runs:
            encoder, source = load_model(experiment, entry, tmp)
            entry["source"] = source
            print(f"{entry['run']} seed {entry['seed']}: {source}", flush=True)
            if encoder is None:
                skipped.append((entry["run"], entry["seed"], source))
                continue
            entry["broad"] = broad.error(encoder) if broad else None
            for speakers in ([entry["speakers"]] if entry["speakers"] else sizes):
                groups[speakers].append({**entry, "adapted": devs[speakers].error(encoder)})
            stage = stage_folder(experiment, entry["system"], entry["speakers"], entry["seed"])
            hyperparams = stage / "hyperparams.yaml"  # views (wiseft, equal rows) have no stage of their own
            if hyperparams.is_file() and settings(hyperparams).get("dev_criterion") == "anchor_retrieval":
                checks[(entry["run"], entry["seed"])] = epoch_choice(stage, encoder, dev_cache)
    args.output_folder.mkdir(parents=True, exist_ok=True)
    (args.output_folder / "criterion.md").write_text(report(groups, checks, dev_sizes, skipped), encoding="utf-8")
    (args.output_folder / "criterion.json").write_text(json.dumps({
        "dev_rows": dev_sizes,
        "models": {str(s): points for s, points in groups.items()},
        "correlations": {str(s): {c: correlations(points, c) for c in ("adapted", "broad")}
                         for s, points in groups.items()},
        "label_free": [{"run": run, "seed": seed, **c} for (run, seed), c in checks.items()],
    }, indent=2, default=str) + "\n", encoding="utf-8")
    print((args.output_folder / "criterion.md").read_text(encoding="utf-8"))


if __name__ == "__main__":
    main()
