"""Speed benchmark: daelab's training against a plain PyTorch loop, side by side, on any x86 CPU.

Prints, from one run on one machine state:

- the CPU's model and ISA class (AVX2, AVX-512, AVX-512 BF16, AMX; :mod:`daelab.cpu`), and one
  line saying the bf16 measurements are skipped where the CPU has no native bf16 (emulated bf16 is
  far slower than fp32: 1.4 GFLOP/s for a 2048^3 product on a 2-core AVX2 EPYC);
- the matrix-product rates: a square GEMM peak per dtype and the study model's own GEMM shapes at
  batch 256, forward and backward (the *model-GEMM ceiling*: what a training step's matrix
  products alone reach), fp32 and, with native bf16, bf16;
- per contender: samples/s, the ratio to the in-repo plain loop (``benchmarks/plain_loop.py``,
  taken within each round, then the median), the fraction of the model-GEMM ceiling of its dtype
  (fp32 for fp32 contenders, bf16 for bf16 ones), the fraction of what its dtype's products alone
  sustain in the same rounds (within each round, then the median), inference images/s and the
  validation loss (noisy test set, Gaussian 0.1) after ``--loss-epochs`` epochs;
- the whole run's wall time.

The ceiling is the fastest single step of those products, an optimistic bound: on a shared machine a
few milliseconds often run undisturbed where a whole epoch does not. So the products also run as a
contender of their own (``products-fp32``, and ``products-bf16`` with native bf16: an epoch's worth
of steps of just the products, timed as a whole like every other epoch), and each contender's rate
is also given as a fraction of theirs in the same round: the share of the step's time its products
take when the machine is in the same state.

Contenders: ``plain`` (the in-repo plain loop, fp32; ratio 1.0 by definition), ``fp32`` (daelab,
PyTorch ops, fp32), ``fp32-fused`` (daelab's fused C kernels in fp32: the default where bf16 is
not native), ``bf16-torch`` (daelab, PyTorch ops, bf16 shadow weights; ``--kernels
torch``), ``bf16`` (daelab's default where bf16 is native: its fused C kernels, bf16 matmuls, fp32
master weights). Each contender keeps training across the rounds: round after round every
contender runs ``--epochs`` more epochs (the order rotates each round, so a drift in a shared
machine's speed hits them all alike), and the validation loss is taken once a contender has run
``--loss-epochs`` epochs in all (the default 5 rounds x 2 epochs is exactly the 10-epoch check, so
it costs no extra training). A contender's very first epoch is warm-up and not timed.

``DAELAB_ISA=avx2`` (or ``avx512``, ``avx512_bf16``, ``amx``, ``scalar``) caps the ISA class, so
an AVX-512/AMX machine measures the AVX2 path: the bf16 contenders are skipped and PyTorch's
libraries (ATen, oneDNN, MKL) are capped too. ``--reference-loop PATH`` (default
``$DAELAB_PLAIN_BENCH``) also times another plain loop, e.g. ``../shared/bench/plain_torch_dae.py``,
as a subprocess in each round, beside the in-repo one.

    python benchmarks/bench_train.py                        # the full table (a few minutes; <= ~10 on 2 cores)
    DAELAB_ISA=avx2 python benchmarks/bench_train.py        # the AVX2 path, on any x86 CPU
    python benchmarks/bench_train.py --epochs 1 --rounds 1 --loss-epochs 1 --subset 4096 --json out.json
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from statistics import median

# The ISA cap must reach PyTorch's libraries before torch is imported (they read it when they start).
from daelab.cpu import apply_isa_cap, cpu_info, format_caps

CPU = cpu_info()
CAPS_SET = apply_isa_cap(CPU)

import torch  # noqa: E402

from daelab.data import load_dataset, to_tensor  # noqa: E402
from daelab.models import ModelConfig, build_model  # noqa: E402
from daelab.noise import parse_noise  # noqa: E402
from daelab.train import TrainConfig, evaluate_loss, make_optimizer, make_training_policy, train_steps  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from plain_loop import PlainLoop, run_script  # noqa: E402

MODES = {"fp32": {"precision": "fp32", "kernels": "torch"},
         "fp32-fused": {"precision": "fp32", "kernels": "auto"},
         "bf16-torch": {"precision": "bf16", "kernels": "torch"},
         "bf16": {"precision": "bf16", "kernels": "auto"}}
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}
VAL_NOISE = "gaussian:0.1"


# ------------------------------------------------------------------------------ matrix-product rates
def gemm_peak(dtype: torch.dtype, size: int = 2048, seconds: float = 0.5) -> float:
    """GFLOP/s of a square ``size`` matrix product in ``dtype``: the fastest single product timed
    within about ``seconds`` (at least two, after one warm-up product)."""
    a, b = torch.randn(size, size).to(dtype), torch.randn(size, size).to(dtype)
    a @ b
    best, began, count = 0.0, time.perf_counter(), 0
    while count < 2 or time.perf_counter() - began < seconds:
        start = time.perf_counter()
        a @ b
        best = max(best, 2 * size ** 3 / (time.perf_counter() - start) / 1e9)
        count += 1
    return best


def linear_shapes(model: torch.nn.Module) -> list[tuple[int, int]]:
    """(in_features, out_features) of each Linear layer, in order."""
    return [(m.in_features, m.out_features) for m in model.modules() if isinstance(m, torch.nn.Linear)]


def train_flops_per_sample(model: torch.nn.Module) -> float:
    """Matmul FLOPs of one training sample: 2*in*out per Linear forward, twice that backward, except
    the first layer's input gradient, which nobody computes (the noisy images need none)."""
    return sum(2.0 * i * o * (2 if k == 0 else 3) for k, (i, o) in enumerate(linear_shapes(model)))


class ModelProducts:
    """Exactly the matrix products of one training step of ``model`` in ``dtype`` at ``batch`` (no other work):
    per Linear the forward, the weight gradient and (except the first layer's) the input gradient, on random
    operands into preallocated outputs, as the fused step writes them."""

    def __init__(self, model: torch.nn.Module, dtype: torch.dtype, batch: int = 256):
        shapes = linear_shapes(model)
        self.batch, self.flops = batch, train_flops_per_sample(model) * batch
        self.weights = [torch.randn(o, i).to(dtype) for i, o in shapes]
        self.inputs = [torch.randn(batch, i).to(dtype) for i, _ in shapes]
        self.grads = [torch.randn(batch, o).to(dtype) for _, o in shapes]
        self.outputs = [torch.empty(batch, o, dtype=dtype) for _, o in shapes]
        self.weight_grads = [torch.empty(o, i, dtype=dtype) for i, o in shapes]
        self.input_grads = [torch.empty(batch, i, dtype=dtype) for i, _ in shapes]

    def step(self) -> None:
        for k, (w, x, g) in enumerate(zip(self.weights, self.inputs, self.grads)):
            torch.mm(x, w.t(), out=self.outputs[k])            # forward
            torch.mm(g.t(), x, out=self.weight_grads[k])       # weight gradient
            if k:
                torch.mm(g, w, out=self.input_grads[k])        # input gradient (not of the first layer)


def model_gemm_rate(model: torch.nn.Module, dtype: torch.dtype, batch: int = 256, seconds: float = 0.5,
                    min_steps: int = 20) -> float:
    """GFLOP/s of exactly the matrix products of one training step of ``model`` in ``dtype``
    (:class:`ModelProducts`): the ceiling a training step's products allow. The fastest of the steps timed within
    ``seconds``, at least ``min_steps`` of them: a step takes milliseconds, so on a busy machine many
    are cut by the scheduler, and the fastest is the one that was not. (The same products run back
    to back for an epoch, :class:`ProductsContender`, give what they sustain.)"""
    products = ModelProducts(model, dtype, batch)
    products.step()
    best, began, count = 0.0, time.perf_counter(), 0
    while count < min_steps or time.perf_counter() - began < seconds:
        start = time.perf_counter()
        products.step()
        best = max(best, products.flops / (time.perf_counter() - start) / 1e9)
        count += 1
    return best


def steal_seconds() -> float | None:
    """CPU seconds stolen by the hypervisor so far (Linux ``/proc/stat``), or None where unknown."""
    try:
        fields = Path("/proc/stat").read_text().split("\n", 1)[0].split()
        return int(fields[8]) / os.sysconf("SC_CLK_TCK")
    except (OSError, IndexError, ValueError):
        return None


# ------------------------------------------------------------------------------ contenders
class PlainContender:
    """The in-repo plain PyTorch loop (fp32): the baseline every ratio divides by."""

    key, label, dtype = "plain", "plain loop (fp32)", "fp32"

    def __init__(self, clean: torch.Tensor):
        self.loop = PlainLoop(clean)
        self.model = self.loop.model

    def epoch(self) -> float:
        """One epoch; its samples/s."""
        return self.loop.epoch().samples_per_s

    def val_loss(self, noisy: torch.Tensor, clean: torch.Tensor) -> float:
        return self.loop.val_loss(noisy, clean)


class DaelabContender:
    """daelab's training step in one mode of :data:`MODES`, as ``daelab train`` runs it (no checkpoints)."""

    dtype: str

    def __init__(self, mode: str, clean: torch.Tensor):
        self.key, self.label = mode, f"daelab {mode}"
        self.dtype = MODES[mode]["precision"]
        torch.manual_seed(0)
        self.model = build_model(ModelConfig())
        self.config = TrainConfig(**MODES[mode])
        self.optimizer = make_optimizer(self.model, self.config)
        self.policy = make_training_policy(self.model, self.optimizer, self.config, torch.device("cpu"))
        self.fused = MODES[mode]["kernels"] == "auto" and hasattr(self.policy, "step")
        self.clean = clean
        self.noise = parse_noise(self.config.noise)
        self.generator = torch.Generator().manual_seed(0)
        self.order_generator = torch.Generator().manual_seed(1)
        self.steps = -(-len(clean) // self.config.batch_size)

    def epoch(self) -> float:
        """One epoch of daelab's training step; its samples/s."""
        order = torch.randperm(len(self.clean), generator=self.order_generator)
        done = train_steps(self.policy, self.optimizer, self.clean, order, self.noise, self.generator, self.config,
                           torch.device("cpu"), 0, self.steps)
        return done.samples / done.seconds

    def val_loss(self, noisy: torch.Tensor, clean: torch.Tensor) -> float:
        return evaluate_loss(self.model, noisy, clean)


def products_key(dtype: str) -> str:
    """The key of :class:`ProductsContender` in ``dtype``: its rounds' rates and its entry."""
    return f"products-{dtype}"


class ProductsContender:
    """The study model's matrix products alone (:class:`ModelProducts`), as many steps as an epoch has, timed
    as a whole like the contenders' epochs (not the fastest single step, as the ceiling is): what those
    products sustain in this round, the like-for-like denominator of a contender of its dtype. It trains
    nothing (no validation loss, no inference)."""

    model = None

    def __init__(self, dtype: str, samples: int, batch: int = 256):
        self.key, self.label, self.dtype = products_key(dtype), f"the model's matrix products alone ({dtype})", dtype
        self.products = ModelProducts(build_model(ModelConfig()), DTYPES[dtype], batch)
        self.steps = -(-samples // batch)

    def epoch(self) -> float:
        began = time.perf_counter()
        for _ in range(self.steps):
            self.products.step()
        return self.steps * self.products.batch / (time.perf_counter() - began)

    def val_loss(self, noisy: torch.Tensor, clean: torch.Tensor) -> None:
        return None


@torch.inference_mode()
def inference_rate(model: torch.nn.Module, images: torch.Tensor, bf16: bool, batch_size: int = 2500,
                   repeats: int = 2) -> float:
    """Images/s of ``model`` in eval mode over ``images`` (best of ``repeats`` passes after one warm-up)."""
    was_training = model.training
    model.eval()
    best = 0.0
    for _ in range(repeats + 1):
        began = time.perf_counter()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            for start in range(0, len(images), batch_size):
                model(images[start:start + batch_size])
        best = max(best, len(images) / (time.perf_counter() - began))
    model.train(was_training)
    return best


# ------------------------------------------------------------------------------ the run
def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    group = parser.add_argument_group("what runs")
    group.add_argument("--epochs", type=int, default=2, help="epochs per contender and round (a contender's "
                       "first epoch overall is warm-up)")
    group.add_argument("--rounds", type=int, default=5, help="rounds of all contenders (medians are reported)")
    group.add_argument("--loss-epochs", type=int, default=10, help="report each contender's validation loss after "
                       "this many epochs in all (epochs beyond rounds x epochs run after the rounds); 0 skips")
    group.add_argument("--modes", default="fp32,fp32-fused,bf16-torch,bf16",
                       help="daelab contenders, comma-separated: "
                       + ", ".join(MODES))
    group.add_argument("--reference-loop", type=Path, default=os.environ.get("DAELAB_PLAIN_BENCH") or None,
                       metavar="PATH", help="also time this plain-loop script (e.g. ../shared/bench/"
                       "plain_torch_dae.py) in each round, as a subprocess on the full data set "
                       "(default $DAELAB_PLAIN_BENCH)")
    group = parser.add_argument_group("size and limits")
    group.add_argument("--subset", type=int, default=None, help="train on the first N training images only")
    group.add_argument("--gemm-size", type=int, default=2048, help="square GEMM peak's matrix size")
    group.add_argument("--gemm-seconds", type=float, default=0.5, help="time per GEMM rate measurement")
    group.add_argument("--budget-minutes", type=float, default=9.0, help="start no round that would end past "
                       "this (judged by the last round's time); 0 = no limit")
    group = parser.add_argument_group("input and output")
    group.add_argument("--data-dir", default=None, help="dataset directory or .npz (default: daelab's search)")
    group.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args(argv)
    modes = [m for m in args.modes.split(",") if m]
    unknown = set(modes) - set(MODES)
    if unknown:
        parser.error(f"unknown mode(s) {', '.join(sorted(unknown))}; valid: {', '.join(MODES)}")
    if args.epochs < 1 or args.rounds < 1 or args.loss_epochs < 0:
        parser.error("--epochs and --rounds must be >= 1, --loss-epochs >= 0")
    args.modes = modes
    return args


def describe_machine() -> dict:
    """The CPU line (printed first) and the machine facts for the JSON."""
    print(f"CPU: {CPU.describe()}; PyTorch dispatches to {torch.backends.cpu.get_cpu_capability()}, "
          f"{torch.get_num_threads()} threads on {os.cpu_count()} cores, torch {torch.__version__}", flush=True)
    if CAPS_SET:
        print(f"capped PyTorch's libraries: {format_caps(CAPS_SET)}", flush=True)
    return {"cpu": CPU.model, "isa": CPU.isa, "detected_isa": CPU.detected_isa, "capped_by": CPU.capped_by,
            "native_bf16": CPU.native_bf16, "torch_capability": torch.backends.cpu.get_cpu_capability(),
            "cores": os.cpu_count(), "threads": torch.get_num_threads(), "torch": torch.__version__,
            "library_caps": CAPS_SET}


def run_epochs(contender, count: int, state: dict, val: tuple[torch.Tensor, torch.Tensor] | None,
               loss_epochs: int) -> list[float]:
    """``count`` epochs of ``contender``; the timed rates (its first epoch overall is not timed). Takes the
    validation loss once it has run ``loss_epochs`` in all."""
    timed = []
    for _ in range(count):
        rate = contender.epoch()
        state["epochs"] += 1
        if state["epochs"] > 1:
            timed.append(rate)
        if val is not None and state["epochs"] == loss_epochs:
            state["val_loss"] = contender.val_loss(*val)
    return timed


def main(argv: list[str] | None = None) -> None:
    began = time.perf_counter()
    args = parse_args(argv)
    result = {"machine": describe_machine()}
    modes = args.modes
    dtypes = ["fp32"]
    if not CPU.native_bf16:
        skipped = [m for m in modes if MODES[m]["precision"] == "bf16"]
        modes = [m for m in modes if m not in skipped]
        print(f"skipping the bf16 GEMM peak and bf16 contenders ({', '.join(skipped) or 'none asked'}): ISA class "
              f"{CPU.isa} has no native bf16 (emulated bf16 is far slower than fp32)", flush=True)
        result["skipped"] = {"modes": skipped, "reason": f"no native bf16 (ISA class {CPU.isa})"}
    else:
        dtypes.append("bf16")

    dataset = load_dataset(args.data_dir)
    clean = to_tensor(dataset.train_images)[:args.subset]
    test = to_tensor(dataset.test_images)
    val = (parse_noise(VAL_NOISE)(test, torch.Generator().manual_seed(0)), test) if args.loss_epochs else None
    flops = train_flops_per_sample(build_model(ModelConfig()))
    result.update(train_samples=len(clean), train_flops_per_sample=flops)
    contenders = ([PlainContender(clean)] + [ProductsContender(d, len(clean)) for d in dtypes]
                  + [DaelabContender(mode, clean) for mode in modes])
    for c in contenders:
        if c.key in ("bf16", "fp32-fused") and not c.fused:
            print(f"note: the fused kernels are unavailable here; '{c.key}' runs PyTorch ops", file=sys.stderr)
    states = {c.key: {"epochs": 0, "val_loss": None} for c in contenders}

    # Rounds: every contender runs once per round, so a drift in the shared machine's speed hits
    # them all alike; ratios are taken within a round, then the median over rounds is reported.
    # The GEMM rates too are measured every round (the machine's matmul speed drifted 2x within
    # minutes); the best of the rounds is the ceiling the fractions divide by.
    per_round: list[dict[str, float]] = []
    peaks: dict[str, list[float]] = {f"{kind}_{d}": [] for kind in ("square", "model") for d in dtypes}
    deadline = began + args.budget_minutes * 60 if args.budget_minutes > 0 else float("inf")
    round_seconds = 0.0
    for r in range(args.rounds):
        if r and time.perf_counter() + round_seconds > deadline:
            print(f"stopping after {r} of {args.rounds} rounds: another would end past the "
                  f"{args.budget_minutes:g}-minute budget", flush=True)
            break
        round_began = time.perf_counter()
        for d in dtypes:
            peaks[f"square_{d}"].append(gemm_peak(DTYPES[d], args.gemm_size, args.gemm_seconds))
            peaks[f"model_{d}"].append(model_gemm_rate(build_model(ModelConfig()), DTYPES[d],
                                                       seconds=args.gemm_seconds))
        stolen = steal_seconds()
        rates: dict[str, float] = {}
        shift = r % len(contenders)
        for c in contenders[shift:] + contenders[:shift]:
            timed = run_epochs(c, args.epochs, states[c.key], val, args.loss_epochs)
            if timed:
                rates[c.key] = median(timed)
        if args.reference_loop is not None:
            rates["reference"] = run_script(args.reference_loop, max(2, args.epochs), args.data_dir)["samples_per_s"]
        if stolen is not None:  # CPU time the hypervisor gave to other guests during the round
            rates["steal_s"] = steal_seconds() - stolen
        per_round.append(rates)
        round_seconds = time.perf_counter() - round_began
        shown = ", ".join(f"{k} {v:,.0f}" for k, v in rates.items() if k != "steal_s")
        print(f"round {r + 1}/{args.rounds} ({round_seconds:.0f}s): {shown or 'warm-up only'} samples/s"
              + (f" (steal {rates['steal_s']:.1f} CPU-s)" if "steal_s" in rates else ""), flush=True)
    if val is not None:  # the epochs the loss check needs beyond the rounds (none at the defaults)
        for c in contenders:
            missing = args.loss_epochs - states[c.key]["epochs"]
            if missing > 0 and time.perf_counter() > deadline:
                print(f"{c.label}: no validation loss, past the time budget after {states[c.key]['epochs']} "
                      "epochs", flush=True)
            elif missing > 0:
                run_epochs(c, missing, states[c.key], val, args.loss_epochs)
    result["rounds"] = per_round
    result["peaks_per_round"] = peaks
    ceilings = {name: max(values) for name, values in peaks.items()}
    result["gemm_gflops"] = ceilings
    print(f"GEMM rates (best of {len(per_round)} rounds, {torch.get_num_threads()} threads): "
          + "; ".join(f"{d}: square {args.gemm_size}^3 {ceilings[f'square_{d}']:.0f} GFLOP/s, the study model's "
                      f"shapes (batch 256, forward+backward: the model-GEMM ceiling) {ceilings[f'model_{d}']:.0f} "
                      f"GFLOP/s" for d in dtypes), flush=True)

    result["contenders"] = {}
    for c in contenders:
        values = [rates[c.key] for rates in per_round if c.key in rates]
        if not values:
            continue
        rate = median(values)
        ratios = [rates[c.key] / rates["plain"] for rates in per_round if c.key in rates and "plain" in rates]
        achieved = rate * flops / 1e9
        ceiling = ceilings[f"model_{c.dtype}"]
        products = products_key(c.dtype)  # its products alone, in the same rounds
        of_products = [rates[c.key] / rates[products] for rates in per_round if c.key in rates and products in rates]
        entry = {"label": c.label, "dtype": c.dtype, "samples_per_s": rate, "ratio_vs_plain": median(ratios),
                 "ratio_range": [min(ratios), max(ratios)], "gflops": achieved,
                 "fraction_of_model_gemm_ceiling": achieved / ceiling,
                 "fraction_of_products_rate": median(of_products) if of_products else None,
                 "fraction_of_square_peak": achieved / ceilings[f"square_{c.dtype}"],
                 "inference_images_per_s": (None if c.model is None
                                            else inference_rate(c.model, test, c.dtype == "bf16")),
                 "val_loss": states[c.key]["val_loss"], "epochs_run": states[c.key]["epochs"],
                 "fused": bool(getattr(c, "fused", False))}
        result["contenders"][c.key] = entry
    if args.reference_loop is not None:
        values = [rates["reference"] for rates in per_round]
        ratios = [rates["reference"] / rates["plain"] for rates in per_round if "plain" in rates]
        result["reference_loop"] = {"path": str(args.reference_loop), "samples_per_s": median(values),
                                    "ratio_vs_plain": median(ratios) if ratios else None}

    loss_head = f"val loss @{args.loss_epochs} ep" if args.loss_epochs else "val loss"
    print(f"\n| contender | samples/s | x plain (rounds) | GFLOP/s | of model-GEMM ceiling | of its products, "
          f"same rounds | of square peak | inference img/s | {loss_head} |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    for key, e in result["contenders"].items():
        low, high = e["ratio_range"]
        if key == products_key(e["dtype"]):
            loss = "-"
        else:
            loss = "skipped" if not args.loss_epochs else (
                f"{e['val_loss']:.5f}" if e["val_loss"] is not None else f"n/a ({e['epochs_run']} epochs run)")
        of_products = f"{e['fraction_of_products_rate']:.0%}" if e["fraction_of_products_rate"] is not None else "-"
        inference = f"{e['inference_images_per_s']:,.0f}" if e["inference_images_per_s"] is not None else "-"
        print(f"| {e['label']} | {e['samples_per_s']:,.0f} | {e['ratio_vs_plain']:.2f} ({low:.2f}-{high:.2f}) | "
              f"{e['gflops']:.0f} | {e['fraction_of_model_gemm_ceiling']:.0%} of {e['dtype']} | {of_products} | "
              f"{e['fraction_of_square_peak']:.0%} | {inference} | {loss} |")
    over = [e["label"] for e in result["contenders"].values() if e["fraction_of_model_gemm_ceiling"] > 1]
    if over:
        print(f"note: {', '.join(over)} ran faster than the model-GEMM ceiling: its measurement was disturbed (a busy "
              "machine slows small multi-threaded products most); the fractions are not meaningful this run")
    if "reference_loop" in result:
        ref = result["reference_loop"]
        ratio = f"{ref['ratio_vs_plain']:.2f}" if ref["ratio_vs_plain"] is not None else "n/a"
        print(f"| reference loop ({ref['path']}, subprocess, full data) | {ref['samples_per_s']:,.0f} | {ratio} "
              "| | | | | | |")
    for mode in ("bf16-torch", "bf16"):
        entries = result["contenders"]
        if mode in entries and "fp32" in entries and entries[mode]["val_loss"] and entries["fp32"]["val_loss"]:
            gap = entries[mode]["val_loss"] / entries["fp32"]["val_loss"] - 1
            entries[mode]["val_loss_gap_vs_fp32"] = gap
            print(f"{mode} vs fp32 validation loss: {gap:+.2%} (target within 2%)")
    result["wall_seconds"] = time.perf_counter() - began
    print(f"total wall time: {result['wall_seconds']:.0f} s ({result['wall_seconds'] / 60:.1f} min) on "
          f"{CPU.model}, ISA class {CPU.isa}; {len(per_round)} rounds of {args.epochs} epochs on "
          f"{len(clean):,} images", flush=True)
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
