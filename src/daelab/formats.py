"""On-disk array formats: IDX (raw or gzip), ``.npy`` and ``.npz`` read into one numpy array each, never trusted.

This module owns the bytes -> array hop and nothing above it: no labels, no datasets, no pixels'
meaning (:mod:`daelab.data` builds datasets from these arrays, :mod:`daelab.images` pictures and
images to denoise). A header's claim is checked against the cap (:data:`MAX_IDX_BYTES`,
``$DAELAB_MAX_DATA_BYTES``) and against what the file can hold (its size, the most a gzip of its
size inflates to, a zip member's declared size) *before* anything is allocated; the payload is then
read once, in bounded chunks, into the one array; nothing is unpickled; and every failure is a
:class:`~daelab.errors.DataError` naming the file. :func:`write_idx` writes the IDX the readers read.
"""
from __future__ import annotations

import gzip
import os
import struct
import zipfile
import zlib
from pathlib import Path

import numpy as np

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
_CHUNK = 1 << 20  # readinto on a gzip stream reads a chunk, then copies it: keep the extra small
# Deflate cannot shrink data more than about 1032:1 (RFC 1951: at best 258 bytes per 2-bit code
# pair), so a gzip of S bytes inflates to at most ~1032*S: a header claiming more is a lie.
_DEFLATE_MAX_RATIO = 1032


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
