"""Shared fixtures: a tiny synthetic image set (no network, no Debian data) and a trained tiny run."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from daelab.data import Dataset

torch.set_num_threads(2)


def make_synthetic(n_train: int = 600, n_test: int = 200, size: int = 28, seed: int = 0) -> Dataset:
    """Ten classes of easy-to-tell uint8 images: class k is a bar at one of ten positions/orientations,
    plus a little noise, so both denoisers and classifiers have something real to learn."""
    rng = np.random.default_rng(seed)

    def draw(n):
        labels = rng.integers(0, 10, n)
        images = rng.integers(0, 30, (n, size, size)).astype(np.float32)
        for i, k in enumerate(labels):
            pos = 3 + (k % 5) * (size - 6) // 5
            if k < 5:
                images[i, :, pos:pos + 3] += 200
            else:
                images[i, pos:pos + 3, :] += 200
        return np.clip(images, 0, 255).astype(np.uint8), labels.astype(np.int64)

    return Dataset(*draw(n_train), *draw(n_test), source="synthetic")


@pytest.fixture(scope="session")
def tiny_dataset() -> Dataset:
    return make_synthetic()


@pytest.fixture(scope="session")
def npz_data(tmp_path_factory, tiny_dataset):
    """The synthetic set as an ``.npz`` a ``--data-dir`` takes (for tests through the CLI)."""
    path = tmp_path_factory.mktemp("data") / "tiny.npz"
    d = tiny_dataset
    np.savez(path, x_train=d.train_images, y_train=d.train_labels, x_test=d.test_images, y_test=d.test_labels)
    return path


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory, tiny_dataset):
    """A run directory holding the study's MLP trained 2 epochs on the synthetic set."""
    from daelab.models import ModelConfig
    from daelab.train import TrainConfig, fit
    run_dir = tmp_path_factory.mktemp("tiny_run")
    fit(ModelConfig(), TrainConfig(epochs=2, batch_size=64, seed=0), run_dir, dataset=tiny_dataset, progress=False)
    return run_dir


# tests import helper modules that live beside them (killharness)
import sys  # noqa: E402
from pathlib import Path  # noqa: E402

sys.path.insert(0, str(Path(__file__).parent))


def png_bytes(width: int, height: int, bit_depth: int = 8, colour_type: int = 0, pixels: bytes | None = None,
              idat: bytes | None = None) -> bytes:
    """A PNG written by hand, so tests can make what Pillow will not: 16-bit colour, or a header
    claiming any size over a tiny (or absent) payload. ``pixels`` are the raw rows without filter
    bytes; ``idat`` replaces the compressed stream outright."""
    import struct
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    if idat is None:
        row = (width * {0: 1, 2: 3, 3: 1, 4: 2, 6: 4}[colour_type] * bit_depth + 7) // 8
        idat = zlib.compress(b"".join(b"\0" + pixels[i * row:(i + 1) * row] for i in range(height)))
    header = struct.pack(">IIBBBBB", width, height, bit_depth, colour_type, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


@pytest.fixture(scope="session")
def make_png():
    """:func:`png_bytes`, for tests (and hypothesis tests, which cannot import conftest)."""
    return png_bytes
