"""Statistics for comparisons over repeated runs: means with t-intervals, paired differences, verdicts.

daelab never reports one run of a random procedure as a result. A number comes with its mean,
sample standard deviation and a Student-t confidence interval over ``n`` repetitions (seeds), and a
comparison between two settings is made on the *paired* per-seed differences (same seed -> same
initialisation and sample order where the two settings allow it), whose interval decides the
verdict: a difference is only called when its interval excludes zero.
"""
from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
from scipy import stats as _scipy_stats

NO_DIFFERENCE = "no detectable difference"


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
