"""Shipped models: trained weights in the package, so denoising needs no training and no network.

The folder holds one ``NAME.safetensors`` per model (its ``state_dict`` in fp32, BatchNorm running
statistics included) and ``manifest.json``, which lists each model: ``name``, ``description``,
``model_config`` and ``train_config`` (from the checkpoint it came from), ``training_command``,
``data``, ``file``, ``sha256``, ``bytes``, ``measured`` (the figures it reached, with the command,
commit and CPU class they came from) and ``licence``. A model is added by dropping in its file
and its manifest entry; nothing else changes: :func:`export_model` (``scripts/ship_model.py``)
writes both from a run directory.

:func:`load_pretrained` checks the file's sha256 against the manifest before reading a byte of it
as tensors, builds the model from the manifest's config and loads the tensors with safetensors
(no pickle). :func:`resolve_model` is what every MODEL argument goes through: a run directory if
the path exists, else a shipped model's name.
"""
from __future__ import annotations

import hashlib
import os
from pathlib import Path

import torch

from daelab.errors import CheckpointError, ConfigError

__all__ = ["MANIFEST", "PRETRAINED_DIR", "describe", "export_model", "list_models", "load_pretrained",
           "measured_from_evaluation", "model_names", "refuse_shipped", "resolve_denoiser", "resolve_model",
           "shipped_name"]

PRETRAINED_DIR = Path(__file__).resolve().parent
MANIFEST = "manifest.json"

from daelab.pretrained._export import export_model, measured_from_evaluation  # noqa: E402  (needs the names above)


def _manifest(directory: str | os.PathLike | None = None) -> list[dict]:
    """The manifest's model entries (``directory`` overrides the package folder, for tests and add-ons)."""
    from daelab.runs import read_json
    path = Path(directory or PRETRAINED_DIR) / MANIFEST
    if not path.is_file():
        raise ConfigError(f"no shipped-model manifest at {path}", "reinstall daelab")
    return check_manifest(read_json(path), path, "reinstall daelab")["models"]


def check_manifest(manifest, path: Path, hint: str) -> dict:
    """``manifest`` if it is one (a dict with a ``models`` list of named entries), else a ConfigError with ``hint``."""
    models = manifest.get("models") if isinstance(manifest, dict) else None
    if not isinstance(models, list) or not all(isinstance(m, dict) and isinstance(m.get("name"), str) for m in models):
        raise ConfigError(f"{path} is not a shipped-model manifest (no 'models' list of named entries)", hint)
    return manifest


def list_models(directory: str | os.PathLike | None = None) -> list[dict]:
    """The shipped models' manifest entries, in manifest order.

    Parameters
    ----------
    directory : a folder holding ``manifest.json`` and the weight files (default: the package's).

    Returns
    -------
    list of dict : one manifest entry per model (name, description, configs, measured figures, ...).
    """
    return [dict(entry) for entry in _manifest(directory)]


def model_names(directory: str | os.PathLike | None = None) -> list[str]:
    """The shipped models' names."""
    return [entry["name"] for entry in _manifest(directory)]


def _entry(name: str, directory: str | os.PathLike | None) -> dict:
    for entry in _manifest(directory):
        if entry["name"] == name:
            return dict(entry)
    names = ", ".join(model_names(directory)) or "none"
    raise ConfigError(f"no shipped model named {name!r} (shipped: {names})",
                      "pass a run directory written by 'daelab train', or a shipped name; see 'daelab models'")


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def load_pretrained(name: str, directory: str | os.PathLike | None = None,
                    device: str | torch.device = "cpu") -> tuple[torch.nn.Module, dict]:
    """A shipped model, in eval mode, and its manifest entry.

    Parameters
    ----------
    name : a shipped model's name (see :func:`list_models`).
    directory : a folder holding ``manifest.json`` and the weight files (default: the package's).
    device : where to put the model.

    Returns
    -------
    (model, info) : the ``nn.Module`` and its manifest entry, with ``path`` (the weight file) and
    ``source`` (``"shipped"``) added.

    Raises
    ------
    ConfigError : an unknown name (the message lists the shipped ones).
    CheckpointError : the weight file is missing, its size or sha256 is not the manifest's, or its
        tensors are not the ones the config's model has.
    """
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    from daelab.checkpoint import check_model_state
    from daelab.config import from_jsonable
    from daelab.models import ModelConfig, build_model

    entry = _entry(name, directory)
    path = Path(directory or PRETRAINED_DIR) / str(entry.get("file", f"{name}.safetensors"))
    hint = "the installed file is damaged or was replaced; reinstall daelab"
    if not path.is_file():
        raise CheckpointError(f"shipped model {name!r}: weight file {path} is missing", hint)
    if "bytes" in entry and path.stat().st_size != entry["bytes"]:
        raise CheckpointError(f"shipped model {name!r}: {path} has {path.stat().st_size:,} bytes, "
                              f"the manifest says {entry['bytes']:,}", hint)
    digest = _sha256(path)
    if digest != entry.get("sha256"):
        raise CheckpointError(f"shipped model {name!r}: sha256 of {path} is {digest[:12]}..., "
                              f"the manifest says {str(entry.get('sha256'))[:12]}...", hint)
    try:
        config = from_jsonable(ModelConfig, entry["model_config"])
        with torch.device("meta"):
            skeleton = build_model(config)
    except (KeyError, TypeError, ValueError, RuntimeError) as exc:
        raise CheckpointError(f"shipped model {name!r} has an invalid model config in its manifest: "
                              f"{str(exc).splitlines()[0][:200]}", hint) from None
    try:
        state = load_file(str(path), device="cpu")
    except (SafetensorError, OSError, ValueError) as exc:
        raise CheckpointError(f"shipped model {name!r}: cannot read {path}: {str(exc).splitlines()[0][:200]}",
                              hint) from None
    check_model_state(state, skeleton, str(path))
    model = build_model(config)
    model.load_state_dict(state)
    return model.to(device).eval(), {**entry, "path": str(path), "source": "shipped"}


def shipped_name(model_arg: str | os.PathLike) -> str | None:
    """``model_arg`` if it names a shipped model and is not an existing path, else None."""
    text = os.fspath(model_arg)
    if Path(text).exists():
        return None
    return text if text in model_names() else None


def resolve_model(model_arg: str | os.PathLike, checkpoint: str = "best",
                  device: str | torch.device = "cpu") -> tuple[torch.nn.Module, dict]:
    """The model a MODEL argument names: a run directory if the path exists, else a shipped model.

    Parameters
    ----------
    model_arg : a run directory written by ``daelab train``, or a shipped model's name.
    checkpoint : for a run directory, ``"best"`` or ``"last"`` (ignored for a shipped model).
    device : where to put the model.

    Returns
    -------
    (model, info) : the model in eval mode, and for a shipped model its manifest entry
    (:func:`load_pretrained`); for a run directory ``{"source": "run", "run_dir", "checkpoint",
    "model_config", "train_config", "epoch"}``.

    Raises
    ------
    ConfigError : neither an existing path nor a shipped name (the message lists the shipped names).
    """
    text = os.fspath(model_arg)
    if Path(text).exists():
        from daelab.runs import load_model
        model, state = load_model(text, checkpoint, device=device)
        return model, {"source": "run", "run_dir": text, "checkpoint": checkpoint,
                       "model_config": state.get("model_config"), "train_config": state.get("train_config"),
                       "epoch": state.get("epoch")}
    names = model_names()
    if text in names:
        return load_pretrained(text, device=device)
    shipped = ", ".join(names) or "none"
    raise ConfigError(f"{text} not found: neither a run directory nor a shipped model (shipped: {shipped})",
                      "pass a run directory written by 'daelab train', or a shipped name; see 'daelab models'")


def resolve_denoiser(model_arg: str | os.PathLike, checkpoint: str = "best", tile: int | None = None,
                     overlap: int = 32, ensemble: int = 1):
    """:func:`resolve_model`'s model as :func:`daelab.evaluate.evaluate_images`' ``denoise_fn``.

    For a run directory or a shipped name (:func:`daelab.evaluate.run_denoiser` calls it): it takes the
    protocol's unclipped noisy image as it is and tiles large images.
    """
    from daelab.denoise import denoise_image
    model, _ = resolve_model(model_arg, checkpoint)
    return lambda noisy: denoise_image(model, noisy, tile=tile, overlap=overlap, unclipped=True, ensemble=ensemble)


def refuse_shipped(model_args, what: str) -> None:
    """Raise a one-line :class:`ConfigError` if any of ``model_args`` is a shipped name (not a path).

    For the commands that write into a run directory (``evaluate`` on the test set, ``probe``).
    """
    for arg in model_args:
        name = shipped_name(arg)
        if name is not None:
            raise ConfigError(f"{name} is a shipped model, not a run directory: {what} writes into a run directory",
                              f"use 'daelab evaluate {name} --images DIR', or see its measured figures in "
                              "'daelab models'")


def _levels(values: dict) -> str:
    return ", ".join(f"{noise} {value:.2f}" for noise, value in values.items())


def describe(entries: list[dict] | None = None) -> str:
    """The table ``daelab models`` prints: name, what it is, parameters, measured figures, sha256 prefix."""
    entries = list_models() if entries is None else entries
    lines = []
    for entry in entries:
        measured = entry.get("measured", {})
        params = entry.get("parameters", {}).get("total")
        lines.append(f"{entry['name']}  ({params:,} parameters, {entry.get('bytes', 0) / 1e6:.1f} MB, "
                     f"sha256 {str(entry.get('sha256'))[:12]})" if params is not None else entry["name"])
        lines.append(f"  {entry.get('description', '')}")
        psnr = measured.get("psnr_db") or {}
        if psnr:
            lines.append("  PSNR (dB): " + _levels(psnr))
            noisy = measured.get("noisy_psnr_db") or {}
            if noisy:
                lines.append("  noisy input (dB): " + _levels(noisy))
            for method, values in (measured.get("baselines_psnr_db") or {}).items():
                lines.append(f"  {method}, same noisy images (dB): " + _levels(values))
            for n, values in (measured.get("ensemble_psnr_db") or {}).items():
                lines.append(f"  with --ensemble {n} ({n}x the time; dB): " + _levels(values))
            if measured.get("psnr_on"):
                lines.append(f"    on {measured['psnr_on']}")
        if measured.get("val_mse") is not None:
            lines.append(f"  validation MSE: {measured['val_mse']:.6f}")
        if measured.get("commit") or measured.get("cpu"):
            lines.append(f"  measured at commit {measured.get('commit', '?')} on {measured.get('cpu', '?')}")
        if entry.get("training_command"):
            lines.append(f"  trained by: {entry['training_command']}")
    return "\n".join(lines)
