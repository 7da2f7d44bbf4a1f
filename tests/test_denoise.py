"""`daelab denoise`: outputs for npy/npz/png inputs, inputs never overwritten, bad inputs write nothing."""
from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from daelab.cli import main
from daelab.models import ModelConfig
from daelab.train import TrainConfig, fit


@pytest.fixture(scope="module")
def conv_run(tmp_path_factory, tiny_dataset):
    run_dir = tmp_path_factory.mktemp("conv_run")
    fit(ModelConfig(name="conv", channels=8), TrainConfig(epochs=1, batch_size=64, seed=0), run_dir,
        dataset=tiny_dataset.subset(200, 50), progress=False)
    return run_dir


def files_in(directory):
    return sorted(p.name for p in directory.iterdir())


def test_mlp_writes_denoised_npy_stack_beside_input(tmp_path, tiny_run, tiny_dataset, capsys):
    source = tmp_path / "stack.npy"
    np.save(source, tiny_dataset.test_images[:5])  # (5, 28, 28) uint8
    before = source.read_bytes()
    assert main(["denoise", str(tiny_run), str(source), "--add-noise", "gaussian:0.2"]) == 0
    out = np.load(tmp_path / "stack.denoised.npy")
    assert out.shape == (5, 28, 28) and out.dtype == np.uint8
    assert (tmp_path / "stack.noisy.npy").is_file()
    assert source.read_bytes() == before
    assert "PSNR" in capsys.readouterr().out


def test_conv_denoises_png_of_any_size_into_out_dir(tmp_path, conv_run, capsys):
    rng = np.random.default_rng(0)
    source = tmp_path / "photo.png"
    Image.fromarray((rng.random((50, 70)) * 255).astype(np.uint8)).save(source)
    floats = tmp_path / "floats.npz"
    np.savez(floats, a=rng.random((40, 33)).astype(np.float32), b=rng.random((2, 9, 9)).astype(np.float32))
    out_dir = tmp_path / "out"
    assert main(["denoise", str(conv_run), str(source), str(floats), "--out", str(out_dir), "--tile", "32",
                 "--overlap", "8"]) == 0
    assert files_in(out_dir) == ["floats.denoised.npz", "photo.denoised.png"]
    with Image.open(out_dir / "photo.denoised.png") as picture:
        assert picture.size == (70, 50) and picture.mode == "L"
    with np.load(out_dir / "floats.denoised.npz") as archive:
        assert archive["a"].shape == (40, 33) and archive["a"].dtype == np.float32
        assert archive["b"].shape == (2, 9, 9)


def test_reference_reports_psnr(tmp_path, conv_run, capsys):
    rng = np.random.default_rng(0)
    clean = rng.random((30, 30)).astype(np.float32)
    np.save(tmp_path / "clean.npy", clean)
    np.save(tmp_path / "noisy.npy", np.clip(clean + 0.1 * rng.standard_normal(clean.shape), 0, 1).astype(np.float32))
    args = ["denoise", str(conv_run), str(tmp_path / "noisy.npy"), "--reference", str(tmp_path / "clean.npy")]
    assert main(args) == 0
    assert "dB (denoised)" in capsys.readouterr().out


def test_refuses_existing_output_unless_overwrite(tmp_path, tiny_run, tiny_dataset, capsys):
    source = tmp_path / "x.npy"
    np.save(source, tiny_dataset.test_images[0])
    target = tmp_path / "x.denoised.npy"
    target.write_bytes(b"keep me")
    assert main(["denoise", str(tiny_run), str(source)]) == 2
    assert "exists" in capsys.readouterr().err
    assert target.read_bytes() == b"keep me"
    assert main(["denoise", str(tiny_run), str(source), "--overwrite"]) == 0
    assert np.load(target).shape == (28, 28)


def test_never_writes_onto_an_input(tmp_path, tiny_run, tiny_dataset, capsys):
    first = tmp_path / "x.npy"
    second = tmp_path / "x.denoised.npy"  # an input that is also the output path of the first
    np.save(first, tiny_dataset.test_images[0])
    np.save(second, tiny_dataset.test_images[1])
    before = second.read_bytes()
    assert main(["denoise", str(tiny_run), str(first), str(second), "--overwrite"]) == 2
    assert "overwrite an input" in capsys.readouterr().err
    assert second.read_bytes() == before
    assert files_in(tmp_path) == ["x.denoised.npy", "x.npy"]


@pytest.mark.parametrize("case, message", [
    ("wrong_shape", "needs 28x28 images, got 30x30"),
    ("nan", "NaN"),
    ("not_an_image", "not a readable image"),
    ("missing", "not found"),
    ("out_of_range", "[0, 1]"),
    ("bad_type", "unsupported file type"),
])
def test_bad_inputs_give_one_line_errors_and_write_nothing(tmp_path, tiny_run, tiny_dataset, capsys, case, message):
    good = tmp_path / "good.npy"
    np.save(good, tiny_dataset.test_images[:2])
    bad = tmp_path / {"not_an_image": "bad.png", "bad_type": "bad.txt"}.get(case, "bad.npy")
    if case == "wrong_shape":
        np.save(bad, np.zeros((30, 30), np.uint8))
    elif case == "nan":
        np.save(bad, np.full((28, 28), np.nan, np.float32))
    elif case == "out_of_range":
        np.save(bad, np.full((28, 28), 3.0, np.float32))
    elif case in ("not_an_image", "bad_type"):
        bad.write_text("hello")
    before = files_in(tmp_path)
    assert main(["denoise", str(tiny_run), str(good), str(bad)]) == 2  # the good file comes first
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1
    assert files_in(tmp_path) == before
