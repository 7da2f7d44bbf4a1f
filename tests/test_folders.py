"""Image folders as data: 8/16-bit and JPEG loading, colour and error rules, and the vectorised patch sampler."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from daelab.errors import ConfigError, DataError
from daelab.folders import N_TRANSFORMS, PatchSampler, dihedral, load_image_folder


def write_gray(path, pixels):
    Image.fromarray(pixels).save(path)
    return pixels


@pytest.fixture
def mixed_folder(tmp_path):
    """Two 8-bit PNGs of different sizes, a 16-bit PNG, a JPEG, and a file to ignore."""
    rng = np.random.default_rng(0)
    a = write_gray(tmp_path / "a.png", rng.integers(0, 256, (20, 24), dtype=np.uint8))
    b = write_gray(tmp_path / "b.png", rng.integers(0, 256, (16, 16), dtype=np.uint8))
    deep = rng.integers(0, 65536, (12, 14), dtype=np.uint16)
    deep[0, :3] = [0, 65535, 128]                 # 128 / 257 = 0.498 -> 0 (nearest, never a tie)
    Image.fromarray(deep).save(tmp_path / "c.png")
    write_gray(tmp_path / "d.jpg", np.full((10, 10), 77, np.uint8))
    (tmp_path / "notes.txt").write_text("not an image")
    (tmp_path / ".hidden.png").write_bytes(b"junk")
    return tmp_path, a, b, deep


def test_loads_8_and_16_bit_png_and_jpeg_as_uint8(mixed_folder):
    path, a, b, deep = mixed_folder
    folder = load_image_folder(path)
    assert folder.names == ["a.png", "b.png", "c.png", "d.jpg"]
    assert all(image.dtype == np.uint8 for image in folder.images)
    np.testing.assert_array_equal(folder.images[0], a)
    np.testing.assert_array_equal(folder.images[1], b)
    assert folder.bit_depths == [8, 8, 16, 8]
    expected = np.floor(deep.astype(np.float64) / 257 + 0.5).astype(np.uint8)   # nearest 8-bit value
    np.testing.assert_array_equal(folder.images[2], expected)
    assert list(folder.images[2][0, :3]) == [0, 255, 0]
    assert abs(int(folder.images[3].mean()) - 77) <= 1          # JPEG of a flat grey stays grey
    assert folder.as_float(0).dtype == np.float32 and folder.as_float(0).max() <= 1


def test_colour_is_refused_or_converted_by_luma(tmp_path):
    rgb = np.zeros((8, 8, 3), np.uint8)
    rgb[..., 0], rgb[..., 1], rgb[..., 2] = 200, 100, 50
    Image.fromarray(rgb).save(tmp_path / "colour.png")
    with pytest.raises(ConfigError, match="colour.png is a colour image"):
        load_image_folder(tmp_path)
    folder = load_image_folder(tmp_path, colour="luma")
    assert folder.converted == ["colour.png"]
    assert int(folder.images[0][0, 0]) == round((299 * 200 + 587 * 100 + 114 * 50) / 1000)


@pytest.mark.parametrize("case", ["empty", "corrupt", "missing", "file"])
def test_errors_are_one_line_and_name_the_file(tmp_path, case):
    target = tmp_path / "set"
    target.mkdir()
    if case == "corrupt":
        write_gray(target / "good.png", np.zeros((8, 8), np.uint8))
        (target / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    elif case == "missing":
        target = tmp_path / "nowhere"
    elif case == "file":
        target = tmp_path / "x.png"
        write_gray(target, np.zeros((8, 8), np.uint8))
    with pytest.raises(DataError) as info:
        load_image_folder(target)
    message = str(info.value)
    assert "\n" not in message
    assert ("broken.png" if case == "corrupt" else str(target)) in message


def test_dihedral_transforms_are_the_eight_distinct_symmetries():
    square = np.arange(16, dtype=np.uint8).reshape(1, 4, 4)
    outputs = [dihedral(square, np.array([t]))[0] for t in range(N_TRANSFORMS)]
    expected = [np.rot90(square[0], k) for k in range(4)] + [np.rot90(square[0].T, k) for k in range(4)]
    as_bytes = {o.tobytes() for o in outputs}
    assert len(as_bytes) == 8 and as_bytes == {e.tobytes() for e in expected}
    np.testing.assert_array_equal(outputs[0], square[0])


def test_patches_shapes_range_and_exact_content(mixed_folder):
    path, *_ = mixed_folder
    folder = load_image_folder(path)
    sampler = PatchSampler(folder, patch_size=8, patches_per_epoch=5000, seed=3)
    patches = sampler.draw(0)
    assert patches.shape == (5000, 1, 8, 8) and patches.dtype == torch.float32
    assert float(patches.min()) >= 0 and float(patches.max()) <= 1
    draw = sampler.indices(0)
    # every patch is the transformed window of its own image at its own position
    for k in (0, 1, 2, 17, 999, 4999):
        i, y, x, t = draw.image[k], draw.top[k], draw.left[k], draw.transform[k]
        window = folder.images[i][y:y + 8, x:x + 8]
        np.testing.assert_array_equal(np.round(patches[k, 0].numpy() * 255).astype(np.uint8),
                                      dihedral(window[None], np.array([t]))[0])
    heights = np.array([s[0] for s in folder.shapes])
    widths = np.array([s[1] for s in folder.shapes])
    assert (draw.top <= heights[draw.image] - 8).all() and (draw.left <= widths[draw.image] - 8).all()
    # all images, all 8 transforms and the extreme positions occur; images weighted by their positions
    assert set(np.unique(draw.image)) == {0, 1, 2, 3}
    assert set(np.unique(draw.transform)) == set(range(8))
    counts = np.bincount(draw.image, minlength=4) / len(draw.image)
    positions = (heights - 7) * (widths - 7)
    np.testing.assert_allclose(counts, positions / positions.sum(), atol=0.03)
    assert draw.top.min() == 0 and (draw.top[draw.image == 0].max() == heights[0] - 8)


def test_patches_reproducible_per_seed_and_epoch_and_unaugmented_when_asked(mixed_folder):
    path, *_ = mixed_folder
    folder = load_image_folder(path)
    a = PatchSampler(folder, 8, 300, seed=1)
    assert torch.equal(a.draw(2), PatchSampler(folder, 8, 300, seed=1).draw(2))
    assert not torch.equal(a.draw(2), a.draw(3))
    assert not torch.equal(a.draw(2), PatchSampler(folder, 8, 300, seed=2).draw(2))
    plain = PatchSampler(folder, 8, 300, seed=1, augment=False)
    assert (plain.indices(0).transform == 0).all()


def test_many_patches_come_from_whole_array_operations(mixed_folder, monkeypatch):
    # no per-patch Python work: the gather of 100k patches calls dihedral once and indexes per image size
    path, *_ = mixed_folder
    folder = load_image_folder(path)
    sampler = PatchSampler(folder, 8, 100_000, seed=0)
    calls = []
    import daelab.folders as folders
    original = folders.dihedral
    monkeypatch.setattr(folders, "dihedral", lambda p, t: calls.append(len(p)) or original(p, t))
    patches = sampler.draw(0)
    assert calls == [100_000] and patches.shape == (100_000, 1, 8, 8)
    assert len(sampler._groups) == len(set(folder.shapes))


def test_sampler_refuses_bad_sizes(mixed_folder):
    path, *_ = mixed_folder
    folder = load_image_folder(path)
    with pytest.raises(ConfigError, match="larger than d.jpg"):
        PatchSampler(folder, 11, 10)
    with pytest.raises(ConfigError, match="patches_per_epoch"):
        PatchSampler(folder, 4, 0)
