"""Image files for the denoiser: arrays and pictures read into float32 in [0, 1], and encoded back as they came.

:func:`read_image_file` reads ``.npy``/``.npz`` arrays (one image (H, W) or a stack (N, H, W):
uint8 scaled by 255, uint16 by 65535, or float in [0, 1]; through :mod:`daelab.formats`, so every
header is checked and nothing is unpickled) and PNG/JPEG pictures into an :class:`ImageFile`;
:func:`image_writer` encodes images back in the kind the input had. Pictures keep their kind: 8-bit
grayscale (and 1-bit, read as 8-bit) is written back 8-bit; 16-bit grayscale is scaled by 65535 and
written back 16-bit; colour (RGB, and palette or CMYK pictures, which are converted to RGB) is a
stack (3, H, W), denoised channel by channel with the grayscale model, and written as RGB; an alpha
channel (RGBA, LA, palette transparency) is carried through unchanged and never denoised or counted
in PSNR. Pillow reads 16-bit *colour* PNGs at 8 bits per channel: such files are written as 8-bit,
with a logged notice. Every input is checked by its declared size before it is decoded: more than
:data:`MAX_PIXELS` values (pixels x channels, summed over an ``.npz``; set ``$DAELAB_MAX_PIXELS`` to
change it) or a size the model cannot take is refused without allocating. Where outputs go, and that
they never replace an input, is :mod:`daelab.denoise`'s.
"""
from __future__ import annotations

import logging
import os
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

import numpy as np

from daelab.errors import DataError, UsageError
from daelab.formats import load_npy, load_npz_arrays

ARRAY_SUFFIXES = (".npy", ".npz")
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")
MAX_PIXELS = 64 * 2**20  # values one input may hold: 64 Mi, i.e. 256 MiB as float32
MAX_PIXELS_ENV = "DAELAB_MAX_PIXELS"
# Pillow mode -> the mode it is converted to: colour becomes RGB, and alpha travels beside it.
_MODES = {"1": "L", "L": "L", "LA": "LA", "La": "LA", "I;16": "I;16", "I;16L": "I;16", "I;16B": "I;16",
          "I;16N": "I;16", "I": "I;16", "RGB": "RGB", "RGBA": "RGBA", "RGBa": "RGBA", "RGBX": "RGB",
          "CMYK": "RGB", "YCbCr": "RGB", "LAB": "RGB", "HSV": "RGB", "P": "RGB", "PA": "RGBA"}
log = logging.getLogger(__name__)


# ------------------------------------------------------------------------------------- reading
@dataclass
class ImageFile:
    """One input file: its images as float32 in [0, 1] and how to write them back.

    ``images`` maps an array name ("" for ``.npy`` and pictures) to (H, W) or (N, H, W) float32;
    a colour picture is (3, H, W), its channels denoised as a stack. ``mode`` is the Pillow mode a
    picture is written in, ``alpha`` its alpha channel (H, W) as stored, carried through unchanged.
    """

    path: Path
    images: dict[str, np.ndarray]
    dtypes: dict[str, np.dtype]      # the stored dtype of each array, to write the output alike
    outputs: dict[str, Path] = field(default_factory=dict)  # "denoised"/"noisy" -> output path
    mode: str | None = None
    alpha: np.ndarray | None = None


def max_pixels(value: int | None = None) -> int:
    """The cap on the values (pixels x channels) one input may hold: ``value``, ``$DAELAB_MAX_PIXELS``, or 64 Mi."""
    value = value if value is not None else os.environ.get(MAX_PIXELS_ENV) or MAX_PIXELS
    try:
        return int(float(value))
    except ValueError:
        raise UsageError(f"${MAX_PIXELS_ENV}={value!r} is not a number") from None


class _Budget:
    """Refuses an input by its declared shape, before it is decoded: too many values, or the wrong size."""

    def __init__(self, path: Path, cap: int, image_shape: tuple[int, int] | None):
        self.path, self.cap, self.image_shape, self.used = path, cap, image_shape, 0

    def __call__(self, shape: tuple, dtype: np.dtype | None = None, key: str = "") -> None:
        what = f"{self.path}" + (f"[{key}]" if key else "")
        if dtype is not None and not (_scaled(dtype) or dtype.kind == "f"):
            raise DataError(f"{what}: dtype {dtype} is not an image", "use uint8, uint16 or float in [0, 1]")
        if len(shape) not in (2, 3) or 0 in shape:
            raise DataError(f"{what}: expected an image (H, W) or a stack (N, H, W), got shape {shape}")
        self.used += int(np.prod(shape, dtype=object))
        if self.used > self.cap:
            raise DataError(f"{what}: {self.used:,} values ({' x '.join(map(str, shape))}), over the {self.cap:,} "
                            "one input may hold", f"split it, or raise the limit with ${MAX_PIXELS_ENV}")
        if self.image_shape is not None and tuple(shape[-2:]) != self.image_shape:
            (h, w), (got_h, got_w) = self.image_shape, shape[-2:]
            raise DataError(f"{what}: the model needs {h}x{w} images, got {got_h}x{got_w}",
                            "train with --model conv for any size")


def _scaled(dtype: np.dtype) -> bool:
    """uint8 and uint16 (either byte order) hold pixels scaled by 255 and 65535."""
    return dtype.kind == "u" and dtype.itemsize in (1, 2)


def _to_unit(array: np.ndarray, what: str) -> np.ndarray:
    if _scaled(array.dtype):
        return array.astype(np.float32) / float(np.iinfo(array.dtype).max)
    if not np.issubdtype(array.dtype, np.floating):
        raise DataError(f"{what}: dtype {array.dtype} is not an image", "use uint8, uint16 or float in [0, 1]")
    if not np.isfinite(array).all():
        raise DataError(f"{what} contains NaN or infinite values")
    if array.min() < 0 or array.max() > 1:
        raise DataError(f"{what}: float values must lie in [0, 1], found [{array.min():g}, {array.max():g}]",
                        "store images as uint8 or divide by 255")
    return array.astype(np.float32)


def _png_bit_depth(path: Path) -> int:
    with open(path, "rb") as handle:
        head = handle.read(26)
    return head[24] if len(head) == 26 and head[:8] == b"\x89PNG\r\n\x1a\n" else 8


def _read_picture(path: Path, budget: _Budget) -> ImageFile:
    """A PNG/JPEG -> (H, W) gray or (3, H, W) colour, refused by its declared size before decoding."""
    from PIL import Image, UnidentifiedImageError
    try:
        with warnings.catch_warnings():  # Pillow warns above its own limit; ours is lower and checked below
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            picture = Image.open(path)
        with picture:
            mode = _MODES.get(picture.mode)
            if mode is None:
                raise DataError(f"{path}: image mode {picture.mode} is not supported", "use grayscale or RGB(A)")
            if picture.mode == "P" and "transparency" in picture.info:
                mode = "RGBA"
            channels = 3 if mode.startswith("RGB") else 1
            budget((channels, picture.height, picture.width) if channels == 3 else (picture.height, picture.width))
            converted = picture.convert(mode) if mode not in (picture.mode, "I;16") else picture
            pixels = np.asarray(converted)                     # (H, W) or (H, W, bands), decoded here
    except Image.DecompressionBombError as exc:  # past Pillow's own limit, which it checks on opening
        raise DataError(f"{path}: {exc}", f"a decompression bomb, or a picture over ${MAX_PIXELS_ENV} anyway") from None
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as exc:
        raise DataError(f"{path} is not a readable image: {str(exc).splitlines()[0] if str(exc) else exc}") from None
    alpha = None
    if mode in ("LA", "RGBA"):
        pixels, alpha = pixels[..., :-1], pixels[..., -1].copy()
    if mode == "I;16":
        if pixels.size and (pixels.min() < 0 or pixels.max() > 65535):
            raise DataError(f"{path}: 32-bit pixel values outside 0..65535", "save it as 8- or 16-bit")
        pixels = pixels.astype(np.uint16)
    elif mode.startswith("RGB"):
        pixels = np.moveaxis(pixels, -1, 0)                    # (3, H, W): the channels as a stack
        if path.suffix.lower() == ".png" and _png_bit_depth(path) == 16:
            log.warning("%s: a 16-bit colour PNG is read at 8 bits per channel; the output is 8-bit", path)
    else:
        pixels = pixels.reshape(pixels.shape[:2])
    return ImageFile(path, {"": _to_unit(pixels, str(path))}, {"": pixels.dtype}, mode=mode.replace("A", ""),
                     alpha=alpha)


def read_image_file(path: str | os.PathLike, image_shape: tuple[int, int] | None = None,
                    max_values: int | None = None) -> ImageFile:
    """Read a ``.npy``/``.npz``/PNG/JPEG file into float32 images in [0, 1]; DataError on anything else.

    Parameters
    ----------
    path : the file.
    image_shape : (H, W) to refuse images of another size, from the header, before decoding.
    max_values : refuse files holding more values than this (default :func:`max_pixels`).

    Returns
    -------
    ImageFile with the images, their stored dtypes, and for pictures the mode and alpha to write back.
    """
    path = Path(path)
    if path.is_dir():
        raise DataError(f"{path} is a directory, not an image file", "name the files inside it")
    if not path.is_file():
        raise DataError(f"{path} not found" + (" (a dangling symlink or a symlink loop)" if path.is_symlink() else ""))
    suffix = path.suffix.lower()
    budget = _Budget(path, max_pixels(max_values), image_shape)
    if suffix in IMAGE_SUFFIXES:
        return _read_picture(path, budget)
    if suffix == ".npy":
        arrays = {"": load_npy(path, check=budget)}
    elif suffix == ".npz":
        arrays = load_npz_arrays(path, check=budget)
        if not arrays:
            raise DataError(f"{path} holds no arrays")
    else:
        raise DataError(f"{path}: unsupported file type {suffix or '(none)'}",
                        f"use {', '.join(ARRAY_SUFFIXES + IMAGE_SUFFIXES)}")
    images = {key: _to_unit(array, f"{path}" + (f"[{key}]" if key else "")) for key, array in arrays.items()}
    return ImageFile(path, images, {key: array.dtype for key, array in arrays.items()})


# ------------------------------------------------------------------------------------- writing
def _encode(array: np.ndarray, dtype: np.dtype) -> np.ndarray:
    if _scaled(dtype):
        top = np.iinfo(dtype).max
        return np.round(np.clip(array, 0, 1) * top).astype(dtype)
    return array.astype(np.float32)


def image_writer(images: dict[str, np.ndarray], item: ImageFile, suffix: str) -> Callable[[BinaryIO], None]:
    """Encode images as ``item`` was stored, for a file ending in ``suffix``; the bytes go where the caller says.

    Parameters
    ----------
    images : name -> float32 array in [0, 1], shaped as in ``item.images`` (a denoised or noisy copy).
    item : the input the images came from: its stored dtypes, and for pictures the mode and alpha.
    suffix : ``.npy``, ``.npz`` (arrays in their stored dtype: uint8/uint16 rounded, float as float32)
        or a picture's (8- or 16-bit grayscale or RGB, with ``item.alpha`` as it came).

    Returns
    -------
    ``write(handle)``, writing the encoded file to a binary file object (e.g. for
    :func:`~daelab.checkpoint.atomic_write`); pictures are encoded before it is returned.
    """
    suffix, dtypes = suffix.lower(), item.dtypes
    if suffix == ".npy":
        return lambda handle: np.save(handle, _encode(images[""], dtypes[""]))
    if suffix == ".npz":
        arrays = {key: _encode(value, dtypes[key]) for key, value in images.items()}
        return lambda handle: np.savez_compressed(handle, **arrays)
    from PIL import Image
    pixels = _encode(images[""], np.dtype(np.uint16 if item.mode == "I;16" else np.uint8))
    if pixels.ndim == 3:
        pixels = np.moveaxis(pixels, 0, -1)                # (3, H, W) -> (H, W, 3)
    if item.alpha is not None:
        pixels = np.dstack([pixels, item.alpha])           # RGBA or LA, the alpha as it came
    picture = Image.fromarray(np.ascontiguousarray(pixels))
    fmt = "PNG" if suffix == ".png" else "JPEG"
    return lambda handle: picture.save(handle, format=fmt)
