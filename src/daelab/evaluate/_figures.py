"""Figures of the denoising evaluation, written into ``RUN_DIR/figures/``.

* ``denoise_<noise>.png``: the study's figure, for one noise level: raw / noisy / DAE rows of the
  same seeded test images, with each image's R_loss (MSE against the raw image) above it.
* ``denoise_all.png``: those figures stacked for every level.
* ``denoise_extended_<noise>.png``: the same plus a row per baseline (oracle sigma).
* ``psnr_gain.png``: the honest headline: PSNR gain over the noisy input per method and level,
  with 95% intervals; below the zero line a method makes images worse.
* ``robustness.png``: heatmap of the DAE's PSNR gain across noise families and levels.

Every path returned is relative to the run directory, for the report to embed.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from daelab.plots import plt

FIGURES_DIR = "figures"


def _slug(spec: str) -> str:
    return spec.replace(":", "_")


def _image_row(ax, label: str, images: np.ndarray, losses: np.ndarray | None, n_cols: int) -> None:
    """One row of images drawn as a single mosaic (one imshow per row keeps big grids fast)."""
    height, width = images.shape[1:]
    gap = 2
    mosaic = np.ones((height, n_cols * (width + gap) - gap))  # white gaps between images
    for c, image in enumerate(images[:n_cols]):
        mosaic[:, c * (width + gap):c * (width + gap) + width] = image
    ax.imshow(mosaic, cmap="gray", vmin=0.0, vmax=1.0, interpolation="nearest")
    if losses is not None:
        for c, loss in enumerate(losses[:n_cols]):
            ax.text(c * (width + gap) + width / 2, -1.5, f"{loss:.4f}", ha="center", va="bottom", fontsize=7)
    ax.set_xticks([])
    ax.set_yticks([])
    for spine in ax.spines.values():
        spine.set_visible(False)
    ax.set_ylabel(label, fontsize=8, rotation=0, ha="right", va="center")


def plot_examples(rows: list[tuple[str, np.ndarray, np.ndarray | None]], path: Path, title: str) -> None:
    """One figure of image rows (raw, noisy, denoised, ...), the R_loss of each image above it."""
    n_cols = max(len(images) for _, images, _ in rows)
    row_height = 1.15
    fig, axes = plt.subplots(len(rows), 1, figsize=(1.05 * n_cols + 1.6, row_height * len(rows) + 0.6), dpi=100,
                             squeeze=False)
    for ax, (label, images, losses) in zip(axes[:, 0], rows, strict=True):
        _image_row(ax, label, images, losses, n_cols)
    fig.suptitle(title, fontsize=10)
    fig.subplots_adjust(left=1.5 / (1.05 * n_cols + 1.6), right=0.99, top=1 - 0.5 / fig.get_figheight(),
                        bottom=0.02, hspace=0.3)
    fig.savefig(path)
    plt.close(fig)


def _study_rows(spec: str, examples: dict) -> list:
    return [("raw", examples["clean"], None),
            (f"noisy {spec}", *examples["noisy"]),
            ("DAE", *examples["dae"])]


def plot_psnr_gain(evaluation: dict, path: Path) -> None:
    """PSNR gain over the noisy input (dB, 95% CI) against noise level, one line per method."""
    levels = evaluation["levels"]
    x = np.arange(len(levels))
    fig, ax = plt.subplots(figsize=(7.5, 4.5), dpi=120)
    # One colour per method, solid for the oracle sigma and dashed for the estimated one.
    bases = list(dict.fromkeys(name.split("@")[0] for name in evaluation["headline"]["methods"] if name != "dae"))
    colours = {base: plt.get_cmap("tab10")(i % 10) for i, base in enumerate(bases)}
    for name in evaluation["headline"]["methods"]:
        stats = [lv["psnr_gain"].get(name) for lv in levels]
        mean = np.array([s["mean"] if s else np.nan for s in stats])
        lo = np.array([s["lo"] if s and s["lo"] is not None else np.nan for s in stats])
        hi = np.array([s["hi"] if s and s["hi"] is not None else np.nan for s in stats])
        style = {"color": "black", "linewidth": 2.5, "zorder": 3} if name == "dae" else \
            {"linestyle": "--" if name.endswith("@estimated") else "-", "linewidth": 1.2,
             "color": colours[name.split("@")[0]]}
        line, = ax.plot(x, mean, marker="o", markersize=3, label=name, **style)
        ax.fill_between(x, lo, hi, color=line.get_color(), alpha=0.15, linewidth=0)
    ax.axhline(0.0, color="red", linewidth=1, label="noisy input (no gain)")
    ax.set_xticks(x, [lv["noise"] for lv in levels], fontsize=8)
    ax.set_xlabel("noise")
    ax.set_ylabel("PSNR gain over noisy input (dB)")
    ax.set_title(f"Denoising gain on {evaluation['n_images']['baselines'] or evaluation['n_images']['dae']} "
                 "common test images (95% CI)", fontsize=10)
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=7, ncol=2, loc="best")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def plot_robustness(robustness: dict, path: Path) -> None:
    """Heatmap of the DAE's PSNR gain: a row per noise family, a column per level of that family."""
    from matplotlib.colors import TwoSlopeNorm
    families = list(dict.fromkeys(row["family"] for row in robustness["rows"]))
    by_family = {f: [row for row in robustness["rows"] if row["family"] == f] for f in families}
    n_cols = max(len(rows) for rows in by_family.values())
    gains = np.full((len(families), n_cols), np.nan)
    for i, family in enumerate(families):
        for j, row in enumerate(by_family[family]):
            gains[i, j] = row["psnr_gain"]["mean"]
    bound = max(float(np.nanmax(np.abs(gains))), 1e-3)
    fig, ax = plt.subplots(figsize=(1.5 * n_cols + 2.5, 0.7 * len(families) + 1.5), dpi=120)
    image = ax.imshow(gains, cmap="RdBu", norm=TwoSlopeNorm(0.0, -bound, bound), aspect="auto")
    for i, family in enumerate(families):
        for j, row in enumerate(by_family[family]):
            ax.text(j, i, f"{row['level']:g}\n{row['psnr_gain']['mean']:+.1f} dB", ha="center", va="center",
                    fontsize=8, color="white" if abs(row["psnr_gain"]["mean"]) > 0.6 * bound else "black")
    ax.set_yticks(range(len(families)), families)
    ax.set_xticks(range(n_cols), [f"level {j + 1}" for j in range(n_cols)])
    ax.set_title(f"DAE PSNR gain over the noisy input ({robustness['n']} test images)", fontsize=10)
    fig.colorbar(image, ax=ax, label="dB (blue helps, red hurts)")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def write_figures(run_dir: str | Path, evaluation: dict, examples: dict[str, dict]) -> dict:
    """Write every figure of the evaluation; returns their paths relative to ``run_dir``.

    ``examples`` maps a noise spec to ``{"clean": (k, H, W), "noisy": (images, losses), "dae": ...,
    <baseline name>: (images, losses)}`` as returned by :func:`daelab.evaluate.evaluate_level`.
    """
    run_dir = Path(run_dir)
    (run_dir / FIGURES_DIR).mkdir(parents=True, exist_ok=True)
    paths = {"examples": {}, "examples_extended": {}}
    combined = []
    for spec, shown in examples.items():
        rel = f"{FIGURES_DIR}/denoise_{_slug(spec)}.png"
        plot_examples(_study_rows(spec, shown), run_dir / rel, f"{spec}: raw / noisy / DAE, R_loss above each image")
        paths["examples"][spec] = rel
        combined += _study_rows(spec, shown)
        baselines = [(name, *shown[name]) for name in shown if name not in ("clean", "noisy", "dae")]
        if baselines:
            rel = f"{FIGURES_DIR}/denoise_extended_{_slug(spec)}.png"
            plot_examples(_study_rows(spec, shown) + baselines, run_dir / rel,
                          f"{spec}: DAE and baselines (oracle sigma), R_loss above each image")
            paths["examples_extended"][spec] = rel
    if combined:
        rel = f"{FIGURES_DIR}/denoise_all.png"
        plot_examples(combined, run_dir / rel, "raw / noisy / DAE at every noise level, R_loss above each image")
        paths["examples_combined"] = rel
    if evaluation["levels"]:
        rel = f"{FIGURES_DIR}/psnr_gain.png"
        plot_psnr_gain(evaluation, run_dir / rel)
        paths["psnr_gain"] = rel
    if evaluation["robustness"]["rows"]:
        rel = f"{FIGURES_DIR}/robustness.png"
        plot_robustness(evaluation["robustness"], run_dir / rel)
        paths["robustness"] = rel
    return paths
