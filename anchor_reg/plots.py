"""Figures of the noisy verification evaluation (matplotlib, Agg backend), written atomically."""
import pathlib

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
from scipy.stats import norm  # noqa: E402

from anchor_reg.atomic import atomic_path  # noqa: E402
from anchor_reg.metrics import mean_and_sd  # noqa: E402

DET_TICKS = [0.001, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.4, 0.6, 0.8]
PROJECTION_SPEAKERS = 6
PROJECTION_UTTERANCES = 20


def save_figure(figure, path):
    """Saves ``figure`` as PNG at ``path`` atomically and closes it; returns the path."""
    try:
        with atomic_path(path) as tmp:
            figure.savefig(tmp, format="png", dpi=120, bbox_inches="tight")
    finally:
        plt.close(figure)
    return pathlib.Path(path)


def plot_evaluation(results, curves, clean_side, side_embeddings, speakers, output_folder):
    """Writes ``eer_vs_snr.png``, ``det.png`` and ``embeddings_pca.png``: ``curves`` (condition -> (p_fa, p_miss)),
    the corrupted-side utterances clean (N, D) and in each condition (``side_embeddings``), their ``speakers``."""
    folder = pathlib.Path(output_folder)
    conditions = results["conditions"]
    plot_eer_vs_snr({results["system"]: [results]}, folder / "eer_vs_snr.png")
    hardest = {}  # noise type -> its lowest-SNR condition
    for name, cond in conditions.items():
        kind = cond["noise_type"]
        if kind and (kind not in hardest or cond["snr"] < conditions[hardest[kind]]["snr"]):
            hardest[kind] = name
    shown = ["clean", *hardest.values(), "reverb"]
    plot_det({name: curves[name] for name in shown if name in curves}, folder / "det.png",
             title=f"{results['system']}: DET")
    corrupted = [name for name in conditions if name != "clean"]
    if not corrupted:
        return
    worst = max(corrupted, key=lambda name: conditions[name]["geometry"]["drift"])
    counts = {spk: speakers.count(spk) for spk in set(speakers)}
    chosen = sorted(counts, key=lambda spk: (-counts[spk], spk))[:PROJECTION_SPEAKERS]
    rows = [i for spk in chosen for i in [j for j, s in enumerate(speakers) if s == spk][:PROJECTION_UTTERANCES]]
    plot_embedding_projection(clean_side[rows], side_embeddings[worst][rows], [speakers[i] for i in rows],
                              folder / "embeddings_pca.png", f"{results['system']}: clean vs {worst} (largest drift)")


def plot_eer_vs_snr(systems, path):
    """EER against SNR, a panel per noise type, a line per ``{name: [results per seed]}`` (mean ± sd, clean dashed)."""
    noise_types = noise_types_in(systems)
    panels = max(len(noise_types), 1)
    figure, axes = plt.subplots(1, panels, figsize=(4.2 * panels, 3.6), sharey=True, squeeze=False)
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for axis, noise_type in zip(axes[0], noise_types):
        for number, (name, runs) in enumerate(systems.items()):
            colour = colours[number % len(colours)]
            snrs = sorted({c["snr"] for c in runs[0]["conditions"].values() if c["noise_type"] == noise_type})
            points = [(snr, *_eer_across_runs(runs, noise_type, snr)) for snr in snrs]
            if points:
                snr, mean, sd = zip(*points)
                axis.errorbar(snr, mean, yerr=sd, marker="o", capsize=3, color=colour, label=name)
            clean, _ = _eer_across_runs(runs, "clean")
            if clean is not None:
                axis.axhline(clean, linestyle="--", color=colour, linewidth=1)
        axis.set_title(f"{noise_type} (dashed: clean)")
        axis.set_xlabel("SNR (dB)")
        axis.grid(alpha=0.3)
    axes[0][0].set_ylabel("EER (%)")
    if noise_types:
        axes[0][0].legend(fontsize="small")
    else:
        axes[0][0].set_title("no additive-noise conditions")
    return save_figure(figure, path)


def noise_types_in(systems):
    """Noise types of the additive conditions of ``{name: [results]}``, in order of first appearance."""
    return list(dict.fromkeys(cond["noise_type"] for runs in systems.values() for run in runs
                              for cond in run["conditions"].values() if cond["noise_type"]))


def plot_det(curves, path, title="DET"):
    """DET curves (label -> (p_fa, p_miss), rates in [0, 1]) on probit axes."""
    figure, axis = plt.subplots(figsize=(4.8, 4.8))
    low, high = DET_TICKS[0], DET_TICKS[-1]
    for label, (p_fa, p_miss) in curves.items():
        p_fa = np.clip(np.asarray(p_fa, dtype=float), low / 2, 1 - low / 2)
        p_miss = np.clip(np.asarray(p_miss, dtype=float), low / 2, 1 - low / 2)
        axis.plot(norm.ppf(p_fa), norm.ppf(p_miss), label=label)
    edges = norm.ppf([low, high])
    axis.plot(edges, edges, linestyle=":", color="grey", linewidth=1)  # EER line
    ticks, labels = norm.ppf(DET_TICKS), [f"{100 * tick:g}" for tick in DET_TICKS]
    axis.set_xticks(ticks, labels)
    axis.set_yticks(ticks, labels)
    axis.set(xlim=edges, ylim=edges, xlabel="False alarm rate (%)", ylabel="Miss rate (%)", title=title)
    axis.grid(alpha=0.3)
    axis.legend(fontsize="small")
    return save_figure(figure, path)


def plot_embedding_projection(clean, corrupted, speakers, path, title):
    """2-D PCA of clean and corrupted (N, D) embeddings (L2-normalised together); colour = speaker."""
    both = torch.nn.functional.normalize(torch.cat([clean, corrupted]).double(), dim=1)
    centred = both - both.mean(dim=0)
    _, _, right = torch.linalg.svd(centred, full_matrices=False)
    points = (centred @ right[:2].T).numpy()
    clean_points, corrupted_points = points[: len(clean)], points[len(clean):]
    figure, axis = plt.subplots(figsize=(5.2, 4.6))
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for number, speaker in enumerate(sorted(set(speakers))):
        rows = [i for i, spk in enumerate(speakers) if spk == speaker]
        colour = colours[number % len(colours)]
        axis.scatter(*clean_points[rows].T, color=colour, marker="o", label=speaker)
        axis.scatter(*corrupted_points[rows].T, color=colour, marker="x")
    axis.set(title=f"{title}\n(o clean, x corrupted)", xlabel="PC 1", ylabel="PC 2")
    axis.legend(fontsize="x-small", loc="best")
    return save_figure(figure, path)


def _eer_across_runs(runs, condition, snr=None):
    """Mean and sd of the EER (%) over the runs that have the condition (a name, or a noise type at ``snr``)."""
    def eer_of(run):
        found = [c["EER"] for name, c in run["conditions"].items()
                 if (name == condition if snr is None else (c["noise_type"], c["snr"]) == (condition, snr))]
        return found[0] if found else None

    return mean_and_sd([eer_of(run) for run in runs])
