"""Small statistics shared by the evaluation stages: a mean with its t confidence interval.

Kept deliberately tiny: one function, :func:`mean_ci`, whose output is a plain dict that goes
straight into the JSON files the report reads.
"""
from __future__ import annotations

import math

import numpy as np
from scipy import stats


def mean_ci(values, level: float = 0.95) -> dict:
    """Mean, sample standard deviation and the two-sided Student-t confidence interval of the mean.

    Parameters
    ----------
    values : array-like, shape (n,)
        One number per sample (e.g. per image). Non-finite values are an error of the caller and
        are rejected, so an ``inf`` PSNR can never silently turn a mean into ``inf``.
    level : float
        Confidence level of the interval, in (0, 1).

    Returns
    -------
    dict with ``mean``, ``std`` (ddof=1), ``lo``, ``hi`` (the interval) and ``n``. With ``n == 1``
    the std and interval bounds are ``None`` (JSON ``null``): one sample gives no spread.
    """
    values = np.asarray(values, dtype=np.float64).ravel()
    if not 0.0 < level < 1.0:
        raise ValueError(f"level must be in (0, 1), got {level}")
    if values.size == 0:
        raise ValueError("mean_ci needs at least one value")
    if not np.isfinite(values).all():
        raise ValueError("mean_ci got non-finite values")
    n = int(values.size)
    mean = float(values.mean())
    if n == 1:
        return {"mean": mean, "std": None, "lo": None, "hi": None, "n": 1}
    std = float(values.std(ddof=1))
    half = float(stats.t.ppf(0.5 + level / 2.0, df=n - 1)) * std / math.sqrt(n)
    return {"mean": mean, "std": std, "lo": mean - half, "hi": mean + half, "n": n}
