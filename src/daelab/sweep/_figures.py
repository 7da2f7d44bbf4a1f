"""The sweep report's figures (matplotlib, Agg): codes - raw against the spec's x axis per group, the DAE's
PSNR per trial, and the heatmap over two axes. :mod:`daelab.sweep._render` lays them out.
"""
from __future__ import annotations

import itertools
import math
from pathlib import Path

from daelab.sweep._layout import STUDY_CHOICE, Layout, _is_number, _same, _show
from daelab.sweep._results import DIFFERENCES


def _palette(count: int) -> list:
    from daelab.plots import plt
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    return [colors[k % len(colors)] for k in range(count)]


def _curve_style(curve_list: list[dict], layout: Layout) -> list[tuple]:
    """(colour, line style) per curve: colour by the group's value, line style by the other axes' values."""
    groups = layout.values.get(layout.group, [None]) if layout.group else [None]
    colors = _palette(len(groups))
    styles, rest = ["-", "--", ":", "-."], {}
    out = []
    for curve in curve_list:
        g = next((k for k, v in enumerate(groups) if curve["group"] is None or _same(v, curve["group"])), 0)
        other = tuple(_show(v) for a, v in curve["params"].items() if a != layout.group)
        rest.setdefault(other, len(rest))
        out.append((colors[g], styles[rest[other] % len(styles)]))
    return out


def _x_positions(layout: Layout) -> tuple[callable, list | None, list | None]:
    values = layout.values.get(layout.x, [None]) if layout.x else [None]
    if all(_is_number(v) for v in values):
        return (lambda v: float(v) if _is_number(v) else math.nan), None, None
    return (lambda v: float(next((k for k, w in enumerate(values) if _same(w, v)), math.nan))), \
        list(range(len(values))), [_show(v) for v in values]


def plot_differences(path: Path, curve_list: list[dict], layout: Layout) -> bool:
    """Codes - raw (mlp, large) and the linear / kNN differences (small) against ``layout.x``.

    Returns False (and draws nothing) when no trial has a probe result.
    """
    if not any(p["codes_minus_raw"] or p["linear_codes_minus_raw"] or p["knn_codes_minus_raw"]
               for c in curve_list for p in c["points"]):
        return False
    from daelab.plots import plt
    where, ticks, tick_labels = _x_positions(layout)
    xs = sorted({x for c in curve_list for p in c["points"] if math.isfinite(x := where(p["x"]))})
    step = min((b - a for a, b in zip(xs, xs[1:])), default=1.0) or 1.0
    spread = 0.12 * step / max(len(curve_list) - 1, 1)  # side by side, so the error bars do not hide each other
    fig = plt.figure(figsize=(12.0, 4.4), dpi=120)
    grid = fig.add_gridspec(1, 3, width_ratios=[2.3, 1, 1], wspace=0.3)
    titles = {"codes_minus_raw": "mlp probe (the study's classifier)", "linear_codes_minus_raw": "linear probe",
              "knn_codes_minus_raw": "kNN probe"}
    for k, (name, _) in enumerate(DIFFERENCES):
        ax = fig.add_subplot(grid[0, k])
        ax.axhline(0.0, color="black", lw=0.8)
        for c, (curve, (color, style)) in enumerate(zip(curve_list, _curve_style(curve_list, layout))):
            points = [p for p in curve["points"] if p[name]]
            offset = (c - (len(curve_list) - 1) / 2) * spread
            px = [where(p["x"]) + offset for p in points]
            mean = [p[name]["mean"] for p in points]
            error = [[m - p[name]["lo"] for m, p in zip(mean, points)],
                     [p[name]["hi"] - m for m, p in zip(mean, points)]]
            ax.errorbar(px, mean, yerr=error, fmt="o", ls=style, color=color, capsize=3, ms=4 if k else 5, lw=1.2,
                        label=curve["label"] if k == 0 else None)
            for x, m, p in zip(px, mean, points):
                if p["study_choice"]:
                    ax.plot([x], [m], marker="*", ms=15 if k == 0 else 11, mfc="none", mec="goldenrod", mew=1.6,
                            ls="none", label=f"study's choice ({STUDY_CHOICE})" if k == 0 else None)
        if ticks is not None:
            ax.set_xticks(ticks, tick_labels)
        ax.set_xlabel(layout.x or "")
        ax.set_title(titles[name], fontsize=9 if k else 10)
        ax.grid(True, alpha=0.3)
        ax.tick_params(labelsize=8)
        if k == 0:
            ax.set_ylabel("codes - raw test accuracy")
            ax.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.14), ncol=min(4, len(curve_list) + 1),
                      title=layout.group, title_fontsize=7, frameon=False)
    fig.suptitle("codes - raw accuracy difference per trial: mean and 95% interval over classifier seeds x test "
                 "images, each for its one trained DAE", fontsize=9)
    fig.savefig(path, bbox_inches="tight")
    plt.close(fig)
    return True


def plot_psnr(path: Path, trials: list[dict], layout: Layout) -> bool:
    """The DAE's PSNR per evaluated noise level, one line per trial (colour: group; lighter: lower x)."""
    drawn = [t for t in trials if t["metrics"]["psnr"] and not t["error"]]
    if not drawn:
        return False
    from matplotlib.colors import to_rgb

    from daelab.plots import plt
    levels = list(dict.fromkeys(level for t in drawn for level in t["metrics"]["psnr"]))
    groups = layout.values.get(layout.group, [None]) if layout.group else [None]
    colors = _palette(len(groups))
    xs = layout.values.get(layout.x, [None]) if layout.x else [None]
    fig, ax = plt.subplots(figsize=(9.5, 4.4), dpi=120)
    for trial in drawn:
        g = next((k for k, v in enumerate(groups) if _same(v, trial["params"].get(layout.group, v))), 0)
        rank = next((k for k, v in enumerate(xs) if _same(v, trial["params"].get(layout.x, v))), 0)
        shade = 0.35 + 0.65 * (rank + 1) / len(xs)
        color = tuple(1 - shade * (1 - channel) for channel in to_rgb(colors[g]))
        psnr = trial["metrics"]["psnr"]
        points = [(k, psnr[level]) for k, level in enumerate(levels) if psnr.get(level) is not None]
        ax.plot([k for k, _ in points], [v for _, v in points], marker="o", ms=3.5, color=color,
                lw=2.6 if trial["study_choice"] else 1.3, label=", ".join(_show(v) for v in trial["params"].values())
                + (" (study's choice)" if trial["study_choice"] else ""))
    ax.set_xticks(range(len(levels)), levels, fontsize=8)
    ax.set_xlabel("evaluation noise")
    ax.set_ylabel("DAE PSNR (dB, higher is better)")
    ax.set_title("denoising per trial: mean PSNR of the DAE's output on each evaluated noise level", fontsize=9)
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=6.5, loc="upper left", bbox_to_anchor=(1.01, 1.0), ncol=1 if len(drawn) <= 18 else 2,
              title=", ".join(layout.axes), title_fontsize=6.5)
    fig.savefig(path, bbox_inches="tight")
    plt.close(fig)
    return True


def plot_heatmap(path: Path, grid: dict) -> bool:
    """Two annotated heatmaps over the chosen axes: codes - raw (diverging around 0) and mean DAE PSNR."""
    import numpy as np

    from daelab.plots import plt
    if not any(v is not None for row in grid["codes_minus_raw"] + grid["psnr_mean"] for v in row):
        return False
    rows, cols = [_show(v) for v in grid["rows"]], [_show(v) for v in grid["cols"]]
    width = max(4.2, 1.15 * len(cols) + 2.2)
    fig, axes = plt.subplots(1, 2, figsize=(2 * width, max(3.2, 0.75 * len(rows) + 1.8)), dpi=120)
    for ax, name, title in ((axes[0], "codes_minus_raw", "codes - raw test accuracy (mlp)"),
                            (axes[1], "psnr_mean", "mean DAE PSNR over the evaluated levels (dB)")):
        values = np.array([[np.nan if v is None else v for v in row] for row in grid[name]], dtype=float)
        finite = values[np.isfinite(values)]
        if name == "codes_minus_raw":
            bound = float(np.abs(finite).max()) if finite.size and np.abs(finite).max() > 0 else 0.01
            image = ax.imshow(values, cmap="RdBu", vmin=-bound, vmax=bound, aspect="auto")
        else:
            image = ax.imshow(values, cmap="viridis", aspect="auto")
        fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04)
        for i, j in itertools.product(range(len(rows)), range(len(cols))):
            value = values[i, j]
            if np.isfinite(value):
                text = f"{value:+.4f}" if name == "codes_minus_raw" else f"{value:.2f}"
                lo, hi = grid["lo"][i][j], grid["hi"][i][j]
                if name == "codes_minus_raw" and lo is not None:
                    text += f"\n[{lo:+.4f}, {hi:+.4f}]"
                if grid["n"][i][j] > 1:
                    text += f"\n(mean of {grid['n'][i][j]})"
                strong = name == "codes_minus_raw" and lo is not None and (lo > 0 or hi < 0)
                if name == "psnr_mean":
                    dark = value < finite.min() + 0.5 * np.ptp(finite)
                else:  # the diverging map is dark at both ends
                    dark = abs(value) > 0.6 * bound
                ax.text(j, i, text, ha="center", va="center", fontsize=7, fontweight="bold" if strong else "normal",
                        color="white" if dark else "black")
            else:
                ax.text(j, i, "/".join(s.lower() for s in grid["states"][i][j]) or "–", ha="center", va="center",
                        fontsize=7, color="grey")
            if grid["study_choice"][i][j]:
                ax.add_patch(plt.Rectangle((j - 0.5, i - 0.5), 1, 1, fill=False, ec="goldenrod", lw=2.5))
        ax.set_xticks(range(len(cols)), cols, fontsize=8)
        ax.set_yticks(range(len(rows)), rows, fontsize=8)
        ax.set_xlabel(grid["cols_axis"])
        ax.set_ylabel(grid["rows_axis"])
        ax.set_title(title, fontsize=9)
    fig.suptitle("bold: the interval excludes 0 (for that one trained DAE); gold frame: the study's choice",
                 fontsize=8)
    fig.tight_layout()
    fig.savefig(path, bbox_inches="tight")
    plt.close(fig)
    return True


# ------------------------------------------------------------------------------ the blocks
