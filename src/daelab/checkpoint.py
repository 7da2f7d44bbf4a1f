"""Checkpoints: one versioned plain dict per file, written atomically, loaded without pickle code.

A checkpoint is ``{format, version, model_config, train_config, model, optimizer, epoch, step,
epoch_step, epoch_acc, rng, best_metric, history}``: tensors, numbers, strings,
lists and dicts only, so :func:`torch.load` with ``weights_only=True`` reads it and a crafted file
with a pickle payload is refused without running anything. Writes go to a temp file in the same
directory, are fsynced, then ``os.replace``d over the old file, so a crash at any moment leaves
either the old checkpoint or the new one, never half of one.
"""
from __future__ import annotations

import os
import pickle
import tempfile
from pathlib import Path

import torch

from daelab.errors import CheckpointError

FORMAT = "daelab-checkpoint"
VERSION = 1
LAST, BEST = "last.pt", "best.pt"


def atomic_write(path: str | os.PathLike, write) -> None:
    """Call ``write(file_object)`` on a temp file beside ``path``, fsync it, then rename it over ``path``."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            write(handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException as exc:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        # A Ctrl-C inside torch.save surfaces as the zip writer's own error on the way out; report the
        # interrupt, which the CLI turns into one line ("path" itself is untouched either way).
        interrupt = _interrupt_behind(exc)
        if interrupt is not None and interrupt is not exc:
            raise interrupt from None
        raise
    _fsync_dir(path.parent)


def _interrupt_behind(exc: BaseException | None) -> KeyboardInterrupt | None:
    """The KeyboardInterrupt that ``exc`` was raised while handling, if any (or ``exc`` itself)."""
    seen = set()
    while exc is not None and id(exc) not in seen:
        if isinstance(exc, KeyboardInterrupt):
            return exc
        seen.add(id(exc))
        exc = exc.__context__
    return None


def _fsync_dir(directory: Path) -> None:
    """Make renames in ``directory`` durable (best effort: not every OS or file system allows it)."""
    try:
        dir_fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
    except OSError:
        pass


def save_checkpoint(path: str | os.PathLike, state: dict) -> None:
    """Write ``state`` (plain containers and tensors) atomically with the format tag and version."""
    payload = {"format": FORMAT, "version": VERSION, **state}
    try:
        atomic_write(path, lambda handle: torch.save(payload, handle))
    except OSError as exc:
        raise CheckpointError(f"cannot write checkpoint {path}: {exc.strerror or exc}",
                              "the previous checkpoint is unchanged; free disk space or fix permissions") from None


def save_checkpoints(paths: list[str | os.PathLike], state: dict) -> None:
    """:func:`save_checkpoint` to the first path, and the same file to the others.

    The others become hard links to the first (atomically: a link under a temp name, renamed over
    the old file), so "last is also the best" costs one write, not two. Replacing the first file
    later renames a new file over its name and leaves the linked copies as they are. Where links are
    not possible (some file systems), each path is written in full.
    """
    first, *others = [Path(p) for p in paths]
    save_checkpoint(first, state)
    for path in others:
        tmp = path.with_name(f".{path.name}.link.tmp")
        try:
            tmp.unlink(missing_ok=True)
            os.link(first, tmp)
            os.replace(tmp, path)
            _fsync_dir(path.parent)
        except OSError:
            tmp.unlink(missing_ok=True)
            save_checkpoint(path, state)


def load_checkpoint(path: str | os.PathLike, expect_model: str | None = None) -> dict:
    """Load and validate a checkpoint on the CPU; never unpickles arbitrary objects.

    Raises :class:`CheckpointError` for a missing, corrupt or unsafe file, a newer format version,
    or (with ``expect_model``) a checkpoint of another model.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"no checkpoint at {path}")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:
        raise CheckpointError(f"refused to load {path}: not plain tensors and data (corrupt, or it holds "
                              "objects that would run code)", "only load checkpoints daelab wrote") from None
    except (RuntimeError, EOFError, OSError, ValueError, KeyError, AttributeError) as exc:
        first = (str(exc).splitlines() or [type(exc).__name__])[0]
        raise CheckpointError(f"cannot read checkpoint {path}: {first[:200]}",
                              "the file is corrupt or truncated") from None
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise CheckpointError(f"{path} is not a daelab checkpoint")
    version = state.get("version")
    if not isinstance(version, int) or version > VERSION:
        raise CheckpointError(f"{path} has checkpoint format version {version}; this daelab reads up to {VERSION}",
                              "upgrade daelab")
    model_name = state.get("model_config", {}).get("name")
    if expect_model is not None and model_name != expect_model:
        raise CheckpointError(f"{path} holds a {model_name!r} model, not {expect_model!r}")
    return state
