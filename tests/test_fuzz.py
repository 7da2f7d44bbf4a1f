"""Property-based fuzzing of everything that reads user input: only daelab's own errors may come out.

Inputs: IDX files (raw and gzip, lying headers), ``.npz`` datasets (images and labels), ``.npy``/``.npz``
headers of any shape and dtype, PNGs of any declared size, bit depth and colour type, noise specs and
config files. The suite runs a quick profile; ``HYPOTHESIS_PROFILE=fuzz pytest tests/test_fuzz.py``
runs the long one.
"""
import gzip
import io
import struct
import zlib

import numpy as np
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from daelab.config import build_config, read_config_file
from daelab.data import MAX_CLASSES, Dataset, load_npy, load_npz, load_npz_arrays, read_idx, write_idx
from daelab.denoise import read_image_file
from daelab.errors import DaelabError
from daelab.noise import parse_noise_list
from daelab.train import TrainConfig

settings.register_profile("ci", max_examples=60, deadline=None,
                          suppress_health_check=[HealthCheck.function_scoped_fixture])
settings.register_profile("fuzz", max_examples=3000, deadline=None,
                          suppress_health_check=[HealthCheck.function_scoped_fixture])
settings.load_profile(__import__("os").environ.get("HYPOTHESIS_PROFILE", "ci"))


def _only_our_errors(call):
    try:
        return call()
    except DaelabError as exc:
        assert str(exc) and "\n" not in str(exc)
        return None


VALID_IDX = struct.pack(">HBB", 0, 0x08, 3) + struct.pack(">3I", 2, 4, 4) + bytes(range(32))


@given(st.binary(max_size=200))
def test_idx_random_bytes(tmp_path, data):
    for compress in (False, True):
        path = tmp_path / "f.idx"
        path.write_bytes(gzip.compress(data) if compress else data)
        _only_our_errors(lambda path=path: read_idx(path))


@given(st.lists(st.tuples(st.integers(0, len(VALID_IDX) - 1), st.integers(0, 255)), max_size=6),
       st.integers(0, len(VALID_IDX)))
def test_idx_mutated_valid_file(tmp_path, flips, cut):
    data = bytearray(VALID_IDX)
    for position, value in flips:
        data[position] = value
    path = tmp_path / "f.idx"
    path.write_bytes(bytes(data[:cut]) if cut else bytes(data))
    array = _only_our_errors(lambda: read_idx(path))
    if array is not None:  # whatever it accepted is consistent with its header
        assert array.size * array.itemsize <= len(data)


@given(st.lists(st.integers(0, 2**32 - 1), min_size=1, max_size=4), st.booleans(), st.integers(0, 4096))
@example([0, 20048, 20048, 2_868_518_351], False, 0)  # found by the fuzz profile: numpy refused the empty shape
@example([0, 28, 28], True, 0)
def test_idx_lying_header_never_allocates(tmp_path, dims, compress, n_payload):
    path = tmp_path / "f.idx"
    data = struct.pack(">HBB", 0, 0x0E, len(dims)) + struct.pack(f">{len(dims)}I", *dims) + b"\0" * n_payload
    path.write_bytes(gzip.compress(data) if compress else data)
    array = _only_our_errors(lambda: read_idx(path, max_bytes=1 << 20))
    if array is not None:
        assert array.shape == tuple(dims) and array.nbytes == n_payload


@given(st.sampled_from([np.uint8, np.float32, np.float64, np.int64, np.bool_, np.complex64]),
       st.lists(st.integers(0, 6), min_size=0, max_size=4), st.sampled_from(["x", "images"]),
       st.floats(allow_nan=True, allow_infinity=True))
def test_npz_random_arrays(tmp_path, dtype, shape, key, fill):
    buffer = io.BytesIO()
    with np.errstate(all="ignore"):
        x = np.full(shape, fill if np.isfinite(fill) or dtype in (np.float32, np.float64) else 0).astype(dtype)
    np.savez(buffer, **{key: x, "y": np.arange(shape[0] if shape else 1)})
    path = tmp_path / "d.npz"
    path.write_bytes(buffer.getvalue())
    result = _only_our_errors(lambda: load_npz(path))
    if result is not None:
        images, labels = result
        assert images.ndim == 3 and len(labels) == len(images)
        assert images.dtype == np.uint8 or (np.isfinite(images).all() and images.min() >= 0 and images.max() <= 1)


LABEL_DTYPES = [np.int8, np.uint8, np.int32, np.int64, np.uint64, np.float32, np.float64, np.bool_]


@given(st.sampled_from(LABEL_DTYPES), st.lists(st.integers(-2**63, 2**64 - 1) | st.integers(-3, 12), min_size=1,
                                               max_size=8), st.integers(1, 2))
def test_labels(tmp_path, dtype, values, n_test):
    with np.errstate(all="ignore"):
        labels = np.array([v % 2**64 if dtype == np.uint64 else v for v in values], dtype=object)
        try:
            labels = labels.astype(dtype)
        except OverflowError:
            labels = np.array(values, dtype=np.float64).astype(dtype)
    images = np.zeros((len(labels), 4, 4), np.uint8)
    path = tmp_path / "d.npz"
    np.savez(path, x_train=images, y_train=labels, x_test=images[:n_test], y_test=labels[:n_test])
    from daelab.data import load_dataset
    dataset = _only_our_errors(lambda: load_dataset(path))
    built = _only_our_errors(lambda: Dataset(images, labels, images[:n_test], labels[:n_test]))
    assert (dataset is None) == (built is None)  # a loader and a hand-built Dataset agree
    if dataset is not None:
        assert dataset.train_labels.dtype == np.int64 and dataset.train_labels.min() >= 0
        assert dataset.n_classes <= MAX_CLASSES


NPY_DESCRS = ["<f4", ">f8", "|u1", ">u2", "<i8", "|b1", "<c8", "|O", "<U3", "|S0", "|V0", "|V4", "<M8[s]"]


@given(st.sampled_from(NPY_DESCRS), st.lists(st.integers(0, 2**40), max_size=4), st.booleans(),
       st.integers(0, 512), st.sampled_from(["npy", "npz"]))
@example("<f4", [0, 10188, 10188, 22_215_283_657], False, 0, "npy")  # found by the fuzz profile, as for IDX
def test_npy_headers(tmp_path, descr, shape, fortran, n_payload, kind):
    buffer = io.BytesIO()
    np.lib.format.write_array_header_1_0(buffer, {"descr": descr, "fortran_order": fortran, "shape": tuple(shape)})
    payload = buffer.getvalue() + bytes(range(256)) * (n_payload // 256) + bytes(n_payload % 256)
    path = tmp_path / f"a.{kind}"
    if kind == "npy":
        path.write_bytes(payload)
        array = _only_our_errors(lambda: load_npy(path, max_bytes=1 << 16))
        arrays = {} if array is None else {"": array}
    else:
        import zipfile
        with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as archive:
            archive.writestr("x.npy", payload)
        arrays = _only_our_errors(lambda: load_npz_arrays(path, max_bytes=1 << 16)) or {}
    for array in arrays.values():
        assert array.shape == tuple(shape) and array.nbytes == n_payload and not array.dtype.hasobject
    _only_our_errors(lambda: read_image_file(path, max_values=1 << 14))


@given(st.binary(max_size=300), st.sampled_from(["npy", "npz"]))
def test_npy_npz_random_bytes(tmp_path, data, kind):
    path = tmp_path / f"a.{kind}"
    path.write_bytes((b"\x93NUMPY\x01\x00" if kind == "npy" and data[:1] == b"v" else b"") + data)
    _only_our_errors(lambda: read_image_file(path, max_values=1 << 14))


PNG_DEPTHS = {0: (1, 2, 4, 8, 16), 2: (8, 16), 3: (1, 2, 4, 8), 4: (8, 16), 6: (8, 16)}


@given(st.sampled_from(sorted(PNG_DEPTHS)).flatmap(lambda c: st.tuples(st.just(c), st.sampled_from(PNG_DEPTHS[c]))),
       st.integers(0, 2**31 - 1) | st.integers(1, 40), st.integers(0, 2**31 - 1) | st.integers(1, 40),
       st.binary(max_size=64) | st.none(), st.sampled_from([None, (28, 28)]))
def test_png_headers_of_any_size_depth_and_colour(tmp_path, make_png, kind, width, height, idat, shape):
    (colour_type, depth) = kind
    path = tmp_path / "p.png"
    channels = {0: 1, 2: 3, 3: 1, 4: 2, 6: 4}[colour_type]
    if idat is None:  # a well-formed stream, when small enough to write
        if width * height > 4096:
            return
        row = (width * channels * depth + 7) // 8
        idat = zlib.compress(b"".join(b"\0" + bytes(range(row % 251 + 1)) * (row // (row % 251 + 1)) +
                                      bytes(row % (row % 251 + 1)) for _ in range(height)))
    path.write_bytes(make_png(width, height, depth, colour_type, idat=idat))
    item = _only_our_errors(lambda: read_image_file(path, shape, max_values=1 << 16))
    if item is not None:
        image = item.images[""]
        assert image.shape[-2:] == (height, width) and image.dtype == np.float32
        assert np.isfinite(image).all() and image.min() >= 0 and image.max() <= 1


@given(st.lists(st.integers(0, 65535), min_size=6, max_size=6))
def test_16_bit_gray_values_survive(tmp_path, make_png, values):
    path = tmp_path / "d.png"
    raw = np.array(values, np.uint16).reshape(2, 3)
    path.write_bytes(make_png(3, 2, 16, 0, raw.astype(">u2").tobytes()))
    item = read_image_file(path)
    np.testing.assert_array_equal(np.round(item.images[""] * 65535).astype(np.uint16), raw)


@given(st.text(max_size=40))
def test_noise_spec_text(spec):
    models = _only_our_errors(lambda: parse_noise_list(spec))
    for model in models or []:
        assert 0 <= model.level <= model.max_level


@given(st.text(max_size=200), st.sampled_from([".toml", ".yaml", ".json"]))
@example("?", ".yaml")  # a YAML null key, {None: None}: found by this test (AttributeError in build_config)
@example("1: 2\ntrain: {3: 4}", ".yaml")
def test_config_file_text(tmp_path, text, suffix):
    path = tmp_path / f"c{suffix}"
    path.write_text(text)
    values = _only_our_errors(lambda: read_config_file(path))
    if values is not None:
        _only_our_errors(lambda: build_config(TrainConfig, values, None, "train"))


@given(st.dictionaries(st.sampled_from(["epochs", "lr", "noise", "batch_size", "subset", "precision", "seed"]),
                       st.one_of(st.integers(-5, 5), st.floats(allow_nan=True), st.text(max_size=8), st.booleans(),
                                 st.none())))
def test_config_values(values):
    _only_our_errors(lambda: build_config(TrainConfig, {"train": values}, None, "train"))


def test_round_trip_still_works(tmp_path):
    write_idx(tmp_path / "ok.gz", np.ones((2, 3, 3), np.uint8))
    assert read_idx(tmp_path / "ok.gz").sum() == 18


@pytest.mark.parametrize("text", ["[train]\nepochs = 1e400\n",
                                  "train:\n  epochs: !!python/object/apply:os.system ['true']\n"])
def test_config_edge_cases(tmp_path, text):
    path = tmp_path / ("c.toml" if text.startswith("[") else "c.yaml")
    path.write_text(text)
    with pytest.raises(DaelabError):
        build_config(TrainConfig, read_config_file(path), None, "train")
