"""Noise statistics, clipping, determinism under a seed, and spec errors."""
import math

import pytest
import torch

from daelab.errors import ConfigError
from daelab.noise import parse_noise, parse_noise_list

HALF = torch.full((200_000,), 0.5)


def gen(seed=0):
    return torch.Generator().manual_seed(seed)


def test_gaussian_statistics_and_clipping():
    noisy = parse_noise("gaussian:0.1")(HALF, gen())
    delta = noisy - HALF
    assert abs(float(delta.mean())) < 2e-3 and abs(float(delta.std()) - 0.1) < 2e-3
    clipped = parse_noise("gaussian:0.5")(torch.zeros(10_000), gen())
    assert float(clipped.min()) == 0.0 and float(clipped.max()) <= 1.0
    assert 0.45 < float((clipped == 0).float().mean()) < 0.55  # half the draws are negative


def test_uniform_statistics():
    delta = parse_noise("uniform:0.2")(HALF, gen()) - HALF
    assert float(delta.abs().max()) <= 0.2 + 1e-6
    assert abs(float(delta.std()) - 0.2 / math.sqrt(3)) < 2e-3
    assert parse_noise("uniform:0.2").nominal_std == pytest.approx(0.2 / math.sqrt(3))


def test_salt_pepper_and_masking_fractions():
    noisy = parse_noise("salt_pepper:0.1")(HALF, gen())
    assert abs(float((noisy == 0).float().mean()) - 0.05) < 3e-3
    assert abs(float((noisy == 1).float().mean()) - 0.05) < 3e-3
    masked = parse_noise("masking:0.25")(HALF, gen())
    assert abs(float((masked == 0).float().mean()) - 0.25) < 5e-3
    assert set(masked.unique().tolist()) == {0.0, 0.5}


@pytest.mark.parametrize("spec", ["gaussian:0.1", "uniform:0.3", "salt_pepper:0.2", "masking:0.5"])
def test_determinism_and_no_mutation(spec):
    clean = torch.rand(64, 784, generator=gen(1))
    before = clean.clone()
    noise = parse_noise(spec)
    a, b, c = noise(clean, gen(7)), noise(clean, gen(7)), noise(clean, gen(8))
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert torch.equal(clean, before)
    assert float(a.min()) >= 0 and float(a.max()) <= 1


def test_zero_level_is_identity():
    clean = torch.rand(100)
    for name in ("gaussian", "uniform", "salt_pepper", "masking"):
        assert torch.equal(parse_noise(f"{name}:0")(clean, gen()), clean)


def test_spec_lists_and_errors():
    assert [n.spec for n in parse_noise_list("uniform:0.05,0.1 gaussian:0.1")] == \
        ["uniform:0.05", "uniform:0.1", "gaussian:0.1"]
    with pytest.raises(ConfigError, match="valid: gaussian, uniform, salt_pepper, masking"):
        parse_noise("poisson:0.1")
    with pytest.raises(ConfigError, match="out of range"):
        parse_noise("masking:1.5")
    with pytest.raises(ConfigError, match="not a number"):
        parse_noise("gaussian:abc")
    with pytest.raises(ConfigError, match="no level"):
        parse_noise("gaussian")
    with pytest.raises(ConfigError, match="out of range"):
        parse_noise("gaussian:nan")
