"""Speed benchmark: daelab's training and inference against a plain PyTorch loop, side by side.

Prints, from one run on one machine state: the machine's fp32/bf16 matrix-product peaks, the plain
loop's samples/s (``../shared/bench/plain_torch_dae.py``, run as a subprocess), daelab's samples/s
for each precision and the ratio, the fraction of the matmul peak that training reaches, inference
images/s on the test set, and the validation loss after N epochs for each precision.

    python benchmarks/bench_train.py                 # the full table (a few minutes)
    python benchmarks/bench_train.py --epochs 2 --loss-epochs 0 --json out.json
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from daelab.data import load_dataset, to_tensor
from daelab.models import ModelConfig, build_model
from daelab.noise import parse_noise
from daelab.precision import make_policy
from daelab.train import TrainConfig, fit, make_optimizer, train_steps

ROOT = Path(__file__).resolve().parents[1]
PLAIN = ROOT.parent / "shared" / "bench" / "plain_torch_dae.py"


def gemm_peak(dtype: torch.dtype, size: int = 2048, repeats: int = 20) -> float:
    """GFLOP/s of a square matrix product in ``dtype``."""
    a, b = torch.randn(size, size).to(dtype), torch.randn(size, size).to(dtype)
    for _ in range(3):
        a @ b
    began = time.perf_counter()
    for _ in range(repeats):
        a @ b
    return 2 * size ** 3 * repeats / (time.perf_counter() - began) / 1e9


def train_flops_per_sample(model: torch.nn.Module) -> float:
    """Matmul FLOPs of one training sample: forward 2*in*out per Linear, backward twice that."""
    return 6.0 * sum(m.in_features * m.out_features for m in model.modules() if isinstance(m, torch.nn.Linear))


def plain_loop(epochs: int, data_dir: str | None) -> dict:
    cmd = [sys.executable, str(PLAIN), "--epochs", str(epochs), "--json"]
    if data_dir:
        cmd += ["--data-dir", data_dir]
    out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def daelab_rate(clean: torch.Tensor, precision: str, epochs: int) -> float:
    """Median samples/s of whole epochs of daelab's training step (epochs after the first)."""
    torch.manual_seed(0)
    model = build_model(ModelConfig())
    config = TrainConfig(precision=precision)
    optimizer = make_optimizer(model, config)
    policy = make_policy(model, precision)
    noise, generator = parse_noise(config.noise), torch.Generator().manual_seed(0)
    steps = -(-len(clean) // config.batch_size)
    rates = []
    for epoch in range(epochs):
        order = torch.randperm(len(clean), generator=torch.Generator().manual_seed(epoch))
        done = train_steps(policy, optimizer, clean, order, noise, generator, config, torch.device("cpu"), 0, steps)
        rates.append(done.samples / done.seconds)
    steady = sorted(rates[1:] or rates)
    return steady[len(steady) // 2]


@torch.inference_mode()
def inference_rate(images: torch.Tensor, precision: str, batch_size: int = 2500, repeats: int = 3) -> float:
    model = build_model(ModelConfig()).eval()
    best = 0.0
    for _ in range(repeats + 1):
        began = time.perf_counter()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16"):
            for start in range(0, len(images), batch_size):
                model(images[start:start + batch_size])
        best = max(best, len(images) / (time.perf_counter() - began))
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--epochs", type=int, default=3, help="timed epochs per contender (first is warm-up)")
    parser.add_argument("--loss-epochs", type=int, default=10, help="epochs for the validation-loss check; 0 skips")
    parser.add_argument("--precisions", default="fp32,bf16")
    parser.add_argument("--data-dir", default=None)
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args()
    precisions = args.precisions.split(",")
    dataset = load_dataset(args.data_dir)
    clean, test = to_tensor(dataset.train_images), to_tensor(dataset.test_images)
    flops = train_flops_per_sample(build_model(ModelConfig()))
    result = {"machine": {"cpu": platform.processor() or platform.machine(), "cores": os.cpu_count(),
                          "threads": torch.get_num_threads(), "torch": torch.__version__},
              "gemm_gflops": {"fp32": gemm_peak(torch.float32), "bf16": gemm_peak(torch.bfloat16)},
              "train_flops_per_sample": flops}
    print(f"GEMM peak: fp32 {result['gemm_gflops']['fp32']:.0f} GFLOP/s, bf16 {result['gemm_gflops']['bf16']:.0f} "
          f"GFLOP/s ({torch.get_num_threads()} threads)", flush=True)
    plain = plain_loop(args.epochs, args.data_dir)
    result["plain_samples_per_s"] = plain["samples_per_s"]
    print(f"plain PyTorch loop: {plain['samples_per_s']:,.0f} samples/s", flush=True)
    result["daelab"] = {}
    for precision in precisions:
        rate = daelab_rate(clean, precision, args.epochs)
        achieved = rate * flops / 1e9
        entry = {"samples_per_s": rate, "ratio_vs_plain": rate / plain["samples_per_s"],
                 "gflops": achieved, "fraction_of_bf16_peak": achieved / result["gemm_gflops"]["bf16"],
                 "fraction_of_fp32_peak": achieved / result["gemm_gflops"]["fp32"],
                 "inference_images_per_s": inference_rate(test, precision)}
        result["daelab"][precision] = entry
        print(f"daelab {precision}: {rate:,.0f} samples/s = {entry['ratio_vs_plain']:.2f}x plain, "
              f"{achieved:.0f} GFLOP/s ({entry['fraction_of_fp32_peak']:.0%} of fp32 peak, "
              f"{entry['fraction_of_bf16_peak']:.0%} of bf16 peak); inference "
              f"{entry['inference_images_per_s']:,.0f} images/s", flush=True)
    if args.loss_epochs:
        for precision in precisions:
            with tempfile.TemporaryDirectory() as tmp:
                began = time.perf_counter()
                out = fit(ModelConfig(), TrainConfig(epochs=args.loss_epochs, precision=precision), tmp,
                          dataset=dataset, progress=False)
                result["daelab"][precision]["val_loss"] = out["final_val_loss"]
                result["daelab"][precision]["fit_seconds"] = time.perf_counter() - began
            print(f"daelab {precision}: validation loss after {args.loss_epochs} epochs "
                  f"{out['final_val_loss']:.5f} ({result['daelab'][precision]['fit_seconds']:.0f}s)", flush=True)
        if {"fp32", "bf16"} <= set(precisions):
            gap = result["daelab"]["bf16"]["val_loss"] / result["daelab"]["fp32"]["val_loss"] - 1
            result["bf16_val_loss_gap"] = gap
            print(f"bf16 vs fp32 validation loss: {gap:+.2%} (target within 2%)")
    print("\n| contender | samples/s | x plain | GFLOP/s | of bf16 peak | inference img/s | val loss |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    print(f"| plain loop (fp32) | {plain['samples_per_s']:,.0f} | 1.00 | "
          f"{plain['samples_per_s'] * flops / 1e9:.0f} | | | |")
    for precision, e in result["daelab"].items():
        print(f"| daelab {precision} | {e['samples_per_s']:,.0f} | {e['ratio_vs_plain']:.2f} | {e['gflops']:.0f} | "
              f"{e['fraction_of_bf16_peak']:.0%} | {e['inference_images_per_s']:,.0f} | "
              f"{e.get('val_loss', float('nan')):.5f} |")
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
