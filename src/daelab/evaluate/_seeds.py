"""Denoising over several trained DAEs: the DAE's PSNR, SSIM and MSE with an interval over DAE seeds and images.

:func:`evaluate_run` scores one trained DAE, and its intervals are over test images only: a verdict
from them holds "for this one trained DAE". A DAE trained with another seed (or on another CPU,
whose arithmetic changes the weights as a new seed would) denoises differently, so
:func:`evaluate_daes` takes several runs of one config that differ in their training seed, runs
:func:`evaluate_run` on the first (its numbers and files unchanged; it hands back its per-image
scores), then scores every further DAE on exactly the images and noisy draws that evaluation used, and adds a
``dae_seeds`` section to the first run's ``evaluation.json``: per noise level the mean over (DAE
seeds x images) with :func:`daelab.stats.hierarchical_interval` (a t-interval on the variance
components of the two crossed levels), each DAE's own mean, and the DAE's PSNR gain over the noisy
input and over the level's best classical baseline, paired per image. The baselines and the
robustness matrix do not depend on the DAE and are not repeated: the gain over the best baseline
is paired on the per-image values :func:`evaluate_run` scored it with (the head of the evaluation's
seeded subsample). The per-image PSNR of every DAE goes to
``evaluation_daes.npz`` beside the JSON.
"""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np
from tqdm.auto import tqdm

from daelab.checkpoint import atomic_write, output_error
from daelab.data import Dataset
from daelab.errors import ConfigError
from daelab.evaluate._metrics import image_metrics
from daelab.evaluate._pipeline import (
    SCORING_CHUNK,
    EvalConfig,
    draw_noisy,
    evaluate_run,
    evaluation_images,
    format_markdown,
    run_dae,
    run_dataset,
    write_evaluation,
)
from daelab.runs import load_model
from daelab.stats import METHODS, hierarchical_interval, scope
from daelab.workers import WorkerPool, available_cores

SEEDS_FILE = "evaluation_daes.npz"
METRICS = ("psnr", "ssim", "mse")
LEVEL = 0.95     # the evaluation's ci_level
N_BOOT = 2000    # bootstrap replicates beside the t-interval (the probe's default)
METHOD = "t"


def evaluate_daes(run_dirs: Sequence[str | Path], config: EvalConfig | None = None, dataset: Dataset | None = None,
                  progress: bool = True) -> dict:
    """Evaluate the first run as :func:`evaluate_run` does, and the DAE over every run's training seed.

    Parameters
    ----------
    run_dirs : sequence of str or Path
        Run directories written by ``daelab train`` with the same model and training config except
        ``--seed`` (and the thread settings); the seeds must differ. The first one gets the files.
    config : EvalConfig, optional
        Evaluation settings (default: the study's); every DAE is scored at its noise levels, on its
        ``dae_max_images`` test images, with its ``seed``'s noise draws.
    dataset : Dataset, optional
        Images to use instead of loading the first run's dataset (tests pass a synthetic one).
    progress : bool
        Show progress bars.

    Returns
    -------
    dict
        The evaluation :func:`evaluate_run` writes to ``run_dirs[0]/evaluation.json``; with two or
        more runs it holds ``dae_seeds`` too (see :func:`summarise_seeds` for a level's entry), and
        ``evaluation_daes.npz`` holds ``psnr/<noise spec>`` (D, N) per-image PSNR of every DAE,
        ``noisy_psnr/<noise spec>`` (N,), ``seeds`` (D,) and ``test_index`` (N,) (positions in the
        test set). With one run, exactly what :func:`evaluate_run` returns.

    Raises
    ------
    ConfigError
        No run given, runs trained with other settings than the first, or two runs with one seed.
    """
    from daelab.train import resolve_device
    runs = [Path(run_dir) for run_dir in run_dirs]
    if not runs:
        raise ConfigError("no run directory to evaluate", "give one or more run directories of daelab train")
    config = config or EvalConfig()
    if len(runs) == 1:
        return evaluate_run(runs[0], config, dataset, progress)
    device = resolve_device(config.device)
    trained = [load_model(run_dir, config.checkpoint, device) for run_dir in runs]
    seeds = _check_one_design(runs, [state for _, state in trained])  # before minutes of evaluate_run
    scores = {}  # evaluate_run's per-image scores: the first DAE, the noisy input and the baselines, per level
    evaluation = evaluate_run(runs[0], config, dataset, progress, scores=scores)

    dataset = dataset if dataset is not None else run_dataset(trained[0][1], config)
    clean, index, _ = evaluation_images(dataset, config)  # the images and order evaluate_run used
    clean_np = clean.numpy()
    workers = config.workers or (available_cores() if len(clean) >= 200 else 1)
    levels, arrays = [], {"seeds": np.asarray(seeds), "test_index": index}
    with WorkerPool(workers) as pool:
        for noise, result in tqdm(list(zip(config.noise_models, evaluation["levels"], strict=True)),
                                  desc="DAE seeds", disable=not progress):
            level = scores[noise.spec]
            noisy = draw_noisy(clean, noise, config.seed)  # the very draw evaluate_level scored every method on
            scoring = [pool.map_chunks(image_metrics, (clean_np, run_dae(model, noisy, config.batch_size)[0]),
                                       SCORING_CHUNK) for model, _ in trained[1:]]
            per_image = [level["dae"], *(pool.gather_chunks(chunks) for chunks in scoring)]
            per_dae = {name: np.stack([values[name] for values in per_image]) for name in METRICS}  # (D, N) each
            noisy_psnr = level["noisy"]["psnr"]
            best = _best_baseline(result)
            baseline = None if best is None else (best, level[best]["psnr"])
            levels.append(summarise_seeds(noise.spec, seeds, per_dae, noisy_psnr, baseline, seed=config.seed))
            arrays[f"psnr/{noise.spec}"] = per_dae["psnr"]
            arrays[f"noisy_psnr/{noise.spec}"] = noisy_psnr

    evaluation["dae_seeds"] = {"seeds": seeds, "run_dirs": [str(run_dir) for run_dir in runs],
                               "interval_over": _interval_over(levels, seeds, len(clean), config.seed),
                               "levels": [{k: v for k, v in lv.items() if k != "interval_over"} for lv in levels],
                               "file": SEEDS_FILE}
    run_dir = runs[0]
    try:
        atomic_write(run_dir / SEEDS_FILE, lambda handle: np.savez_compressed(handle, **arrays))
    except OSError as exc:
        raise output_error(run_dir / SEEDS_FILE, exc) from None
    write_evaluation(run_dir, evaluation, format_markdown(evaluation) + format_seeds(evaluation["dae_seeds"]))
    return evaluation


def summarise_seeds(noise: str, seeds: Sequence[int], per_dae: dict[str, np.ndarray], noisy_psnr: np.ndarray,
                    baseline: tuple[str, np.ndarray] | None = None, level: float = LEVEL, n_boot: int = N_BOOT,
                    seed: int = 0) -> dict:
    """One noise level's entry of ``dae_seeds``: intervals over DAE seeds x images from per-image values.

    Parameters
    ----------
    noise : the noise spec of the level.
    seeds : (D,) the DAEs' training seeds, in the order of the rows below.
    per_dae : ``{"psnr", "ssim", "mse"}`` -> (D, N) per-image values of each DAE on the same N images.
    noisy_psnr : (N,) PSNR of the noisy input on those images.
    baseline : (name, (n,) PSNR) of a baseline on the first n of the images (n <= N), or None.
    level, n_boot, seed : the intervals' coverage, bootstrap replicates and seed
        (:func:`daelab.stats.hierarchical_interval`).

    Returns
    -------
    dict
        ``{"noise", "dae": {metric: {"mean", "lo", "hi"}}, "per_dae": [{"seed", "psnr", "ssim", "mse"}],
        "gain": {"noisy": {"mean", "lo", "hi", "n_images"}, name: {...}}, "interval_over"}``: gains are the
        DAE's PSNR minus the other's on the same image, so their intervals are paired.
    """
    psnr = np.asarray(per_dae["psnr"], dtype=np.float64)
    if psnr.ndim != 2 or psnr.shape[0] != len(seeds) or np.shape(noisy_psnr) != psnr.shape[1:]:
        raise ValueError(f"per_dae psnr {psnr.shape} does not fit {len(seeds)} seeds and noisy_psnr "
                         f"{np.shape(noisy_psnr)}")

    def interval(values: np.ndarray) -> dict:
        return hierarchical_interval(values[:, None, :], level, n_boot, seed, METHOD)

    dae = {name: interval(np.asarray(per_dae[name], dtype=np.float64)) for name in METRICS}
    gains = {"noisy": psnr - np.asarray(noisy_psnr)[None]}
    if baseline is not None:
        name, base_psnr = baseline
        gains[name] = psnr[:, :len(base_psnr)] - np.asarray(base_psnr)[None]
    return {"noise": noise,
            "dae": {name: _bounds(result) for name, result in dae.items()},
            "per_dae": [{"seed": int(s), **{name: float(np.asarray(per_dae[name][d], dtype=np.float64).mean())
                                            for name in METRICS}} for d, s in enumerate(seeds)],
            "gain": {name: {**_bounds(interval(values)), "n_images": int(values.shape[1])}
                     for name, values in gains.items()},
            "interval_over": dae["psnr"]["interval_over"]}


def format_seeds(section: dict) -> str:
    """The ``dae_seeds`` section as a Markdown table (appended to ``evaluation.md``)."""
    over = section["interval_over"]
    seeds = ", ".join(str(s) for s in section["seeds"])
    lines = ["", f"## Over {over['dae_seeds']} trained DAEs (seeds {seeds})", "",
             f"Mean over DAE seeds x {over['test_images']} test images, with {round(over['level'] * 100)}% intervals "
             f"over both ({over['method']}); {over['scope']}. Gains are paired per image: over the noisy input on "
             "every image, over the level's best baseline on the images that baseline was scored on (the head of "
             "the seeded subsample).", "",
             "| noise | PSNR (dB) | SSIM | MSE | PSNR per DAE | gain over noisy (dB) | gain over best baseline (dB) |",
             "|---|---|---|---|---|---|---|"]
    for lv in section["levels"]:
        dae = lv["dae"]
        per_dae = " / ".join(f"{row['psnr']:.2f}" for row in lv["per_dae"])
        others = [(name, gain) for name, gain in lv["gain"].items() if name != "noisy"]
        best = "-" if not others else " ".join((others[0][0], _interval(others[0][1], 2, "+"),
                                                f"(n = {others[0][1]['n_images']})"))
        lines.append(f"| {lv['noise']} | {_interval(dae['psnr'], 2)} | {_interval(dae['ssim'], 3)} | "
                     f"{_interval(dae['mse'], 5)} | {per_dae} | {_interval(lv['gain']['noisy'], 2, '+')} | {best} |")
    return "\n".join(lines) + "\n"


# ----------------------------------------------------------------------------------- helpers
def _check_one_design(runs: list[Path], states: list[dict]) -> list[int]:
    """The runs' DAE seeds, after the probe's check that they differ in nothing else that shapes what they train."""
    from daelab.probe._pipeline import _check_one_design as check
    try:
        return check(runs, states)
    except ConfigError as exc:  # the probe's rule, the evaluation's words
        raise ConfigError(exc.message, "evaluate runs of one config that differ in --seed only") from None


def _best_baseline(result: dict) -> str | None:
    """The method of one evaluated level with the highest mean PSNR gain over the noisy input, the DAE aside."""
    gains = {name: gain["mean"] for name, gain in result["psnr_gain"].items() if name != "dae"}
    return max(gains, key=gains.get) if gains else None


def _bounds(result: dict) -> dict:
    return {"mean": result["mean"], "lo": result["lo"], "hi": result["hi"]}


def _interval_over(levels: list[dict], seeds: list[int], n_images: int, seed: int) -> dict:
    """The ``interval_over`` of ``dae_seeds``: what every interval of the section is over."""
    first = levels[0]["interval_over"] if levels else {"resampled": ["dae_seeds", "test_images"]}
    return {"dae_seeds": len(seeds), "test_images": n_images, "resampled": first["resampled"],
            "method": METHODS[METHOD], "scope": scope({"dae_seeds": len(seeds)}), "level": LEVEL, "n_boot": N_BOOT,
            "seed": seed,
            "note": "the gain over a baseline is paired on the images that baseline was scored on: the head of the "
                    "evaluation's seeded subsample (config.max_images; a slow method's own cap), n_images there"}


def _interval(stat: dict, digits: int, sign: str = "") -> str:
    return f"{stat['mean']:{sign}.{digits}f} [{stat['lo']:{sign}.{digits}f}, {stat['hi']:{sign}.{digits}f}]"
