"""Precise BatchNorm (--bn-recalibration): exact statistics, the training path untouched, post hoc = in the loop."""
import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from daelab.checkpoint import LAST, load_checkpoint
from daelab.errors import ConfigError
from daelab.models import ModelConfig
from daelab.runs import read_metrics
from daelab.train import TrainConfig, fit, recalibrate_batchnorm, recalibrate_run

TINY = ModelConfig(name="ffdnet", depth=3, channels=4)


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    """Six small grayscale PNGs: gradients with a bright square."""
    path = tmp_path_factory.mktemp("natural") / "train"
    path.mkdir()
    rng = np.random.default_rng(1)
    for i in range(6):
        y, x = np.mgrid[:24, :24]
        image = 50 + 120 * x / 24 * (0.5 + (i % 3) / 4) + 30 * y / 24
        top, left = rng.integers(0, 12, 2)
        image[top:top + 8, left:left + 8] += 60
        Image.fromarray(np.clip(image, 0, 255).astype(np.uint8)).save(path / f"img_{i}.png")
    return path


def _config(data_dir, **overrides):
    values = dict(epochs=2, batch_size=8, lr=3e-3, noise="awgn_range:0-55", patch_size=12, patches_per_epoch=48,
                  val_split=0.34, val_subset=16, data_dir=str(data_dir), threads=1, lr_schedule="cosine")
    return TrainConfig(**{**values, **overrides})


def test_statistics_are_the_exact_average_over_the_batches_and_nothing_else_moves():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 3, 3), nn.BatchNorm2d(3), nn.ReLU(), nn.Dropout(0.5), nn.Conv2d(3, 1, 1))
    bn = model[1]
    bn.running_mean.fill_(5.0)
    bn.num_batches_tracked.fill_(17)
    model.train()
    batches = [torch.rand(4, 1, 8, 8) + k for k in range(3)]
    rng_before = torch.get_rng_state()
    assert recalibrate_batchnorm(model, batches) == 1
    with torch.no_grad():
        outs = [model[0](batch) for batch in batches]
    expected_mean = torch.stack([o.mean((0, 2, 3)) for o in outs]).mean(0)
    expected_var = torch.stack([o.var((0, 2, 3), unbiased=True) for o in outs]).mean(0)
    torch.testing.assert_close(bn.running_mean, expected_mean, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(bn.running_var, expected_var, rtol=1e-5, atol=1e-6)
    assert bn.momentum == 0.1 and int(bn.num_batches_tracked) == 17  # restored
    assert model.training and torch.equal(torch.get_rng_state(), rng_before)  # dropout was off: no draw
    assert recalibrate_batchnorm(nn.Linear(2, 2), batches) == 0


def test_the_weights_follow_the_same_path_with_or_without_it(tmp_path, folder):
    plain = fit(TINY, _config(folder), tmp_path / "plain", progress=False)
    precise = fit(TINY, _config(folder, bn_recalibration=3), tmp_path / "precise", progress=False)
    a, b = load_checkpoint(tmp_path / "plain" / LAST), load_checkpoint(tmp_path / "precise" / LAST)
    params = {name for name, _ in torch.nn.Module.named_parameters(_module(a))}
    assert params
    for name in params:
        assert torch.equal(a["model"][name], b["model"][name]), name
    for stream in ("torch", "generator"):  # the training noise and the global RNG drew the same
        assert torch.equal(a["rng"][stream], b["rng"][stream]), stream
    stats = [name for name in a["model"] if name.endswith("running_var")]
    assert stats and any(not torch.equal(a["model"][n], b["model"][n]) for n in stats)
    assert [r["train_loss"] for r in read_metrics(tmp_path / "plain")] == \
        [r["train_loss"] for r in read_metrics(tmp_path / "precise")]
    assert plain["final_val_loss"] != precise["final_val_loss"]


def test_recalibrating_a_finished_run_gives_what_the_loop_would_have_saved(tmp_path, folder):
    fit(TINY, _config(folder), tmp_path / "after", progress=False)
    fit(TINY, _config(folder, bn_recalibration=3), tmp_path / "during", progress=False)
    result = recalibrate_run(tmp_path / "after", 3)
    assert result["layers"] == 1 and result["val_loss_after"] != result["val_loss_before"]
    after, during = load_checkpoint(tmp_path / "after" / LAST), load_checkpoint(tmp_path / "during" / LAST)
    assert after["model"].keys() == during["model"].keys()
    for name, tensor in during["model"].items():
        assert torch.equal(after["model"][name], tensor), name
    assert after["train_config"]["bn_recalibration"] == 3
    assert result["val_loss_after"] == pytest.approx(read_metrics(tmp_path / "during")[-1]["val_loss"], rel=1e-6)


def test_a_negative_count_is_refused():
    with pytest.raises(ConfigError, match="bn-recalibration"):
        TrainConfig(bn_recalibration=-1)


def _module(checkpoint):
    from daelab.config import from_jsonable
    from daelab.models import build_model
    model = build_model(from_jsonable(ModelConfig, checkpoint["model_config"]))
    model.load_state_dict(checkpoint["model"])
    return model
