"""Speed benchmark: daelab's training and inference against a plain PyTorch loop, side by side.

Prints, from one run on one machine state: the machine's fp32/bf16 matrix-product peaks, the matmul
rate of the study model's own GEMM shapes (batch 256, forward and backward: the ceiling for a step),
the plain loop's samples/s (``../shared/bench/plain_torch_dae.py``, run as a subprocess), daelab's
samples/s for each mode and the ratio, the fraction of the matmul peak that training reaches,
inference images/s on the test set, and the validation loss after N epochs for each mode.

Modes: ``fp32`` (PyTorch ops, fp32), ``bf16-torch`` (PyTorch ops, bf16 shadow weights; ``--kernels
torch``), ``bf16`` (the default: daelab's fused C kernels, bf16 matmuls, fp32 master weights).

    python benchmarks/bench_train.py                 # the full table (a few minutes)
    python benchmarks/bench_train.py --epochs 2 --rounds 1 --loss-epochs 0 --json out.json
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
from statistics import median

import torch

from daelab.data import load_dataset, to_tensor
from daelab.models import ModelConfig, build_model
from daelab.noise import parse_noise
from daelab.train import TrainConfig, fit, make_optimizer, make_training_policy, train_steps

ROOT = Path(__file__).resolve().parents[1]
# the project's reference loop, beside the repository (a clone elsewhere names it in DAELAB_PLAIN_BENCH)
PLAIN = Path(os.environ.get("DAELAB_PLAIN_BENCH") or ROOT.parent / "shared" / "bench" / "plain_torch_dae.py")


def gemm_peak(dtype: torch.dtype, size: int = 2048, repeats: int = 10, tries: int = 3) -> float:
    """GFLOP/s of a square matrix product in ``dtype``: the best of ``tries`` timings (a peak)."""
    a, b = torch.randn(size, size).to(dtype), torch.randn(size, size).to(dtype)
    for _ in range(3):
        a @ b
    best = 0.0
    for _ in range(tries):
        began = time.perf_counter()
        for _ in range(repeats):
            a @ b
        best = max(best, 2 * size ** 3 * repeats / (time.perf_counter() - began) / 1e9)
    return best


MODES = {"fp32": {"precision": "fp32", "kernels": "torch"},
         "bf16-torch": {"precision": "bf16", "kernels": "torch"},
         "bf16": {"precision": "bf16", "kernels": "auto"}}


def model_gemm_rate(model: torch.nn.Module, batch: int = 256, repeats: int = 50) -> float:
    """GFLOP/s of exactly the bf16 matrix products of one training step of ``model`` (no other work)."""
    shapes = [(m.in_features, m.out_features) for m in model.modules() if isinstance(m, torch.nn.Linear)]
    bf16 = torch.bfloat16
    weights = [torch.randn(o, i).to(bf16) for i, o in shapes]
    inputs = [torch.randn(batch, i).to(bf16) for i, _ in shapes]
    grads = [torch.randn(batch, o).to(bf16) for _, o in shapes]

    def step():
        for k, (w, x, g) in enumerate(zip(weights, inputs, grads)):
            x @ w.t()
            g.t() @ x
            if k:
                g @ w
    flops = sum(2 * batch * i * o * (3 if k else 2) for k, (i, o) in enumerate(shapes))
    for _ in range(5):
        step()
    began = time.perf_counter()
    for _ in range(repeats):
        step()
    return flops * repeats / (time.perf_counter() - began) / 1e9


def train_flops_per_sample(model: torch.nn.Module) -> float:
    """Matmul FLOPs of one training sample: 2*in*out per Linear forward, twice that backward, except
    the first layer's input gradient, which nobody computes (the noisy images need none)."""
    linears = [m for m in model.modules() if isinstance(m, torch.nn.Linear)]
    return sum(2.0 * m.in_features * m.out_features * (2 if k == 0 else 3) for k, m in enumerate(linears))


def steal_seconds() -> float | None:
    """CPU seconds stolen by the hypervisor so far (Linux ``/proc/stat``), or None where unknown."""
    try:
        fields = Path("/proc/stat").read_text().split("\n", 1)[0].split()
        return int(fields[8]) / os.sysconf("SC_CLK_TCK")
    except (OSError, IndexError, ValueError):
        return None


def plain_loop(epochs: int, data_dir: str | None) -> dict:
    if not PLAIN.is_file():
        sys.exit(f"benchmark: no plain loop at {PLAIN} (set DAELAB_PLAIN_BENCH to plain_torch_dae.py's path)")
    cmd = [sys.executable, str(PLAIN), "--epochs", str(epochs), "--json"]
    if data_dir:
        cmd += ["--data-dir", data_dir]
    out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def daelab_rate(clean: torch.Tensor, mode: str, epochs: int) -> float:
    """Median samples/s of whole epochs of daelab's training step (epochs after the first)."""
    torch.manual_seed(0)
    model = build_model(ModelConfig())
    config = TrainConfig(**MODES[mode])
    optimizer = make_optimizer(model, config)
    policy = make_training_policy(model, optimizer, config, torch.device("cpu"))
    if mode == "bf16" and not getattr(policy, "fused", False):
        print("note: the fused kernels are unavailable here; 'bf16' runs PyTorch ops", file=sys.stderr)
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
def inference_rate(images: torch.Tensor, mode: str, batch_size: int = 2500, repeats: int = 3) -> float:
    model = build_model(ModelConfig()).eval()
    best = 0.0
    for _ in range(repeats + 1):
        began = time.perf_counter()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=MODES[mode]["precision"] == "bf16"):
            for start in range(0, len(images), batch_size):
                model(images[start:start + batch_size])
        best = max(best, len(images) / (time.perf_counter() - began))
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--epochs", type=int, default=2, help="epochs per contender and round (the first is "
                        "warm-up; the median of the others counts)")
    parser.add_argument("--rounds", type=int, default=5, help="rounds of all contenders (medians are reported)")
    parser.add_argument("--loss-epochs", type=int, default=10, help="epochs for the validation-loss check; 0 skips")
    parser.add_argument("--modes", default="fp32,bf16-torch,bf16", help="comma-separated: " + ", ".join(MODES))
    parser.add_argument("--data-dir", default=None)
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args()
    modes = args.modes.split(",")
    unknown = set(modes) - set(MODES)
    if unknown:
        parser.error(f"unknown mode(s) {', '.join(sorted(unknown))}; valid: {', '.join(MODES)}")
    dataset = load_dataset(args.data_dir)
    clean, test = to_tensor(dataset.train_images), to_tensor(dataset.test_images)
    flops = train_flops_per_sample(build_model(ModelConfig()))
    result = {"machine": {"cpu": platform.processor() or platform.machine(), "cores": os.cpu_count(),
                          "threads": torch.get_num_threads(), "torch": torch.__version__},
              "train_flops_per_sample": flops}
    # Rounds: every contender runs once per round, so a drift in the shared machine's speed hits
    # them all alike; ratios are taken within a round, then the median over rounds is reported.
    per_round: list[dict[str, float]] = []
    peaks: dict[str, list[float]] = {"fp32": [], "bf16": [], "model_bf16": []}
    for r in range(args.rounds):
        # the peaks too are measured every round (the machine's matmul speed drifted 2x within
        # minutes); the best of the rounds is the peak the roofline fractions divide by
        peaks["fp32"].append(gemm_peak(torch.float32))
        peaks["bf16"].append(gemm_peak(torch.bfloat16))
        peaks["model_bf16"].append(model_gemm_rate(build_model(ModelConfig())))
        stolen = steal_seconds()
        rates = {"plain": plain_loop(args.epochs, args.data_dir)["samples_per_s"]}
        for mode in modes:
            rates[mode] = daelab_rate(clean, mode, args.epochs)
        if stolen is not None:  # CPU time the hypervisor gave to other guests during the round
            rates["steal_s"] = steal_seconds() - stolen
        per_round.append(rates)
        print(f"round {r + 1}/{args.rounds}: " + ", ".join(f"{k} {v:,.0f}" for k, v in rates.items()
                                                          if k != "steal_s")
              + " samples/s" + (f" (steal {rates['steal_s']:.1f} CPU-s)" if "steal_s" in rates else ""), flush=True)
    result["rounds"] = per_round
    result["gemm_gflops"] = {"fp32": max(peaks["fp32"]), "bf16": max(peaks["bf16"])}
    result["model_gemm_gflops_bf16"] = max(peaks["model_bf16"])
    result["peaks_per_round"] = peaks
    print(f"GEMM peak (best of {args.rounds} rounds): fp32 {result['gemm_gflops']['fp32']:.0f} GFLOP/s, bf16 "
          f"{result['gemm_gflops']['bf16']:.0f} GFLOP/s ({torch.get_num_threads()} threads); the study model's own "
          f"bf16 GEMM shapes alone: {result['model_gemm_gflops_bf16']:.0f} GFLOP/s "
          f"({result['model_gemm_gflops_bf16'] / result['gemm_gflops']['bf16']:.0%} of peak)", flush=True)
    plain_rate = median([rates["plain"] for rates in per_round])
    result["plain_samples_per_s"] = plain_rate
    print(f"plain PyTorch loop: {plain_rate:,.0f} samples/s (median of {args.rounds} rounds)", flush=True)
    result["daelab"] = {}
    for mode in modes:
        rate = median([rates[mode] for rates in per_round])
        ratios = [rates[mode] / rates["plain"] for rates in per_round]
        achieved = rate * flops / 1e9
        entry = {"samples_per_s": rate, "ratio_vs_plain": median(ratios),
                 "ratio_range": [min(ratios), max(ratios)],
                 "gflops": achieved, "fraction_of_bf16_peak": achieved / result["gemm_gflops"]["bf16"],
                 "fraction_of_fp32_peak": achieved / result["gemm_gflops"]["fp32"],
                 "inference_images_per_s": inference_rate(test, mode)}
        result["daelab"][mode] = entry
        print(f"daelab {mode}: {rate:,.0f} samples/s = {entry['ratio_vs_plain']:.2f}x plain (rounds: "
              f"{min(ratios):.2f}-{max(ratios):.2f}x), {achieved:.0f} GFLOP/s ({entry['fraction_of_fp32_peak']:.0%} "
              f"of fp32 peak, {entry['fraction_of_bf16_peak']:.0%} of bf16 peak); inference "
              f"{entry['inference_images_per_s']:,.0f} images/s", flush=True)
    if args.loss_epochs:
        for mode in modes:
            with tempfile.TemporaryDirectory() as tmp:
                began = time.perf_counter()
                out = fit(ModelConfig(), TrainConfig(epochs=args.loss_epochs, **MODES[mode]), tmp,
                          dataset=dataset, progress=False)
                result["daelab"][mode]["val_loss"] = out["final_val_loss"]
                result["daelab"][mode]["fit_seconds"] = time.perf_counter() - began
            print(f"daelab {mode}: validation loss after {args.loss_epochs} epochs "
                  f"{out['final_val_loss']:.5f} ({result['daelab'][mode]['fit_seconds']:.0f}s)", flush=True)
        for mode in modes:
            if mode != "fp32" and "fp32" in modes:
                gap = result["daelab"][mode]["val_loss"] / result["daelab"]["fp32"]["val_loss"] - 1
                result["daelab"][mode]["val_loss_gap_vs_fp32"] = gap
                print(f"{mode} vs fp32 validation loss: {gap:+.2%} (target within 2%)")
    ceiling = result["model_gemm_gflops_bf16"]
    print("\n| contender | samples/s | x plain | GFLOP/s | of bf16 peak | of model-GEMM rate | inference img/s "
          "| val loss |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    print(f"| plain loop (fp32) | {plain_rate:,.0f} | 1.00 | "
          f"{plain_rate * flops / 1e9:.0f} | | | | |")
    for mode, e in result["daelab"].items():
        print(f"| daelab {mode} | {e['samples_per_s']:,.0f} | {e['ratio_vs_plain']:.2f} | {e['gflops']:.0f} | "
              f"{e['fraction_of_bf16_peak']:.0%} | {e['gflops'] / ceiling:.0%} | {e['inference_images_per_s']:,.0f} | "
              f"{e.get('val_loss', float('nan')):.5f} |")
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
