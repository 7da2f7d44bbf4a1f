"""Data: labelled image sets as a checked :class:`Dataset`, where Fashion-MNIST is looked for, and images to tensors.

The path is straight: raw file -> ``uint8`` array (:mod:`daelab.formats` reads IDX, ``.npy`` and
``.npz``, checking every header before allocating) -> :class:`Dataset` -> float32 tensor in [0, 1]
(:func:`to_tensor`). This module owns what the arrays mean: an IDX pair or an ``.npz`` becomes
images and labels (:func:`load_idx_pair`, :func:`load_npz`), :func:`load_dataset` finds a set in the
search order of :func:`candidate_dirs`, and a failure is a :class:`~daelab.errors.DataError` naming
the file. A :class:`Dataset`, however built, checks its labels: integers (float labels are refused,
even integer-valued ones), 0 <= y < n_classes, with n_classes = max(label) + 1 over train and test
at most :data:`MAX_CLASSES`.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from daelab.errors import DataError

# The format readers lived here before daelab.formats: their names stay importable from daelab.data.
from daelab.formats import (  # noqa: F401
    IDX_CODES,
    IDX_DTYPES,
    MAX_BYTES_ENV,
    MAX_IDX_BYTES,
    load_npy,
    load_npz_arrays,
    max_data_bytes,
    read_idx,
    write_idx,
)

MAX_CLASSES = 1000

FASHION_FILES = {
    "train_images": "train-images-idx3-ubyte",
    "train_labels": "train-labels-idx1-ubyte",
    "test_images": "t10k-images-idx3-ubyte",
    "test_labels": "t10k-labels-idx1-ubyte",
}
SYSTEM_DIR = Path("/usr/share/datasets/fashion-mnist")
GET_DATA_HINT = (
    "install it with 'apt-get install -y dataset-fashion-mnist' (as root, after 'apt-get update'), "
    "or pass --data-dir DIR holding the four IDX files, or set DAELAB_DATA"
)


@dataclass
class Dataset:
    """Train and test images with labels, as read from disk, checked when built.

    ``*_images`` are ``uint8`` arrays of shape (N, H, W) (or float32 in [0, 1] from ``.npz``);
    ``*_labels`` become int64 arrays of shape (N,) with 0 <= y < :attr:`n_classes`. Building one
    (by a loader, :meth:`subset`, or by hand) raises :class:`~daelab.errors.DataError` when the
    labels are not integers, are negative, or name more classes than :data:`MAX_CLASSES`: a
    classifier fed such labels would index out of bounds. (Fewer training images than classes is
    allowed: a DAE never reads the labels.)
    """

    train_images: np.ndarray
    train_labels: np.ndarray
    test_images: np.ndarray
    test_labels: np.ndarray
    source: str = ""

    def __post_init__(self) -> None:
        where = self.source or "dataset"
        for split in ("train", "test"):
            images, labels = getattr(self, f"{split}_images"), getattr(self, f"{split}_labels")
            if np.ndim(images) != 3:
                raise DataError(f"{where}: {split} images must be (N, H, W), got shape {np.shape(images)}")
            # int64, as torch's losses want: the same array for labels the loaders read
            setattr(self, f"{split}_labels", _check_labels(labels, len(images), f"{where}: {split}"))

    @property
    def n_classes(self) -> int:
        """max(label) + 1 over train and test (0 when there are no labels)."""
        labels = [lab for lab in (self.train_labels, self.test_labels) if len(lab)]
        return max(int(lab.max()) for lab in labels) + 1 if labels else 0

    @property
    def image_shape(self) -> tuple[int, int]:
        """(H, W) of the images."""
        return tuple(self.train_images.shape[1:3])

    def subset(self, n_train: int | None = None, n_test: int | None = None) -> "Dataset":
        """The first ``n_train`` training and ``n_test`` test images (``None`` keeps all), checked again."""
        return Dataset(self.train_images[:n_train], self.train_labels[:n_train],
                       self.test_images[:n_test], self.test_labels[:n_test], self.source)


def _check_labels(labels, n: int, where) -> np.ndarray:
    """(n,) integer labels in [0, MAX_CLASSES) -> int64, checked before the cast can wrap a uint64."""
    labels = np.asarray(labels)
    if labels.ndim != 1 or len(labels) != n:
        raise DataError(f"{where}: expected {n} labels of shape ({n},), got shape {labels.shape}")
    if not np.issubdtype(labels.dtype, np.integer):
        raise DataError(f"{where}: labels have dtype {labels.dtype}, not an integer type",
                        "store class numbers as integers, e.g. y.astype(np.int64)")
    if n and int(labels.min()) < 0:
        raise DataError(f"{where}: labels must be >= 0, found {int(labels.min())}", "classes are numbered 0, 1, 2, ...")
    if n and int(labels.max()) >= MAX_CLASSES:
        raise DataError(f"{where}: labels name {int(labels.max()) + 1:,} classes, more than the {MAX_CLASSES} allowed",
                        "classes are numbered 0 .. n_classes-1")
    return labels.astype(np.int64, copy=False)


# ----------------------------------------------------------------------------- labelled files
def load_idx_pair(images_path: str | os.PathLike, labels_path: str | os.PathLike) -> tuple[np.ndarray, np.ndarray]:
    """Images (N, H, W) uint8 and labels (N,) int64 from an MNIST-format IDX pair."""
    images, labels = read_idx(images_path), read_idx(labels_path)
    if images.ndim != 3 or images.dtype != np.uint8:
        raise DataError(f"{images_path}: expected uint8 images of shape (N, H, W), got {images.dtype} {images.shape}")
    if labels.ndim != 1:
        raise DataError(f"{labels_path}: expected labels of shape (N,), got {labels.shape}")
    if len(images) != len(labels):
        raise DataError(f"count mismatch: {images_path} has {len(images)} images but {labels_path} "
                        f"has {len(labels)} labels", "the two files are not a pair")
    return images, _check_labels(labels, len(images), labels_path)


def load_npz(path: str | os.PathLike, x_key: str = "x", y_key: str = "y") -> tuple[np.ndarray, np.ndarray]:
    """Images and labels from a ``.npz`` with arrays ``x_key`` and ``y_key``.

    Images may be uint8 (any values) or float in [0, 1], shaped (N, H, W) or (N, H*W) with a
    square H*W; labels are integers. Pickled objects are never loaded, and headers are checked
    (:func:`load_npz_arrays`) before anything is allocated.
    """
    path = Path(path)
    arrays = load_npz_arrays(path, (x_key, y_key))
    images = _check_images(arrays[x_key], f"{path}[{x_key}]")
    return images, _check_labels(arrays[y_key], len(images), f"{path}[{y_key}]")


def _check_images(images: np.ndarray, path) -> np.ndarray:
    if images.ndim == 2 and images.shape[1] > 0:
        side = int(round(np.sqrt(images.shape[1])))
        if side * side != images.shape[1]:
            raise DataError(f"{path}: flat images of {images.shape[1]} pixels are not square")
        images = images.reshape(len(images), side, side)
    if images.ndim != 3 or 0 in images.shape:
        raise DataError(f"{path}: expected images of shape (N, H, W) or (N, H*W), got {images.shape}")
    if images.dtype == np.uint8:
        return images
    if not np.issubdtype(images.dtype, np.floating) and not np.issubdtype(images.dtype, np.integer):
        raise DataError(f"{path}: images have dtype {images.dtype}", "use uint8 or float in [0, 1]")
    with np.errstate(over="ignore", invalid="ignore"):  # out-of-range values are reported just below
        images = images.astype(np.float32)
    if not np.isfinite(images).all():
        raise DataError(f"{path}: images contain NaN or infinite values")
    if images.min() < 0 or images.max() > 1:
        raise DataError(f"{path}: float images must lie in [0, 1], found [{images.min():g}, {images.max():g}]",
                        "divide uint8 pixels by 255 or store them as uint8")
    return images


# ------------------------------------------------------------------------------ finding data
def candidate_dirs(data_dir: str | os.PathLike | None = None) -> list[Path]:
    """Where a dataset is looked for, in order: ``data_dir``, ``$DAELAB_DATA``, the user cache, the system dir."""
    dirs = []
    if data_dir:
        dirs.append(Path(data_dir))
    if os.environ.get("DAELAB_DATA"):
        dirs.append(Path(os.environ["DAELAB_DATA"]))
    cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    dirs += [cache / "daelab" / "fashion-mnist", SYSTEM_DIR]
    return dirs


def _find(directory: Path, stem: str) -> Path | None:
    for name in (stem + ".gz", stem):
        if (directory / name).is_file():
            return directory / name
    return None


def _load_dir(directory: Path) -> Dataset | None:
    files = {key: _find(directory, stem) for key, stem in FASHION_FILES.items()}
    if all(files.values()):
        train = load_idx_pair(files["train_images"], files["train_labels"])
        test = load_idx_pair(files["test_images"], files["test_labels"])
        return Dataset(*train, *test, source=str(directory))
    if (directory / "train.npz").is_file() and (directory / "test.npz").is_file():
        return Dataset(*load_npz(directory / "train.npz"), *load_npz(directory / "test.npz"), source=str(directory))
    return None


def load_dataset(data_dir: str | os.PathLike | None = None) -> Dataset:
    """Load Fashion-MNIST (or any MNIST-format set) from the first place that has it.

    ``data_dir`` may be a directory with the four IDX files (``.gz`` or raw; MNIST, KMNIST and
    other MNIST-format sets work), a directory with ``train.npz`` and ``test.npz`` (arrays ``x``,
    ``y``), or one ``.npz`` with ``x_train``, ``y_train``, ``x_test``, ``y_test``. An explicit
    ``data_dir`` that holds none of these is an error, not a fall-through.
    """
    if data_dir is not None and Path(data_dir).is_file():
        path = Path(data_dir)
        if path.suffix != ".npz":
            raise DataError(f"{path}: not a directory or a .npz file")
        return Dataset(*load_npz(path, "x_train", "y_train"), *load_npz(path, "x_test", "y_test"), source=str(path))
    for position, directory in enumerate(candidate_dirs(data_dir)):
        if directory.is_dir():
            dataset = _load_dir(directory)
            if dataset is not None:
                return dataset
        if position == 0 and data_dir:
            raise DataError(f"{directory}: no dataset there",
                            "expected the four Fashion-MNIST IDX files (e.g. train-images-idx3-ubyte.gz) "
                            "or train.npz and test.npz")
    raise DataError("Fashion-MNIST not found in " + ", ".join(str(d) for d in candidate_dirs(data_dir)),
                    GET_DATA_HINT)


# ------------------------------------------------------------------------------- to tensors
def to_tensor(images: np.ndarray, layout: str = "flat") -> torch.Tensor:
    """Images (N, H, W) uint8 or float in [0, 1] -> float32 tensor in [0, 1].

    ``layout="flat"`` gives (N, H*W) for MLPs; ``layout="image"`` gives (N, 1, H, W) for conv models.
    """
    images = np.asarray(images)
    array = images.astype(np.float32) / 255.0 if images.dtype == np.uint8 else images.astype(np.float32, copy=False)
    tensor = torch.from_numpy(np.ascontiguousarray(array))
    if layout == "flat":
        return tensor.reshape(len(tensor), -1)
    if layout == "image":
        return tensor.reshape(len(tensor), 1, *tensor.shape[-2:])
    raise ValueError(f"unknown layout {layout!r}: use 'flat' or 'image'")
