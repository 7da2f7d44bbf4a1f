"""Denoising a user's own images with a trained model: one image, tiling, PSNR, and writing outputs safely.

:func:`denoise_image` runs a model on one grayscale image (H, W) in [0, 1]: the MLP needs its
training size (28x28); the fully convolutional models take any size and, above ``tile`` pixels a
side, work on overlapping tiles, so memory stays bounded by the tile. The natural-image models
(``dncnn``, ``ffdnet``, ``resunet``: a ``reach`` attribute, their receptive field's extent) go through
:func:`daelab.tiling.tile_apply` with its margin at least their reach, which makes the tiled output
the whole-image output (to float rounding) and seamless; the ``conv`` U-Net keeps its linear ramps
(its noise estimate spans the whole tile, so no margin makes tiles exact, and tile_apply's blend
would move its outputs by ~1e-3, beyond the 1e-5 that tiling's test holds exact tilings to).
:func:`denoise_files` is the ``daelab denoise`` command. It reads every input with
:func:`~daelab.images.read_image_file` (:mod:`daelab.images` owns the file kinds: arrays, 8/16-bit,
colour and alpha pictures, and the ``$DAELAB_MAX_PIXELS`` cap), denoises each array, stack or
colour picture (channel by channel, with the grayscale model), reports PSNR against a clean
reference when there is one, and writes each output in the kind its input had. Every output path
is checked before anything is written: it may not be an input or the ``reference`` (by path or by
inode, ``overwrite`` or not), be written twice, be a directory, sit in a directory that cannot be
written, or exist unless ``overwrite``. Outputs are written atomically.
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch
from skimage.metrics import peak_signal_noise_ratio

from daelab.checkpoint import atomic_write
from daelab.errors import DaelabError, DataError, UsageError

# Reading and writing the files lived here before daelab.images: their names stay importable from daelab.denoise.
from daelab.images import (  # noqa: F401
    ARRAY_SUFFIXES,
    IMAGE_SUFFIXES,
    MAX_PIXELS,
    MAX_PIXELS_ENV,
    ImageFile,
    image_writer,
    max_pixels,
    read_image_file,
)
from daelab.models import in_batches
from daelab.noise import parse_noise


# ------------------------------------------------------------------------------ one image
def _ramp(length: int, overlap: int, start_open: bool, end_open: bool) -> np.ndarray:
    """1-D blending weights: rising over ``overlap`` pixels on each side that meets another tile."""
    weights = np.ones(length, np.float32)
    ramp = (np.arange(overlap, dtype=np.float32) + 0.5) / overlap if overlap else np.zeros(0, np.float32)
    n = min(overlap, length)
    if start_open:
        weights[:n] = np.minimum(weights[:n], ramp[:n])
    if end_open:
        weights[length - n:] = np.minimum(weights[length - n:], ramp[:n][::-1])
    return weights


def _starts(size: int, tile: int, stride: int) -> list[int]:
    if size <= tile:
        return [0]
    starts = list(range(0, size - tile, stride)) + [size - tile]
    return sorted(set(starts))


def _check_image(image: np.ndarray, what: str = "image", in_range: bool = True) -> np.ndarray:
    image = np.asarray(image)
    if image.ndim != 2:
        raise DataError(f"{what}: expected one grayscale image (H, W), got shape {image.shape}")
    if not np.isfinite(image).all():
        raise DataError(f"{what} contains NaN or infinite values")
    if in_range and image.size and (image.min() < 0 or image.max() > 1):
        raise DataError(f"{what}: values must lie in [0, 1], found [{image.min():g}, {image.max():g}]",
                        "store images as uint8 or divide by 255")
    return image.astype(np.float32, copy=False)


def expected_shape(model: torch.nn.Module) -> tuple[int, int] | None:
    """The (H, W) a model requires, or None when it takes any size (fully convolutional)."""
    if model.input_layout == "flat":
        side = model.config.image_size
        return (side, side)
    return None


# The largest tile side when none is given: the conv U-Net blends ramp-weighted tiles, so its tiles
# stay at the 256 it was judged with; a model of known reach (dncnn, ffdnet, resunet) tiles exactly, so a
# larger tile only costs memory and saves the margins' recomputation: a 512x512 image in one piece
# took half the time of 256-pixel tiles (ffdnet 15x64, one thread; docs/natural.md).
DEFAULT_TILE = 256
DEFAULT_REACH_TILE = 1024


# The geometric self-ensembles: how many dihedral transforms (:func:`_dihedral` numbers) the model's
# outputs are averaged over, each a subgroup: 1 the model as it is, 2 with its left-right mirror, 4 the
# four quarter turns, 8 all flips and quarter turns. n of them take n times the time.
ENSEMBLE_TRANSFORMS = {1: (0,), 2: (0, 4), 4: (0, 1, 2, 3), 8: tuple(range(8))}
ENSEMBLES = tuple(ENSEMBLE_TRANSFORMS)
ENSEMBLE_CHOICES = ("1 (the model as it is), 2 (with its mirror image), 4 (the four quarter turns) or 8 (every "
                    "flip and quarter turn)")
ENSEMBLE_HELP = (f"{ENSEMBLE_CHOICES}: the mean of the model over that many transforms of each image, at that many "
                 "times the cost")


def _dihedral(x: torch.Tensor, k: int) -> torch.Tensor:
    """Transform ``k`` (0-7) of the dihedral group on the last two dims: k % 4 quarter turns, then a flip if k >= 4."""
    x = torch.rot90(x, k % 4, (-2, -1))
    return x.flip(-1) if k >= 4 else x


def _undo_dihedral(x: torch.Tensor, k: int) -> torch.Tensor:
    """The inverse of :func:`_dihedral` ``k``."""
    x = x.flip(-1) if k >= 4 else x
    return torch.rot90(x, -(k % 4), (-2, -1))


def _forward(model: torch.nn.Module, batch: torch.Tensor, ensemble: int) -> torch.Tensor:
    """``model(batch)`` on (1, 1, H, W), or with ``ensemble`` n > 1 the mean of the model over the n dihedral
    transforms :data:`ENSEMBLE_TRANSFORMS` names, each transformed back (geometric self-ensemble), summed
    in a fixed order."""
    layout = {"memory_format": torch.channels_last} if batch.is_contiguous(memory_format=torch.channels_last) else {}
    if ensemble == 1:
        return model(batch)
    total = None
    for k in ENSEMBLE_TRANSFORMS[ensemble]:
        out = _undo_dihedral(model(_dihedral(batch, k).contiguous(**layout)).float(), k)
        total = out if total is None else total + out
    return total / ensemble


@torch.inference_mode()
def denoise_image(model: torch.nn.Module, image: np.ndarray, tile: int | None = None, overlap: int = 32,
                  unclipped: bool = False, ensemble: int = 1) -> np.ndarray:
    """Denoise one grayscale image.

    Parameters
    ----------
    model : a daelab DAE in eval mode (``input_layout`` "flat" needs its training size; "image" any size).
    image : (H, W) float array in [0, 1].
    tile : largest tile side the conv model sees at once; larger images are cut into overlapping
        ``tile`` x ``tile`` tiles whose outputs are blended with linear ramps over ``overlap`` pixels.
        None: :data:`DEFAULT_TILE` (256), or :data:`DEFAULT_REACH_TILE` (1024) for a model of known
        reach (``dncnn``, ``ffdnet``, ``resunet``), whose tiles are cut exactly.
    overlap : pixels shared by neighbouring tiles (< tile).
    unclipped : accept values outside [0, 1] (an image with the protocol's unclipped ``awgn`` noise added).
    ensemble : 1, 2, 4 or 8: the mean of the model over so many flips and quarter turns of the image
        (:data:`ENSEMBLE_TRANSFORMS`; geometric self-ensemble: n times the time; image models only).

    Returns
    -------
    (H, W) float32 array in [0, 1].
    """
    image = _check_image(image, in_range=not unclipped)
    if ensemble not in ENSEMBLES:
        raise UsageError(f"ensemble {ensemble} is not one of {', '.join(map(str, ENSEMBLES))}",
                         f"use {ENSEMBLE_CHOICES}")
    model.eval()
    device = next(model.parameters()).device
    shape = expected_shape(model)
    if shape is not None:
        if image.shape != shape:
            raise DataError(f"model {model.config.name!r} needs {shape[0]}x{shape[1]} images, got "
                            f"{image.shape[0]}x{image.shape[1]}", "train with --model conv for any size")
        if ensemble != 1:
            raise UsageError(f"model {model.config.name!r} sees flat 28x28 vectors: ensemble {ensemble} is for "
                             "image models", "use ensemble 1, or an image model (conv, dncnn, ffdnet, resunet)")
        flat = torch.from_numpy(image).reshape(1, -1).to(device)
        return model(flat).reshape(shape).float().cpu().numpy()
    reach = getattr(model, "reach", None) is not None
    tile = (DEFAULT_REACH_TILE if reach else DEFAULT_TILE) if tile is None else tile
    if not 0 <= overlap < tile:
        raise UsageError(f"overlap {overlap} must be >= 0 and smaller than the tile {tile}")
    if reach:
        return _denoise_reach(model, image, tile, overlap, device, ensemble)
    height, width = image.shape
    if height <= tile and width <= tile:
        batch = torch.from_numpy(image)[None, None].to(device)
        return _forward(model, batch, ensemble)[0, 0].float().cpu().numpy()
    total = np.zeros((height, width), np.float32)
    weight_sum = np.zeros((height, width), np.float32)
    rows, cols = _starts(height, tile, tile - overlap), _starts(width, tile, tile - overlap)
    for top in rows:
        for left in cols:
            patch = image[top:top + tile, left:left + tile]
            batch = torch.from_numpy(np.ascontiguousarray(patch))[None, None].to(device)  # (1, 1, h, w)
            out = _forward(model, batch, ensemble)[0, 0].float().cpu().numpy()
            h, w = patch.shape
            weights = np.outer(_ramp(h, overlap, top > 0, top + h < height),
                               _ramp(w, overlap, left > 0, left + w < width))
            total[top:top + h, left:left + w] += out * weights
            weight_sum[top:top + h, left:left + w] += weights
    return total / weight_sum


def _denoise_reach(model: torch.nn.Module, image: np.ndarray, tile: int, overlap: int,
                   device: torch.device, ensemble: int = 1) -> np.ndarray:
    """A model of known receptive field through :func:`~daelab.tiling.tile_apply`, exact across tile cuts.

    The margin is the model's ``reach`` and the overlap at least ``2 * reach + 2`` (the tile grows to
    fit it if it must). A model working on blocks (``scale`` 2 for ffdnet's 2x2 folding, 4 for the
    U-Net's two stride-2 levels) sees an image padded to a multiple of ``scale``, so that every tile
    starts on the block grid the whole image has; the output is cropped back. The self-ensemble runs
    inside each tile: a flip or quarter turn of a tile whose sides are multiples of ``scale`` keeps
    that grid and the model's reach, so tiles stay exact with it.
    """
    from daelab.tiling import tile_apply
    reach, scale = int(model.reach), int(getattr(model, "scale", 1))
    overlap = max(overlap, 2 * reach + 2)
    overlap += -overlap % scale
    tile = max(tile, 2 * overlap)
    tile += -tile % scale
    height, width = image.shape
    padded = np.pad(image, ((0, -height % scale), (0, -width % scale)), mode="edge")

    def run(patch: np.ndarray) -> np.ndarray:
        batch = torch.from_numpy(patch)[None, None].to(device).contiguous(memory_format=torch.channels_last)
        return _forward(model, batch, ensemble)[0, 0].float().cpu().numpy()

    return tile_apply(run, padded, tile=tile, overlap=overlap, margin=reach)[:height, :width]


def psnr(estimate: np.ndarray, reference: np.ndarray) -> float:
    """Peak signal-to-noise ratio in dB for images in [0, 1] (inf when identical), via scikit-image."""
    with np.errstate(divide="ignore"):
        return float(peak_signal_noise_ratio(np.asarray(reference, np.float64), np.asarray(estimate, np.float64),
                                             data_range=1.0))


# ------------------------------------------------------------------------------ files
def output_path(path: Path, kind: str, out_dir: Path | None) -> Path:
    """``NAME.<kind>.EXT`` beside the input, or in ``out_dir``."""
    name = f"{path.stem}.{kind}{path.suffix}"
    return (out_dir or path.parent) / name


@torch.inference_mode()
def _denoise_array(model, array: np.ndarray, tile: int, overlap: int, batch_size: int = 1024,
                   unclipped: bool = False, ensemble: int = 1) -> np.ndarray:
    if array.ndim == 2:
        return denoise_image(model, array, tile, overlap, unclipped, ensemble)
    model.eval()
    if model.input_layout == "flat" and ensemble == 1:  # a stack of small images: batch it rather than loop
        device = next(model.parameters()).device
        flat = torch.from_numpy(np.ascontiguousarray(array)).reshape(len(array), -1)
        return in_batches(model, flat, batch_size, device).reshape(array.shape).numpy()
    return np.stack([denoise_image(model, image, tile, overlap, unclipped, ensemble) for image in array])


def _flatten(arrays: dict[str, np.ndarray]) -> np.ndarray:
    return np.concatenate([arrays[key].ravel() for key in sorted(arrays)])


def denoise_files(model: torch.nn.Module, files: list[str | os.PathLike], out_dir: str | os.PathLike | None = None,
                  overwrite: bool = False, add_noise: str | None = None, reference: str | os.PathLike | None = None,
                  seed: int = 0, tile: int | None = None, overlap: int = 32, ensemble: int = 1) -> list[dict]:
    """Denoise image files and write ``NAME.denoised.EXT`` for each (and ``NAME.noisy.EXT`` with ``add_noise``).

    Every input is read and checked (readable, an image, not too large, finite, in range, the size
    the model needs) and every output path is checked (not an input nor the reference, not produced
    twice, writable, not existing unless ``overwrite``) before anything is written.

    Parameters
    ----------
    add_noise : a noise spec (``gaussian:0.1``) to corrupt the inputs with first (seeded ``seed``);
        PSNR is then reported against the clean inputs.
    reference : a clean file with the same images as the (single) input; PSNR is reported against it.
    ensemble : 1, 2, 4 or 8, the geometric self-ensemble (see :func:`denoise_image`).

    Returns
    -------
    One dict per input file: ``input``, ``output``, ``noisy_output`` (or None), ``shape`` of each
    array, and ``psnr_input``/``psnr_denoised`` in dB when a clean reference exists (else None).
    """
    if not files:
        raise UsageError("no input files given")
    if reference is not None and add_noise is not None:
        raise UsageError("--reference and --add-noise both give a clean reference", "use one of them")
    if reference is not None and len(files) != 1:
        raise UsageError("--reference compares against one input file", f"got {len(files)} inputs")
    if tile is not None and (tile < 8 or not 0 <= overlap < tile):
        raise UsageError(f"tile {tile} / overlap {overlap} invalid", "use tile >= 8 and 0 <= overlap < tile")
    if ensemble not in ENSEMBLES or (ensemble != 1 and model.input_layout == "flat"):
        raise UsageError(f"ensemble {ensemble} is for image models, as {', '.join(map(str, ENSEMBLES))} "
                         "(flips and quarter turns)",
                         "use --ensemble 1, or an image model (conv, dncnn, ffdnet, resunet)")
    noise = parse_noise(add_noise) if add_noise else None
    out_dir = Path(out_dir) if out_dir is not None else None
    if out_dir is not None and out_dir.exists() and not out_dir.is_dir():
        raise UsageError(f"--out {out_dir} is not a directory")
    shape = expected_shape(model)
    inputs = [read_image_file(path, shape) for path in files]
    clean_reference = None
    if reference is not None:
        clean_reference = read_image_file(reference)
        if {k: v.shape for k, v in clean_reference.images.items()} != {k: v.shape for k, v in inputs[0].images.items()}:
            raise DataError(f"reference {reference} does not hold images of the input's shape")
    _plan_outputs(inputs, clean_reference, out_dir, overwrite, ["noisy"] if noise else [])

    generator = torch.Generator().manual_seed(seed)
    results, writes = [], []
    for item in inputs:
        clean = clean_reference.images if clean_reference is not None else None
        given = item.images
        if noise is not None:
            clean = given
            given = {key: noise(torch.from_numpy(value), generator).numpy() for key, value in given.items()}
            writes.append((item.outputs["noisy"], given, item))
        unclipped = noise is not None and not noise.clipped  # awgn leaves the noisy values outside [0, 1]
        denoised = {key: _denoise_array(model, value, tile, overlap, unclipped=unclipped, ensemble=ensemble)
                    for key, value in given.items()}
        writes.append((item.outputs["denoised"], denoised, item))
        result = {"input": str(item.path), "output": str(item.outputs["denoised"]),
                  "noisy_output": str(item.outputs["noisy"]) if noise else None,
                  "shape": {key: list(value.shape) for key, value in given.items()},
                  "psnr_input": None, "psnr_denoised": None}
        if clean is not None:
            result["psnr_input"] = psnr(_flatten(given), _flatten(clean))
            result["psnr_denoised"] = psnr(_flatten(denoised), _flatten(clean))
        results.append(result)
    try:
        if out_dir is not None:
            out_dir.mkdir(parents=True, exist_ok=True)
        for target, images, item in writes:
            atomic_write(target, image_writer(images, item, target.suffix))
    except OSError as exc:  # checked writable above: a full disk, a quota, a directory swapped under us
        raise DaelabError(f"cannot write {exc.filename or out_dir}: {exc.strerror or exc}",
                          "no input was touched; outputs written before this one are complete") from None
    return results


def _writable_dir(directory: Path) -> None:
    """Refuse a directory we could not write into (or create), before any output is written."""
    existing = directory
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        raise UsageError(f"cannot create {directory}: {existing} is not a directory")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise UsageError(f"cannot write into {existing}: permission denied or read-only",
                         "use --out DIR with a writable directory")


def _plan_outputs(inputs: list[ImageFile], reference: ImageFile | None, out_dir: Path | None, overwrite: bool,
                  extra_kinds: list[str]) -> None:
    """Choose every output path and refuse, before anything is written, any that would lose a file."""
    def identity(path: Path) -> tuple:
        stat = os.stat(path)
        return path.resolve(), (stat.st_dev, stat.st_ino)
    # by path and by inode, so neither a symlink nor a hard link lets an output replace what we read
    inputs_ids = [identity(item.path) for item in inputs]
    reference_id = identity(reference.path) if reference is not None else None
    planned: set[Path] = set()
    for item in inputs:
        for kind in extra_kinds + ["denoised"]:
            target = output_path(item.path, kind, out_dir)
            try:
                resolved = target.resolve()
            except (RuntimeError, OSError):  # a symlink loop (RuntimeError before Python 3.13)
                raise UsageError(f"output {target} is a symlink loop") from None
            stat = os.stat(target) if target.exists() else None
            inode = (stat.st_dev, stat.st_ino) if stat is not None else None
            for role, ids in (("the reference", [reference_id] if reference_id else []), ("an input", inputs_ids)):
                if any(resolved == path or inode == node for path, node in ids):
                    raise UsageError(f"output {target} would overwrite {role} file", "use --out DIR")
            if resolved in planned:
                raise UsageError(f"two inputs would both write {target}", "give inputs distinct names")
            if target.is_dir():
                raise UsageError(f"output {target} is a directory")
            if stat is not None and not overwrite:
                raise UsageError(f"{target} exists", "pass --overwrite to replace it, or use --out DIR")
            _writable_dir(target.parent)
            planned.add(resolved)
            item.outputs[kind] = target
