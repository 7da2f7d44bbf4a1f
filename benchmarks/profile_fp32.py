"""Issue 19's fp32 step, fused or not: speed against the plain loop and the model-GEMM ceiling, and its profile.

One process measures, interleaved in many short rounds (a few steps of each contender, the order
rotating each round, so a busy neighbour costs every contender alike), steps of batch 256 on
Fashion-MNIST:

- ``plain``: the in-repo plain PyTorch loop (``plain_loop.PlainLoop``), fp32: the baseline;
- ``fp32-torch``: daelab's fp32 step through PyTorch's ops (``--precision fp32 --kernels torch``);
- ``fp32-fused``: daelab's fused fp32 step with this CPU's kernel variant (AVX-512 here);
- ``fp32-fused-avx2k``: the same with the AVX2 build of the kernels (matrix products as native);
- ``bf16-fused``: daelab's fused bf16 step (what ``auto`` picks where bf16 is native), only there;

and, per round, the model-GEMM rate: exactly the study model's matrix products of one step (from
``bench_train.model_gemm_rate``), the ceiling of each dtype, best of the rounds. On shared cores the
load comes in bursts (rates swung 30x between 100-step rounds here), so each contender's rate is
given as the best of its rounds (comparable with the best-of ceiling) and the median, and its ratio
to the plain loop as the median of the ratios within a round. Then it runs itself
again in a subprocess under ``DAELAB_ISA=avx2`` (the cap set before torch is imported, so MKL,
oneDNN and ATen run their AVX2 code too, and the kernels their AVX2 build): the AVX2 machine as
this one can play it. Last, a profile of one fp32 step before (PyTorch's ops) and after (fused):
self time of each op under ``torch.profiler``, the C kernels timed as ``kernel::<name>`` records,
grouped into matrix products, elementwise work, Adam, and the rest. Between the two, the fused
step's time beyond the model-GEMM ceiling without the profiler (:func:`step_budget`), with an
estimate of the floor of a step of separate passes (the products at the ceiling, Adam alone, the
elementwise kernels' bytes at Adam's rate, the calls), for the native fp32 step, the forced-AVX2
one, and where bf16 is native the bf16 step against its own ceiling.

    python benchmarks/profile_fp32.py [--rounds 30] [--steps 12] [--no-avx2-child] [--json out.json]
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from statistics import median

if __name__ == "__main__" and "--isa-child" in sys.argv:  # the cap must reach MKL/oneDNN before torch loads
    from daelab.cpu import apply_isa_cap

    apply_isa_cap()

import torch  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_train import model_gemm_rate, train_flops_per_sample  # noqa: E402
from plain_loop import DEFAULT_DATA_DIR, PlainLoop, load_train_images  # noqa: E402

from daelab.cpu import cpu_info  # noqa: E402
from daelab.kernels import choose_path, load_kernels, make_fused  # noqa: E402
from daelab.models import ModelConfig, build_model  # noqa: E402
from daelab.noise import parse_noise  # noqa: E402
from daelab.train import TrainConfig, make_optimizer, make_training_policy, train_steps  # noqa: E402

BATCH = 256
TARGETS = {"fp32": 0.85, "bf16": 0.70}  # the fractions of the model-GEMM ceiling issue 19 asks for
CPU = torch.device("cpu")


class Plain:
    """The plain loop over the first ``steps`` batches of the data: one epoch of it is one measurement."""

    dtype = "fp32"

    def __init__(self, clean: torch.Tensor, steps: int):
        self.loop = PlainLoop(clean[:steps * BATCH].contiguous())

    def run(self) -> float:
        return self.loop.epoch().samples_per_s


class Daelab:
    """daelab's step (PyTorch ops, or fused with a kernel variant) over ``steps`` batches per measurement."""

    def __init__(self, clean: torch.Tensor, steps: int, precision: str, fused: bool, variant: str | None = None):
        torch.manual_seed(0)
        self.dtype = precision
        self.model = build_model(ModelConfig())
        self.config = TrainConfig(precision=precision, kernels="auto" if fused else "torch", batch_size=BATCH)
        self.optimizer = make_optimizer(self.model, self.config)
        if fused:
            self.policy = make_fused(self.model, self.optimizer, CPU, precision=precision, variant=variant)
            assert self.policy is not None, "the fused step did not build"
        else:
            self.policy = make_training_policy(self.model, self.optimizer, self.config, CPU)
        self.clean, self.steps = clean, steps
        self.noise, self.generator = parse_noise(self.config.noise), torch.Generator().manual_seed(0)
        self.order = torch.Generator().manual_seed(1)

    def run(self) -> float:
        order = torch.randperm(len(self.clean), generator=self.order)
        done = train_steps(self.policy, self.optimizer, self.clean, order, self.noise, self.generator, self.config,
                           CPU, 0, self.steps)
        return done.samples / done.seconds


def contenders(clean: torch.Tensor, steps: int, child: bool) -> dict:
    made = {"plain": Plain(clean, steps), "fp32-torch": Daelab(clean, steps, "fp32", False),
            "fp32-fused": Daelab(clean, steps, "fp32", True)}
    if not child:
        made["fp32-fused-avx2k"] = Daelab(clean, steps, "fp32", True, variant="avx2")
        if cpu_info().native_bf16:
            made["bf16-fused"] = Daelab(clean, steps, "bf16", True)
    return made


def one_round(made: dict, r: int) -> dict:
    """Each contender's ``run()`` once, in an order rotated by round ``r`` so that each goes first in
    turn: samples/s by name, in the order they ran."""
    names = list(made)
    shift = r % len(names)
    return {name: made[name].run() for name in names[shift:] + names[:shift]}


def measure(clean: torch.Tensor, rounds: int, steps: int, child: bool) -> dict:
    """Interleaved rounds: samples/s of each contender, ratios to the plain loop within each round, ceilings."""
    made = contenders(clean, steps, child)
    for contender in made.values():  # warm-up: first-step checks, oneDNN primitive creation
        contender.run()
    rates = {name: [] for name in made}
    ratios = {name: [] for name in made}
    gemm = {"fp32": [], "bf16": []}
    names = list(made)
    for r in range(rounds):
        this_round = one_round(made, r)
        for name, rate in this_round.items():
            rates[name].append(rate)
            ratios[name].append(rate / this_round["plain"])
        gemm["fp32"].append(model_gemm_rate(build_model(ModelConfig()), torch.float32, seconds=0.1))
        if "bf16-fused" in made:
            gemm["bf16"].append(model_gemm_rate(build_model(ModelConfig()), torch.bfloat16, seconds=0.1))
        print(f"round {r + 1}/{rounds}: " + ", ".join(f"{n} {v:,.0f}" for n, v in this_round.items())
              + f"; fp32 model-GEMM {gemm['fp32'][-1]:.0f} GFLOP/s", flush=True)
    flops = train_flops_per_sample(build_model(ModelConfig()))
    ceilings = {d: max(v) * 1e9 / flops for d, v in gemm.items() if v}
    rows = []
    for name in names:
        best = max(rates[name])
        rows.append({"contender": name, "dtype": made[name].dtype, "best_samples_per_s": best,
                     "median_samples_per_s": median(rates[name]), "rates": rates[name],
                     "ratio_to_plain": median(ratios[name]), "fraction_of_ceiling": best / ceilings[made[name].dtype]})
    info = cpu_info()
    return {"cpu": info.describe(), "isa": info.isa, "kernel_path": choose_path(CPU).reason, "rounds": rounds,
            "steps": steps, "threads": torch.get_num_threads(),
            "gemm_gflops": {d: max(v) for d, v in gemm.items() if v}, "ceiling_samples_per_s": ceilings, "rows": rows}


# ------------------------------------------------------------------------------ the profile
class _Traced:
    """A kernel library whose calls show in torch.profiler as ``kernel::<name>`` (checked and trusted alike)."""

    def __init__(self, lib, names=None):
        self._lib = lib
        if names is None:
            self.trusted = _Traced(lib.trusted, names=True)

    def __getattr__(self, name):
        function = getattr(self._lib, name)

        def traced(*args):
            with torch.profiler.record_function(f"kernel::{name}"):
                return function(*args)
        traced.check = getattr(function, "check", None)  # FusedAdam checks its arrays once
        return traced


def _category(name: str) -> str:
    if name in ("aten::mm", "aten::addmm", "aten::bmm", "aten::matmul"):
        return "matrix products"
    if "adam" in name.lower():
        return "Adam"
    if name.startswith("kernel::"):
        return "elementwise (C kernels)"
    if any(word in name for word in ("batch_norm", "leaky_relu", "dropout", "sigmoid", "mse", "bernoulli", "randn",
                                     "normal", "clamp", "mul", "add", "div", "sub", "threshold", "index_select",
                                     "copy_", "fill_", "sum", "mean", "var", "rsqrt", "pow", "where", "empty",
                                     "zero", "native_batch", "masked")):
        return "elementwise (PyTorch ops)"
    return "other ops"


def profile(clean: torch.Tensor, fused: bool, steps: int = 20) -> dict:
    """ms per step by category: self time of every op (and C kernel) over ``steps`` steps, and the wall time."""
    contender = Daelab(clean, steps, "fp32", fused)
    if fused:
        contender.policy.lib = _Traced(contender.policy.lib)
        contender.policy._optimizer_step = None  # rebuilt on the next step, with the traced library
    contender.run()  # warm-up
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        began = time.perf_counter()
        contender.run()
        wall = time.perf_counter() - began
    by_category: dict[str, float] = {}
    top: dict[str, float] = {}
    for event in prof.key_averages():
        ms = event.self_cpu_time_total / 1e3 / steps
        by_category[_category(event.key)] = by_category.get(_category(event.key), 0.0) + ms
        top[event.key] = ms
    by_category["Python and gaps"] = wall * 1e3 / steps - sum(by_category.values())
    return {"wall_ms_per_step": wall * 1e3 / steps, "by_category_ms": by_category,
            "top_ops_ms": dict(sorted(top.items(), key=lambda kv: -kv[1])[:12])}


def _best_ms(fn, repeats: int = 30) -> float:
    fn()
    times = []
    for _ in range(repeats):
        began = time.perf_counter()
        fn()
        times.append(time.perf_counter() - began)
    return min(times) * 1e3


def adam_bytes(policy) -> int:
    """Bytes Adam reads and writes per step in ``policy``'s fused step, from its own calls: per value the
    parameter read and written (fp32), its gradient read (fp32 or bf16), both moments read and written
    (fp32), and the bf16 shadow written where there is one."""
    total = 0
    for _param, _grad, grad_bf16, _m, _v, shadow, n in policy._optimizer_step.calls:
        total += n * (4 + 4 + (2 if grad_bf16 else 4) + 8 + 8 + (2 if shadow is not None else 0))
    return total


def elementwise_bytes(policy, batch: int = BATCH) -> int:
    """The least the fused step's elementwise kernels read and write per step, counted from their
    arguments (each array once per kernel, however many passes it makes): the gather with the noise,
    BatchNorm + dropout + LeakyReLU forward and backward with their dropout masks, sigmoid + MSE, and
    the bottleneck's bias gradient. A floor: what a kernel re-reads from cache is not counted."""
    a = policy.dtype.itemsize  # activations and their gradients: 4 (fp32) or 2 (bf16)
    first, last = policy.layers[0].linear, policy.layers[-1].linear
    total = batch * first.in_features * (4 + 4 + a)  # the rows read, clean and noisy written
    for k, layer in enumerate(policy.layers):
        values = batch * layer.linear.out_features
        if layer.kind == "bn":
            mask = 1 if layer.dropout > 0 else 0
            total += values * mask  # dropout_mask writes it
            total += values * (a + mask + a)  # bn_forward: z (and the mask) in, act out
            total += values * (3 * a + mask + a)  # bn_backward: d(act), act, z (and the mask) in, dz out
        elif layer.kind == "linear" and policy.layers[k + 1].kind != "bn":
            total += values * a  # the bias gradient's column sums
    return total + batch * last.out_features * (a + 4 + a)  # sigmoid_mse: z and clean in, dz out


def step_budget(clean: torch.Tensor, gemm_gflops: float, precision: str = "fp32") -> dict:
    """Where the fused step's time (fp32, or bf16) beyond the model-GEMM ceiling goes, without the profiler.

    30 steps on one fixed batch, each timed in its two parts: the forward+backward, and Adam right
    after it; ``step_ms`` is the fastest whole step, ``forward_backward_ms`` and ``adam_ms`` the
    fastest of each part (so ``adam_ms`` is Adam where the step runs it, not a difference of two
    best times, which a noisy machine can make negative), beside the time the model's matrix
    products take at the ceiling. ``target`` is issue 19's fraction of the ceiling (85% in fp32,
    70% in bf16) and ``budget_ms`` what a step may spend beyond the products to reach it;
    ``calls_ms`` is what the step's calls cost by themselves (:func:`call_overhead`).

    The floor of this design, estimated: Adam timed alone (``adam_alone_ms``, best of 30: one
    streaming pass over :func:`adam_bytes`, so its rate, ``adam_gb_per_s``, is what this machine's
    memory gives such a pass now), the elementwise kernels' least bytes (:func:`elementwise_bytes`)
    at that rate (data a kernel finds in its core's cache can move faster), and the calls, added to
    the products at the ceiling: ``floor_ms``, about the fastest a step of separate passes called
    from Python could be, and ``floor_fraction`` = ``gemm_ms / floor_ms``, about the most of the
    ceiling it could reach.
    """
    contender = Daelab(clean, 4, precision, fused=True)
    contender.run()
    policy, index = contender.policy, torch.arange(BATCH)
    parts = []
    for _ in range(30):
        began = time.perf_counter()
        policy.forward_backward(clean, index, contender.noise, contender.generator)
        backward_done = time.perf_counter()
        policy._adam()
        parts.append((backward_done - began, time.perf_counter() - backward_done))
    step_ms, forward_backward_ms, adam_in_step_ms = (1e3 * min(v) for v in ([a + b for a, b in parts], *zip(*parts)))
    gemm_ms = train_flops_per_sample(build_model(ModelConfig())) * BATCH / (gemm_gflops * 1e9) * 1e3
    adam, elementwise = adam_bytes(policy), elementwise_bytes(policy)
    adam_alone_ms = _best_ms(policy._adam)
    rate = adam / (adam_alone_ms * 1e-3) / 1e9
    calls = call_overhead(precision)
    floor_ms = gemm_ms + adam_alone_ms + elementwise / (rate * 1e9) * 1e3 + calls["calls_ms"]
    return {"gemm_ms": gemm_ms, "step_ms": step_ms, "forward_backward_ms": forward_backward_ms,
            "adam_ms": adam_in_step_ms, "rest_ms": forward_backward_ms - gemm_ms,
            "fraction_of_ceiling": gemm_ms / step_ms, "target": TARGETS[precision],
            "budget_ms": gemm_ms / TARGETS[precision] - gemm_ms,
            "adam_bytes": adam, "elementwise_bytes": elementwise, "adam_alone_ms": adam_alone_ms,
            "adam_gb_per_s": rate, "elementwise_floor_ms": elementwise / (rate * 1e9) * 1e3,
            "floor_ms": floor_ms, "floor_fraction": gemm_ms / floor_ms, "precision": precision, **calls}


def call_overhead(precision: str = "fp32") -> dict:
    """The fused step's calls alone: the same step on a width-8 copy of the study model's layers, batch 8.

    Same layers, kernels, matrix products and Adam calls, each on next to no data, so its time is
    what the calls themselves cost (Python, ctypes, PyTorch's dispatch, OpenMP hand-offs): the most
    that moving the step's orchestration into C could save.
    """
    config = ModelConfig(input_dim=8, hidden=(8, 8, 8), code_dim=8, decoder_hidden=(8, 8))
    model = build_model(config)
    policy = make_fused(model, make_optimizer(model, TrainConfig()), torch.device("cpu"), precision)
    data, index = torch.rand(64, 8), torch.arange(8)
    noise, generator = parse_noise("gaussian:0.1"), torch.Generator().manual_seed(0)
    return {"calls_ms": _best_ms(lambda: policy.step(data, index, noise, generator), repeats=200)}


def print_budget(budget: dict, threads: int) -> None:
    print(f"\n### The fused {budget.get('precision', 'fp32')} step against its ceiling ({threads} threads, best of 30, "
          "one fixed batch)")
    print("| part | ms per step |\n|---|---:|")
    print(f"| the model's matrix products at the model-GEMM ceiling | {budget['gemm_ms']:.2f} |")
    print(f"| forward+backward beyond that (C kernels, the products' shortfall in the step, Python) "
          f"| {budget['rest_ms']:.2f} |")
    print(f"| Adam, right after the backward (alone, repeated: {budget['adam_alone_ms']:.2f}) | "
          f"{budget['adam_ms']:.2f} |")
    print(f"| **fused step** ({budget['fraction_of_ceiling']:.0%} of the ceiling) | **{budget['step_ms']:.2f}** |")
    print(f"| the step's calls alone (Python, ctypes, dispatch: the same step on a width-8 model) "
          f"| {budget['calls_ms']:.2f} |")
    print(f"{budget['target']:.0%} of the ceiling leaves {budget['budget_ms']:.2f} ms per step beyond the products.")
    print(f"Floor of separate passes (estimated): Adam alone {budget['adam_alone_ms']:.2f} ms "
          f"({budget['adam_bytes'] / 1e6:.1f} MB at {budget['adam_gb_per_s']:.0f} GB/s); the elementwise "
          f"kernels' {budget['elementwise_bytes'] / 1e6:.1f} MB at that rate {budget['elementwise_floor_ms']:.2f} ms; "
          f"the calls {budget['calls_ms']:.2f} ms; with the products, at least {budget['floor_ms']:.2f} ms a step: "
          f"at most {budget['floor_fraction']:.0%} of the ceiling (target {budget['target']:.0%}).")


def print_tables(result: dict, title: str) -> None:
    print(f"\n### {title}\n{result['cpu']}; {result['threads']} threads; auto path here: {result['kernel_path']}")
    print(f"model-GEMM rate (best of {result['rounds']} rounds): "
          + ", ".join(f"{d} {g:.0f} GFLOP/s = {result['ceiling_samples_per_s'][d]:,.0f} samples/s"
                      for d, g in result["gemm_gflops"].items()))
    print("\n| contender | dtype | samples/s best (median) | x plain (median of rounds) "
          "| best of its dtype's model-GEMM ceiling |")
    print("|---|---|---:|---:|---:|")
    for row in result["rows"]:
        print(f"| {row['contender']} | {row['dtype']} | {row['best_samples_per_s']:,.0f} "
              f"({row['median_samples_per_s']:,.0f}) | {row['ratio_to_plain']:.2f}x | "
              f"{row['fraction_of_ceiling']:.0%} |")


def print_profile(before: dict, after: dict) -> None:
    print("\n### fp32 step profile, ms per step (batch 256): before = PyTorch ops, after = fused kernels")
    print("| where | before | after |\n|---|---:|---:|")
    categories = list(dict.fromkeys([*before["by_category_ms"], *after["by_category_ms"]]))
    for category in categories:
        print(f"| {category} | {before['by_category_ms'].get(category, 0.0):.2f} | "
              f"{after['by_category_ms'].get(category, 0.0):.2f} |")
    print(f"| **wall** | **{before['wall_ms_per_step']:.2f}** | **{after['wall_ms_per_step']:.2f}** |")
    for label, result in (("before", before), ("after", after)):
        print(f"\ntop self times {label}: " + ", ".join(f"{k} {v:.2f}" for k, v in result["top_ops_ms"].items()))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=30,
                        help="interleaved rounds, each running every contender once (default 30)")
    parser.add_argument("--steps", type=int, default=12, help="steps of batch 256 per measurement")
    parser.add_argument("--data-dir", default=DEFAULT_DATA_DIR,
                        help=f"the Fashion-MNIST IDX files (default {DEFAULT_DATA_DIR})")
    parser.add_argument("--no-avx2-child", action="store_true", help="skip the DAELAB_ISA=avx2 subprocess")
    parser.add_argument("--no-profile", action="store_true",
                        help="skip the torch.profiler breakdown of one fp32 step (before and after fusing)")
    parser.add_argument("--json", type=Path, help="also write the results here")
    parser.add_argument("--isa-child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    clean = load_train_images(args.data_dir)
    if load_kernels() is None:
        sys.exit("no fused kernels (no C compiler?)")
    result = measure(clean, args.rounds, args.steps, child=args.isa_child)
    if args.isa_child:  # the fp32 step's budget and floor under the cap too: the AVX2 machine's fp32 step
        result["budget"] = step_budget(clean, result["gemm_gflops"]["fp32"])
        print("CHILD-JSON " + json.dumps(result))
        return
    print_tables(result, "native ISA")
    results = {"native": result}
    results["budget"] = step_budget(clean, result["gemm_gflops"]["fp32"])
    print_budget(results["budget"], result["threads"])
    if "bf16" in result["gemm_gflops"]:  # native bf16: the default step there, against its own ceiling
        results["budget_bf16"] = step_budget(clean, result["gemm_gflops"]["bf16"], "bf16")
        print_budget(results["budget_bf16"], result["threads"])
    if not args.no_avx2_child:
        env = dict(os.environ, DAELAB_ISA="avx2")
        child = subprocess.run([sys.executable, __file__, "--isa-child", "--rounds", str(args.rounds), "--steps",
                                str(args.steps), "--data-dir", args.data_dir], env=env, capture_output=True,
                               text=True, check=True)
        line = next(line for line in child.stdout.splitlines() if line.startswith("CHILD-JSON "))
        results["forced_avx2"] = json.loads(line[len("CHILD-JSON "):])
        print_tables(results["forced_avx2"], "forced AVX2 (DAELAB_ISA=avx2: kernels, MKL, oneDNN and ATen capped)")
        print_budget(results["forced_avx2"]["budget"], results["forced_avx2"]["threads"])
    if not args.no_profile:
        results["profile"] = {"before": profile(clean, fused=False), "after": profile(clean, fused=True)}
        print_profile(results["profile"]["before"], results["profile"]["after"])
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
