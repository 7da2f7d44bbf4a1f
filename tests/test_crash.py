"""Crash safety: SIGKILL at random points, Ctrl-C, one writer per run, unsafe or foreign checkpoints,
a full disk, and an unwritable run directory. Nothing may be lost and nothing may get in."""
import os
import pickle
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

import killharness
from daelab.checkpoint import LAST, VERSION, load_checkpoint, save_checkpoint
from daelab.cli import main
from daelab.errors import CheckpointError, UsageError
from daelab.models import ModelConfig
from daelab.train import TrainConfig, fit

ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}


def test_ten_random_sigkills_lose_nothing(tmp_path):
    result = killharness.trial(tmp_path, kills=10, seed=1, max_delay=0.0)
    assert result["kills"] == 10


def _start(tmp_path, extra=()):
    data = killharness.make_data(tmp_path / "data.npz")
    run_dir = tmp_path / "run"
    args = killharness.command(data, run_dir, False) + ["--epochs", "200", *extra]
    return subprocess.Popen(args, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True), run_dir


def _wait_for(path: Path, proc, timeout=60):
    deadline = time.time() + timeout
    while not path.exists():
        assert proc.poll() is None, proc.communicate()
        assert time.time() < deadline, f"{path} never appeared"
        time.sleep(0.05)


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_ctrl_c_checkpoints_and_says_how_to_resume(tmp_path, sig):
    proc, run_dir = _start(tmp_path)
    _wait_for(run_dir / LAST, proc)
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130
    assert f"resume with: daelab train --resume {run_dir}" in err and "Traceback" not in err
    state = load_checkpoint(run_dir / LAST)
    assert 0 < state["epoch"] * 10 + state["epoch_step"]  # progress was saved
    assert not (run_dir / "train.lock").exists()


def test_second_writer_is_refused(tmp_path):
    proc, run_dir = _start(tmp_path)
    try:
        _wait_for(run_dir / "train.lock", proc)
        second = subprocess.run([sys.executable, "-m", "daelab", "train", "--resume", str(run_dir)],
                                env=ENV, capture_output=True, text=True, timeout=120)
        assert second.returncode == 2
        assert "in use by another training process" in second.stderr
        assert len(second.stderr.strip().splitlines()) == 1
    finally:
        proc.kill()
        proc.wait()


class _Payload:
    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_pickle_payload_checkpoint_is_refused_and_runs_nothing(tmp_path):
    marker = tmp_path / "pwned"
    payload = _Payload()
    payload.marker = marker
    evil = tmp_path / "last.pt"
    with open(evil, "wb") as handle:
        pickle.dump({"format": "daelab-checkpoint", "version": 1, "model": payload}, handle)
    with pytest.raises(CheckpointError, match="refused"):
        load_checkpoint(evil)
    torch.save({"format": "daelab-checkpoint", "version": 1, "x": payload}, evil)
    with pytest.raises(CheckpointError, match="refused"):
        load_checkpoint(evil)
    assert not marker.exists()


def test_newer_version_and_garbage_are_clear_errors(tmp_path):
    path = tmp_path / "c.pt"
    torch.save({"format": "daelab-checkpoint", "version": VERSION + 1}, path)
    with pytest.raises(CheckpointError, match="upgrade daelab"):
        load_checkpoint(path)
    torch.save({"weights": torch.zeros(3)}, path)
    with pytest.raises(CheckpointError, match="not a daelab checkpoint"):
        load_checkpoint(path)
    path.write_bytes(b"\x00garbage" * 10)
    with pytest.raises(CheckpointError, match="corrupt"):
        load_checkpoint(path)
    path.write_bytes(b"")
    with pytest.raises(CheckpointError, match="corrupt"):
        load_checkpoint(path)


def test_disk_full_keeps_previous_checkpoint(tmp_path, tiny_dataset, monkeypatch):
    config = TrainConfig(epochs=1, batch_size=64)
    fit(ModelConfig(), config, tmp_path, dataset=tiny_dataset, progress=False)
    before = load_checkpoint(tmp_path / LAST)["model"]

    def full_disk(obj, handle, *args, **kwargs):
        handle.write(b"partial")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(torch, "save", full_disk)
    with pytest.raises(CheckpointError, match="No space left on device"):
        fit(ModelConfig(), TrainConfig(epochs=2, batch_size=64), tmp_path, dataset=tiny_dataset,
            progress=False, resume=True)
    monkeypatch.undo()
    after = load_checkpoint(tmp_path / LAST)["model"]
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert not list(tmp_path.glob(".*.tmp"))


def test_unwritable_run_dir_is_a_clear_error(tmp_path, tiny_dataset):
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    with pytest.raises(UsageError, match="cannot create run directory"):
        fit(ModelConfig(), TrainConfig(epochs=1), blocker / "run", dataset=tiny_dataset, progress=False)


def test_debug_shows_traceback_otherwise_one_line(capsys):
    assert main(["train", "--noise", "bogus:1"]) == 2
    assert len(capsys.readouterr().err.strip().splitlines()) == 1
    with pytest.raises(Exception, match="unknown noise model"):
        main(["--debug", "train", "--noise", "bogus:1"])


def test_save_checkpoint_tags_format(tmp_path):
    save_checkpoint(tmp_path / "x.pt", {"model": {"w": torch.ones(2)}})
    assert load_checkpoint(tmp_path / "x.pt")["version"] == VERSION


def test_ctrl_c_inside_a_checkpoint_write_is_reported_as_the_interrupt(tmp_path):
    # torch.save's zip writer, interrupted, raises its own error while unwinding: the caller must
    # still see the KeyboardInterrupt (one line in the CLI), and the old file must stay as it was.
    from daelab.checkpoint import atomic_write
    target = tmp_path / "last.pt"
    target.write_bytes(b"previous")

    def interrupted_write(handle):
        try:
            handle.write(b"partial")
            raise KeyboardInterrupt
        finally:
            raise RuntimeError("unexpected pos")  # what the zip writer's __exit__ raises then

    with pytest.raises(KeyboardInterrupt):
        atomic_write(target, interrupted_write)
    assert target.read_bytes() == b"previous"
    assert [p.name for p in tmp_path.iterdir()] == ["last.pt"]  # no temp file left behind
