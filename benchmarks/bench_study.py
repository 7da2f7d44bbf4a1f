"""End-to-end benchmark: the whole study (``daelab reproduce``) against the plain loop, in one run.

The whole study's wall time on a shared machine depends on the moment (this project's 2-core
machine changed speed by up to 2x within minutes), so a time on its own says little. This script
measures the in-repo plain PyTorch loop (``benchmarks/plain_loop.py``) just before and just after
a full ``daelab reproduce`` into a fresh directory, and prints the study's time by stage beside:

- the plain loop's 100 epochs at the rate it ran around the study (100 x 60,000 samples / rate),
  and the ratio study / that (the issue's targets, 6 minutes against the plain loop's ~9, make 0.67);
- the study's time scaled to the issue's reference machine, where the plain loop runs at
  ``--reference`` samples/s (12,000: the middle of its 11-13k), assuming every stage slows and
  speeds with the machine as the plain loop does (an approximation: the stages are not all
  matrix products).

``--reference-loop PATH`` (default ``$DAELAB_PLAIN_BENCH``) also times another plain loop before and
after, e.g. the project's ``../shared/bench/plain_torch_dae.py``, and prints its ratio to the in-repo one.

    python benchmarks/bench_study.py                  # the full study, ~8-12 minutes
    python benchmarks/bench_study.py --quick          # the few-minute version, to try the script
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from plain_loop import run_script

from daelab.cpu import cpu_info

PLAIN = Path(__file__).resolve().with_name("plain_loop.py")
TRAIN_SAMPLES, STUDY_EPOCHS = 60000, 100


def run_study(run_dir: Path, quick: bool, data_dir: str | None) -> tuple[dict, dict, float]:
    """``daelab reproduce`` into ``run_dir`` as a user runs it: its reproduce.json, the probe's
    headline comparison (codes vs raw pixels) and the wall seconds."""
    # one DAE, as the plain loop trains one (the default study trains 3: --dae-seeds)
    cmd = [sys.executable, "-m", "daelab", "reproduce", "--run-dir", str(run_dir), "--no-progress", "--dae-seeds", "1"]
    cmd += ["--quick"] if quick else []
    cmd += ["--data-dir", data_dir] if data_dir else []
    began = time.perf_counter()
    subprocess.run(cmd, check=True)
    wall = time.perf_counter() - began
    headline = json.loads((run_dir / "probe.json").read_text())["headline"]
    return json.loads((run_dir / "reproduce.json").read_text()), headline, wall


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--plain-epochs", type=int, default=3,
                        help="plain-loop epochs before and after the study (the first is warm-up)")
    parser.add_argument("--reference", type=float, default=12000.0,
                        help="the issue's plain-loop samples/s to scale the study's time to")
    parser.add_argument("--quick", action="store_true", help="run 'daelab reproduce --quick' instead")
    parser.add_argument("--reference-loop", type=Path, default=os.environ.get("DAELAB_PLAIN_BENCH") or None,
                        metavar="PATH", help="also time this plain-loop script before and after (default "
                        "$DAELAB_PLAIN_BENCH)")
    parser.add_argument("--data-dir", default=None)
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args()
    if args.plain_epochs < 2:
        parser.error("--plain-epochs must be at least 2 (the first epoch is warm-up)")

    print(f"CPU: {cpu_info().describe()}", flush=True)
    reference: dict[str, float] = {}
    before = run_script(PLAIN, args.plain_epochs, args.data_dir)["samples_per_s"]
    print(f"plain loop before the study: {before:,.0f} samples/s", flush=True)
    if args.reference_loop is not None:
        reference["before"] = run_script(args.reference_loop, args.plain_epochs, args.data_dir)["samples_per_s"]
        print(f"reference loop before the study: {reference['before']:,.0f} samples/s", flush=True)
    with tempfile.TemporaryDirectory(prefix="daelab-study-") as tmp:
        state, headline, wall = run_study(Path(tmp) / "study", args.quick, args.data_dir)
    after = run_script(PLAIN, args.plain_epochs, args.data_dir)["samples_per_s"]
    print(f"plain loop after the study: {after:,.0f} samples/s", flush=True)
    if args.reference_loop is not None:
        reference["after"] = run_script(args.reference_loop, args.plain_epochs, args.data_dir)["samples_per_s"]
        print(f"reference loop after the study: {reference['after']:,.0f} samples/s; in-repo / reference: "
              f"{(before + after) / (reference['before'] + reference['after']):.3f}", flush=True)

    stages = {name: stage["seconds"] for name, stage in state["stages"].items()}
    by_stage = sum(stages.values())
    plain_rate = (before + after) / 2
    plain_100 = STUDY_EPOCHS * TRAIN_SAMPLES / plain_rate
    result = {
        "quick": args.quick, "stages_seconds": stages, "study_seconds_by_stage": by_stage,
        "study_seconds_wall": wall, "plain_samples_per_s": {"before": before, "after": after},
        "plain_100_epochs_seconds": plain_100, "ratio_study_to_plain_100": by_stage / plain_100,
        "reference_samples_per_s": args.reference,
        "study_seconds_at_reference": by_stage * plain_rate / args.reference,
        "best_val_loss": state["stages"]["train"].get("best_val_loss"), "probe_headline": headline,
        "reference_loop": {"path": str(args.reference_loop), "samples_per_s": reference} if reference else None,
    }
    print("\n| stage | seconds |\n|---|---:|")
    for name, seconds in stages.items():
        print(f"| {name} | {seconds:.1f} |")
    print(f"| **whole study, by stage** | **{by_stage:.1f}** ({by_stage / 60:.2f} min; {wall:.1f} s with start-up) |")
    print(f"\nplain loop around the study: {before:,.0f} -> {after:,.0f} samples/s; its 100 epochs at the mean rate: "
          f"{plain_100:.0f} s ({plain_100 / 60:.2f} min)")
    print(f"study / plain loop's 100 epochs: {result['ratio_study_to_plain_100']:.2f} (the issue's 6 of ~9 min: 0.67)")
    print(f"study scaled to a plain loop of {args.reference:,.0f} samples/s: "
          f"{result['study_seconds_at_reference']:.0f} s ({result['study_seconds_at_reference'] / 60:.2f} min)")
    if args.quick:
        print("(--quick: 3 epochs on a subset; the two figures above compare it with 100 full epochs, so they "
              "only show that the script runs)")
    print(f"results: best validation MSE {result['best_val_loss']!r}; {headline['probe']} on "
          f"{headline['a']} - {headline['b']}: {headline['mean']:+.4f} ({headline['verdict']})")
    if abs(after - before) > 0.15 * plain_rate:
        print(f"note: the machine's speed moved by {abs(after - before) / plain_rate:.0%} during the study; "
              "the scaled figures are rougher than usual", flush=True)
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
