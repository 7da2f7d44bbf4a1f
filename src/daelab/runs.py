"""Run directories: where a training run keeps its config, checkpoints, metrics and figures.

Layout of a run directory::

    config.json        resolved model and training config (written before the first epoch)
    last.pt, best.pt   checkpoints (see daelab.checkpoint); best by validation loss
    metrics.jsonl      one JSON row per epoch: epoch, train_loss, val_loss, epoch_seconds, ...
    tensorboard/       TensorBoard event files (train/loss, val/loss, ...)
    loss_curve.png     train vs validation loss
    train.lock         present while a process trains into the directory

Later stages (evaluate, probe, report) read from here and write their own files beside these.
"""
from __future__ import annotations

import datetime as _dt
import json
import os
import shutil
import socket
from pathlib import Path

import torch

from daelab.checkpoint import BEST, LAST, atomic_write, check_model_state, load_checkpoint
from daelab.config import from_jsonable
from daelab.errors import CheckpointError, RunLockedError, UsageError
from daelab.models import ModelConfig, build_model

CONFIG_FILE = "config.json"
METRICS_FILE = "metrics.jsonl"
LOCK_FILE = "train.lock"
MAX_JSON_BYTES = 64 << 20  # a run's JSON files are kilobytes; refuse what would cost gigabytes


def default_run_dir(root: str | os.PathLike = "runs") -> Path:
    """``runs/<timestamp>`` (local time, to the second)."""
    return Path(root) / _dt.datetime.now().strftime("%Y%m%d-%H%M%S")


def write_json(path: str | os.PathLike, values) -> None:
    """Write JSON atomically (so a reader never sees half a file)."""
    text = json.dumps(values, indent=2, sort_keys=False, default=str) + "\n"
    atomic_write(path, lambda handle: handle.write(text.encode()))


def read_json(path: str | os.PathLike, max_bytes: int = MAX_JSON_BYTES):
    """The JSON value in ``path``; :class:`UsageError` in one line for a missing, huge, truncated or bad file.

    Parameters
    ----------
    path : the file.
    max_bytes : refuse a larger file (a stage's JSON is a few hundred kilobytes).

    Returns
    -------
    The decoded value (any JSON type: callers check what they expect).
    """
    path = Path(path)
    try:
        if path.stat().st_size > max_bytes:
            raise UsageError(f"{path} is larger than {max_bytes:,} bytes", "it was not written by daelab")
        return json.loads(path.read_bytes().decode("utf-8"))
    except FileNotFoundError:
        raise UsageError(f"{path} not found") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise UsageError(f"{path} is not valid JSON: {str(exc)[:200]}", "it is truncated or damaged; rerun the "
                         "stage that writes it") from None
    except (OSError, RecursionError, ValueError) as exc:  # a directory, a device, nesting too deep, ...
        raise UsageError(f"cannot read {path}: {getattr(exc, 'strerror', None) or type(exc).__name__}") from None


def write_metrics(run_dir: str | os.PathLike, history: list[dict]) -> None:
    """Rewrite ``metrics.jsonl`` from the full history (kept in the checkpoint, so resume never duplicates rows)."""
    text = "".join(json.dumps(row) + "\n" for row in history)
    atomic_write(Path(run_dir) / METRICS_FILE, lambda handle: handle.write(text.encode()))


def read_metrics(run_dir: str | os.PathLike, max_bytes: int = MAX_JSON_BYTES) -> list[dict]:
    """The rows of ``RUN_DIR/metrics.jsonl`` (``[]`` when there is none).

    Parameters
    ----------
    run_dir : the run directory.
    max_bytes : refuse a larger file.

    Returns
    -------
    list of dict
        One dict per epoch; :class:`UsageError` names the first line that is not a JSON object.
    """
    path = Path(run_dir) / METRICS_FILE
    if not path.is_file():
        return []
    if path.stat().st_size > max_bytes:
        raise UsageError(f"{path} is larger than {max_bytes:,} bytes", "it was not written by daelab")
    rows = []
    try:
        lines = path.read_bytes().decode("utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise UsageError(f"cannot read {path}: {getattr(exc, 'strerror', None) or type(exc).__name__}") from None
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except (ValueError, RecursionError):
            row = None
        if not isinstance(row, dict):
            raise UsageError(f"{path} line {number} is not a JSON object", "the file is truncated or damaged; "
                             "'daelab train --resume' rewrites it from the checkpoint")
        rows.append(row)
    return rows


class RunLock:
    """An exclusive lock file on a run directory that a crashed process does not leave stuck.

    The file holds ``host pid``; a lock whose process is gone (same host) is taken over.
    """

    def __init__(self, run_dir: str | os.PathLike):
        self.path = Path(run_dir) / LOCK_FILE
        self.held = False

    def _owner_alive(self) -> bool:
        try:
            host, pid = self.path.read_text().split()
            pid = int(pid)
        except (OSError, ValueError):
            return False
        if host != socket.gethostname():
            return True  # cannot check another machine's processes: assume alive
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            return True
        return True

    def _in_use(self) -> RunLockedError:
        try:
            owner = self.path.read_text().strip()
        except OSError:  # released meanwhile
            owner = "owner unknown"
        return RunLockedError(f"{self.path.parent} is in use by another training process ({owner})",
                              f"wait for it to finish, or use another --run-dir; remove {self.path} "
                              "only if that process is gone")

    def check_free(self) -> None:
        """Raise ``RunLockedError`` if a live process holds the lock (without taking it).

        For a resume, whose checkpoint the running process may not have written yet: being told
        the directory is in use says more than "no checkpoint".
        """
        if self.path.exists() and self._owner_alive():
            raise self._in_use()

    def acquire(self) -> "RunLock":
        """Take the lock, or raise ``RunLockedError`` (a live owner) or ``UsageError`` (cannot write here).

        Creating the lock file is the first write into the run directory, so it is also the check that
        the directory is writable: a read-only one fails here, before any data is read.
        """
        for _ in range(2):
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                if self._owner_alive():
                    raise self._in_use() from None
                self.path.unlink(missing_ok=True)  # stale: its process died
                continue
            except OSError as exc:  # read-only directory or file system, no permission, not a directory
                raise UsageError(f"cannot write to run directory {self.path.parent}: {exc.strerror or exc}",
                                 "make it writable, or copy the run to a writable place and use that") from None
            with os.fdopen(fd, "w") as handle:
                handle.write(f"{socket.gethostname()} {os.getpid()}\n")
            self.held = True
            return self
        raise RunLockedError(f"could not lock {self.path.parent}")

    def release(self) -> None:
        if self.held:
            self.path.unlink(missing_ok=True)
            self.held = False

    def __enter__(self):
        return self.acquire()

    def __exit__(self, *exc):
        self.release()


# ------------------------------------------------------------------ opening a directory for a new run
# The files training writes (each through a temp file ".NAME.XXXXXXXX.tmp", see
# daelab.checkpoint.atomic_write, or ".best.pt.link.tmp" for the hard link of save_checkpoints).
TRAINING_FILES = (LAST, BEST, METRICS_FILE, CONFIG_FILE)
# What the later stages write beside them (daelab.evaluate, daelab.probe, daelab.report): after a
# new training run they would describe a model that is gone.
STAGE_FILES = ("evaluation.json", "evaluation.md", "probe.json", "probe.md", "report.html", "report.md")
# Also removed by an overwrite: the loss curve, the stage folders, reproduce's stage record, and the per-image
# arrays evaluate and probe keep beside their JSON.
OTHER_OUTPUTS = ("loss_curve.png", "reproduce.json", "probe_correct.npz", "evaluation_daes.npz")
OUTPUT_TREES = ("tensorboard", "figures")


def make_run_dir(run_dir: str | os.PathLike) -> Path:
    """Create ``run_dir`` (and its parents) if needed.

    Parameters
    ----------
    run_dir : str or PathLike
        The run directory.

    Returns
    -------
    Path
        ``run_dir``; a ``UsageError`` naming the reason when it cannot be created.
    """
    run_dir = Path(run_dir)
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UsageError(f"cannot create run directory {run_dir}: {exc.strerror or exc}",
                         "choose another --run-dir") from None
    return run_dir


def remove_temp_files(run_dir: str | os.PathLike) -> list[Path]:
    """Delete the temp files a killed training process left of the files training writes.

    Call it holding the :class:`RunLock`: only then is no live process writing them (a second
    ``train`` that cleaned up before taking the lock deleted the first one's checkpoint mid-write).
    The temp files of other stages' outputs are left alone: those stages do not take the lock.

    Parameters
    ----------
    run_dir : str or PathLike
        The run directory.

    Returns
    -------
    list of Path
        The files removed.
    """
    removed = []
    for name in TRAINING_FILES:
        for stale in Path(run_dir).glob(f".{name}.*.tmp"):
            stale.unlink(missing_ok=True)
            removed.append(stale)
    return removed


def holds_run(run_dir: str | os.PathLike) -> bool:
    """Whether ``run_dir`` holds results of a training run: a checkpoint, metrics or a later stage's output.

    A directory with only ``config.json`` (a run killed before its first checkpoint) or only
    ``reproduce.json`` (a reproduction not yet past its first checkpoint) has nothing to lose.

    Parameters
    ----------
    run_dir : str or PathLike
        The run directory.

    Returns
    -------
    bool
        True when a new run there would replace results.
    """
    return any((Path(run_dir) / name).exists() for name in (LAST, BEST, METRICS_FILE) + STAGE_FILES)


def claim_run_dir(run_dir: str | os.PathLike, overwrite: bool = False) -> None:
    """Ready ``run_dir`` for a new run: refuse one holding a run, or with ``overwrite`` remove its outputs.

    Call it holding the :class:`RunLock`, so no live process is writing what is removed.

    Parameters
    ----------
    run_dir : str or PathLike
        The run directory (existing).
    overwrite : bool
        Remove the old run's checkpoints, metrics, TensorBoard events, figures and the later stages'
        outputs instead of refusing.
    """
    run_dir = Path(run_dir)
    if not holds_run(run_dir):
        return
    if not overwrite:
        raise UsageError(f"{run_dir} already holds a training run",
                         f"continue it with 'daelab train --resume {run_dir}', replace it with --overwrite, "
                         "or choose another --run-dir")
    for name in TRAINING_FILES + STAGE_FILES + OTHER_OUTPUTS:
        (run_dir / name).unlink(missing_ok=True)
    for name in OUTPUT_TREES:
        if (run_dir / name).is_dir():
            shutil.rmtree(run_dir / name)


def checkpoint_path(run_dir: str | os.PathLike, which: str = "best") -> Path:
    """Path of the ``best`` or ``last`` checkpoint of a run (``best`` falls back to ``last``)."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise UsageError(f"run directory {run_dir} not found", "train one first with 'daelab train'")
    names = {"best": [BEST, LAST], "last": [LAST]}.get(which)
    if names is None:
        raise UsageError(f"unknown checkpoint {which!r}", "use 'best' or 'last'")
    for name in names:
        if (run_dir / name).is_file():
            return run_dir / name
    raise CheckpointError(f"no checkpoint in {run_dir}", "train into it first with 'daelab train --run-dir'")


def load_model(run_dir: str | os.PathLike, which: str = "best", device: str | torch.device = "cpu"):
    """The trained model of a run directory, in eval mode, and its checkpoint dict.

    Returns
    -------
    (model, checkpoint) : the ``nn.Module`` on ``device`` and the loaded checkpoint state.
    """
    path = checkpoint_path(run_dir, which)
    state = load_checkpoint(path)
    if not isinstance(state.get("model_config"), dict) or "model" not in state:
        raise CheckpointError(f"{path} holds no model and model config", "it was not written by 'daelab train'")
    try:
        config = from_jsonable(ModelConfig, state["model_config"])
        with torch.device("meta"):  # shapes to check against, before any weight is allocated
            skeleton = build_model(config)
    except (UsageError, TypeError, ValueError, RuntimeError) as exc:
        raise CheckpointError(f"{path} has an invalid model config: {str(exc).splitlines()[0][:200]}",
                              "the file is damaged or from another daelab") from None
    check_model_state(state["model"], skeleton, str(path))
    model = build_model(config)
    model.load_state_dict(state["model"])
    return model.to(device).eval(), state
