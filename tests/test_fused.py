"""The fused CPU training step (daelab.kernels.fused) against PyTorch's autograd and Adam, and its random numbers."""
import copy
import ctypes
import logging

import pytest
import torch
import torch.nn.functional as F

from daelab.kernels import _loader, fused
from daelab.models import ModelConfig, build_model
from daelab.noise import parse_noise
from daelab.train import TrainConfig, fit, make_optimizer, make_training_policy
from kernel_reference import reference_loss

pytestmark = pytest.mark.skipif(fused.load_kernels() is None, reason="no C compiler for the fused kernels")

SMALL = ModelConfig(input_dim=100, hidden=(64, 48, 40), code_dim=16, decoder_hidden=(40, 64), dropout=0.2)


def _setup(config=SMALL, seed=0):
    torch.manual_seed(seed)
    model = build_model(config)
    optimizer = make_optimizer(model, TrainConfig())
    policy = fused.make_fused(model, optimizer, torch.device("cpu"))
    assert policy is not None
    return model, optimizer, policy


def _bf16_weight(layer):
    layer.ref_weight = layer.linear.weight.detach().bfloat16().float().requires_grad_()
    return layer.ref_weight


def _reference_loss(model, policy, noisy, clean, masks):
    """The model's training forward in fp32 autograd, on the fused step's bf16 weights, input and masks."""
    return reference_loss(policy, noisy.float(), clean, masks, _bf16_weight)


def _relative_error(got, want):
    return float((got.float() - want).norm() / want.norm().clamp_min(1e-12))


def test_gradients_match_autograd():
    model, _, policy = _setup()
    data = torch.rand(300, 100)
    index = torch.randperm(300)[:64]
    loss = policy.forward_backward(data, index, parse_noise("gaussian:0.1"), torch.Generator().manual_seed(1))
    state = policy.batch_state(64)
    masks = [entry.get("keep") for entry in state["layers"]]
    assert sum(m is not None for m in masks) == 2  # the two encoder layers with dropout
    assert torch.equal(state["clean"], data[index])
    reference = _reference_loss(model, policy, state["input"], data[index], masks)
    reference.backward()
    assert float(loss) == pytest.approx(float(reference.detach()), rel=1e-2)
    grads = policy.grads
    for name, param in model.named_parameters():
        layer = next(l for l in policy.layers if param is l.linear.weight or param is l.linear.bias
                     or (l.bn is not None and (param is l.bn.weight or param is l.bn.bias)))
        want = layer.ref_weight.grad if param is layer.linear.weight else param.grad
        k = policy.layers.index(layer)
        cancelled = layer.kind == "bn" or (layer.kind == "linear" and policy.layers[k + 1].kind == "bn")
        if param is layer.linear.bias and cancelled:
            # a BatchNorm cancels this bias: its gradient is exactly 0 (autograd's is rounding noise)
            assert float(grads[name].abs().max()) == 0.0 and float(want.abs().max()) < 1e-6, name
            continue
        # bf16 activations: ~0.5% error at the output layer growing to ~9% at the first, as in
        # PyTorch's own bf16 autograd; a wrong term (a mask scale, a BatchNorm sum) is far beyond
        got = grads[name].float().flatten()
        assert _relative_error(got, want.flatten()) < 0.15, name
        assert float(F.cosine_similarity(got, want.flatten(), dim=0)) > 0.99, name


def test_running_statistics_follow_batchnorm():
    model, _, policy = _setup()
    bn = policy.layers[0].bn
    bn.running_mean.normal_()
    model.encoder[0].bias.data.normal_()
    before_mean, before_var = bn.running_mean.clone(), bn.running_var.clone()
    data = torch.rand(100, 100)
    index = torch.arange(32)
    policy.forward_backward(data, index, parse_noise("gaussian:0"), torch.Generator().manual_seed(0))
    z = policy.batch_state(32)["input"].float() @ policy.layers[0].weight.float().t() + model.encoder[0].bias
    want_mean = before_mean + bn.momentum * (z.mean(0) - before_mean)
    want_var = before_var + bn.momentum * (z.var(0, unbiased=True) - before_var)
    assert torch.allclose(bn.running_mean, want_mean, atol=2e-3)
    assert torch.allclose(bn.running_var, want_var, rtol=2e-2)
    assert int(bn.num_batches_tracked) == 1


def test_adam_step_matches_torch_adam():
    model, optimizer, policy = _setup()
    reference = copy.deepcopy(model)
    reference_optimizer = torch.optim.Adam(reference.parameters(), lr=1e-3)
    data = torch.rand(200, 100)
    generator = torch.Generator().manual_seed(3)
    for step in range(3):
        index = torch.randperm(200, generator=torch.Generator().manual_seed(step))[:50]
        policy.step(data, index, parse_noise("gaussian:0.1"), generator)
        grads = policy.grads
        for name, param in reference.named_parameters():
            param.grad = grads[name].float().clone()
        reference_optimizer.step()
        for (name, got), want in zip(model.named_parameters(), reference.parameters()):
            assert torch.allclose(got, want, atol=1e-6, rtol=1e-5), (step, name)
    state = optimizer.state[model.encoder[0].weight]
    assert float(state["step"]) == 3
    # the bf16 shadows follow the master weights
    assert torch.equal(policy.layers[0].weight, model.encoder[0].weight.detach().bfloat16())


def test_adam_step_counts_survive_a_checkpoint_into_torch_adam(tmp_path):
    """The fused Adam keeps every parameter's step count in one tensor; saved and loaded into
    PyTorch's own Adam they are still one count per parameter, each advanced once per step."""
    model, optimizer, policy = _setup()
    data, generator = torch.rand(200, 100), torch.Generator().manual_seed(0)
    for step in range(3):
        policy.step(data, torch.arange(50) + step, parse_noise("gaussian:0.1"), generator)
    assert [float(s["step"]) for s in optimizer.state.values()] == [3.0] * len(optimizer.state)
    torch.save(optimizer.state_dict(), tmp_path / "adam.pt")
    reference = copy.deepcopy(model)
    plain = torch.optim.Adam(reference.parameters(), lr=1e-3)
    plain.load_state_dict(torch.load(tmp_path / "adam.pt"))
    for param in reference.parameters():
        param.grad = torch.ones_like(param)
    plain.step()
    assert [float(s["step"]) for s in plain.state.values()] == [4.0] * len(plain.state)
    assert [float(s["step"]) for s in optimizer.state.values()] == [3.0] * len(optimizer.state)


def test_a_step_refused_for_a_bad_row_leaves_adam_as_it_was():
    """The gather checks the rows before any work and Adam runs after the backward: a refused step
    changes no weight, moment or step count."""
    model, optimizer, policy = _setup()
    data, noise, generator = torch.rand(100, 100), parse_noise("gaussian:0.1"), torch.Generator().manual_seed(0)
    policy.step(data, torch.arange(32), noise, generator)
    before = copy.deepcopy((model.state_dict(), optimizer.state_dict()))
    with pytest.raises(fused.KernelError, match="outside"):
        policy.step(data, torch.tensor([0, 5, 100]), noise, generator)
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), before[0].values()))
    after = optimizer.state_dict()["state"]
    for key, state in before[1]["state"].items():
        assert all(torch.equal(state[name], after[key][name]) for name in ("step", "exp_avg", "exp_avg_sq"))
    policy.step(data, torch.arange(32), noise, generator)
    assert {float(s["step"]) for s in optimizer.state.values()} == {2.0}


def _gaussian(data, index, level, seed, stream=0):
    lib = fused.load_kernels()
    clean = torch.empty(len(index), data.shape[1])
    noisy = torch.empty(len(index), data.shape[1], dtype=torch.bfloat16)
    lib.gather_gaussian(fused.ptr(data), data.shape[0], fused.ptr(index), len(index), data.shape[1], level, seed,
                        stream, fused.ptr(clean), fused.ptr(noisy))
    return clean, noisy


def test_gaussian_noise_statistics_and_determinism():
    data = torch.full((10, 1000), 0.5)
    index = torch.arange(10).repeat(40)  # 400,000 values
    clean, noisy = _gaussian(data, index, 0.1, seed=12345)
    assert torch.equal(clean, data[index])
    noise = noisy.float() - 0.5
    assert abs(float(noise.mean())) < 1e-3
    assert float(noise.std()) == pytest.approx(0.1, rel=0.01)
    tail = float((noise.abs() > 0.2).float().mean())  # P(|N| > 2) = 0.0455
    assert tail == pytest.approx(0.0455, abs=0.002)
    assert float(noise.abs().max()) < 0.6  # no log(0) blow-up
    # the same seed gives the same draw whatever the thread count; another seed or stream does not
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        _, single = _gaussian(data, index, 0.1, seed=12345)
    finally:
        torch.set_num_threads(threads)
    assert torch.equal(single, noisy)
    assert not torch.equal(_gaussian(data, index, 0.1, seed=12346)[1], noisy)
    assert not torch.equal(_gaussian(data, index, 0.1, seed=12345, stream=1)[1], noisy)
    # clipping to [0, 1]
    _, clipped = _gaussian(torch.tensor([[0.0, 1.0] * 50]), torch.zeros(1000, dtype=torch.int64), 0.5, seed=1)
    assert float(clipped.min()) == 0.0 and float(clipped.max()) == 1.0
    assert float((clipped.float() == 0).float().mean()) == pytest.approx(0.25, abs=0.02)  # half the zeros


def test_dropout_mask_rate():
    lib = fused.load_kernels()
    keep = torch.empty(300_001, dtype=torch.uint8)
    lib.dropout_mask(99, 3, keep.numel(), int(0.2 * 2 ** 32), keep.data_ptr(), 0.0, None)
    assert float(keep.float().mean()) == pytest.approx(0.8, abs=0.003)
    again = torch.empty_like(keep)
    lib.dropout_mask(99, 3, keep.numel(), int(0.2 * 2 ** 32), again.data_ptr(), 0.0, None)
    assert torch.equal(keep, again)
    lib.dropout_mask(99, 4, keep.numel(), int(0.2 * 2 ** 32), again.data_ptr(), 0.0, None)
    assert 0.6 < float((keep == again).float().mean()) < 0.72  # independent streams: 0.8^2 + 0.2^2 = 0.68


def _philox_reference(counter: int, stream: int, seed: int) -> list[int]:
    """Philox4x32-10 of counter (counter, stream, 0, 0) under key (seed low, seed high), in plain Python."""
    x = [counter, stream, 0, 0]
    k0, k1 = seed & 0xFFFFFFFF, seed >> 32
    for _ in range(10):
        p0, p1 = 0xD2511F53 * x[0], 0xCD9E8D57 * x[2]
        x = [(p1 >> 32) ^ x[1] ^ k0, p1 & 0xFFFFFFFF, (p0 >> 32) ^ x[3] ^ k1, p0 & 0xFFFFFFFF]
        k0, k1 = (k0 + 0x9E3779B9) & 0xFFFFFFFF, (k1 + 0xBB67AE85) & 0xFFFFFFFF
    return x


def test_dropout_words_are_philox4x32_10():
    # Random123's known answer: counter 0, key 0 -> 6627e8d5 e169c58d bc57ac4c 9b00dbd8
    assert _philox_reference(0, 0, 0) == [0x6627E8D5, 0xE169C58D, 0xBC57AC4C, 0x9B00DBD8]
    lib = fused.load_kernels()
    chunk = 64  # value e is word (e % 256) // 64 of counter (e // 256) * 64 + e % 64
    for seed, stream in [(0, 0), (2 ** 64 - 1, 3), (123456789012345, 1)]:
        n = 1000
        keep = torch.empty(n, dtype=torch.uint8)
        lib.dropout_mask(seed, stream, n, 2 ** 31, keep.data_ptr(), 0.0, None)  # keep = word >= 2^31
        expected = [_philox_reference((e // 256) * chunk + e % chunk, stream, seed)[(e % 256) // chunk] >= 2 ** 31
                    for e in range(n)]
        assert keep.tolist() == [int(v) for v in expected]
    # and a whole word, recovered by bisection over the threshold: value 0 of seed 0, stream 0
    low, high = 0, 2 ** 32 - 1
    one = torch.empty(1, dtype=torch.uint8)
    while low < high:
        mid = (low + high + 1) // 2
        lib.dropout_mask(0, 0, 1, mid, one.data_ptr(), 0.0, None)
        low, high = (mid, high) if one.item() else (low, mid - 1)
    assert low == 0x6627E8D5


def test_other_noise_models_and_last_partial_batch():
    model, _, policy = _setup()
    data = torch.rand(90, 100)
    generator = torch.Generator().manual_seed(0)
    for spec in ("salt_pepper:0.1", "masking:0.25", "uniform:0.2"):
        loss = policy.step(data, torch.arange(90)[-26:], parse_noise(spec), generator)
        assert 0 < float(loss) < 1
        noisy = policy.batch_state(26)["input"].float()
        assert not torch.allclose(noisy, data[-26:], atol=1e-2)


def test_fit_uses_fused_kernels_and_learns(tmp_path, tiny_dataset):
    config = TrainConfig(epochs=3, batch_size=32, precision="bf16", val_subset=64)
    out = fit(ModelConfig(dropout=0.2), config, tmp_path / "run", dataset=tiny_dataset, progress=False)
    import json
    assert json.loads((tmp_path / "run" / "config.json").read_text())["kernels"] == "fused"
    losses = [h["train_loss"] for h in out["history"]]
    assert losses[-1] < losses[0]
    # --kernels torch takes PyTorch's path
    torch_run = fit(ModelConfig(), TrainConfig(epochs=1, batch_size=32, precision="bf16", kernels="torch",
                                               val_subset=64), tmp_path / "t", dataset=tiny_dataset, progress=False)
    assert json.loads((tmp_path / "t" / "config.json").read_text())["kernels"] == "torch"
    assert torch_run["epochs_run"] == 1


def test_unsupported_models_and_optimizers_fall_back():
    model = build_model(ModelConfig(name="conv"))
    optimizer = make_optimizer(model, TrainConfig())
    assert fused.make_fused(model, optimizer, torch.device("cpu")) is None
    mlp = build_model(SMALL)
    decayed = torch.optim.Adam(mlp.parameters(), weight_decay=1e-4)
    assert fused.make_fused(mlp, decayed, torch.device("cpu")) is None
    sgd = torch.optim.SGD(mlp.parameters(), lr=0.1)
    assert fused.make_fused(mlp, sgd, torch.device("cpu")) is None
    policy = make_training_policy(mlp, make_optimizer(mlp, TrainConfig()), TrainConfig(precision="fp32",
                                                                                       kernels="torch"),
                                  torch.device("cpu"))
    assert not getattr(policy, "fused", False)
    # fp32 with --kernels auto takes the fused fp32 step (issue 19)
    policy = make_training_policy(mlp, make_optimizer(mlp, TrainConfig()), TrainConfig(precision="fp32"),
                                  torch.device("cpu"))
    assert getattr(policy, "fused", False) and policy.dtype == torch.float32


def test_the_training_path_is_logged_once(monkeypatch, caplog):
    from daelab.train import _steps
    monkeypatch.setattr(_steps, "_PATHS_SAID", set())
    monkeypatch.setenv("DAELAB_ISA", "avx2")  # as an AVX2 machine: no native bf16
    mlp = build_model(SMALL)
    with caplog.at_level(logging.INFO, logger="daelab.train._steps"):
        for _ in range(2):
            policy = make_training_policy(mlp, make_optimizer(mlp, TrainConfig()), TrainConfig(), torch.device("cpu"))
            assert policy.fused and policy.dtype == torch.float32 and policy.lib.variant == "avx2"
    said = [r.getMessage() for r in caplog.records if r.name == "daelab.train._steps"]
    assert said == ["training path: fp32 fused kernels (AVX2; no native bf16; DAELAB_ISA=avx2)"]


def test_fused_kernels_not_used_say_why_once(monkeypatch, caplog):
    from daelab.kernels import _mlp
    monkeypatch.setattr(_mlp, "_WARNED", set())  # a fresh process's memo: other tests gave these reasons already
    cpu = torch.device("cpu")
    conv, mlp, edited = build_model(ModelConfig(name="conv")), build_model(SMALL), build_model(SMALL)
    edited.encoder[3] = torch.nn.ReLU()  # a model edited after it was built: no longer the fused shape
    bf16 = TrainConfig(precision="bf16")  # --kernels auto
    with caplog.at_level(logging.WARNING, logger="daelab.kernels._mlp"):
        for _ in range(2):
            assert fused.make_fused(conv, make_optimizer(conv, TrainConfig()), cpu) is None
            assert fused.make_fused(mlp, torch.optim.SGD(mlp.parameters(), lr=0.1), cpu) is None
            policy = make_training_policy(edited, make_optimizer(edited, bf16), bf16, cpu)
            assert not getattr(policy, "fused", False)
        assert fused.make_fused(mlp, torch.optim.SGD(mlp.parameters(), lr=0.1), torch.device("meta")) is None
        # not asked for: --kernels torch never tries the fused step, so says nothing about it
        make_training_policy(edited, make_optimizer(edited, TrainConfig()), TrainConfig(kernels="torch"), cpu)
    warnings = [r.getMessage() for r in caplog.records if r.name == "daelab.kernels._mlp"]
    assert len(warnings) == 3 and all(w.startswith("fused CPU kernels not used: ") for w in warnings)
    assert "ConvDAE has no encoder/decoder nn.Sequential" in warnings[0]
    assert "the optimizer is SGD, not torch.optim.Adam" in warnings[1]
    assert "encoder.3 is ReLU after the BatchNorm1d at encoder.1" in warnings[2]
    assert fused.make_fused(mlp, make_optimizer(mlp, TrainConfig()), cpu) is not None  # the plain case still fuses


def test_no_compiler_falls_back_with_one_warning(monkeypatch, tmp_path, caplog):
    monkeypatch.setattr(_loader, "_LIB", False)  # load_kernels' once-per-process memo lives in _loader
    monkeypatch.setenv("CC", "no-such-compiler-here")
    monkeypatch.setenv("DAELAB_CACHE", str(tmp_path))
    with caplog.at_level(logging.WARNING, logger="daelab.kernels._loader"):
        assert fused.load_kernels() is None
        assert fused.load_kernels() is None
    assert sum("fused CPU kernels unavailable" in r.message for r in caplog.records) == 1
    mlp = build_model(SMALL)
    policy = make_training_policy(mlp, make_optimizer(mlp, TrainConfig()), TrainConfig(precision="bf16"),
                                  torch.device("cpu"))
    assert not getattr(policy, "fused", False)


def test_build_is_cached_and_atomic(monkeypatch, tmp_path):
    monkeypatch.setenv("DAELAB_CACHE", str(tmp_path))
    path = fused.build_kernels()
    assert path.parent == tmp_path / "kernels" and path.exists()
    stamp = path.stat().st_mtime_ns
    assert fused.build_kernels() == path and path.stat().st_mtime_ns == stamp  # cached: not rebuilt
    assert [p.name for p in path.parent.iterdir()] == [path.name]  # no temp files left behind
    assert ctypes.CDLL(str(path)).to_bf16 is not None  # loads


def test_train_steps_accepts_non_contiguous_data():
    from daelab.train import train_steps
    model, optimizer, policy = _setup()
    data = torch.rand(100, 100).t()  # non-contiguous rows
    assert not data.is_contiguous()
    config = TrainConfig(batch_size=32)
    done = train_steps(policy, optimizer, data, torch.arange(64), parse_noise("gaussian:0"),
                       torch.Generator().manual_seed(0), config, torch.device("cpu"), 0, 2)
    assert done.steps == 2
    # the batch the kernels saw is the right rows of the data, not a misread of its memory
    assert torch.equal(policy.batch_state(32)["clean"], data[32:64])
    with pytest.raises(ValueError, match="contiguous"):
        policy.step(data, torch.arange(32), parse_noise("gaussian:0"), torch.Generator())
