"""Evaluation on a folder of natural images under the published Set12 protocol.

:func:`evaluate_images` scores a denoiser (any callable: noisy float image (H, W) -> denoised, so
the natural-image model plugs in; or None for no model) beside the classical baselines of
:mod:`daelab.evaluate._baselines` on every image of a folder (:func:`daelab.folders.load_image_folder`),
at each level of a noise list (``awgn:15,25,50`` by default). The protocol is the published one:

* the noisy image is ``clean/255 + S/255 * N(0, 1)``, not clipped (:class:`daelab.noise.AWGN`), one
  draw per (image, level) from the :data:`~daelab.seeds.IMAGE_NOISE` stream, the same for every
  method; every method gets this float image as it is;
* the baselines are told the true std on the [0, 1] scale (``S/255``, the oracle setting the
  published BM3D figures use);
* every output, the noisy input's included, is clipped to [0, 1] and rounded to 8 bits before
  PSNR/SSIM on the 0-255 scale (:func:`~daelab.evaluate._metrics.psnr8`,
  :func:`~daelab.evaluate._metrics.ssim8`); the PSNR of the unquantized output is kept beside it
  (``psnr_float``) to show what the rounding moves.

It writes ``OUT/evaluation.json`` (a top-level ``"image_results"`` list, one row per (noise,
method) with the means and per-image values), ``OUT/evaluation.md`` and ``OUT/crops.png`` (clean /
noisy / model / best baseline crops of a few images). ``seconds_per_image`` is wall-clock time of
the method alone (noise, scoring and figures excluded) on the machine as it was.
"""
from __future__ import annotations

import math
import os
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from daelab import seeds
from daelab.errors import ConfigError
from daelab.evaluate._baselines import resolve_denoisers
from daelab.evaluate._metrics import SSIM8_SETTINGS, psnr8, psnr_from_mse, ssim8
from daelab.folders import ImageFolder, load_image_folder
from daelab.noise import NoiseModel, parse_noise_list

IMAGE_EVAL_FILE = "evaluation.json"
IMAGE_EVAL_MARKDOWN = "evaluation.md"
CROPS_FIGURE = "crops.png"
IMAGE_EVAL_VERSION = 1
MODEL, NOISY = "model", "noisy"
# The published Set12 averages (dB, 8-bit outputs) at std 15 / 25 / 50 on the 0-255 scale: BM3D as
# reported by Dabov et al.'s code and DnCNN-B as in Zhang et al. 2017, Table 3.
PUBLISHED_SET12 = {"bm3d": {15: 32.37, 25: 29.97, 50: 26.72}, "dncnn_b": {15: 32.68, 25: 30.36, 50: 27.21}}

Denoise = Callable[[np.ndarray], np.ndarray]


def run_denoiser(run_dir: str | os.PathLike, checkpoint: str = "best", tile: int | None = None,
                 overlap: int = 32) -> Denoise:
    """The trained model of ``run_dir`` as :func:`evaluate_images`' ``denoise_fn``.

    It takes the protocol's unclipped noisy image as it is and tiles large images
    (:func:`daelab.denoise.denoise_image`); a model that needs one image size (the study's MLP)
    refuses other sizes with a one-line error.
    """
    from daelab.pretrained import resolve_denoiser
    return resolve_denoiser(run_dir, checkpoint, tile=tile, overlap=overlap)


def draw_noisy_image(clean_uint8: np.ndarray, noise: NoiseModel, seed: int, name: str) -> np.ndarray:
    """The one noisy copy (H, W) float32 of image ``name`` at ``noise`` that every method sees (unclipped for awgn)."""
    clean = torch.from_numpy(clean_uint8.astype(np.float32) / np.float32(255.0))[None]   # (1, H, W)
    return noise(clean, seeds.image_noise_generator(seed, noise.spec, name))[0].numpy()


def _score(clean_uint8: np.ndarray, output: np.ndarray) -> dict[str, float]:
    mse = float(np.mean(np.square(np.asarray(output, np.float64) - clean_uint8 / 255.0)))
    return {"psnr": psnr8(clean_uint8, output), "ssim": ssim8(clean_uint8, output),
            "psnr_float": float(psnr_from_mse(np.array([mse]))[0])}


def _row(spec: str, method: str, names: list[str], scores: list[dict], seconds: list[float]) -> dict:
    return {"noise": spec, "method": method,
            "psnr": float(np.mean([s["psnr"] for s in scores])), "ssim": float(np.mean([s["ssim"] for s in scores])),
            "psnr_float": float(np.mean([s["psnr_float"] for s in scores])), "n_images": len(scores),
            "seconds_per_image": float(np.mean(seconds)) if seconds else 0.0,
            "per_image": {name: score for name, score in zip(names, scores, strict=True)}}


def _published(folder: ImageFolder, noise: NoiseModel) -> dict[str, float] | None:
    """The published Set12 figures for this level, when the folder is Set12 and the noise the protocol's."""
    if folder.path.name.lower() != "set12" or len(folder) != 12 or noise.name != "awgn":
        return None
    level = round(noise.level)
    if not math.isclose(noise.level, level) or level not in PUBLISHED_SET12["bm3d"]:
        return None
    return {method: table[level] for method, table in PUBLISHED_SET12.items()}


def evaluate_images(denoise_fn: Denoise | None, images_dir: str | os.PathLike, noise: str = "awgn:15,25,50",
                    baselines: str | Sequence[str] = ("bm3d",), seed: int = 0, out: str | os.PathLike | None = None,
                    colour: str = "refuse", figure_images: int = 3, crop: int = 96, progress: bool = True,
                    model: dict | None = None) -> dict:
    """Score a denoiser and classical baselines on every image of a folder, under the Set12 protocol.

    Parameters
    ----------
    denoise_fn : ``fn(noisy (H, W) float32, unclipped) -> denoised (H, W)`` on the [0, 1] scale, or
        None to score the noisy input and the baselines only.
    images_dir : a folder of grayscale PNG/JPEG images (:func:`daelab.folders.load_image_folder`).
    noise : a noise list (``awgn:15,25,50``; any registered spec works, clipped ones too).
    baselines : names of :data:`daelab.evaluate._baselines.DENOISERS` (``bm3d``, ``nlm``, ``tv``,
        ``wavelet``, ...; ``all``/``none``), given the true std ``noise.nominal_std``; a method whose
        package is missing is skipped with a note.
    seed : the user's seed: the noisy images come from :func:`daelab.seeds.image_noise_generator`.
    out : a directory to write ``evaluation.json``, ``evaluation.md`` and ``crops.png`` into (None:
        write nothing).
    colour : how the folder treats colour files (``"refuse"`` or ``"luma"``).
    figure_images, crop : the crops figure shows the central ``crop`` x ``crop`` pixels of the first
        ``figure_images`` images at the middle noise level of the list.
    model : what ``denoise_fn`` is (e.g. ``{"model": "natural-gray", "ensemble": 8}``), recorded as
        ``result["model"]`` and in the Markdown's first lines.

    Returns
    -------
    dict with ``image_results`` (one row per (noise, method): ``noise``, ``method`` (``"model"``,
    ``"noisy"`` or a baseline's name), mean ``psnr``/``ssim`` (8-bit) and ``psnr_float``,
    ``n_images``, ``seconds_per_image``, ``per_image`` (name -> psnr/ssim/psnr_float)), plus the
    protocol's settings, the baselines' parameter mappings, skipped methods, and for Set12 the
    published figures (``published``).
    """
    folder = load_image_folder(images_dir, colour=colour)
    noises = parse_noise_list(noise)
    denoisers, skipped = resolve_denoisers(baselines)
    if figure_images < 0 or crop < 8:
        raise ConfigError(f"figure_images {figure_images} / crop {crop} invalid", "use figure_images >= 0, crop >= 8")
    figure_noise = noises[len(noises) // 2]
    methods = ([MODEL] if denoise_fn is not None else []) + [NOISY] + [d.name for d in denoisers]
    rows, published, crops = [], {}, {}
    steps = tqdm(total=len(noises) * len(folder), desc="images", leave=False, disable=not progress)
    for level in noises:
        scores = {method: [] for method in methods}
        seconds = {method: [] for method in methods if method != NOISY}
        for index, (name, clean) in enumerate(zip(folder.names, folder.images, strict=True)):
            noisy = draw_noisy_image(clean, level, seed, name)
            outputs = {NOISY: noisy}
            if denoise_fn is not None:
                start = time.perf_counter()
                outputs[MODEL] = np.asarray(denoise_fn(noisy), dtype=np.float64)
                seconds[MODEL].append(time.perf_counter() - start)
            for denoiser in denoisers:
                start = time.perf_counter()
                outputs[denoiser.name] = np.asarray(denoiser.denoise(noisy.astype(np.float64), level.nominal_std),
                                                    dtype=np.float64)
                seconds[denoiser.name].append(time.perf_counter() - start)
            for method in methods:
                scores[method].append(_score(clean, outputs[method]))
            if level is figure_noise and index < figure_images:
                crops[name] = {"clean": clean / 255.0, **outputs}
            steps.update()
        rows += [_row(level.spec, method, folder.names, scores[method], seconds.get(method, [])) for method in methods]
        reference = _published(folder, level)
        if reference is not None:
            published[level.spec] = reference
    steps.close()
    result = {
        "version": IMAGE_EVAL_VERSION,
        "images_dir": str(folder.path),
        "images": folder.names,
        "noise": [n.spec for n in noises],
        "seed": seed,
        "model": model or {},
        "protocol": {
            "noise": {n.spec: n.meaning for n in noises},
            "noise_draw": "one draw per (image, noise) from daelab.seeds.image_noise_generator(seed, spec, name)",
            "baseline_sigma": "the true std on the [0, 1] scale (noise.nominal_std, S/255 for awgn:S)",
            "baseline_images": "every baseline runs on every image (the Fashion-MNIST evaluation's per-method "
                               "image caps do not apply here)",
            "quantization": "outputs clipped to [0, 1] and rounded to 8 bits (round(clip(x, 0, 1) * 255)) before "
                            "PSNR/SSIM on the 0-255 scale; psnr_float is the PSNR of the unquantized output",
            "ssim": {key: value for key, value in SSIM8_SETTINGS.items()} | {"win_size": 11, "K1": 0.01, "K2": 0.03},
            "seconds_per_image": "wall-clock seconds of the method alone, per image",
        },
        "baselines": {d.name: d.mapping for d in denoisers},
        "skipped": skipped,
        "published": published,
        "image_results": rows,
    }
    if out is not None:
        _write_outputs(result, crops, Path(out), figure_noise.spec, crop)
    return result


def _write_outputs(result: dict, crops: dict, out: Path, figure_spec: str, crop: int) -> None:
    from daelab.runs import write_json
    out.mkdir(parents=True, exist_ok=True)
    if crops:
        result["figure"] = CROPS_FIGURE
        _plot_crops(crops, result, figure_spec, crop, out / CROPS_FIGURE)
    write_json(out / IMAGE_EVAL_FILE, result)
    (out / IMAGE_EVAL_MARKDOWN).write_text(format_images_markdown(result))


def format_images_markdown(result: dict) -> str:
    """The evaluation as Markdown: one table per noise level (method, PSNR, SSIM, seconds per image)."""
    lines = [f"# Denoising on {result['images_dir']} ({len(result['images'])} images, seed {result['seed']})", "",
             "Protocol: " + result["protocol"]["quantization"] + "; baselines told the true std.", ""]
    if result.get("model"):
        lines[2:2] = ["Model: " + ", ".join(f"{key} {value}" for key, value in result["model"].items()), ""]
    for spec in result["noise"]:
        rows = [row for row in result["image_results"] if row["noise"] == spec]
        reference = result["published"].get(spec, {})
        header = "| method | PSNR (dB) | SSIM | s / image |" + (" published PSNR |" if reference else "")
        lines += [f"## {spec}", "", header, "|---|---|---|---|" + ("---|" if reference else "")]
        for row in rows:
            extra = f" {reference[row['method']]:.2f} |" if row["method"] in reference else (" |" if reference else "")
            lines.append(f"| {row['method']} | {row['psnr']:.2f} | {row['ssim']:.4f} | {row['seconds_per_image']:.3f} |"
                         + extra)
        if reference:
            lines.append(f"| dncnn_b (published) | | | | {reference['dncnn_b']:.2f} |")
        lines.append("")
    for note in result["skipped"]:
        lines.append(f"- {note['name']} skipped: {note['reason']}")
    if result.get("figure"):
        lines += ["", f"![crops]({result['figure']})"]
    return "\n".join(lines).rstrip() + "\n"


def _plot_crops(crops: dict, result: dict, spec: str, crop: int, path: Path) -> None:
    """Rows of central crops per image: clean / noisy / model / best baseline, each with its image's PSNR."""
    from daelab.plots import plt
    rows = {row["method"]: row for row in result["image_results"] if row["noise"] == spec}
    baselines = [m for m in rows if m not in (MODEL, NOISY)]
    best = max(baselines, key=lambda m: rows[m]["psnr"]) if baselines else None
    columns = ["clean", NOISY] + ([MODEL] if MODEL in rows else []) + ([best] if best else [])
    fig, axes = plt.subplots(len(crops), len(columns), figsize=(2.0 * len(columns), 2.1 * len(crops)), dpi=100,
                             squeeze=False)
    for r, (name, images) in enumerate(crops.items()):
        height, width = images["clean"].shape
        size_y, size_x = min(crop, height), min(crop, width)
        top, left = (height - size_y) // 2, (width - size_x) // 2
        for c, column in enumerate(columns):
            ax = axes[r, c]
            ax.imshow(np.clip(images[column][top:top + size_y, left:left + size_x], 0, 1), cmap="gray", vmin=0, vmax=1,
                      interpolation="nearest")
            label = column if column == "clean" else f"{column} {rows[column]['per_image'][name]['psnr']:.2f} dB"
            ax.set_title(f"{name}: {label}" if c == 0 else label, fontsize=8)
            ax.set_xticks([])
            ax.set_yticks([])
    fig.suptitle(f"{spec}: central {crop}x{crop} crops (PSNR of the whole image)", fontsize=9)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
