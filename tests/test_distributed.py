"""DDP on CPU with gloo: two processes stay in sync, the loss falls, only rank 0 writes, resume works."""
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from daelab import distributed as dist

HERE = Path(__file__).parent
ENV = {**os.environ, "OMP_NUM_THREADS": "1"}


def torchrun(*args, nproc=2):
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}", *map(str, args)]
    result = subprocess.run(cmd, env=ENV, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    return result


def test_two_processes_identical_weights_and_single_output(tmp_path):
    run_dir, out = tmp_path / "run", tmp_path / "out"
    torchrun(HERE / "ddp_worker.py", run_dir, out)
    rank0, rank1 = (torch.load(out / f"rank{r}-of-2.pt", weights_only=True) for r in (0, 1))
    assert rank0["model"].keys() == rank1["model"].keys()
    for key in rank0["model"]:
        assert torch.equal(rank0["model"][key], rank1["model"][key]), key
    losses = [row["train_loss"] for row in rank0["history"]]
    assert losses[-1] < losses[0]
    assert rank0["history"] == rank1["history"]  # metrics are averaged over ranks, so all ranks agree
    rows = (run_dir / "metrics.jsonl").read_text().splitlines()
    assert len(rows) == 3
    assert len(list((run_dir / "tensorboard").glob("events.*"))) == 1
    assert json.loads((run_dir / "config.json").read_text())["world_size"] == 2
    assert sorted(p.name for p in run_dir.glob("*.pt")) == ["best.pt", "last.pt"]


def test_cli_under_torchrun_resumes(tmp_path, tiny_dataset):
    data = tmp_path / "d.npz"
    d = tiny_dataset
    np.savez(data, x_train=d.train_images[:256], y_train=d.train_labels[:256], x_test=d.test_images[:64],
             y_test=d.test_labels[:64])
    run_dir = tmp_path / "run"
    common = ["--no-progress", "--threads", "1"]
    torchrun("-m", "daelab", "train", "--data-dir", data, "--run-dir", run_dir, "--epochs", "1", "--batch-size", "32",
             "--hidden", "32", "--code-dim", "8", "--decoder-hidden", "32", *common)
    torchrun("-m", "daelab", "train", "--resume", run_dir, "--epochs", "2", *common)
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows] == [1, 2]
    assert rows[1]["train_loss"] < rows[0]["train_loss"]


def test_sharding_covers_every_sample_once_per_epoch():
    n, world = 103, 4
    shards = [dist.epoch_order(n, seed=1, epoch=2, ctx=dist.DistContext(True, rank, world), device="cpu")
              for rank in range(world)]
    assert len({len(s) for s in shards}) == 1  # equal steps on every rank (no DDP hang)
    seen = torch.cat(shards)
    assert set(seen.tolist()) == set(range(n))
    assert len(seen) == dist.shard_size(n, dist.DistContext(True, 0, world)) * world
    other = dist.epoch_order(n, seed=1, epoch=3, ctx=dist.DistContext(True, 0, world), device="cpu")
    assert not torch.equal(other, shards[0])  # a new order each epoch


def test_single_process_never_touches_torch_distributed(monkeypatch):
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    ctx = dist.init()
    assert not ctx.enabled and ctx.is_main
    assert dist.all_reduce_mean(2.5, ctx) == 2.5 and dist.any_true(True, ctx)
    model = torch.nn.Linear(2, 2)
    assert dist.wrap_model(model, ctx) is model


def test_sync_bn_on_cpu_is_a_clear_error():
    from daelab.errors import ConfigError
    with pytest.raises(ConfigError, match="GPUs only"):
        dist.wrap_model(torch.nn.BatchNorm1d(3), dist.DistContext(True, 0, 2, 0, torch.device("cpu")), sync_bn=True)
