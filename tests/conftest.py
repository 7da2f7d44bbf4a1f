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
