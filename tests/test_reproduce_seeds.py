"""daelab reproduce over several DAE seeds: the layout, the probe and report over them, resuming, growing, the CLI."""
from __future__ import annotations

import json
from dataclasses import replace

import pytest

import daelab.reproduce as rep
from daelab.errors import ConfigError, TrainingInterrupted, UsageError
from daelab.reproduce import DAE_SEEDS, STATE_FILE, dae_run_dirs, dae_seed_plan, load_state, plan, reproduce
from daelab.runs import read_json, read_metrics


def _small(monkeypatch):
    """The quick plan's shape on a part of the synthetic set (300 of its training images for the DAEs, 300 training
    and 100 test images for the probe), as small as it runs."""
    monkeypatch.setattr(rep, "QUICK_TRAIN", {**rep.QUICK_TRAIN, "epochs": 2, "subset": 300})
    monkeypatch.setattr(rep, "QUICK_EVAL", {**rep.QUICK_EVAL, "noise": "uniform:0.1,0.2", "denoisers": "gaussian_blur",
                                            "max_images": 30, "robustness": "gaussian:0.1",
                                            "robustness_max_images": 30})
    monkeypatch.setattr(rep, "QUICK_PROBE", {**rep.QUICK_PROBE, "epochs": 2, "probes": ("mlp", "linear"),
                                             "n_boot": 200, "subset": 300, "test_subset": 100,
                                             "features": ("codes", "raw"), "linear_max_iter": 30})


def _stub_late_stages(monkeypatch, calls: list):
    """Evaluate and probe as stubs that note the DAE seeds they were given (the tests of resuming need no numbers)."""
    def stub(stage):
        def run(run_dir, settings, dataset, progress):
            calls.append((stage, list(settings["dae_seeds"])))
            return {"stub": True}
        return run
    monkeypatch.setattr(rep, "RUNNERS", {**rep.RUNNERS, "evaluate": stub("evaluate"), "probe": stub("probe")})


# ------------------------------------------------------------------------------------- the plan
def test_default_design_is_three_dae_seeds_and_one_for_quick():
    assert DAE_SEEDS == {"full": 3, "quick": 1}
    assert dae_seed_plan(None, quick=False) == [0, 1, 2]
    assert dae_seed_plan(None, quick=True) == [0]
    assert dae_seed_plan(None, quick=True, dae_seeds=4, seed=7) == [7, 8, 9, 10]
    with pytest.raises(ConfigError, match=">= 1"):
        dae_seed_plan(None, quick=False, dae_seeds=0)
    # a reproduction written before DAE seeds existed is its one training seed; the full default grows it
    legacy = {"mode": "full", "stages": {"train": {"status": "done", "settings": {"train": {"seed": 0}}}}}
    assert dae_seed_plan(legacy, quick=False) == [0, 1, 2]
    # None keeps a reproduction that already has more than the default
    assert dae_seed_plan({"dae_seeds": [0, 1, 2, 3, 4]}, quick=False) == [0, 1, 2, 3, 4]
    assert plan(True, seed=3)["train"].seed == 3 and plan(False)["train"].seed == 0


def test_dae_run_dirs_first_is_the_run_dir(tmp_path):
    assert dae_run_dirs(tmp_path, [4, 5, 6]) == [tmp_path, tmp_path / "daes" / "seed-5", tmp_path / "daes" / "seed-6"]


# ------------------------------------------------------------------- a quick reproduction of 2 DAEs
@pytest.fixture(scope="module")
def two_daes(tmp_path_factory, tiny_dataset):
    mp = pytest.MonkeyPatch()
    _small(mp)
    run_dir = tmp_path_factory.mktemp("seeds") / "quick"
    state = reproduce(run_dir, quick=True, dataset=tiny_dataset, progress=False, dae_seeds=2)
    yield run_dir, state
    mp.undo()


def test_two_daes_are_two_run_dirs(two_daes, tiny_dataset, tmp_path):
    run_dir, state = two_daes
    assert state["dae_seeds"] == [0, 1] and load_state(run_dir)["dae_seeds"] == [0, 1]
    second = run_dir / "daes" / "seed-1"
    for directory, seed in ((run_dir, 0), (second, 1)):
        assert (directory / "best.pt").is_file() and len(read_metrics(directory)) == 2
        assert read_json(directory / "config.json")["train"]["seed"] == seed
    train = state["stages"]["train"]
    assert [d["seed"] for d in train["daes"]] == [0, 1] and train["dae_seeds"] == [0, 1]
    assert [d["run_dir"] for d in train["daes"]] == [str(run_dir), str(second)]
    for dae, directory in zip(train["daes"], (run_dir, second)):
        assert dae["status"] == "done" and dae["epochs_run"] == 2 and dae["seconds"] > 0
        assert dae["best_val_loss"] == min(row["val_loss"] for row in read_metrics(directory))
    assert train["seconds"] == pytest.approx(sum(d["seconds"] for d in train["daes"]))
    assert state["total_seconds"] == pytest.approx(sum(s["seconds"] for s in state["stages"].values()))
    # the two DAEs differ (their seeds), and the first is the one-DAE reproduction's run, bit for bit
    assert read_metrics(run_dir) != read_metrics(second)
    from daelab.train import fit
    settings = plan(quick=True)
    fit(settings["model"], settings["train"], tmp_path / "alone", dataset=tiny_dataset, progress=False)
    assert [r["val_loss"] for r in read_metrics(tmp_path / "alone")] == [r["val_loss"] for r in read_metrics(run_dir)]


def test_probe_and_evaluation_are_over_both_daes(two_daes):
    run_dir, state = two_daes
    probe = read_json(run_dir / "probe.json")
    assert probe["dae_seeds"] == [0, 1] and probe["interval_over"]["dae_seeds"] == 2
    assert probe["interval_over"]["scope"] == "over 2 trained DAEs"
    assert probe["run_dirs"] == [str(run_dir), str(run_dir / "daes" / "seed-1")]
    headline = probe["headline"]
    assert (headline["probe"], headline["a"], headline["b"]) == ("mlp", "codes", "raw")
    assert headline["verdict_scoped"].endswith("over 2 trained DAEs") and headline["interval_over"]["dae_seeds"] == 2
    linear = next(c for c in probe["comparisons"] if (c["probe"], c["a"], c["b"]) == ("linear", "codes", "raw"))
    assert linear["interval_over"]["dae_seeds"] == 2 and linear["scope"] == "over 2 trained DAEs"
    assert state["stages"]["probe"]["dae_seeds"] == [0, 1]
    evaluation = read_json(run_dir / "evaluation.json")
    assert evaluation["dae_seeds"]["seeds"] == [0, 1] and state["stages"]["evaluate"]["dae_seeds"] == [0, 1]
    assert evaluation["dae_seeds"]["run_dirs"] == probe["run_dirs"] and (run_dir / "evaluation_daes.npz").is_file()


def test_report_shows_the_design_and_every_dae(two_daes):
    run_dir, _ = two_daes
    probe = read_json(run_dir / "probe.json")
    markdown = (run_dir / "report.md").read_text()
    verdict = next(line for line in markdown.splitlines() if line.startswith("**Verdict ("))
    assert "over 2 trained DAEs" in verdict and "2 DAEs x 2 classifier seeds x 100 test images" in verdict
    assert "2 trained DAEs (the full study trains 3)" in markdown  # the quick banner
    assert "### 2 trained DAEs" in markdown and "daes/seed-1" in markdown  # the training table
    codes = next(r for r in probe["results"] if (r["feature"], r["probe"]) == ("codes", "mlp"))
    per_dae = [sum(a) / len(a) for a in codes["accuracies_by_dae"]]
    assert f"seed 0: {per_dae[0]:.4f} · seed 1: {per_dae[1]:.4f}" in markdown
    assert "5 classifier seeds" not in markdown and "2 classifier seeds x 100 test images" in markdown  # raw's row
    assert "training (DAE seeds)" in markdown and "train (2 DAEs)" in markdown
    evaluation = read_json(run_dir / "evaluation.json")
    assert "### Over 2 trained DAEs (seeds 0, 1)" in markdown
    level = evaluation["dae_seeds"]["levels"][0]
    per_dae = " / ".join(f"{d['psnr']:.2f}" for d in level["per_dae"])
    assert f"| {level['noise']} | 2 | {level['dae']['psnr']['mean']:.2f} [{level['dae']['psnr']['lo']:.2f}" in markdown
    assert per_dae in markdown
    # R_loss at P = 0.2 is judged on the MSE over both DAEs
    images = evaluation["dae_seeds"]["interval_over"]["test_images"]
    assert "R_loss at uniform P = 0.2" in markdown and f"over 2 DAEs x {images:,} test images" in markdown
    # the study's printed accuracies are judged on the design interval, and say so
    sentence = next(line for line in markdown.splitlines() if "printed test accuracy on codes" in line
                    and line.startswith("The study's"))
    design = codes["interval"]
    assert f"[{design['lo']:.4f}, {design['hi']:.4f}] over 2 DAEs x 2 classifier seeds" in sentence \
        or "cannot be judged" in sentence


def test_second_call_redoes_nothing(two_daes, tiny_dataset):
    run_dir, state = two_daes
    checkpoint = (run_dir / "daes" / "seed-1" / "last.pt").stat().st_mtime_ns
    again = reproduce(run_dir, quick=True, dataset=tiny_dataset, progress=False)  # no --dae-seeds: keeps 2
    assert again["dae_seeds"] == [0, 1]
    assert {k: v["finished"] for k, v in again["stages"].items()} == {k: v["finished"]
                                                                      for k, v in state["stages"].items()}
    assert (run_dir / "daes" / "seed-1" / "last.pt").stat().st_mtime_ns == checkpoint


# ---------------------------------------------------------------------- resuming, growing, refusing
def test_cut_during_the_second_dae_resumes_only_it_then_grows(tmp_path, tiny_dataset, monkeypatch):
    import daelab.train
    _small(monkeypatch)
    calls: list = []
    _stub_late_stages(monkeypatch, calls)
    real_fit = daelab.train.fit
    trained: list = []

    def cut_at_seed_1(model_config, config, run_dir, **kwargs):  # seed 1 stops after its first epoch
        trained.append((config.seed, kwargs.get("resume")))
        if config.seed == 1 and not kwargs.get("resume"):
            real_fit(model_config, replace(config, epochs=1), run_dir, **kwargs)
            raise TrainingInterrupted("stopped at epoch 1", kwargs.get("resume_hint"))
        return real_fit(model_config, config, run_dir, **kwargs)

    monkeypatch.setattr(daelab.train, "fit", cut_at_seed_1)
    run_dir = tmp_path / "run"
    with pytest.raises(TrainingInterrupted):
        reproduce(run_dir, quick=True, dataset=tiny_dataset, progress=False, dae_seeds=2)
    cut = load_state(run_dir)["stages"]["train"]
    assert cut["status"] == "partial" and [(d["seed"], d["status"]) for d in cut["daes"]] == [(0, "done"),
                                                                                              (1, "partial")]
    assert cut["daes"][1]["seconds"] > 0 and not calls  # no later stage ran
    first_dae = (run_dir / "last.pt").stat().st_mtime_ns
    epoch_one = read_metrics(run_dir / "daes" / "seed-1")[0]

    trained.clear()
    state = reproduce(run_dir, quick=True, dataset=tiny_dataset, progress=False, dae_seeds=2)
    assert trained == [(1, True)]  # only the cut DAE, continued from its last.pt
    assert (run_dir / "last.pt").stat().st_mtime_ns == first_dae
    assert read_metrics(run_dir / "daes" / "seed-1")[0] == epoch_one and len(read_metrics(run_dir / "daes"
                                                                                          / "seed-1")) == 2
    dae = state["stages"]["train"]["daes"][1]
    assert dae["status"] == "done" and dae["resumed"] is True and dae["seconds"] > cut["daes"][1]["seconds"]
    assert calls == [("evaluate", [0, 1]), ("probe", [0, 1])]

    # another plan: fewer DAE seeds or another first seed is refused, in one line, with nothing touched
    with pytest.raises(UsageError, match="over 2 DAE seeds") as fewer:
        reproduce(run_dir, quick=True, dataset=tiny_dataset, progress=False, dae_seeds=1)
    assert "--dae-seeds 2 or more" in fewer.value.hint
    with pytest.raises(UsageError, match="first DAE has seed 0, not 5") as other:
        reproduce(run_dir, quick=True, dataset=tiny_dataset, progress=False, seed=5)
    assert "--seed 0" in other.value.hint
    assert load_state(run_dir)["dae_seeds"] == [0, 1]

    # more DAE seeds: only the new one trains, evaluate and probe are redone over all three
    trained.clear()
    calls.clear()
    seconds = {d["seed"]: d["seconds"] for d in state["stages"]["train"]["daes"]}
    grown = reproduce(run_dir, quick=True, dataset=tiny_dataset, progress=False, dae_seeds=3)
    assert trained == [(2, False)] and grown["dae_seeds"] == [0, 1, 2]
    assert (run_dir / "daes" / "seed-2" / "best.pt").is_file()
    assert calls == [("evaluate", [0, 1, 2]), ("probe", [0, 1, 2])]
    daes = grown["stages"]["train"]["daes"]
    assert [d["seed"] for d in daes] == [0, 1, 2] and {d["seed"]: d["seconds"] for d in daes[:2]} == seconds
    assert grown["stages"]["train"]["seconds"] == pytest.approx(sum(d["seconds"] for d in daes))


def test_a_legacy_reproduction_grows_from_its_one_dae(tmp_path, tiny_dataset, monkeypatch):
    """A reproduce.json from before DAE seeds (one DAE in RUN_DIR, no dae_seeds): more seeds train beside it."""
    import daelab.train
    _small(monkeypatch)
    calls: list = []
    _stub_late_stages(monkeypatch, calls)
    run_dir = tmp_path / "run"
    reproduce(run_dir, quick=True, dataset=tiny_dataset, progress=False)
    state = load_state(run_dir)
    old = state["stages"]["train"]
    legacy = {k: v for k, v in old.items() if k not in ("daes", "dae_seeds")}
    state = {k: v for k, v in state.items() if k != "dae_seeds"}
    state["stages"]["train"] = legacy
    (run_dir / STATE_FILE).write_text(json.dumps(state))
    trained = []
    real_fit = daelab.train.fit
    monkeypatch.setattr(daelab.train, "fit", lambda m, c, r, **kw: trained.append(c.seed) or real_fit(m, c, r, **kw))
    grown = reproduce(run_dir, quick=True, dataset=tiny_dataset, progress=False, dae_seeds=2)
    assert trained == [1] and grown["dae_seeds"] == [0, 1]
    assert grown["stages"]["train"]["daes"][0]["best_val_loss"] == old["best_val_loss"]


def test_train_overwrite_of_the_run_dir_leaves_the_other_daes(two_daes, tmp_path, tiny_dataset):
    """'daelab train --overwrite' of a reproduction's RUN_DIR replaces the first DAE and the stage outputs only:
    daes/ stays, and reproduce then refuses the directory (it no longer holds its reproduction)."""
    import shutil

    from daelab.train import fit
    run_dir = tmp_path / "copy"
    shutil.copytree(two_daes[0], run_dir)
    settings = plan(quick=True)
    fit(settings["model"], replace(settings["train"], epochs=1), run_dir, dataset=tiny_dataset, progress=False,
        overwrite=True)
    assert (run_dir / "daes" / "seed-1" / "best.pt").is_file() and not (run_dir / STATE_FILE).exists()
    with pytest.raises(UsageError, match="did not start"):
        reproduce(run_dir, quick=True, dataset=tiny_dataset, progress=False)


# ------------------------------------------------------------------------------------------ CLI
def test_cli_passes_the_dae_seeds_through(tmp_path, monkeypatch, capsys):
    from daelab.cli import main
    seen = {}

    def fake(run_dir, **kwargs):
        seen.update(kwargs, run_dir=run_dir)
        return {"dae_seeds": [4, 5], "total_seconds": 3.0, "stages": {"train": {
            "status": "done", "seconds": 3.0, "daes": [{"seed": 4, "run_dir": "r", "seconds": 1.0,
                                                        "best_val_loss": 0.01},
                                                       {"seed": 5, "run_dir": "r/daes/seed-5", "seconds": 2.0}]}}}

    monkeypatch.setattr(rep, "reproduce", fake)
    assert main(["reproduce", "--quick", "--dae-seeds", "2", "--seed", "4", "--run-dir", str(tmp_path),
                 "--no-progress"]) == 0
    assert seen["dae_seeds"] == 2 and seen["seed"] == 4 and seen["quick"] is True and seen["run_dir"] == tmp_path
    out = capsys.readouterr().out
    assert "DAE seed 5" in out and "r/daes/seed-5" in out and "over 2 DAE seed(s)" in out
    main(["reproduce", "--run-dir", str(tmp_path)])
    assert seen["dae_seeds"] is None and seen["seed"] == 0  # the mode's default decides


def test_cli_help_states_the_cost(capsys):
    from daelab.cli import main
    with pytest.raises(SystemExit):
        main(["reproduce", "--help"])
    out = " ".join(capsys.readouterr().out.split())
    assert "--dae-seeds N" in out and "training runs N times" in out and "--seed S" in out
    assert "daes/seed-<s>" in out and "3 times" in out
    with pytest.raises(SystemExit):
        main(["probe", "--help"])
    out = " ".join(capsys.readouterr().out.split())
    assert "RUN_DIR [RUN_DIR ...]" in out and "over N trained DAEs" in out


# ------------------------------------------------------------------------------- the report's rule
def test_the_rule_judges_study_accuracies_on_the_design_interval():
    from daelab.report import study_comparisons
    over = {"dae_seeds": 3, "classifier_seeds": 5, "test_images": 10_000, "resampled": ["dae_seeds"]}
    codes = {"feature": "codes", "probe": "mlp", "mean": 0.8700, "std": 0.001, "lo": 0.8695, "hi": 0.8705, "n": 15,
             "interval": {"mean": 0.8700, "lo": 0.8640, "hi": 0.8760}, "interval_over": over}
    rows = {r["what"]: r for r in study_comparisons(None, {"results": [codes]})}
    printed = rows["printed test accuracy on codes"]  # 0.8752: above the seeds' t-interval, inside the design's
    assert printed["verdict"] == "matched" and "over 3 DAEs x 5 classifier seeds" in printed["sentence"]
    older = {k: v for k, v in codes.items() if k not in ("interval", "interval_over")}  # a probe.json from before
    assert {r["what"]: r for r in study_comparisons(None, {"results": [older]})}[
        "printed test accuracy on codes"]["verdict"] == "not matched"


def test_the_rule_judges_r_loss_over_dae_seeds_where_evaluated():
    from daelab.report import study_comparisons
    level = {"noise": "uniform:0.2", "full": {"methods": {"dae": {"mse": {"mean": 0.02, "lo": 0.019, "hi": 0.021,
                                                                          "n": 200}}}}}
    section = {"seeds": [0, 1, 2], "interval_over": {"dae_seeds": 3, "test_images": 200},
               "levels": [{"noise": "uniform:0.2", "dae": {"mse": {"mean": 0.013, "lo": 0.010, "hi": 0.016}}}]}
    row = {r["what"]: r for r in study_comparisons({"levels": [level], "dae_seeds": section}, None)}[
        "mean R_loss at uniform P = 0.2"]
    assert row["verdict"] == "matched" and "over 3 DAEs x 200 test images" in row["sentence"]
    alone = {r["what"]: r for r in study_comparisons({"levels": [level]}, None)}["mean R_loss at uniform P = 0.2"]
    assert alone["verdict"] == "not matched"


def test_denoising_table_over_dae_seeds_only_when_evaluated():
    from daelab.report._dae_seeds import _dae_seeds_table
    assert _dae_seeds_table(None) == []
    stat = {"mean": 23.4, "lo": 23.1, "hi": 23.7}
    section = {"seeds": [0, 1, 2], "interval_over": {"dae_seeds": 3, "test_images": 10_000,
                                                      "scope": "over 3 trained DAEs"},
               "levels": [{"noise": "uniform:0.05", "dae": {"psnr": stat, "ssim": {"mean": 0.85, "lo": 0.84,
                                                                                      "hi": 0.86},
                                                            "mse": {"mean": 0.0058, "lo": 0.0057, "hi": 0.0059}},
                           "per_dae": [{"seed": s, "psnr": 23.3 + 0.1 * s} for s in range(3)],
                           "gain": {"noisy": {"mean": -8.8, "lo": -9.0, "hi": -8.6},
                                    "nl_means@oracle": {"mean": -10.2, "lo": -10.5, "hi": -9.9}}}]}
    heading, table = _dae_seeds_table(section)
    assert heading.text == "Over 3 trained DAEs (seeds 0, 1, 2)" and "over 3 trained DAEs" in table.text
    assert table.rows == [["uniform:0.05", "3", "23.40 [23.10, 23.70]", "23.30 / 23.40 / 23.50", "0.850 [0.840, 0.860]",
                           "0.00580 [0.00570, 0.00590]", "-8.80 [-9.00, -8.60]",
                           "nl_means@oracle: -10.20 [-10.50, -9.90]"]]
