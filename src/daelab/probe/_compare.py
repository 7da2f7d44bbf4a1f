"""The probe's statistics: per-image correctness over the design, accuracy rows and paired comparisons.

A probe's design has three levels: the trained DAEs (one per DAE seed; only the feature sets a DAE
produces, :data:`~daelab.probe._config.DAE_FEATURES`, have more than one), the classifier seeds
(one for a deterministic probe) and the test images. Every (feature, probe) has a per-image
correctness array (D, S, N) -- (1, S, N) when the features do not depend on the DAE -- and every
comparison gets two intervals: today's (:func:`compare`: the first DAE's classifier seeds, or its
test images for a deterministic probe; kept bit for bit) and the interval over all three
levels (:func:`daelab.stats.hierarchical_bootstrap`: crossed, so that raw's run with classifier seed
s pairs with every DAE's codes run with seed s), which decides the ``verdict`` and states
what it is over (``interval_over``, worded in ``verdict_scoped``).
"""
from __future__ import annotations

import numpy as np

from daelab.probe._config import DAE_FEATURES
from daelab.stats import (
    bootstrap_verdict,
    hierarchical_bootstrap,
    mean_ci,
    paired_difference,
    scope,
    size_verdict,
    verdict,
)


def compare(outcome_a: dict, outcome_b: dict, a: str, b: str, level: float) -> dict:
    """Paired comparison of two feature sets under one probe, for one trained DAE.

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


def correctness(outcomes: list[dict], feature: str, probe: str) -> np.ndarray:
    """(D, S, N) bool: per trained DAE, per classifier seed, per test image, whether ``probe`` on ``feature``
    was right; D = 1 for feature sets that do not depend on the DAE (probed once)."""
    return np.stack([by_dae[feature, probe]["correct"] for by_dae in outcomes if (feature, probe) in by_dae])


def design_row(row: dict, outcomes: list[dict], level: float, n_boot: int, seed: int, method: str = "t") -> dict:
    """``row`` (one ``results`` row of the first DAE) extended to the design.

    Adds ``accuracies_by_dae`` (D lists of S), ``dae_seeds`` (D) and the accuracy's
    ``interval`` over the design with its ``interval_over``. With several DAEs, a DAE feature's
    ``accuracies`` and its t-summary (``mean``, ``std``, ``lo``, ``hi``, ``n``) pool every (DAE seed,
    classifier seed); with one, the row keeps today's numbers exactly.
    """
    correct = correctness(outcomes, row["feature"], row["probe"])
    by_dae = [correct_d.mean(axis=1).tolist() for correct_d in correct]
    if len(by_dae) > 1:
        row = {**row, **mean_ci([acc for accs in by_dae for acc in accs], level),
               "accuracies": [acc for accs in by_dae for acc in accs]}
    interval = hierarchical_bootstrap(correct, np.zeros((1, *correct.shape[1:]), dtype=bool), level, n_boot, seed,
                                      method)
    return {**row, "accuracies_by_dae": by_dae, "dae_seeds": len(by_dae), "interval": _summary(interval),
            "interval_over": interval["interval_over"]}


def design_comparison(outcomes: list[dict], probe: str, a: str, b: str, level: float, n_boot: int, seed: int,
                      method: str = "t", margin: float = 0.01) -> dict:
    """One comparison ``a - b`` under ``probe``: today's fields from the first DAE, the design's interval and verdict.

    Returns
    -------
    dict
        ``probe`` and :func:`compare`'s keys for the first DAE (with several DAEs its ``over`` says
        ``"... of the first DAE"``), ``seeds_verdict`` (what that interval alone would say), and from
        the interval over DAE seeds x classifier seeds x test images: ``interval`` (``mean``, ``lo``,
        ``hi``, ``se``, ``df``, ``std``, ``percentile``), ``interval_over``, ``scope`` (``"for this one
        trained DAE"``, ...), ``verdict`` (its bare phrase, as :func:`daelab.stats.verdict` words it),
        ``verdict_scoped`` (the phrase with its scope), ``margin`` and ``size_verdict`` (what the same
        interval says of the difference's size against +-``margin``, :func:`daelab.stats.size_verdict`).
    """
    first = outcomes[0]
    row = {"probe": probe, **compare(first[a, probe], first[b, probe], a, b, level)}
    if sum((a, probe) in by_dae or (b, probe) in by_dae for by_dae in outcomes) > 1:
        row["over"] += " of the first DAE"
    interval = hierarchical_bootstrap(correctness(outcomes, a, probe), correctness(outcomes, b, probe), level,
                                      n_boot, seed, method)
    over = interval["interval_over"]
    if a not in DAE_FEATURES and b not in DAE_FEATURES:
        over["depends_on_dae"] = False
    return {**row, "seeds_verdict": row["verdict"], "interval": _summary(interval),
            "interval_over": over, "scope": scope(over), "verdict": bootstrap_verdict(interval, a, b, scoped=False),
            "verdict_scoped": bootstrap_verdict(interval, a, b), "margin": margin,
            "size_verdict": size_verdict(interval, margin, a, b)}


def _summary(interval: dict) -> dict:
    return {k: interval[k] for k in ("mean", "lo", "hi", "se", "df", "std", "percentile")}


def headline(comparisons: list[dict]) -> dict | None:
    """The study's question (mlp: codes vs raw) where it was asked, else the first comparison."""
    return next((c for c in comparisons if (c["probe"], c["a"], c["b"]) == ("mlp", "codes", "raw")),
                comparisons[0] if comparisons else None)
