"""Evaluation results on disk (``results.json``, ``results.md``) and the one writer of results tables.

A results dict is ``{"system", "settings", "min_dcf_definition", "conditions": {name: {"EER": %, "minDCF", ...}}}``.
"""
import json
import pathlib

from anchor_reg.atomic import write_text_atomic
from anchor_reg.errors import ResultsError, one_line
from anchor_reg.metrics import MIN_DCF_NOTE

# Canonical metric name -> names accepted in a condition entry.
METRIC_ALIASES = {"EER": ("EER", "eer_percent"), "minDCF": ("minDCF", "min_dcf")}


def write_results(results, output_folder):
    """Writes ``results.json`` and ``results.md`` (atomically)."""
    folder = pathlib.Path(output_folder)
    write_text_atomic(folder / "results.json", json.dumps(results, indent=2) + "\n")
    write_text_atomic(folder / "results.md", results_table(results))


def load_results(item):
    """A results dict from a dict, a ``results.json`` or its folder, metrics renamed (:data:`METRIC_ALIASES`) and
    first; ResultsError names the file that is missing, not JSON, or has a condition without a numeric EER."""
    source, results = "results", item
    if not isinstance(item, dict):
        path = pathlib.Path(item)
        path = path / "results.json" if path.is_dir() else path
        source = str(path)
        try:
            results = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as err:
            raise ResultsError(f"cannot read results file {path}: {one_line(err, None)}") from err
    conditions = results.get("conditions") if isinstance(results, dict) else None
    if not isinstance(conditions, dict) or not conditions:
        raise ResultsError(f'{source} must look like {{"system": ..., "conditions": '
                           '{condition: {"EER": ..., "minDCF": ...}}}')
    aliases = {alias for names in METRIC_ALIASES.values() for alias in names}
    rows = {}
    for condition, metrics in conditions.items():
        metrics = metrics if isinstance(metrics, dict) else {}
        row = {}
        for name, names in METRIC_ALIASES.items():
            found = [metrics[alias] for alias in names if metrics.get(alias) is not None]
            if found:
                row[name] = found[0]
        rows[condition] = {**row, **{key: value for key, value in metrics.items() if key not in aliases}}
        if not isinstance(row.get("EER"), (int, float)):
            raise ResultsError(f"{source}: condition {condition!r} has no EER")
    return {**results, "conditions": rows}


def markdown_table(header, rows):
    """The one writer of results tables: Markdown, first column left-aligned, the others right."""
    lines = ["| " + " | ".join(header) + " |", "|---|" + "---:|" * (len(header) - 1)]
    return "\n".join(lines + ["| " + " | ".join(map(str, row)) + " |" for row in rows])


def results_table(results):
    """Markdown page of one system: a row per condition, EER %, minDCF, trials and drift."""
    rows = [[name, f"{cond['EER']:.2f}", f"{cond['minDCF']:.4f}", cond["n_trials"], f"{cond['geometry']['drift']:.4f}"]
            for name, cond in results["conditions"].items()]
    settings = results["settings"]
    return "\n".join([
        f"# {results['system']}: speaker verification per condition",
        "",
        markdown_table(["Condition", "EER (%)", "minDCF", "Trials", "Drift"], rows),
        "",
        f"Corrupted side: {settings['corrupt']}; score normalisation: {settings['norm'] or 'none'}; "
        f"seed {settings['seed']}.",
        "",
        f"EER is the equal error rate; {MIN_DCF_NOTE} Drift is the mean 1 - cos between clean and corrupted "
        "embeddings of the corrupted-side utterances.",
        "",
    ])
