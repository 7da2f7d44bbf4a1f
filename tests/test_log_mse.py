"""``--loss log_mse``: the mean over samples of log(sample MSE + floor), on PyTorch's ops; MSE is still logged."""
import json

import pytest
import torch

from daelab.cpu import CpuInfo
from daelab.errors import ConfigError
from daelab.kernels import choose_path
from daelab.models import ModelConfig, build_model
from daelab.noise import parse_noise
from daelab.runs import read_metrics
from daelab.train import TorchStep, TrainConfig, fit, make_optimizer, make_training_policy
from daelab.train._config import LOG_MSE_FLOOR
from daelab.train._precision import make_policy

CPU = torch.device("cpu")


class _Recorder(torch.optim.SGD):
    """SGD with lr 0 that keeps each step's gradients: the step's objective is read off, the weights stay."""

    def __init__(self, params):
        super().__init__(params, lr=0.0)
        self.grads = []

    def step(self, closure=None):
        self.grads.append([p.grad.clone() for group in self.param_groups for p in group["params"]])
        return super().step(closure)


def _model():
    torch.manual_seed(0)
    model = build_model(ModelConfig(name="dncnn", depth=3, channels=4))
    with torch.no_grad():  # the last conv starts at zero (the identity); move it so every sample's error differs
        for p in model.parameters():
            p.add_(0.01 * torch.randn_like(p))
    return model.train()


def _step(loss, data, index):
    model = _model()
    optimizer = _Recorder(model.parameters())
    step = TorchStep(make_policy(model, "fp32"), optimizer, model, data, len(index), loss=loss)
    generator = torch.Generator().manual_seed(7)
    returned = step.step(data, index, parse_noise("awgn_range:0-55"), generator)
    return model, optimizer.grads[0], returned, step._noisy[:len(index)].clone(), step._clean[:len(index)].clone()


def test_log_mse_steps_on_the_mean_log_sample_mse_and_returns_the_batch_mse():
    data = torch.rand(6, 1, 10, 10)
    index = torch.tensor([4, 0, 2, 5])
    model, grads, returned, noisy, clean = _step("log_mse", data, index)
    per_sample = (model(noisy) - clean).square().flatten(1).mean(1)
    assert per_sample.max() > 2 * per_sample.min()  # stds 0-55 per sample: the errors differ, so the weights do
    model.zero_grad()
    torch.log(per_sample + LOG_MSE_FLOOR).mean().backward()
    for got, want in zip(grads, (p.grad for p in model.parameters())):
        torch.testing.assert_close(got, want)
    torch.testing.assert_close(returned, per_sample.mean().detach())  # the MSE, for the log and the curves
    mse_grads = _step("mse", data, index)[1]  # same noise, same weights: only the objective differs
    assert not all(torch.allclose(a, b) for a, b in zip(grads, mse_grads))


def test_log_mse_trains_on_pytorch_ops_and_says_why():
    amx = CpuInfo(model="test CPU", isa="amx", detected_isa="amx", capped_by=None)
    assert choose_path(CPU, cpu=amx, loss="log_mse") == \
        ("bf16", False, "bf16 PyTorch ops (--loss log_mse: the fused kernels train the MSE; native bf16: AMX)")
    assert choose_path(CPU, cpu=amx)[1]  # the MSE keeps the fused step
    model = build_model(ModelConfig())
    policy = make_training_policy(model, make_optimizer(model, TrainConfig()), TrainConfig(loss="log_mse"), CPU)
    assert not hasattr(policy, "step")  # a weight policy (run through TorchStep), not the fused step
    with pytest.raises(ConfigError, match="loss must be one of mse, log_mse"):
        TrainConfig(loss="l1")
    with pytest.raises(ValueError, match="loss must be one of"):
        TorchStep(make_policy(model, "fp32"), make_optimizer(model, TrainConfig()), model, torch.rand(2, 784), 2, "l1")


def test_a_log_mse_run_records_its_loss_and_logs_mse(tmp_path, tiny_dataset):
    config = TrainConfig(epochs=2, batch_size=64, loss="log_mse", threads=1)
    fit(ModelConfig(), config, tmp_path, dataset=tiny_dataset, progress=False)
    assert json.loads((tmp_path / "config.json").read_text())["train"]["loss"] == "log_mse"
    rows = read_metrics(tmp_path)
    assert all(0 < r["train_loss"] < 0.2 and 0 < r["val_loss"] < 0.2 for r in rows)  # MSEs, not logs (< 0)
    assert rows[1]["train_loss"] < rows[0]["train_loss"]
