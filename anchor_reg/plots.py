"""Figures of the noisy verification evaluation (matplotlib, Agg backend).

All figures are written atomically (temporary file in the same folder, then
``os.replace``).

Authors
 * anchor-reg contributors
"""

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
    """Saves ``figure`` as PNG at ``path`` atomically and closes it."""
    try:
        with atomic_path(path) as tmp:
            figure.savefig(tmp, format="png", dpi=120, bbox_inches="tight")
    finally:
        plt.close(figure)
    return pathlib.Path(path)


def plot_evaluation(results, curves, clean_side, side_embeddings, speakers, output_folder):
    """The three figures of one evaluation: ``eer_vs_snr.png``, ``det.png``, ``embeddings_pca.png``.

    Arguments
    ---------
    results : dict
        :func:`anchor_reg.evaluate.evaluate_model`'s output.
    curves : dict
        Condition -> (p_fa, p_miss) of :func:`anchor_reg.metrics.det_curve`.
    clean_side : torch.Tensor
        (N, D) clean embeddings of the corrupted-side utterances.
    side_embeddings : dict
        Condition -> (N, D) embeddings of the same utterances in that condition.
    speakers : list of str
        Speaker of each of the N utterances.
    output_folder : str or pathlib.Path
        Where the PNG files go.
    """
    folder = pathlib.Path(output_folder)
    conditions = results["conditions"]
    plot_eer_vs_snr({results["system"]: [results]}, folder / "eer_vs_snr.png")

    hardest = {}
    for name, cond in conditions.items():
        kind = cond["noise_type"]
        if kind and (kind not in hardest or cond["snr"] < conditions[hardest[kind]]["snr"]):
            hardest[kind] = name
    shown = ["clean", *hardest.values(), "reverb"]
    plot_det(
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
    plot_embedding_projection(
        clean_side[rows],
        side_embeddings[worst][rows],
        [speakers[i] for i in rows],
        folder / "embeddings_pca.png",
        title=f"{results['system']}: clean vs {worst} (largest drift)",
    )


def plot_eer_vs_snr(systems, path):
    """EER against SNR, one panel per noise type, one line per system.

    Arguments
    ---------
    systems : dict
        System name -> list of results dicts (one per seed; see
        ``anchor_reg.evaluate.evaluate_model``). With several seeds the line is
        the mean and the error bars one standard deviation.
    path : str or pathlib.Path
        Output PNG.
    """
    noise_types = noise_types_in(systems)
    panels = max(len(noise_types), 1)
    figure, axes = plt.subplots(
        1, panels, figsize=(4.2 * panels, 3.6), sharey=True, squeeze=False
    )
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for axis, noise_type in zip(axes[0], noise_types):
        for number, (name, runs) in enumerate(systems.items()):
            colour = colours[number % len(colours)]
            snrs = sorted(
                {
                    cond["snr"]
                    for cond in runs[0]["conditions"].values()
                    if cond["noise_type"] == noise_type
                }
            )
            points = [
                (snr, *_across_runs(runs, lambda r, s=snr: _eer_at(r, noise_type, s)))
                for snr in snrs
            ]
            if points:
                axis.errorbar(
                    [snr for snr, _, _ in points],
                    [mean for _, mean, _ in points],
                    yerr=[sd for _, _, sd in points],
                    marker="o",
                    capsize=3,
                    color=colour,
                    label=name,
                )
            clean, _ = _across_runs(runs, lambda r: _eer_of(r, "clean"))
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
    """Noise types of the additive conditions, in order of first appearance.

    Arguments
    ---------
    systems : dict
        System name -> list of results dicts.
    """
    kinds = (
        cond["noise_type"]
        for runs in systems.values()
        for run in runs
        for cond in run["conditions"].values()
        if cond["noise_type"]
    )
    return list(dict.fromkeys(kinds))


def plot_det(curves, path, title="DET"):
    """DET curves on probit (normal deviate) axes.

    Arguments
    ---------
    curves : dict
        Label -> (p_fa, p_miss) tensors or arrays of rates in [0, 1].
    path : str or pathlib.Path
        Output PNG.
    title : str
        Figure title.
    """
    figure, axis = plt.subplots(figsize=(4.8, 4.8))
    low, high = DET_TICKS[0], DET_TICKS[-1]
    for label, (p_fa, p_miss) in curves.items():
        p_fa = np.clip(np.asarray(p_fa, dtype=float), low / 2, 1 - low / 2)
        p_miss = np.clip(np.asarray(p_miss, dtype=float), low / 2, 1 - low / 2)
        axis.plot(norm.ppf(p_fa), norm.ppf(p_miss), label=label)
    edges = norm.ppf([low, high])
    axis.plot(edges, edges, linestyle=":", color="grey", linewidth=1)  # EER line
    ticks = norm.ppf(DET_TICKS)
    labels = [f"{100 * tick:g}" for tick in DET_TICKS]
    axis.set_xticks(ticks, labels)
    axis.set_yticks(ticks, labels)
    axis.set_xlim(*edges)
    axis.set_ylim(*edges)
    axis.set_xlabel("False alarm rate (%)")
    axis.set_ylabel("Miss rate (%)")
    axis.set_title(title)
    axis.grid(alpha=0.3)
    axis.legend(fontsize="small")
    return save_figure(figure, path)


def plot_embedding_projection(clean, corrupted, speakers, path, title):
    """2-D PCA of clean and corrupted embeddings of a few speakers.

    The principal axes are those of the L2-normalised clean and corrupted
    embeddings together (plain SVD of the centred matrix).

    Arguments
    ---------
    clean : torch.Tensor
        Clean embeddings, shape (N, D).
    corrupted : torch.Tensor
        The same utterances corrupted, shape (N, D).
    speakers : list of str
        Speaker of each utterance, length N; colour = speaker.
    path : str or pathlib.Path
        Output PNG.
    title : str
        Figure title.
    """
    both = torch.nn.functional.normalize(
        torch.cat([clean, corrupted]).double(), dim=1
    )
    centred = both - both.mean(dim=0)
    _, _, right = torch.linalg.svd(centred, full_matrices=False)
    points = (centred @ right[:2].T).numpy()
    clean_points, corrupted_points = points[: len(clean)], points[len(clean) :]
    figure, axis = plt.subplots(figsize=(5.2, 4.6))
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for number, speaker in enumerate(sorted(set(speakers))):
        rows = [i for i, spk in enumerate(speakers) if spk == speaker]
        colour = colours[number % len(colours)]
        axis.scatter(*clean_points[rows].T, color=colour, marker="o", label=speaker)
        axis.scatter(*corrupted_points[rows].T, color=colour, marker="x")
    axis.set_title(f"{title}\n(o clean, x corrupted)")
    axis.set_xlabel("PC 1")
    axis.set_ylabel("PC 2")
    axis.legend(fontsize="x-small", loc="best")
    return save_figure(figure, path)


def _eer_of(results, condition):
    """EER (%) of a condition, or None when the run lacks it."""
    cond = results["conditions"].get(condition)
    return None if cond is None else cond["EER"]


def _eer_at(results, noise_type, snr):
    """EER (%) of the additive condition (noise_type, snr), or None."""
    for cond in results["conditions"].values():
        if cond["noise_type"] == noise_type and cond["snr"] == snr:
            return cond["EER"]
    return None


def _across_runs(runs, value_of):
    """Mean and standard deviation of a value over runs (those that have it)."""
    return mean_and_sd([value_of(run) for run in runs])
