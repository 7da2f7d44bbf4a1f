"""Image folders as data: a folder of grayscale PNG/JPEG pictures held as uint8, and random patches drawn from it.

The natural-image protocol trains on ``Train400`` (400 grayscale 180x180 PNGs) and tests on
``Set12``: folders of pictures, not IDX files. :func:`load_image_folder` reads every ``.png``,
``.jpg`` and ``.jpeg`` file of a folder (sorted by name; other files and hidden files are ignored)
into an :class:`ImageFolder` of ``uint8`` (H, W) arrays on the 0-255 scale:

* 8-bit grayscale (and 1-bit) pictures are kept as stored;
* 16-bit grayscale PNGs become ``rint(v / 257)``: 65535 / 255 = 257 exactly, so this is the
  nearest 8-bit value and no value falls on a tie;
* colour (RGB, palette, CMYK, anything with alpha) is refused with a one-line
  :class:`~daelab.errors.ConfigError` naming the file, unless ``colour="luma"``, which converts it
  by Pillow's ITU-R 601-2 luma rule ``L = (299 R + 587 G + 114 B) / 1000`` (rounded; a picture
  whose three channels are equal keeps its values) and drops any alpha channel.

Each file is checked by its declared size before it is decoded (at most
:func:`daelab.images.max_pixels` pixels, ``$DAELAB_MAX_PIXELS``); an empty folder or an unreadable
file is a one-line :class:`~daelab.errors.DataError` naming it.

:class:`PatchSampler` draws an epoch's random ``p x p`` patches with the 8 dihedral augmentations
(flips and 90-degree rotations) in a few NumPy operations, with no per-patch Python work: every
(image, y, x, transform) index is drawn at once from the :data:`~daelab.seeds.PATCHES` stream,
patches are gathered per image-size group through a strided window view, and the transforms are
three masked array operations (transpose, flip rows, flip columns), whose 8 combinations are the
8 elements of the dihedral group.
"""
from __future__ import annotations

import os
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from daelab import seeds
from daelab.errors import ConfigError, DataError
from daelab.images import IMAGE_SUFFIXES, MAX_PIXELS_ENV, max_pixels

COLOUR_RULES = ("refuse", "luma")
N_TRANSFORMS = 8
# Pillow modes of a grayscale picture: 8-bit (1-bit read as 8-bit) and 16-bit (or 32-bit holding 16-bit values).
_GRAY8 = ("1", "L")
_GRAY16 = ("I;16", "I;16L", "I;16B", "I;16N", "I")


@dataclass
class ImageFolder:
    """Grayscale images of one folder, as ``uint8`` arrays on the 0-255 scale, in memory.

    ``names`` are the file names (sorted), ``images`` the (H, W) uint8 arrays in the same order
    (sizes may differ), ``bit_depths`` the bits per pixel each file stored (8 or 16), and
    ``converted`` the names of colour files turned into luma (``colour="luma"``).
    """

    path: Path
    names: list[str]
    images: list[np.ndarray]
    bit_depths: list[int]
    converted: list[str] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.images)

    @property
    def shapes(self) -> list[tuple[int, int]]:
        return [image.shape for image in self.images]

    def as_float(self, index: int) -> np.ndarray:
        """Image ``index`` as float32 (H, W) in [0, 1] (``uint8 / 255``)."""
        return self.images[index].astype(np.float32) / np.float32(255.0)


def _read_gray(path: Path, colour: str, cap: int) -> tuple[np.ndarray, int, bool]:
    """One picture -> (uint8 (H, W), stored bit depth, whether it was converted from colour)."""
    from PIL import Image, UnidentifiedImageError
    try:
        with warnings.catch_warnings():  # Pillow warns above its own limit; ours is checked below
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            picture = Image.open(path)
        with picture:
            if picture.width * picture.height > cap:
                raise DataError(f"{path}: {picture.width}x{picture.height} pixels, over the {cap:,} one image may hold",
                                f"raise the limit with ${MAX_PIXELS_ENV}")
            mode = picture.mode
            if mode in _GRAY8:
                return np.asarray(picture.convert("L"), dtype=np.uint8), 8, False
            if mode in _GRAY16:
                values = np.asarray(picture)
                if values.size and (values.min() < 0 or values.max() > 65535):
                    raise DataError(f"{path}: pixel values outside 0..65535", "save it as 8- or 16-bit grayscale")
                # 65535 = 255 * 257: v / 257 is never k + 1/2, so rint is the nearest 8-bit value, tie-free
                return np.rint(values.astype(np.float64) / 257.0).astype(np.uint8), 16, False
            if colour != "luma":
                raise ConfigError(f"{path} is a colour image (mode {mode}); the image folder is grayscale",
                                  'convert it to grayscale, or load with colour="luma"')
            return np.asarray(picture.convert("RGB").convert("L"), dtype=np.uint8), 8, True
    except Image.DecompressionBombError as exc:
        raise DataError(f"{path}: {exc}", f"a decompression bomb, or a picture over ${MAX_PIXELS_ENV} anyway") from None
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as exc:
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise DataError(f"{path} is not a readable image: {reason}") from None


def load_image_folder(path: str | os.PathLike, colour: str = "refuse", max_values: int | None = None) -> ImageFolder:
    """Read every PNG/JPEG of a folder into grayscale ``uint8`` images.

    Parameters
    ----------
    path : the folder; its ``.png``/``.jpg``/``.jpeg`` files (any case, not hidden) are read in
        name order, anything else is ignored.
    colour : ``"refuse"`` (default: a colour file is a ConfigError naming it) or ``"luma"``
        (converted by ``L = (299 R + 587 G + 114 B) / 1000``, alpha dropped).
    max_values : the most pixels one file may hold (default :func:`daelab.images.max_pixels`).

    Returns
    -------
    ImageFolder with uint8 (H, W) images: 8-bit files as stored, 16-bit ones ``rint(v / 257)``.
    """
    if colour not in COLOUR_RULES:
        raise ConfigError(f"unknown colour rule {colour!r}", f"valid: {', '.join(COLOUR_RULES)}")
    folder = Path(path)
    if not folder.is_dir():
        raise DataError(f"{folder} " + ("is not a directory" if folder.exists() else "not found"),
                        "point at a folder of PNG/JPEG images")
    files = sorted(entry for entry in folder.iterdir()
                   if entry.suffix.lower() in IMAGE_SUFFIXES and not entry.name.startswith(".") and not entry.is_dir())
    if not files:
        raise DataError(f"{folder} holds no images", f"expected files ending in {', '.join(IMAGE_SUFFIXES)}")
    cap = max_pixels(max_values)
    names, images, depths, converted = [], [], [], []
    for file in files:
        image, depth, was_colour = _read_gray(file, colour, cap)
        if image.ndim != 2 or 0 in image.shape:
            raise DataError(f"{file}: expected a 2-D image, got shape {image.shape}")
        names.append(file.name)
        images.append(np.ascontiguousarray(image))
        depths.append(depth)
        if was_colour:
            converted.append(file.name)
    return ImageFolder(folder, names, images, depths, converted)


# ------------------------------------------------------------------------------------- patches
def dihedral(patches: np.ndarray, transforms: np.ndarray) -> np.ndarray:
    """Apply transform ``transforms[i]`` in 0..7 to ``patches[i]`` ((N, p, p) -> (N, p, p), a new array).

    Bit 0 flips the rows (up-down), bit 1 the columns (left-right), bit 2 transposes first: the
    8 combinations are the identity, the three 90-degree rotations, and the four reflections.
    Three masked operations over the batch, whatever N is.
    """
    out = np.array(patches, copy=True)
    transpose = (transforms & 4).astype(bool)
    out[transpose] = out[transpose].transpose(0, 2, 1)
    rows = (transforms & 1).astype(bool)
    out[rows] = out[rows][:, ::-1, :]
    cols = (transforms & 2).astype(bool)
    out[cols] = out[cols][:, :, ::-1]
    return out


@dataclass(frozen=True)
class PatchDraw:
    """The indices of one epoch's patches: image index, top row, left column, dihedral transform (each (N,))."""

    image: np.ndarray
    top: np.ndarray
    left: np.ndarray
    transform: np.ndarray


class PatchSampler:
    """Random ``patch_size`` patches of an :class:`ImageFolder`, augmented, as float32 tensors in [0, 1].

    Every patch position of every image is equally likely (an image is picked with probability
    proportional to its number of positions ``(H - p + 1) * (W - p + 1)``), and with ``augment``
    each patch gets one of the 8 dihedral transforms uniformly. Epoch ``e`` of seed ``s`` always
    draws the same patches (:func:`daelab.seeds.patch_rng`).

    Parameters
    ----------
    folder : the images (uint8, held in memory once more as one stack per image size).
    patch_size : side p of the square patches; no larger than the smallest image.
    patches_per_epoch : N, the patches :meth:`draw` returns.
    seed : the user's seed.
    augment : draw flips and 90-degree rotations (else every patch is as stored).
    """

    def __init__(self, folder: ImageFolder, patch_size: int, patches_per_epoch: int, seed: int = 0,
                 augment: bool = True):
        if not isinstance(patch_size, (int, np.integer)) or patch_size < 1:
            raise ConfigError(f"patch_size {patch_size!r} must be a positive integer")
        if not isinstance(patches_per_epoch, (int, np.integer)) or patches_per_epoch < 1:
            raise ConfigError(f"patches_per_epoch {patches_per_epoch!r} must be a positive integer")
        if len(folder) == 0:
            raise DataError(f"{folder.path} holds no images")
        for name, (height, width) in zip(folder.names, folder.shapes, strict=True):
            if min(height, width) < patch_size:
                raise ConfigError(f"patch_size {patch_size} is larger than {name} ({height}x{width})",
                                  "use smaller patches or leave the small image out")
        self.folder, self.patch_size, self.patches_per_epoch = folder, int(patch_size), int(patches_per_epoch)
        self.seed, self.augment = int(seed), bool(augment)
        shapes = folder.shapes
        self._groups: list[tuple[np.ndarray, np.ndarray]] = []   # (image indices, their (G, H, W) uint8 stack)
        for shape in sorted(set(shapes)):
            members = np.array([i for i, s in enumerate(shapes) if s == shape], dtype=np.int64)
            self._groups.append((members, np.stack([folder.images[i] for i in members])))
        self._group_of = np.empty(len(folder), np.int64)      # image -> (group, row in the group's stack)
        self._row_of = np.empty(len(folder), np.int64)
        for g, (members, _) in enumerate(self._groups):
            self._group_of[members], self._row_of[members] = g, np.arange(len(members))
        heights = np.array([s[0] for s in shapes], np.int64)
        widths = np.array([s[1] for s in shapes], np.int64)
        self._rows, self._cols = heights - self.patch_size + 1, widths - self.patch_size + 1
        positions = (self._rows * self._cols).astype(np.float64)
        self._weights = positions / positions.sum()

    def __len__(self) -> int:
        return self.patches_per_epoch

    def indices(self, epoch: int = 0) -> PatchDraw:
        """The (image, top, left, transform) of every patch of epoch ``epoch``, drawn at once."""
        rng = seeds.patch_rng(self.seed, epoch)
        n = self.patches_per_epoch
        image = rng.choice(len(self._weights), size=n, p=self._weights)
        # floor(u * positions) is uniform on 0..positions-1 for each patch's own image
        top = np.minimum((rng.random(n) * self._rows[image]).astype(np.int64), self._rows[image] - 1)
        left = np.minimum((rng.random(n) * self._cols[image]).astype(np.int64), self._cols[image] - 1)
        transform = rng.integers(0, N_TRANSFORMS, n) if self.augment else np.zeros(n, np.int64)
        return PatchDraw(image, top, left, transform)

    def gather(self, draw: PatchDraw) -> np.ndarray:
        """The uint8 patches (N, p, p) of ``draw``, transformed; one fancy-indexing gather per image size."""
        p = self.patch_size
        patches = np.empty((len(draw.image), p, p), np.uint8)
        group = self._group_of[draw.image]
        for g, (_, stack) in enumerate(self._groups):
            chosen = np.flatnonzero(group == g)
            if chosen.size == 0:
                continue
            windows = np.lib.stride_tricks.sliding_window_view(stack, (p, p), axis=(1, 2))  # (G, H-p+1, W-p+1, p, p)
            patches[chosen] = windows[self._row_of[draw.image[chosen]], draw.top[chosen], draw.left[chosen]]
        return dihedral(patches, draw.transform) if self.augment else patches

    def draw(self, epoch: int = 0) -> torch.Tensor:
        """Epoch ``epoch``'s patches as a float32 tensor (N, 1, p, p) in [0, 1] (``uint8 / 255``)."""
        patches = self.gather(self.indices(epoch))
        return torch.from_numpy(patches).unsqueeze(1).float().div_(255.0)
