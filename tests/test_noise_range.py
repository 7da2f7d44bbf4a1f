"""The gaussian_range noise (per-image std S * U(0, 1)**2) used to train blind conv denoisers."""
from __future__ import annotations

import torch

from daelab.noise import parse_noise


def test_std_is_drawn_per_image_up_to_the_level():
    noise = parse_noise("gaussian_range:0.3")
    clean = torch.full((4000, 1, 16, 16), 0.5)
    stds = (noise(clean, torch.Generator().manual_seed(0)) - clean).flatten(1).std(1)
    assert float(stds.max()) < 0.33 and float(stds.min()) < 0.01
    # s = 0.3 * u**2: mean 0.3 / 3 = 0.1, median 0.3 / 4 = 0.075
    assert abs(float(stds.mean()) - 0.1) < 0.006
    assert abs(float(stds.quantile(0.5)) - 0.075) < 0.008


def test_seeded_and_clipped():
    noise = parse_noise("gaussian_range:1")
    clean = torch.rand(8, 784)
    first = noise(clean, torch.Generator().manual_seed(3))
    torch.testing.assert_close(first, noise(clean, torch.Generator().manual_seed(3)))
    assert float(first.min()) >= 0 and float(first.max()) <= 1
