"""Configuration plumbing: dataclass configs <-> argparse flags <-> TOML/YAML files.

Each config dataclass declares its fields once, with a ``help`` in the field metadata; this module
turns those fields into flags, reads an optional ``--config`` file (TOML or YAML, sections named
after the config, e.g. ``[train]`` and ``[model]``, or flat), and resolves the final values with
explicit flags winning over the file and the file over the defaults.
"""
from __future__ import annotations

import argparse
import dataclasses
import difflib
import json
import os
import reprlib
import tomllib
import types
import typing
from pathlib import Path

from daelab.errors import ConfigError

MAX_CONFIG_BYTES = 1 << 20  # a config is a few hundred bytes
MAX_CONFIG_VALUES = 10_000  # values after YAML aliases are expanded
MAX_CONFIG_DEPTH = 16


def _base_type(tp):
    """The scalar type behind ``X | None`` / ``Optional[X]`` and the element type of ``tuple[X, ...]``."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        return _base_type(args[0])
    if origin is tuple:
        return ("tuple", typing.get_args(tp)[0])
    return tp


def _flag(f: dataclasses.Field) -> str:
    return "--" + f.metadata.get("flag", f.name).replace("_", "-")


def add_dataclass_args(parser: argparse.ArgumentParser | argparse._ArgumentGroup, cls, skip=()) -> None:
    """Add one flag per field of ``cls``; defaults are left as ``None`` so we can tell what was given."""
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        if f.name in skip or not f.init:
            continue
        tp = _base_type(hints[f.name])
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
        help_text = f.metadata.get("help", "")
        if "known" in f.metadata:  # an open registry (models): its names when the parser is built, not enforced here
            help_text = f"{help_text}: {', '.join(f.metadata['known']())}"
        shown = ",".join(map(str, default)) if isinstance(default, tuple) else default
        help_text = f"{help_text} (default: {shown})"
        kwargs: dict = {"default": None, "help": help_text, "dest": f.name}
        if "choices" in f.metadata:
            kwargs["choices"] = f.metadata["choices"]
        if tp is bool:
            parser.add_argument(_flag(f), action=argparse.BooleanOptionalAction, **kwargs)
        elif isinstance(tp, tuple):
            elem = tp[1]
            parser.add_argument(_flag(f), type=lambda s, elem=elem: tuple(elem(v) for v in s.split(",") if v),
                                metavar="A,B,...", **kwargs)
        else:
            # a field with choices shows them in the usage line, as argparse does ({auto,fp32,bf16})
            shown_as = "{" + ",".join(map(str, kwargs["choices"])) + "}" if "choices" in kwargs else tp.__name__.upper()
            parser.add_argument(_flag(f), type=tp, metavar=f.metadata.get("metavar", shown_as), **kwargs)


def read_config_file(path: str | os.PathLike) -> dict:
    """Read a TOML, YAML or JSON config file into a dict, with clear errors for bad files."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file {path} not found")
    if path.stat().st_size > MAX_CONFIG_BYTES:
        raise ConfigError(f"config file {path} is larger than {MAX_CONFIG_BYTES:,} bytes", "a config is a few "
                          "settings; check the path")
    text = path.read_bytes()
    try:
        if path.suffix == ".toml":
            values = tomllib.loads(text.decode("utf-8"))
        elif path.suffix in (".yaml", ".yml"):
            import yaml
            values = yaml.safe_load(text.decode("utf-8")) or {}
        elif path.suffix == ".json":
            values = json.loads(text)
        else:
            raise ConfigError(f"config file {path}: unknown format", "use .toml, .yaml, .yml or .json")
    except ConfigError:
        raise
    except Exception as exc:  # noqa: BLE001 - any parser failure is the user's file, reported in one line
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise ConfigError(f"config file {path} is not valid: {first}") from None
    if not isinstance(values, dict):
        raise ConfigError(f"config file {path} must hold a table of settings, not {type(values).__name__}")
    _check_expansion(values, path)
    # YAML allows keys of any type (a line holding only `?` is a null key); settings are named by text
    odd = [key for table in [values, *(v for v in values.values() if isinstance(v, dict))]
           for key in table if not isinstance(key, str)]
    if odd:
        raise ConfigError(f"config file {path}: {odd[0]!r} is not a setting name", "write names as text: key: value")
    return values


def _check_expansion(values, path: Path) -> None:
    """Refuse a file whose values, aliases expanded, are more than a config could need.

    A YAML alias is one shared object, cheap to load; but each use counts once when the values are
    coerced or printed, so ten nested aliases of ten make ten billion ("billion laughs"), and an
    anchor may even hold itself. Count every value as it is met, with a budget, before anything
    else reads them.
    """
    budget = [MAX_CONFIG_VALUES]

    def walk(value, depth: int, on_path: frozenset) -> None:
        budget[0] -= 1
        if budget[0] < 0 or depth > MAX_CONFIG_DEPTH or id(value) in on_path:
            raise ConfigError(f"config file {path} expands to more than {MAX_CONFIG_VALUES:,} values, nests "
                              f"deeper than {MAX_CONFIG_DEPTH} or holds itself (YAML aliases?)",
                              "write the settings out plainly")
        if isinstance(value, (dict, list, tuple, set, frozenset)):
            inner = on_path | {id(value)}
            for item in (value.values() if isinstance(value, dict) else value):
                walk(item, depth + 1, inner)

    walk(values, 0, frozenset())


def _short(value) -> str:
    """``repr`` cut to a line: a message must stay short, whatever the file holds."""
    return " ".join(_REPR.repr(value).split())


_REPR = reprlib.Repr()
_REPR.maxstring = _REPR.maxother = 60


def _nearest(name: str, valid) -> str:
    """``did you mean X?`` for the closest valid name, or the list of valid names."""
    close = difflib.get_close_matches(str(name), sorted(valid), n=1, cutoff=0.6)
    return f"did you mean {close[0]!r}?" if close else f"valid: {', '.join(sorted(valid))}"


def check_config_keys(values: dict, sections: dict[str, type], path: str | os.PathLike) -> None:
    """Raise :class:`ConfigError` for a section or setting that no config of ``sections`` has.

    A typo must not pass silently (``[trian]`` would otherwise leave every training default, 100
    epochs, in place): unknown names are errors that name the nearest valid one. Every known
    section is checked, so one file can hold ``[train]``, ``[evaluate]`` and ``[probe]`` and be
    given to each command.

    Parameters
    ----------
    values : the file's values, from :func:`read_config_file`.
    sections : section name -> config dataclass, e.g. ``{"train": TrainConfig, "model": ModelConfig}``;
        ``None`` for a section whose name is valid but whose settings are not checked here (its command
        checks them), which also leaves flat settings unchecked.
    path : the file, for the message.
    """
    fields = {name: None if cls is None else {f.name for f in dataclasses.fields(cls) if f.init}
              for name, cls in sections.items()}
    every = None if None in fields.values() else set().union(set(), *fields.values())
    for key, value in values.items():
        if isinstance(value, dict):
            if key not in sections:
                raise ConfigError(f"config file {path}: unknown section [{_short(str(key))[1:-1]}]",
                                  _nearest_section(key, sections))
            for name in value if fields[key] is not None else ():
                if str(name).replace("-", "_") not in fields[key]:
                    raise ConfigError(f"config file {path}: unknown setting {_short(name)} in [{key}]",
                                      _nearest(str(name).replace("-", "_"), fields[key]))
        elif every is not None and str(key).replace("-", "_") not in every:
            raise ConfigError(f"config file {path}: unknown setting {_short(key)}",
                              _nearest(str(key).replace("-", "_"), every))


def _nearest_section(name: str, sections) -> str:
    close = difflib.get_close_matches(str(name), sorted(sections), n=1, cutoff=0.6)
    return f"did you mean [{close[0]}]?" if close else f"sections: {', '.join(f'[{s}]' for s in sorted(sections))}"


def _optional(tp) -> bool:
    return typing.get_origin(tp) in (typing.Union, types.UnionType) and type(None) in typing.get_args(tp)


def _coerce(cls, name: str, value):
    hint = typing.get_type_hints(cls)[name]
    tp = _base_type(hint)
    if value is None:
        if _optional(hint):
            return None
        raise ConfigError(f"setting {name} cannot be empty")
    try:
        if isinstance(tp, tuple):
            if isinstance(value, str):
                value = value.split(",")
            return tuple(tp[1](v) for v in value)
        if tp is bool and not isinstance(value, bool):
            raise ValueError("expected true or false")
        if tp is float and isinstance(value, int) and not isinstance(value, bool):
            return float(value)
        if not isinstance(value, tp):
            raise ValueError(f"expected {tp.__name__}")
        return value
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"setting {name}={_short(value)}: {exc}") from None


def build_config(cls, file_values: dict | None, args: argparse.Namespace | None, section: str):
    """Defaults <- ``file_values[section]`` (or flat keys) <- explicit flags; returns ``cls(...)``."""
    return cls(**config_values(cls, file_values, args, section))


def config_values(cls, file_values: dict | None, args: argparse.Namespace | None, section: str) -> dict:
    """The settings :func:`build_config` passes to ``cls``: those the file and the flags give, checked
    and coerced one by one, before ``cls`` checks them together (``args=None``: the file's alone)."""
    names = {f.name for f in dataclasses.fields(cls) if f.init}
    values: dict = {}
    if file_values:
        scoped = file_values.get(section, {})
        if not isinstance(scoped, dict):
            raise ConfigError(f"config section [{section}] must be a table")
        flat = {k: v for k, v in file_values.items() if not isinstance(v, dict)}
        for key, value in {**flat, **scoped}.items():
            key = key.replace("-", "_")
            if key in names:
                values[key] = _coerce(cls, key, value)
            elif key in scoped:
                raise ConfigError(f"unknown setting {_short(key)} in [{section}]", _nearest(key, names))
    if args is not None:
        for name in names:
            given = getattr(args, name, None)
            if given is not None:
                values[name] = given
    return values


def to_jsonable(config) -> dict:
    """A dataclass config as a plain dict (tuples become lists) for JSON files and checkpoints."""
    return {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(config).items()}


def from_jsonable(cls, values: dict):
    """Inverse of :func:`to_jsonable`; unknown keys are an error."""
    names = {f.name for f in dataclasses.fields(cls) if f.init}
    unknown = set(values) - names
    if unknown:
        raise ConfigError(f"unknown settings {sorted(unknown)} for {cls.__name__}")
    return cls(**{k: _coerce(cls, k, v) for k, v in values.items()})
