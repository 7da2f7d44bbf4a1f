"""Training-step speed of an image model (natural-gray's resunet by default), side by side.

One Adam step on a batch of random patches, as ``daelab train`` runs the conv models (PyTorch's
ops; bf16 autocast with fp32 master weights, or fp32), for each contender in turn, each round:

- ``eager``: the model as it trains today;
- ``channels_last``: the same model and batch in channels-last memory format;
- ``compiled`` (``--compile``): ``torch.compile`` of the model (its compile time is printed apart).

Prints patches/s (best of the rounds), the ratio to eager within each round (median), and the
step's GFLOP/s from ``torch.utils.flop_counter``. With ``DAELAB_ISA`` set PyTorch's libraries are
capped to that class before torch loads, as in ``bench_train.py``.

    python benchmarks/bench_conv_step.py [--model resunet] [--channels 32] [--precision bf16|fp32]
                                         [--patch 40] [--batch 64] [--steps 15] [--rounds 3] [--compile]
"""
from __future__ import annotations

import argparse
import time
from statistics import median

# The ISA cap must reach PyTorch's libraries before torch is imported (they read it when they start).
from daelab.cpu import apply_isa_cap, cpu_info, format_caps

CAPS_SET = apply_isa_cap()

import torch  # noqa: E402
from torch.utils.flop_counter import FlopCounterMode  # noqa: E402

from daelab.models import ModelConfig, build_model  # noqa: E402


def make_step(model: torch.nn.Module, batch: torch.Tensor, bf16: bool):
    """One Adam step of ``model`` on ``batch`` (MSE against the batch itself), as a closure."""
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-4)

    def step() -> None:
        optimizer.zero_grad(set_to_none=True)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            out = model(batch)
        torch.mean((out.float() - batch) ** 2).backward()
        optimizer.step()
    return step


def step_flops(model: torch.nn.Module, batch: torch.Tensor) -> int:
    """Forward and backward FLOPs of one step (matrix products and convolutions)."""
    with FlopCounterMode(display=False) as counter:
        model(batch).sum().backward()
    model.zero_grad(set_to_none=True)
    return counter.get_total_flops()


def timed(step, steps: int) -> float:
    began = time.perf_counter()
    for _ in range(steps):
        step()
    return (time.perf_counter() - began) / steps


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="resunet")
    parser.add_argument("--channels", type=int, default=32)
    parser.add_argument("--precision", choices=("bf16", "fp32"), default="bf16")
    parser.add_argument("--patch", type=int, default=40)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--steps", type=int, default=15, help="steps per measurement")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=0, help="PyTorch threads (0: its default)")
    parser.add_argument("--compile", action="store_true", help="also time torch.compile of the model")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    batch = torch.rand(args.batch, 1, args.patch, args.patch)
    config = ModelConfig(name=args.model, channels=args.channels)
    bf16 = args.precision == "bf16"
    flops = step_flops(build_model(config).train(), batch)
    steps = {"eager": make_step(build_model(config).train(), batch, bf16),
             "channels_last": make_step(build_model(config).train().to(memory_format=torch.channels_last),
                                        batch.contiguous(memory_format=torch.channels_last), bf16)}
    compile_seconds = None
    if args.compile:
        steps["compiled"] = make_step(torch.compile(build_model(config).train()), batch, bf16)
        began = time.perf_counter()
        steps["compiled"]()
        compile_seconds = time.perf_counter() - began
    for step in steps.values():  # warm-up
        for _ in range(3):
            step()
    seconds = {name: [] for name in steps}
    for r in range(args.rounds):
        names = list(steps)[r % len(steps):] + list(steps)[:r % len(steps)]  # rotate the order
        for name in names:
            seconds[name].append(timed(steps[name], args.steps))
    caps = f"; libraries capped: {format_caps(CAPS_SET)}" if CAPS_SET else ""
    print(f"CPU: {cpu_info().describe()}; torch {torch.__version__}; {torch.get_num_threads()} threads{caps}")
    print(f"{args.model} {args.channels} ch, {args.precision}, batch {args.batch} of {args.patch}x{args.patch}, "
          f"{flops / args.batch / 1e6:.0f} MFLOP per patch; best of {args.rounds} rounds of {args.steps} steps"
          + (f"; compiling took {compile_seconds:.1f} s" if compile_seconds is not None else ""))
    print("| contender | patches/s (best) | x eager (median of rounds) | GFLOP/s |\n|---|---:|---:|---:|")
    result = {}
    for name, times in seconds.items():
        ratio = median(eager / own for eager, own in zip(seconds["eager"], times))
        rate = args.batch / min(times)
        result[name] = {"patches_per_s": rate, "x_eager": ratio, "gflops": flops * rate / args.batch / 1e9}
        print(f"| {name} | {rate:,.0f} | {ratio:.2f} | {result[name]['gflops']:.0f} |")
    return result


if __name__ == "__main__":
    main()
