"""Run directories: the lock comes before any clean-up, a finished run is not silently replaced, temp
files of every training write are cleared, and bad sizes, seeds and thread counts are one-line errors."""
import os
import socket
from dataclasses import replace

import numpy as np
import pytest

from conftest import make_synthetic
from daelab.checkpoint import LAST
from daelab.cli import main
from daelab.errors import ConfigError, DataError, RunLockedError, UsageError
from daelab.models import ModelConfig
from daelab.runs import LOCK_FILE, RunLock, claim_run_dir, holds_run, read_metrics, remove_temp_files
from daelab.train import TrainConfig, fit
from daelab.train._config import MAX_SEED

SMALL_MODEL = ModelConfig(hidden=(32,), code_dim=8, decoder_hidden=(32,))
QUICK = dict(epochs=1, batch_size=64, val_subset=64, seed=2)


@pytest.fixture(scope="module")
def data():
    return make_synthetic(n_train=200, n_test=64)


def _train(run_dir, data, **kwargs):
    config = TrainConfig(**{**QUICK, **kwargs.pop("config", {})})
    return fit(SMALL_MODEL, config, run_dir, dataset=data, progress=False, **kwargs)


# ----------------------------------------------------------------------------- issue 18.1
def test_a_second_train_does_not_touch_a_live_runs_temp_files(tmp_path, data):
    """Another process is training here and writing its checkpoint: its temp file must survive us."""
    writing = tmp_path / ".last.pt.k3j2h1.tmp"
    writing.write_bytes(b"half a checkpoint")
    with RunLock(tmp_path):  # the live owner (this pid is alive)
        for resume in (False, True):
            with pytest.raises(RunLockedError, match="in use"):
                _train(tmp_path, data, resume=resume)
            assert writing.read_bytes() == b"half a checkpoint"


def test_a_dead_owners_temp_files_of_every_training_write_are_cleared(tmp_path, data):
    _train(tmp_path, data)
    left = [tmp_path / name for name in (".last.pt.a1.tmp", ".best.pt.link.tmp", ".metrics.jsonl.b2.tmp",
                                         ".config.json.c3.tmp")]
    others = tmp_path / ".evaluation.json.d4.tmp"  # evaluate does not take the lock: not ours to remove
    for path in left + [others]:
        path.write_bytes(b"x")
    (tmp_path / LOCK_FILE).write_text(f"{socket.gethostname()} 999999999\n")  # its process is gone
    _train(tmp_path, data, config={"epochs": 2}, resume=True)
    assert [p.name for p in left if p.exists()] == []
    assert others.exists()
    assert not (tmp_path / LOCK_FILE).exists()


def test_remove_temp_files_names_what_it_removed(tmp_path):
    (tmp_path / ".config.json.zz.tmp").write_text("{")
    (tmp_path / "config.json").write_text("{}")
    assert [p.name for p in remove_temp_files(tmp_path)] == [".config.json.zz.tmp"]
    assert (tmp_path / "config.json").exists()


# ----------------------------------------------------------------------------- issue 18.2
def test_a_finished_run_is_refused_without_resume_or_overwrite(tmp_path, data):
    _train(tmp_path, data)
    before = (tmp_path / LAST).read_bytes()
    with pytest.raises(UsageError, match="already holds a training run") as caught:
        _train(tmp_path, data, config={"seed": 9})
    assert "--resume" in caught.value.hint and "--overwrite" in caught.value.hint
    assert (tmp_path / LAST).read_bytes() == before  # nothing was touched
    assert not (tmp_path / LOCK_FILE).exists()


def test_overwrite_replaces_the_run_and_its_stage_outputs(tmp_path, data):
    _train(tmp_path, data, config={"epochs": 2})
    stale = ["evaluation.json", "evaluation.md", "probe.json", "probe.md", "report.html", "report.md",
             "probe_correct.npz", "evaluation_daes.npz"]  # the per-image arrays would outlive their JSON
    for name in stale:
        (tmp_path / name).write_text("{}")
    (tmp_path / "figures").mkdir()
    (tmp_path / "figures" / "psnr_gain.png").write_bytes(b"png")
    (tmp_path / "notes.txt").write_text("mine")  # not daelab's: stays
    result = _train(tmp_path, data, config={"seed": 9}, overwrite=True)
    assert result["epochs_run"] == 1 and [r["epoch"] for r in read_metrics(tmp_path)] == [1]
    assert [name for name in stale if (tmp_path / name).exists()] == []
    assert not (tmp_path / "figures").exists() and (tmp_path / "notes.txt").read_text() == "mine"
    assert len(list((tmp_path / "tensorboard").glob("events.*"))) == 1  # the old run's events are gone


def test_resume_and_overwrite_together_are_refused(tmp_path, data):
    with pytest.raises(ConfigError, match="exclude"):
        _train(tmp_path, data, resume=True, overwrite=True)


def test_a_run_killed_before_its_first_checkpoint_can_be_started_again(tmp_path, data):
    (tmp_path / "config.json").write_text("{}")  # all such a run leaves behind
    assert not holds_run(tmp_path)
    assert _train(tmp_path, data)["epochs_run"] == 1


def test_claim_run_dir_refuses_stage_outputs_alone(tmp_path):
    (tmp_path / "evaluation.json").write_text("{}")
    with pytest.raises(UsageError, match="already holds"):
        claim_run_dir(tmp_path)


def test_cli_train_into_an_existing_run_is_one_line(tmp_path, data, capsys):
    npz = tmp_path / "d.npz"
    np.savez(npz, x_train=data.train_images, y_train=data.train_labels, x_test=data.test_images,
             y_test=data.test_labels)
    args = ["train", "--data-dir", str(npz), "--run-dir", str(tmp_path / "run"), "--epochs", "1", "--batch-size",
            "64", "--hidden", "32", "--code-dim", "8", "--decoder-hidden", "32", "--no-progress"]
    assert main(args) == 0
    capsys.readouterr()
    assert main(args) == 2
    err = capsys.readouterr().err
    assert err.startswith("daelab: error:") and "already holds a training run" in err
    assert len(err.strip().splitlines()) == 1


# ----------------------------------------------------------------------------- issue 18.10
def test_read_only_run_dir_on_resume_is_a_clear_error(tmp_path, data, monkeypatch, capsys):
    _train(tmp_path, data)
    real_open = os.open

    def read_only(path, *args, **kwargs):  # what a read-only directory does to the lock file (even as root)
        if str(path).endswith(LOCK_FILE):
            raise PermissionError(13, "Permission denied", str(path))
        return real_open(path, *args, **kwargs)

    monkeypatch.setattr(os, "open", read_only)
    with pytest.raises(UsageError, match="cannot write to run directory"):
        _train(tmp_path, data, config={"epochs": 2}, resume=True)
    assert main(["train", "--resume", str(tmp_path), "--epochs", "2", "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert "cannot write to run directory" in err and "Permission denied" in err
    assert len(err.strip().splitlines()) == 1


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only directories")
def test_really_read_only_run_dir(tmp_path, data):
    _train(tmp_path, data)
    tmp_path.chmod(0o555)
    try:
        with pytest.raises(UsageError, match="cannot write to run directory"):
            _train(tmp_path, data, config={"epochs": 2}, resume=True)
    finally:
        tmp_path.chmod(0o755)


def test_batch_larger_than_the_training_set_is_refused(tmp_path, data):
    with pytest.raises(ConfigError, match="larger than the 200 training images") as caught:
        _train(tmp_path, data, config={"batch_size": 10 ** 8})
    assert "--batch-size 200" in caught.value.hint
    assert _train(tmp_path / "ok", data, config={"batch_size": 200})["epochs_run"] == 1  # all of them is fine


@pytest.mark.parametrize("model", [SMALL_MODEL, ModelConfig(name="conv", channels=4)], ids=["mlp", "conv"])
def test_images_of_another_size_than_the_model_are_refused(tmp_path, model):
    big = make_synthetic(n_train=64, n_test=16, size=32)
    with pytest.raises(DataError, match="32x32 but the model takes") as caught:
        fit(model, TrainConfig(**QUICK), tmp_path, dataset=big, progress=False)
    assert "--image-size 32" in caught.value.hint
    assert fit(replace(model, image_size=32), TrainConfig(**{**QUICK, "batch_size": 32}), tmp_path / "ok",
               dataset=big, progress=False)["epochs_run"] == 1


@pytest.mark.parametrize("values,words", [
    ({"threads": 10 ** 5}, "threads 100000 is more than this machine can use"),
    ({"seed": 10 ** 19}, "seed 10000000000000000000 is out of range"),
    ({"seed": -1}, "seed -1 is out of range"),
])
def test_config_bounds(values, words):
    with pytest.raises(ConfigError, match=words):
        TrainConfig(**values)


@pytest.mark.parametrize("argv,words", [
    (["--threads", "100000"], "at most"),
    (["--seed", "12345678901234567890"], "use a seed in 0.."),
])
def test_config_bounds_on_the_command_line_are_one_line(argv, words, capsys):
    assert main(["train", *argv]) == 2
    err = capsys.readouterr().err
    assert err.startswith("daelab: error:") and words in err and len(err.strip().splitlines()) == 1


def test_the_largest_seed_trains(tmp_path, data):
    """Every stream derived from the largest seed (seed * 1_000_003 + epoch for the order) fits torch's seeds."""
    result = _train(tmp_path, data, config={"seed": MAX_SEED, "epochs": 2})
    assert result["epochs_run"] == 2
    with pytest.raises(ConfigError):
        TrainConfig(seed=MAX_SEED + 1)
