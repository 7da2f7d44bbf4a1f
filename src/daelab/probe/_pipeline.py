"""Feature probes: are a trained encoder's codes worth more to a classifier than raw pixels?

The study answered with one run each (codes 0.8752 vs pixels 0.8764 test accuracy, reported as
"0.89 vs 0.87"). ``probe_run`` answers with statistics: it extracts feature sets from a run's
encoder and from the images (``codes``, ``codes_noisy``, ``raw``, and ``pca`` -- the classical
linear code of the same width; :mod:`daelab.probe._features`), trains probes on each (``mlp``: the
study's classifier, over ``n`` seeds, all seeds of a feature set trained at once by
:mod:`daelab.probe._classifier`; ``linear``: standardised multinomial logistic regression; ``knn``:
k nearest neighbours; as jobs of :mod:`daelab.probe._jobs`), and compares feature sets
(:mod:`daelab.probe._compare`). ``probe_runs`` does the same for several trained DAEs of one
config (their seeds differ), so that a comparison's interval -- over DAE seeds, classifier seeds
and test images, paired -- covers the DAE's training too. Every probe trains on the
same split -- Keras' ``validation_split``: the first 7/9 of the training images, the last 2/9 held
out -- and is judged on the test set. It writes ``probe.json`` (every number, what each interval is
over, and the relative paths of the figures), ``probe.md`` (:mod:`daelab.probe._markdown`),
``probe_correct.npz`` (per-image correctness) and ``figures/`` into the (first) run directory.
"""
from __future__ import annotations

import logging
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from daelab import study
from daelab.config import to_jsonable
from daelab.data import Dataset, load_dataset
from daelab.errors import ConfigError
from daelab.probe._classifier import keras_validation_split
from daelab.probe._classifier import warm_up as classifier_warm_up
from daelab.probe._compare import correctness, design_comparison, design_row, headline
from daelab.probe._config import (
    ACCURACY_FIGURE,
    CLASS_NAMES,
    COMPARISONS,
    CONFUSION_FIGURE,
    CORRECT_FILE,
    DAE_FEATURES,
    JSON_FILE,
    MARKDOWN_FILE,
    PROBES,
    SEEDS_FIGURE,
    ProbeConfig,
)
from daelab.probe._features import extract_features
from daelab.probe._jobs import MlpJob, ProbeSplit, ShallowJob, await_jobs, fit_mlp_stack, run_shallow_job
from daelab.probe._markdown import format_markdown
from daelab.probe._shallow import warm_up as shallow_warm_up
from daelab.probe._stacked import parameter_counts
from daelab.runs import load_model, write_json
from daelab.stats import LEVELS, METHODS, mean_ci, scope
from daelab.workers import WorkerPool, available_cores

log = logging.getLogger(__name__)
# Train settings that do not change what a run trains (beside the seed, which is what may differ).
_RUNTIME_ONLY = ("seed", "threads", "checkpoint_every")


def probe_run(run_dir: str | os.PathLike, config: ProbeConfig | None = None, dataset: Dataset | None = None,
              progress: bool = True) -> dict:
    """Probe the encoder of ``run_dir``; write ``probe.json``, ``probe.md``, ``probe_correct.npz`` and figures there.

    The one-DAE case of :func:`probe_runs`: its intervals and verdicts speak "for this one trained DAE".

    Parameters
    ----------
    run_dir : str or os.PathLike
        A run directory written by ``daelab train``.
    config : ProbeConfig, optional
        Which features, probes, seeds, and the classifier recipe (default: the study's).
    dataset : Dataset, optional
        Images to use instead of loading the run's dataset (tests pass a synthetic one).
    progress : bool
        Show progress bars.

    Returns
    -------
    dict
        The content of ``probe.json`` (see its keys: ``results``, ``comparisons``, ``headline``,
        ``interval_over``, ``study``, ``best``, ``confusion``, ``figures``, ...), plus ``correct_arrays``
        (the per-image correctness, as :func:`load_correct` reads it back).
    """
    return probe_runs([run_dir], config, dataset, progress)


def probe_runs(run_dirs: Sequence[str | os.PathLike], config: ProbeConfig | None = None,
               dataset: Dataset | None = None, progress: bool = True, out_dir: str | os.PathLike | None = None) -> dict:
    """Probe several trained DAEs of one config (different seeds) and compare features over all of them.

    The features that do not depend on the DAE (``raw``, ``pca``) are probed once; every DAE's
    ``codes`` (and ``codes_noisy``) are probed with the same classifier seeds, split and test images.
    Each comparison's ``interval`` is over DAE seeds x classifier seeds x test images, paired
    (:func:`daelab.stats.hierarchical_bootstrap`, ``config.interval``), and decides its ``verdict``; the
    first run's classifier-seeds interval (today's) is kept beside it. With one run the numbers of
    the first run are those :func:`probe_run` has always given, bit for bit.

    Parameters
    ----------
    run_dirs : sequence of str or os.PathLike
        Run directories written by ``daelab train`` with the same model and training config except
        ``--seed`` (and the thread settings); the seeds must differ.
    config : ProbeConfig, optional
        As for :func:`probe_run`.
    dataset : Dataset, optional
        Images to use instead of loading the first run's dataset.
    progress : bool
        Show progress bars.
    out_dir : str or os.PathLike, optional
        Where ``probe.json``, ``probe.md``, ``probe_correct.npz`` and ``figures/`` go (default: the
        first run directory).

    Returns
    -------
    dict
        As :func:`probe_run`; ``run_dirs`` and ``dae_seeds`` list the runs.

    Raises
    ------
    ConfigError
        No run given, runs trained with other settings than the first, or two runs with one seed.
    """
    runs = [Path(run_dir) for run_dir in run_dirs]
    if not runs:
        raise ConfigError("no run directory to probe", "give one or more run directories of daelab train")
    config = config or ProbeConfig()
    out = Path(out_dir) if out_dir is not None else runs[0]
    if not config.threads:
        return _probe_runs(runs, out, config, dataset, progress)
    # Cap torch *and* the BLAS/OpenMP pools scikit-learn uses: on a shared machine, idle threads
    # spinning in a pool make lbfgs several times slower (measured 7.5x on 2 loaded cores).
    from threadpoolctl import threadpool_limits
    threads = torch.get_num_threads()
    torch.set_num_threads(config.threads)
    try:
        with threadpool_limits(limits=config.threads):
            return _probe_runs(runs, out, config, dataset, progress)
    finally:
        torch.set_num_threads(threads)


def load_correct(out_dir: str | os.PathLike) -> dict[tuple[str, str], np.ndarray]:
    """The per-image correctness a probe stored: ``{(feature, probe): (D, S, N) bool}`` (D = 1 for raw/pca).

    Parameters
    ----------
    out_dir : str or os.PathLike
        Where the probe wrote ``probe_correct.npz``.
    """
    with np.load(Path(out_dir) / CORRECT_FILE) as stored:
        return {tuple(key.split("/")): stored[key] for key in stored.files if "/" in key}


def _probe_runs(runs: list[Path], out: Path, config: ProbeConfig, dataset: Dataset | None, progress: bool) -> dict:
    began = time.perf_counter()
    trained = [load_model(run_dir, config.checkpoint) for run_dir in runs]
    dae_seeds = _check_one_design(runs, [checkpoint for _, checkpoint in trained])
    model, checkpoint = trained[0]
    data = _probe_data(checkpoint, config, dataset)
    features = extract_features(model, checkpoint, data.dataset, config.features, data.split.cut, config.seed)
    outcomes = [_run_probes(features, data.split, config, progress), *_probe_more_daes(trained[1:], data, config,
                                                                                        progress)]
    design = (config.level, config.n_boot, config.seed, config.interval)
    results = [design_row(_result_row(fname, pname, outcomes[0][fname, pname], config.level), outcomes, *design)
               for fname in config.features for pname in config.probes]
    comparisons = [design_comparison(outcomes, pname, a, b, *design, margin=config.margin)
                   for pname in config.probes for a, b in COMPARISONS
                   if a in config.features and b in config.features]
    best = max(results, key=lambda row: row["mean"])
    confusion = _confusion(best, outcomes[0][best["feature"], best["probe"]], data)
    correct = {f"{fname}/{pname}": correctness(outcomes, fname, pname)
               for fname in config.features for pname in config.probes}
    out.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(out / CORRECT_FILE, test_labels=data.dataset.test_labels, **correct)
    _draw_figures(out, results, confusion, config.level, dae_seeds)
    top = headline(comparisons)
    probe_report = {
        "version": 1,
        "run_dir": str(runs[0]),
        "run_dirs": [str(run_dir) for run_dir in runs],
        "dae_seeds": dae_seeds,
        "checkpoint": config.checkpoint,
        "config": to_jsonable(config),
        "data": data.description(),
        "seeds": data.split.seeds,
        "level": config.level,
        "interval_over": _interval_over(dae_seeds, data, config),
        "features": {k: {key: v for key, v in f.items() if key not in ("train", "test")} for k, f in features.items()},
        "probes": {k: PROBES[k] for k in config.probes},
        "classifier_params": parameter_counts(model.code_dim),
        "results": results,
        "comparisons": comparisons,
        "headline": top,
        "study": study.probe_summary(),
        "best": {"feature": best["feature"], "probe": best["probe"], "mean": best["mean"]},
        "confusion": confusion,
        "correct": {"file": CORRECT_FILE, "keys": list(correct), "test_labels": "test_labels",
                    "shape": "(DAE seeds, classifier seeds, test images) bool; DAE seeds 1 for the features that "
                             "do not depend on the DAE, classifier seeds 1 for a deterministic probe"},
        "figures": {"confusion": CONFUSION_FIGURE, "accuracy": ACCURACY_FIGURE, "seeds": SEEDS_FIGURE},
        "seconds": time.perf_counter() - began,
    }
    write_json(out / JSON_FILE, probe_report)
    (out / MARKDOWN_FILE).write_text(format_markdown(probe_report))
    return {**probe_report, "correct_arrays": {tuple(key.split("/")): array for key, array in correct.items()}}


def _check_one_design(runs: list[Path], checkpoints: list[dict]) -> list[int]:
    """The runs' DAE seeds, after checking that the runs differ in nothing else that shapes what they train."""
    def design(checkpoint: dict) -> dict:
        train = {k: v for k, v in checkpoint["train_config"].items() if k not in _RUNTIME_ONLY}
        return {**{f"model.{k}": v for k, v in checkpoint["model_config"].items()}, **train}

    first = design(checkpoints[0])
    for run_dir, checkpoint in zip(runs[1:], checkpoints[1:]):
        other = design(checkpoint)
        differ = sorted(k for k in {*first, *other} if first.get(k) != other.get(k))
        if differ:
            raise ConfigError(f"{run_dir} was trained with other settings than {runs[0]} ({', '.join(differ)})",
                              "probe runs of one config that differ in --seed only")
    seeds = [int(checkpoint["train_config"]["seed"]) for checkpoint in checkpoints]
    repeated = sorted({seed for seed in seeds if seeds.count(seed) > 1})
    if repeated:
        raise ConfigError(f"two runs have seed {repeated[0]}: each DAE seed counts once",
                          "probe runs trained with different --seed")
    return seeds


def _probe_more_daes(trained: list[tuple], data: _ProbeData, config: ProbeConfig, progress: bool) -> list[dict]:
    """The outcomes of every further DAE: its own feature sets only (raw and PCA do not change with the DAE)."""
    own = tuple(name for name in config.features if name in DAE_FEATURES)
    if not own:
        return []
    config = replace(config, features=own)
    return [_run_probes(extract_features(model, checkpoint, data.dataset, own, data.split.cut, config.seed),
                        data.split, config, progress) for model, checkpoint in trained]


def _interval_over(dae_seeds: list[int], data: _ProbeData, config: ProbeConfig) -> dict:
    """``probe.json``'s ``interval_over``: the design the comparisons' intervals (and verdicts) are over."""
    return {"dae_seeds": len(dae_seeds), "classifier_seeds": len(data.split.seeds),
            "test_images": len(data.dataset.test_images), "resampled": list(LEVELS), "n_boot": config.n_boot,
            "method": METHODS[config.interval], "seed": config.seed, "scope": scope({"dae_seeds": len(dae_seeds)}),
            "note": "each comparison's interval_over gives its own sizes: 1 classifier seed for a deterministic "
                    "probe, 1 DAE seed for features that do not depend on the DAE"}


# ------------------------------------------------------------------------------------ data
@dataclass
class _ProbeData:
    """The images the probe uses, their labels and the split."""

    dataset: Dataset
    split: ProbeSplit
    n_classes: int

    def description(self) -> dict:
        """``probe.json``'s ``data``: sizes and the split in words."""
        cut, n_train = self.split.cut, len(self.dataset.train_images)
        return {"source": self.dataset.source, "n_train": cut, "n_val": n_train - cut,
                "n_test": len(self.dataset.test_images), "n_classes": self.n_classes,
                "split": f"train on the first {cut} training images, validate on the last {n_train - cut} "
                         "(Keras validation_split, unshuffled); every probe trains on the same images; "
                         "accuracies are on the test set"}


def _probe_data(checkpoint: dict, config: ProbeConfig, dataset: Dataset | None) -> _ProbeData:
    if dataset is None:
        dataset = load_dataset(config.data_dir or checkpoint["train_config"].get("data_dir"))
    dataset = dataset.subset(config.subset, config.test_subset)
    try:
        cut = keras_validation_split(len(dataset.train_images), config.val_split)
    except ValueError as exc:
        raise ConfigError(str(exc), "use more training images or another --val-split") from None
    train_y, test_y = torch.from_numpy(dataset.train_labels), torch.from_numpy(dataset.test_labels)
    n_classes = int(max(train_y.max(), test_y.max())) + 1
    seeds = list(range(config.seed, config.seed + config.seeds))
    return _ProbeData(dataset, ProbeSplit(train_y, test_y, cut, seeds), n_classes)


# ---------------------------------------------------------------------------------- probes
def _run_probes(features: dict, split: ProbeSplit, config: ProbeConfig, progress: bool) -> dict[tuple, dict]:
    """Every (feature, probe) outcome; the jobs run in worker processes where that pays.

    Every job runs single-threaded in a worker, one per core, longest first (the classifier stacks,
    then the shallow probes by feature width): this small classifier gains 1.4-1.7x from a second
    thread, two stacks side by side 2x (measured on 2 cores). With fewer stacks than workers, the
    stacks train here first on every thread, as the only work running.
    """
    stacks = _stacks(features, config)
    shallow = sorted(((f, p) for f in config.features for p in config.probes if p != "mlp"),
                     key=lambda pair: -features[pair[0]]["dim"])
    jobs = len(stacks) + len(shallow)
    workers = config.workers or (available_cores() if jobs > 1 and split.cut >= 5000 else 1)
    outcomes: dict[tuple, dict] = {}
    with WorkerPool(workers, warm=shallow_warm_up, counters=len(stacks)) as pool:
        pooled = pool.workers > 1 and len(stacks) >= pool.workers
        pending: list[tuple[MlpJob | ShallowJob, object]] = []
        if pooled:
            classifier_warm_up()  # once, before the workers fork: PyTorch's optimizer imports, the C kernels
        for slot, names in enumerate(stacks):
            job = MlpJob.build(names, features, split, config, 1 if pooled else config.threads, slot,
                               progress and not pooled)
            if pooled:
                pending.append((job, pool.submit(fit_mlp_stack, job)))
            else:
                _record(outcomes, job, fit_mlp_stack(job), features, split)
        threads = 1 if pool.workers > 1 else config.threads  # one thread per worker process
        for fname, pname in shallow:
            job = ShallowJob.build(fname, pname, features, split, config, threads)
            pending.append((job, pool.submit(run_shallow_job, job)))
        if pooled:
            await_jobs(pending, pool, config.epochs, progress)
        quiet = not progress or pooled or not shallow  # pooled jobs had their bar in await_jobs
        for job, future in tqdm(pending, desc="linear/knn probes", leave=False, disable=quiet):
            _record(outcomes, job, pool.result(future), features, split)
    return outcomes


def _stacks(features: dict, config: ProbeConfig) -> list[list[str]]:
    """The mlp probe's stacks, widest first: feature sets of one width train as one stack (less per-step overhead)."""
    if "mlp" not in config.probes:
        return []
    widths: dict[int, list[str]] = {}
    for fname in config.features:
        widths.setdefault(features[fname]["dim"], []).append(fname)
    return sorted(widths.values(), key=lambda names: -features[names[0]]["dim"])


def _record(outcomes: dict, job: MlpJob | ShallowJob, result, features: dict, split: ProbeSplit) -> None:
    """File a finished job's outcomes under (feature, probe)."""
    if isinstance(job, MlpJob):
        outcomes.update({(name, "mlp"): outcome for name, outcome in job.outcomes(result, features, split).items()})
    else:
        outcomes[job.feature, job.probe] = job.outcome(result, split)


def _result_row(fname: str, pname: str, outcome: dict, level: float) -> dict:
    """One row of ``results``: the accuracy summary of (feature, probe) and its outcome's facts."""
    summary = mean_ci(outcome["accuracies"], level)
    log.info("probe %-6s on %-11s: accuracy %.4f +- %.4f (n=%d, %.1f s)", pname, fname, summary["mean"],
             summary["std"], summary["n"], outcome["seconds"])
    return {"feature": fname, "probe": pname, **summary,
            "varies_with_seed": outcome["varied"] is not None,
            "varied": outcome["varied"] or "nothing: deterministic given the data, run once",
            **{k: v for k, v in outcome.items() if k not in ("predictions", "correct", "varied")}}


def _confusion(best: dict, outcome: dict, data: _ProbeData) -> dict:
    """The confusion matrix of the best (feature, probe)'s first run on the test set."""
    n_classes = data.n_classes
    matrix = np.zeros((n_classes, n_classes), dtype=np.int64)
    np.add.at(matrix, (data.dataset.test_labels, outcome["predictions"][0]), 1)
    class_names = list(CLASS_NAMES) if n_classes == len(CLASS_NAMES) else [str(k) for k in range(n_classes)]
    return {"feature": best["feature"], "probe": best["probe"], "seed": best["seeds"][0],
            "class_names": class_names, "matrix": matrix.tolist(), "rows": "true class", "columns": "predicted class"}


def _draw_figures(run_dir: Path, results: list[dict], confusion: dict, level: float, dae_seeds: list[int]) -> None:
    from daelab.probe._figures import plot_confusion, plot_probe_accuracy, plot_seed_accuracy
    (run_dir / "figures").mkdir(parents=True, exist_ok=True)
    title = f"{confusion['probe']} on {confusion['feature']} (seed {confusion['seed']})"
    plot_confusion(np.array(confusion["matrix"]), confusion["class_names"], run_dir / CONFUSION_FIGURE, title)
    plot_probe_accuracy(results, run_dir / ACCURACY_FIGURE, level, study.probe_summary())
    plot_seed_accuracy(results, run_dir / SEEDS_FIGURE, level, dae_seeds)
