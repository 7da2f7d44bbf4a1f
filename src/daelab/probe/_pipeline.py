"""Feature probes: are a trained encoder's codes worth more to a classifier than raw pixels?

The study answered with one run each (codes 0.8752 vs pixels 0.8764 test accuracy, reported as
"0.89 vs 0.87"). ``probe_run`` answers with statistics: it extracts feature sets from a run's
encoder and from the images (``codes``, ``codes_noisy``, ``raw``, and ``pca`` -- the classical
linear code of the same width; :mod:`daelab.probe._features`), trains probes on each (``mlp``: the
study's classifier, over ``n`` seeds, all seeds of a feature set trained at once by
:mod:`daelab.probe._classifier`; ``linear``: standardised multinomial logistic regression; ``knn``:
k nearest neighbours; as jobs of :mod:`daelab.probe._jobs`), and compares feature sets with paired
differences and t-intervals (:mod:`daelab.stats`). Every probe trains on the same split -- Keras'
``validation_split``: the first 7/9 of the training images, the last 2/9 held out -- and is judged
on the test set. It writes ``probe.json`` (every number, and the relative paths of the figures),
``probe.md`` (:mod:`daelab.probe._markdown`) and ``figures/`` into the run directory.
"""
from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass
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
from daelab.probe._config import (
    ACCURACY_FIGURE,
    CLASS_NAMES,
    COMPARISONS,
    CONFUSION_FIGURE,
    JSON_FILE,
    MARKDOWN_FILE,
    PROBES,
    ProbeConfig,
)
from daelab.probe._features import extract_features
from daelab.probe._jobs import MlpJob, ProbeSplit, ShallowJob, await_jobs, fit_mlp_stack, run_shallow_job
from daelab.probe._markdown import format_markdown
from daelab.probe._shallow import warm_up as shallow_warm_up
from daelab.probe._stacked import parameter_counts
from daelab.runs import load_model, write_json
from daelab.stats import mean_ci, paired_difference, verdict
from daelab.workers import WorkerPool, available_cores

log = logging.getLogger(__name__)


def probe_run(run_dir: str | os.PathLike, config: ProbeConfig | None = None, dataset: Dataset | None = None,
              progress: bool = True) -> dict:
    """Probe the encoder of ``run_dir``; write ``probe.json``, ``probe.md`` and figures there.

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
        ``study``, ``best``, ``confusion``, ``figures``, ...).
    """
    config = config or ProbeConfig()
    if not config.threads:
        return _probe_run(Path(run_dir), config, dataset, progress)
    # Cap torch *and* the BLAS/OpenMP pools scikit-learn uses: on a shared machine, idle threads
    # spinning in a pool make lbfgs several times slower (measured 7.5x on 2 loaded cores).
    from threadpoolctl import threadpool_limits
    threads = torch.get_num_threads()
    torch.set_num_threads(config.threads)
    try:
        with threadpool_limits(limits=config.threads):
            return _probe_run(Path(run_dir), config, dataset, progress)
    finally:
        torch.set_num_threads(threads)


def _probe_run(run_dir: Path, config: ProbeConfig, dataset: Dataset | None, progress: bool) -> dict:
    began = time.perf_counter()
    model, checkpoint = load_model(run_dir, config.checkpoint)
    data = _probe_data(checkpoint, config, dataset)
    features = extract_features(model, checkpoint, data.dataset, config.features, data.split.cut, config.seed)
    outcomes = _run_probes(features, data.split, config, progress)
    results = [_result_row(fname, pname, outcomes[fname, pname], config.level)
               for fname in config.features for pname in config.probes]
    comparisons = [{"probe": pname, **compare(outcomes[a, pname], outcomes[b, pname], a, b, config.level)}
                   for pname in config.probes for a, b in COMPARISONS
                   if a in config.features and b in config.features]
    best = max(results, key=lambda row: row["mean"])
    confusion = _confusion(best, outcomes[best["feature"], best["probe"]], data)
    _draw_figures(run_dir, results, confusion, config.level)
    probe_report = {
        "version": 1,
        "run_dir": str(run_dir),
        "checkpoint": config.checkpoint,
        "config": to_jsonable(config),
        "data": data.description(),
        "seeds": data.split.seeds,
        "level": config.level,
        "features": {k: {key: v for key, v in f.items() if key not in ("train", "test")} for k, f in features.items()},
        "probes": {k: PROBES[k] for k in config.probes},
        "classifier_params": parameter_counts(model.code_dim),
        "results": results,
        "comparisons": comparisons,
        "headline": _headline(comparisons),
        "study": study.probe_summary(),
        "best": {"feature": best["feature"], "probe": best["probe"], "mean": best["mean"]},
        "confusion": confusion,
        "figures": {"confusion": CONFUSION_FIGURE, "accuracy": ACCURACY_FIGURE},
        "seconds": time.perf_counter() - began,
    }
    write_json(run_dir / JSON_FILE, probe_report)
    (run_dir / MARKDOWN_FILE).write_text(format_markdown(probe_report))
    return probe_report


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


# ------------------------------------------------------------------------------ statistics
def compare(outcome_a: dict, outcome_b: dict, a: str, b: str, level: float) -> dict:
    """Paired comparison of two feature sets under one probe.

    Seeded probes pair per seed (same seed: same order, dropout masks and -- where the shapes allow
    -- initial weights). Deterministic probes have one run each: they are paired per test image
    (correct_a - correct_b), whose interval measures test-set sampling, not seed-to-seed spread.

    Parameters
    ----------
    outcome_a, outcome_b : dict
        Outcomes of the same probe on feature sets ``a`` and ``b`` (``accuracies`` per seed,
        ``correct`` (runs, M) per test image, ``varied``: None for a deterministic probe).
    a, b : str
        The feature sets' names.
    level : float
        Confidence level of the interval.

    Returns
    -------
    dict
        ``a``, ``b``, the paired difference a - b (``mean``, ``lo``, ``hi``, ``n``, ...), ``over``
        (``"seeds"`` or ``"test images"``) and the ``verdict``.
    """
    if outcome_a["varied"] and outcome_b["varied"]:
        diff = paired_difference(outcome_a["accuracies"], outcome_b["accuracies"], level)
        over = "seeds"
    else:
        diff = paired_difference(outcome_a["correct"][0], outcome_b["correct"][0], level)
        diff.pop("differences")  # one 0/+-1 value per test image: summarised by the interval
        over = "test images"
    return {"a": a, "b": b, **diff, "over": over, "verdict": verdict(diff, a, b)}


def _headline(comparisons: list[dict]) -> dict | None:
    """The study's question (mlp: codes vs raw) where it was asked, else the first comparison."""
    return next((c for c in comparisons if (c["probe"], c["a"], c["b"]) == ("mlp", "codes", "raw")),
                comparisons[0] if comparisons else None)


def _confusion(best: dict, outcome: dict, data: _ProbeData) -> dict:
    """The confusion matrix of the best (feature, probe)'s first run on the test set."""
    n_classes = data.n_classes
    matrix = np.zeros((n_classes, n_classes), dtype=np.int64)
    np.add.at(matrix, (data.dataset.test_labels, outcome["predictions"][0]), 1)
    class_names = list(CLASS_NAMES) if n_classes == len(CLASS_NAMES) else [str(k) for k in range(n_classes)]
    return {"feature": best["feature"], "probe": best["probe"], "seed": best["seeds"][0],
            "class_names": class_names, "matrix": matrix.tolist(), "rows": "true class", "columns": "predicted class"}


def _draw_figures(run_dir: Path, results: list[dict], confusion: dict, level: float) -> None:
    from daelab.probe._figures import plot_confusion, plot_probe_accuracy
    (run_dir / "figures").mkdir(parents=True, exist_ok=True)
    title = f"{confusion['probe']} on {confusion['feature']} (seed {confusion['seed']})"
    plot_confusion(np.array(confusion["matrix"]), confusion["class_names"], run_dir / CONFUSION_FIGURE, title)
    plot_probe_accuracy(results, run_dir / ACCURACY_FIGURE, level, study.probe_summary())
