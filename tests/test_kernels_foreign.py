"""The kernels on a CPU that is not x86: built for aarch64 (ARM laptops, Graviton) and run under qemu.

Off x86 the loader builds the portable C (no intrinsics; ``_philox.h`` picks its scalar Philox and
Adam leaves the floating-point mode alone) with the same flags, ``-march=native`` included. Here
the sources are cross-compiled with those flags for the ARMv8-A baseline (``-march=armv8-a`` in
place of ``native``) into ``tests/kernel_driver.c``, which runs every kernel of ``_fused.h`` once on
fixed inputs; the same driver built for this machine with the loader's ``scalar`` variant gives
the reference. What must match:

* bit for bit: Philox's words (dropout masks, scaled masks), the gather, bf16 rounding, the ReLU
  masks, and what follows from them without a sum;
* to rounding (at most 1e-6 of each array's largest magnitude; measured: 3.2e-7): everything with
  a sum, a square root, an exponential or FMA contraction, which GCC contracts differently on the
  two ISAs, and Gaussian noise, whose logf/cosf differ in the last bits (at most 2^-22, as between
  the x86 variants in test_kernels_portable.py);
* bf16 outputs to one bf16 step on at most a few values (measured: none).

Needs Debian's ``gcc-aarch64-linux-gnu`` and ``qemu-user`` (``make test`` installs them as root);
skipped without them, except under CI, which must run it.
"""
import os
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

from ci_rules import cannot_run
from daelab.kernels import _loader

CROSS, QEMU, SYSROOT = "aarch64-linux-gnu-gcc", "qemu-aarch64", Path("/usr/aarch64-linux-gnu")
DRIVER = Path(__file__).with_name("kernel_driver.c")
KINDS = {"u8": np.uint8, "u16": np.uint16, "f32": np.float32, "f64": np.float64}
EXACT = ("dropout_mask.", "gather_gaussian_f32.clean", "to_bf16", "relu_mask.a", "relu_mask_backward.dh",
         "relu_mask_backward.dbias", "classifier_tail.h")


def _build(compiler: str, march: list[str], out: Path) -> Path:
    """The driver linked with the kernels as the loader compiles them, ``-march=native`` replaced by ``march``."""
    flags = [f for f in _loader.compile_flags() if f != "-march=native"] + march
    objects = []
    for source in [_loader.SOURCE.with_name(name) for name in _loader._SOURCE_NAMES]:
        objects.append(out.with_name(f"{out.name}-{source.stem}.o"))
        subprocess.run([compiler, *flags, "-c", str(source), "-o", str(objects[-1])], check=True,
                       capture_output=True, text=True)
    # the driver's own inputs must be the same numbers in both builds: no fast-math, no FMA contraction
    objects.append(out.with_name(f"{out.name}-driver.o"))
    subprocess.run([compiler, "-O2", "-std=c11", "-ffp-contract=off", "-Wall", "-Wextra", "-Werror",
                    f"-I{_loader.SOURCE.parent}", "-c", str(DRIVER), "-o", str(objects[-1])], check=True,
                   capture_output=True, text=True)
    subprocess.run([compiler, "-fopenmp", *map(str, objects), "-o", str(out), "-lm"], check=True,
                   capture_output=True, text=True)
    return out


def _run(command: list[str]) -> dict[str, np.ndarray]:
    raw = subprocess.run(command, capture_output=True, check=True, timeout=120,
                         env={**os.environ, "OMP_NUM_THREADS": "2"}).stdout
    arrays, at = {}, 0
    while True:
        end = raw.index(b"\n", at)
        name, kind, count = raw[at:end].decode().split()
        at = end + 1
        if name == "end":
            return arrays
        dtype = np.dtype(KINDS[kind])
        arrays[name] = np.frombuffer(raw, dtype, int(count), at)
        at += int(count) * dtype.itemsize


@pytest.fixture(scope="module")
def outputs(tmp_path_factory):
    """{"aarch64": arrays, "x86": arrays}: the driver's outputs under qemu and here (scalar variant)."""
    if shutil.which(CROSS) is None or shutil.which(QEMU) is None or not SYSROOT.is_dir():
        cannot_run("the aarch64 kernel test",
                   f"no {CROSS} or {QEMU}: install Debian's gcc-aarch64-linux-gnu and qemu-user (make foreign)")
    if shutil.which("cc") is None:
        cannot_run("the aarch64 kernel test", "no C compiler here for the reference build")
    folder = tmp_path_factory.mktemp("foreign")
    arm = _build(CROSS, ["-march=armv8-a"], folder / "driver-aarch64")
    here = _build("cc", list(_loader.VARIANTS["scalar"]), folder / "driver-scalar")
    return {"aarch64": _run([QEMU, "-L", str(SYSROOT), str(arm)]), "x86": _run([str(here)]),
            "binary": arm}


def test_the_aarch64_build_is_an_arm_program_and_vectorised(outputs):
    header = outputs["binary"].read_bytes()[:20]
    assert header[:4] == b"\x7fELF" and int.from_bytes(header[18:20], "little") == 183  # EM_AARCH64
    objdump = shutil.which("aarch64-linux-gnu-objdump")
    if objdump is None:
        pytest.skip("no aarch64 objdump to read the instructions")
    listing = subprocess.run([objdump, "-d", str(outputs["binary"].with_name("driver-aarch64-_fused32.o"))],
                             capture_output=True, text=True, check=True).stdout
    assert listing.count(".4s") > 100  # NEON on 4 fp32 lanes: the portable loops vectorise there too


def test_every_kernel_ran_on_both(outputs):
    arm, here = outputs["aarch64"], outputs["x86"]
    assert arm.keys() == here.keys() and len(arm) >= 35
    assert all(len(arm[name]) == len(here[name]) > 0 for name in arm)
    keep = here["dropout_mask.keep"]
    assert 0.49 < float(keep.mean()) < 0.51  # masks, not zeros


@pytest.mark.parametrize("prefix", EXACT)
def test_random_words_and_exact_results_match_bit_for_bit(outputs, prefix):
    names = [name for name in outputs["x86"] if name.startswith(prefix)]
    assert names
    for name in names:
        assert np.array_equal(outputs["aarch64"][name], outputs["x86"][name]), name


def _as_float(values: np.ndarray) -> np.ndarray:
    if values.dtype == np.uint16:  # bf16 bits: the top half of an fp32
        return (values.astype(np.uint32) << 16).view(np.float32).astype(np.float64)
    return values.astype(np.float64)


def test_everything_else_matches_to_rounding(outputs):
    compared = 0
    for name, want in outputs["x86"].items():
        got, want = _as_float(outputs["aarch64"][name]), _as_float(want)
        scale = float(np.abs(want).max())
        if name.startswith("gather_gaussian_f32.noisy"):
            assert float(np.abs(got - want).max()) <= 2 ** -22, name  # libm's last bits, never another word
        elif outputs["x86"][name].dtype == np.uint16:
            differ = got != want
            assert float(differ.mean()) <= 1e-3, name
            assert np.all(np.abs(got - want)[differ] <= 2 ** -7 * np.abs(want)[differ]), name  # one bf16 step
        else:
            assert float(np.abs(got - want).max()) <= 1e-6 * scale, name
        compared += 1
    assert compared == len(outputs["x86"])
