"""Data: reading IDX, ``.npy`` and ``.npz`` files, finding Fashion-MNIST, and turning images into tensors.

The path is straight: raw file -> ``uint8`` array (:func:`read_idx`) -> :class:`Dataset` ->
float32 tensor in [0, 1] (:func:`to_tensor`). Nothing on disk is trusted: a header's claim is checked
against the cap (:data:`MAX_IDX_BYTES`, ``$DAELAB_MAX_DATA_BYTES``) and against what the file can hold
*before* allocating, the payload is read once into one array, nothing is unpickled, and a failure is
a :class:`~daelab.errors.DataError` naming the file. A :class:`Dataset`, however built, checks its
labels: integers (float labels are refused, even integer-valued ones), 0 <= y < n_classes, with
n_classes = max(label) + 1 over train and test at most :data:`MAX_CLASSES`.
"""
from __future__ import annotations

import gzip
import os
import struct
import zipfile
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
MAX_BYTES_ENV = "DAELAB_MAX_DATA_BYTES"
MAX_CLASSES = 1000
_CHUNK = 1 << 20  # readinto on a gzip stream reads a chunk, then copies it: keep the extra small
# Deflate cannot shrink data more than about 1032:1 (RFC 1951: at best 258 bytes per 2-bit code
# pair), so a gzip of S bytes inflates to at most ~1032*S: a header claiming more is a lie.
_DEFLATE_MAX_RATIO = 1032

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


def max_data_bytes(max_bytes: int | None = None) -> int:
    """The byte cap on one data file's payload: ``max_bytes``, else ``$DAELAB_MAX_DATA_BYTES``, else 8 GiB."""
    value = max_bytes if max_bytes is not None else os.environ.get(MAX_BYTES_ENV) or MAX_IDX_BYTES
    try:
        return int(float(value))
    except ValueError:
        raise DataError(f"${MAX_BYTES_ENV}={value!r} is not a number of bytes") from None


def _over_cap(path, claim: str, n_bytes: int, cap: int) -> DataError:
    return DataError(f"{path}: header claims {claim} = {n_bytes:,} bytes, over the {cap:,} limit",
                     f"the header is corrupt, or raise the limit with ${MAX_BYTES_ENV}")


def _nominal_bytes(shape, dtype: np.dtype) -> int:
    """Bytes a shape claims, zero-length axes counted as 1: numpy refuses (0, 10**10, 10**10) too."""
    return int(np.prod([max(int(d), 1) for d in shape], dtype=object)) * dtype.itemsize


def _read_into(handle, array: np.ndarray, path, what: str) -> None:
    """Fill ``array`` from ``handle`` in bounded chunks: one allocation, however the stream lies."""
    view = memoryview(array.reshape(-1).view(np.uint8)) if array.size else memoryview(b"")
    got = 0
    while got < len(view):
        n = handle.readinto(view[got:got + _CHUNK])
        if not n:
            raise DataError(f"{path}: truncated {what}: expected {len(view):,} bytes, found {got:,}",
                            "the file is incomplete; download or copy it again")
        got += n


# ----------------------------------------------------------------------------------- IDX files
def _is_gzip(path: Path) -> bool:
    with open(path, "rb") as probe:
        return probe.read(2) == b"\x1f\x8b"


def _need_file(path: Path) -> None:
    if path.is_dir():
        raise DataError(f"{path} is a directory, not a file")
    if not path.is_file():
        raise DataError(f"{path}: no such file")


def read_idx(path: str | os.PathLike, max_bytes: int | None = None) -> np.ndarray:
    """Read an IDX file (raw or gzip) into an array in native byte order.

    The payload is read once, into one array allocated after the header is checked against
    ``max_bytes`` and what the file can hold (its size, or the most a gzip of its size inflates to).

    Parameters
    ----------
    path : path to the file.
    max_bytes : refuse headers claiming a larger payload than this (default :func:`max_data_bytes`).

    Returns
    -------
    np.ndarray of the dtype and shape the header declares, e.g. (60000, 28, 28) uint8.
    """
    path = Path(path)
    _need_file(path)
    cap = max_data_bytes(max_bytes)
    try:
        file_size = path.stat().st_size
        compressed = _is_gzip(path)
        with gzip.open(path, "rb") if compressed else open(path, "rb") as handle:
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
            if _nominal_bytes(dims, dtype) > cap:
                raise _over_cap(path, str(dims), _nominal_bytes(dims, dtype), cap)
            n_bytes = int(np.prod(dims, dtype=object)) * dtype.itemsize
            header_size = 4 + 4 * ndim
            if compressed and n_bytes + header_size > _DEFLATE_MAX_RATIO * file_size + 1024:
                raise DataError(f"{path}: truncated data: the header claims {dims} = {n_bytes:,} bytes, more than "
                                f"a {file_size:,}-byte gzip can hold", "the header is corrupt or the file incomplete")
            if not compressed and n_bytes + header_size > file_size:
                raise DataError(f"{path}: truncated data: expected {n_bytes:,} bytes, found "
                                f"{file_size - header_size:,}", "the file is incomplete; download or copy it again")
            array = np.empty(dims, dtype)
            _read_into(handle, array, path, "data")
            if handle.read(1):
                raise DataError(f"{path}: trailing bytes after the {n_bytes:,} declared by the header {dims}",
                                "the header does not match the file")
    except (OSError, EOFError, zlib.error, gzip.BadGzipFile) as exc:
        raise DataError(f"{path}: cannot read: {exc}", "the file is corrupt") from None
    if not dtype.isnative and dtype.itemsize > 1:
        array = array.byteswap(inplace=True).view(dtype.newbyteorder("="))  # in place: no second copy
    return array


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
    return images, _check_labels(labels, len(images), labels_path)


# ------------------------------------------------------------------------- .npy and .npz files
def _npy_array(handle, available: int, where, cap: int, check=None) -> np.ndarray:
    """One ``.npy`` stream -> array, with its header checked before the payload is allocated.

    ``available`` is the stream's byte count (the file's size, or a zip member's declared size,
    which also bounds what the member inflates to). ``check(shape, dtype)`` may refuse further.
    """
    from numpy.lib import format as npy
    try:
        version = npy.read_magic(handle)
        if version not in ((1, 0), (2, 0)):
            raise DataError(f"{where}: .npy format version {version[0]}.{version[1]} is not supported",
                            "save the array with numpy.save")
        read_header = npy.read_array_header_1_0 if version == (1, 0) else npy.read_array_header_2_0
        shape, fortran, dtype = read_header(handle)
    except ValueError as exc:
        raise DataError(f"{where}: not a .npy array: {str(exc).splitlines()[0]}") from None
    if dtype.hasobject or dtype.kind not in "biufc" or dtype.itemsize == 0:
        raise DataError(f"{where}: arrays of dtype {dtype} are not images or labels",
                        "use uint8, integers or floats (pickled objects are never loaded)")
    n_bytes = _nominal_bytes(shape, dtype)
    if n_bytes > cap:
        raise _over_cap(where, f"shape {shape} of {dtype}", n_bytes, cap)
    n_bytes = int(np.prod(shape, dtype=object)) * dtype.itemsize
    if n_bytes != available - handle.tell():
        raise DataError(f"{where}: header claims shape {shape} of {dtype} = {n_bytes:,} bytes, the file holds "
                        f"{available - handle.tell():,}", "the file is truncated or its header corrupt")
    if check is not None:
        check(tuple(shape), dtype)
    array = np.empty(shape[::-1] if fortran else shape, dtype)
    _read_into(handle, array, where, "array data")
    return array.T if fortran else array


def load_npy(path: str | os.PathLike, max_bytes: int | None = None, check=None) -> np.ndarray:
    """Read a ``.npy`` file, refusing before allocation a header that is over the cap or lies.

    Parameters
    ----------
    path : path to the file.
    max_bytes : cap on the payload (default :func:`max_data_bytes`).
    check : ``check(shape, dtype)``, called after the header is read and before anything is
        allocated; it may raise to refuse the array.

    Returns
    -------
    np.ndarray in the stored dtype.
    """
    path = Path(path)
    _need_file(path)
    try:
        with open(path, "rb") as handle:
            return _npy_array(handle, path.stat().st_size, path, max_data_bytes(max_bytes), check)
    except (OSError, EOFError) as exc:
        raise DataError(f"{path}: cannot read as .npy: {exc}") from None


def load_npz_arrays(path: str | os.PathLike, keys=None, max_bytes: int | None = None, check=None) -> dict:
    """Read arrays from a ``.npz`` (a zip of ``.npy`` files), each checked as :func:`load_npy` does.

    Parameters
    ----------
    path : path to the file.
    keys : arrays to read (all when None); a missing one is a DataError listing those found.
    max_bytes : cap on each array's payload (default :func:`max_data_bytes`).
    check : ``check(shape, dtype, key)``, called for each array before it is allocated.

    Returns
    -------
    dict of the arrays by name, in archive order.
    """
    path = Path(path)
    _need_file(path)
    cap = max_data_bytes(max_bytes)
    try:
        with zipfile.ZipFile(path) as archive:
            members = {info.filename[:-4]: info for info in archive.infolist() if info.filename.endswith(".npy")}
            wanted = list(members) if keys is None else list(keys)
            missing = [key for key in wanted if key not in members]
            if missing:
                raise DataError(f"{path}: needs arrays {', '.join(repr(k) for k in wanted)}, found "
                                f"{sorted(members) or 'none'}")
            arrays = {}
            for key in wanted:
                info = members[key]
                where = f"{path}[{key}]"
                member_check = None if check is None else (lambda shape, dtype, key=key: check(shape, dtype, key))
                with archive.open(info) as handle:
                    arrays[key] = _npy_array(handle, info.file_size, where, cap, member_check)
            return arrays
    except DataError:
        raise
    except (OSError, EOFError, ValueError, zlib.error, zipfile.BadZipFile, zipfile.LargeZipFile,
            NotImplementedError, RuntimeError) as exc:  # RuntimeError: an encrypted member
        raise DataError(f"{path}: cannot read as .npz: {str(exc).splitlines()[0] if str(exc) else exc}") from None


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
