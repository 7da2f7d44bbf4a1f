"""The fused fp32 training step against fp32 autograd and torch.optim.Adam, and choose_path's pick per CPU class.

The fp32 step runs the bf16 step's kernels (one C template, ``_layers.h``) on fp32 activations with
the master weights in the products, so its gradients match fp32 autograd to rounding (~1e-6), where
the bf16 step's are ~1-9% off; it draws the same dropout masks and the same noise words as the bf16
step from the same generator.
"""
import copy

import pytest
import torch

from daelab.cpu import CpuInfo
from daelab.kernels import choose_path, fused
from daelab.models import ModelConfig, build_model
from daelab.noise import parse_noise
from daelab.train import TrainConfig, make_optimizer
from kernel_reference import reference_loss

pytestmark = pytest.mark.skipif(fused.load_kernels() is None, reason="no C compiler for the fused kernels")

SMALL = ModelConfig(input_dim=100, hidden=(64, 48, 40), code_dim=16, decoder_hidden=(40, 64), dropout=0.2)
CPU = torch.device("cpu")


def _setup(precision="fp32", seed=0):
    torch.manual_seed(seed)
    model = build_model(SMALL)
    optimizer = make_optimizer(model, TrainConfig())
    policy = fused.make_fused(model, optimizer, CPU, precision=precision)
    assert policy is not None
    return model, optimizer, policy


def _reference_loss(policy, noisy, clean, masks):
    """The model's training forward in fp32 autograd on the fused step's input and dropout masks."""
    return reference_loss(policy, noisy, clean, masks)


def test_fp32_gradients_match_autograd():
    model, _, policy = _setup()
    assert policy.dtype == torch.float32
    data = torch.rand(300, 100)
    index = torch.randperm(300)[:64]
    loss = policy.forward_backward(data, index, parse_noise("gaussian:0.1"), torch.Generator().manual_seed(1))
    state = policy.batch_state(64)
    assert state["input"].dtype == torch.float32 and state["layers"][0]["act"].dtype == torch.float32
    masks = [entry.get("keep") for entry in state["layers"]]
    assert sum(m is not None for m in masks) == 2
    reference = _reference_loss(policy, state["input"].clone(), data[index], masks)
    reference.backward()
    assert float(loss) == pytest.approx(float(reference.detach()), rel=1e-5)
    grads = policy.grads
    cancelled = {id(layer.linear.bias) for k, layer in enumerate(policy.layers)
                 if layer.kind == "bn" or (layer.kind == "linear" and policy.layers[k + 1].kind == "bn")}
    for name, param in model.named_parameters():
        got, want = grads[name], param.grad
        assert got.dtype == torch.float32, name
        if id(param) in cancelled:  # a BatchNorm cancels this bias: exactly 0 (autograd's is rounding noise)
            assert float(got.abs().max()) == 0.0 and float(want.abs().max()) < 1e-6, name
            continue
        # fp32 throughout: rounding only (the bf16 step allows 15% here); a wrong term is far beyond
        error = float((got - want).norm() / want.norm())
        assert error < 1e-5, (name, error)  # measured: ~1e-6


def test_fp32_adam_matches_torch_adam_without_a_bf16_copy():
    model, optimizer, policy = _setup()
    reference = copy.deepcopy(model)
    reference_optimizer = torch.optim.Adam(reference.parameters(), lr=1e-3)
    data, generator = torch.rand(200, 100), torch.Generator().manual_seed(3)
    for step in range(3):
        index = torch.randperm(200, generator=torch.Generator().manual_seed(step))[:50]
        policy.step(data, index, parse_noise("gaussian:0.1"), generator)
        for name, param in reference.named_parameters():
            param.grad = policy.grads[name].clone()
        reference_optimizer.step()
        for (name, got), want in zip(model.named_parameters(), reference.parameters()):
            assert torch.allclose(got, want, atol=1e-7, rtol=1e-6), (step, name)
    assert float(optimizer.state[model.encoder[0].weight]["step"]) == 3
    # no shadow: the products read the master weights themselves, updated in place
    for layer in policy.layers:
        assert layer.weight.dtype == torch.float32
        assert layer.weight.data_ptr() == layer.linear.weight.data_ptr()


def test_fp32_and_bf16_steps_draw_the_same_masks_and_noise():
    (_, _, fp32), (_, _, bf16) = _setup("fp32"), _setup("bf16")
    data, index = torch.rand(300, 100), torch.arange(64) * 4
    for policy in (fp32, bf16):
        policy.forward_backward(data, index, parse_noise("gaussian:0.2"), torch.Generator().manual_seed(7))
    a, b = fp32.batch_state(64), bf16.batch_state(64)
    assert torch.equal(a["layers"][0]["keep"], b["layers"][0]["keep"])
    assert torch.equal(a["layers"][1]["keep"], b["layers"][1]["keep"])
    assert torch.equal(a["input"].bfloat16(), b["input"])  # bf16's noise is fp32's, rounded
    assert not torch.equal(a["input"], a["clean"])


def test_make_fused_keeps_bf16_as_its_default():
    model = build_model(SMALL)
    optimizer = make_optimizer(model, TrainConfig())
    policy = fused.make_fused(model, optimizer, CPU)
    assert policy.dtype == torch.bfloat16 and policy.layers[0].weight.dtype == torch.bfloat16
    assert fused.make_fused(model, optimizer, CPU, precision="fp32").dtype == torch.float32
    with pytest.raises(ValueError, match="bf16 or fp32"):
        fused.make_fused(model, optimizer, CPU, precision="fp16")


def _cpu(isa, detected=None, capped_by=None):
    return CpuInfo(model="test CPU", isa=isa, detected_isa=detected or isa, capped_by=capped_by)


@pytest.mark.parametrize("isa, precision, reason", [
    ("amx", "bf16", "bf16 fused kernels (AVX-512; native bf16: AMX)"),
    ("avx512_bf16", "bf16", "bf16 fused kernels (AVX-512; native bf16: AVX-512 BF16)"),
    ("avx512", "fp32", "fp32 fused kernels (AVX-512; no native bf16)"),
    ("avx2", "fp32", "fp32 fused kernels (AVX2; no native bf16)"),
    ("other", "fp32", "fp32 fused kernels (scalar; no native bf16)"),
])
def test_auto_picks_the_fastest_correct_path_per_cpu_class(isa, precision, reason):
    assert choose_path(CPU, "auto", "auto", cpu=_cpu(isa)) == (precision, True, reason)


def test_choose_path_honours_requests_caps_and_devices():
    capped = _cpu("avx2", detected="amx", capped_by="avx2")
    assert choose_path(CPU, cpu=capped) == ("fp32", True, "fp32 fused kernels (AVX2; no native bf16; DAELAB_ISA=avx2)")
    precision, use_fused, reason = choose_path(CPU, "bf16", cpu=_cpu("avx2"))
    assert (precision, use_fused) == ("bf16", True) and "emulated" in reason  # asked for: done, and said
    assert choose_path(CPU, "fp32", cpu=_cpu("amx")) == ("fp32", True, "fp32 fused kernels (AVX-512; --precision fp32)")
    torch_ops = choose_path(CPU, "auto", "torch", cpu=_cpu("avx2"))
    assert torch_ops == ("fp32", False, "fp32 PyTorch ops (--kernels torch; no native bf16)")
    assert choose_path(CPU, cpu=_cpu("amx"), distributed=True)[:2] == ("bf16", False)
    image = choose_path(CPU, cpu=_cpu("avx2"), layout="image")  # an image model says why its precision too
    assert image == ("fp32", False,
                     "fp32 PyTorch ops (an image model: the fused kernels are the MLP's; no native bf16)")
    assert choose_path(torch.device("meta"), "fp32")[:2] == ("fp32", False)
    with pytest.raises(ValueError):
        choose_path(CPU, "fp16")


def test_the_fp32_gather_refuses_a_row_outside_the_data():
    lib = fused.load_kernels()
    data, clean, noisy = torch.rand(10, 4), torch.zeros(2, 4), torch.zeros(2, 4)
    with pytest.raises(fused.KernelError, match="gather_gaussian_f32"):
        lib.gather_gaussian_f32(fused.ptr(data), 10, fused.ptr(torch.tensor([0, 10])), 2, 4, 0.1, 1, 0,
                                fused.ptr(clean), fused.ptr(noisy))
    assert float(noisy.abs().sum()) == 0.0 and float(clean.abs().sum()) == 0.0  # refused before any work
