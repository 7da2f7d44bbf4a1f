"""Denoising evaluation: how much cleaner a trained DAE makes noisy test images, next to classical baselines.

:func:`evaluate_run` loads a run's checkpoint, draws one seeded noisy copy of the test set per noise
level (so the noisy input, the DAE and every baseline see the same pixels), and scores each method
per image with MSE (the study's R_loss), PSNR and SSIM against the clean image, summarised as a mean
with a 95% t-interval. The DAE is scored on the whole test set (or ``dae_max_images``); the
baselines, which are far slower, on a seeded subsample of ``max_images`` images that is the head of
the same permutation, so every method is also compared on one common set of images. It also runs
the DAE across noise families (the robustness matrix) and writes ``evaluation.json`` (every number,
the config, the checkpoint and the figure paths), ``evaluation.md`` and ``figures/*.png`` into the
run directory.

PSNR of a perfect image is infinite; daelab caps it at :data:`PSNR_CAP_DB` (100 dB, an MSE of
1e-10, below float32 resolution) so means and intervals stay finite and JSON stays valid.
"""
from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from daelab import study
from daelab.checkpoint import atomic_write, check_writable, output_error
from daelab.config import to_jsonable
from daelab.data import Dataset, load_dataset, to_tensor
from daelab.errors import ConfigError, UsageError
from daelab.evaluate._baselines import (
    ESTIMATED,
    ORACLE,
    estimate_sigmas,
    resolve_denoisers,
    score_denoiser,
)
from daelab.evaluate._baselines import warm_up as baselines_warm_up
from daelab.evaluate._metrics import PSNR_CAP_DB, image_metrics, mse_per_image, psnr_from_mse
from daelab.models import in_batches
from daelab.noise import NoiseModel, parse_noise_list
from daelab.runs import checkpoint_path, load_model, write_json
from daelab.seeds import eval_noise_seed
from daelab.stats import mean_ci
from daelab.workers import WorkerPool, available_cores

log = logging.getLogger(__name__)

EVAL_FILE = "evaluation.json"
EVAL_MARKDOWN = "evaluation.md"
STUDY_LEVELS = study.UNIFORM_LEVELS
# Images per scoring job: a fixed multiple of ssim_per_image's own chunk, so that the sums SSIM rounds
# do not depend on the pool (every caller that must reproduce the evaluation's numbers scores in these).
SCORING_CHUNK = 2000
ROBUSTNESS = "gaussian:0.05,0.1,0.2,0.3;uniform:0.1,0.2,0.3,0.4;salt_pepper:0.05,0.1,0.2,0.3;masking:0.1,0.25,0.5,0.75"


@dataclass
class EvalConfig:
    """Evaluation settings. The defaults are the study's (uniform noise at five levels)."""

    noise: str = field(default=STUDY_LEVELS, metadata={"help": "noise specs to evaluate, NAME:L1,L2,...",
                                                       "metavar": "SPEC"})
    denoisers: str = field(default="all", metadata={"help": "classical baselines, comma-separated, or all/none "
                                                            "(gaussian_blur, median, wavelet, nlm, tv; bm3d only "
                                                            "when named: optional package, non-commercial "
                                                            "licence, ~2 s/image, first 20 images)",
                                                    "metavar": "NAMES"})
    max_images: int = field(default=1000, metadata={"help": "score the baselines on a seeded subsample of this "
                                                            "many test images; 0 = all"})
    dae_max_images: int = field(default=0, metadata={"help": "score the DAE on this many test images; 0 = all"})
    robustness: str = field(default=ROBUSTNESS, metadata={"help": "noise specs of the DAE robustness matrix, "
                                                                  "or none", "metavar": "SPEC"})
    robustness_max_images: int = field(default=2000, metadata={"help": "DAE images per cell of the robustness "
                                                                       "matrix (head of the same sample); 0 = all"})
    examples: int = field(default=10, metadata={"help": "example images per figure row"})
    seed: int = field(default=0, metadata={"help": "seed of the subsample and of every noise draw"})
    checkpoint: str = field(default="best", metadata={"help": "which checkpoint of the run",
                                                      "choices": ("best", "last")})
    batch_size: int = field(default=1000, metadata={"help": "images per DAE forward pass"})
    device: str = field(default="cpu", metadata={"help": "cpu, cuda, cuda:N or auto"})
    workers: int = field(default=0, metadata={"help": "processes that run the classical baselines and SSIM; 0 = "
                                                      "one per CPU core (when there are 200+ images), 1 = none"})
    data_dir: str | None = field(default=None, metadata={"help": "dataset directory or .npz; None = the one the "
                                                                 "run trained on", "metavar": "PATH"})

    def __post_init__(self):
        for name in ("max_images", "dae_max_images", "robustness_max_images", "examples", "workers"):
            if getattr(self, name) < 0:
                raise ConfigError(f"{name.replace('_', '-')} must be >= 0")
        if self.batch_size < 1:
            raise ConfigError("batch-size must be >= 1")
        self.noise_models  # noqa: B018 - validate the specs now, with their own clear errors
        self.robustness_models  # noqa: B018

    @property
    def noise_models(self) -> list[NoiseModel]:
        return parse_noise_list(self.noise)

    @property
    def robustness_models(self) -> list[NoiseModel]:
        return [] if self.robustness.strip().lower() in ("", "none") else parse_noise_list(self.robustness)


def summarise(metrics: dict[str, np.ndarray], seconds: float | None = None, **extra) -> dict:
    """Per-image metrics -> ``{metric: mean_ci(...)}`` plus ``seconds_per_image`` and any extra fields."""
    summary = {name: mean_ci(values) for name, values in metrics.items()}
    n = len(next(iter(metrics.values())))
    summary["seconds_per_image"] = None if seconds is None else seconds / n
    summary.update(extra)
    return summary


# ------------------------------------------------------------------------------ noise and DAE
def noise_seed(seed: int, noise: NoiseModel) -> int:
    """Seed of the one noise draw for ``noise``: depends on the spec, not on its position in a list."""
    return eval_noise_seed(seed, noise.spec)


def draw_noisy(clean: torch.Tensor, noise: NoiseModel, seed: int) -> torch.Tensor:
    """The fixed noisy copy of ``clean`` (N, H, W) float32 that every method is scored on."""
    return noise(clean, torch.Generator().manual_seed(noise_seed(seed, noise)))


@torch.inference_mode()
def run_dae(model: torch.nn.Module, noisy: torch.Tensor, batch_size: int = 1000) -> tuple[np.ndarray, float]:
    """Denoise ``noisy`` (N, H, W) with a model of any ``input_layout``.

    Returns
    -------
    (denoised, seconds) : (N, H, W) float32 numpy array, and the wall time of the forward passes.
    """
    n, height, width = noisy.shape
    device = next(model.parameters()).device
    shape = (-1, height * width) if model.input_layout == "flat" else (-1, 1, height, width)
    start = time.perf_counter()
    denoised = in_batches(model, noisy.reshape(shape), batch_size, device).reshape(n, height, width).numpy()
    return denoised, time.perf_counter() - start


# --------------------------------------------------------------------------------- one level
def evaluate_level(model, clean: torch.Tensor, noise: NoiseModel, config: EvalConfig, denoisers, n_subset: int,
                   progress: bool = True, pool: WorkerPool | None = None) -> tuple[dict, dict, dict]:
    """Score the noisy input, the DAE and every baseline at one noise level.

    Parameters
    ----------
    clean : (N, H, W) float32 tensor, the evaluation images in their seeded order; the baselines
        get the first ``n_subset`` of them.
    pool : where the baselines and SSIM run (see :class:`daelab.workers.WorkerPool`); None: here.

    Returns
    -------
    (result, examples, scores) : the JSON-ready result of this level, the first ``config.examples``
    images of each method ((k, H, W) arrays plus their R_loss) for the figures, and the per-image
    scores: ``noisy`` and ``dae`` on all N images, each baseline (``name@sigma``) on the first n of
    them, each ``{metric: (n,) array}``.
    """
    pool = pool or WorkerPool(1)
    clean_np = clean.numpy()  # float32 views; metrics and baselines compute in float64 per chunk
    noisy = draw_noisy(clean, noise, config.seed)
    noisy_np = noisy.numpy()
    denoised, dae_seconds = run_dae(model, noisy, config.batch_size)  # timed before the pool starts working
    k = min(config.examples, len(clean))
    result = {"noise": noise.spec, "noise_seed": noise_seed(config.seed, noise), "nominal_std": noise.nominal_std,
              "full": None}  # filled in below, after the baseline jobs are out

    # The common subset: every method on the same n_subset images and the same noisy pixels.
    # Its baseline jobs go out first, so that the pool works while this process scores the DAE's output.
    clean_sub, noisy_sub = clean_np[:n_subset].astype(np.float64), noisy_np[:n_subset].astype(np.float64)
    jobs = []
    if denoisers:
        # Oracle: the true std of this draw (clipping makes it smaller than the nominal one).
        oracle_sigma = float((noisy_sub - clean_sub).std())
        start = time.thread_time()
        estimated = estimate_sigmas(noisy_sub)
        estimate_seconds = time.thread_time() - start
        result["sigma"] = {"oracle": oracle_sigma, "estimated": mean_ci(estimated),
                           "estimate_seconds_per_image": estimate_seconds / n_subset}
        for denoiser in denoisers:
            for mode in (ORACLE, ESTIMATED):
                n = min(n_subset, denoiser.max_images or n_subset)  # slow methods: the head of the subsample
                sigmas = np.full(n, oracle_sigma) if mode == ORACLE else estimated[:n]
                jobs.append((denoiser, mode, n, pool.submit(score_denoiser, denoiser.name, noisy_sub[:n],
                                                            clean_sub[:n], sigmas, k)))
    # SSIM of the whole set is as slow as a baseline: it goes to the pool too, in chunks of a fixed
    # multiple of ssim_per_image's own chunk, so that the sums it rounds do not depend on the pool.
    scoring = {name: pool.map_chunks(image_metrics, (clean_np, images), SCORING_CHUNK)
               for name, images in (("noisy", noisy_np), ("dae", denoised))}
    per_image = {name: pool.gather_chunks(pending) for name, pending in scoring.items()}
    result["full"] = {"n": len(clean), "methods": {"noisy": summarise(per_image["noisy"]),
                                                   "dae": summarise(per_image["dae"], dae_seconds)}}
    examples = {"clean": clean_np[:k], "noisy": (noisy_np[:k], per_image["noisy"]["mse"][:k]),
                "dae": (denoised[:k], per_image["dae"]["mse"][:k])}
    head = {name: {m: v[:n_subset] for m, v in values.items()} for name, values in per_image.items()}
    subset = {"noisy": summarise(head["noisy"]), "dae": summarise(head["dae"], dae_seconds * n_subset / len(clean))}
    for denoiser, mode, n, future in tqdm(jobs, desc=f"baselines {noise.spec}", leave=False, disable=not progress):
        metrics, seconds, output = pool.result(future)
        if mode == ESTIMATED:
            seconds += estimate_seconds * n / n_subset  # a user without the clean image pays for it too
        key = f"{denoiser.name}@{mode}"
        head[key] = metrics
        subset[key] = summarise(metrics, seconds, sigma=mode)
        if mode == ORACLE:
            examples[denoiser.name] = (output, metrics["mse"][:k])
    result["subset"] = {"n": n_subset, "methods": subset}
    # Paired per-image gains over the noisy input: positive = the method helps, negative = it hurts.
    result["psnr_gain"] = {name: mean_ci(values["psnr"] - head["noisy"]["psnr"][:len(values["psnr"])])
                           for name, values in head.items() if name != "noisy"}
    scores = {**{name: values for name, values in head.items() if name not in per_image}, **per_image}
    return result, examples, scores


def robustness_matrix(model, clean: torch.Tensor, noises: list[NoiseModel], config: EvalConfig,
                      progress: bool = True) -> dict:
    """PSNR/MSE of the noisy input and of the DAE for each noise family and level (no baselines)."""
    clean_np = clean.numpy()
    rows = []
    for noise in tqdm(noises, desc="robustness", leave=False, disable=not progress):
        noisy = draw_noisy(clean, noise, config.seed)
        denoised, _ = run_dae(model, noisy, config.batch_size)
        mse_noisy, mse_dae = mse_per_image(clean_np, noisy.numpy()), mse_per_image(clean_np, denoised)
        psnr_noisy, psnr_dae = psnr_from_mse(mse_noisy), psnr_from_mse(mse_dae)
        rows.append({"noise": noise.spec, "family": noise.name, "level": noise.level,
                     "mse_noisy": float(mse_noisy.mean()), "mse_dae": float(mse_dae.mean()),
                     "psnr_noisy": float(psnr_noisy.mean()), "psnr_dae": float(psnr_dae.mean()),
                     "psnr_gain": mean_ci(psnr_dae - psnr_noisy)})
    return {"n": len(clean), "rows": rows}


# ------------------------------------------------------------------------------------ the run
def evaluate_run(run_dir: str | Path, config: EvalConfig | None = None, dataset: Dataset | None = None,
                 progress: bool = True, command: str | None = None, scores: dict | None = None) -> dict:
    """Evaluate the DAE of ``run_dir`` and the classical baselines; write JSON, Markdown and figures.

    Parameters
    ----------
    run_dir : a run directory written by ``daelab train``.
    config : evaluation settings (defaults: the study's).
    dataset : images to use instead of loading the run's dataset (tests pass a synthetic one).
    command : the command line to record in the JSON (default: the ``daelab evaluate`` command
        that reproduces this call, every setting spelled out).
    scores : a dict to receive each level's per-image scores (noise spec -> the third value of
        :func:`evaluate_level`), for a caller that builds on them (:func:`daelab.evaluate.evaluate_daes`).

    Returns
    -------
    The dict written to ``RUN_DIR/evaluation.json``.
    """
    from daelab.evaluate import _figures as figures_denoise
    from daelab.train import resolve_device
    config = config or EvalConfig()
    run_dir = Path(run_dir)
    started = time.perf_counter()
    denoisers, skipped = resolve_denoisers(config.denoisers)
    for note in skipped:
        log.warning("skipping %s: %s", note["name"], note["reason"])
    _check_outputs_writable(run_dir, config)  # before minutes of computing, not after
    model, state = load_model(run_dir, config.checkpoint, resolve_device(config.device))
    dataset = dataset if dataset is not None else run_dataset(state, config)
    clean, _, n_subset = evaluation_images(dataset, config)
    n_dae = len(clean)

    # Worker processes pay ~1 s to start; below a few hundred images the baselines take less than that.
    workers = config.workers or (available_cores() if n_subset >= 200 else 1)
    levels, examples = [], {}
    with WorkerPool(workers if denoisers else 1, warm=baselines_warm_up) as pool:
        for noise in tqdm(config.noise_models, desc="noise levels", disable=not progress):
            result, examples[noise.spec], level_scores = evaluate_level(model, clean, noise, config, denoisers,
                                                                        n_subset, progress, pool)
            levels.append(result)
            if scores is not None:
                scores[noise.spec] = level_scores
    # The matrix has many cells and only needs a mean gain per cell: a smaller head of the sample suffices.
    robustness = robustness_matrix(model, clean[:config.robustness_max_images or n_dae],
                                   config.robustness_models, config, progress)

    evaluation = {
        "version": 1,
        "command": command or equivalent_command(run_dir, config),
        "config": to_jsonable(config),
        "seed": config.seed,
        "run_dir": str(run_dir),
        "checkpoint": {"file": checkpoint_path(run_dir, config.checkpoint).name, "epoch": state.get("epoch"),
                       "best_metric": state.get("best_metric")},
        "model": {"name": model.config.name, "input_layout": model.input_layout, "code_dim": model.code_dim,
                  "train_noise": state.get("train_config", {}).get("noise")},
        "dataset": {"source": dataset.source, "n_test": len(dataset.test_images)},
        "n_images": {"dae": n_dae, "baselines": n_subset if denoisers else 0},
        "psnr_cap_db": PSNR_CAP_DB,
        "ci_level": 0.95,
        "denoisers": {d.name: d.mapping for d in denoisers},
        "skipped": skipped,
        "levels": levels,
        "headline": headline(levels),
        "robustness": robustness,
    }
    try:
        evaluation["figures"] = figures_denoise.write_figures(run_dir, evaluation, examples)
    except OSError as exc:
        raise output_error(run_dir / figures_denoise.FIGURES_DIR, exc) from None
    evaluation["timing"] = {"total_seconds": time.perf_counter() - started,
                            "dae_seconds_per_image": _mean([lv["full"]["methods"]["dae"]["seconds_per_image"]
                                                            for lv in levels]),
                            "threads": torch.get_num_threads(), "baseline_workers": workers if denoisers else 0}
    write_evaluation(run_dir, evaluation, format_markdown(evaluation))
    return evaluation


def run_dataset(state: dict, config: EvalConfig) -> Dataset:
    """The dataset an evaluation of a run with checkpoint ``state`` scores on (``config.data_dir`` or the run's)."""
    return load_dataset(config.data_dir or state.get("train_config", {}).get("data_dir"))


def evaluation_images(dataset: Dataset, config: EvalConfig) -> tuple[torch.Tensor, np.ndarray, int]:
    """The test images the DAE is scored on, in the evaluation's seeded order.

    Returns
    -------
    (clean, index, n_subset) : (n_dae, H, W) float32 tensor in [0, 1] (``config.dae_max_images`` of
    them, 0 = all); (n_dae,) their positions in ``dataset.test_images``; and how many of them, from
    the head, the baselines are scored on (``config.max_images``).
    """
    test = to_tensor(dataset.test_images, "image")[:, 0]  # (N, H, W) float32 in [0, 1]
    order = np.random.default_rng(config.seed).permutation(len(test))
    n_dae = min(config.dae_max_images or len(test), len(test))
    n_subset = min(config.max_images or n_dae, n_dae)
    index = order[:n_dae]
    return test[torch.from_numpy(index)], index, n_subset


def write_evaluation(run_dir: Path, evaluation: dict, markdown: str) -> None:
    """Write ``evaluation.json`` and ``evaluation.md`` (each atomically) into ``run_dir``; one-line error if not."""
    for name, text in ((EVAL_FILE, None), (EVAL_MARKDOWN, markdown)):
        try:
            if text is None:
                write_json(run_dir / name, evaluation)
            else:
                atomic_write(run_dir / name, lambda handle, text=text: handle.write(text.encode()))
        except OSError as exc:
            raise output_error(run_dir / name, exc) from None


def _check_outputs_writable(run_dir: Path, config: EvalConfig) -> None:
    """One-line error now if ``evaluation.json`` or ``figures/`` could not be written at the end."""
    from daelab.evaluate._figures import FIGURES_DIR
    checkpoint_path(run_dir, config.checkpoint)  # a missing run or checkpoint says so first
    hint = "make the run directory writable, or evaluate a writable copy of it"
    check_writable(run_dir, hint)
    figures = run_dir / FIGURES_DIR
    if figures.exists() or figures.is_symlink():
        if not figures.is_dir():
            raise UsageError(f"cannot write figures into {figures}: it is not a directory", hint)
        check_writable(figures, hint)


def equivalent_command(run_dir: str | Path, config: EvalConfig) -> str:
    """The ``daelab evaluate`` command line that reproduces ``config`` on ``run_dir``."""
    import shlex
    words = ["daelab", "evaluate", str(run_dir)]
    for name, value in to_jsonable(config).items():
        if value is not None:
            words += [f"--{name.replace('_', '-')}", *str(value).replace(";", " ").split()]
    return " ".join(shlex.quote(w) for w in words)


def _mean(values):
    values = [v for v in values if v is not None]
    return sum(values) / len(values) if values else None


def headline(levels: list[dict]) -> dict:
    """PSNR gain over the noisy input of every method at every level, as a table the report can print."""
    methods = list(dict.fromkeys(name for lv in levels for name in lv["psnr_gain"]))
    return {"noise": [lv["noise"] for lv in levels], "methods": methods,
            "psnr_gain_db": [[lv["psnr_gain"][m]["mean"] if m in lv["psnr_gain"] else None for lv in levels]
                             for m in methods]}


def format_markdown(evaluation: dict) -> str:
    """The evaluation as Markdown: per level, MSE/PSNR/SSIM (95% CI) and seconds per image of each method."""
    lines = [f"# Denoising evaluation of {evaluation['run_dir']}", "",
             f"Checkpoint `{evaluation['checkpoint']['file']}` (epoch {evaluation['checkpoint']['epoch']}), "
             f"seed {evaluation['seed']}; DAE on {evaluation['n_images']['dae']} test images, all methods on a "
             f"common subsample of {evaluation['n_images']['baselines'] or evaluation['n_images']['dae']}. "
             "Means with 95% t-intervals over images; gain = PSNR minus the noisy input's, same images. "
             "s/image: the DAE's wall time in batches on every core; a baseline's CPU time on one core "
             f"(one image at a time{_workers_note(evaluation)}).", ""]
    table = evaluation["headline"]
    if table["methods"]:
        lines += ["## PSNR gain over the noisy input (dB; negative = the method makes images worse)", "",
                  "| method | " + " | ".join(table["noise"]) + " |", "|---" * (len(table["noise"]) + 1) + "|"]
        lines += [f"| {name} | " + " | ".join("-" if g is None else f"{g:+.2f}" for g in gains) + " |"
                  for name, gains in zip(table["methods"], table["psnr_gain_db"], strict=True)]
        lines.append("")
    if evaluation["skipped"]:
        lines += ["Skipped: " + "; ".join(f"{s['name']} ({s['reason']})" for s in evaluation["skipped"]), ""]
    for level in evaluation["levels"]:
        lines += [f"## {level['noise']}", "",
                  "| method | n | MSE | PSNR (dB) | PSNR gain (dB) | SSIM | s/image |",
                  "|---|---|---|---|---|---|---|"]
        for scope in ("full", "subset"):
            methods = level[scope]["methods"]
            for name, row in methods.items():
                if scope == "full" and level["subset"]["n"] == level["full"]["n"]:
                    break
                gain = level["psnr_gain"].get(name) if scope == "subset" else None
                label = f"{name} (full set)" if scope == "full" else name
                lines.append(f"| {label} | {row['mse']['n']} | {_ci(row['mse'], 5)} | {_ci(row['psnr'], 2)} | "
                             f"{_ci(gain, 2) if gain else '-'} | {_ci(row['ssim'], 3)} | "
                             f"{_seconds(row['seconds_per_image'])} |")
        lines.append("")
    return "\n".join(lines)


def _workers_note(evaluation: dict) -> str:
    workers = evaluation.get("timing", {}).get("baseline_workers", 0)
    return f", {workers} worker processes side by side" if workers > 1 else ""


def _ci(stat: dict, digits: int) -> str:
    if stat["lo"] is None:
        return f"{stat['mean']:.{digits}f}"
    return f"{stat['mean']:.{digits}f} [{stat['lo']:.{digits}f}, {stat['hi']:.{digits}f}]"


def _seconds(value) -> str:
    if value is None:
        return "-"
    return f"{value * 1e3:.3f} ms" if math.isfinite(value) else "-"
