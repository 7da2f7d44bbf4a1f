"""The Set12 protocol: unclipped awgn noise, 8-bit PSNR/SSIM, evaluation on an image folder, and seamless tiling."""
from __future__ import annotations

import importlib.util
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from daelab import seeds
from daelab.errors import ConfigError
from daelab.evaluate._images import draw_noisy_image, evaluate_images
from daelab.evaluate._metrics import psnr8, quantize8, ssim8
from daelab.noise import parse_noise, parse_noise_list
from daelab.tiling import tile_apply, tile_starts

SET12 = Path(__file__).resolve().parents[2] / "shared" / "data" / "natural" / "Set12"
HAS_BM3D = importlib.util.find_spec("bm3d") is not None


def gen(seed=0):
    return torch.Generator().manual_seed(seed)


# ------------------------------------------------------------------------------------- noise
def test_awgn_is_unclipped_with_std_s_over_255():
    clean = torch.full((400_000,), 0.02)
    noisy = parse_noise("awgn:25")(clean, gen())
    delta = noisy - clean
    assert abs(float(delta.std()) - 25 / 255) < 3 * (25 / 255) / math.sqrt(2 * len(clean))  # 3 sigma of the std
    assert abs(float(delta.mean())) < 3 * (25 / 255) / math.sqrt(len(clean))
    assert float(noisy.min()) < 0  # not clipped: a dark pixel goes below 0
    assert float(parse_noise("awgn:25")(torch.ones(10_000), gen()).max()) > 1
    assert parse_noise("awgn:25").nominal_std == pytest.approx(25 / 255)
    assert not parse_noise("awgn:25").clipped and parse_noise("gaussian:0.1").clipped


def test_awgn_range_draws_one_std_per_patch_within_the_range():
    noise = parse_noise("awgn_range:10-40")
    clean = torch.full((500, 1, 64, 64), 0.5)
    stds = (noise(clean, gen()) - clean).flatten(1).std(dim=1) * 255   # each patch's own std
    spread = 40 / math.sqrt(2 * 64 * 64) * 4                           # 4 sigma of one patch's std
    assert float(stds.min()) > 10 - spread and float(stds.max()) < 40 + spread
    assert float(stds.min()) < 13 and float(stds.max()) > 37              # the whole range is used
    assert abs(float(stds.mean()) - 25) < 1.5                           # uniform: mean (A + B) / 2
    assert torch.equal(noise(clean, gen(3)), noise(clean, gen(3)))


def test_awgn_specs_parse_beside_comma_lists_and_old_specs():
    assert [n.spec for n in parse_noise_list("awgn:15,25,50")] == ["awgn:15", "awgn:25", "awgn:50"]
    assert [n.spec for n in parse_noise_list("awgn_range:0-55,5-10 gaussian:1e-3")] == \
        ["awgn_range:0-55", "awgn_range:5-10", "gaussian:0.001"]
    assert parse_noise("awgn_range:55").spec == "awgn_range:0-55"
    with pytest.raises(ConfigError, match="takes one level"):
        parse_noise("awgn:15-25")
    with pytest.raises(ConfigError, match="backwards"):
        parse_noise("awgn_range:50-10")
    with pytest.raises(ConfigError, match="out of range"):
        parse_noise("awgn:256")
    with pytest.raises(ConfigError, match="out of range"):
        parse_noise("gaussian:-0.1")


# ------------------------------------------------------------------------------------- metrics
def test_quantize8_and_psnr8_match_a_hand_computation():
    np.testing.assert_array_equal(quantize8(np.array([-0.2, 0.0, 0.5, 0.999, 1.7, 10.4 / 255])),
                                  np.array([0, 0, 128, 255, 255, 10]) / 255)
    clean = np.array([[10, 20], [30, 40]], np.uint8)
    # outputs 12.4 -> 12, 20.6 -> 21, -3 -> 0 (clipped), 40 -> 40: errors 2, 1, 30, 0
    output = np.array([[12.4, 20.6], [-3.0, 40.0]]) / 255
    mse = (4 + 1 + 900 + 0) / 4
    assert psnr8(clean, output) == pytest.approx(10 * math.log10(255 ** 2 / mse))
    assert psnr8(clean, clean / 255) == 100.0  # capped, like the study's PSNR
    with pytest.raises(TypeError, match="uint8"):
        psnr8(clean.astype(np.float32), output)


def test_ssim8_is_one_for_a_perfect_output_and_sees_the_8_bit_rounding():
    from skimage.metrics import structural_similarity
    rng = np.random.default_rng(0)
    clean = (np.add.outer(np.arange(40), np.arange(40)) * 3).astype(np.uint8)   # a smooth ramp
    assert ssim8(clean, clean / 255 + 0.3 / 255) == pytest.approx(1.0)  # rounds back to the clean image
    noisy = clean / 255 + rng.normal(0, 20 / 255, clean.shape)
    levels = np.round(np.clip(noisy, 0, 1) * 255)
    # Wang et al.'s SSIM on the 0-255 scale: 11x11 Gaussian window, sigma 1.5, population covariances
    expected = structural_similarity(clean.astype(np.float64), levels, data_range=255, gaussian_weights=True,
                                     sigma=1.5, use_sample_covariance=False)
    assert ssim8(clean, noisy) == pytest.approx(expected) and expected < 0.8


# ------------------------------------------------------------------------------------- evaluation
@pytest.fixture
def two_images(tmp_path):
    folder = tmp_path / "pair"
    folder.mkdir()
    yy, xx = np.mgrid[0:40, 0:48]
    Image.fromarray((127 + 100 * np.sin(xx / 5.0) * np.cos(yy / 7.0)).astype(np.uint8)).save(folder / "one.png")
    Image.fromarray(((xx // 8 + yy // 8) % 2 * 180 + 30).astype(np.uint8)).save(folder / "two.png")
    return folder


def test_evaluate_images_rows_and_files(two_images, tmp_path):
    out = tmp_path / "out"
    result = evaluate_images(None, two_images, noise="awgn:15,50", baselines="tv", seed=0, out=out, progress=False)
    saved = json.loads((out / "evaluation.json").read_text())
    rows = saved["image_results"]
    assert [(r["noise"], r["method"]) for r in rows] == [("awgn:15", "noisy"), ("awgn:15", "tv"),
                                                         ("awgn:50", "noisy"), ("awgn:50", "tv")]
    for row in rows:
        assert set(row) >= {"noise", "method", "psnr", "ssim", "n_images", "seconds_per_image", "per_image"}
        assert row["n_images"] == 2 and set(row["per_image"]) == {"one.png", "two.png"}
        assert row["psnr"] == pytest.approx(np.mean([v["psnr"] for v in row["per_image"].values()]))
    noisy15 = rows[0]
    # the noisy row's unquantized PSNR is 20 log10(255 / 15) up to sampling (unclipped noise)
    assert noisy15["psnr_float"] == pytest.approx(20 * math.log10(255 / 15), abs=0.15)
    assert rows[1]["psnr"] > noisy15["psnr"] and rows[3]["psnr"] > rows[2]["psnr"]   # tv denoises
    assert (out / "evaluation.md").read_text().count("| tv |") == 2 and (out / "crops.png").stat().st_size > 0
    assert result["image_results"] == rows


def test_every_method_sees_the_same_seeded_noise(two_images, tmp_path):
    seen = []
    result = evaluate_images(lambda noisy: seen.append(noisy.copy()) or noisy, two_images, noise="awgn:25",
                             baselines="none", seed=4, progress=False)
    clean = np.asarray(Image.open(two_images / "one.png"))
    np.testing.assert_array_equal(seen[0], draw_noisy_image(clean, parse_noise("awgn:25"), 4, "one.png"))
    assert seen[0].min() < 0 or seen[0].max() > 1   # the model gets the unclipped image
    model, noisy = result["image_results"]
    assert model["method"] == "model" and model["per_image"] == noisy["per_image"]  # identity = noisy
    other = draw_noisy_image(clean, parse_noise("awgn:25"), 5, "one.png")
    assert not np.array_equal(seen[0], other)
    assert seeds.image_noise_generator(4, "awgn:25", "one.png").initial_seed() != \
        seeds.image_noise_generator(4, "awgn:25", "two.png").initial_seed()


@pytest.mark.skipif(not HAS_BM3D, reason="bm3d not installed (pip install 'daelab[bm3d]')")
@pytest.mark.skipif(not SET12.is_dir(), reason="Set12 not found beside the repository")
def test_bm3d_denoises_two_set12_crops(tmp_path):
    image = np.asarray(Image.open(SET12 / "01.png"))
    for name, (top, left) in {"a.png": (60, 60), "b.png": (150, 120)}.items():
        Image.fromarray(image[top:top + 64, left:left + 64]).save(tmp_path / name)
    result = evaluate_images(None, tmp_path, noise="awgn:25", baselines="bm3d", progress=False)
    noisy, bm3d = result["image_results"]
    assert bm3d["method"] == "bm3d" and bm3d["psnr"] > noisy["psnr"] + 5


# ------------------------------------------------------------------------------------- tiling
def small_conv(layers: int = 3) -> torch.nn.Module:
    torch.manual_seed(0)
    stack = []
    for i in range(layers):
        stack.append(torch.nn.Conv2d(1 if i == 0 else 4, 1 if i == layers - 1 else 4, 3, padding=1))
        if i < layers - 1:
            stack.append(torch.nn.ReLU())
    return torch.nn.Sequential(*stack).eval()


def as_fn(net):
    @torch.inference_mode()
    def fn(image):
        return net(torch.from_numpy(image)[None, None])[0, 0].numpy()
    return fn


def test_tiled_output_equals_the_whole_image_output_without_seams():
    # three 3x3 convolutions reach 3 px; margin = overlap // 4 = 4 >= 3, so every used pixel is exact
    image = np.random.default_rng(0).random((100, 90), dtype=np.float32)
    fn = as_fn(small_conv(3))
    whole, tiled = fn(image), tile_apply(fn, image, tile=32, overlap=16)
    error = np.abs(tiled - whole)
    assert error.max() < 1e-5
    def cuts(size):  # the rows (columns) where a tile starts or ends inside the image
        starts = tile_starts(size, 32, 16)
        return sorted(({s for s in starts if s} | {s + 32 for s in starts}) - {size})
    assert cuts(100) and cuts(90)
    on_cuts = max([error[c - 1:c + 1].max() for c in cuts(100)] + [error[:, c - 1:c + 1].max() for c in cuts(90)])
    interior = error[40:50, 40:50].max()
    assert on_cuts <= max(interior, 1e-6) * 10  # no seam: the cut lines are as exact as the inside


def test_tiling_control_a_model_reaching_past_the_margin_shows_the_cuts():
    # the same test can fail: with margin 0 the outputs next to a cut (zero padding there) are blended in
    image = np.random.default_rng(1).random((100, 90), dtype=np.float32)
    fn = as_fn(small_conv(3))
    error = np.abs(tile_apply(fn, image, tile=32, overlap=16, margin=0) - fn(image))
    assert error.max() > 1e-3
    assert np.array_equal(tile_apply(fn, image[:20, :30], tile=32, overlap=16), fn(image[:20, :30]))
