"""Denoising over DAE seeds (issue 21): evaluate_daes on tiny runs, and the real-valued interval's coverage."""
from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
from scipy import stats as scipy_stats

from daelab.errors import ConfigError
from daelab.evaluate import EvalConfig, evaluate_daes, evaluate_run
from daelab.evaluate._seeds import SEEDS_FILE, summarise_seeds
from daelab.stats import hierarchical_interval, mean_ci

SEEDS = (0, 1, 2)
N_DAE, N_SUBSET = 60, 20
COMMON = dict(noise="uniform:0.1,0.3", denoisers="median,tv", max_images=N_SUBSET, dae_max_images=N_DAE,
              robustness="none", examples=2, workers=1)


def _train(run_dir, dataset, seed: int, epochs: int = 2):
    from daelab.models import ModelConfig
    from daelab.train import TrainConfig, fit
    fit(ModelConfig(), TrainConfig(epochs=epochs, batch_size=64, seed=seed), run_dir, dataset=dataset, progress=False)
    return run_dir


@pytest.fixture(scope="module")
def runs(tmp_path_factory, tiny_dataset):
    """Three tiny DAEs of one config, seeds 0, 1, 2, in their own dirs (the shared tiny_run stays as it was)."""
    root = tmp_path_factory.mktemp("dae_seeds")
    return [_train(root / f"seed{seed}", tiny_dataset, seed) for seed in SEEDS]


@pytest.fixture(scope="module")
def evaluated(runs, tiny_dataset, tmp_path_factory):
    first = tmp_path_factory.mktemp("first") / "seed0"
    shutil.copytree(runs[0], first)  # a fresh copy, so the one-run test below can evaluate runs[0] itself
    result = evaluate_daes([first, *runs[1:]], EvalConfig(**COMMON), dataset=tiny_dataset, progress=False)
    return first, result


def _numbers(evaluation):
    """The evaluation without what may differ between calls: timings, paths, the settings."""
    if isinstance(evaluation, dict):
        return {k: _numbers(v) for k, v in evaluation.items()
                if "second" not in k and k not in ("timing", "command", "run_dir", "figures")}
    if isinstance(evaluation, list):
        return [_numbers(v) for v in evaluation]
    return evaluation


def test_section_has_the_shape_the_report_reads(evaluated):
    first, result = evaluated
    on_disk = json.loads((first / "evaluation.json").read_text())
    section = on_disk["dae_seeds"]
    assert section == json.loads(json.dumps(result["dae_seeds"]))
    assert section["seeds"] == list(SEEDS) and len(section["run_dirs"]) == 3 and section["run_dirs"][0] == str(first)
    over = section["interval_over"]
    assert over["dae_seeds"] == 3 and over["test_images"] == N_DAE
    assert over["resampled"] == ["dae_seeds", "test_images"] and over["scope"] == "over 3 trained DAEs"
    assert "Student-t" in over["method"]
    assert [lv["noise"] for lv in section["levels"]] == ["uniform:0.1", "uniform:0.3"]
    for lv, level in zip(section["levels"], on_disk["levels"], strict=True):
        assert set(lv) == {"noise", "dae", "per_dae", "gain"}
        for metric in ("psnr", "ssim", "mse"):
            stat = lv["dae"][metric]
            assert set(stat) == {"mean", "lo", "hi"} and stat["lo"] < stat["mean"] < stat["hi"]
        assert [row["seed"] for row in lv["per_dae"]] == list(SEEDS)
        assert len({row["psnr"] for row in lv["per_dae"]}) == 3  # three seeds, three different DAEs
        # The gain over the level's best baseline (highest mean gain over noisy, the DAE aside), paired
        # on the baselines' subsample.
        best = max((m for m in level["psnr_gain"] if m != "dae"), key=lambda m: level["psnr_gain"][m]["mean"])
        assert set(lv["gain"]) == {"noisy", best}
        assert lv["gain"]["noisy"]["n_images"] == N_DAE and lv["gain"][best]["n_images"] == N_SUBSET
        for gain in lv["gain"].values():
            assert gain["lo"] < gain["mean"] < gain["hi"]
    markdown = (first / "evaluation.md").read_text()
    assert "## Over 3 trained DAEs (seeds 0, 1, 2)" in markdown and "| uniform:0.3 |" in markdown
    assert "| dae |" in markdown  # evaluate_run's own tables are still there


def test_first_dae_agrees_with_evaluate_run_and_every_dae_sees_its_images(evaluated, tiny_dataset):
    first, result = evaluated
    with np.load(first / SEEDS_FILE) as stored:
        arrays = {key: stored[key] for key in stored.files}
    order = np.random.default_rng(0).permutation(len(tiny_dataset.test_images))
    np.testing.assert_array_equal(arrays["test_index"], order[:N_DAE])
    np.testing.assert_array_equal(arrays["seeds"], SEEDS)
    for lv, level in zip(result["dae_seeds"]["levels"], result["levels"], strict=True):
        full, subset = level["full"]["methods"], level["subset"]["methods"]
        for metric in ("psnr", "ssim", "mse"):  # the seed-0 DAE, rescored: evaluate_run's own full-set mean
            assert lv["per_dae"][0][metric] == pytest.approx(full["dae"][metric]["mean"], rel=1e-12, abs=1e-12)
        psnr = arrays[f"psnr/{lv['noise']}"]
        noisy = arrays[f"noisy_psnr/{lv['noise']}"]
        assert psnr.shape == (3, N_DAE) and noisy.shape == (N_DAE,)
        np.testing.assert_allclose(psnr.mean(axis=1), [row["psnr"] for row in lv["per_dae"]], rtol=1e-12)
        assert noisy.mean() == pytest.approx(full["noisy"]["psnr"]["mean"], rel=1e-12)  # the same noisy draw
        assert lv["gain"]["noisy"]["mean"] == pytest.approx(psnr.mean() - noisy.mean(), rel=1e-9)
        # The baseline rerun gave the per-image scores evaluate_run summarised on the subsample.
        best = next(name for name in lv["gain"] if name != "noisy")
        expected = psnr[:, :N_SUBSET].mean() - subset[best]["psnr"]["mean"]
        assert lv["gain"][best]["mean"] == pytest.approx(expected, rel=1e-9, abs=1e-9)


def test_one_run_is_evaluate_run_unchanged(runs, tiny_dataset, tmp_path):
    alone = tmp_path / "alone"
    shutil.copytree(runs[0], alone)
    reference = evaluate_run(alone, EvalConfig(**COMMON), dataset=tiny_dataset, progress=False)
    result = evaluate_daes([alone], EvalConfig(**COMMON), dataset=tiny_dataset, progress=False)
    on_disk = json.loads((alone / "evaluation.json").read_text())
    assert "dae_seeds" not in result and "dae_seeds" not in on_disk
    assert not (alone / SEEDS_FILE).exists()
    assert _numbers(result) == _numbers(reference)


def test_mismatched_or_repeated_runs_are_refused_before_any_work(runs, tiny_dataset, tmp_path):
    config = EvalConfig(**COMMON)
    twin = tmp_path / "twin"
    shutil.copytree(runs[1], twin)
    with pytest.raises(ConfigError, match="two runs have seed 1") as info:
        evaluate_daes([runs[1], twin], config, dataset=tiny_dataset, progress=False)
    assert "evaluate runs of one config" in str(info.value) and len(str(info.value).splitlines()) == 1
    other = _train(tmp_path / "other", tiny_dataset, seed=5, epochs=1)
    with pytest.raises(ConfigError, match=r"other settings than .*\(epochs\)"):
        evaluate_daes([other, runs[1]], config, dataset=tiny_dataset, progress=False)
    assert not (other / "evaluation.json").exists() and not (runs[1] / "evaluation.json").exists()
    with pytest.raises(ConfigError, match="no run directory"):
        evaluate_daes([], config)


# ------------------------------------------------------------------------------ from arrays
def _psnr(spread: float, n: int = 300) -> np.ndarray:
    """(3, n) per-image PSNR: a shared image effect, each DAE's own offset (-spread, 0, +spread) and noise."""
    rng = np.random.default_rng(7)
    image = rng.normal(0.0, 2.0, n)
    return 20.0 + image[None] + spread * np.array([-1.0, 0.0, 1.0])[:, None] + rng.normal(0.0, 0.5, (3, n))


def test_interval_widens_when_the_daes_differ_more():
    noisy = np.full(300, 15.0)

    def level(spread):
        psnr = _psnr(spread)
        return summarise_seeds("uniform:0.1", SEEDS, {"psnr": psnr, "ssim": psnr / 40, "mse": 10 ** (-psnr / 10)},
                               noisy, ("median@oracle", noisy[:100] + 1.0), n_boot=200)

    close, apart = level(0.05), level(1.0)
    for lv in (close, apart):
        assert lv["dae"]["psnr"]["lo"] < lv["dae"]["psnr"]["mean"] < lv["dae"]["psnr"]["hi"]
        assert lv["gain"]["median@oracle"]["n_images"] == 100
    width = {name: lv["dae"]["psnr"]["hi"] - lv["dae"]["psnr"]["lo"] for name, lv in (("close", close),
                                                                                     ("apart", apart))}
    assert width["apart"] > 3 * width["close"]
    gain_width = {name: lv["gain"]["noisy"]["hi"] - lv["gain"]["noisy"]["lo"] for name, lv in (("close", close),
                                                                                               ("apart", apart))}
    assert gain_width["apart"] > 3 * gain_width["close"]
    # An images-only interval (one DAE's view) misses the DAEs' spread: it is as narrow either way.
    images_only = mean_ci(_psnr(1.0).mean(axis=0))
    assert images_only["hi"] - images_only["lo"] < width["apart"] / 3
    assert [row["psnr"] for row in apart["per_dae"]] == pytest.approx(list(_psnr(1.0).mean(axis=1)))
    psnr = _psnr(1.0)
    alone = summarise_seeds("uniform:0.1", SEEDS, {"psnr": psnr, "ssim": psnr, "mse": psnr}, noisy, n_boot=20)
    assert set(alone["gain"]) == {"noisy"}  # no baselines run: the gain over the noisy input only
    with pytest.raises(ValueError, match="does not fit"):
        summarise_seeds("uniform:0.1", SEEDS[:2], {"psnr": psnr, "ssim": psnr, "mse": psnr}, noisy)


def test_real_valued_interval_covers_with_a_dae_random_effect():
    """200 replications of D = 3 DAEs x N = 200 images: value = mu + DAE effect + image effect + noise.

    The population mean (over DAE seeds and images) is mu; the nominal level is 95%. Deterministic
    (seeded): measured 0.90 for the interval over both levels (with 3 DAE seeds its degrees of
    freedom are few and estimated, so a little below nominal), 0.295 for a t-interval over the 600
    values that treats them as independent, as an images-only interval does.
    """
    rng = np.random.default_rng(21)
    replications, daes, images, mu = 200, 3, 200, 25.0
    covered = naive = 0
    for _ in range(replications):
        values = (mu + rng.normal(0.0, 0.5, (daes, 1, 1)) + rng.normal(0.0, 1.0, (1, 1, images))
                  + rng.normal(0.0, 1.0, (daes, 1, images)))
        interval = hierarchical_interval(values, n_boot=20)
        covered += interval["lo"] <= mu <= interval["hi"]
        flat = mean_ci(values.ravel())
        naive += flat["lo"] <= mu <= flat["hi"]
    assert covered / replications >= 0.85
    assert naive / replications < 0.6


def test_real_valued_interval_on_one_dae_is_the_t_interval_over_images():
    values = np.random.default_rng(3).normal(30.0, 2.0, (1, 1, 50))
    interval = hierarchical_interval(values, n_boot=50)
    reference = mean_ci(values.ravel())
    assert interval["interval_over"]["resampled"] == ["test_images"]
    assert interval["mean"] == pytest.approx(reference["mean"])
    assert interval["lo"] == pytest.approx(reference["lo"]) and interval["hi"] == pytest.approx(reference["hi"])
    # the t quantile on its degrees of freedom: df = N - 1 for one level
    assert interval["df"] == pytest.approx(49) and scipy_stats.t.ppf(0.975, 49) > 1.96
    with pytest.raises(ValueError, match="finite"):
        hierarchical_interval(np.array([[[1.0, np.inf]]]))
    with pytest.raises(ValueError, match=r"\(D, S, N\)"):
        hierarchical_interval(np.ones((3, 4)))


def test_cli_evaluates_several_run_dirs_and_prints_the_interval_over_daes(runs, npz_data, tmp_path, capsys):
    """``daelab evaluate RUN_DIR RUN_DIR ...`` is evaluate_daes: the first dir gets the dae_seeds section."""
    from daelab import cli
    copies = [shutil.copytree(run, tmp_path / run.name) for run in runs[:2]]
    code = cli.main(["evaluate", *map(str, copies), "--data-dir", str(npz_data), "--noise", "uniform:0.1",
                     "--denoisers", "none", "--robustness", "none", "--dae-max-images", str(N_DAE),
                     "--workers", "1", "--no-progress"])
    out = capsys.readouterr().out
    assert code == 0
    section = json.loads((copies[0] / "evaluation.json").read_text())["dae_seeds"]
    assert section["seeds"] == [0, 1] and "over 2 DAE seeds x images" in out
    assert not (copies[1] / "evaluation.json").exists()  # only the first run's evaluation holds the design
