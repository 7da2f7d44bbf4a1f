"""What a loaded checkpoint may hold, checked before daelab uses any of it.

:func:`daelab.checkpoint.load_checkpoint` calls :func:`check_archive` before torch reads a file
(its zip records stored and no larger together than the file, so reading costs no more memory than
the file holds) and :func:`check_contents` after (plain data, bounded in size and depth, every
tensor dense and finite, the known keys of their types). :func:`check_model_state`,
:func:`check_optimizer_state` and :func:`check_resume_state` hold a checkpoint against the model
it is loaded into. :mod:`daelab.checkpoint` re-exports the public ones.
"""
from __future__ import annotations

import math
import reprlib
import zipfile
from pathlib import Path

import torch

from daelab.errors import CheckpointError


# ---------------------------------------------------------------------------- what a file may hold
def first_line(exc: BaseException) -> str:
    return ((str(exc).splitlines() or [type(exc).__name__])[0] or type(exc).__name__)[:200]


def short(value) -> str:
    """``repr`` cut to a line: a hostile value must not make a message long (or slow to build)."""
    return " ".join(_REPR.repr(value).split())


_REPR = reprlib.Repr()
_REPR.maxstring = _REPR.maxother = 60


def check_archive(path: Path, max_bytes: int, max_pickle_bytes: int, max_records: int) -> int:
    """Refuse, before torch reads it, a file whose records would cost more memory than the file holds.

    torch.save writes a zip of stored (uncompressed) records; torch.load also inflates deflated ones,
    so a few megabytes of zeros could declare gigabytes. Returns the file size.
    """
    size = path.stat().st_size
    if size > max_bytes:
        raise CheckpointError(f"refused to load {path}: {size:,} bytes, more than a daelab checkpoint may hold "
                              f"({max_bytes:,})", "only load checkpoints daelab wrote")
    try:
        with zipfile.ZipFile(path) as archive:
            records = archive.infolist()
    except (zipfile.BadZipFile, OSError, ValueError, EOFError, NotImplementedError):
        raise CheckpointError(f"refused to load {path}: not a zip archive of tensors (corrupt or truncated, or "
                              "not written by daelab)", "only load checkpoints daelab wrote") from None
    if len(records) > max_records:
        raise CheckpointError(f"refused to load {path}: {len(records):,} records (a daelab checkpoint has a few "
                              "hundred)", "only load checkpoints daelab wrote")
    packed = next((r.filename for r in records if r.compress_type != zipfile.ZIP_STORED), None)
    if packed is not None:
        raise CheckpointError(f"refused to load {path}: record {short(packed)} is compressed (torch.save never "
                              "compresses; inflating it could cost far more memory than the file)",
                              "only load checkpoints daelab wrote")
    declared = sum(r.file_size for r in records)
    if declared > size:
        raise CheckpointError(f"refused to load {path}: its records declare {declared:,} bytes in a file of "
                              f"{size:,}", "the file is corrupt")
    pickled = sum(r.file_size for r in records if r.filename.endswith("data.pkl"))
    if pickled > max_pickle_bytes:
        raise CheckpointError(f"refused to load {path}: {pickled:,} bytes of structure around its tensors "
                              f"(more than {max_pickle_bytes:,})", "only load checkpoints daelab wrote")
    return size


# The types of the keys daelab writes; a key that is present must have its type.
_KEY_TYPES = {"model_config": dict, "train_config": dict, "model": dict, "optimizer": dict, "epoch": int,
              "epoch_step": int, "step": int, "rng": dict, "history": list, "best_metric": (int, float),
              "epoch_acc": (list, type(None))}
_SCALARS = (str, int, float, bool, type(None))


def check_contents(state: dict, path: Path, size: int, max_nodes: int, max_depth: int) -> None:
    """Every value plain, every tensor dense, contiguous and finite, the known keys of their types."""
    tensors: list[tuple[str, torch.Tensor]] = []
    budget = [max_nodes]

    def walk(value, where: str, depth: int, on_path: frozenset) -> None:
        budget[0] -= 1
        if budget[0] < 0:
            raise CheckpointError(f"refused to load {path}: more than {max_nodes:,} values (or references to "
                                  "one value, repeated)", "only load checkpoints daelab wrote")
        if isinstance(value, torch.Tensor):
            tensors.append((where, value))
        elif isinstance(value, (dict, list, tuple)):
            if depth > max_depth or id(value) in on_path:
                raise CheckpointError(f"refused to load {path}: {where} is nested too deep or holds itself",
                                      "only load checkpoints daelab wrote")
            inner = on_path | {id(value)}
            items = value.items() if isinstance(value, dict) else enumerate(value)
            for key, item in items:
                if isinstance(value, dict) and not isinstance(key, (str, int)):
                    raise CheckpointError(f"refused to load {path}: {where} has a key of type {type(key).__name__}")
                walk(item, f"{where}[{short(key)}]", depth + 1, inner)
        elif not isinstance(value, _SCALARS):
            raise CheckpointError(f"refused to load {path}: {where} is a {type(value).__name__}, not plain data",
                                  "only load checkpoints daelab wrote")

    walk(state, "checkpoint", 0, frozenset())
    for key, kind in _KEY_TYPES.items():
        value = state.get(key, None if key == "epoch_acc" else _ABSENT)
        if value is _ABSENT:
            continue
        if not isinstance(value, kind) or (isinstance(value, bool) and kind is int):
            raise CheckpointError(f"malformed checkpoint {path}: {key} is a {type(value).__name__}",
                                  "the file is corrupt or not written by daelab")
        if kind is int and value < 0:
            raise CheckpointError(f"malformed checkpoint {path}: {key} is {value}", "the file is corrupt")
    if isinstance(state.get("best_metric"), float) and math.isnan(state["best_metric"]):
        raise CheckpointError(f"malformed checkpoint {path}: best_metric is NaN", "the file is corrupt")
    bad = next((k for k, v in state.get("model", {}).items() if not isinstance(k, str) or
                not isinstance(v, torch.Tensor)), None)
    if bad is not None:
        raise CheckpointError(f"malformed checkpoint {path}: model entry {short(bad)} is not a named tensor",
                              "the file is corrupt or not written by daelab")
    storages: dict[int, int] = {}
    for where, tensor in tensors:
        check_tensor(tensor, f"{where} of {path}")
        storage = tensor.untyped_storage()
        storages[storage.data_ptr()] = max(storages.get(storage.data_ptr(), 0), storage.nbytes())
    if sum(storages.values()) > size:
        raise CheckpointError(f"refused to load {path}: its tensors hold more bytes than the file",
                              "the file is corrupt")


_ABSENT = object()


def is_dense(tensor: torch.Tensor) -> bool:
    """True when ``tensor``'s elements fill a block of memory once each: contiguous in some order of its
    dimensions (row-major, or ``channels_last`` as conv weights may be), with no stride 0, overlap or gap."""
    expected = 1
    for stride, size in sorted((st, sz) for sz, st in zip(tensor.shape, tensor.stride()) if sz != 1):
        if size == 0:
            return True
        if stride != expected:
            return False
        expected *= size
    return True


def check_tensor(tensor: torch.Tensor, where: str) -> None:
    """Raise :class:`CheckpointError` unless ``tensor`` is dense (:func:`is_dense`) and (if floating) finite.

    An expanded (stride-0) tensor reads as a large one from a few bytes: a kernel that writes into
    it in place, or a copy of it, then crashes or costs gigabytes; a NaN weight makes every output NaN.

    Parameters
    ----------
    tensor : the tensor to check.
    where : what it is, for the message (e.g. ``checkpoint['model']['w'] of runs/x/last.pt``).
    """
    if tensor.layout != torch.strided or tensor.is_quantized or tensor.is_meta:
        raise CheckpointError(f"refused {where}: a {str(tensor.layout).replace('torch.', '')} tensor, not a dense one",
                              "only load checkpoints daelab wrote")
    if not is_dense(tensor):
        raise CheckpointError(f"refused {where}: not contiguous (strides {tuple(tensor.stride())} for shape "
                              f"{tuple(tensor.shape)}: an expanded or strided view)",
                              "only load checkpoints daelab wrote")
    needed = (tensor.storage_offset() + tensor.numel()) * tensor.element_size()
    if needed > tensor.untyped_storage().nbytes():
        raise CheckpointError(f"refused {where}: shape {tuple(tensor.shape)} needs more bytes than its storage",
                              "the file is corrupt")
    if (tensor.is_floating_point() or tensor.is_complex()) and not bool(torch.isfinite(tensor).all()):
        raise CheckpointError(f"refused {where}: it holds NaN or infinite values",
                              "the run diverged or the file was damaged; use another checkpoint or retrain")


# ---------------------------------------------------------------------------- against the model
def check_model_state(model_state: dict, model: torch.nn.Module, source: str) -> None:
    """Raise one :class:`CheckpointError` unless ``model_state`` has exactly ``model``'s keys, shapes and dtypes.

    Build ``model`` on the ``meta`` device to check a checkpoint before any weights are allocated.

    Parameters
    ----------
    model_state : the checkpoint's ``model`` entry (name -> tensor).
    model : the module the state is for, built from the checkpoint's config.
    source : what holds the state (a path or run directory), for the message.
    """
    hint = "it was written for another architecture, or the file is damaged; retrain or use another checkpoint"
    if not isinstance(model_state, dict):
        raise CheckpointError(f"{source}: the model weights are a {type(model_state).__name__}, not a dict", hint)
    expected = model.state_dict()
    missing = [k for k in expected if k not in model_state]
    unexpected = [k for k in model_state if k not in expected]
    if missing or unexpected:
        parts = [f"{len(missing)} missing ({short(missing[0])}...)" if missing else "",
                 f"{len(unexpected)} unexpected ({short(unexpected[0])}...)" if unexpected else ""]
        raise CheckpointError(f"{source} does not fit its model config: weights " + ", ".join(p for p in parts if p),
                              hint)
    for name, reference in expected.items():
        tensor = model_state[name]
        if not isinstance(tensor, torch.Tensor):
            raise CheckpointError(f"{source}: weight {name} is a {type(tensor).__name__}, not a tensor", hint)
        if tensor.shape != reference.shape or tensor.dtype != reference.dtype:
            raise CheckpointError(f"{source} does not fit its model config: {name} is {tensor.dtype} "
                                  f"{tuple(tensor.shape)}, the model's {reference.dtype} {tuple(reference.shape)}",
                                  hint)


ADAM_STATE = ("step", "exp_avg", "exp_avg_sq")


def check_optimizer_state(optimizer_state: dict, model: torch.nn.Module, source: str = "the checkpoint") -> None:
    """Raise :class:`CheckpointError` unless ``optimizer_state`` is an Adam state for ``model``'s parameters.

    Call it before ``optimizer.load_state_dict``: the training step (daelab's fused kernels in
    particular) writes into ``exp_avg``/``exp_avg_sq`` in place and trusts their shape, dtype and
    layout. Each must be a dense, contiguous, finite tensor of its parameter's shape and dtype
    (``exp_avg_sq`` also >= 0), and ``step`` a finite count >= 0. Hyperparameters (``lr``, ...) are
    left alone: a bad one shows as a non-finite loss, which training reports itself.

    Parameters
    ----------
    optimizer_state : the checkpoint's ``optimizer`` entry (``torch.optim.Adam.state_dict()``).
    model : the module being trained (may be on the ``meta`` device).
    source : what holds the state, for the message.
    """
    hint = "the file is damaged or not written by daelab; resume from another copy or start a new run"
    params = list(model.parameters())
    groups = optimizer_state.get("param_groups") if isinstance(optimizer_state, dict) else None
    states = optimizer_state.get("state") if isinstance(optimizer_state, dict) else None
    if not isinstance(groups, list) or not isinstance(states, dict) or \
            not all(isinstance(g, dict) and isinstance(g.get("params"), list) for g in groups):
        raise CheckpointError(f"{source}: the optimizer state is not an Adam state dict", hint)
    ids = [i for g in groups for i in g["params"]]
    if len(ids) != len(params) or len(set(map(repr, ids))) != len(ids) or \
            not all(isinstance(i, int) and not isinstance(i, bool) for i in ids):
        raise CheckpointError(f"{source}: the optimizer state is for {len(ids)} parameters, the model has "
                              f"{len(params)}", hint)
    by_id = dict(zip(ids, params))
    for index, entry in states.items():
        if index not in by_id or not isinstance(entry, dict):
            raise CheckpointError(f"{source}: optimizer state {short(index)} belongs to no parameter", hint)
        param = by_id[index]
        missing = [k for k in ADAM_STATE if k not in entry]
        if missing or set(entry) - {*ADAM_STATE, "max_exp_avg_sq"}:
            raise CheckpointError(f"{source}: optimizer state {index} has keys {sorted(map(str, entry))}, not "
                                  f"{list(ADAM_STATE)}", hint)
        for key in ("exp_avg", "exp_avg_sq", "max_exp_avg_sq"):
            if key not in entry:
                continue
            value = entry[key]
            where = f"optimizer state {index} {key} in {source}"
            if not isinstance(value, torch.Tensor):
                raise CheckpointError(f"{where} is a {type(value).__name__}, not a tensor", hint)
            if value.shape != param.shape or value.dtype != param.dtype:
                raise CheckpointError(f"{where} is {value.dtype} {tuple(value.shape)}, its parameter "
                                      f"{param.dtype} {tuple(param.shape)}", hint)
            check_tensor(value, where)
            if value.numel() > 1 and value.stride() != param.stride():  # the step walks both in one order
                raise CheckpointError(f"{where} is laid out with strides {value.stride()}, its parameter "
                                      f"{param.stride()}", hint)
            if key != "exp_avg" and bool((value < 0).any()):
                raise CheckpointError(f"{where} has negative values (a mean of squares)", hint)
        step = entry["step"]
        count = float(step) if isinstance(step, (int, float)) and not isinstance(step, bool) else None
        if isinstance(step, torch.Tensor):
            check_tensor(step, f"optimizer state {index} step in {source}")
            count = float(step) if step.numel() == 1 and step.is_floating_point() else None
        if count is None or not math.isfinite(count) or count < 0 or count != int(count):
            raise CheckpointError(f"{source}: optimizer state {index} step is {short(step)}, not a count", hint)


RESUME_KEYS = ("model_config", "train_config", "model", "optimizer", "epoch", "epoch_step", "rng", "best_metric",
               "history")


def check_resume_state(state: dict, model: torch.nn.Module, source: str) -> None:
    """Raise :class:`CheckpointError` unless ``state`` holds all a resume needs, fitting ``model``.

    Parameters
    ----------
    state : a checkpoint dict from :func:`load_checkpoint` (types of the keys present already checked).
    model : the model built from ``state["model_config"]`` (the ``meta`` device is enough).
    source : the checkpoint path, for the message.
    """
    missing = [key for key in RESUME_KEYS if key not in state]
    if missing:
        raise CheckpointError(f"{source} cannot be resumed: it has no {', '.join(missing)}",
                              "it was not written by 'daelab train'; start a new run")
    check_model_state(state["model"], model, source)
    check_optimizer_state(state["optimizer"], model, source)
    reference = torch.get_rng_state()
    for name in ("torch", "generator"):
        rng = state["rng"].get(name)
        if not isinstance(rng, torch.Tensor) or rng.dtype != reference.dtype or rng.shape != reference.shape:
            raise CheckpointError(f"{source}: its random state {name!r} is not a CPU generator state",
                                  "the file is damaged; start a new run")
    acc = state.get("epoch_acc")
    if state["epoch_step"] and not (isinstance(acc, list) and len(acc) == 3 and
                                    all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in acc)):
        raise CheckpointError(f"{source}: it stopped mid-epoch without the epoch's running sums",
                              "the file is damaged; start a new run")
    if not all(isinstance(row, dict) for row in state["history"]):
        raise CheckpointError(f"{source}: its history is not a list of epoch rows", "the file is damaged")
