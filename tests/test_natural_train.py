"""Training the natural-image models on an image folder: the run, its loss, resume, refusals, the models, tiling."""
import json

import numpy as np
import pytest
import torch
from PIL import Image

from daelab import distributed as dist
from daelab.checkpoint import LAST, load_checkpoint
from daelab.cli import main
from daelab.denoise import denoise_image
from daelab.errors import ConfigError
from daelab.models import ModelConfig, build_model, example_input
from daelab.noise import parse_noise
from daelab.runs import load_model, read_metrics
from daelab.seeds import MODEL_INIT, TRAIN_NOISE
from daelab.train import TrainConfig, fit, make_optimizer, make_training_policy, prepare_data, train_steps

TINY = dict(depth=3, channels=4)


def _write_folder(path, images):
    path.mkdir()
    for i, image in enumerate(images):
        Image.fromarray(image).save(path / f"img_{i:02d}.png")
    return path


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    """Six small grayscale PNGs of two sizes: smooth gradients with a bright square."""
    rng = np.random.default_rng(0)
    images = []
    for i in range(6):
        height, width = (20, 24) if i % 2 else (24, 20)
        y, x = np.mgrid[:height, :width]
        image = 60 + 100 * (x / width) * (0.5 + (i % 3) / 4) + 20 * (y / height)
        top, left = rng.integers(0, 10, 2)
        image[top:top + 8, left:left + 8] += 70
        images.append(np.clip(image, 0, 255).astype(np.uint8))
    return _write_folder(tmp_path_factory.mktemp("natural") / "train", images)


def _config(data_dir, **overrides):
    values = dict(epochs=2, batch_size=8, lr=3e-3, noise="awgn_range:0-55", patch_size=12, patches_per_epoch=48,
                  val_split=0.34, val_subset=16, data_dir=str(data_dir), threads=1)
    return TrainConfig(**{**values, **overrides})


def _weights(run_dir):
    return load_checkpoint(run_dir / LAST)["model"]


@pytest.mark.parametrize("name", ["dncnn", "ffdnet"])
def test_training_on_an_image_folder_writes_an_ordinary_run(tmp_path, folder, name):
    result = fit(ModelConfig(name=name, **TINY), _config(folder), tmp_path, progress=False)
    rows = read_metrics(tmp_path)
    assert [r["epoch"] for r in rows] == [1, 2] and result["epochs_run"] == 2
    assert all(r["epoch_seconds"] > 0 and r["samples_per_s"] > 0 for r in rows)
    for file in ("config.json", "last.pt", "best.pt", "loss_curve.png"):
        assert (tmp_path / file).stat().st_size > 0
    written = json.loads((tmp_path / "config.json").read_text())
    assert written["model"]["name"] == name and written["train"]["patch_size"] == 12
    model, state = load_model(tmp_path)
    assert state["epoch"] == 2 and not model.training
    assert model(torch.rand(1, 1, 15, 13)).shape == (1, 1, 15, 13)


def test_each_epoch_draws_its_own_patches_and_validation_stays_fixed(folder):
    data = prepare_data(_config(folder), "image", torch.device("cpu"))
    first, val_clean, val_noisy = data.for_epoch(0).clone(), data.val_clean, data.val_noisy
    assert first.shape == (48, 1, 12, 12) and val_clean.shape == (16, 1, 12, 12)
    second = data.for_epoch(1)
    assert not torch.equal(first, second)
    assert torch.equal(data.for_epoch(0), first)       # an epoch's patches are a function of (seed, epoch)
    again = prepare_data(_config(folder), "image", torch.device("cpu"))
    assert torch.equal(again.val_noisy, val_noisy)     # the validation draw is fixed
    assert (val_noisy - val_clean).abs().max() > 0


def test_held_out_images_are_not_trained_on(tmp_path):
    """With val-split, the last images (by name) give the validation patches and no training patch."""
    images = [np.full((16, 16), 40 * (i + 1), np.uint8) for i in range(3)]
    data_dir = _write_folder(tmp_path / "flat", images)
    data = prepare_data(_config(data_dir, patch_size=8, val_split=0.34), "image", torch.device("cpu"))
    held_out = 120 / 255.0
    assert torch.allclose(data.val_clean, torch.full_like(data.val_clean, held_out))
    assert not torch.isclose(data.for_epoch(0), torch.tensor(held_out)).any()


def test_loss_falls_on_a_trivially_learnable_folder(tmp_path):
    """Flat grey images: the noise is all there is to remove, and a tiny dncnn learns to remove it."""
    data_dir = _write_folder(tmp_path / "grey", [np.full((24, 24), 128, np.uint8)] * 3)
    fit(ModelConfig(name="dncnn", **TINY), _config(data_dir, noise="awgn:50", epochs=4, lr=1e-2, val_split=0.0),
        tmp_path / "run", progress=False)
    rows = read_metrics(tmp_path / "run")
    noise_mse = (50 / 255) ** 2
    assert rows[-1]["val_loss"] < 0.5 * noise_mse          # better than the noisy input by over 3 dB
    assert rows[-1]["train_loss"] < rows[0]["train_loss"]


def test_resume_from_last_continues_to_the_same_weights(tmp_path, folder):
    straight, split = tmp_path / "straight", tmp_path / "split"
    model = ModelConfig(name="ffdnet", **TINY)
    fit(model, _config(folder, epochs=3, lr_schedule="cosine"), straight, progress=False)
    fit(model, _config(folder, epochs=1, lr_schedule="cosine"), split, progress=False)
    fit(model, _config(folder, epochs=3, lr_schedule="cosine"), split, progress=False, resume=True)
    a, b = _weights(straight), _weights(split)
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert [r["epoch"] for r in read_metrics(split)] == [1, 2, 3]
    assert read_metrics(straight)[-1]["val_loss"] == read_metrics(split)[-1]["val_loss"]
    lrs = [r["lr"] for r in read_metrics(straight)]
    assert lrs[0] == 3e-3 and lrs[-1] == pytest.approx(3e-5) and lrs[0] > lrs[1] > lrs[2]


def test_a_warm_restart_keeps_the_first_cosine_and_restarts_at_its_peak():
    from daelab.train._config import COSINE_FLOOR, epoch_lr
    first, both = TrainConfig(epochs=5, lr_schedule="cosine"), TrainConfig(
        epochs=8, lr_schedule="cosine", lr_restart_after=5, lr_restart_peak=0.25)
    assert [epoch_lr(both, e) for e in range(5)] == [epoch_lr(first, e) for e in range(5)]
    assert epoch_lr(both, 4) == pytest.approx(COSINE_FLOOR * 1e-3)
    assert epoch_lr(both, 5) == pytest.approx(0.25e-3) and epoch_lr(both, 7) == pytest.approx(COSINE_FLOOR * 1e-3)
    assert epoch_lr(both, 5) > epoch_lr(both, 6) > epoch_lr(both, 7)
    for bad, match in ((dict(lr_restart_after=8), "leaves no epochs"), (dict(lr_restart_peak=0.0), "peak"),
                       (dict(lr_schedule="constant"), "applies to the cosine")):
        with pytest.raises(ConfigError, match=match):
            TrainConfig(**{**dict(epochs=8, lr_schedule="cosine", lr_restart_after=5), **bad})


def test_a_finished_cosine_run_resumes_into_a_restart_as_if_trained_so(tmp_path, folder):
    """What configs/natural-gray.toml's run did: N epochs of cosine, then resumed with a warm restart."""
    straight, continued = tmp_path / "straight", tmp_path / "continued"
    model = ModelConfig(name="ffdnet", **TINY)
    fit(model, _config(folder, epochs=3, lr_schedule="cosine", lr_restart_after=2), straight, progress=False)
    fit(model, _config(folder, epochs=2, lr_schedule="cosine"), continued, progress=False)
    assert main(["train", "--resume", str(continued), "--epochs", "3", "--lr-restart-after", "2",
                 "--lr-restart-peak", "0.25", "--no-progress"]) == 0
    a, b = _weights(straight), _weights(continued)
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert [r["lr"] for r in read_metrics(continued)] == [r["lr"] for r in read_metrics(straight)]
    assert read_metrics(straight)[-1]["lr"] == pytest.approx(0.25 * 3e-3)
    assert load_checkpoint(continued / LAST)["train_config"]["lr_restart_after"] == 2


@pytest.mark.parametrize("flags, restart", [
    (["--epochs", "5"], 4),                                # 40 of 56 -> 4 of 5: a short try of the recipe
    (["--epochs", "112"], 80),                             # and a longer one keeps the shape too
    (["--epochs", "1"], 0),                                # no epoch for either cosine: dropped
    (["--epochs", "5", "--lr-restart-after", "2"], 2),     # the command line's own value is taken as given
    ([], 40),                                              # the file's epochs: the file's restart
])
def test_a_config_files_warm_restart_scales_with_epochs_given_on_the_command_line(flags, restart):
    from pathlib import Path

    from daelab.cli import _read_config, _scale_file_restart, build_parser
    from daelab.config import build_config
    recipe = Path(__file__).resolve().parents[1] / "configs" / "natural-gray.toml"
    argv = ["train", "--config", str(recipe), *flags]
    args = build_parser(argv).parse_args(argv)
    values = _read_config(recipe)
    _scale_file_restart(values, args)
    config = build_config(TrainConfig, values, args, "train")  # valid: no "leaves no epochs" refusal
    assert config.lr_restart_after == restart and config.epochs == int(flags[1] if flags else 56)


def test_the_mlp_refuses_patch_options_in_one_line(tiny_dataset, tmp_path, folder, capsys):
    with pytest.raises(ConfigError, match="applies to training on an image folder"):
        fit(ModelConfig(), TrainConfig(epochs=1, patch_size=8), tmp_path / "a", dataset=tiny_dataset, progress=False)
    with pytest.raises(ConfigError, match="flat MLP cannot train on"):
        fit(ModelConfig(), _config(folder), tmp_path / "b", progress=False)
    for argv in (["train", "--patches-per-epoch", "10", "--data-dir", str(tmp_path)],
                 ["train", "--data-dir", str(folder), "--run-dir", str(tmp_path / "c")]):
        assert main(argv) == 2
        err = capsys.readouterr().err
        assert err.startswith("daelab: error:") and "Traceback" not in err and len(err.strip().splitlines()) == 1


@pytest.mark.parametrize("name", ["dncnn", "ffdnet"])
def test_models_are_fully_convolutional_and_predict_the_noise(name):
    torch.manual_seed(0)
    model = build_model(ModelConfig(name=name, **TINY))
    noisy = torch.rand(2, 1, 13, 17) * 1.2 - 0.1      # unclipped, as awgn leaves it
    model.eval()
    assert torch.equal(model(noisy), noisy.clamp(0, 1))   # the last conv starts at zero: the identity
    torch.nn.init.normal_(model.body[-1].weight, 0.0, 0.1)
    model.train()
    predicted_noise = model.predict_noise(model.encode(noisy), (13, 17))
    assert predicted_noise.shape == noisy.shape and predicted_noise.abs().max() > 0
    torch.testing.assert_close(model(noisy), noisy - predicted_noise)
    model.eval()
    for shape in [(1, 1, 7, 9), (3, 1, 32, 21)]:
        out = model(torch.rand(shape))
        assert out.shape == shape and out.min() >= 0 and out.max() <= 1
    assert example_input(model).shape[1] == 1


@pytest.mark.parametrize("name", ["dncnn", "ffdnet"])
def test_tiled_denoising_equals_the_whole_image(name):
    """denoise_image tiles these models through tile_apply with a margin of their reach: exact, seamless."""
    torch.manual_seed(1)
    model = build_model(ModelConfig(name=name, **TINY)).eval()
    torch.nn.init.normal_(model.body[-1].weight, 0.0, 0.1)
    image = np.random.default_rng(0).random((75, 61)).astype(np.float32)
    with torch.inference_mode():
        whole = model(torch.from_numpy(image)[None, None])[0, 0].numpy()
    tiled = denoise_image(model, image, tile=24, overlap=4)
    assert tiled.shape == image.shape
    assert np.abs(tiled - whole).max() < 1e-5


def test_fashion_mlp_training_is_the_plain_loop(tmp_path, tiny_dataset):
    """The MLP's fit (tensor data, constant lr) is exactly the study's loop: same steps, same weights."""
    config = TrainConfig(epochs=1, batch_size=64, seed=3, kernels="torch", precision="fp32", threads=1)
    trained = fit(ModelConfig(), config, tmp_path, dataset=tiny_dataset, progress=False)["model"]
    device = torch.device("cpu")
    torch.manual_seed(MODEL_INIT.seed(config.seed))
    model = build_model(ModelConfig())
    data = prepare_data(config, model.input_layout, device, tiny_dataset)
    optimizer = make_optimizer(model, config)
    generator = TRAIN_NOISE.generator(config.seed, 0, device)
    policy = make_training_policy(model, optimizer, config, device)
    ctx = dist.init("cpu")
    order = dist.epoch_order(len(data.train), config.seed, 0, ctx, device)
    steps = -(-len(order) // config.batch_size)
    train_steps(policy, optimizer, data.train, order, parse_noise(config.noise), generator, config, device, 0, steps)
    reference, got = model.state_dict(), trained.state_dict()
    assert all(torch.equal(reference[k], got[k]) for k in reference)


def test_denoise_files_takes_the_protocols_unclipped_noise(tmp_path, folder):
    """``--add-noise awgn:S`` leaves values outside [0, 1]: the natural model gets them as they are."""
    run = tmp_path / "run"
    fit(ModelConfig(name="dncnn", **TINY), _config(folder, epochs=1), run, progress=False)
    model, _ = load_model(run)
    from daelab.denoise import denoise_files
    results = denoise_files(model, [folder / "img_00.png"], out_dir=tmp_path / "out", add_noise="awgn:50")
    assert results[0]["psnr_denoised"] is not None and (tmp_path / "out" / "img_00.denoised.png").exists()
    with pytest.raises(Exception, match="values must lie in"):
        denoise_image(model, np.full((8, 8), 1.5, np.float32))


def test_checkpoints_older_than_the_new_settings_still_load_and_resume(tmp_path, tiny_run, tiny_dataset):
    """A run written before depth/batch_norm and the patch settings existed: the defaults fill them in."""
    from daelab.checkpoint import save_checkpoint
    from daelab.config import from_jsonable, to_jsonable
    state = load_checkpoint(tiny_run / LAST)
    old_model = {k: v for k, v in state["model_config"].items() if k not in ("depth", "batch_norm")}
    new_train = ("patch_size", "patches_per_epoch", "val_dir", "lr_schedule")
    old_train = {k: v for k, v in state["train_config"].items() if k not in new_train}
    assert from_jsonable(ModelConfig, old_model) == ModelConfig()
    assert to_jsonable(from_jsonable(ModelConfig, to_jsonable(ModelConfig(name="ffdnet", depth=5)))) == \
        to_jsonable(ModelConfig(name="ffdnet", depth=5))
    run = tmp_path / "old"
    run.mkdir()
    save_checkpoint(run / LAST, {k: v for k, v in state.items() if k not in ("format", "version")}
                    | {"model_config": old_model, "train_config": old_train})
    model, _ = load_model(run, "last")
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), state["model"].values()))
    config = from_jsonable(TrainConfig, {**old_train, "epochs": state["epoch"] + 1})
    result = fit(from_jsonable(ModelConfig, old_model), config, run, resume=True, dataset=tiny_dataset,
                 progress=False)
    assert result["epochs_run"] == state["epoch"] + 1


def test_evaluate_images_cli_scores_a_trained_run_on_a_folder(tmp_path, folder, capsys):
    """``daelab evaluate RUN_DIR --images DIR``: the run's model beside the noisy input and a baseline,
    one row per (noise, method), the unclipped awgn draw given to the model as it is."""
    from daelab import cli
    run_dir = tmp_path / "run"
    fit(ModelConfig(name="dncnn", **TINY), _config(folder, epochs=1), run_dir, progress=False)
    out = tmp_path / "set"
    code = cli.main(["evaluate", str(run_dir), "--images", str(folder), "--noise", "awgn:25", "--baselines", "tv",
                     "--out", str(out), "--no-progress"])
    assert code == 0
    rows = json.loads((out / "evaluation.json").read_text())["image_results"]
    assert {(r["noise"], r["method"]) for r in rows} == {("awgn:25", m) for m in ("model", "noisy", "tv")}
    assert all(r["n_images"] == len(list(folder.glob("*.png"))) for r in rows)
    printed = capsys.readouterr().out
    assert "awgn:25" in printed and "tv" in printed and str(out / "evaluation.json") in printed
    with pytest.raises(ConfigError, match="one model"):
        cli._run_evaluate_images(cli.build_parser(["evaluate"]).parse_args(
            ["evaluate", str(run_dir), str(run_dir), "--images", str(folder)]))
