"""The ISA variants of the kernels: AVX-512 (-march=native), AVX2 and portable scalar draw the same random words.

``_loader`` builds one library per variant; ``_philox.h`` has an AVX-512, an AVX2 and a scalar
Philox, chosen by the build's flags. Dropout masks are the words themselves, so they must match bit
for bit across all three. Gaussian noise goes on through logf/cosf, whose vector forms (libmvec's
AVX-512, AVX2 and SSE variants) may differ in the last fp32 bits: in fp32 about a tenth of the
values differ, by at most 2^-22 (a few ulps of a pixel near 0.5; measured 1.2e-7); after rounding to
bf16 a handful of values end one bf16 step apart. Different words would move nearly every value
by ~sigma. The layer kernels sum each column in the same order in every variant, so a whole fp32
step agrees across variants to rounding (FMA or not, libmvec's expf).
"""
import platform
import shutil
import subprocess

import pytest
import torch

from daelab.kernels import _loader, _mlp, fused, ptr
from daelab.models import ModelConfig, build_model
from daelab.noise import parse_noise
from daelab.train import TrainConfig, make_optimizer

pytestmark = [
    pytest.mark.skipif(_loader.load_kernels() is None, reason="no C compiler for the fused kernels"),
    pytest.mark.skipif(platform.machine() not in ("x86_64", "AMD64", "i686"), reason="the variants are x86 builds"),
]
VARIANTS = ("native", "avx2", "scalar")


@pytest.fixture(scope="module")
def builds(tmp_path_factory):
    """Each variant's library, built in a cache of its own: {variant: Kernels}.

    (Not the process's library: another checkout sharing ~/.cache may replace that file meanwhile.)
    """
    libraries = {}
    patch = pytest.MonkeyPatch()
    patch.setenv("DAELAB_CACHE", str(tmp_path_factory.mktemp("cache")))
    try:
        for variant in VARIANTS:
            libraries[variant] = _loader.open_kernels(_loader.build_kernels(variant=variant))
    finally:
        patch.undo()
    return libraries


def _instructions(library, register: str) -> int | None:
    if shutil.which("objdump") is None:
        return None
    listing = subprocess.run(["objdump", "-d", str(library.path)], capture_output=True, text=True, check=True).stdout
    return listing.count(register)


def test_each_variant_uses_its_own_vector_registers(builds):
    if _instructions(builds["scalar"], "%zmm") is None:
        pytest.skip("no objdump to read the instructions")
    assert _instructions(builds["scalar"], "%zmm") == 0 and _instructions(builds["scalar"], "%ymm") == 0
    assert _instructions(builds["avx2"], "%zmm") == 0 and _instructions(builds["avx2"], "%ymm") > 100
    if "avx512f" in _loader._cpu_id():
        assert _instructions(builds["native"], "%zmm") > 0  # and the default build here does use AVX-512


def test_variant_files_are_cached_apart(builds):
    names = {variant: lib.path.name for variant, lib in builds.items()}
    assert names["native"].startswith("fused-") and names["avx2"].startswith("fused-avx2-")
    assert names["scalar"].startswith("fused-scalar-") and len(set(names.values())) == 3
    assert all(lib.path.exists() for lib in builds.values())  # building one did not remove another


def test_dropout_masks_are_the_same_words(builds):
    masks = []
    for lib in builds.values():
        keep = torch.empty(300_007, dtype=torch.uint8)  # not a multiple of a chunk
        lib.dropout_mask(2 ** 64 - 5, 3, keep.numel(), 2 ** 31 + 12345, ptr(keep), 0.0, None)
        scaled = torch.empty(70_001)
        lib.dropout_mask(17, 0, scaled.numel(), 2 ** 30, None, 1.5, ptr(scaled))
        masks.append((keep, scaled))
    (keep, scaled), *others = masks
    for other_keep, other_scaled in others:
        assert torch.equal(keep, other_keep) and torch.equal(scaled, other_scaled)
    assert 0.49 < float(keep.float().mean()) < 0.51  # and they are masks, not zeros


def _noise(lib, kernel, dtype):
    data = torch.full((40, 784), 0.5)
    index = torch.arange(40).repeat(10)
    clean, out = torch.empty(400, 784), torch.empty(400, 784, dtype=dtype)
    getattr(lib, kernel)(ptr(data), 40, ptr(index), 400, 784, 0.1, 12345, 2, ptr(clean), ptr(out))
    return out.float()


def test_gaussian_noise_is_the_same_draw_in_bf16(builds):
    native, *others = [_noise(lib, "gather_gaussian", torch.bfloat16) for lib in builds.values()]
    for other in others:
        assert float((native != other).float().mean()) < 1e-4  # 313,600 values: a few dozen at most
        assert float((native - other).abs().max()) <= 2 ** -8  # one bf16 step at 0.5
    assert float((native - 0.5).std()) == pytest.approx(0.1, rel=0.02)  # and it is noise


def test_gaussian_noise_is_the_same_draw_in_fp32_to_a_few_ulps(builds):
    native, *others = [_noise(lib, "gather_gaussian_f32", torch.float32) for lib in builds.values()]
    for other in others:
        assert float((native - other).abs().max()) <= 2 ** -22  # libmvec's last bits, never another word
        assert float((native != other).float().mean()) < 0.25
    assert float((native - 0.5).std()) == pytest.approx(0.1, rel=0.02)
    # and bf16's noise is fp32's, rounded, within one variant
    assert torch.equal(native.bfloat16().float(), _noise(builds["native"], "gather_gaussian", torch.bfloat16))


def test_an_fp32_step_agrees_across_variants(builds):
    results = []
    for lib in builds.values():
        torch.manual_seed(0)
        model = build_model(ModelConfig(input_dim=100, hidden=(64, 48, 40), code_dim=16, decoder_hidden=(40, 64),
                                        dropout=0.2))
        policy = fused.FusedMLP(model, make_optimizer(model, TrainConfig()), _mlp._layers(model), lib, torch.float32)
        data, generator = torch.rand(200, 100), torch.Generator().manual_seed(4)
        policy.forward_backward(data, torch.arange(50), parse_noise("gaussian:0.1"), generator)
        grads = {name: grad.clone() for name, grad in policy.grads.items()}
        losses = [float(policy.step(data, torch.arange(50) + 10 * k, parse_noise("gaussian:0.1"), generator))
                  for k in range(3)]
        results.append((grads, losses, policy.batch_state(50)["layers"][0]["keep"].clone(),
                        [p.detach().clone() for p in model.parameters()]))
    (grads, losses, keep, params), *others = results
    for other_grads, other_losses, other_keep, other_params in others:
        assert torch.equal(keep, other_keep)  # the same dropout masks
        for name, want in grads.items():
            got = other_grads[name]
            assert float((got - want).norm()) <= 1e-5 * float(want.norm()), name  # rounding, not another term
        assert other_losses == pytest.approx(losses, rel=1e-5)
        for got, want in zip(other_params, params):  # Adam's normalised steps of lr=1e-3 amplify near-0 gradients
            torch.testing.assert_close(got, want, rtol=0, atol=1e-5)
