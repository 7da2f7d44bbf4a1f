"""IDX round trips, every kind of corrupt file, npz loading and dataset discovery."""
import gzip
import struct

import numpy as np
import pytest

from daelab.data import DataError, load_dataset, load_idx_pair, load_npz, read_idx, to_tensor, write_idx


@pytest.mark.parametrize("name", ["a.idx", "a.idx.gz"])
@pytest.mark.parametrize("dtype", [np.uint8, np.int8, np.int16, np.int32, np.float32, np.float64])
def test_idx_round_trip(tmp_path, name, dtype):
    array = (np.arange(2 * 3 * 4) - 5).astype(dtype).reshape(2, 3, 4)
    write_idx(tmp_path / name, array)
    back = read_idx(tmp_path / name)
    assert back.dtype == np.dtype(dtype) and back.shape == (2, 3, 4)
    np.testing.assert_array_equal(back, array)


def _write_raw(path, data: bytes, compress=False):
    path.write_bytes(gzip.compress(data) if compress else data)
    return path


def _header(code=0x08, dims=(2, 2, 2)):
    return struct.pack(">HBB", 0, code, len(dims)) + struct.pack(f">{len(dims)}I", *dims)


@pytest.mark.parametrize("compress", [False, True])
@pytest.mark.parametrize("data,words", [
    (b"", "truncated header"),
    (b"\x01\x02\x08\x03" + b"\0" * 20, "wrong magic"),
    (struct.pack(">HBB", 0, 0x42, 1) + b"\0" * 8, "wrong magic"),
    (_header()[:7], "truncated header"),
    (_header() + b"\0" * 5, "truncated data"),
    (_header() + b"\0" * 9, "trailing bytes"),
    (_header(dims=(1_000_000, 1_000_000, 1000)), "over the"),
])
def test_corrupt_idx_raises_clear_error(tmp_path, data, words, compress):
    path = _write_raw(tmp_path / "bad.idx", data, compress)
    with pytest.raises(DataError, match=words) as info:
        read_idx(path)
    assert "bad.idx" in str(info.value)


def test_corrupt_gzip_stream(tmp_path):
    good = gzip.compress(_header() + b"\0" * 8)
    path = _write_raw(tmp_path / "bad.gz", good[:-6] + b"garbage")
    with pytest.raises(DataError, match="bad.gz"):
        read_idx(path)


def test_missing_file():
    with pytest.raises(DataError, match="no such file"):
        read_idx("/nonexistent/file.idx")


def test_pair_count_mismatch(tmp_path):
    write_idx(tmp_path / "img.gz", np.zeros((3, 28, 28), np.uint8))
    write_idx(tmp_path / "lab.gz", np.zeros(2, np.uint8))
    with pytest.raises(DataError, match="count mismatch"):
        load_idx_pair(tmp_path / "img.gz", tmp_path / "lab.gz")


def _fake_fashion(directory, n=5):
    rng = np.random.default_rng(0)
    for prefix, count in (("train", n), ("t10k", 3)):
        write_idx(directory / f"{prefix}-images-idx3-ubyte.gz", rng.integers(0, 256, (count, 28, 28), dtype=np.uint8))
        write_idx(directory / f"{prefix}-labels-idx1-ubyte.gz", rng.integers(0, 10, count).astype(np.uint8))


def test_load_dataset_search_order(tmp_path, monkeypatch):
    first, second = tmp_path / "first", tmp_path / "second"
    first.mkdir(), second.mkdir()
    _fake_fashion(first, n=5)
    _fake_fashion(second, n=7)
    monkeypatch.setenv("DAELAB_DATA", str(second))
    assert len(load_dataset(first).train_images) == 5  # explicit dir wins
    assert len(load_dataset().train_images) == 7       # then $DAELAB_DATA
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(DataError, match="no dataset there"):
        load_dataset(empty)


def test_not_found_says_how_to_get_it(tmp_path, monkeypatch):
    monkeypatch.delenv("DAELAB_DATA", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    monkeypatch.setattr("daelab.data.SYSTEM_DIR", tmp_path / "nothing")
    with pytest.raises(DataError, match="apt-get install -y dataset-fashion-mnist"):
        load_dataset()


def test_npz_loading(tmp_path):
    x = np.random.default_rng(0).random((4, 784)).astype(np.float32)
    np.savez(tmp_path / "one.npz", x_train=x, y_train=np.arange(4), x_test=x[:2], y_test=np.arange(2))
    dataset = load_dataset(tmp_path / "one.npz")
    assert dataset.train_images.shape == (4, 28, 28) and dataset.test_labels.tolist() == [0, 1]
    np.savez(tmp_path / "bad.npz", x=x * 2, y=np.arange(4))
    with pytest.raises(DataError, match=r"\[0, 1\]"):
        load_npz(tmp_path / "bad.npz")
    np.savez(tmp_path / "nan.npz", x=np.full((2, 4, 4), np.nan), y=np.arange(2))
    with pytest.raises(DataError, match="NaN"):
        load_npz(tmp_path / "nan.npz")
    (tmp_path / "junk.npz").write_bytes(b"not a zip")
    with pytest.raises(DataError, match="junk.npz"):
        load_npz(tmp_path / "junk.npz")
    np.savez(tmp_path / "obj.npz", x=np.array([object()], dtype=object), y=np.arange(1))
    with pytest.raises(DataError):
        load_npz(tmp_path / "obj.npz")


def test_to_tensor_layouts():
    images = np.full((2, 28, 28), 255, np.uint8)
    flat, image = to_tensor(images), to_tensor(images, "image")
    assert flat.shape == (2, 784) and image.shape == (2, 1, 28, 28)
    assert flat.dtype.is_floating_point and float(flat.max()) == 1.0
