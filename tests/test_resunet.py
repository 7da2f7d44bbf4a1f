"""The residual U-Net for natural images (resunet): shapes, identity at init, its reach, exact tiles, training."""
import numpy as np
import pytest
import torch

from daelab.denoise import denoise_image
from daelab.models import ModelConfig, build_model, example_input
from daelab.runs import read_metrics
from daelab.train import TrainConfig, fit


def _model(seed=0, channels=4):
    torch.manual_seed(seed)
    model = build_model(ModelConfig(name="resunet", channels=channels))
    with torch.no_grad():  # the last conv starts at zero (the identity); make the model do something
        torch.nn.init.normal_(model.tail.weight, 0.0, 0.1)
    return model


def test_starts_as_the_identity_and_keeps_any_shape():
    model = build_model(ModelConfig(name="resunet", channels=4)).eval()
    noisy = torch.rand(2, 1, 13, 17) * 1.2 - 0.1  # unclipped, as awgn leaves it
    assert torch.equal(model(noisy), noisy.clamp(0, 1))
    model = _model().eval()
    for shape in [(1, 1, 5, 7), (3, 1, 32, 21), (1, 1, 40, 40)]:
        out = model(torch.rand(shape))
        assert out.shape == shape and out.min() >= 0 and out.max() <= 1
    assert example_input(model).shape[1] == 1
    assert model.encode(torch.rand(1, 1, 40, 36)).shape == (1, 16, 10, 9)


def test_training_mode_predicts_the_noise_unclipped():
    model = _model().train()
    noisy = torch.rand(2, 1, 16, 20) * 1.4 - 0.2
    codes, skips = model.encode_with_skips(noisy)
    out = model.decode(codes, skips)
    torch.testing.assert_close(model(noisy), out)
    assert out.min() < 0 or out.max() > 1          # not clipped while training
    assert not torch.equal(out, noisy)             # the stack changed something
    assert model.decode(codes).shape == (2, 1, 16, 20)  # code-only decode: a 0.5 grey base, zero skips


@pytest.mark.parametrize("phase", [0, 1, 2, 3])
def test_the_receptive_field_is_within_the_declared_reach(phase):
    """The gradient of one output pixel is zero beyond ``reach`` pixels from it, and reaches it."""
    model = build_model(ModelConfig(name="resunet", channels=4)).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.abs_().add_(0.01)  # all positive: no cancellation hides a dependency
    model.training = True  # the output unclipped (a clipped pixel has no gradient); BatchNorm stays in eval mode
    image = torch.rand(1, 1, 96, 96, requires_grad=True)
    centre = 44 + phase
    model(image)[0, 0, centre, centre].backward()
    rows, cols = (image.grad[0, 0] != 0).nonzero(as_tuple=True)
    extent = max((centre - rows).abs().max().item(), (centre - cols).abs().max().item())
    assert extent <= model.reach
    assert extent >= model.reach - 3   # the declared reach is not a loose bound


@pytest.mark.parametrize("ensemble", [1, 4, 8])
def test_tiled_denoising_equals_the_whole_image(ensemble):
    """denoise_image starts tiles on the 4-pixel grid with a margin of the reach: exact, seamless."""
    model = _model(1).eval()
    image = np.random.default_rng(0).random((91, 70)).astype(np.float32)
    whole = denoise_image(model, image, tile=4096, ensemble=ensemble)
    tiled = denoise_image(model, image, tile=40, overlap=0, ensemble=ensemble)  # tiles grow to fit the reach
    assert tiled.shape == image.shape
    assert np.abs(tiled - whole).max() < 2e-5
    with torch.inference_mode():
        direct = model(torch.from_numpy(image)[None, None])[0, 0].numpy()
    if ensemble == 1:
        assert np.abs(whole - direct).max() < 2e-5


def test_trains_on_an_image_folder(tmp_path):
    from PIL import Image
    folder = tmp_path / "train"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for i in range(4):
        y, x = np.mgrid[:24, :24]
        Image.fromarray(np.clip(60 + 4 * x + 2 * y + rng.integers(0, 9, (24, 24)), 0, 255).astype(np.uint8)).save(
            folder / f"img_{i}.png")
    config = TrainConfig(epochs=3, batch_size=8, lr=3e-3, noise="awgn:30", patch_size=16, patches_per_epoch=64,
                         val_split=0.25, val_subset=16, data_dir=str(folder), threads=1)
    fit(ModelConfig(name="resunet", channels=4), config, tmp_path / "run", progress=False)
    losses = [row["val_loss"] for row in read_metrics(tmp_path / "run")]
    assert len(losses) == 3 and losses[-1] < losses[0]
