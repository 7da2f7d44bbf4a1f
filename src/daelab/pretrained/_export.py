"""Shipping a trained run as a pretrained model: its weights as safetensors and its manifest entry.

:func:`export_model` turns a run directory written by ``daelab train`` into what
:func:`daelab.pretrained.load_pretrained` reads: ``DIRECTORY/NAME.safetensors`` (the checkpoint's
model ``state_dict`` as :func:`daelab.runs.load_model` builds it: float tensors fp32, BatchNorm
running statistics included) and an entry in ``DIRECTORY/manifest.json`` with the same keys as the
hand-written ``fashion-mlp`` one. The entry's configs, epoch and parameter counts come from the
checkpoint; what the run cannot know (what it is, how it was trained, its data, its measured
figures, its licence) is passed in. :func:`measured_from_evaluation` builds the measured figures
from an ``evaluation.json`` written by ``daelab evaluate MODEL --images DIR``. Both files are
written atomically; the other manifest entries, and their order, are kept as they are.
"""
from __future__ import annotations

import math
import os
import re
from pathlib import Path

import torch

from daelab.errors import ConfigError

__all__ = ["ENTRY_KEYS", "export_model", "manifest_entry", "measured_from_evaluation", "validate_name"]

# The keys of a manifest entry, in the order fashion-mlp's has them.
ENTRY_KEYS = ("name", "description", "model_config", "train_config", "parameters", "epoch", "training_command",
              "commit", "data", "file", "sha256", "bytes", "measured", "licence", "converted_from")
MANIFEST_VERSION = 1
_NAME = re.compile(r"[a-z0-9][a-z0-9-]*")


def validate_name(name: str) -> str:
    """``name`` if it is a valid shipped-model name (lowercase letters, digits and ``-``), else ConfigError."""
    if not isinstance(name, str) or not _NAME.fullmatch(name):
        raise ConfigError(f"invalid model name {name!r}",
                          "use lowercase letters, digits and '-', starting with a letter or digit (e.g. natural-gray)")
    return name


def _read_manifest(path: Path) -> dict:
    """The whole manifest dict at ``path`` (a new, empty one where there is no file)."""
    from daelab.pretrained import check_manifest
    from daelab.runs import read_json
    if not path.exists():
        return {"version": MANIFEST_VERSION, "models": []}
    return check_manifest(read_json(path), path, "fix or remove it")


def _save_weights(state: dict[str, torch.Tensor], path: Path) -> None:
    """``state`` as safetensors at ``path``, atomically: a temp file in the same folder, then ``os.replace``."""
    from safetensors.torch import save

    from daelab.checkpoint import atomic_write
    # One metadata key: safetensors writes several in a random order, and the same run must give the same bytes.
    payload = save({key: value.detach().cpu().contiguous() for key, value in state.items()}, metadata={"format": "pt"})
    atomic_write(path, lambda handle: handle.write(payload))


def _check_written(state: dict[str, torch.Tensor], path: Path) -> None:
    """Read ``path`` back and insist on the very tensors of ``state`` (names, dtypes, values)."""
    from safetensors.torch import load_file
    written = load_file(str(path), device="cpu")
    if written.keys() != state.keys() or not all(
            written[k].dtype == state[k].dtype and torch.equal(written[k], state[k].cpu()) for k in state):
        from daelab.errors import OutputError
        raise OutputError(f"{path} does not read back as the model's state_dict", "the disk may be failing")


def _tensor_kinds(state: dict[str, torch.Tensor]) -> str:
    """``"float tensors fp32, num_batches_tracked int64"``: what the weight file holds, for ``converted_from``."""
    floats = sorted({str(t.dtype).removeprefix("torch.").replace("float32", "fp32")
                     for t in state.values() if t.is_floating_point()})
    others = sorted({f"{key.rsplit('.', 1)[-1]} {str(t.dtype).removeprefix('torch.')}"
                     for key, t in state.items() if not t.is_floating_point()})
    return ", ".join([f"float tensors {'/'.join(floats)}"] + [f"BatchNorm {kind}" if "batches" in kind else kind
                                                              for kind in others])


def manifest_entry(model: torch.nn.Module, state: dict, name: str, *, file: str, sha256: str, size: int,
                   description: str, training_command: str, data: dict, measured: dict, licence: str,
                   commit: str | None, converted_from: str) -> dict:
    """One manifest entry (keys :data:`ENTRY_KEYS`, in that order) for a loaded run's model.

    Parameters
    ----------
    model : the model :func:`daelab.runs.load_model` built (its parameters are counted as Keras
        does, as ``daelab summary`` prints them: :func:`daelab.models.summary_rows`).
    state : that call's checkpoint dict (``model_config``, ``train_config``, ``epoch``).
    file, sha256, size : the weight file's name in the manifest's folder, its sha256 and size in bytes.
    The others are copied in as they are.
    """
    from daelab.models import summary_rows
    _, parameters = summary_rows(model)
    values = {"name": name, "description": description, "model_config": state["model_config"],
              "train_config": state.get("train_config"), "parameters": parameters, "epoch": state.get("epoch"),
              "training_command": training_command, "commit": commit, "data": data, "file": file,
              "sha256": sha256, "bytes": size, "measured": measured, "licence": licence,
              "converted_from": converted_from}
    return {key: values[key] for key in ENTRY_KEYS}


def export_model(run_dir: str | os.PathLike, name: str, *, directory: str | os.PathLike | None = None,
                 checkpoint: str = "best", description: str, training_command: str, data: dict, measured: dict,
                 licence: str, commit: str | None = None) -> dict:
    """Ship a run's model: write ``DIRECTORY/NAME.safetensors`` and its entry in ``DIRECTORY/manifest.json``.

    Parameters
    ----------
    run_dir : a run directory written by ``daelab train``.
    name : the shipped name (lowercase letters, digits and ``-``); an entry of that name is replaced
        in place, else the entry is appended. The other entries are kept as they are, in their order.
    directory : the folder holding ``manifest.json`` and the weight files (default: the package's,
        :data:`daelab.pretrained.PRETRAINED_DIR`); it must exist, and gets a new manifest if it has none.
    checkpoint : ``"best"`` (which falls back to ``"last"``, as :func:`daelab.runs.load_model` does)
        or ``"last"``; ``converted_from`` names the file that was read.
    description, training_command : what the model is, and the command that trained it.
    data : what it was trained on (``name``, ``source``, ``licence``, image counts, ...).
    measured : the figures it reached (``psnr_db`` {noise: dB}, ``psnr_on``, ``commit``, ``cpu``, ...;
        see :func:`measured_from_evaluation`).
    licence : the weights' licence, and the training data's.
    commit : the commit the run was trained at, when known.

    Returns
    -------
    dict : the manifest entry as written. Afterwards ``load_pretrained(name, directory)`` gives a
    model whose outputs equal ``load_model(run_dir, checkpoint)``'s exactly.

    Raises
    ------
    ConfigError : an invalid name, a run directory without the checkpoint, a missing ``directory``,
        a ``data``/``measured`` that is not a dict, empty texts, or a manifest that is not one.
    CheckpointError : a checkpoint that is corrupt or not a ``daelab train`` one.
    OutputError : the weight file written does not read back as the model's tensors.
    """
    from daelab.errors import CheckpointError, UsageError
    from daelab.pretrained import MANIFEST, PRETRAINED_DIR, _sha256
    from daelab.runs import checkpoint_path, load_model, write_json

    validate_name(name)
    for label, value in (("data", data), ("measured", measured)):
        if not isinstance(value, dict):
            raise ConfigError(f"{label} must be a JSON object (a dict), not {type(value).__name__}")
    for label, value in (("description", description), ("training_command", training_command),
                         ("licence", licence)):
        if not isinstance(value, str) or not value.strip():
            raise ConfigError(f"{label} must be a non-empty text", f"say what the model's {label} is")
    directory = Path(directory or PRETRAINED_DIR)
    if not directory.is_dir():
        raise ConfigError(f"directory {directory} not found", "create it, or leave it out for the package's folder")
    try:
        source = checkpoint_path(run_dir, checkpoint)
    except (UsageError, CheckpointError) as exc:  # no such directory / checkpoint name / no checkpoint in it
        raise ConfigError(f"cannot ship {run_dir}: {exc.message}", exc.hint) from None
    manifest_path = directory / MANIFEST
    manifest = _read_manifest(manifest_path)  # before any write: a bad manifest leaves nothing behind

    model, state = load_model(run_dir, checkpoint)
    weights = model.state_dict()
    file = f"{name}.safetensors"
    weight_path = directory / file
    _save_weights(weights, weight_path)
    _check_written(weights, weight_path)
    converted_from = (f"{source} (epoch {state.get('epoch')}): its 'model' state_dict as load_model builds it "
                      f"({_tensor_kinds(weights)}), written by daelab.pretrained._export.export_model; "
                      "outputs equal load_model's exactly")
    entry = manifest_entry(model, state, name, file=file, sha256=_sha256(weight_path),
                           size=weight_path.stat().st_size, description=description,
                           training_command=training_command, data=data, measured=measured, licence=licence,
                           commit=commit, converted_from=converted_from)
    models = manifest["models"]
    names = [m["name"] for m in models]
    if name in names:
        models[names.index(name)] = entry
    else:
        models.append(entry)
    write_json(manifest_path, manifest)
    return entry


def _number(value, where: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ConfigError(f"{where} is {value!r}, not a finite number", "it is not an evaluation.json of "
                          "'daelab evaluate MODEL --images DIR'")
    return round(float(value), 4)


_EVALUATION_HINT = "pass the evaluation.json written by 'daelab evaluate MODEL --images DIR'"


def _image_figures(evaluation: dict) -> tuple[dict, dict, dict, dict, set]:
    """The rows of an image-folder evaluation, checked: the model's PSNR and SSIM {noise: mean}, the
    noisy input's PSNR {noise: mean}, the baselines' {method: {noise: psnr}}, and the model rows'
    image counts."""
    from daelab.evaluate._images import MODEL, NOISY
    rows = evaluation.get("image_results") if isinstance(evaluation, dict) else None
    if not isinstance(rows, list) or not rows:
        raise ConfigError("the evaluation has no 'image_results' rows", _EVALUATION_HINT)
    psnr, ssim, noisy, baselines, counts = {}, {}, {}, {}, set()
    for index, row in enumerate(rows):
        if not isinstance(row, dict) or not all(isinstance(row.get(k), str) for k in ("noise", "method")):
            raise ConfigError(f"image_results[{index}] has no 'noise' and 'method' texts", _EVALUATION_HINT)
        noise, method = row["noise"], row["method"]
        where = f"image_results[{index}] ({noise}, {method})"
        value = _number(row.get("psnr"), f"{where} psnr")
        if method == MODEL:
            psnr[noise] = value
            ssim[noise] = _number(row.get("ssim"), f"{where} ssim")
            if isinstance(row.get("n_images"), int):
                counts.add(row["n_images"])
        elif method == NOISY:
            noisy[noise] = value
        else:
            baselines.setdefault(method, {})[noise] = value
    return psnr, ssim, noisy, baselines, counts


def measured_from_evaluation(evaluation: dict, *, psnr_on: str | None = None, cpu: str | None = None,
                             commit: str | None = None, command: str | None = None) -> dict:
    """A manifest entry's ``measured`` from an image-folder evaluation (``daelab evaluate MODEL --images DIR``).

    Parameters
    ----------
    evaluation : the decoded ``evaluation.json``: its top-level ``image_results`` rows
        ``{"noise", "method", "psnr", "ssim", "n_images", "seconds_per_image", ...}``.
    psnr_on : what the figures were measured on (default: the images folder, image count, noise
        levels and seed the evaluation records).
    cpu, commit, command : where, at which commit and by which command they were measured (left out
        when None).

    Returns
    -------
    dict : ``psnr_db`` and ``ssim`` {noise: the model's mean}, ``noisy_psnr_db`` {noise: the noisy
    input's}, ``baselines_psnr_db`` {method: {noise: psnr}} for every other method (when there are
    any), then ``psnr_on`` and, where given, ``command``, ``commit``, ``cpu``. Figures are rounded
    to 4 decimals, as fashion-mlp's are.

    Raises
    ------
    ConfigError : no ``image_results`` list, a row without its keys or with a non-finite figure,
        or no row of method ``"model"`` (an evaluation run without a model).
    """
    psnr, ssim, noisy, baselines, counts = _image_figures(evaluation)
    if not psnr:
        raise ConfigError("the evaluation has no rows of method 'model' (it was run without a model)",
                          _EVALUATION_HINT)
    if psnr_on is None:
        images = f"{counts.pop():,} images" if len(counts) == 1 else "the images"
        seed = evaluation.get("seed")
        psnr_on = (f"{images} of {evaluation.get('images_dir', 'the folder')}, noise {', '.join(psnr)}"
                   f"{f' (seed {seed})' if seed is not None else ''}: mean 8-bit PSNR of the model output "
                   "under the Set12 protocol")
    measured = {"psnr_db": psnr, "ssim": ssim, "noisy_psnr_db": noisy}
    if baselines:
        measured["baselines_psnr_db"] = baselines
    measured["psnr_on"] = psnr_on
    for key, value in (("command", command), ("commit", commit), ("cpu", cpu)):
        if value is not None:
            measured[key] = value
    return measured


def ensemble_figures(evaluations: list[dict]) -> dict[str, dict[str, float]]:
    """``measured["ensemble_psnr_db"]``: {N: {noise: the model's mean PSNR}} from image-folder evaluations
    made with ``--ensemble N`` (N > 1; the ensemble each one records under ``model``).

    Raises
    ------
    ConfigError : an evaluation that records no ensemble above 1, two for the same N, or bad rows
        (as :func:`measured_from_evaluation`).
    """
    figures: dict[str, dict[str, float]] = {}
    for evaluation in evaluations:
        model = evaluation.get("model") if isinstance(evaluation, dict) else None
        n = model.get("ensemble") if isinstance(model, dict) else None
        if not isinstance(n, int) or isinstance(n, bool) or n <= 1:
            raise ConfigError(f"an ensemble evaluation records ensemble {n!r}, not a number above 1",
                              "pass the evaluation.json of 'daelab evaluate MODEL --images DIR --ensemble N'")
        if str(n) in figures:
            raise ConfigError(f"two evaluations with --ensemble {n}", "pass one per ensemble size")
        figures[str(n)] = measured_from_evaluation(evaluation, psnr_on="")["psnr_db"]
    return dict(sorted(figures.items(), key=lambda item: int(item[0])))


def baselines_from_evaluation(measured: dict, evaluation: dict) -> dict:
    """``measured`` with ``baselines_psnr_db`` taken from a second evaluation of the same noisy images.

    BM3D takes minutes per image where the model takes a second, and it does not change when the
    model is retrained; so a new model's figures (``measured``, from :func:`measured_from_evaluation`
    of an evaluation run with ``--baselines none``) can carry the baseline rows of an earlier
    evaluation. That is sound only when both saw the same noisy images: the ``noisy`` PSNR of every
    noise level the two share must agree to the manifest's 4 decimals (the noise is seeded, so the
    same folder, levels and seed give the same noisy images on every CPU).

    Returns
    -------
    dict : a copy of ``measured`` whose ``baselines_psnr_db`` is {method: {noise: psnr}} for every
    baseline of ``evaluation`` at the noise levels of ``measured``; a baseline ``measured`` already
    has is replaced.

    Raises
    ------
    ConfigError : bad rows (as :func:`measured_from_evaluation`; a row of method "model" is not
        needed), a noise level of ``measured`` the evaluation lacks, noisy PSNRs that differ (other
        images, noise or seed), or no baseline rows at all.
    """
    _, _, other_noisy, other_baselines, _ = _image_figures(evaluation)
    hint = "pass an evaluation of the same images, noise levels and --seed"
    levels = list(measured.get("psnr_db", {}))
    missing = [noise for noise in levels if noise not in other_noisy]
    if missing:
        raise ConfigError(f"the baselines' evaluation has no noisy rows for {', '.join(missing)}", hint)
    noisy = measured.get("noisy_psnr_db", {})
    differ = [f"{noise} ({noisy.get(noise)} against {other_noisy[noise]} dB)"
              for noise in levels if noisy.get(noise) != other_noisy[noise]]
    if differ:
        raise ConfigError(f"the baselines were measured on other noisy images: noisy PSNR at {', '.join(differ)}",
                          hint)
    baselines = {method: {noise: figures[noise] for noise in levels if noise in figures}
                 for method, figures in other_baselines.items() if any(noise in figures for noise in levels)}
    if not baselines:
        raise ConfigError("the baselines' evaluation has no baseline rows at these noise levels",
                          "pass one made with --baselines bm3d (or others)")
    return {**measured, "baselines_psnr_db": {**measured.get("baselines_psnr_db", {}), **baselines}}
