"""DDP benchmark: training samples/s of the study model with 1 vs 2 processes (torchrun, gloo on CPU).

Each contender trains the same subset for a few epochs through ``torchrun -m daelab train``; the
samples/s are read from the run's ``metrics.jsonl`` (global throughput: all ranks' samples over the
slowest rank's epoch time), epochs after the first.

    python benchmarks/bench_ddp.py [--subset 20000] [--epochs 3] [--procs 1,2]
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path


def run(procs: int, subset: int, epochs: int, threads: int, workdir: Path) -> dict:
    run_dir = workdir / f"ddp{procs}"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={procs}",
           "-m", "daelab", "-q", "train", "--run-dir", str(run_dir), "--subset", str(subset),
           "--epochs", str(epochs), "--val-subset", "2000", "--threads", str(threads), "--no-progress"]
    subprocess.run(cmd, check=True, env={**os.environ, "OMP_NUM_THREADS": str(threads)})
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    steady = [r["samples_per_s"] for r in rows[1:]] or [rows[0]["samples_per_s"]]
    return {"procs": procs, "threads_per_proc": threads, "samples_per_s": statistics.median(steady),
            "final_train_loss": rows[-1]["train_loss"], "final_val_loss": rows[-1]["val_loss"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--subset", type=int, default=20000)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--procs", default="1,2")
    args = parser.parse_args()
    cores = os.cpu_count() or 1
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        for procs in map(int, args.procs.split(",")):
            results.append(run(procs, args.subset, args.epochs, max(1, cores // procs), Path(tmp)))
            print(f"{procs} process(es) x {results[-1]['threads_per_proc']} threads: "
                  f"{results[-1]['samples_per_s']:,.0f} samples/s, final val loss {results[-1]['final_val_loss']:.5f}",
                  flush=True)
    base = results[0]["samples_per_s"]
    for r in results[1:]:
        print(f"{r['procs']} vs {results[0]['procs']} process(es): {r['samples_per_s'] / base:.2f}x")
    print(json.dumps(results))


if __name__ == "__main__":
    main()
