"""Out-of-range indices and wrong arrays reach no C loop: the Python checks, and the debug build's own checks in C.

The cases that would read outside an array if a check were missing run in a subprocess, so that a
segfault fails the test instead of killing pytest.
"""
import os
import subprocess
import sys
import textwrap

import pytest
import torch

from daelab.kernels import KernelError, _abi, _loader, make_fused, ptr
from daelab.noise import parse_noise

pytestmark = pytest.mark.skipif(_loader.load_kernels() is None, reason="no C compiler for the fused kernels")

# Run in a fresh interpreter with the normal or the debug build; prints one line per case.
_CASES = textwrap.dedent("""
    import torch
    from daelab.kernels import load_kernels, ptr
    from daelab.probe._classifier import ClassifierSettings, train_classifiers

    lib = load_kernels()
    print("debug", lib.debug)

    def case(name, call):
        try:
            call()
        except Exception as error:
            print(name, type(error).__name__, error)
        else:
            print(name, "no error")

    data, clean = torch.rand(10, 4), torch.empty(3, 4)
    noisy = torch.empty(3, 4, dtype=torch.bfloat16)
    far = torch.tensor([0, 10 ** 9, 2])  # a row a billion rows past the data
    gather = lambda index: (ptr(data), 10, index, 3, 4, 0.1, 1, 0, ptr(clean), ptr(noisy))
    seeds, batch, hidden, classes = 1, 4, 8, 3
    f = lambda n: ptr(torch.zeros(n))
    bad = torch.tensor([0, 1, -5, 2])  # a label outside the 3 classes
    tail = (f(batch * hidden), seeds, batch, hidden, classes, f(batch * hidden), 0, hidden, ptr(bad), 0, f(hidden),
            f(hidden), f(hidden * classes), f(classes), 1e-3, 0.01, f(hidden), f(hidden), f(batch * hidden),
            f(batch * hidden), f(hidden * classes), f(classes), f(hidden), f(hidden), f(hidden),
            f(3 * batch * hidden + 2 * batch * classes))
    case("gather checked", lambda: lib.gather_gaussian(*gather(ptr(far))))
    case("tail checked", lambda: lib.classifier_tail(*tail))
    if lib.debug:  # the C side's own checks: no Python check at all, or a bare address Python cannot check
        case("gather in C", lambda: lib.trusted.gather_gaussian(*gather(ptr(far))))
        case("gather bare address", lambda: lib.gather_gaussian(*gather(far.data_ptr())))
        case("tail in C", lambda: lib.trusted.classifier_tail(*tail))

    # and the probe's training loop, whatever checks its labels first
    features, labels = torch.randn(64, 6), torch.arange(64) % 3
    labels[40] = 7
    case("classifier", lambda: train_classifiers(features, labels, features, labels % 3, [0],
                                                 ClassifierSettings(epochs=1, batch_size=16), n_classes=3))
""")


@pytest.mark.parametrize("debug", [False, True], ids=["normal", "debug"])
def test_out_of_range_indices_are_clean_errors_in_both_builds(debug):
    env = dict(os.environ, DAELAB_KERNEL_DEBUG="1" if debug else "0")
    run = subprocess.run([sys.executable, "-c", _CASES], capture_output=True, text=True, env=env, timeout=300)
    assert run.returncode == 0, run.stderr[-2000:]  # a segfault would be -11
    out = run.stdout
    assert f"debug {debug}" in out
    assert "gather checked KernelError fused kernel gather_gaussian: index holds 1000000000, outside [0, 10)" in out
    assert "tail checked KernelError fused kernel classifier_tail: labels holds -5, outside [0, 3)" in out
    if debug:
        reason = "an index (a row number, a label) is outside its range"
        assert f"gather in C KernelError fused kernel gather_gaussian: {reason}" in out
        assert f"gather bare address KernelError fused kernel gather_gaussian: {reason}" in out
        assert f"tail in C KernelError fused kernel classifier_tail: {reason}" in out
    assert "classifier " in out and "no error" not in out, out


def _fused_policy():
    from daelab.models import ModelConfig, build_model
    from daelab.train import TrainConfig, make_optimizer
    torch.manual_seed(0)
    model = build_model(ModelConfig(input_dim=100, hidden=(64, 48, 40), code_dim=16, decoder_hidden=(40, 64),
                                    dropout=0.2))
    optimizer = make_optimizer(model, TrainConfig())
    policy = make_fused(model, optimizer, torch.device("cpu"))
    assert policy is not None
    return model, optimizer, policy


def test_a_bad_row_in_a_fused_step_changes_nothing():
    model, optimizer, policy = _fused_policy()
    before = {name: value.clone() for name, value in model.state_dict().items()}
    data, noise = torch.rand(50, 100), parse_noise("gaussian:0.1")
    with pytest.raises(KernelError, match="index holds -1, outside"):
        policy.step(data, torch.tensor([3, 4, -1, 5]), noise, torch.Generator())
    assert all(torch.equal(value, before[name]) for name, value in model.state_dict().items())
    assert not optimizer.state  # no Adam step was taken
    with pytest.raises(ValueError, match=r"\(N, 100\) data"):
        policy.step(torch.rand(50, 99), torch.arange(4), noise, torch.Generator())
    with pytest.raises(ValueError, match="index must be contiguous"):
        policy.step(data, torch.arange(8)[::2], noise, torch.Generator())


def _tail_steps(lib, seeds, batch, hidden, classes):
    """classifier_tail on zeroed buffers, as step(start, labels, masks): an epoch's (S, N) labels, (S, N, H) masks."""
    buffers = {name: torch.zeros(size) for name, size in [
        ("a2", seeds * batch * hidden), ("gamma", seeds * hidden), ("beta", seeds * hidden),
        ("w3", seeds * hidden * classes), ("b3", seeds * classes), ("rm", seeds * hidden), ("rv", seeds * hidden),
        ("h", seeds * batch * hidden), ("da2", seeds * batch * hidden), ("dw3", seeds * hidden * classes),
        ("db3", seeds * classes), ("dgamma", seeds * hidden), ("dbeta", seeds * hidden), ("db2", seeds * hidden),
        ("work", seeds * (3 * batch * hidden + 2 * batch * classes))]}
    p = {name: ptr(t) for name, t in buffers.items()}

    def step(start, labels, masks):
        return lib.classifier_tail(p["a2"], seeds, batch, hidden, classes, ptr(masks[:, start]), masks.stride(0),
                                   masks.stride(1), ptr(labels[:, start]), labels.stride(0), p["gamma"], p["beta"],
                                   p["w3"], p["b3"], 1e-3, 0.01, p["rm"], p["rv"], p["h"], p["da2"], p["dw3"],
                                   p["db3"], p["dgamma"], p["dbeta"], p["db2"], p["work"])
    return step


def test_labels_are_checked_once_per_epoch_and_again_after_a_write(monkeypatch):
    lib = _loader.open_kernels(_loader.load_kernels().path)  # its own memo of checked labels
    seeds, n, batch, hidden, classes = 2, 64, 16, 8, 4
    labels = (torch.arange(seeds * n) % classes).view(seeds, n)  # the epoch's labels, (S, N)
    masks = torch.ones(seeds, n, hidden)
    step = _tail_steps(lib, seeds, batch, hidden, classes)
    scans = []
    real_aminmax = torch.aminmax
    monkeypatch.setattr(_abi.torch, "aminmax", lambda values: scans.append(values.numel()) or real_aminmax(values))
    for start in range(0, n, batch):
        step(start, labels, masks)
    assert scans == [seeds * n]  # one scan of the whole epoch, not one per step
    labels[1, 50] = classes  # written in place: checked again, and refused
    with pytest.raises(KernelError, match=f"labels holds {classes}, outside"):
        step(48, labels, masks)
    step(0, labels, masks)  # rows 0-15 are still fine
    with pytest.raises(ValueError, match="past the end of the tensor"):
        step(n - batch + 1, labels, masks)  # the last rows' masks and labels run past the epoch's arrays
    with pytest.raises(ValueError, match="mask must be a CPU float tensor"):
        step(0, labels, masks.double())


def test_strided_labels_are_checked_where_the_kernel_reads_them():
    lib = _loader.open_kernels(_loader.load_kernels().path)
    seeds, n, batch, hidden, classes = 2, 16, 8, 4, 3
    padded = torch.full((seeds, n + 5), 99)  # each seed's row padded with values the kernel never reads
    padded[:, :n] = torch.arange(n) % classes
    labels, masks = padded[:, :n], torch.ones(seeds, n, hidden)
    step = _tail_steps(lib, seeds, batch, hidden, classes)
    step(0, labels, masks)
    step(8, labels, masks)
    padded[1, 10] = -1
    step(0, labels, masks)  # rows 0-7: not the bad one
    with pytest.raises(KernelError, match="labels holds -1, outside"):
        step(8, labels, masks)
