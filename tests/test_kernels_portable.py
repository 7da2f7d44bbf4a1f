"""The portable build: without AVX-512 (and off x86) the kernels draw the same random words.

``_fused.c`` guards its x86 intrinsics; built for plain x86-64 it takes the scalar Philox loop
instead of the AVX-512 one. Dropout masks are the words themselves, so they must match the default
build bit for bit. Gaussian noise goes on through logf/cosf, whose vector forms (libmvec's AVX-512
and SSE variants) may differ in the last fp32 bit; after rounding to bf16 that leaves a handful of
values one bf16 step apart, where different words would move nearly every value by ~sigma.
"""
import platform
import shutil
import subprocess

import pytest
import torch

from daelab.kernels import _loader, ptr

pytestmark = [
    pytest.mark.skipif(_loader.load_kernels() is None, reason="no C compiler for the fused kernels"),
    pytest.mark.skipif(platform.machine() not in ("x86_64", "AMD64", "i686"), reason="-march=x86-64 is an x86 flag"),
]


@pytest.fixture(scope="module")
def builds(tmp_path_factory):
    """The default build and the portable one (-march=x86-64: no AVX, no AVX-512), each in a cache of its own.

    (Not the process's library: another checkout sharing ~/.cache may replace that file meanwhile.)
    """
    libraries = []
    for flags in ((), ("-march=x86-64",)):
        patch = pytest.MonkeyPatch()
        patch.setenv("DAELAB_CACHE", str(tmp_path_factory.mktemp("cache")))
        try:
            libraries.append(_loader.open_kernels(_loader.build_kernels(extra_flags=flags)))
        finally:
            patch.undo()
    return libraries


def _zmm_instructions(library) -> int | None:
    if shutil.which("objdump") is None:
        return None
    listing = subprocess.run(["objdump", "-d", str(library.path)], capture_output=True, text=True, check=True).stdout
    return listing.count("%zmm")


def test_the_portable_build_has_no_avx512(builds):
    native, portable = builds
    zmm = _zmm_instructions(portable)
    if zmm is None:
        pytest.skip("no objdump to read the instructions")
    assert zmm == 0
    if "avx512f" in _loader._cpu_id():
        assert _zmm_instructions(native) > 0  # and the default build here does use it


def test_dropout_masks_are_the_same_words(builds):
    masks = []
    for lib in builds:
        keep = torch.empty(300_007, dtype=torch.uint8)  # not a multiple of a chunk
        lib.dropout_mask(2 ** 64 - 5, 3, keep.numel(), 2 ** 31 + 12345, ptr(keep), 0.0, None)
        scaled = torch.empty(70_001)
        lib.dropout_mask(17, 0, scaled.numel(), 2 ** 30, None, 1.5, ptr(scaled))
        masks.append((keep, scaled))
    (keep, scaled), (keep_portable, scaled_portable) = masks
    assert torch.equal(keep, keep_portable) and torch.equal(scaled, scaled_portable)
    assert 0.49 < float(keep.float().mean()) < 0.51  # and they are masks, not zeros


def test_gaussian_noise_is_the_same_draw(builds):
    data = torch.full((40, 784), 0.5)
    index = torch.arange(40).repeat(10)
    noisy = []
    for lib in builds:
        clean, out = torch.empty(400, 784), torch.empty(400, 784, dtype=torch.bfloat16)
        lib.gather_gaussian(ptr(data), 40, ptr(index), 400, 784, 0.1, 12345, 2, ptr(clean), ptr(out))
        noisy.append(out.float())
    native, portable = noisy
    apart = native != portable
    assert float(apart.float().mean()) < 1e-4  # 313,600 values: a few dozen at most
    assert float((native - portable).abs().max()) <= 2 ** -8  # one bf16 step at 0.5
    assert float((native - 0.5).std()) == pytest.approx(0.1, rel=0.02)  # and it is noise
