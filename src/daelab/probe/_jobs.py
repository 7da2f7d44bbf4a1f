"""The probe's units of work: job records that run here or in a worker process, and their outcomes.

A job is a small dataclass of plain NumPy arrays and settings -- :class:`MlpJob` (one classifier
stack: the feature sets of one width, every seed) or :class:`ShallowJob` (the linear probe or kNN on
one feature set) -- run by a module-level function (:func:`fit_mlp_stack`, :func:`run_shallow_job`).
Both pickle, so :class:`daelab.workers.WorkerPool` can hand them to forked workers, and both are
deterministic, so a job gives the same result wherever it runs (``tests/test_probe.py`` compares
pooled and in-process probes). An *outcome* is what a job's result means for one (feature, probe):
test predictions per seed, which of them are correct, the accuracies and the fit's facts.
"""
from __future__ import annotations

import time
from concurrent.futures import Future
from dataclasses import dataclass

import numpy as np
import torch
from tqdm.auto import tqdm

from daelab.probe._classifier import ClassifierSettings, train_classifiers
from daelab.probe._config import ProbeConfig
from daelab.probe._shallow import run_shallow
from daelab.probe._stacked import parameter_counts
from daelab.workers import WorkerPool, report

SEED_VARIES = "initial weights, sample order and dropout masks (each seed its own streams)"


@dataclass
class ProbeSplit:
    """What every probe shares: the labels, Keras' cut (train on training rows ``[:cut]``, validate on
    ``[cut:]``) and the seeds of the seeded probes."""

    train_y: torch.Tensor   # (N,) int64, every training image
    test_y: torch.Tensor    # (M,) int64
    cut: int
    seeds: list[int]        # the seeded probes' seeds


@dataclass
class MlpJob:
    """One classifier stack: the feature sets ``names`` (all one width), ``len(seeds)`` copies each.

    Copy ``k * len(seeds) + j`` of the stack is feature set ``names[k]`` with seed ``seeds[j]``.
    """

    names: tuple[str, ...]
    train: list[np.ndarray]     # per feature set (cut, D)
    train_y: np.ndarray         # (cut,)
    val: list[np.ndarray]       # per feature set (N - cut, D)
    val_y: np.ndarray           # (N - cut,)
    test: list[np.ndarray]      # per feature set (M, D)
    seeds: list[int]
    settings: ClassifierSettings
    threads: int = 0            # PyTorch threads while it runs; 0 = leave them as they are
    slot: int = -1              # the progress counter it advances once per epoch in a worker
    progress: bool = False      # its own progress bar (in this process only)

    @classmethod
    def build(cls, names: list[str], features: dict, split: ProbeSplit, config: ProbeConfig, threads: int,
              slot: int, progress: bool) -> MlpJob:
        """The job for the feature sets ``names`` of ``features`` (see :func:`daelab.probe.extract_features`)."""
        settings = ClassifierSettings(config.epochs, config.batch_size, config.lr, config.early_stopping)
        sets, cut = [features[name] for name in names], split.cut
        return cls(tuple(names), [f["train"][:cut].numpy() for f in sets], split.train_y[:cut].numpy(),
                   [f["train"][cut:].numpy() for f in sets], split.train_y[cut:].numpy(),
                   [f["test"].numpy() for f in sets], split.seeds, settings, threads, slot, progress)

    def outcomes(self, result: dict, features: dict, split: ProbeSplit) -> dict[str, dict]:
        """``{name: outcome}`` of this stack, as each feature set would give alone (the stacked training is
        the same arithmetic, tested); each outcome's ``seconds`` is its share of the stack's wall time."""
        outcomes = {}
        for k, name in enumerate(self.names):
            copies = slice(k * len(self.seeds), (k + 1) * len(self.seeds))
            outcomes[name] = outcome(result["predictions"][copies], split.test_y, self.seeds, SEED_VARIES,
                                     result["seconds"] / len(self.names), val_accuracy=result["val_accuracy"][copies],
                                     epochs_run=result["epochs_run"][copies], best_epoch=result["best_epoch"][copies],
                                     params=parameter_counts(features[name]["dim"]),
                                     trained_with=[n for n in self.names if n != name])
        return outcomes


def fit_mlp_stack(job: MlpJob) -> dict:
    """Train ``job``'s stack and predict its test sets (a :class:`~daelab.workers.WorkerPool` job).

    Returns
    -------
    dict
        ``{"predictions": (K*S, M) test classes, "val_accuracy", "epochs_run", "best_epoch"
        (per copy), "seconds"}``.
    """
    began = time.perf_counter()
    previous = torch.get_num_threads()
    if job.threads:
        torch.set_num_threads(job.threads)
    try:
        fit = train_classifiers([torch.from_numpy(x) for x in job.train], torch.from_numpy(job.train_y),
                                [torch.from_numpy(x) for x in job.val], torch.from_numpy(job.val_y), job.seeds,
                                job.settings, progress=job.progress, desc="mlp/" + "+".join(job.names),
                                on_epoch=lambda epoch: report(job.slot, epoch))
        tests = [torch.from_numpy(x) for x in job.test]
        per_copy = tests[0] if len(tests) == 1 else torch.stack([t for t in tests for _ in job.seeds])
        predictions = fit.model.predict(per_copy).numpy()
    finally:
        torch.set_num_threads(previous)
    return {"predictions": predictions, "val_accuracy": fit.val_accuracy, "epochs_run": fit.epochs_run,
            "best_epoch": fit.best_epoch, "seconds": time.perf_counter() - began}


@dataclass
class ShallowJob:
    """The ``linear`` or ``knn`` probe on one feature set, trained on the split's training rows."""

    feature: str
    probe: str
    train_x: np.ndarray         # (cut, D)
    train_y: np.ndarray         # (cut,)
    test_x: np.ndarray          # (M, D)
    linear_c: float
    linear_max_iter: int
    knn_k: int
    threads: int = 1            # BLAS/OpenMP threads of kNN (0 = leave them); the linear probe uses one

    @classmethod
    def build(cls, feature: str, probe: str, features: dict, split: ProbeSplit, config: ProbeConfig,
              threads: int) -> ShallowJob:
        """The job for ``probe`` on the feature set ``feature`` of ``features``."""
        data = features[feature]
        return cls(feature, probe, data["train"][:split.cut].numpy(), split.train_y[:split.cut].numpy(),
                   data["test"].numpy(), config.linear_c, config.linear_max_iter, config.knn_k, threads)

    def outcome(self, result: tuple, split: ProbeSplit) -> dict:
        """The outcome of this job's result: one run, deterministic given the data, stands for every seed."""
        prediction, extra, seconds = result
        return outcome(prediction[None, :], split.test_y, split.seeds[:1], None, seconds, **extra)


def run_shallow_job(job: ShallowJob) -> tuple[np.ndarray, dict, float]:
    """Run ``job`` (a :class:`~daelab.workers.WorkerPool` job): (test predictions (M,), fit facts, seconds)."""
    return run_shallow(job.probe, job.train_x, job.train_y, job.test_x, job.linear_c, job.linear_max_iter,
                       job.knn_k, job.threads)


def outcome(predictions: np.ndarray, test_y: torch.Tensor, seeds: list[int], varied: str | None, seconds: float,
            **extra) -> dict:
    """One (feature, probe)'s outcome from its test predictions (runs, M); ``varied`` None: deterministic."""
    correct = predictions == test_y.numpy()[None, :]  # (runs, M)
    return {"predictions": predictions, "correct": correct, "accuracies": correct.mean(axis=1).tolist(),
            "seeds": seeds, "varied": varied, "seconds": seconds, **extra}


def await_jobs(pending: list[tuple[MlpJob | ShallowJob, Future]], pool: WorkerPool, epochs: int,
               progress: bool) -> None:
    """Wait for the pooled jobs, with one progress bar over the classifier epochs and the shallow fits."""
    from concurrent.futures import FIRST_COMPLETED, wait
    stacks = [future for job, future in pending if isinstance(job, MlpJob)]  # in the order of their slots
    others = [future for job, future in pending if not isinstance(job, MlpJob)]
    waiting = {future for _, future in pending}
    with tqdm(total=len(stacks) * epochs + len(others), desc="probes (mlp epochs + linear/knn fits)", leave=False,
              disable=not progress) as bar:
        while waiting:
            _, waiting = wait(waiting, timeout=0.5, return_when=FIRST_COMPLETED)
            # a finished stack counts in full (early stopping may end it before the last epoch)
            done = sum(pool.counters[slot] if f in waiting else epochs for slot, f in enumerate(stacks))
            bar.update(done + sum(f not in waiting for f in others) - bar.n)
