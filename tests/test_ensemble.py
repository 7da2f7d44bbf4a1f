"""Geometric self-ensembles (--ensemble 2, 4, 8): the mean over dihedral transforms, exact under tiling."""
import numpy as np
import pytest
import torch
from PIL import Image

from daelab.cli import main
from daelab.denoise import ENSEMBLE_TRANSFORMS, _dihedral, _undo_dihedral, denoise_image
from daelab.errors import UsageError
from daelab.models import ModelConfig, build_model


@pytest.fixture(scope="module")
def ffdnet():
    torch.manual_seed(0)
    model = build_model(ModelConfig(name="ffdnet", depth=3, channels=4))
    with torch.no_grad():  # the last convolution starts at zero (the identity); make the model do something
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return model.eval()


def test_each_transform_is_undone_and_the_eight_are_distinct():
    x = torch.arange(12.0).reshape(1, 1, 3, 4)
    outs = [_dihedral(x, k) for k in range(8)]
    assert len({tuple(o.flatten().tolist()) + tuple(o.shape) for o in outs}) == 8
    for k, out in enumerate(outs):
        assert torch.equal(_undo_dihedral(out, k), x)


def test_the_smaller_ensembles_are_subgroups():
    """2 and 4 transforms are closed under composition: the ensemble of a flipped or turned image is the
    flipped or turned ensemble."""
    x = torch.arange(12.0).reshape(1, 1, 3, 4)
    for n, members in ENSEMBLE_TRANSFORMS.items():
        assert len(members) == n and members[0] == 0
        images = {tuple(_dihedral(x, k).flatten().tolist()) + tuple(_dihedral(x, k).shape) for k in members}
        for a in members:
            for b in members:
                y = _dihedral(_dihedral(x, a), b)
                assert tuple(y.flatten().tolist()) + tuple(y.shape) in images


@pytest.mark.parametrize("n", [2, 4, 8])
def test_ensemble_is_the_mean_of_the_model_over_the_transforms(ffdnet, n):
    image = np.random.default_rng(0).random((20, 26), dtype=np.float32)
    got = denoise_image(ffdnet, image, ensemble=n)
    plain = denoise_image(ffdnet, image)
    batch = torch.from_numpy(image)[None, None]
    with torch.inference_mode():
        expected = sum(_undo_dihedral(ffdnet(_dihedral(batch, k)), k) for k in ENSEMBLE_TRANSFORMS[n]) / n
    np.testing.assert_allclose(got, expected[0, 0].numpy(), atol=1e-6)
    assert np.abs(got - plain).max() > 1e-4  # not the plain output
    if n == 2:  # the model and its mirror image
        with torch.inference_mode():
            mirror = ffdnet(batch.flip(-1)).flip(-1)
        np.testing.assert_allclose(got, ((ffdnet(batch) + mirror) / 2)[0, 0].detach().numpy(), atol=1e-6)


@pytest.mark.parametrize("n", [2, 4, 8])
def test_ensemble_tiles_exactly(ffdnet, n):
    image = np.random.default_rng(1).random((61, 47), dtype=np.float32)
    whole = denoise_image(ffdnet, image, ensemble=n)
    tiled = denoise_image(ffdnet, image, tile=24, overlap=0, ensemble=n)  # tiles grow to fit the reach
    np.testing.assert_allclose(tiled, whole, atol=2e-5)


def test_bad_ensembles_are_refused(ffdnet):
    with pytest.raises(UsageError, match="ensemble 3"):
        denoise_image(ffdnet, np.zeros((16, 16), np.float32), ensemble=3)
    mlp = build_model(ModelConfig()).eval()
    with pytest.raises(UsageError, match="image models"):
        denoise_image(mlp, np.zeros((28, 28), np.float32), ensemble=8)


def test_cli_ensemble_flag_writes_the_ensembled_output(tmp_path, ffdnet, monkeypatch):
    import daelab.pretrained as pretrained
    monkeypatch.setattr(pretrained, "resolve_model", lambda *args, **kwargs: (ffdnet, {}))
    image = (np.random.default_rng(2).random((18, 22)) * 255).astype(np.uint8)
    Image.fromarray(image).save(tmp_path / "a.png")
    assert main(["denoise", "anything", str(tmp_path / "a.png"), "--ensemble", "8", "--out", str(tmp_path / "o")]) == 0
    out = np.asarray(Image.open(tmp_path / "o" / "a.denoised.png"))
    expected = denoise_image(ffdnet, image.astype(np.float32) / 255, ensemble=8)
    assert np.abs(out.astype(np.float32) / 255 - expected).max() <= 0.5 / 255 + 1e-6
    with pytest.raises(SystemExit):
        main(["denoise", "anything", str(tmp_path / "a.png"), "--ensemble", "3"])
