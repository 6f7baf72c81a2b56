#!/usr/bin/env python3
"""Several evaluated systems side by side: ``comparison.md`` and ``eer_vs_snr.png``.

Repeat a system's name once per seed to get ``mean ± sd (n=k)``::

    python -m anchor_reg.compare --output_folder=results/compare \\
        base=results/eval_base anchor=results/eval_anchor/results.json

(``python -m anchor_reg.evaluate compare ...`` runs the same command.)
"""
import argparse
import pathlib
import sys

from anchor_reg import plots
from anchor_reg.atomic import write_text_atomic
from anchor_reg.metrics import MIN_DCF_NOTE, mean_and_sd
from anchor_reg.errors import ResultsError
from anchor_reg.results import load_results, markdown_table


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
        name: [load_results(item) for item in (value if isinstance(value, list) else [value])]
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
    rows = [[name] + [_format_cell(values[column], column) for column in columns] for name, values in summary.items()]
    lines = [
        "# System comparison",
        "",
        markdown_table(["System", *columns], rows),
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
