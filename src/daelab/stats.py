"""Statistics for comparisons over repeated runs: means with t-intervals, paired differences, bootstraps, verdicts.

daelab never reports one run of a random procedure as a result. A number comes with its mean,
sample standard deviation and a Student-t confidence interval over ``n`` repetitions (seeds), and a
comparison between two settings is made on the *paired* per-seed differences (same seed -> same
initialisation and sample order where the two settings allow it), whose interval decides the
verdict: a difference is only called when its interval excludes zero. Where the difference lies about
one half-width from zero, whether it does turns on the last digits of the trained weights, so
:func:`size_verdict` also says what the same interval claims of the difference's *size* against a
practical margin (within +-0.01 of zero, beyond it, or not known to be either), a claim that does
not turn on them while the interval lies well inside or outside the margin. A probe's comparison has
more sources of chance than its classifier seeds -- the trained DAE (its seed, and the CPU's
arithmetic, which changes the codes) and the test images -- so :func:`hierarchical_bootstrap`
takes all three into the interval from per-image correctness (:func:`hierarchical_interval` from real
values, such as a denoiser's per-image PSNR over several DAEs), says in its result what it is over, and
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
NOTHING_RESAMPLED = "undetermined (nothing resampled)"  # a verdict or size from an interval that measured no spread
# How hierarchical_bootstrap's interval is made (the key is its ``method`` argument).
METHODS = {
    "t": "Student-t interval on the design's variance components (DAE seeds, classifier seeds, test images; each "
         "the variance of the level's means over its units / units), Satterthwaite degrees of freedom",
    "percentile": "percentile interval of a crossed paired bootstrap: DAE seeds, classifier seeds and test images "
                  "each resampled once per replicate, shared by the other levels and by both sides",
}
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


def size_class(lo: float, hi: float, margin: float) -> str:
    """Where an interval [lo, hi] lies against [-margin, +margin]: ``"within"``, ``"above"`` (lo > margin),
    ``"below"`` (hi < -margin) or ``"across"`` (it crosses an end); ``margin`` > 0."""
    if not margin > 0:
        raise ValueError(f"the margin must be > 0, got {margin}")
    if -margin <= lo and hi <= margin:
        return "within"
    if lo > margin:
        return "above"
    if hi < -margin:
        return "below"
    return "across"


def size_verdict(interval: dict, margin: float, a: str = "codes", b: str = "raw") -> str:
    """What an interval says of the size of a difference ``a - b`` against a practical ``margin``
    (:func:`size_class`, in words).

    ``"<a> and <b> within ±<margin>"`` when the interval lies inside [-margin, +margin] (the
    difference, whatever its sign, is smaller than the margin: an equivalence claim at the
    interval's level), ``"<a> better by more than <margin>"`` / ``"<b> better by more than
    <margin>"`` when it lies beyond one end, ``"a difference beyond ±<margin> not ruled out"`` when
    it crosses an end, and :data:`NOTHING_RESAMPLED` when the interval measured no spread
    (``interval_over`` with no ``resampled`` level).

    Parameters
    ----------
    interval : dict
        ``lo``, ``hi`` and, where it comes from :func:`hierarchical_bootstrap`, ``interval_over``.
    margin : float
        The largest difference that counts as negligible, > 0 (in the units of the difference:
        0.01 is one percentage point of accuracy).
    a, b : str
        Names of the two things compared.
    """
    where = size_class(interval["lo"], interval["hi"], margin)
    if not interval.get("interval_over", {"resampled": True})["resampled"]:
        return NOTHING_RESAMPLED
    shown = f"{margin:g}"
    return {"within": f"{a} and {b} within ±{shown}", "above": f"{a} better by more than {shown}",
            "below": f"{b} better by more than {shown}", "across": f"a difference beyond ±{shown} not ruled out"}[where]


def hierarchical_bootstrap(correct_a, correct_b, level: float = 0.95, n_boot: int = 2000, seed: int = 0,
                           method: str = "t", chunk: int = 256) -> dict:
    """Paired difference of two accuracies with an interval over DAE seeds, classifier seeds and test images.

    The estimate is the mean of ``correct_a - correct_b`` over every (DAE seed, classifier seed, test
    image). The three levels are *crossed*, as a probe's design is: classifier seed s is the same
    seed (streams, split) for every DAE and both sides -- raw's run with seed s is paired with every
    DAE's codes run with seed s -- and image i is the same test image for every run. So each
    bootstrap replicate draws DAE seeds, classifier seeds and images with replacement, each once,
    shared by the other levels and by ``a`` and ``b`` (paired; Owen's "pigeonhole" bootstrap, a
    little conservative). Resampling classifier seeds within each DAE seed instead would treat
    raw's seed-to-seed spread, which every DAE shares, as if it averaged out over DAEs.

    The interval (``method``): ``"t"`` (default) is ``mean -+ t * se`` with ``se**2`` the sum over
    the levels with more than one unit of (variance of that level's means) / units, and ``t`` the
    Student quantile with Welch-Satterthwaite degrees of freedom. With a single level it is the
    t-interval over that level's units (:func:`paired_difference` over classifier seeds when the
    images agree, over images for a deterministic probe), so it does not narrow with few DAE or
    classifier seeds as a percentile interval does (5 units: 0.8 of the spread, normal tails).
    ``"percentile"`` takes the bootstrap replicates' percentiles. Both are in the result. Images
    enter the replicates through multinomial weights applied to per-image differences (a matrix
    product per chunk of replicates): B = 2000 on 3 x 5 x 10,000 takes about a second.

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
        the same result.
    method : {"t", "percentile"}
        Which interval ``lo`` and ``hi`` are (see above).
    chunk : int
        Replicates per matrix product (memory: ``chunk * N`` weights).

    Returns
    -------
    dict
        ``mean`` (the difference a - b), ``lo``, ``hi`` (the interval), ``se`` (the components'
        standard error), ``df``, ``std`` (the bootstrap replicates' standard deviation),
        ``percentile`` ([lo, hi] of the replicates), ``level`` and ``interval_over``:
        ``{"dae_seeds": D, "classifier_seeds": S, "test_images": N, "resampled": [the levels with
        more than one unit, outermost first], "components": {level: variance of the mean}, "n_boot":
        B, "method": what the interval is, "seed"}``.

    Notes
    -----
    What it covers is what was resampled: with one DAE seed, the difference *for that trained DAE*
    (over classifier seeds and the image population), which a different DAE seed -- or CPU -- may not
    share. ``tests/test_verdicts.py`` measures the coverage on synthetic data (see there).
    """
    _check_design_arguments(level, n_boot, method)
    a, b = _correctness(correct_a, "correct_a"), _correctness(correct_b, "correct_b")
    if a.shape[1:] != b.shape[1:] or (a.shape[0] != b.shape[0] and 1 not in (a.shape[0], b.shape[0])):
        raise ValueError(f"correct_a {a.shape} and correct_b {b.shape} do not pair: need (D, S, N) and (D or 1, S, N)")
    a, b = np.broadcast_arrays(a, b)
    differences = a.astype(np.int64) - b  # (D, S, N) in {-1, 0, 1}
    # float32 is exact for these integer differences (see _crossed_replicates)
    return _crossed_interval(differences, level, n_boot, seed, method, chunk, np.float32)


def hierarchical_interval(values, level: float = 0.95, n_boot: int = 2000, seed: int = 0, method: str = "t",
                          chunk: int = 256) -> dict:
    """Mean of real-valued per-unit values with :func:`hierarchical_bootstrap`'s interval over the crossed levels.

    The same estimate, variance components, degrees of freedom and crossed bootstrap as
    :func:`hierarchical_bootstrap`, for numbers that are not 0/1: a denoiser's per-image PSNR for
    each of D trained DAEs (``(D, 1, N)``), or its paired per-image gain over another method on the
    same images. Pass differences to get a paired interval: the pairing is in the values.

    Parameters
    ----------
    values : array_like of float
        (D, S, N) finite values: DAE seed d, classifier seed s (1 where there is none), test image i;
        image i is the same image for every d and s (the levels are crossed).
    level, n_boot, seed, method, chunk
        As for :func:`hierarchical_bootstrap`.

    Returns
    -------
    dict
        The keys of :func:`hierarchical_bootstrap` (``mean`` is the mean of ``values``).

    Notes
    -----
    With few DAE seeds the ``"t"`` interval has few degrees of freedom (about D - 1 when the DAE
    seeds' spread dominates) and is wide, as it should be; ``tests/test_evaluate_seeds.py``
    measures its coverage on synthetic data with a DAE-level random effect (D = 3).
    """
    _check_design_arguments(level, n_boot, method)
    array = np.asarray(values, dtype=np.float64)
    if array.ndim != 3 or 0 in array.shape:
        raise ValueError(f"values must be (D, S, N) per-unit values, got shape {array.shape}")
    if not np.isfinite(array).all():
        raise ValueError("values must be finite")
    return _crossed_interval(array, level, n_boot, seed, method, chunk, np.float64)


def _check_design_arguments(level: float, n_boot: int, method: str) -> None:
    if not 0.0 < level < 1.0:
        raise ValueError(f"level must be in (0, 1), got {level}")
    if n_boot < 2:
        raise ValueError(f"n_boot must be >= 2, got {n_boot}")
    if method not in METHODS:
        raise ValueError(f"unknown method {method!r}; valid: {', '.join(METHODS)}")


def _crossed_interval(differences: np.ndarray, level: float, n_boot: int, seed: int, method: str, chunk: int,
                      dtype) -> dict:
    """The estimate and interval of (D, S, N) ``differences``; ``dtype``: the bootstrap's matrix products."""
    sizes = dict(zip(LEVELS, differences.shape))
    mean = float(differences.sum() / differences.size)
    components = _components(differences)
    replicates = _crossed_replicates(differences, bootstrap_rng(seed), n_boot, chunk, dtype)
    percentile = [float(x) for x in np.quantile(replicates, [(1.0 - level) / 2.0, (1.0 + level) / 2.0])]
    variance = sum(components.values())
    # Welch-Satterthwaite: each component has (its units - 1) degrees of freedom
    df = (variance ** 2 / sum(v ** 2 / (sizes[k] - 1) for k, v in components.items() if v > 0)
          if variance > 0 else math.inf)
    if method == "t":
        half = float(_scipy_stats.t.ppf((1.0 + level) / 2.0, df)) * math.sqrt(variance) if variance > 0 else 0.0
        lo, hi = mean - half, mean + half
    else:
        lo, hi = percentile
    over = {**sizes, "resampled": [name for name in LEVELS if sizes[name] > 1], "components": components,
            "n_boot": int(n_boot), "method": METHODS[method], "seed": int(seed)}
    return {"mean": mean, "lo": lo, "hi": hi, "se": math.sqrt(variance), "df": df,
            "std": float(replicates.std(ddof=1)), "percentile": percentile, "level": level, "interval_over": over}


def _components(differences: np.ndarray) -> dict[str, float]:
    """Per level with more than one unit: the variance its units add to the grand mean (var of its means / units)."""
    components = {}
    for axis, name in enumerate(LEVELS):
        units = differences.shape[axis]
        if units > 1:
            others = tuple(k for k in range(3) if k != axis)
            components[name] = float(differences.mean(axis=others).var(ddof=1) / units)
    return components


def _crossed_replicates(differences: np.ndarray, rng: np.random.Generator, n_boot: int, chunk: int,
                        dtype=np.float32) -> np.ndarray:
    """(n_boot,) bootstrap means: DAE seeds, classifier seeds and images each drawn once per replicate."""
    dae_seeds, classifier_seeds, images = differences.shape
    # float32 is exact for 0/1 differences: a replicate's per-run sum is an integer of magnitude <= N (weights
    # sum to N); real values (hierarchical_interval) take float64
    per_run = differences.reshape(dae_seeds * classifier_seeds, images).astype(dtype)
    replicates = np.empty(n_boot, dtype=np.float64)
    # one BLAS thread: these products are small, and spare threads spinning on busy cores made them 3x slower
    with threadpool_limits(limits=1, user_api="blas"):
        for start in range(0, n_boot, chunk):
            m = min(chunk, n_boot - start)
            sums = (_counts(rng, m, images) @ per_run.T).reshape(m, dae_seeds, classifier_seeds)
            replicates[start:start + m] = np.einsum("rds,rd,rs->r", sums.astype(np.float64),
                                                    _counts(rng, m, dae_seeds), _counts(rng, m, classifier_seeds))
    return replicates / differences.size


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


def _counts(rng: np.random.Generator, replicates: int, units: int) -> np.ndarray:
    """(replicates, units) float32 multinomial counts: how often each unit is drawn in each replicate's resample
    (all ones for a single unit, which is not resampled)."""
    if units == 1:
        return np.ones((replicates, 1), dtype=np.float32)
    draws = rng.integers(0, units, (replicates, units)) + (np.arange(replicates) * units)[:, None]
    return np.bincount(draws.ravel(), minlength=replicates * units).reshape(replicates, units).astype(np.float32)


def scope(interval_over: dict) -> str:
    """What a verdict from an interval over ``interval_over`` may claim: ``"for this one trained DAE"`` with one
    DAE seed (its training seed and the CPU that trained it are not in the interval), else ``"over D trained DAEs"``.

    Parameters
    ----------
    interval_over : dict
        The ``interval_over`` of :func:`hierarchical_bootstrap` (``dae_seeds`` at least). A caller that
        compares two things neither of which depends on the DAE (raw pixels and PCA, say) sets
        ``depends_on_dae`` False there, and the scope says so instead.
    """
    if interval_over.get("depends_on_dae") is False:
        return "(neither side depends on the DAE)"
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
        phrase = NOTHING_RESAMPLED
    else:
        phrase = verdict({"lo": interval["lo"], "hi": interval["hi"], "n": 2}, a, b)
    return f"{phrase} {scope(interval['interval_over'])}" if scoped else phrase
