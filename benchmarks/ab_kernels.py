"""The fused training step with the working tree's C kernels against the kernels of another commit.

A change to ``src/daelab/kernels/`` is worth keeping when the step gets faster and its numbers stay
what they were. This builds the kernel sources of ``--against REV`` (``git show``, into a temporary
directory) with the loader's own flags and variant, beside the working tree's, runs the same fused
step (``--precision``, batch 256, the study model) with each in interleaved rounds of ``--steps``
steps (the order alternating each round, so a busy neighbour costs both alike), and prints each
side's best and median samples/s and the new/old ratio within a round (median and range). Both
sides start from the same weights and draw the same batches and noise, so at the end it also says
whether their weights are still equal bit for bit: a change meant to keep the numbers must leave
them equal.

    python benchmarks/ab_kernels.py --against HEAD~1 [--precision fp32] [--rounds 20] [--steps 30]
    DAELAB_ISA=avx2 python benchmarks/ab_kernels.py --against HEAD~1   # the AVX2 build, ATen capped too

The old sources must have the interface (``_fused.h``) the working tree's callers are written for;
where they do not, it says so in one line.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path
from statistics import median

if __name__ == "__main__":  # the ISA cap must reach MKL/oneDNN before torch loads
    from daelab.cpu import apply_isa_cap

    apply_isa_cap()

import torch  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from plain_loop import DEFAULT_DATA_DIR, load_train_images  # noqa: E402
from profile_fp32 import BATCH, Daelab, one_round  # noqa: E402

from daelab.cpu import cpu_info  # noqa: E402
from daelab.kernels._abi import KernelInterfaceError  # noqa: E402
from daelab.kernels._loader import (  # noqa: E402
    _INTERNAL_HEADERS,
    _SOURCE_NAMES,
    HEADER,
    SOURCE,
    build_kernels,
    kernel_variant,
    open_kernels,
)

KERNEL_FILES = (*_SOURCE_NAMES, *_INTERNAL_HEADERS, HEADER.name)


def kernels_of(rev: str, into: Path, repo: Path | None = None):
    """The kernel library built from commit ``rev``'s sources (written into ``into``), for this CPU's variant.

    Raises SystemExit with one line where ``rev`` is not a commit of the repository or its kernels do
    not build or do not match the working tree's interface.
    """
    repo = repo or SOURCE.parents[3]
    relative = SOURCE.parent.relative_to(repo)
    for name in KERNEL_FILES:
        shown = subprocess.run(["git", "-C", str(repo), "show", f"{rev}:{(relative / name).as_posix()}"],
                               capture_output=True)
        if shown.returncode:
            sys.exit(f"ab_kernels: cannot read {relative / name} at {rev!r}: "
                     f"{shown.stderr.decode(errors='replace').strip().splitlines()[-1]}")
        (into / name).write_bytes(shown.stdout)
    try:
        return open_kernels(build_kernels(source=into / SOURCE.name, variant=kernel_variant()), into / HEADER.name)
    except (KernelInterfaceError, OSError, subprocess.CalledProcessError) as error:
        sys.exit(f"ab_kernels: the kernels of {rev!r} cannot stand in for the working tree's: {error}")


def compare(old_lib, clean: torch.Tensor, precision: str, rounds: int, steps: int) -> dict:
    """Interleaved rounds of the fused step with ``old_lib`` and with the working tree's kernels."""
    old, new = Daelab(clean, steps, precision, True), Daelab(clean, steps, precision, True)
    old.policy.lib = old_lib
    rates: dict[str, list[float]] = {"old": [], "new": []}
    ratios = []
    for r in range(rounds + 1):  # round 0 warms both up (first-step checks, oneDNN primitives); not counted
        this = one_round({"old": old, "new": new}, r)
        if r:
            for name, rate in this.items():
                rates[name].append(rate)
            ratios.append(this["new"] / this["old"])
    old_state, new_state = old.model.state_dict(), new.model.state_dict()
    differing = [name for name in old_state if not torch.equal(old_state[name], new_state[name])]
    largest = max((float((old_state[n].float() - new_state[n].float()).abs().max()) for n in differing), default=0.0)
    return {"precision": precision, "variant": new.policy.lib.variant, "rounds": rounds, "steps": steps,
            "samples_per_s": {name: {"best": max(v), "median": median(v)} for name, v in rates.items()},
            "new_over_old": {"median": median(ratios), "min": min(ratios), "max": max(ratios)},
            "identical_weights": not differing, "differing_tensors": differing, "largest_difference": largest}


def report(result: dict, rev: str) -> str:
    s, q = result["samples_per_s"], result["new_over_old"]
    lines = [f"{cpu_info().describe()}; {torch.get_num_threads()} threads; {result['precision']} fused step, "
             f"kernel variant {result['variant']}; {result['rounds']} rounds of {result['steps']} steps of "
             f"batch {BATCH}",
             "| kernels | samples/s best | median |", "|---|---:|---:|",
             f"| {rev} (old) | {s['old']['best']:,.0f} | {s['old']['median']:,.0f} |",
             f"| working tree (new) | {s['new']['best']:,.0f} | {s['new']['median']:,.0f} |",
             f"new/old within a round: median {q['median']:.3f} (range {q['min']:.2f}-{q['max']:.2f})"]
    if result["identical_weights"]:
        lines.append("weights after the run: identical bit for bit")
    else:
        lines.append(f"weights after the run: {len(result['differing_tensors'])} tensors differ, by at most "
                     f"{result['largest_difference']:.3g}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--against", required=True, metavar="REV", help="the commit whose kernels are the old side")
    parser.add_argument("--precision", choices=("fp32", "bf16"), default="fp32")
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--steps", type=int, default=30, help="steps of batch 256 per measurement")
    parser.add_argument("--data-dir", default=DEFAULT_DATA_DIR)
    parser.add_argument("--json", type=Path, help="also write the result here")
    args = parser.parse_args(argv)
    if args.rounds < 1 or args.steps < 1:
        parser.error("--rounds and --steps must be at least 1")
    if args.precision == "bf16" and not cpu_info().native_bf16:
        sys.exit("ab_kernels: bf16 skipped: this CPU has no native bf16 matrix products")
    clean = load_train_images(args.data_dir)[:args.steps * BATCH].contiguous()
    with tempfile.TemporaryDirectory(prefix="daelab-ab-") as tmp:
        result = compare(kernels_of(args.against, Path(tmp)), clean, args.precision, args.rounds, args.steps)
    print(report(result, args.against))
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    main()
