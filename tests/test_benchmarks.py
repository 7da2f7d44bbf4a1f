"""The benchmarks run anywhere: bench_train end to end on a tiny synthetic set with the AVX2 path forced,
and the in-repo plain loop trains the study's model on what daelab's loader reads."""
from __future__ import annotations

import importlib
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from daelab.data import FASHION_FILES, load_dataset, to_tensor, write_idx
from daelab.kernels import load_kernels
from daelab.models import ModelConfig, build_model

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"
needs_kernels = pytest.mark.skipif(load_kernels() is None, reason="no C compiler for the fused kernels")


def benchmark_module(name: str):
    """A script of ``benchmarks/`` imported as a module (with the folder on the path while it imports its siblings)."""
    sys.path.insert(0, str(BENCHMARKS))
    try:
        return importlib.import_module(name)
    finally:
        sys.path.remove(str(BENCHMARKS))


@pytest.fixture(scope="module")
def idx_dir(tmp_path_factory, tiny_dataset):
    """The tiny synthetic set as the four gzipped IDX files, where both loaders look for them."""
    directory = tmp_path_factory.mktemp("idx")
    arrays = {"train_images": tiny_dataset.train_images, "train_labels": tiny_dataset.train_labels,
              "test_images": tiny_dataset.test_images, "test_labels": tiny_dataset.test_labels}
    for key, array in arrays.items():
        write_idx(directory / f"{FASHION_FILES[key]}.gz", np.asarray(array).astype(np.uint8))
    return directory


def test_bench_train_runs_end_to_end_on_the_avx2_path(idx_dir, tmp_path):
    out = tmp_path / "bench.json"
    # one thread: the test checks what is printed, not speed, and a busy machine slows two threads most
    env = dict(os.environ, DAELAB_ISA="avx2", PYTHONUNBUFFERED="1", OMP_NUM_THREADS="1")
    for name in ("ATEN_CPU_CAPABILITY", "ONEDNN_MAX_CPU_ISA", "MKL_ENABLE_INSTRUCTIONS", "DAELAB_PLAIN_BENCH"):
        env.pop(name, None)
    cmd = [sys.executable, str(BENCHMARKS / "bench_train.py"), "--data-dir", str(idx_dir), "--epochs", "2",
           "--rounds", "1", "--loss-epochs", "2", "--gemm-size", "128", "--gemm-seconds", "0.01",
           "--reference-loop", str(BENCHMARKS / "plain_loop.py"), "--json", str(out)]
    run = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
    assert run.returncode == 0, run.stderr
    lines = run.stdout.splitlines()
    result = json.loads(out.read_text())
    isa = result["machine"]["isa"]
    assert isa in ("avx2", "other")  # capped to avx2, or lower on a CPU without AVX2
    assert lines[0].startswith("CPU: ") and f"ISA class {isa}" in lines[0]
    skip = [line for line in lines if line.startswith("skipping the bf16")]
    assert len(skip) == 1 and "bf16-torch, bf16" in skip[0] and "no native bf16" in skip[0]
    if result["machine"]["detected_isa"] not in ("avx2", "other"):  # the cap reached PyTorch's own dispatch
        assert result["machine"]["torch_capability"] == "AVX2"
        assert result["machine"]["library_caps"]["ATEN_CPU_CAPABILITY"] == "avx2"
    contenders = result["contenders"]
    assert set(contenders) == {"plain", "products-fp32", "fp32", "fp32-fused"}
    assert contenders["plain"]["ratio_vs_plain"] == 1.0
    products = contenders.pop("products-fp32")  # the products alone: timed like an epoch, training nothing
    assert products["fraction_of_products_rate"] == 1.0 and products["samples_per_s"] > 0
    assert products["val_loss"] is None and products["inference_images_per_s"] is None
    assert products["ratio_vs_plain"] == products["samples_per_s"] / contenders["plain"]["samples_per_s"]
    for entry in contenders.values():
        assert entry["samples_per_s"] > 0 and 0 < entry["fraction_of_model_gemm_ceiling"]
        assert entry["dtype"] == "fp32" and math.isfinite(entry["val_loss"]) and entry["epochs_run"] == 2
        # one round: the fraction of the products is the two rates' ratio in it
        assert entry["fraction_of_products_rate"] == pytest.approx(entry["samples_per_s"] / products["samples_per_s"])
    assert result["reference_loop"]["samples_per_s"] > 0
    table = [line for line in lines if line.startswith("| plain loop (fp32) |")]
    assert len(table) == 1 and "| 1.00 (1.00-1.00) |" in table[0] and "of fp32" in table[0]
    row = [line for line in lines if line.startswith("| the model's matrix products alone (fp32) |")]
    cells = [cell.strip() for cell in row[0].strip("|").split("|")] if len(row) == 1 else []
    assert cells[5] == "100%" and cells[-2:] == ["-", "-"]  # of its own rate; no inference, no loss
    assert any(line.startswith("| daelab fp32 |") for line in lines)
    assert any(line.startswith("| daelab fp32-fused |") for line in lines)
    from daelab.kernels.fused import load_kernels
    assert contenders["fp32-fused"]["fused"] == (load_kernels() is not None)  # the fp32 kernels ran, where built
    assert not contenders["fp32"]["fused"]
    assert lines[-1].startswith("total wall time: ") and f"ISA class {isa}" in lines[-1]


def test_plain_loop_trains_the_study_model_on_the_same_images(idx_dir):
    plain_loop = benchmark_module("plain_loop")
    clean = plain_loop.load_train_images(idx_dir)
    assert torch.equal(clean, to_tensor(load_dataset(idx_dir).train_images))

    def shapes(model):
        return [(m.in_features, m.out_features) for m in model.modules() if isinstance(m, torch.nn.Linear)]
    assert shapes(plain_loop.study_dae()) == shapes(build_model(ModelConfig()))
    loop = plain_loop.PlainLoop(clean, batch_size=64)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as above: correctness, not speed
    try:
        first, second = loop.epoch(), loop.epoch()
    finally:
        torch.set_num_threads(threads)
    assert second.loss < first.loss and loop.epochs == 2 and second.samples_per_s > 0
    assert plain_loop.steady_rate([1.0, 5.0, 3.0]) == 4.0


def test_bench_denoise_prints_seconds_per_megapixel_for_the_shipped_model():
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    cmd = [sys.executable, str(BENCHMARKS / "bench_denoise.py"), "natural-gray", "--size", "96", "--threads", "1",
           "--repeats", "1", "--ensemble", "2"]
    out = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300, check=True).stdout
    assert "CPU: " in out and "ISA class" in out and "96x96 (0.009 MP)" in out
    rows = [line.split("|")[1:-1] for line in out.splitlines() if line.startswith("| 1 |")]
    assert [row[1].strip() for row in rows] == ["whole (default)", "tiled 256", "whole, --ensemble 2"]
    for row in rows:  # seconds and s/MP are both printed rounded
        seconds, per_mp, ratio = (float(cell) for cell in row[2:])
        assert seconds > 0 and math.isclose(per_mp, seconds / 0.009216, rel_tol=0.1, abs_tol=0.06)
    assert float(rows[0][4]) == 1.0


def test_bench_denoise_caps_the_libraries_to_a_forced_isa():
    from daelab.cpu import ISA_CLASSES, cpu_info

    if ISA_CLASSES.index(cpu_info().detected_isa) <= ISA_CLASSES.index("avx2"):
        pytest.skip("the CPU is no more than AVX2: nothing to cap")
    env = {k: v for k, v in os.environ.items() if k not in ("ONEDNN_MAX_CPU_ISA", "MKL_ENABLE_INSTRUCTIONS",
                                                             "ATEN_CPU_CAPABILITY")}
    env.update(OMP_NUM_THREADS="1", DAELAB_ISA="avx2")
    cmd = [sys.executable, str(BENCHMARKS / "bench_denoise.py"), "natural-gray", "--size", "64", "--threads", "1",
           "--repeats", "1"]
    out = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300, check=True).stdout
    header = next(line for line in out.splitlines() if line.startswith("CPU: "))
    assert "ISA class avx2 (capped by DAELAB_ISA=avx2" in header
    assert "MKL_ENABLE_INSTRUCTIONS=AVX2" in header and "ONEDNN_MAX_CPU_ISA=AVX2" in header


@needs_kernels
@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_profile_fp32_budget_prints_what_the_calls_alone_cost(capsys, precision):
    from daelab.cpu import cpu_info

    if precision == "bf16" and not cpu_info().native_bf16:
        pytest.skip("no native bf16 here: profile_fp32 budgets fp32 only")
    profile_fp32 = benchmark_module("profile_fp32")
    budget = profile_fp32.step_budget(torch.rand(4 * profile_fp32.BATCH, 784), gemm_gflops=200.0, precision=precision)
    assert budget["precision"] == precision
    # the fastest step is no faster than its fastest parts together
    assert budget["step_ms"] >= budget["forward_backward_ms"] + budget["adam_ms"] - 1e-9
    for key in ("calls_ms", "step_ms", "gemm_ms", "forward_backward_ms", "adam_ms", "adam_alone_ms"):
        assert math.isfinite(budget[key]) and budget[key] > 0, key
    profile_fp32.print_budget(budget, torch.get_num_threads())
    printed = capsys.readouterr().out
    assert f"The fused {precision} step" in printed and "the step's calls alone" in printed
    assert f"{budget['target']:.0%} of the ceiling leaves" in printed
    assert budget["budget_ms"] == pytest.approx(budget["gemm_ms"] * (1 / budget["target"] - 1))
    assert budget["adam_gb_per_s"] == pytest.approx(budget["adam_bytes"] / budget["adam_alone_ms"] / 1e6)
    assert budget["elementwise_floor_ms"] == pytest.approx(budget["elementwise_bytes"] / budget["adam_gb_per_s"] / 1e6)
    assert budget["floor_ms"] == pytest.approx(budget["gemm_ms"] + budget["adam_alone_ms"]
                                               + budget["elementwise_floor_ms"] + budget["calls_ms"])
    assert budget["floor_fraction"] == pytest.approx(budget["gemm_ms"] / budget["floor_ms"])
    assert budget["floor_fraction"] < 1
    assert "Floor of separate passes (estimated): Adam alone" in printed
    assert f"at most {budget['floor_fraction']:.0%} of the ceiling" in printed


@needs_kernels
@pytest.mark.parametrize("precision, adam, elementwise",
                         [("fp32", 584 * 28, 1200 * 8), ("bf16", 584 * 28 + 8 * 2, 672 * 8)])
def test_profile_fp32_counts_the_bytes_adam_and_the_kernels_move(precision, adam, elementwise):
    """Counted by hand for a width-8 model (584 parameters, batch 8): per Adam value the parameter, both
    moments read and written and the gradient read (fp32: 28 bytes; bf16 weights read a bf16 gradient and
    write a bf16 shadow, so 28 too, and the bottleneck's bias, the only bias with a shadow, 30); per
    activation value of a BatchNorm layer with dropout 27 bytes in fp32 (mask 1; forward z, mask, act 9;
    backward d(act), act, z, mask, dz 17), without dropout 24, the gather 12 per input value, the
    sigmoid 12 per output value; in bf16 the activations take 2 bytes."""
    from daelab.kernels import make_fused
    from daelab.noise import parse_noise
    from daelab.train import TrainConfig, make_optimizer

    profile_fp32 = benchmark_module("profile_fp32")
    model = build_model(ModelConfig(input_dim=8, hidden=(8, 8, 8), code_dim=8, decoder_hidden=(8, 8)))
    assert sum(p.numel() for p in model.parameters()) == 584
    policy = make_fused(model, make_optimizer(model, TrainConfig()), torch.device("cpu"), precision)
    policy.step(torch.rand(16, 8), torch.arange(8), parse_noise("gaussian:0.1"), torch.Generator().manual_seed(0))
    assert profile_fp32.adam_bytes(policy) == adam
    assert profile_fp32.elementwise_bytes(policy, 8) == elementwise


def test_bench_conv_step_times_each_contender_against_eager(capsys):
    bench_conv_step = benchmark_module("bench_conv_step")
    result = bench_conv_step.main(["--channels", "4", "--patch", "16", "--batch", "2", "--steps", "1", "--rounds",
                                   "2", "--precision", "fp32"])
    assert set(result) == {"eager", "channels_last"}
    assert all(row["patches_per_s"] > 0 and row["gflops"] > 0 for row in result.values())
    # the FLOP count is the model's: a wider model at the same rate would report more GFLOP/s
    assert result["eager"]["gflops"] == pytest.approx(
        bench_conv_step.step_flops(build_model(ModelConfig(name="resunet", channels=4)).train(),
                                   torch.rand(2, 1, 16, 16)) * result["eager"]["patches_per_s"] / 2 / 1e9)
    printed = capsys.readouterr().out
    assert "| eager |" in printed and "| channels_last |" in printed and "MFLOP per patch" in printed


@needs_kernels
def test_ab_kernels_says_whether_a_kernel_change_kept_the_numbers(tmp_path):
    ab = benchmark_module("ab_kernels")
    clean = torch.rand(2 * ab.BATCH, 784)
    kernels = Path(ab.SOURCE).parent
    same, changed = tmp_path / "same", tmp_path / "changed"
    for folder in (same, changed):
        folder.mkdir()
        for name in ab.KERNEL_FILES:
            (folder / name).write_bytes((kernels / name).read_bytes())
    layers = (changed / "_layers.h").read_text()
    assert "sqrtf(var + eps)" in layers
    (changed / "_layers.h").write_text(layers.replace("sqrtf(var + eps)", "sqrtf(var + 2.0f * eps)"))
    variant = ab.kernel_variant()
    for folder, kept in ((same, True), (changed, False)):
        lib = ab.open_kernels(ab.build_kernels(source=folder / "_fused.c", variant=variant), folder / "_fused.h")
        result = ab.compare(lib, clean, "fp32", rounds=1, steps=2)
        assert result["identical_weights"] is kept
        assert bool(result["differing_tensors"]) is not kept and (result["largest_difference"] > 0) is not kept
        assert all(side["best"] > 0 for side in result["samples_per_s"].values())
        printed = ab.report(result, "old")
        assert ("identical bit for bit" in printed) is kept and "new/old within a round" in printed


@needs_kernels
def test_ab_kernels_builds_a_commits_kernels_and_refuses_a_bad_one_in_a_line(tmp_path):
    if subprocess.run(["git", "-C", str(BENCHMARKS), "rev-parse", "HEAD"], capture_output=True).returncode:
        pytest.skip("not a git checkout")
    ab = benchmark_module("ab_kernels")
    (tmp_path / "head").mkdir()
    lib = ab.kernels_of("HEAD", tmp_path / "head")
    assert callable(lib.bn_backward_f32) and (tmp_path / "head" / "_layers.h").exists()
    (tmp_path / "bad").mkdir()
    with pytest.raises(SystemExit) as refused:
        ab.kernels_of("no-such-commit", tmp_path / "bad")
    assert str(refused.value).startswith("ab_kernels: cannot read") and "\n" not in str(refused.value)
