"""Training: the loss falls, resume equals an uninterrupted run, non-finite losses stop the run."""
import json

import pytest
import torch

from daelab.checkpoint import LAST, load_checkpoint, save_checkpoint
from daelab.errors import CheckpointError, RunLockedError, TrainingError
from daelab.models import ModelConfig
from daelab.runs import RunLock, load_model, read_metrics
from daelab.train import TrainConfig, fit

SMALL = dict(batch_size=64, seed=3)


def _weights(run_dir):
    return load_checkpoint(run_dir / LAST)["model"]


def test_two_epochs_lower_the_loss_and_write_the_run(tmp_path, tiny_dataset):
    result = fit(ModelConfig(), TrainConfig(epochs=2, **SMALL), tmp_path, dataset=tiny_dataset, progress=False)
    rows = read_metrics(tmp_path)
    assert [r["epoch"] for r in rows] == [1, 2]
    assert rows[1]["train_loss"] < rows[0]["train_loss"] and rows[1]["val_loss"] < rows[0]["val_loss"]
    assert all(r["epoch_seconds"] > 0 for r in rows)
    for name in ("config.json", "last.pt", "best.pt", "loss_curve.png"):
        assert (tmp_path / name).stat().st_size > 0
    assert list((tmp_path / "tensorboard").glob("events.out.tfevents.*"))
    assert json.loads((tmp_path / "config.json").read_text())["train"]["epochs"] == 2
    assert result["best_val_loss"] == min(r["val_loss"] for r in rows)
    model, state = load_model(tmp_path)
    assert not model.training and state["epoch"] == 2


def test_resume_equals_uninterrupted(tmp_path, tiny_dataset):
    straight, split = tmp_path / "straight", tmp_path / "split"
    fit(ModelConfig(), TrainConfig(epochs=3, **SMALL), straight, dataset=tiny_dataset, progress=False)
    fit(ModelConfig(), TrainConfig(epochs=1, **SMALL), split, dataset=tiny_dataset, progress=False)
    fit(ModelConfig(), TrainConfig(epochs=3, **SMALL), split, dataset=tiny_dataset, progress=False, resume=True)
    a, b = _weights(straight), _weights(split)
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert read_metrics(straight)[-1]["val_loss"] == read_metrics(split)[-1]["val_loss"]
    assert [r["epoch"] for r in read_metrics(split)] == [1, 2, 3]


def test_resume_mid_epoch_checkpoints_equal_uninterrupted(tmp_path, tiny_dataset):
    """Checkpoints written every 3 steps: resuming from a mid-epoch one reaches the same weights."""
    straight, split = tmp_path / "straight", tmp_path / "split"
    config = TrainConfig(epochs=2, checkpoint_every=3, **SMALL)
    fit(ModelConfig(), config, straight, dataset=tiny_dataset, progress=False)
    fit(ModelConfig(), config, split, dataset=tiny_dataset, progress=False)
    # roll `split` back to a mid-epoch checkpoint: train 1 epoch + 3 steps, then resume
    state = load_checkpoint(split / LAST)
    assert state["epoch"] == 2 and state["epoch_step"] == 0
    partial = tmp_path / "partial"
    fit(ModelConfig(), TrainConfig(epochs=1, checkpoint_every=3, **SMALL), partial, dataset=tiny_dataset,
        progress=False)
    a = _weights(straight)
    b = fit_resume = fit(ModelConfig(), config, partial, dataset=tiny_dataset, progress=False, resume=True)
    assert fit_resume["epochs_run"] == 2
    b = _weights(partial)
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_non_finite_loss_stops_and_keeps_last_good_checkpoint(tmp_path, tiny_dataset):
    fit(ModelConfig(), TrainConfig(epochs=1, **SMALL), tmp_path, dataset=tiny_dataset, progress=False)
    good = _weights(tmp_path)
    bad = load_checkpoint(tmp_path / LAST)
    bad["optimizer"]["param_groups"][0]["lr"] = float("nan")
    bad.pop("format"), bad.pop("version")
    save_checkpoint(tmp_path / LAST, bad)
    with pytest.raises(TrainingError, match="non-finite|diverged"):
        fit(ModelConfig(), TrainConfig(epochs=2, **SMALL), tmp_path, dataset=tiny_dataset, progress=False,
            resume=True)
    after = _weights(tmp_path)
    assert all(torch.equal(good[k], after[k]) for k in good)


def test_diverging_lr_is_caught(tmp_path, tiny_dataset):
    with pytest.raises(TrainingError, match="lower --lr"):
        fit(ModelConfig(), TrainConfig(epochs=3, lr=1e3, **SMALL), tmp_path, dataset=tiny_dataset, progress=False)


def test_run_lock_refuses_second_writer_and_recovers_stale(tmp_path):
    with RunLock(tmp_path):
        with pytest.raises(RunLockedError, match="in use"):
            RunLock(tmp_path).acquire()
    (tmp_path / "train.lock").write_text("%s 999999999\n" % __import__("socket").gethostname())
    with RunLock(tmp_path) as lock:  # the owner pid does not exist: stale, taken over
        assert lock.held


def test_checkpoint_of_other_model_is_refused(tmp_path, tiny_dataset):
    fit(ModelConfig(), TrainConfig(epochs=1, **SMALL), tmp_path, dataset=tiny_dataset, progress=False)
    with pytest.raises(CheckpointError, match="not 'conv'"):
        load_checkpoint(tmp_path / LAST, expect_model="conv")


def test_last_and_best_share_one_write_and_stay_apart_after(tmp_path, monkeypatch):
    from daelab.checkpoint import BEST, save_checkpoints
    first = {"model": {"w": torch.ones(3)}, "epoch": 1}
    save_checkpoints([tmp_path / LAST, tmp_path / BEST], first)
    assert (tmp_path / LAST).stat().st_ino == (tmp_path / BEST).stat().st_ino  # one file, two names
    save_checkpoints([tmp_path / LAST], {"model": {"w": torch.zeros(3)}, "epoch": 2})
    best = load_checkpoint(tmp_path / BEST)
    assert best["epoch"] == 1 and torch.equal(best["model"]["w"], torch.ones(3))
    assert load_checkpoint(tmp_path / LAST)["epoch"] == 2
    assert not list(tmp_path.glob(".*.tmp"))

    def no_links(*args):
        raise OSError("links not supported")

    monkeypatch.setattr("os.link", no_links)  # a file system without hard links: both written in full
    save_checkpoints([tmp_path / LAST, tmp_path / BEST], {"model": {"w": torch.full((3,), 2.0)}, "epoch": 3})
    assert (tmp_path / LAST).stat().st_ino != (tmp_path / BEST).stat().st_ino
    assert load_checkpoint(tmp_path / BEST)["epoch"] == 3 and not list(tmp_path.glob(".*.tmp"))


def test_every_training_step_is_one_step_policy(tiny_dataset):
    """fp32 and the bf16 shadow (through TorchStep) and the fused kernels all offer StepPolicy's step."""
    from daelab.data import to_tensor
    from daelab.models import build_model
    from daelab.noise import parse_noise
    from daelab.train import StepPolicy, TorchStep, WeightPolicy, make_optimizer, make_training_policy
    data = to_tensor(tiny_dataset.train_images[:64])
    cpu = torch.device("cpu")
    steps = []
    for precision, kernels in (("fp32", "torch"), ("bf16", "torch"), ("bf16", "auto")):
        torch.manual_seed(0)
        model = build_model(ModelConfig(hidden=(32,), code_dim=8, decoder_hidden=(32,)))
        optimizer = make_optimizer(model, TrainConfig())
        policy = make_training_policy(model, optimizer, TrainConfig(precision=precision, kernels=kernels), cpu)
        if isinstance(policy, WeightPolicy):
            assert not isinstance(policy, StepPolicy)  # it needs TorchStep to take a step
            policy = TorchStep(policy, optimizer, policy.module, data, 32)
        assert isinstance(policy, StepPolicy)
        shadow = (precision, kernels) == ("bf16", "torch")  # PyTorch's bf16 runs through a bf16 copy
        assert (policy.module is model) is not shadow
        before = model.encoder[0].weight.detach().clone()
        loss = policy.step(data, torch.arange(32), parse_noise("gaussian:0.1"), torch.Generator().manual_seed(1))
        assert loss.dim() == 0 and 0 < float(loss.detach()) < 1
        assert not torch.equal(before, model.encoder[0].weight)  # the step updated the master weights
        steps.append(type(policy).__name__)
    assert steps[:2] == ["TorchStep", "TorchStep"]
    from daelab.kernels.fused import load_kernels
    assert steps[2] == ("FusedMLP" if load_kernels() is not None else "TorchStep")


def test_resume_refuses_an_optimizer_state_that_does_not_fit_the_model(tmp_path, tiny_dataset):
    """Adam's load_state_dict takes moments of any shape; the training step (the fused kernels) would then
    write past them. fit checks them against the model first (daelab.checkpoint.check_optimizer_state)."""
    fit(ModelConfig(), TrainConfig(epochs=1, **SMALL), tmp_path, dataset=tiny_dataset, progress=False)
    bad = load_checkpoint(tmp_path / LAST)
    bad["optimizer"]["state"][0]["exp_avg"] = torch.zeros(3)
    bad.pop("format"), bad.pop("version")
    save_checkpoint(tmp_path / LAST, bad)
    with pytest.raises(CheckpointError, match="exp_avg"):
        fit(ModelConfig(), TrainConfig(epochs=2, **SMALL), tmp_path, dataset=tiny_dataset, progress=False,
            resume=True)


@pytest.mark.parametrize("isa, expected", [("avx2", "fp32"), ("avx512", "fp32"), ("amx", None)])
def test_auto_precision_follows_native_bf16_and_the_isa_cap(monkeypatch, isa, expected):
    from daelab.cpu import has_native_bf16
    from daelab.kernels.fused import choose_path
    from daelab.train import resolve_precision
    monkeypatch.setenv("DAELAB_ISA", isa)
    recorded = resolve_precision("auto", torch.device("cpu"))
    assert recorded == (expected or ("bf16" if has_native_bf16() else "fp32"))
    assert choose_path(torch.device("cpu")).precision == recorded  # what config.json says is what ran
