"""Figures of the feature probes: a confusion matrix, accuracies with intervals per feature x probe, every run."""
from __future__ import annotations

import os

import numpy as np

from daelab.plots import plt

# One marker per DAE seed in the seeds figure (with its colour), so DAE seeds stay apart without colour.
MARKERS = ("o", "^", "s", "D", "v", "P", "X", "*")


def plot_confusion(matrix: np.ndarray, class_names: list[str], path: str | os.PathLike, title: str = "") -> None:
    """Row-normalised confusion matrix (true class x predicted class), counts printed in the cells.

    Parameters
    ----------
    matrix : (C, C) integer counts, rows true classes, columns predictions.
    class_names : C names for the axes.
    """
    matrix = np.asarray(matrix)
    rates = matrix / np.maximum(matrix.sum(axis=1, keepdims=True), 1)
    size = max(4.8, 0.62 * len(class_names) + 1.6)
    fig, ax = plt.subplots(figsize=(size + 1.0, size), dpi=120)
    image = ax.imshow(rates, cmap="Blues", vmin=0.0, vmax=1.0)
    ticks = np.arange(len(class_names))
    ax.set_xticks(ticks, class_names, rotation=45, ha="right", fontsize=8)
    ax.set_yticks(ticks, class_names, fontsize=8)
    for (i, j), count in np.ndenumerate(matrix):
        if count:
            ax.text(j, i, str(count), ha="center", va="center", fontsize=7,
                    color="white" if rates[i, j] > 0.5 else "black")
    ax.set_xlabel("predicted class")
    ax.set_ylabel("true class")
    accuracy = np.trace(matrix) / max(matrix.sum(), 1)
    ax.set_title(f"{title}: test accuracy {accuracy:.4f}" if title else f"test accuracy {accuracy:.4f}", fontsize=10)
    fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04, label="fraction of the true class")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def plot_probe_accuracy(results: list[dict], path: str | os.PathLike, level: float = 0.95,
                        study: dict | None = None) -> None:
    """Test accuracy per probe (groups) and feature (markers): mean with its t-interval, seeds as dots.

    Parameters
    ----------
    results : rows with ``feature``, ``probe``, ``mean``, ``lo``, ``hi`` and ``accuracies``.
    study : optional ``codes_accuracy`` / ``raw_accuracy`` of the study, drawn as reference lines.
    """
    probes = list(dict.fromkeys(r["probe"] for r in results))
    features = list(dict.fromkeys(r["feature"] for r in results))
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    width = 0.8 / len(features)
    fig, ax = plt.subplots(figsize=(max(5.0, 1.9 * len(probes) + 2.0), 4.0), dpi=120)
    for j, feature in enumerate(features):
        for i, probe in enumerate(probes):
            row = next((r for r in results if r["feature"] == feature and r["probe"] == probe), None)
            if row is None:
                continue
            x = i - 0.4 + width * (j + 0.5)
            ax.errorbar([x], [row["mean"]], yerr=[[row["mean"] - row["lo"]], [row["hi"] - row["mean"]]], fmt="o",
                        color=colors[j % len(colors)], capsize=4, label=feature if i == 0 else None)
            if len(row["accuracies"]) > 1:
                ax.plot([x + width * 0.25] * len(row["accuracies"]), row["accuracies"], ".", ms=3,
                        color=colors[j % len(colors)], alpha=0.6)
    if study:
        ax.axhline(study["codes_accuracy"], color="grey", ls="--", lw=0.8, label="study: codes (1 run)")
        ax.axhline(study["raw_accuracy"], color="grey", ls=":", lw=0.8, label="study: raw (1 run)")
    ax.set_xticks(range(len(probes)), probes)
    ax.set_xlim(-0.6, len(probes) - 0.4)
    ax.set_ylabel("test accuracy")
    ax.set_title(f"probe accuracy: mean and {int(round(100 * level))}% interval over seeds "
                 "(dots: seeds; one point: a deterministic probe, run once)", fontsize=9)
    ax.grid(True, axis="y", alpha=0.3)
    ax.legend(fontsize=7, loc="best")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def plot_seed_accuracy(results: list[dict], path: str | os.PathLike, level: float = 0.95,
                       dae_seeds: list[int] | None = None) -> None:
    """Each run's test accuracy as a dot, and the interval the verdicts rest on as a bar, per probe and feature.

    One panel per probe; in it, one column per feature set: a dot per (DAE seed, classifier seed),
    the DAE seeds side by side in their own colours, and beside them the accuracy's interval over DAE
    seeds x classifier seeds x test images (the one the verdicts use) with its mean. Each DAE seed has
    its own colour and marker (:data:`MARKERS`).

    Parameters
    ----------
    results : rows with ``feature``, ``probe``, ``accuracies_by_dae`` ((D, S) nested lists) and
        ``interval`` (``mean``, ``lo``, ``hi``) with its ``interval_over``.
    path : where the PNG goes.
    level : the intervals' level, for the title.
    dae_seeds : the DAE seeds, in the order of ``accuracies_by_dae`` (for the legend).
    """
    probes = list(dict.fromkeys(r["probe"] for r in results))
    features = list(dict.fromkeys(r["feature"] for r in results))
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    fig, axes = plt.subplots(1, len(probes), figsize=(max(4.0, 2.6 * len(probes) + 0.8), 3.8), dpi=120, squeeze=False)
    one_dae = not any(len(r["accuracies_by_dae"]) > 1 for r in results)  # one DAE: its colours for every set
    labelled: set = {None}
    for ax, probe in zip(axes[0], probes):
        for j, feature in enumerate(features):
            row = next((r for r in results if r["feature"] == feature and r["probe"] == probe), None)
            if row is None:
                continue
            by_dae = row["accuracies_by_dae"]
            for d, accuracies in enumerate(by_dae):  # DAE seeds side by side, left of the bar
                x = j - 0.3 + 0.3 * (d + 0.5) / len(by_dae)
                # grey: a feature set that no DAE produces (raw, PCA), probed once for every DAE seed
                color = colors[d % len(colors)] if len(by_dae) > 1 or one_dae else "grey"
                marker = MARKERS[d % len(MARKERS)] if len(by_dae) > 1 else "o"  # told apart in grey print too
                label = f"DAE seed {dae_seeds[d] if dae_seeds else d}" if len(by_dae) > 1 else None
                ax.plot([x] * len(accuracies), accuracies, marker, ms=3.5, color=color, alpha=0.75,
                        label=label if label not in labelled else None)
                labelled.add(label)
            interval = row["interval"]
            ax.errorbar([j + 0.15], [interval["mean"]], yerr=[[interval["mean"] - interval["lo"]],
                                                              [interval["hi"] - interval["mean"]]],
                        fmt="s", ms=4, color="black", capsize=5, lw=1.4)
        ax.set_xticks(range(len(features)), features, fontsize=8)
        ax.set_xlim(-0.5, len(features) - 0.5)
        ax.set_title(probe, fontsize=9)
        ax.grid(True, axis="y", alpha=0.3)
    axes[0][0].set_ylabel("test accuracy")
    if not one_dae:
        axes[0][0].legend(fontsize=7, loc="best", title="grey: no DAE in it", title_fontsize=7)
    fig.suptitle(f"dots: each (DAE seed, classifier seed) run; bars: {int(round(100 * level))}% interval over "
                 "DAE seeds x classifier seeds x test images", fontsize=8)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
