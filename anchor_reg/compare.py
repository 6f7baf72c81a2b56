#!/usr/bin/env python3
"""Evaluated systems side by side (``comparison.md``, ``eer_vs_snr.png``); a name repeated per seed: mean ± sd.

    python -m anchor_reg.compare --output_folder=OUT base=results/eval_base anchor=results/eval_anchor/results.json
"""
import argparse
import pathlib
import sys

from anchor_reg import plots
from anchor_reg.atomic import write_text_atomic
from anchor_reg.errors import ResultsError
from anchor_reg.metrics import MIN_DCF_NOTE, mean_and_sd
from anchor_reg.results import load_results, markdown_table


def compare_systems(systems, output_folder):
    """Writes ``comparison.md`` and ``eer_vs_snr.png`` of ``{name: results or [results per seed]}``; returns
    ``{name: {column: [value per seed (None where missing)]}}``."""
    runs = {name: [load_results(item) for item in (value if isinstance(value, list) else [value])]
            for name, value in systems.items()}
    noise_types = plots.noise_types_in(runs)
    columns = ["Clean EER (%)", *(f"{kind} EER (%)" for kind in noise_types),
               "Reverb EER (%)", "Clean minDCF", "Corrupted minDCF", "Drift"]
    summary = {}
    for name, seeds in runs.items():
        rows = [_summary(run, noise_types) for run in seeds]
        summary[name] = {column: [row[column] for row in rows] for column in columns}
    rows = [[name, *(_format_cell(values[column], column) for column in columns)] for name, values in summary.items()]
    folder = pathlib.Path(output_folder)
    write_text_atomic(folder / "comparison.md", "\n".join([
        "# System comparison",
        "",
        markdown_table(["System", *columns], rows),
        "",
        "Noise-type columns average the EER over SNRs; Corrupted minDCF and Drift (mean 1 - cos between clean "
        "and corrupted embeddings) average over all corrupted conditions. With several seeds: mean ± sample sd "
        f"(n = seeds). {MIN_DCF_NOTE}",
        "",
    ]))
    plots.plot_eer_vs_snr(runs, folder / "eer_vs_snr.png")
    return summary


def _summary(results, noise_types):
    """Comparison columns of one run (None where the run lacks them)."""
    conditions = results["conditions"]
    corrupted = [cond for name, cond in conditions.items() if name != "clean"]
    return {
        "Clean EER (%)": conditions.get("clean", {}).get("EER"),
        "Reverb EER (%)": conditions.get("reverb", {}).get("EER"),
        "Clean minDCF": conditions.get("clean", {}).get("minDCF"),
        "Corrupted minDCF": mean_and_sd([c["minDCF"] for c in corrupted])[0],
        "Drift": mean_and_sd([c["geometry"]["drift"] for c in corrupted])[0],
        **{f"{kind} EER (%)": mean_and_sd([c["EER"] for c in corrupted if c["noise_type"] == kind])[0]
           for kind in noise_types},
    }


def _format_cell(values, column):
    """``value`` for one run, ``mean ± sd (n=k)`` for several, – when missing."""
    digits = 2 if "EER" in column else 4
    mean, sd = mean_and_sd(values)
    if mean is None:
        return "–"
    present = sum(value is not None for value in values)
    return f"{mean:.{digits}f}" if present == 1 else f"{mean:.{digits}f} ± {sd:.{digits}f} (n={present})"


def main(argv=None, prog="python -m anchor_reg.compare"):
    """Command line; prints the table and returns the exit code (errors: one ``error:`` line)."""
    parser = argparse.ArgumentParser(prog=prog, description="Compare evaluated systems; repeat NAME once per seed.")
    parser.add_argument("--output_folder", required=True)
    parser.add_argument("systems", nargs="+", metavar="NAME=RESULTS")
    args = parser.parse_args(sys.argv[1:] if argv is None else argv)
    systems = {}
    for item in args.systems:
        name, sep, path = item.partition("=")
        if not sep or not name or not path:
            parser.error(f"expected NAME=RESULTS, got {item!r}")
        systems.setdefault(name, []).append(path)
    try:
        compare_systems(systems, args.output_folder)
    except (ResultsError, OSError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    print((pathlib.Path(args.output_folder) / "comparison.md").read_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())
