"""One trial's numbers: what a sweep compares, read from a finished (or unfinished) trial run directory.

A trial is an ordinary run directory (``daelab train`` -> ``evaluate`` -> ``probe``).
:func:`trial_metrics` reads its ``probe.json``, ``evaluation.json`` and ``metrics.jsonl`` and
returns the few numbers a sweep puts side by side: the codes - raw accuracy difference under each
probe with the interval over the probe's design (``comparison["interval"]``, judged by its
``verdict_scoped``: for a trial, "for this one trained DAE"), the probes' accuracies, the DAE's
PSNR on each evaluated noise level and the best validation loss. A stage that has not run yet
gives ``None`` where its numbers would be; a file that is there but damaged is a one-line
:class:`~daelab.errors.UsageError` naming it (a sweep's report must not quietly show a broken
trial as "not finished").
"""
from __future__ import annotations

import math
import os
from pathlib import Path

from daelab.errors import UsageError
from daelab.runs import METRICS_FILE, read_json, read_metrics

PROBE_FILE, EVALUATION_FILE = "probe.json", "evaluation.json"
# The sweep's names for the probe comparisons it reads: (name, probe); each is codes - raw.
DIFFERENCES = (("codes_minus_raw", "mlp"), ("linear_codes_minus_raw", "linear"), ("knn_codes_minus_raw", "knn"))
# The numbers a sweep ranks its trials by, and which way is better; OBJECTIVE_METRIC: the metric
# behind each objective a spec may name (``[sweep] objective``, the value Optuna records).
RANKED = {"codes_minus_raw": "maximize", "psnr_mean": "maximize", "val_loss": "minimize"}
OBJECTIVE_METRIC = {"codes_minus_raw": "codes_minus_raw", "psnr": "psnr_mean", "val_loss": "val_loss"}


def trial_metrics(run_dir: str | os.PathLike) -> dict:
    """The numbers a sweep compares, from one trial's run directory (``None`` where a stage has not run).

    Parameters
    ----------
    run_dir : str or os.PathLike
        A trial's run directory (``daelab train``'s, with ``evaluation.json`` and ``probe.json``
        beside it once those stages ran).

    Returns
    -------
    dict
        ``codes_minus_raw`` (the mlp probe's codes - raw test accuracy difference: ``mean``,
        ``lo``, ``hi`` of the interval over the probe's design, ``verdict`` -- the scoped
        sentence -- ``scope``, and ``size`` and ``margin``: what the interval says against the probe's
        margin, None in a probe.json from before it), ``linear_codes_minus_raw`` and ``knn_codes_minus_raw`` (the
        same for the shallow probes), each ``None`` when the probe did not run or did not compare
        codes with raw; ``accuracy`` (``{"codes": mean, "raw": mean}``, the mlp probe's test
        accuracies); ``psnr`` (``{noise spec: mean DAE PSNR in dB}`` in the evaluated order, ``None``
        before evaluation); ``psnr_mean`` (their mean); ``val_loss`` (the best validation MSE in
        ``metrics.jsonl``, the epoch ``best.pt`` holds).

    Raises
    ------
    UsageError
        A stage file that is there but is not valid JSON or not shaped as its stage writes it
        (the message names the file).
    """
    run_dir = Path(run_dir)
    probe = _read(run_dir / PROBE_FILE)
    evaluation = _read(run_dir / EVALUATION_FILE)
    metrics = missing_metrics()
    metrics["val_loss"] = _best_val_loss(run_dir)
    if probe is not None:
        with _naming(run_dir / PROBE_FILE):
            metrics.update(_probe_numbers(probe))
    if evaluation is not None:
        with _naming(run_dir / EVALUATION_FILE):
            psnr = {str(level["noise"]): _number(level["full"]["methods"]["dae"]["psnr"]["mean"])
                    for level in evaluation["levels"]}
        finite = [value for value in psnr.values() if value is not None]
        metrics["psnr"] = psnr
        metrics["psnr_mean"] = sum(finite) / len(finite) if finite and len(finite) == len(psnr) else None
    return metrics


def missing_metrics() -> dict:
    """:func:`trial_metrics`'s keys with nothing measured: a trial no stage of which has run."""
    return {**{name: None for name, _ in DIFFERENCES}, "accuracy": {"codes": None, "raw": None}, "psnr": None,
            "psnr_mean": None, "val_loss": None}


def _read(path: Path) -> dict | None:
    """A stage's JSON object; ``None`` when the stage has not written it yet."""
    if not path.exists():
        return None
    values = read_json(path)  # a one-line UsageError naming the file when it is not valid JSON
    if not isinstance(values, dict):
        raise UsageError(f"{path} holds a JSON {type(values).__name__}, not the object its stage writes",
                         "rerun that stage of the trial, or remove the file")
    return values


def _probe_numbers(probe: dict) -> dict:
    """The codes - raw differences and the mlp accuracies of one ``probe.json``."""
    numbers: dict = {}
    comparisons = {(c["probe"], c["a"], c["b"]): c for c in probe["comparisons"]}
    for name, pname in DIFFERENCES:
        comparison = comparisons.get((pname, "codes", "raw"))
        numbers[name] = None if comparison is None else _difference(comparison)
    accuracy = {row["feature"]: _number(row["mean"]) for row in probe["results"] if row["probe"] == "mlp"}
    numbers["accuracy"] = {"codes": accuracy.get("codes"), "raw": accuracy.get("raw")}
    return numbers


def _difference(comparison: dict) -> dict:
    """One comparison as the sweep shows it: the design's interval and its scoped verdict.

    A ``probe.json`` from before the design intervals has only the classifier-seed interval and an
    unscoped verdict; those are used then, and ``scope`` is ``None``.
    """
    interval = comparison.get("interval") or comparison
    return {"mean": _number(interval["mean"]), "lo": _number(interval["lo"]), "hi": _number(interval["hi"]),
            "verdict": str(comparison.get("verdict_scoped") or comparison["verdict"]),
            "scope": comparison.get("scope"), "size": comparison.get("size_verdict"),
            "margin": comparison.get("margin")}


def _best_val_loss(run_dir: Path) -> float | None:
    """The lowest validation loss of the epochs trained so far (``best.pt``'s epoch), ``None`` before one."""
    rows = read_metrics(run_dir)
    with _naming(run_dir / METRICS_FILE):
        losses = [_number(row["val_loss"]) for row in rows if row.get("val_loss") is not None]
    losses = [loss for loss in losses if loss is not None]
    return min(losses) if losses else None


def _number(value) -> float | None:
    """A JSON number as a float (``None`` for null or non-finite); a TypeError for anything else."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"expected a number, found {type(value).__name__}")
    return float(value) if math.isfinite(value) else None


class _naming:
    """Turn a shape error while reading ``path``'s values into a one-line UsageError that names it."""

    def __init__(self, path: Path):
        self.path = path

    def __enter__(self):
        return self

    def __exit__(self, kind, exc, tb):
        if kind is not None and issubclass(kind, (KeyError, TypeError, ValueError, AttributeError, IndexError)):
            what = f"{kind.__name__}: {str(exc)[:120]}" if str(exc) else kind.__name__
            raise UsageError(f"{self.path} does not hold what its stage writes ({what})",
                             "rerun that stage of the trial, or remove the file") from None
        return False
