"""A sweep's spec: the TOML file read, every name checked, the grid's points, keys and per-trial configs.

A spec names the study (``[sweep]``), the per-trial budgets (``[train]``, ``[model]``,
``[evaluate]``, ``[probe]``: any field of those configs), the grid (``[grid]``: axes
``"section.field" = [values]``) and what the report draws (``[report]``). :func:`read_spec` checks
it all before any training: every section and setting name (a typo is a one-line
:class:`~daelab.errors.ConfigError` naming the file and the nearest valid name), and every grid
point's configs, built once up front, so a bad value (a noise level out of range) fails now and not
after an hour of other trials. The axes ``train.noise.kind`` and ``train.noise.level`` compose
``train.noise = "kind:level"``; a tuple field takes its values as text (``"512,256"``).

A trial's key (its run directory's name under ``OUT/trials/``) is its point's values in grid order,
e.g. ``noise.kind-masking_noise.level-0.3``: the same point always gives the same key, so a retried
trial finds its own run directory and resumes.
"""
from __future__ import annotations

import dataclasses
import hashlib
import itertools
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

from daelab.config import _nearest, build_config, check_config_keys, read_config_file
from daelab.errors import ConfigError

# The values Optuna records for a trial, and which way is better.
OBJECTIVES = {"codes_minus_raw": "maximize", "psnr": "maximize", "val_loss": "minimize"}
CONFIG_SECTIONS = ("train", "model", "evaluate", "probe")
NOISE_KIND, NOISE_LEVEL = "train.noise.kind", "train.noise.level"
MAX_KEY = 200  # a file name is at most 255 bytes
MAX_POINTS = 10_000


def _config_classes() -> dict[str, type]:
    from daelab.evaluate import EvalConfig
    from daelab.models import ModelConfig
    from daelab.probe import ProbeConfig
    from daelab.train import TrainConfig
    return {"train": TrainConfig, "model": ModelConfig, "evaluate": EvalConfig, "probe": ProbeConfig}


@dataclass
class SweepSpec:
    """A sweep, as its TOML file states it (see the module docstring); build it with :func:`read_spec`.

    ``sections`` holds each config section's own settings (the per-trial budget), ``grid`` the axes
    in the file's order, ``points`` every grid point (a dict axis -> value) in a fixed order: the
    product of the axes, the first axis slowest; ``raw`` the file's tables as read, with ``[sweep]``
    and ``[report]`` completed by their defaults (what the report's renderer reads).
    """

    name: str = field(metadata={"help": "the Optuna study name"})
    out: str = field(metadata={"help": "the sweep's directory: trials in OUT/trials/<key>/, sweep.html/.md/.json"})
    objective: str = field(default="codes_minus_raw", metadata={
        "help": "what Optuna records: codes_minus_raw (mlp probe, maximize), psnr (mean DAE PSNR over the "
                "evaluated levels, maximize) or val_loss (minimize)"})
    heartbeat: int = field(default=60, metadata={"help": "seconds between a running trial's heartbeats"})
    grace: int = field(default=180, metadata={"help": "seconds without a heartbeat after which a trial counts as "
                                                      "dead (its worker was killed) and is retried"})
    max_retry: int = field(default=3, metadata={"help": "retries of a trial whose worker died"})
    sections: dict = field(default_factory=dict, repr=False)
    grid: dict = field(default_factory=dict)
    report: dict = field(default_factory=dict)
    path: str | None = None
    raw: dict = field(default_factory=dict, repr=False)  # the file's tables, [sweep] and [report] completed
    points: list = field(default_factory=list, repr=False)
    _configs: dict = field(default_factory=dict, repr=False)

    # the fields [sweep] may set
    SETTINGS = ("name", "out", "objective", "heartbeat", "grace", "max_retry")

    @property
    def direction(self) -> str:
        """``maximize`` or ``minimize``: the objective's better way."""
        return OBJECTIVES[self.objective]

    @property
    def axes(self) -> list[str]:
        return list(self.grid)

    def key(self, point: dict) -> str:
        """The trial key of ``point`` (filesystem-safe, the same for the same values)."""
        short = _short_names(self.axes)
        parts = [f"{short[axis]}-{_text(point[axis])}" for axis in self.axes]
        key = re.sub(r"[^A-Za-z0-9._-]+", "-", "_".join(parts)).strip(".") or "point"
        if len(key) > MAX_KEY:
            key = key[:MAX_KEY - 13] + "-" + hashlib.sha256(key.encode()).hexdigest()[:12]
        return key

    def label(self, point: dict) -> str:
        """``noise.kind=masking,noise.level=0.3``: the point as a person reads it."""
        short = _short_names(self.axes)
        return ",".join(f"{short[axis]}={_text(point[axis])}" for axis in self.axes)

    def point_of(self, params: dict) -> dict | None:
        """The grid point whose values are ``params`` (as Optuna stores them), or ``None``."""
        for point in self.points:
            if all(axis in params and _same(params[axis], point[axis]) for axis in self.axes):
                return point
        return None

    def configs(self, point: dict) -> dict:
        """The configs of ``point``: ``{"model": ModelConfig, "train": TrainConfig, "evaluate": EvalConfig,
        "probe": ProbeConfig}``."""
        return dict(self._configs[self.key(point)])

    def run_dir(self, point: dict, out: str | os.PathLike | None = None) -> Path:
        """``OUT/trials/<key>``: the trial's run directory."""
        return Path(out or self.out) / "trials" / self.key(point)


def _text(value) -> str:
    if isinstance(value, bool):
        return str(value).lower()
    return repr(value) if isinstance(value, float) else str(value)


def _same(a, b) -> bool:
    if isinstance(a, bool) or isinstance(b, bool):
        return a is b
    if isinstance(a, (int, float)) and isinstance(b, (int, float)):
        return float(a) == float(b)
    return a == b


def _short_names(axes: list[str]) -> dict[str, str]:
    """Axis -> its name without the section (``noise.level``), unless two axes would then share one."""
    bare = {axis: axis.split(".", 1)[1] for axis in axes}
    clash = {name for name in bare.values() if list(bare.values()).count(name) > 1}
    return {axis: axis if bare[axis] in clash else bare[axis] for axis in axes}


def read_spec(path: str | os.PathLike, out: str | os.PathLike | None = None) -> SweepSpec:
    """Read and check a sweep spec; build every grid point's configs once (a bad value fails here).

    Parameters
    ----------
    path : str or os.PathLike
        The TOML (or YAML/JSON) file.
    out : str or os.PathLike, optional
        Overrides ``[sweep] out``.

    Returns
    -------
    SweepSpec
        The checked spec with its ``points`` and their configs.
    """
    values = read_config_file(path)
    classes = _config_classes()
    where = f"sweep spec {path}"
    check_config_keys(values, {**classes, "sweep": None, "grid": None, "report": None}, path)
    flat = [key for key, value in values.items() if not isinstance(value, dict)]
    if flat:
        raise ConfigError(f"{where}: setting {flat[0]!r} is outside any section",
                          "put it under [sweep], [train], [model], [evaluate], [probe], [grid] or [report]")
    sweep = dict(values.get("sweep", {}))
    for name in sweep:
        if name not in SweepSpec.SETTINGS:
            raise ConfigError(f"{where}: unknown setting {name!r} in [sweep]", _nearest(name, SweepSpec.SETTINGS))
    name = sweep.get("name", Path(path).stem)
    settings = {"name": name, "out": str(out or sweep.get("out", f"runs/sweep-{name}")),
                "objective": sweep.get("objective", "codes_minus_raw"),
                "heartbeat": sweep.get("heartbeat", 60), "grace": sweep.get("grace", 180),
                "max_retry": sweep.get("max_retry", 3)}
    if not isinstance(settings["name"], str) or not settings["name"].strip():
        raise ConfigError(f"{where}: [sweep] name must be a non-empty text")
    if settings["objective"] not in OBJECTIVES:
        raise ConfigError(f"{where}: unknown objective {settings['objective']!r}",
                          f"use one of {', '.join(OBJECTIVES)}")
    for key in ("heartbeat", "grace", "max_retry"):
        value = settings[key]
        if isinstance(value, bool) or not isinstance(value, int) or value < (0 if key == "max_retry" else 1):
            raise ConfigError(f"{where}: [sweep] {key} must be a whole number >= {0 if key == 'max_retry' else 1}")
    if settings["grace"] <= settings["heartbeat"]:
        raise ConfigError(f"{where}: [sweep] grace ({settings['grace']} s) must be longer than heartbeat "
                          f"({settings['heartbeat']} s)", "a live worker must have time to beat")
    sections = {section: dict(values.get(section, {})) for section in CONFIG_SECTIONS}
    grid = _read_grid(values.get("grid", {}), classes, where)
    spec = SweepSpec(**settings, sections=sections, grid=grid, path=str(path))
    spec.report = _read_report(values.get("report", {}), grid, where)
    _check_objective(spec, classes, where)
    spec.raw = {**values, "sweep": {**sweep, **settings}, "grid": {k: list(v) for k, v in grid.items()},
                "report": dict(spec.report)}
    spec.points = [dict(zip(grid, combo)) for combo in itertools.product(*grid.values())]
    if len(spec.points) > MAX_POINTS:
        raise ConfigError(f"{where}: the grid has {len(spec.points):,} points", f"at most {MAX_POINTS:,}")
    for point in spec.points:
        key = spec.key(point)
        if key in spec._configs:
            raise ConfigError(f"{where}: two grid points share the key {key!r}", "make the grid's values distinct")
        spec._configs[key] = _build(point, sections, classes, f"{where}: grid point {spec.label(point)}")
    return spec


def _read_grid(grid: dict, classes: dict, where: str) -> dict:
    if not isinstance(grid, dict) or not grid:
        raise ConfigError(f"{where}: [grid] is missing or empty", 'name at least one axis, e.g. "train.noise.level" '
                          "= [0.1, 0.3]")
    axes = {}
    for axis, values in grid.items():
        section, _, name = str(axis).partition(".")
        if section not in classes or not name:
            raise ConfigError(f"{where}: grid axis {axis!r} is not 'section.field'",
                              f"sections: {', '.join(CONFIG_SECTIONS)}; e.g. \"train.noise.level\"")
        fields = {f.name for f in dataclasses.fields(classes[section]) if f.init}
        if axis not in (NOISE_KIND, NOISE_LEVEL) and name not in fields:
            extra = {"noise.kind", "noise.level"} if section == "train" else set()
            raise ConfigError(f"{where}: unknown grid axis {axis!r}", _nearest(name, fields | extra))
        if not isinstance(values, list) or not values:
            raise ConfigError(f"{where}: grid axis {axis!r} must be a non-empty list of values")
        for value in values:
            if not isinstance(value, (str, int, float, bool)):
                raise ConfigError(f"{where}: grid axis {axis!r} has the value {value!r}",
                                  'values are numbers, text or true/false; write a tuple as text: "512,256"')
        if len({_text(v) for v in values}) != len(values):
            raise ConfigError(f"{where}: grid axis {axis!r} repeats a value")
        axes[axis] = list(values)
    if "train.noise" in axes and (NOISE_KIND in axes or NOISE_LEVEL in axes):
        raise ConfigError(f"{where}: grid has train.noise and train.noise.kind/level",
                          "use either the whole spec or its kind and level")
    return axes


def _read_report(report: dict, grid: dict, where: str) -> dict:
    known = {"x", "group", "heatmap"}
    for name in report:
        if name not in known:
            raise ConfigError(f"{where}: unknown setting {name!r} in [report]", _nearest(name, known))
    axes = list(grid)
    out = {"x": report.get("x", axes[-1]), "group": report.get("group", axes[0] if len(axes) > 1 else None),
           "heatmap": report.get("heatmap", axes[:2] if len(axes) > 1 else None)}
    for name in ("x", "group"):
        if out[name] is not None and out[name] not in grid:
            raise ConfigError(f"{where}: [report] {name} = {out[name]!r} is not a grid axis",
                              f"axes: {', '.join(axes)}")
    heat = out["heatmap"]
    if heat is not None:
        if not isinstance(heat, list) or len(heat) != 2 or any(a not in grid for a in heat) or heat[0] == heat[1]:
            raise ConfigError(f"{where}: [report] heatmap must name two different grid axes",
                              f"axes: {', '.join(axes)}")
    return out


def _check_objective(spec: SweepSpec, classes: dict, where: str) -> None:
    if spec.objective != "codes_minus_raw":
        return
    probe = build_config(classes["probe"], {"probe": spec.sections["probe"]}, None, "probe")
    if "mlp" not in probe.probes or not {"codes", "raw"} <= set(probe.features):
        raise ConfigError(f"{where}: objective codes_minus_raw needs the mlp probe on codes and raw",
                          "keep 'mlp' in [probe] probes and 'codes', 'raw' in features, or choose another objective")


def _build(point: dict, sections: dict, classes: dict, where: str) -> dict:
    """The four configs of one point: the sections' settings, the point's values over them."""
    values = {section: dict(settings) for section, settings in sections.items()}
    kind = level = None
    for axis, value in point.items():
        section, _, name = axis.partition(".")
        if axis == NOISE_KIND:
            kind = value
        elif axis == NOISE_LEVEL:
            level = value
        else:
            values[section][name] = value
    if kind is not None or level is not None:
        base = str(values["train"].get("noise", classes["train"]().noise))
        base_kind, _, base_level = base.partition(":")
        kind = base_kind if kind is None else kind
        values["train"]["noise"] = f"{kind}:{base_level if level is None else level}"
    try:
        return {section: build_config(classes[section], {section: values[section]}, None, section)
                for section in CONFIG_SECTIONS}
    except ConfigError as exc:
        raise ConfigError(f"{where}: {exc.message}", exc.hint) from None
