"""Kill-and-resume harness: SIGKILL ``daelab train`` at random moments and prove nothing is lost.

For each trial it starts training in a subprocess, kills it (SIGKILL) after a random delay,
checks that every checkpoint on disk loads, and resumes; once a run finishes, its final weights
must equal, bit for bit, those of an uninterrupted run with the same seed (CPU, one thread).

    python tests/killharness.py --kills 10          # what the test suite runs
    python tests/killharness.py --many 300          # hundreds of kill points
"""
from __future__ import annotations

import argparse
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

# A small model and data set so a run takes a few seconds; checkpoints every 2 steps so kills land
# during epochs, between steps and during checkpoint writes alike.
TRAIN_ARGS = ["--epochs", "3", "--batch-size", "32", "--hidden", "64,32", "--code-dim", "16",
              "--decoder-hidden", "32", "--checkpoint-every", "2", "--threads", "1", "--seed", "5",
              "--no-progress"]


def make_data(path: Path) -> Path:
    rng = np.random.default_rng(0)
    np.savez(path, x_train=rng.integers(0, 256, (320, 28, 28), dtype=np.uint8), y_train=rng.integers(0, 10, 320),
             x_test=rng.integers(0, 256, (64, 28, 28), dtype=np.uint8), y_test=rng.integers(0, 10, 64))
    return path


def command(data: Path, run_dir: Path, resume: bool) -> list[str]:
    base = [sys.executable, "-m", "daelab", "-q", "train"]
    if resume:
        return base + ["--resume", str(run_dir), "--no-progress", "--threads", "1"]
    return base + ["--data-dir", str(data), "--run-dir", str(run_dir)] + TRAIN_ARGS


def weights(run_dir: Path) -> dict:
    from daelab.checkpoint import load_checkpoint
    return load_checkpoint(run_dir / "last.pt")["model"]


def check_all_checkpoints_load(run_dir: Path) -> int:
    from daelab.checkpoint import load_checkpoint
    found = 0
    for path in run_dir.glob("*.pt"):
        load_checkpoint(path)  # raises if a kill left a broken file
        found += 1
    return found


def wait_for_training(proc: subprocess.Popen, run_dir: Path, started: float) -> None:
    """Block until the process has (re)written config.json, i.e. finished start-up, or has exited."""
    config = run_dir / "config.json"
    while proc.poll() is None:
        if config.is_file() and config.stat().st_mtime >= started:
            return
        time.sleep(0.02)


def run_to_completion(data: Path, run_dir: Path, rng: random.Random, kills: int, max_delay: float,
                      env: dict) -> dict:
    """Start, SIGKILL at a random moment of training up to ``kills`` times, then let it finish."""
    done_kills = during_write = 0
    while True:
        resume = (run_dir / "last.pt").is_file()
        started = time.time() - 0.01
        proc = subprocess.Popen(command(data, run_dir, resume), env=env, stdout=subprocess.DEVNULL,
                                stderr=subprocess.PIPE, text=True)
        if done_kills < kills:
            wait_for_training(proc, run_dir, started)
            try:
                proc.wait(timeout=rng.uniform(0.0, max_delay))
            except subprocess.TimeoutExpired:
                proc.send_signal(signal.SIGKILL)
                proc.wait()
                done_kills += 1
                during_write += bool(list(run_dir.glob(".*.pt.*.tmp")))
                check_all_checkpoints_load(run_dir)
                continue
        _, err = proc.communicate(timeout=600)
        if proc.returncode != 0:
            raise AssertionError(f"training failed after {done_kills} kills: {err}")
        return {"kills": done_kills, "during_write": during_write}


def trial(workdir: Path, kills: int, seed: int, max_delay: float) -> dict:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    data = make_data(workdir / "data.npz")
    reference = workdir / "reference"
    subprocess.run(command(data, reference, False), env=env, check=True, stdout=subprocess.DEVNULL)
    expected = weights(reference)
    # kill anywhere in the training part of a run: from config.json being written to the last checkpoint
    max_delay = max_delay or (reference / "last.pt").stat().st_mtime - (reference / "config.json").stat().st_mtime
    rng = random.Random(seed)
    total = during_write = index = 0
    while total < kills:
        run_dir = workdir / f"killed-{index}"
        result = run_to_completion(data, run_dir, rng, kills - total, max_delay, env)
        total += result["kills"]
        during_write += result["during_write"]
        got = weights(run_dir)
        different = [k for k in expected if not torch.equal(expected[k], got[k])]
        if different:
            raise AssertionError(f"{run_dir}: weights differ from the uninterrupted run in {different[:3]}")
        check_all_checkpoints_load(run_dir)
        index += 1
    return {"kills": total, "runs": index, "during_write": during_write, "max_delay": max_delay}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--kills", type=int, default=10, help="kill points to try (default 10)")
    parser.add_argument("--many", type=int, help="shorthand for --kills N with a long run")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--max-delay", type=float, default=0.0,
                        help="longest wait after start-up before a kill, seconds (default: the training time of "
                             "an uninterrupted run)")
    args = parser.parse_args()
    kills = args.many or args.kills
    started = time.time()
    with tempfile.TemporaryDirectory() as tmp:
        result = trial(Path(tmp), kills, args.seed, args.max_delay)
    print(f"{result['kills']} kill points ({result['during_write']} during a checkpoint write) over "
          f"{result['runs']} resumed runs, delays up to {result['max_delay']:.1f}s: final weights equal the "
          f"uninterrupted run bit for bit, every checkpoint loaded ({time.time() - started:.0f}s)")


if __name__ == "__main__":
    main()
