"""The report's files: reading a run directory's stage files, and writing ``report.html``/``report.md``.

Every stage file is input someone may have edited or damaged: :func:`read_inputs` turns a missing
file into "not run" and a truncated or wrong-typed one into a one-line :class:`UsageError` that
names it; :func:`write_report` checks that the run directory is writable before it reads anything
and writes both files atomically.
"""
from __future__ import annotations

import datetime as _dt
import os
from pathlib import Path

from daelab.checkpoint import atomic_write, check_writable, output_error
from daelab.errors import UsageError
from daelab.report._content import blocks_from
from daelab.report._render import Block, to_html, to_markdown
from daelab.runs import read_json, read_metrics

HTML_FILE, MARKDOWN_FILE = "report.html", "report.md"


def _read(run_dir: Path, name: str) -> dict | None:
    """A stage's JSON object, ``None`` when the stage has not run; one-line error for a damaged file."""
    path = run_dir / name
    if not path.exists():
        return None
    values = read_json(path)
    if not isinstance(values, dict):
        raise UsageError(f"{path} holds a JSON {type(values).__name__}, not the object its stage writes",
                         f"rerun that stage, or remove {name}")
    return values


# Where each input comes from, to name the file that does not hold what its stage writes.
INPUT_FILES = {"config": "config.json", "metrics": "metrics.jsonl", "evaluation": "evaluation.json",
               "probe": "probe.json", "state": "reproduce.json"}
# What a value of the wrong type raises somewhere in the sections below.
_MALFORMED = (KeyError, TypeError, ValueError, AttributeError, IndexError, ZeroDivisionError, OverflowError,
              UsageError)


def read_inputs(run_dir: str | os.PathLike) -> dict:
    """The stage files of ``run_dir`` (``None`` or ``[]`` where missing); one-line errors for damaged ones."""
    run_dir = Path(run_dir)
    return {"config": _read(run_dir, "config.json"), "metrics": read_metrics(run_dir),
            "evaluation": _read(run_dir, "evaluation.json"), "probe": _read(run_dir, "probe.json"),
            "state": _read(run_dir, "reproduce.json")}


def build_blocks(run_dir: str | os.PathLike) -> tuple[list[Block], dict]:
    """The report's blocks and the inputs they came from (``None`` where a file is missing).

    A file that parses but does not hold what its stage writes (a string where a table should be,
    a missing key) is a :class:`UsageError` naming that file, found by building the report again
    without each input in turn.
    """
    run_dir = Path(run_dir)
    inputs = read_inputs(run_dir)
    try:
        return blocks_from(run_dir, inputs), inputs
    except _MALFORMED as exc:
        error = exc
    for key, name in INPUT_FILES.items():
        if inputs[key]:
            try:
                blocks_from(run_dir, {**inputs, key: [] if key == "metrics" else None})
            except _MALFORMED:
                continue
            raise UsageError(f"{run_dir / name} does not hold what its stage writes ({_what(error)})",
                             f"rerun that stage, or remove {name}") from None
    raise UsageError(f"the stage files of {run_dir} do not fit together ({_what(error)})",
                     "rerun the stages, e.g. 'daelab reproduce'") from None


def _what(exc: BaseException) -> str:
    text = str(exc).splitlines()[0][:120] if str(exc) else ""
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def write_report(run_dir: str | os.PathLike) -> dict:
    """Write ``report.html`` and ``report.md`` into ``run_dir``; returns ``{"html": path, "markdown": path}``."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise UsageError(f"run directory {run_dir} not found", "give a directory written by 'daelab train'")
    check_writable(run_dir, "make the run directory writable, or report on a writable copy of it")
    blocks, inputs = build_blocks(run_dir)
    mode = (inputs["state"] or {}).get("mode")
    title = "Denoising autoencoder study, reproduced" + (" (quick run)" if mode == "quick" else "")
    subtitle = (f"Run directory `{run_dir.resolve().name}` · report written "
                f"{_dt.datetime.now().astimezone().strftime('%Y-%m-%d %H:%M %Z')} by daelab")
    paths = {"html": run_dir / HTML_FILE, "markdown": run_dir / MARKDOWN_FILE}
    texts = {"html": to_html(title, subtitle, blocks, run_dir), "markdown": to_markdown(title, subtitle, blocks,
                                                                                        run_dir)}
    for key, path in paths.items():
        try:
            atomic_write(path, lambda handle, text=texts[key]: handle.write(text.encode()))
        except OSError as exc:
            raise output_error(path, exc) from None
    return {k: str(v) for k, v in paths.items()}
