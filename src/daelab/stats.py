"""Statistics for comparisons over repeated runs: means with t-intervals, paired differences, bootstraps, verdicts.

daelab never reports one run of a random procedure as a result. A number comes with its mean,
sample standard deviation and a Student-t confidence interval over ``n`` repetitions (seeds), and a
comparison between two settings is made on the *paired* per-seed differences (same seed -> same
initialisation and sample order where the two settings allow it), whose interval decides the
verdict: a difference is only called when its interval excludes zero. A probe's comparison has
more sources of chance than its classifier seeds -- the trained DAE (its seed, and the CPU's
arithmetic, which changes the codes) and the test images -- so :func:`hierarchical_bootstrap`
resamples all three from per-image correctness, says in its result what it was over, and
:func:`bootstrap_verdict` words the verdict from that scope ("for this one trained DAE").
"""
from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
from scipy import stats as _scipy_stats
from threadpoolctl import threadpool_limits

from daelab.seeds import bootstrap_rng

NO_DIFFERENCE = "no detectable difference"
BOOTSTRAP_METHOD = ("nested percentile bootstrap: DAE seeds, then classifier seeds within each resampled DAE seed, "
                    "then test images (one draw per replicate, shared by every seed and by both sides: paired)")
# The three levels of a probe's design, outermost first, as hierarchical_bootstrap names them.
LEVELS = ("dae_seeds", "classifier_seeds", "test_images")


def mean_ci(values: Sequence[float], level: float = 0.95) -> dict:
    """Mean, sample standard deviation and a two-sided Student-t interval for the mean.

    Parameters
    ----------
    values : sequence of float
        (n,) numbers, n >= 1 (one per seed, say).
    level : float
        Coverage of the interval, in (0, 1).

    Returns
    -------
    dict
        ``mean``, ``std`` (ddof=1), ``lo``, ``hi`` (the interval ``mean -+ t * std / sqrt(n)`` with
        ``t`` the ``(1 + level) / 2`` quantile of Student's t with n - 1 degrees of freedom) and
        ``n``. With n = 1 there is no spread to measure: ``std`` is 0 and ``lo = hi = mean``.
    """
    array = np.asarray(values, dtype=np.float64).reshape(-1)
    if array.size == 0:
        raise ValueError("mean_ci needs at least one value")
    if not 0.0 < level < 1.0:
        raise ValueError(f"level must be in (0, 1), got {level}")
    if not np.isfinite(array).all():  # an inf PSNR must never turn a mean into inf silently
        raise ValueError("mean_ci got non-finite values")
    n = int(array.size)
    mean = float(array.mean())
    if n == 1:
        return {"mean": mean, "std": 0.0, "lo": mean, "hi": mean, "n": 1}
    std = float(array.std(ddof=1))
    half = float(_scipy_stats.t.ppf((1.0 + level) / 2.0, n - 1)) * std / math.sqrt(n)
    return {"mean": mean, "std": std, "lo": mean - half, "hi": mean + half, "n": n}


def paired_difference(a: Sequence[float], b: Sequence[float], level: float = 0.95) -> dict:
    """The per-pair differences ``a - b`` and :func:`mean_ci` of them.

    Parameters
    ----------
    a, b : sequence of float
        (n,) paired results (``a[i]`` and ``b[i]`` from the same seed, or the same test image).
    level : float
        Coverage of the interval.

    Returns
    -------
    dict
        The :func:`mean_ci` keys of the differences, plus ``differences`` (the list ``a - b``) and
        ``level``.
    """
    a_arr = np.asarray(a, dtype=np.float64).reshape(-1)
    b_arr = np.asarray(b, dtype=np.float64).reshape(-1)
    if a_arr.shape != b_arr.shape:
        raise ValueError(f"paired values need equal lengths, got {a_arr.size} and {b_arr.size}")
    differences = a_arr - b_arr
    return {**mean_ci(differences, level), "differences": differences.tolist(), "level": level}


def verdict(difference: dict, a: str = "codes", b: str = "raw") -> str:
    """One line that follows from a paired difference's interval.

    ``"<a> better"`` when the interval lies above 0, ``"<b> better"`` when it lies below,
    ``"no detectable difference"`` when it contains 0, and ``"undetermined (a single pair)"`` when
    ``n < 2`` (one pair measures no spread, so its zero-width interval would decide nothing honestly).

    Parameters
    ----------
    difference : dict
        ``lo``, ``hi`` and ``n`` of ``a - b`` (from :func:`paired_difference`).
    a, b : str
        Names of the two things compared.
    """
    if difference["n"] < 2:
        return "undetermined (a single pair)"
    if difference["lo"] > 0:
        return f"{a} better"
    if difference["hi"] < 0:
        return f"{b} better"
    return NO_DIFFERENCE


def hierarchical_bootstrap(correct_a, correct_b, level: float = 0.95, n_boot: int = 2000, seed: int = 0,
                           chunk: int = 256) -> dict:
    """Paired difference of two accuracies with a nested bootstrap interval over DAE seeds, classifier seeds and images.

    The estimate is the mean of ``correct_a - correct_b`` over every (DAE seed, classifier seed, test
    image). Each bootstrap replicate draws DAE seeds with replacement, then classifier seeds with
    replacement within each drawn DAE seed, then test images with replacement -- one image draw per
    replicate, shared by every seed and by ``a`` and ``b``, since the test set is one sample that
    every run is judged on (paired). A level with one unit is not resampled (it is named in the
    result, not in ``resampled``). Images enter through multinomial weights applied to per-image
    differences (a matrix product per chunk of replicates), so B = 2000 on 3 x 5 x 10,000 takes
    about a second.

    Parameters
    ----------
    correct_a, correct_b : array_like of bool or {0, 1}
        (D, S, N) per-image correctness: DAE seed d, classifier seed s, test image i. A side whose
        features do not depend on the DAE (raw pixels, PCA) may be given once, as (1, S, N) or
        (S, N): it is the same for every d. Classifier seed s and image i must mean the same on
        both sides (a deterministic probe has S = 1).
    level : float
        Coverage of the interval, in (0, 1).
    n_boot : int
        Bootstrap replicates B.
    seed : int
        Seeds the resampling (stream :data:`daelab.seeds.BOOTSTRAP`): the same inputs and seed give
        the same interval.
    chunk : int
        Replicates per matrix product (memory: ``chunk * N`` weights).

    Returns
    -------
    dict
        ``mean`` (the difference a - b), ``lo``, ``hi`` (the ``(1 -+ level) / 2`` percentiles of the
        replicates), ``std`` (their standard deviation: the bootstrap standard error), ``level`` and
        ``interval_over``: ``{"dae_seeds": D, "classifier_seeds": S, "test_images": N, "resampled":
        [the levels with more than one unit, outermost first], "n_boot": B, "method", "seed"}``.

    Notes
    -----
    What it covers is what was resampled: with one DAE seed, the difference *for that trained DAE*
    (over classifier seeds and the image population), which a different DAE seed -- or CPU -- may not
    share. ``tests/test_verdicts.py`` measures it on synthetic data, nominal 95%: over 5 DAE seeds
    it covered the population difference 92.75% of the time (the classifier-seeds t-interval of one
    DAE: 62.5%); over one DAE seed it covered that DAE's own difference 98.5%. A percentile interval
    over few top-level units is a little narrow (D - 1 of D spread, normal tails); lower levels,
    whose spread is counted in the upper level's too, make it a little wide.
    """
    if not 0.0 < level < 1.0:
        raise ValueError(f"level must be in (0, 1), got {level}")
    if n_boot < 2:
        raise ValueError(f"n_boot must be >= 2, got {n_boot}")
    a, b = _correctness(correct_a, "correct_a"), _correctness(correct_b, "correct_b")
    if a.shape[1:] != b.shape[1:] or (a.shape[0] != b.shape[0] and 1 not in (a.shape[0], b.shape[0])):
        raise ValueError(f"correct_a {a.shape} and correct_b {b.shape} do not pair: need (D, S, N) and (D or 1, S, N)")
    a, b = np.broadcast_arrays(a, b)
    dae_seeds, classifier_seeds, images = a.shape
    differences = a.astype(np.int64) - b  # (D, S, N) in {-1, 0, 1}
    total = dae_seeds * classifier_seeds * images
    # float32 is exact here: a replicate's per-run sum is an integer of magnitude <= N (weights sum to N)
    per_run = differences.reshape(dae_seeds * classifier_seeds, images).astype(np.float32)
    sizes = dict(zip(LEVELS, (dae_seeds, classifier_seeds, images)))
    resampled = [name for name in LEVELS if sizes[name] > 1]
    rng = bootstrap_rng(seed)
    replicates = np.empty(n_boot, dtype=np.float64)
    # one BLAS thread: these products are small, and spare threads spinning on busy cores made them 3x slower
    with threadpool_limits(limits=1, user_api="blas"):
        for start in range(0, n_boot, chunk):
            m = min(chunk, n_boot - start)
            weights = _image_weights(rng, m, images) if images > 1 else np.ones((m, 1), dtype=np.float32)
            sums = weights @ per_run.T  # (m, D * S): each run's weighted sum of per-image differences
            daes = rng.integers(0, dae_seeds, (m, dae_seeds)) if dae_seeds > 1 else np.zeros((m, 1), dtype=np.int64)
            seeds = (rng.integers(0, classifier_seeds, (m, dae_seeds, classifier_seeds)) if classifier_seeds > 1
                     else np.zeros((m, dae_seeds, 1), dtype=np.int64))
            runs = (daes[:, :, None] * classifier_seeds + seeds).reshape(m, -1)  # (m, D * S) drawn (d, s) pairs
            replicates[start:start + m] = np.take_along_axis(sums, runs, axis=1).sum(axis=1, dtype=np.float64)
    replicates /= total
    lo, hi = np.quantile(replicates, [(1.0 - level) / 2.0, (1.0 + level) / 2.0])
    over = {**sizes, "resampled": resampled, "n_boot": int(n_boot), "method": BOOTSTRAP_METHOD, "seed": int(seed)}
    return {"mean": float(differences.sum() / total), "lo": float(lo), "hi": float(hi),
            "std": float(replicates.std(ddof=1)), "level": level, "interval_over": over}


def _correctness(values, name: str) -> np.ndarray:
    """``values`` as a (D, S, N) int8 array of 0/1 ((S, N) becomes (1, S, N))."""
    array = np.asarray(values)
    if array.ndim == 2:
        array = array[None]
    if array.ndim != 3 or 0 in array.shape:
        raise ValueError(f"{name} must be (D, S, N) per-image correctness, got shape {array.shape}")
    if array.dtype != np.bool_ and not ((array == 0) | (array == 1)).all():
        raise ValueError(f"{name} must hold 0/1 (correct or not) only")
    return array.astype(np.int8)


def _image_weights(rng: np.random.Generator, replicates: int, images: int) -> np.ndarray:
    """(replicates, images) multinomial counts: how often each image is drawn in each replicate's resample."""
    draws = rng.integers(0, images, (replicates, images)) + (np.arange(replicates) * images)[:, None]
    return np.bincount(draws.ravel(), minlength=replicates * images).reshape(replicates, images).astype(np.float32)


def scope(interval_over: dict) -> str:
    """What a verdict from an interval over ``interval_over`` may claim: ``"for this one trained DAE"`` with one
    DAE seed (its training seed and the CPU that trained it are not in the interval), else ``"over D trained DAEs"``.

    Parameters
    ----------
    interval_over : dict
        The ``interval_over`` of :func:`hierarchical_bootstrap` (``dae_seeds`` at least).
    """
    count = int(interval_over["dae_seeds"])
    return "for this one trained DAE" if count == 1 else f"over {count} trained DAEs"


def bootstrap_verdict(interval: dict, a: str = "codes", b: str = "raw", scoped: bool = True) -> str:
    """One line that follows from a :func:`hierarchical_bootstrap` interval, worded by its scope.

    ``"<a> better"`` when the interval lies above 0, ``"<b> better"`` when it lies below,
    ``"no detectable difference"`` when it contains 0, ``"undetermined (nothing resampled)"`` when
    every level had one unit; followed (``scoped``) by :func:`scope`, e.g. ``"codes better for this
    one trained DAE"`` or ``"no detectable difference over 3 trained DAEs"``.

    Parameters
    ----------
    interval : dict
        ``lo``, ``hi`` and ``interval_over`` (from :func:`hierarchical_bootstrap`).
    a, b : str
        Names of the two things compared.
    scoped : bool
        Append the scope; False gives the bare phrase (the words :func:`verdict` uses).
    """
    if not interval["interval_over"]["resampled"]:
        phrase = "undetermined (nothing resampled)"
    else:
        phrase = verdict({"lo": interval["lo"], "hi": interval["hi"], "n": 2}, a, b)
    return f"{phrase} {scope(interval['interval_over'])}" if scoped else phrase
