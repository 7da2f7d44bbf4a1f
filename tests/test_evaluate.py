"""Denoising evaluation: metrics on known cases, the shared noise draw, the JSON, figures and CLI errors."""
from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from skimage.metrics import peak_signal_noise_ratio, structural_similarity

from daelab.cli import main
from daelab.errors import ConfigError
from daelab.evaluate import EvalConfig, draw_noisy, evaluate_run, noise_seed, run_dae
from daelab.evaluate._baselines import DENOISERS, Denoiser, resolve_denoisers
from daelab.evaluate._metrics import PSNR_CAP_DB, image_metrics, psnr_from_mse, ssim_per_image
from daelab.noise import parse_noise
from daelab.stats import mean_ci


@pytest.fixture(scope="module")
def images():
    rng = np.random.default_rng(1)
    return rng.random((7, 28, 28))


# ------------------------------------------------------------------------------------ metrics
def test_identical_images_give_zero_mse_capped_psnr_and_unit_ssim(images):
    metrics = image_metrics(images, images.copy())
    assert np.all(metrics["mse"] == 0.0)
    assert np.all(metrics["psnr"] == PSNR_CAP_DB)  # finite, so means and JSON stay valid
    np.testing.assert_allclose(metrics["ssim"], 1.0, atol=1e-12)
    assert mean_ci(metrics["psnr"])["mean"] == PSNR_CAP_DB


def test_constant_offset_has_known_mse_and_psnr():
    clean = np.full((3, 28, 28), 0.5)
    metrics = image_metrics(clean, clean + 0.1)
    np.testing.assert_allclose(metrics["mse"], 0.01, rtol=1e-12)
    np.testing.assert_allclose(metrics["psnr"], 20.0, rtol=1e-12)


def test_psnr_and_ssim_match_scikit_image_per_image(images):
    noisy = np.clip(images + 0.1 * np.random.default_rng(2).standard_normal(images.shape), 0, 1)
    metrics = image_metrics(images, noisy)
    expected_psnr = [peak_signal_noise_ratio(c, n, data_range=1.0) for c, n in zip(images, noisy, strict=True)]
    expected_ssim = [structural_similarity(c, n, data_range=1.0) for c, n in zip(images, noisy, strict=True)]
    np.testing.assert_allclose(metrics["psnr"], expected_psnr, rtol=1e-10)
    np.testing.assert_allclose(metrics["ssim"], expected_ssim, atol=1e-10)
    # Chunk boundaries must not change anything: the strip trick works per image.
    np.testing.assert_allclose(ssim_per_image(images, noisy, chunk=3), expected_ssim, atol=1e-10)


def test_psnr_cap_is_applied_only_to_tiny_errors():
    assert psnr_from_mse(np.array([0.0]))[0] == PSNR_CAP_DB
    assert math.isclose(psnr_from_mse(np.array([1e-4]))[0], 40.0)


def test_mean_ci_known_values():
    ci = mean_ci([1.0, 2.0, 3.0])
    assert ci["mean"] == 2.0 and ci["std"] == 1.0 and ci["n"] == 3
    half = 4.302652729911275 / math.sqrt(3)  # t_{0.975, 2} * s / sqrt(n)
    assert math.isclose(ci["hi"] - 2.0, half, rel_tol=1e-9) and math.isclose(2.0 - ci["lo"], half, rel_tol=1e-9)
    assert mean_ci([5.0]) == {"mean": 5.0, "std": 0.0, "lo": 5.0, "hi": 5.0, "n": 1}  # one sample: no spread
    with pytest.raises(ValueError):
        mean_ci([1.0, float("inf")])


# ------------------------------------------------------------------------------ noise and DAE
def test_noise_draw_is_fixed_by_seed_and_spec():
    clean = torch.rand(5, 28, 28, generator=torch.Generator().manual_seed(0))
    noise = parse_noise("uniform:0.2")
    assert torch.equal(draw_noisy(clean, noise, 0), draw_noisy(clean, noise, 0))
    assert not torch.equal(draw_noisy(clean, noise, 0), draw_noisy(clean, noise, 1))
    assert noise_seed(0, noise) != noise_seed(0, parse_noise("uniform:0.3"))


class _ImageIdentity(torch.nn.Module):
    """A stand-in for a conv model: checks it is fed (N, 1, H, W) and returns its input."""

    input_layout = "image"

    def __init__(self):
        super().__init__()
        self.scale = torch.nn.Parameter(torch.ones(()))

    def forward(self, images):
        assert images.dim() == 4 and images.shape[1] == 1
        return images * self.scale


def test_run_dae_feeds_image_layout_models_four_d_batches():
    noisy = torch.rand(9, 28, 28)
    denoised, seconds = run_dae(_ImageIdentity(), noisy, batch_size=4)
    assert denoised.shape == (9, 28, 28) and seconds >= 0
    np.testing.assert_allclose(denoised, noisy.numpy())


# ---------------------------------------------------------------------------------- baselines
def test_unknown_denoiser_lists_the_valid_ones():
    with pytest.raises(ConfigError, match="unknown denoiser 'foo'") as info:
        resolve_denoisers("median,foo")
    assert "gaussian_blur" in str(info.value) and "tv" in str(info.value)


def test_all_leaves_out_slow_methods_with_a_note():
    chosen, skipped = resolve_denoisers("all")
    assert [d.name for d in chosen] == ["gaussian_blur", "median", "wavelet", "nlm", "tv"]
    assert [s["name"] for s in skipped] == ["bm3d"] and "name it" in skipped[0]["reason"]
    assert resolve_denoisers("none") == ([], [])


def test_missing_optional_package_is_skipped_with_a_note(monkeypatch):
    monkeypatch.setitem(DENOISERS, "needs_pkg", Denoiser("needs_pkg", lambda x, s: x, "-", "no_such_pkg_xyz"))
    chosen, skipped = resolve_denoisers("median,needs_pkg")
    assert [d.name for d in chosen] == ["median"]
    assert skipped[0]["name"] == "needs_pkg" and "not installed" in skipped[0]["reason"]


def test_every_classical_denoiser_reduces_strong_noise(tiny_dataset):
    clean = tiny_dataset.test_images[:4].astype(np.float64) / 255.0
    noisy = np.clip(clean + 0.2 * np.random.default_rng(0).standard_normal(clean.shape), 0, 1)
    chosen, _ = resolve_denoisers("all")
    mse_noisy = image_metrics(clean, noisy)["mse"].mean()
    for denoiser in chosen:
        denoised = np.stack([denoiser.denoise(image, 0.2) for image in noisy])
        assert denoised.shape == clean.shape
        assert image_metrics(clean, denoised)["mse"].mean() < mse_noisy, denoiser.name


# ------------------------------------------------------------------------------- evaluate_run
@pytest.fixture(scope="module")
def evaluation(tiny_run, tiny_dataset):
    """One small evaluation with a spy baseline that records what it is given and returns it unchanged."""
    seen = []

    def spy(image, sigma):
        seen.append(image.copy())
        return image

    DENOISERS["spy"] = Denoiser("spy", spy, "identity (test)")
    DENOISERS["capped"] = Denoiser("capped", lambda image, sigma: image, "identity on 5 images", max_images=5)
    try:
        config = EvalConfig(noise="uniform:0.1,0.3", denoisers="spy,median,capped", max_images=12, dae_max_images=50,
                            robustness="gaussian:0.1;masking:0.25,0.5", examples=4)
        result = evaluate_run(tiny_run, config, dataset=tiny_dataset, progress=False)
    finally:
        del DENOISERS["spy"], DENOISERS["capped"]
    return result, np.stack(seen), config


def test_evaluation_json_holds_every_section(evaluation, tiny_run):
    result, _, _ = evaluation
    on_disk = json.loads((tiny_run / "evaluation.json").read_text())
    assert on_disk["levels"][0]["noise"] == result["levels"][0]["noise"]
    for key in ("command", "config", "seed", "checkpoint", "model", "n_images", "levels", "headline",
                "robustness", "figures", "timing", "denoisers", "skipped"):
        assert key in on_disk, key
    assert on_disk["command"].startswith("daelab evaluate ")
    assert on_disk["n_images"] == {"dae": 50, "baselines": 12}
    level = on_disk["levels"][0]
    assert set(level["subset"]["methods"]) == {"noisy", "dae", "spy@oracle", "spy@estimated", "median@oracle",
                                               "median@estimated", "capped@oracle", "capped@estimated"}
    # A capped (slow) method is scored, and its gain paired, on the head of the subsample only.
    assert level["subset"]["methods"]["capped@oracle"]["psnr"]["n"] == 5
    assert level["psnr_gain"]["capped@oracle"] == {"mean": 0.0, "std": 0.0, "lo": 0.0, "hi": 0.0, "n": 5}
    assert level["full"]["n"] == 50 and level["subset"]["n"] == 12
    for metric in ("mse", "psnr", "ssim"):
        assert set(level["full"]["methods"]["dae"][metric]) == {"mean", "std", "lo", "hi", "n"}
    assert level["full"]["methods"]["dae"]["seconds_per_image"] > 0
    assert level["sigma"]["oracle"] > 0
    assert on_disk["headline"]["noise"] == ["uniform:0.1", "uniform:0.3"]
    assert [row["noise"] for row in on_disk["robustness"]["rows"]] == ["gaussian:0.1", "masking:0.25", "masking:0.5"]
    assert "| dae |" in (tiny_run / "evaluation.md").read_text()


def test_all_methods_see_the_same_noisy_draw(evaluation, tiny_dataset):
    result, seen, config = evaluation
    # The spy got, for each level and each sigma mode, exactly the first 12 images of the DAE's noisy set.
    order = np.random.default_rng(config.seed).permutation(len(tiny_dataset.test_images))
    clean = torch.from_numpy(tiny_dataset.test_images[order[:50]].astype(np.float32) / 255.0)
    expected = [draw_noisy(clean, noise, config.seed)[:12].numpy() for noise in config.noise_models]
    assert seen.shape == (2 * 2 * 12, 28, 28)
    for i, noisy in enumerate(expected):
        np.testing.assert_array_equal(seen[i * 24:i * 24 + 12], noisy)       # oracle sigma
        np.testing.assert_array_equal(seen[i * 24 + 12:i * 24 + 24], noisy)  # estimated sigma
    # So an identity "denoiser" scores exactly like the noisy input, and gains nothing.
    for level in result["levels"]:
        methods = level["subset"]["methods"]
        assert methods["spy@oracle"]["psnr"] == methods["noisy"]["psnr"]
        assert level["psnr_gain"]["spy@oracle"]["mean"] == 0.0


def test_figures_are_written_and_not_empty(evaluation, tiny_run):
    figures = evaluation[0]["figures"]
    paths = [*figures["examples"].values(), *figures["examples_extended"].values(), figures["examples_combined"],
             figures["psnr_gain"], figures["robustness"]]
    assert len(paths) == 7
    for rel in paths:
        path = tiny_run / rel
        assert path.is_file() and path.stat().st_size > 1000, rel
        assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def _numbers(evaluation: dict):
    """The evaluation without what may differ between runs: timings, paths, the settings."""
    if isinstance(evaluation, dict):
        return {k: _numbers(v) for k, v in evaluation.items()
                if "second" not in k and k not in ("timing", "command", "config", "run_dir", "figures")}
    if isinstance(evaluation, list):
        return [_numbers(v) for v in evaluation]
    return evaluation


def test_worker_processes_give_the_same_numbers(tiny_run, tiny_dataset):
    common = dict(noise="uniform:0.2", denoisers="median,tv", max_images=30, dae_max_images=60, robustness="none",
                  examples=3)
    alone = evaluate_run(tiny_run, EvalConfig(workers=1, **common), dataset=tiny_dataset, progress=False)
    pooled = evaluate_run(tiny_run, EvalConfig(workers=2, **common), dataset=tiny_dataset, progress=False)
    assert pooled["timing"]["baseline_workers"] == 2 and alone["timing"]["baseline_workers"] == 1
    assert _numbers(pooled) == _numbers(alone)
    assert pooled["levels"][0]["subset"]["methods"]["tv@oracle"]["seconds_per_image"] > 0
    assert "2 worker processes side by side" in (tiny_run / "evaluation.md").read_text()


def test_a_broken_pool_falls_back_to_this_process(monkeypatch, caplog):
    from concurrent.futures.process import BrokenProcessPool

    import daelab.evaluate._baselines as baselines
    import daelab.workers as workers

    class Broken:
        def __init__(self, *args, **kwargs):
            pass

        def submit(self, *args):
            raise BrokenProcessPool("worker died")

        def shutdown(self, **kwargs):
            pass

    monkeypatch.setattr(workers, "ProcessPoolExecutor", Broken)
    clean = np.random.default_rng(0).random((6, 28, 28))
    noisy = np.clip(clean + 0.1, 0, 1)
    with workers.WorkerPool(2) as pool:
        future = pool.submit(baselines.score_denoiser, "median", noisy, clean, np.full(6, 0.1), 2)
        metrics, seconds, head = pool.result(future)
    assert "worker processes failed" in caplog.text
    expected, _, _ = baselines.score_denoiser("median", noisy, clean, np.full(6, 0.1), 2)
    np.testing.assert_array_equal(metrics["psnr"], expected["psnr"])
    assert head.shape == (2, 28, 28)


# ------------------------------------------------------------------------------------- CLI
@pytest.mark.parametrize("flags, message", [
    (["--denoisers", "foo"], "unknown denoiser 'foo'"),
    (["--noise", "uniform:abc"], "is not a number"),
    (["--noise", "sparkle:0.1"], "unknown noise model"),
    (["--max-images", "-1"], "max-images must be >= 0"),
])
def test_cli_bad_inputs_are_one_line_errors(tiny_run, capsys, flags, message):
    assert main(["evaluate", str(tiny_run), *flags]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1


def test_cli_missing_run_dir(tmp_path, capsys):
    assert main(["evaluate", str(tmp_path / "nope")]) == 2
    assert "not found" in capsys.readouterr().err
