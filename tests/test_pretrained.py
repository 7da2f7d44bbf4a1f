"""Shipped models: the manifest's checksums, loading, a quality check, tampering, and the CLI's MODEL names."""
from __future__ import annotations

import hashlib
import json
import shutil

import numpy as np
import pytest
import torch
from PIL import Image

from daelab.cli import main
from daelab.errors import CheckpointError, ConfigError, DataError
from daelab.models import summary_rows
from daelab.pretrained import PRETRAINED_DIR, list_models, load_pretrained, resolve_model

# The study's MLP: Keras' count (weights, biases and BatchNorm running statistics), as `daelab summary` prints.
STUDY_PARAMETERS = {"total": 1_438_676, "trainable": 1_434_580, "non_trainable": 4_096}
STUDY_SHAPES = {"encoder.0.weight": (512, 784), "encoder.1.running_mean": (512,), "decoder.0.weight": (256, 196)}


def entry(name="fashion-mlp"):
    return next(e for e in list_models() if e["name"] == name)


def test_manifest_sha256_and_size_match_every_shipped_file():
    models = list_models()
    assert "fashion-mlp" in [m["name"] for m in models]
    for model in models:
        data = (PRETRAINED_DIR / model["file"]).read_bytes()
        assert hashlib.sha256(data).hexdigest() == model["sha256"], model["name"]
        assert len(data) == model["bytes"] < 8 << 20
        for key in ("description", "model_config", "train_config", "training_command", "data", "measured", "licence"):
            assert model[key], (model["name"], key)


def test_fashion_mlp_has_the_studys_tensors_and_parameter_count():
    model, info = load_pretrained("fashion-mlp")
    assert not model.training and info["source"] == "shipped"
    state = model.state_dict()
    for name, shape in STUDY_SHAPES.items():
        assert tuple(state[name].shape) == shape
    assert all(t.dtype == torch.float32 for t in state.values() if t.is_floating_point())
    assert summary_rows(model)[1] == STUDY_PARAMETERS == info["parameters"]
    assert info["train_config"]["epochs"] == 100 and info["model_config"]["name"] == "mlp"


def test_fashion_mlp_reaches_its_measured_psnr_at_uniform_0_2():
    from daelab.data import load_dataset
    from daelab.noise import parse_noise
    try:
        dataset = load_dataset()
    except DataError:
        pytest.skip("Fashion-MNIST is not on this machine (set DAELAB_DATA to its folder)")
    model, info = load_pretrained("fashion-mlp")
    # 1,000 random test images: the mean PSNR of 200 moves by ~0.2 dB (per-image std ~3 dB), too near 0.3.
    index = np.random.default_rng(0).choice(len(dataset.test_images), 1000, replace=False)
    clean = torch.from_numpy(dataset.test_images[index].astype(np.float32) / 255.0).reshape(len(index), -1)
    noisy = parse_noise("uniform:0.2")(clean, torch.Generator().manual_seed(0))
    with torch.no_grad():
        output = model(noisy).clamp(0.0, 1.0)
    psnr = (10.0 * torch.log10(1.0 / ((output - clean) ** 2).mean(1).double())).mean().item()
    measured = info["measured"]["psnr_db"]["uniform:0.2"]
    assert measured == pytest.approx(22.89, abs=0.01)
    assert abs(psnr - measured) < 0.3, (psnr, measured)


def test_a_tampered_copy_is_refused_in_one_line(tmp_path):
    for name in ("manifest.json", entry()["file"]):
        shutil.copy(PRETRAINED_DIR / name, tmp_path / name)
    path = tmp_path / entry()["file"]
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01
    path.write_bytes(bytes(data))
    with pytest.raises(CheckpointError) as caught:
        load_pretrained("fashion-mlp", directory=tmp_path)
    message = str(caught.value)
    assert "sha256" in message and str(path) in message and "\n" not in message
    path.unlink()
    with pytest.raises(CheckpointError, match="missing"):
        load_pretrained("fashion-mlp", directory=tmp_path)


def test_an_unknown_name_lists_the_shipped_ones(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ConfigError, match="fashion-mlp"):
        resolve_model("no-such-model")
    image = tmp_path / "x.png"
    Image.fromarray(np.zeros((28, 28), np.uint8)).save(image)
    assert main(["denoise", "no-such-model", str(image)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("daelab: error:") and "fashion-mlp" in err and len(err.strip().splitlines()) == 1


def test_denoise_with_a_shipped_name(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    image = tmp_path / "x.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (28, 28), dtype=np.uint8)).save(image)
    assert main(["denoise", "fashion-mlp", str(image)]) == 0
    output = tmp_path / "x.denoised.png"
    assert output.is_file() and np.asarray(Image.open(output)).shape == (28, 28)
    assert "x.denoised.png" in capsys.readouterr().out


def test_a_run_directory_of_that_name_wins_over_the_shipped_model(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "fashion-mlp").mkdir()
    with pytest.raises(CheckpointError):  # the folder is taken as a run directory (without a checkpoint)
        resolve_model("fashion-mlp")


def test_models_lists_names_and_figures(capsys):
    assert main(["models"]) == 0
    out = capsys.readouterr().out
    info = entry()
    assert "fashion-mlp" in out and "1,438,676" in out and info["sha256"][:12] in out
    assert "22.89" in out and "0.006170" in out


def test_summary_and_evaluate_take_a_shipped_name(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert main(["summary", "fashion-mlp"]) == 0
    assert "Total params: 1,438,676" in capsys.readouterr().out
    assert main(["evaluate", "fashion-mlp"]) == 2  # the test-set evaluation writes into a run directory
    err = capsys.readouterr().err
    assert "shipped model" in err and "--images" in err and len(err.strip().splitlines()) == 1


def test_manifest_is_json_with_one_entry_per_file():
    manifest = json.loads((PRETRAINED_DIR / "manifest.json").read_text())
    files = sorted(p.name for p in PRETRAINED_DIR.glob("*.safetensors"))
    assert sorted(m["file"] for m in manifest["models"]) == files


def test_evaluate_images_takes_a_shipped_name(tmp_path, capsys):
    folder = tmp_path / "images"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for i in range(2):
        Image.fromarray(rng.integers(0, 256, (28, 28), dtype=np.uint8)).save(folder / f"{i}.png")
    out = tmp_path / "out"
    assert main(["evaluate", "fashion-mlp", "--images", str(folder), "--noise", "awgn:25", "--baselines", "none",
                 "--out", str(out), "--no-progress"]) == 0
    rows = json.loads((out / "evaluation.json").read_text())["image_results"]
    assert {row["method"] for row in rows} == {"model", "noisy"} and all(row["n_images"] == 2 for row in rows)
