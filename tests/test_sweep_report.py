"""The sweep's results side: one trial's numbers (trial_metrics) and the sweep report (write_sweep_report).

Trials are synthetic run directories shaped as the stages write them (probe.json's comparisons
with their design interval, evaluation.json's levels, metrics.jsonl), so these tests train nothing.
"""
from __future__ import annotations

import itertools
import json
import re
from pathlib import Path

import pytest

from daelab.errors import UsageError
from daelab.stats import size_verdict
from daelab.sweep._render import write_sweep_report
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
            "scope": "for this one trained DAE", "verdict": bare, "verdict_scoped": f"{bare} for this one trained DAE",
            "margin": 0.01, "size_verdict": size_verdict({"lo": lo, "hi": hi}, 0.01, a, b)}


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


# ------------------------------------------------------------------------ write_sweep_report
KINDS, LEVELS = ("gaussian", "masking", "salt_pepper"), (0.1, 0.3, 0.5)
SPEC = {"sweep": {"name": "noise-kind-level", "out": "runs/sweep-noise", "objective": "codes_minus_raw"},
        "train": {"epochs": 3, "subset": 10000}, "evaluate": {"max_images": 200, "robustness": "none"},
        "probe": {"seeds": 2}, "grid": {"train.noise.kind": list(KINDS), "train.noise.level": list(LEVELS)},
        "report": {"x": "train.noise.level", "group": "train.noise.kind",
                   "heatmap": ["train.noise.kind", "train.noise.level"]}}


def _diff(kind: str, level: float) -> float:
    """A made-up codes - raw difference per grid point, distinct everywhere: masking at 0.3 is the best."""
    return {"gaussian": 0.002, "masking": 0.010, "salt_pepper": -0.006}[kind] - 0.02 * (level - 0.3) ** 2 + level / 1000


def _key(params: dict) -> str:
    return "_".join(f"{axis.removeprefix('train.')}-{value}" for axis, value in params.items())


def make_sweep(out: Path, states: dict | None = None, spec: dict = SPEC) -> list[dict]:
    """Trial run dirs and the engine's rows for the grid of ``spec``; ``states`` overrides some trials' state."""
    rows, axes = [], list(spec["grid"])
    for number, point in enumerate(itertools.product(*spec["grid"].values())):
        params = dict(zip(axes, point))
        state = (states or {}).get(point, "COMPLETE")
        run_dir = out / "trials" / _key(params)
        kind, level = params.get("train.noise.kind", "gaussian"), params.get("train.noise.level", 0.1)
        if state == "COMPLETE":
            make_trial(run_dir, diff=_diff(kind, level), half=0.003, psnr=22.0 - 4 * level + (kind == "masking"),
                       val_losses=(0.03, 0.01 + level / 100))
        elif state == "RUNNING":
            make_trial(run_dir, stages=("train",))
        rows.append({"number": number, "key": _key(params), "state": state, "params": params,
                     "run_dir": str(run_dir), "seconds": 61.5 if state == "COMPLETE" else None,
                     "value": _diff(kind, level) if state == "COMPLETE" else None, "retries": 0})
    return rows


def _report(out: Path, rows: list[dict], spec=SPEC) -> tuple[dict, str, str, dict]:
    paths = write_sweep_report(out, rows, spec)
    return paths, paths["html"].read_text(), paths["md"].read_text(), json.loads(paths["json"].read_text())


def test_the_sweep_report_is_three_self_contained_files(tmp_path):
    rows = make_sweep(tmp_path)
    paths, page, markdown, data = _report(tmp_path, rows)
    assert set(paths) == {"html", "md", "json"} and all(p.parent == tmp_path for p in paths.values())
    assert "http://" not in page and "https://" not in page and "file://" not in page
    images = re.findall(r'<img src="([^"]*)"', page)
    assert len(images) == 3 and all(src.startswith("data:image/png;base64,") for src in images)
    assert set(data["figures"]) == {"difference", "psnr", "heatmap"}
    assert all((tmp_path / rel).is_file() for rel in data["figures"].values())
    # The run directories are linked relative to the sweep's directory, in both files.
    assert 'href="trials/noise.kind-masking_noise.level-0.3"' in page
    assert "(trials/noise.kind-masking_noise.level-0.3)" in markdown


def test_the_best_trial_and_the_curve_data_follow_the_trials(tmp_path):
    rows = make_sweep(tmp_path)
    _, page, markdown, data = _report(tmp_path, rows)
    best = data["best"]
    assert best["codes_minus_raw"]["key"] == "noise.kind-masking_noise.level-0.3"
    assert best["codes_minus_raw"]["value"] == pytest.approx(_diff("masking", 0.3))
    assert best["psnr_mean"]["params"] == {"train.noise.kind": "masking", "train.noise.level": 0.1}
    assert best["val_loss"]["params"]["train.noise.level"] == 0.1 and best["val_loss"]["value"] == pytest.approx(0.011)
    curves = {c["label"]: c for c in data["curves"]}
    assert list(curves) == list(KINDS)  # one curve per report.group value, in grid order
    for kind in KINDS:
        points = curves[kind]["points"]
        assert [p["x"] for p in points] == list(LEVELS)
        for point, level in zip(points, LEVELS):
            assert point["codes_minus_raw"]["mean"] == pytest.approx(_diff(kind, level))
            assert point["codes_minus_raw"]["hi"] - point["codes_minus_raw"]["lo"] == pytest.approx(0.006)
            assert point["study_choice"] == (kind == "gaussian" and level == 0.1)
    grid = data["heatmap"]
    assert grid["rows"] == list(KINDS) and grid["cols"] == list(LEVELS)
    assert grid["codes_minus_raw"][1][1] == pytest.approx(_diff("masking", 0.3))
    # The verdicts keep the interval's scope; the study's choice is placed among the trials.
    assert "codes better for this one trained DAE" in page and "codes better for this one trained DAE" in markdown
    assert any("study's choice" in item and "rank" in item for item in data["headline"])
    # and how many trials' intervals lie within the probe's margin, beyond it, or across it
    sizes = [size_verdict({"lo": _diff(k, v) - 0.003, "hi": _diff(k, v) + 0.003}, 0.01) for k in KINDS for v in LEVELS]
    within, beyond = sum("within" in x for x in sizes), sum("by more than" in x for x in sizes)
    assert 0 < within < len(sizes) or 0 < beyond < len(sizes)  # the fixture spans more than one answer
    for answer in set(sizes):  # and each trial's row of the table gives its own
        assert markdown.count(f"| {answer} |") == sizes.count(answer) and answer in page
    counted = next(item for item in data["headline"] if "Against the probe's margin" in item)
    assert (f"within it in **{within}**, beyond it in **{beyond}**, not ruled out either way in "
            f"**{len(sizes) - within - beyond}** of {len(sizes)}.") in counted


def test_every_trial_is_listed_with_its_state_and_unfinished_ones_do_not_crash(tmp_path):
    states = {("masking", 0.5): "RUNNING", ("salt_pepper", 0.1): "FAIL", ("salt_pepper", 0.3): "WAITING",
              ("gaussian", 0.1): "PRUNED"}
    rows = make_sweep(tmp_path, states)
    rows = [r for r in rows if r["params"] != {"train.noise.kind": "salt_pepper", "train.noise.level": 0.5}]
    (tmp_path / "trials" / rows[1]["key"] / "evaluation.json").write_text("{not json")  # damaged, though COMPLETE
    _, page, markdown, data = _report(tmp_path, rows)
    by_point = {(t["params"]["train.noise.kind"], t["params"]["train.noise.level"]): t for t in data["rows"]}
    assert len(by_point) == 9  # every grid point, the one without a row too
    assert by_point["salt_pepper", 0.5]["state"] == "NOT STARTED"
    for point, state in states.items():
        assert by_point[point]["state"] == state
        assert by_point[point]["metrics"]["codes_minus_raw"] is None
    assert by_point["masking", 0.5]["metrics"]["val_loss"] == pytest.approx(0.02)  # training, not yet probed
    damaged = by_point["gaussian", 0.3]
    assert damaged["state"] == "COMPLETE" and "evaluation.json" in damaged["error"]
    table = markdown.split("## Every trial")[1]
    trial_lines = [line for line in table.splitlines() if line.startswith("| ") and "state" not in line]
    assert len(trial_lines) == 9
    for state in ("running", "fail", "waiting", "pruned", "not started", "complete (damaged"):
        assert f"| {state}" in table
        assert f"<td>{state}" in page
    # The damaged and unfinished trials are in no summary: the best is still masking 0.3.
    assert data["best"]["codes_minus_raw"]["key"] == "noise.kind-masking_noise.level-0.3"
    assert "pruned" in data["heatmap"]["states"][0][0][0].lower()


def test_nothing_finished_yet_still_gives_a_report(tmp_path):
    rows = make_sweep(tmp_path, {point: "WAITING" for point in itertools.product(KINDS, LEVELS)})
    _, page, markdown, data = _report(tmp_path, rows)
    assert data["figures"] == {} and "<img" not in page
    assert data["best"] == {"codes_minus_raw": None, "psnr_mean": None, "val_loss": None}
    assert "No trial has a probe result yet" in markdown


def test_a_one_axis_grid_over_the_code_width_has_no_heatmap(tmp_path):
    spec = {"sweep": {"name": "width", "objective": "psnr"}, "grid": {"model.code_dim": [32, 64, 196]},
            "report": {"x": "model.code_dim"}}

    class Spec:  # the engine's SweepSpec: the report reads its raw TOML dict
        raw = spec

    rows = make_sweep(tmp_path, spec=spec)
    _, page, markdown, data = _report(tmp_path, rows, Spec())
    assert data["heatmap"] is None and "heatmap" not in data["figures"] and "difference" in data["figures"]
    assert "No heatmap: the grid has one axis" in markdown
    assert [p["x"] for p in data["curves"][0]["points"]] == [32, 64, 196]
    # Without noise axes the study's choice is the trial with its code width (the noise is the default's).
    assert [t["study_choice"] for t in data["rows"]] == [False, False, True]


def test_a_report_axis_not_in_the_grid_is_said_not_fatal(tmp_path):
    spec = {**SPEC, "report": {"x": "train.noise.sigma", "heatmap": ["train.noise.kind", "nope"]}}
    _, page, markdown, data = _report(tmp_path, make_sweep(tmp_path), spec)
    assert data["x"] == "train.noise.level" and len(data["notes"]) == 2  # the last axis, as the engine's default
    assert "is not an axis of the grid" in page


def test_a_third_axis_splits_the_curves_and_is_averaged_in_the_heatmap(tmp_path):
    spec = {**SPEC, "grid": {"train.noise.kind": ["gaussian", "masking"], "train.noise.level": [0.1, 0.3],
                             "model.code_dim": [64, 196]}}
    _, page, markdown, data = _report(tmp_path, make_sweep(tmp_path, spec=spec), spec)
    assert [c["label"] for c in data["curves"]] == ["gaussian, 64", "gaussian, 196", "masking, 64", "masking, 196"]
    grid = data["heatmap"]
    assert grid["averaged_over"] == ["model.code_dim"] and grid["n"] == [[2, 2], [2, 2]]
    assert grid["codes_minus_raw"][1][0] == pytest.approx(_diff("masking", 0.1))  # both widths gave the same here
    assert [t["study_choice"] for t in data["rows"]].count(True) == 1  # gaussian:0.1 with the 196-wide code
    assert set(data["figures"]) == {"difference", "psnr", "heatmap"}


def test_odd_rows_and_null_numbers_do_not_crash_the_report(tmp_path):
    rows = make_sweep(tmp_path)
    probe_path = Path(rows[0]["run_dir"]) / "probe.json"
    probe = json.loads(probe_path.read_text())
    probe["comparisons"][0]["interval"]["lo"] = None  # a non-finite end, written as null
    probe_path.write_text(json.dumps(probe))
    stray = make_trial(tmp_path / "trials" / "stray")
    rows += [{"number": 99, "state": "COMPLETE", "params": {}, "run_dir": str(stray)},  # no grid point, few keys
             {"number": 100, "state": "FAIL", "params": {"train.noise.kind": "gaussian"}, "run_dir": None}, "junk"]
    _, page, markdown, data = _report(tmp_path, rows)
    first = next(t for t in data["rows"] if t["number"] == 0)
    assert first["metrics"]["codes_minus_raw"] is None and first["metrics"]["psnr_mean"] is not None
    assert {t["number"] for t in data["rows"]} >= {99, 100} and len(data["rows"]) == 11
    assert "difference" in data["figures"]
