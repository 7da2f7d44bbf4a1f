"""Property-based fuzzing of everything that reads user input: only daelab's own errors may come out.

The suite runs a quick profile; ``HYPOTHESIS_PROFILE=fuzz pytest tests/test_fuzz.py`` runs the long one.
"""
import gzip
import io
import struct

import numpy as np
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from daelab.config import build_config, read_config_file
from daelab.data import load_npz, read_idx, write_idx
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


@given(st.lists(st.integers(0, 2**32 - 1), min_size=1, max_size=4))
def test_idx_lying_header_never_allocates(tmp_path, dims):
    path = tmp_path / "f.idx"
    path.write_bytes(struct.pack(">HBB", 0, 0x0E, len(dims)) + struct.pack(f">{len(dims)}I", *dims) + b"\0" * 64)
    _only_our_errors(lambda: read_idx(path, max_bytes=1 << 20))


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
