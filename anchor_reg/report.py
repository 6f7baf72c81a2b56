"""The short verification table and one EER-vs-SNR figure of its systems, printed after training.

Each stage is exported once and scored as users will load it; the full grid is hparams/verify.yaml's.
"""
import logging
import pathlib

from anchor_reg.atomic import write_text_atomic
from anchor_reg.corruption import default_conditions
from anchor_reg.evaluate import evaluate_model, load_encoder
from anchor_reg.export import export_model
from anchor_reg.plots import plot_eer_vs_snr
from anchor_reg.results import markdown_table

logger = logging.getLogger(__name__)


def evaluate_stage(stage_folder, prep_folder, out_folder, *, system_name, noise_types, snrs,
                   batch_size=16, device="cpu", with_reverb=False, seed=1234):
    """Exports a stage into ``out_folder/export`` and evaluates it before its card is written; returns the results.
    An inference folder (no ``save/``: a hub or folder base) is evaluated as it is."""
    prep, out = pathlib.Path(prep_folder), pathlib.Path(out_folder)
    measured = {}

    def evaluate(model_folder):
        measured["results"] = evaluate_model(
            load_encoder(model_folder, device), enrol_csv=prep / "enrol.csv", test_csv=prep / "test.csv",
            trials=prep / "trials.txt", noise_csvs={kind: prep / f"eval_{kind}.csv" for kind in noise_types},
            rir_csv=prep / "eval_rir.csv", snrs=snrs, batch_size=batch_size, seed=seed, output_folder=out,
            system_name=system_name,
            conditions=[c.name for c in default_conditions(noise_types, snrs, reverb=with_reverb)],
        )
        return measured["results"]

    if not (pathlib.Path(stage_folder) / "save").is_dir():
        return evaluate(pathlib.Path(stage_folder))
    export_model(stage_folder, out / "export", evaluate=evaluate)
    return measured["results"]


def verification_table(results_by_system, noise_types, snrs):
    """Markdown table: one row per system, EER (%) clean, per noise type/SNR and their mean."""
    columns = [c.name for c in default_conditions(noise_types, snrs, reverb=False)]
    rows = []
    for name, results in results_by_system.items():
        eers = [results["conditions"][c]["EER"] for c in columns]
        mean_noisy = sum(eers[1:]) / len(eers[1:]) if len(eers) > 1 else float("nan")
        rows.append([name, *(f"{e:.2f}" for e in eers), f"{mean_noisy:.2f}"])
    table = markdown_table(["system", *columns, "mean noisy"], rows)
    return table + "\n\nEER (%) on the prepared trials; noisy = test side corrupted.\n"


def verification_report(hparams, systems, device="cpu"):
    """Evaluates each ``{name: stage_folder}`` into ``<output_folder>/verification/``; returns the table and the
    path of the EER-vs-SNR figure that draws every system."""
    out_root = pathlib.Path(hparams["output_folder"]) / "verification"
    results = {}
    for name, stage_folder in systems.items():
        logger.info("verification: evaluating %s (%s)", name, stage_folder)
        results[name] = evaluate_stage(
            stage_folder, hparams["prep_folder"], out_root / name.split(" ")[0].replace("/", "_"),
            system_name=name, noise_types=hparams["eval_noise_types"], snrs=hparams["eval_snrs"],
            batch_size=hparams["eval_batch_size"], device=device, seed=hparams["data_seed"],
        )
    table = verification_table(results, hparams["eval_noise_types"], hparams["eval_snrs"])
    write_text_atomic(out_root / "table.md", table)
    figure = plot_eer_vs_snr({name: [result] for name, result in results.items()}, out_root / "eer_vs_snr.png")
    return table, figure
