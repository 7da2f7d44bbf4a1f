"""The probes that need no training loop: logistic regression and k nearest neighbours (scikit-learn).

Both are deterministic given the data, so a probe runs once per feature set, and both are
single-threaded or nearly so at this size (lbfgs measured slower on 2 threads than on 1), so
:func:`daelab.probe.probe_run` runs them side by side in worker processes
(:mod:`daelab.workers`). NumPy and scikit-learn only: workers need not import PyTorch.
"""
from __future__ import annotations

import time
import warnings

import numpy as np


def run_linear(train_x: np.ndarray, train_y: np.ndarray, test_x: np.ndarray, c: float = 1.0,
               max_iter: int = 300) -> tuple[np.ndarray, dict]:
    """Standardise, fit multinomial logistic regression (lbfgs); test predictions (M,) and fit facts."""
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler
    pipeline = make_pipeline(StandardScaler(), LogisticRegression(C=c, max_iter=max_iter))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)  # reported in the JSON instead
        pipeline.fit(train_x, train_y)
    iterations = int(np.max(pipeline[-1].n_iter_))
    return pipeline.predict(test_x), {"iterations": iterations, "converged": iterations < max_iter}


def run_knn(train_x: np.ndarray, train_y: np.ndarray, test_x: np.ndarray, k: int = 5) -> tuple[np.ndarray, dict]:
    """k nearest neighbours (Euclidean, brute force, float32); test predictions (M,)."""
    from sklearn.neighbors import KNeighborsClassifier
    knn = KNeighborsClassifier(n_neighbors=min(k, len(train_x)), algorithm="brute").fit(train_x, train_y)
    return knn.predict(test_x), {"k": knn.n_neighbors}


def run_shallow(probe: str, train_x: np.ndarray, train_y: np.ndarray, test_x: np.ndarray, linear_c: float,
                linear_max_iter: int, knn_k: int, threads: int = 1) -> tuple[np.ndarray, dict, float]:
    """``linear`` or ``knn`` on one feature set: (test predictions (M,), fit facts, wall seconds).

    ``threads`` caps the BLAS/OpenMP pools (0 = leave them); the linear probe always uses one thread
    (its many small parallel regions ran slower on 2 threads).
    """
    from threadpoolctl import threadpool_limits
    began = time.perf_counter()
    if probe == "linear":
        with threadpool_limits(limits=1):
            prediction, extra = run_linear(train_x, train_y, test_x, linear_c, linear_max_iter)
    elif probe == "knn":
        with threadpool_limits(limits=threads or None):
            prediction, extra = run_knn(train_x, train_y, test_x, knn_k)
    else:
        raise ValueError(f"not a shallow probe: {probe!r}")
    return prediction, extra, time.perf_counter() - began


def warm_up() -> None:
    """Import scikit-learn's estimators now (a worker calls this before its first job)."""
    x = np.random.default_rng(0).random((20, 3)).astype(np.float32)
    y = np.arange(20) % 2
    run_shallow("linear", x, y, x, 1.0, 5, 3)
    run_shallow("knn", x, y, x, 1.0, 5, 3)
