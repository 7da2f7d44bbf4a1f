"""Checkpoints: one versioned plain dict per file, written atomically, loaded without pickle code.

A checkpoint is ``{format, version, model_config, train_config, model, optimizer, epoch, step,
epoch_step, epoch_acc, rng, best_metric, history}``: tensors, numbers, strings,
lists and dicts only, so :func:`torch.load` with ``weights_only=True`` reads it and a crafted file
with a pickle payload is refused without running anything. Writes go to a temp file in the same
directory, are fsynced, then ``os.replace``d over the old file, so a crash at any moment leaves
either the old checkpoint or the new one, never half of one.
"""
from __future__ import annotations

import errno
import os
import pickle
import tempfile
from pathlib import Path

import torch

from daelab._checkpoint_checks import (
    ADAM_STATE,
    RESUME_KEYS,
    check_archive,
    check_contents,
    check_model_state,
    check_optimizer_state,
    check_resume_state,
    check_tensor,
    first_line,
    is_dense,
    short,
)
from daelab.errors import CheckpointError, OutputError, UsageError

__all__ = ["ADAM_STATE", "BEST", "FORMAT", "LAST", "MAX_CHECKPOINT_BYTES", "MAX_DEPTH", "MAX_NODES", "MAX_PICKLE_BYTES",
           "MAX_RECORDS", "RESUME_KEYS", "VERSION", "atomic_write", "check_model_state", "check_optimizer_state",
           "check_resume_state", "check_tensor", "check_writable", "is_dense", "load_checkpoint", "output_error",
           "save_checkpoint", "save_checkpoints"]

FORMAT = "daelab-checkpoint"
VERSION = 1
LAST, BEST = "last.pt", "best.pt"

# What one checkpoint may cost to read. The study's is ~17 MB (weights and two Adam moments); these
# leave room for far larger models and refuse a file built to exhaust memory before it is read.
MAX_CHECKPOINT_BYTES = 2 << 30
MAX_PICKLE_BYTES = 16 << 20  # the structure around the tensors: configs, history, optimizer groups
MAX_RECORDS = 100_000
MAX_NODES = 1_000_000  # values visited, a repeated reference counted each time it is met
MAX_DEPTH = 32


def atomic_write(path: str | os.PathLike, write) -> None:
    """Call ``write(file_object)`` on a temp file beside ``path``, fsync it, then rename it over ``path``.

    The file gets the mode a plain ``open`` would give it (``0o666`` less the umask), not the
    temp file's private ``0o600``.
    """
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.fchmod(fd, 0o666 & ~_umask())
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


def check_writable(directory: str | os.PathLike, hint: str = "make it writable, or work on a writable copy") -> None:
    """Raise :class:`UsageError` unless a file can be created in ``directory`` (which must exist).

    It creates and removes a temp file: permission bits alone do not tell (root ignores them, and a
    read-only mount or a full inode table refuses whatever the bits say). Call it before a long
    computation whose results go there.
    """
    directory = Path(directory)
    try:
        fd, probe = tempfile.mkstemp(prefix=".write-check.", suffix=".tmp", dir=directory)
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        raise UsageError(f"cannot write into {directory}: {exc.strerror or exc}", hint) from None


def output_error(path: str | os.PathLike, exc: OSError) -> OutputError:
    """The one-line error for a result file that could not be written (the old file, if any, is kept)."""
    cause = "the disk is full" if exc.errno in (errno.ENOSPC, errno.EDQUOT) else (exc.strerror or str(exc))
    return OutputError(f"cannot write {path}: {cause}", "free disk space or fix permissions, then run it again")


def _umask() -> int:
    """This process's umask, read without changing it where Linux allows (os.umask can only swap it)."""
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


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
    except (OSError, RuntimeError) as exc:
        # torch's zip writer reports a full disk as its own RuntimeError ("unexpected pos ..."), raised
        # while closing the archive after the OSError of the failed write: look behind it for the cause.
        cause = _os_error_behind(exc)
        if cause is None and isinstance(exc, RuntimeError) and not _disk_nearly_full(Path(path).parent):
            raise
        if cause is None or cause.errno in (errno.ENOSPC, errno.EDQUOT):
            what = f"the disk is full ({cause.strerror if cause is not None else first_line(exc)})"
        else:
            what = cause.strerror or first_line(cause)
        raise CheckpointError(f"cannot write checkpoint {path}: {what}",
                              "the previous checkpoint is unchanged; free disk space or fix permissions") from None


def _os_error_behind(exc: BaseException | None) -> OSError | None:
    """The OSError that ``exc`` is or was raised while handling, if any."""
    seen = set()
    while exc is not None and id(exc) not in seen:
        if isinstance(exc, OSError):
            return exc
        seen.add(id(exc))
        exc = exc.__context__ or exc.__cause__
    return None


def _disk_nearly_full(directory: Path) -> bool:
    try:
        stats = os.statvfs(directory)
    except OSError:
        return False
    return stats.f_bavail * stats.f_frsize < 1 << 20


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

    Before anything is materialised, the file's size is capped (:data:`MAX_CHECKPOINT_BYTES`) and
    its zip records must be stored uncompressed with sizes adding up to no more than the file, so
    reading it costs no more memory than the file holds. After loading, every tensor must be dense,
    contiguous and (for floating point) finite, and the known keys must have their types.

    Parameters
    ----------
    path : the checkpoint file.
    expect_model : refuse a checkpoint whose ``model_config.name`` differs.

    Returns
    -------
    dict
        The checkpoint's plain dict.

    Raises
    ------
    CheckpointError
        For a missing, oversized, corrupt or unsafe file, a newer format version, malformed
        contents or (with ``expect_model``) a checkpoint of another model.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"no checkpoint at {path}")
    size = check_archive(path, MAX_CHECKPOINT_BYTES, MAX_PICKLE_BYTES, MAX_RECORDS)
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:
        raise CheckpointError(f"refused to load {path}: not plain tensors and data (corrupt, or it holds "
                              "objects that would run code)", "only load checkpoints daelab wrote") from None
    except (RuntimeError, EOFError, OSError, ValueError, KeyError, AttributeError, TypeError, IndexError,
            OverflowError, RecursionError, MemoryError) as exc:
        raise CheckpointError(f"cannot read checkpoint {path}: {first_line(exc)}",
                              "the file is corrupt or truncated") from None
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise CheckpointError(f"{path} is not a daelab checkpoint")
    version = state.get("version")
    if not isinstance(version, int) or isinstance(version, bool) or version > VERSION:
        raise CheckpointError(f"{path} has checkpoint format version {short(version)}; this daelab reads up to "
                              f"{VERSION}", "upgrade daelab")
    check_contents(state, path, size, MAX_NODES, MAX_DEPTH)
    model_name = state.get("model_config", {}).get("name")
    if expect_model is not None and model_name != expect_model:
        raise CheckpointError(f"{path} holds a {short(model_name)} model, not {expect_model!r}")
    return state
