"""Data: reading IDX and ``.npz`` files, finding Fashion-MNIST, and turning images into tensors.

The path is straight: raw file -> ``uint8`` array (:func:`read_idx`) -> :class:`Dataset` ->
float32 tensor in [0, 1] (:func:`to_tensor`). Every reader checks what a file claims against what
it holds and raises :class:`~daelab.errors.DataError` naming the file and what is wrong; a header
that claims more data than :data:`MAX_IDX_BYTES` is refused before anything is allocated.
"""
from __future__ import annotations

import gzip
import os
import struct
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from daelab.errors import DataError

# IDX type codes (http://yann.lecun.com/exdb/mnist/ "THE IDX FILE FORMAT").
IDX_DTYPES = {
    0x08: np.dtype(np.uint8),
    0x09: np.dtype(np.int8),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}
IDX_CODES = {np.dtype(v).newbyteorder("="): k for k, v in IDX_DTYPES.items()}
MAX_IDX_BYTES = 1 << 33  # 8 GiB: more than any image set this tool is meant for
_CHUNK = 1 << 24

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
    """Train and test images with labels, as read from disk.

    ``*_images`` are ``uint8`` arrays of shape (N, H, W) (or float32 in [0, 1] from ``.npz``);
    ``*_labels`` are int64 arrays of shape (N,).
    """

    train_images: np.ndarray
    train_labels: np.ndarray
    test_images: np.ndarray
    test_labels: np.ndarray
    source: str = ""

    @property
    def image_shape(self) -> tuple[int, int]:
        return tuple(self.train_images.shape[1:3])

    def subset(self, n_train: int | None = None, n_test: int | None = None) -> "Dataset":
        """The first ``n_train`` training and ``n_test`` test images (``None`` keeps all)."""
        return Dataset(self.train_images[:n_train], self.train_labels[:n_train],
                       self.test_images[:n_test], self.test_labels[:n_test], self.source)


# ----------------------------------------------------------------------------------- IDX files
def _open(path: Path):
    with open(path, "rb") as probe:
        magic = probe.read(2)
    return gzip.open(path, "rb") if magic == b"\x1f\x8b" else open(path, "rb")


def _read_exact(handle, n: int, path: Path, what: str) -> bytes:
    """Read exactly n bytes in bounded chunks, so a lying header cannot make us allocate n."""
    parts, got = [], 0
    while got < n:
        chunk = handle.read(min(_CHUNK, n - got))
        if not chunk:
            raise DataError(f"{path}: truncated {what}: expected {n} bytes, found {got}",
                            "the file is incomplete; download or copy it again")
        parts.append(chunk)
        got += len(chunk)
    return b"".join(parts)


def read_idx(path: str | os.PathLike, max_bytes: int = MAX_IDX_BYTES) -> np.ndarray:
    """Read an IDX file (raw or gzip) into an array in native byte order.

    Parameters
    ----------
    path : path to the file.
    max_bytes : refuse headers claiming a larger payload than this, before reading it.

    Returns
    -------
    np.ndarray of the dtype and shape the header declares, e.g. (60000, 28, 28) uint8.
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: no such file")
    try:
        with _open(path) as handle:
            header = handle.read(4)
            if len(header) < 4:
                raise DataError(f"{path}: truncated header ({len(header)} bytes)", "not an IDX file")
            zero, code, ndim = struct.unpack(">HBB", header)
            if zero != 0 or code not in IDX_DTYPES:
                raise DataError(f"{path}: wrong magic number 0x{header.hex()}",
                                "not an IDX file (expected 0x0000 then a type code 08/09/0B/0C/0D/0E)")
            if ndim == 0:
                raise DataError(f"{path}: IDX header declares 0 dimensions")
            dims_raw = handle.read(4 * ndim)
            if len(dims_raw) < 4 * ndim:
                raise DataError(f"{path}: truncated header: {ndim} dimensions declared")
            dims = struct.unpack(f">{ndim}I", dims_raw)
            dtype = IDX_DTYPES[code]
            n_bytes = int(np.prod(dims, dtype=object)) * dtype.itemsize
            if n_bytes > max_bytes:
                raise DataError(f"{path}: header claims {dims} = {n_bytes:,} bytes, over the {max_bytes:,} limit",
                                "the header is corrupt or the file is not meant for daelab")
            payload = _read_exact(handle, n_bytes, path, "data")
            if handle.read(1):
                raise DataError(f"{path}: trailing bytes after the {n_bytes:,} declared by the header {dims}",
                                "the header does not match the file")
    except (OSError, EOFError, zlib.error, gzip.BadGzipFile) as exc:
        raise DataError(f"{path}: cannot read: {exc}", "the file is corrupt") from None
    return np.frombuffer(payload, dtype=dtype).reshape(dims).astype(dtype.newbyteorder("="), copy=False)


def write_idx(path: str | os.PathLike, array: np.ndarray, compress: bool | None = None) -> None:
    """Write ``array`` as an IDX file; gzip when ``compress`` or the name ends in ``.gz``."""
    path = Path(path)
    array = np.asarray(array)
    code = IDX_CODES.get(array.dtype.newbyteorder("="))
    if code is None:
        raise DataError(f"cannot write dtype {array.dtype} as IDX")
    data = struct.pack(">HBB", 0, code, array.ndim) + struct.pack(f">{array.ndim}I", *array.shape)
    data += array.astype(IDX_DTYPES[code], copy=False).tobytes()
    compress = path.suffix == ".gz" if compress is None else compress
    path.write_bytes(gzip.compress(data) if compress else data)


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
    return images, labels.astype(np.int64)


# --------------------------------------------------------------------------------- .npz files
def load_npz(path: str | os.PathLike, x_key: str = "x", y_key: str = "y") -> tuple[np.ndarray, np.ndarray]:
    """Images and labels from a ``.npz`` with arrays ``x_key`` and ``y_key``.

    Images may be uint8 (any values) or float in [0, 1], shaped (N, H, W) or (N, H*W) with a
    square H*W. Pickled objects are never loaded.
    """
    path = Path(path)
    try:
        with np.load(path, allow_pickle=False) as archive:
            keys = set(archive.files)
            xk, yk = x_key, y_key
            if xk not in keys or yk not in keys:
                raise DataError(f"{path}: needs arrays '{xk}' and '{yk}', found {sorted(keys) or 'none'}")
            images, labels = archive[xk], archive[yk]
    except DataError:
        raise
    except (OSError, ValueError, EOFError, zlib.error) as exc:
        raise DataError(f"{path}: cannot read as .npz: {exc}") from None
    return _check_images(images, path), _check_labels(labels, len(images), path)


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


def _check_labels(labels: np.ndarray, n: int, path) -> np.ndarray:
    if labels.ndim != 1 or len(labels) != n or not np.issubdtype(labels.dtype, np.integer):
        raise DataError(f"{path}: expected {n} integer labels, got {labels.dtype} {labels.shape}")
    return labels.astype(np.int64)


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
