"""The conv DAE: any-size shapes, training through daelab's loop, and tiled == untiled denoising."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from daelab.denoise import denoise_image
from daelab.models import ModelConfig, build_model, format_summary
from daelab.train import TrainConfig, fit


def conv(channels: int = 8):
    torch.manual_seed(0)
    return build_model(ModelConfig(name="conv", channels=channels)).eval()


@pytest.mark.parametrize("shape", [(28, 28), (50, 70), (1, 1), (13, 5), (33, 64)])
def test_output_shape_equals_input_shape_for_any_size(shape):
    model = conv()
    images = torch.rand(2, 1, *shape)
    with torch.no_grad():
        out = model(images)
    assert out.shape == images.shape
    assert 0 <= float(out.min()) and float(out.max()) <= 1


def test_fully_convolutional_and_starts_as_identity():
    model = conv()
    assert not any(isinstance(m, torch.nn.Linear) for m in model.modules())
    images = torch.rand(3, 1, 20, 24) * 0.9 + 0.05
    # the last conv is zero-initialised, so the untrained model returns its input
    torch.testing.assert_close(model(images), images, atol=1e-5, rtol=0)


def test_encode_decode_compose_to_forward():
    model = conv()
    images = torch.rand(2, 1, 30, 30)
    codes, skips = model.encode_with_skips(images)
    assert codes.shape == (2, model.code_dim, 8, 8)
    torch.testing.assert_close(model.decode(codes, skips), model(images))
    assert model.decode(model.encode(images)).shape == (2, 1, 32, 32)  # code-only decode: padded size


def test_summary_works():
    text = format_summary(conv(32))
    assert "Total params" in text and "Linear" not in text


def test_trains_through_daelab_fit(tmp_path, tiny_dataset):
    result = fit(ModelConfig(name="conv", channels=8), TrainConfig(epochs=2, batch_size=32, lr=3e-3, seed=0),
                 tmp_path, dataset=tiny_dataset.subset(300, 100), progress=False)
    history = result["history"]
    assert history[-1]["train_loss"] < history[0]["train_loss"]
    assert (tmp_path / "best.pt").is_file()


def test_denoises_a_non_28x28_image():
    model = conv()
    image = np.random.default_rng(0).random((50, 70), dtype=np.float32)
    assert denoise_image(model, image).shape == (50, 70)


def test_tiled_equals_untiled_within_tolerance(tiny_dataset):
    model = conv()
    with torch.no_grad():  # a non-trivial correction so tile seams would show
        model.tail[-1].weight.normal_(0, 0.05)
    rng = np.random.default_rng(1)
    image = np.clip(np.kron(rng.random((12, 15)), np.ones((16, 16))) + 0.05 * rng.standard_normal((192, 240)), 0, 1)
    image = image.astype(np.float32)
    whole = denoise_image(model, image, tile=1024)
    tiled = denoise_image(model, image, tile=64, overlap=24)
    assert tiled.shape == whole.shape
    assert np.abs(tiled - whole).mean() < 1e-3
    assert np.abs(tiled - whole).max() < 0.02


def test_noise_level_estimate_tracks_the_true_std(tiny_dataset):
    from daelab.data import to_tensor
    from daelab.models import estimate_noise_std
    clean = to_tensor(tiny_dataset.test_images[:100], "image")
    generator = torch.Generator().manual_seed(0)
    means = []
    for std in (0.0, 0.05, 0.1, 0.2):
        noisy = (clean + std * torch.randn(clean.shape, generator=generator)).clamp(0, 1)
        means.append(float(estimate_noise_std(noisy).mean()))
    assert means == sorted(means) and means[-1] - means[0] > 0.1
    assert estimate_noise_std(torch.rand(3, 1, 1, 5)).shape == (3, 1, 1, 1)
