"""The shipped natural-gray denoiser: it loads with no training, denoises photos of any size, and is good at it.

Quality is checked on seeded synthetic piecewise-smooth images (in every clone) and, where the
published protocol's Set12 lies beside the repository, on crops of three of its photos.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from daelab.cli import main
from daelab.denoise import denoise_image
from daelab.evaluate import psnr8
from daelab.pretrained import describe, list_models, load_pretrained

SET12 = Path(__file__).resolve().parents[2] / "shared" / "data" / "natural" / "Set12"


@pytest.fixture(scope="module")
def model():
    torch.set_num_threads(min(2, torch.get_num_threads()))
    return load_pretrained("natural-gray")[0]


def scene(size: int, seed: int) -> np.ndarray:
    """A seeded piecewise-smooth uint8 image: a gradient with discs and stripes (edges and flat areas)."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:size, 0:size] / size
    image = 0.25 + 0.5 * x * y
    for _ in range(10):
        cy, cx, r = rng.random(3) * [1, 1, 0.25]
        image[(y - cy) ** 2 + (x - cx) ** 2 < r ** 2] = 0.1 + 0.8 * rng.random()
    image[:, (np.arange(size) // 6) % 5 == 0] *= 0.6
    return np.round(np.clip(image, 0, 1) * 255).astype(np.uint8)


def awgn(clean: np.ndarray, std: float, seed: int) -> np.ndarray:
    """The protocol's noisy input of a uint8 image: [0, 1] scale plus std/255 * N(0, 1), not clipped."""
    return (clean / 255.0 + std / 255 * np.random.default_rng(seed).standard_normal(clean.shape)).astype(np.float32)


def test_manifest_entry_says_what_it_is_and_what_it_measured():
    entry = next(e for e in list_models() if e["name"] == "natural-gray")
    assert entry["model_config"]["name"] == "resunet"
    assert entry["train_config"]["noise"] == "awgn_range:0-55"
    measured = entry["measured"]
    for noise in ("awgn:15", "awgn:25", "awgn:50"):
        # the model's Set12 figure, above the noisy input's by several dB, beside BM3D's
        assert measured["psnr_db"][noise] > measured["noisy_psnr_db"][noise] + 5
        assert noise in measured["baselines_psnr_db"]["bm3d"]
    assert "natural-gray" in describe() and "Train400" in str(entry["data"])


@pytest.mark.parametrize("std,gain", [(15, 4.0), (25, 6.0), (50, 8.0)])
def test_denoises_synthetic_scenes_at_every_protocol_level(model, std, gain):
    clean = scene(96, seed=std)
    noisy = awgn(clean, std, seed=1)
    out = denoise_image(model, noisy, unclipped=True)
    assert out.shape == clean.shape and out.dtype == np.float32
    assert psnr8(clean, out) > psnr8(clean, noisy) + gain


def test_odd_sized_and_tiled_images_match_whole_ones(model):
    clean = scene(75, seed=3)[:, :61]
    noisy = awgn(clean, 25, seed=2)
    whole = denoise_image(model, noisy, unclipped=True)
    tiled = denoise_image(model, noisy, tile=64, overlap=0, unclipped=True)  # tiles grow to fit the reach
    assert whole.shape == (75, 61)
    np.testing.assert_allclose(tiled, whole, atol=2e-5)


@pytest.mark.skipif(not SET12.is_dir(), reason="Set12 not found beside the repository")
def test_beats_the_noisy_input_by_a_margin_on_set12_crops(model):
    from daelab.folders import load_image_folder
    images = load_image_folder(SET12)
    gains = []
    for k, image in enumerate(images.images[:3]):
        crop = image[64:160, 64:160]
        noisy = awgn(crop, 25, seed=k)
        gains.append(psnr8(crop, denoise_image(model, noisy, unclipped=True)) - psnr8(crop, noisy))
    assert min(gains) > 5.0 and sum(gains) / len(gains) > 7.0, gains  # the untrained identity gains 0


def test_cli_denoises_a_png_with_the_shipped_name(tmp_path):
    clean = scene(80, seed=5)
    noisy = np.clip(awgn(clean, 25, seed=4), 0, 1)
    path = tmp_path / "photo.png"
    Image.fromarray(np.round(noisy * 255).astype(np.uint8)).save(path)
    assert main(["denoise", "natural-gray", str(path), "--out", str(tmp_path / "out")]) == 0
    out = np.asarray(Image.open(tmp_path / "out" / "photo.denoised.png"), np.float32) / 255
    assert out.shape == clean.shape
    assert psnr8(clean, out) > psnr8(clean, noisy) + 5
