"""Small value helpers the report's sections share: a mean with its interval, a duration, a noise level.

:func:`_ci` writes ``mean [lo, hi]``, :func:`_seconds` a wall time in s, min or h, and
:func:`_level_of` splits a noise spec such as ``uniform:0.5`` into its family and level. Used by
:mod:`daelab.report._content`, :mod:`daelab.report._dae_seeds` and the sweep's report.
"""
from __future__ import annotations


def _ci(stat: dict | None, digits: int) -> str:
    if not stat:
        return "–"
    if stat.get("lo") is None:
        return f"{stat['mean']:.{digits}f}"
    return f"{stat['mean']:.{digits}f} [{stat['lo']:.{digits}f}, {stat['hi']:.{digits}f}]"


def _level_of(spec: str) -> tuple[str, float | None]:
    family, _, level = spec.partition(":")
    try:
        return family, float(level)
    except ValueError:
        return family, None


def _seconds(value: float | None) -> str:
    if value is None:
        return "–"
    if value >= 3600:
        return f"{value / 3600:.2f} h"
    return f"{value / 60:.1f} min" if value >= 120 else f"{value:.1f} s"
