"""daelab reproduce: the quick pipeline end to end on the synthetic set, stage state, and no redone work."""
from __future__ import annotations

import importlib.util

import pytest

from daelab.errors import UsageError
from daelab.reproduce import STAGES, STATE_FILE, load_state, plan, reproduce
from daelab.runs import read_json, read_metrics, write_json

HAS_PROBE = importlib.util.find_spec("daelab.probe") is not None


def _quick_settings_small(monkeypatch):
    """Keep the quick plan's shape but fit the synthetic set (600 train / 200 test images)."""
    import daelab.reproduce as rep
    monkeypatch.setattr(rep, "QUICK_EVAL", {**rep.QUICK_EVAL, "denoisers": "gaussian_blur,tv", "max_images": 30,
                                            "robustness": "gaussian:0.1;uniform:0.2", "robustness_max_images": 40})
    monkeypatch.setattr(rep, "QUICK_PROBE", {**rep.QUICK_PROBE, "epochs": 2, "probes": ("mlp", "linear")})


def test_quick_plan_is_smaller_than_the_study():
    full, quick = plan(False), plan(True)
    assert full["train"].epochs == 100 and full["train"].subset is None
    assert quick["train"].epochs < 10 and quick["train"].subset
    assert full["evaluate"].max_images == 1000 and quick["evaluate"].max_images < full["evaluate"].max_images
    assert quick["probe"]["seeds"] < 5 and quick["probe"]["epochs"] < 100


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory, tiny_dataset):
    mp = pytest.MonkeyPatch()
    _quick_settings_small(mp)
    run_dir = tmp_path_factory.mktemp("reproduce") / "quick"
    state = reproduce(run_dir, quick=True, dataset=tiny_dataset, progress=False)
    yield run_dir, state
    mp.undo()


def test_quick_reproduce_records_every_stage(quick_run):
    run_dir, state = quick_run
    assert state["mode"] == "quick" and list(state["stages"]) == list(STAGES)
    on_disk = read_json(run_dir / STATE_FILE)
    assert on_disk["stages"].keys() == state["stages"].keys()
    for name in ("train", "evaluate", "report"):
        stage = on_disk["stages"][name]
        assert stage["status"] == "done" and stage["seconds"] > 0 and stage["finished"]
    assert on_disk["stages"]["train"]["settings"]["train"]["epochs"] == 3
    assert on_disk["stages"]["evaluate"]["settings"]["max_images"] == 30
    probe = on_disk["stages"]["probe"]
    assert probe["status"] == ("done" if HAS_PROBE else "skipped")
    assert (run_dir / "probe.json").is_file() == HAS_PROBE
    assert len(read_metrics(run_dir)) == 3
    assert on_disk["environment"]["torch"] and on_disk["environment"]["cpu_count"] >= 1
    page = (run_dir / "report.html").read_text()
    assert "Quick run." in page and "(quick mode)" in page


def test_second_call_redoes_nothing(quick_run, tiny_dataset):
    run_dir, state = quick_run
    report_mtime = (run_dir / "report.html").stat().st_mtime_ns
    checkpoint_mtime = (run_dir / "last.pt").stat().st_mtime_ns
    again = reproduce(run_dir, quick=True, dataset=tiny_dataset, progress=False)
    for name in STAGES:
        assert again["stages"][name]["finished"] == state["stages"][name]["finished"]
        assert again["stages"][name]["seconds"] == state["stages"][name]["seconds"]
    assert (run_dir / "report.html").stat().st_mtime_ns == report_mtime
    assert (run_dir / "last.pt").stat().st_mtime_ns == checkpoint_mtime


def test_other_mode_or_foreign_run_refused(quick_run, tiny_run, tmp_path):
    run_dir, _ = quick_run
    with pytest.raises(UsageError, match="quick reproduction"):
        reproduce(run_dir, quick=False, progress=False)
    with pytest.raises(UsageError, match="did not start"):
        reproduce(tiny_run, quick=True, progress=False)


def test_interrupted_training_resumes(tmp_path, tiny_dataset, monkeypatch):
    """A run dir whose training stopped after 1 of 3 epochs: reproduce continues it instead of restarting."""
    from dataclasses import replace

    import daelab.reproduce as rep
    from daelab.train import fit
    _quick_settings_small(monkeypatch)
    run_dir = tmp_path / "run"
    settings = plan(quick=True)
    fit(settings["model"], replace(settings["train"], epochs=1), run_dir, dataset=tiny_dataset, progress=False)
    first_epoch = read_metrics(run_dir)[0]
    write_json(run_dir / STATE_FILE, {"version": 1, "mode": "quick", "run_dir": str(run_dir), "stages": {}})
    monkeypatch.setattr(rep, "RUNNERS", {**rep.RUNNERS, "evaluate": lambda *a: {"stub": True},
                                         "probe": lambda *a: {"stub": True}})
    state = reproduce(run_dir, quick=True, dataset=tiny_dataset, progress=False)
    assert state["stages"]["train"]["resumed"] is True
    metrics = read_metrics(run_dir)
    assert len(metrics) == 3 and metrics[0] == first_epoch  # epoch 1 kept, not retrained
    assert load_state(run_dir)["stages"]["train"]["epochs_run"] == 3


def test_reproduce_cli_help(capsys):
    from daelab.cli import main
    with pytest.raises(SystemExit):
        main(["reproduce", "--help"])
    out = capsys.readouterr().out
    assert "--quick" in out and "--run-dir" in out and "runs/study" in out and "--data-dir" in out


def test_interrupted_training_says_to_rerun_reproduce(tmp_path, tiny_dataset, monkeypatch):
    """Ctrl-C during the train stage: the hint is to rerun reproduce (which resumes), not 'daelab train'."""
    import daelab.train
    from daelab.errors import TrainingInterrupted
    _quick_settings_small(monkeypatch)

    def stopped(*args, resume_hint=None, **kwargs):  # as fit stops: its message, the caller's hint
        raise TrainingInterrupted("stopped at epoch 2, step 5; checkpoint written to x/last.pt",
                                  resume_hint or "resume with: daelab train --resume x")

    monkeypatch.setattr(daelab.train, "fit", stopped)
    with pytest.raises(TrainingInterrupted) as caught:
        reproduce(tmp_path / "run", quick=True, dataset=tiny_dataset, progress=False)
    assert caught.value.message.startswith("stopped at epoch 2, step 5")
    assert "daelab reproduce" in caught.value.hint and "daelab train" not in caught.value.hint
    assert caught.value.exit_code == 130


def test_a_training_run_of_other_settings_is_not_continued(tmp_path, tiny_dataset, monkeypatch):
    """A reproduction whose run dir holds a checkpoint of another config says so instead of resuming it."""
    from dataclasses import replace

    from daelab.checkpoint import LAST
    from daelab.train import fit
    _quick_settings_small(monkeypatch)
    run_dir = tmp_path / "run"
    settings = plan(quick=True)
    fit(settings["model"], replace(settings["train"], epochs=1, batch_size=100, lr=3e-3), run_dir,
        dataset=tiny_dataset, progress=False)
    write_json(run_dir / STATE_FILE, {"version": 1, "mode": "quick", "run_dir": str(run_dir), "stages": {}})
    before = (run_dir / LAST).read_bytes()
    with pytest.raises(UsageError, match="other settings than this reproduction.*batch_size, lr") as caught:
        reproduce(run_dir, quick=True, dataset=tiny_dataset, progress=False)
    assert "another --run-dir" in caught.value.hint
    assert (run_dir / LAST).read_bytes() == before and len(read_metrics(run_dir)) == 1


def test_same_run_check_allows_the_machine_settings_more_epochs_and_newer_defaults():
    from dataclasses import replace

    from daelab.config import to_jsonable
    from daelab.reproduce import _check_same_run
    settings = plan(quick=True)
    train = to_jsonable(replace(settings["train"], epochs=1, threads=3, device="cpu", data_dir="/elsewhere"))
    del train["sync_bn"]  # a checkpoint from before a setting existed: its default is assumed
    checkpoint = {"model_config": to_jsonable(settings["model"]), "train_config": train, "epoch": 1}
    _check_same_run("run", checkpoint, settings)  # nothing raised
    with pytest.raises(UsageError, match=r"\(seed\)"):
        _check_same_run("run", {**checkpoint, "train_config": {**train, "seed": 7}}, settings)
    with pytest.raises(UsageError, match="9 epochs done of 3 planned"):
        _check_same_run("run", {**checkpoint, "epoch": 9}, settings)
