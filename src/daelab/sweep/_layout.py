"""The sweep report's layout: what a spec says to show (axes, the curve's x and group, the heatmap), and the
small value helpers the report's tables and figures share (:mod:`daelab.sweep._render`,
:mod:`daelab.sweep._figures`).
"""
from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field

from daelab import study
from daelab.errors import ConfigError

STUDY_CHOICE = f"{study.TRAIN_NOISE}, code {study.CODE_DIM}"


# ------------------------------------------------------------------------------ the layout
@dataclass
class Layout:
    """What the spec says the report shows: the grid's axes and values, the curve's x and group, the heatmap."""

    name: str
    objective: str
    axes: list[str]
    values: dict[str, list]
    x: str | None
    group: str | None
    heatmap: tuple[str, str] | None
    spec: dict
    notes: list[str] = field(default_factory=list)  # where the spec's [report] could not be followed


def spec_dict(spec) -> dict:
    """The spec as the TOML's plain dict: the engine's SweepSpec (its ``raw``) or that dict itself."""
    raw = getattr(spec, "raw", spec)
    if not isinstance(raw, Mapping):
        raise ConfigError(f"a sweep spec is the TOML's tables, not a {type(raw).__name__}",
                          "pass the SweepSpec or the dict of [sweep], [grid], [report]")
    return dict(raw)


def layout_of(spec) -> Layout:
    """The report's :class:`Layout` from a spec; an axis ``[report]`` names that the grid lacks is noted, not fatal."""
    raw = spec_dict(spec)
    sweep, grid, report = (dict(raw.get(k) or {}) for k in ("sweep", "grid", "report"))
    axes = list(grid)
    values = {axis: list(v) if isinstance(v, (list, tuple)) else [v] for axis, v in grid.items()}
    notes = []

    def axis(name, role: str, default):
        if name is None:
            return default
        if name in axes:
            return name
        notes.append(f"report.{role} = {name!r} is not an axis of the grid ({', '.join(axes) or 'none'}): "
                     f"{'using ' + repr(default) if default else 'left out'}")
        return default

    # The defaults are the engine's (daelab.sweep._spec): x the last axis, one curve per value of the first.
    x = axis(report.get("x"), "x", axes[-1] if axes else None)
    group = axis(report.get("group"), "group", next((a for a in axes if a != x), None))
    group = None if group == x else group
    heatmap = None
    if len(axes) < 2:
        notes.append("the grid has one axis: no heatmap (it needs two)")
    else:
        default = tuple(axes[:2])
        chosen = report.get("heatmap")
        if chosen is None:
            heatmap = default
        elif (isinstance(chosen, (list, tuple)) and len(chosen) == 2 and all(a in axes for a in chosen)
              and chosen[0] != chosen[1]):
            heatmap = tuple(chosen)
        else:
            notes.append(f"report.heatmap = {chosen!r} is not two different axes of the grid: using {list(default)}")
            heatmap = default
    return Layout(str(sweep.get("name", "sweep")), str(sweep.get("objective", "codes_minus_raw")), axes, values,
                  x, group, heatmap, raw, notes)


# ------------------------------------------------------------------------------ values
def _same(a, b) -> bool:
    if _is_number(a) and _is_number(b):
        return math.isclose(float(a), float(b), rel_tol=1e-9, abs_tol=1e-12)
    return str(a) == str(b)


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _show(value) -> str:
    return f"{value:g}" if _is_number(value) else str(value)


def _noise_of(params: dict, spec: dict) -> str:
    """The noise a trial trained with: its grid params over the spec's [train] over the study's default."""
    base = str((spec.get("train") or {}).get("noise", study.TRAIN_NOISE))
    if "train.noise" in params:
        return str(params["train.noise"])
    kind, _, level = base.partition(":")
    return f"{_show(params.get('train.noise.kind', kind))}:{_show(params.get('train.noise.level', level))}"


def _is_study_choice(params: dict, spec: dict) -> bool:
    """Whether a trial trains the study's DAE design (its noise and code width; the budget is the sweep's)."""
    kind, _, level = _noise_of(params, spec).partition(":")
    want_kind, _, want_level = study.TRAIN_NOISE.partition(":")
    try:
        noise = kind == want_kind and math.isclose(float(level), float(want_level))
    except ValueError:
        noise = False
    code_dim = params.get("model.code_dim", (spec.get("model") or {}).get("code_dim", study.CODE_DIM))
    return noise and _same(code_dim, study.CODE_DIM)
