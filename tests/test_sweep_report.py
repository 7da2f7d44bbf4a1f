"""The sweep's results side: one trial's numbers (trial_metrics) and the sweep report (write_sweep_report).

Trials are synthetic run directories shaped as the stages write them (probe.json's comparisons
with their design interval, evaluation.json's levels, metrics.jsonl), so these tests train nothing.
"""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from daelab.errors import UsageError
from daelab.sweep._results import trial_metrics

NOISES = ("uniform:0.05", "uniform:0.1", "uniform:0.2", "uniform:0.3", "uniform:0.4")


def _comparison(probe: str, a: str, b: str, mean: float, half: float) -> dict:
    """One entry of probe.json's comparisons, as daelab.probe._compare.design_comparison writes it."""
    lo, hi = mean - half, mean + half
    bare = f"{a} better" if lo > 0 else f"{b} better" if hi < 0 else "no detectable difference"
    return {"probe": probe, "a": a, "b": b, "mean": mean + 0.001, "std": 0.002, "lo": lo - 0.01, "hi": hi + 0.01,
            "n": 2, "differences": [mean, mean], "level": 0.95, "over": "seeds", "seeds_verdict": bare,
            "interval": {"mean": mean, "lo": lo, "hi": hi, "se": half / 2, "df": 40.0, "std": half / 2,
                         "percentile": [lo, hi]},
            "interval_over": {"dae_seeds": 1, "classifier_seeds": 2, "test_images": 200},
            "scope": "for this one trained DAE", "verdict": bare, "verdict_scoped": f"{bare} for this one trained DAE"}


def make_trial(run_dir: Path, diff: float = 0.01, half: float = 0.004, psnr: float = 20.0,
               val_losses=(0.03, 0.02, 0.025), stages=("train", "evaluate", "probe")) -> Path:
    """A finished (or partly finished) trial's run directory with the given numbers.

    ``diff`` is the mlp probe's codes - raw difference (linear: 2x, knn: 3x), ``half`` its interval's
    half-width, ``psnr`` the DAE's PSNR at the lowest level (one dB less per level after it).
    """
    run_dir.mkdir(parents=True, exist_ok=True)
    if "train" in stages:
        lines = [json.dumps({"epoch": k, "train_loss": loss * 1.1, "val_loss": loss, "epoch_seconds": 0.1,
                             "samples_per_s": 1000.0, "lr": 0.001}) for k, loss in enumerate(val_losses, 1)]
        (run_dir / "metrics.jsonl").write_text("\n".join(lines) + "\n")
        (run_dir / "config.json").write_text("{}")
    if "evaluate" in stages:
        levels = [{"noise": noise, "noise_seed": 1, "full": {"n": 200, "methods": {
            "noisy": {"psnr": {"mean": 30.0 - k, "lo": 29.0, "hi": 31.0, "n": 200}},
            "dae": {"psnr": {"mean": psnr - k, "lo": psnr - k - 0.1, "hi": psnr - k + 0.1, "n": 200},
                    "mse": {"mean": 0.01, "lo": 0.009, "hi": 0.011, "n": 200}}}}}
            for k, noise in enumerate(NOISES)]
        (run_dir / "evaluation.json").write_text(json.dumps({"version": 1, "levels": levels}))
    if "probe" in stages:
        codes, raw = 0.80 + diff, 0.80
        results = [{"feature": f, "probe": p, "mean": acc, "lo": acc - 0.01, "hi": acc + 0.01, "n": 2}
                   for p in ("mlp", "linear", "knn") for f, acc in (("codes", codes), ("raw", raw))]
        comparisons = [_comparison(p, "codes", "raw", diff * scale, half)
                       for p, scale in (("mlp", 1), ("linear", 2), ("knn", 3))]
        (run_dir / "probe.json").write_text(json.dumps({"version": 1, "results": results,
                                                        "comparisons": comparisons}))
    return run_dir


# ------------------------------------------------------------------------------ trial_metrics
def test_trial_metrics_reads_the_design_interval_and_verdict(tmp_path):
    metrics = trial_metrics(make_trial(tmp_path / "t", diff=0.01, half=0.004, psnr=21.0))
    mlp = metrics["codes_minus_raw"]
    # The design's interval (comparison["interval"]), not the classifier-seed one beside it.
    assert mlp["mean"] == pytest.approx(0.01) and mlp["lo"] == pytest.approx(0.006)
    assert mlp["hi"] == pytest.approx(0.014)
    assert mlp["verdict"] == "codes better for this one trained DAE"
    assert mlp["scope"] == "for this one trained DAE"
    assert metrics["linear_codes_minus_raw"]["mean"] == pytest.approx(0.02)
    assert metrics["knn_codes_minus_raw"]["mean"] == pytest.approx(0.03)
    assert metrics["accuracy"] == {"codes": pytest.approx(0.81), "raw": pytest.approx(0.80)}
    assert list(metrics["psnr"]) == list(NOISES)
    assert metrics["psnr"]["uniform:0.3"] == pytest.approx(18.0)
    assert metrics["psnr_mean"] == pytest.approx(19.0)
    assert metrics["val_loss"] == pytest.approx(0.02)  # the best epoch, not the last


def test_trial_metrics_of_an_unfinished_trial_has_every_key_with_none(tmp_path):
    complete = trial_metrics(make_trial(tmp_path / "done"))
    empty = trial_metrics(tmp_path / "never-started")
    assert set(empty) == set(complete)
    assert empty["codes_minus_raw"] is None and empty["psnr"] is None and empty["psnr_mean"] is None
    assert empty["val_loss"] is None and empty["accuracy"] == {"codes": None, "raw": None}
    trained = trial_metrics(make_trial(tmp_path / "trained", stages=("train",)))
    assert trained["val_loss"] == pytest.approx(0.02) and trained["codes_minus_raw"] is None


def test_trial_metrics_names_a_corrupt_file(tmp_path):
    run_dir = make_trial(tmp_path / "t")
    (run_dir / "probe.json").write_text('{"results": [')  # truncated
    with pytest.raises(UsageError, match="probe.json"):
        trial_metrics(run_dir)
    make_trial(run_dir)
    (run_dir / "evaluation.json").write_text('{"levels": [{"noise": "uniform:0.1"}]}')  # wrong shape
    with pytest.raises(UsageError, match="evaluation.json"):
        trial_metrics(run_dir)
    make_trial(run_dir)
    (run_dir / "metrics.jsonl").write_text('{"epoch": 1, "val_loss": "low"}\n')
    with pytest.raises(UsageError, match="metrics.jsonl"):
        trial_metrics(run_dir)
