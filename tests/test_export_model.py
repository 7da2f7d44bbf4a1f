"""Shipping a run as a pretrained model: the weight file, the manifest entry, reloading, refusals, the script."""
from __future__ import annotations

import hashlib
import importlib.util
import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from daelab.errors import ConfigError
from daelab.models import ModelConfig
from daelab.pretrained import MANIFEST, PRETRAINED_DIR, describe, list_models, load_pretrained
from daelab.pretrained._export import (
    ENTRY_KEYS,
    baselines_from_evaluation,
    ensemble_figures,
    export_model,
    measured_from_evaluation,
)
from daelab.runs import load_model
from daelab.train import TrainConfig, fit

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "ship_model.py"
TEXTS = dict(description="a tiny test model", training_command="pytest tests/test_export_model.py",
             data={"name": "synthetic", "licence": "CC0"}, measured={"psnr_db": {"awgn:25": 20.0}}, licence="MIT")


def _script():
    spec = importlib.util.spec_from_file_location("ship_model", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def ffdnet_run(tmp_path_factory):
    """A 3-layer, 8-channel ffdnet trained one epoch on six small synthetic PNGs."""
    folder = tmp_path_factory.mktemp("images")
    rng = np.random.default_rng(0)
    for i in range(6):
        y, x = np.mgrid[:20, :24]
        image = 60 + 100 * x / 24 + 20 * y / 20 + rng.normal(0, 5, (20, 24))
        Image.fromarray(np.clip(image, 0, 255).astype(np.uint8)).save(folder / f"img_{i}.png")
    run_dir = tmp_path_factory.mktemp("ffdnet_run")
    config = TrainConfig(epochs=1, batch_size=8, lr=3e-3, noise="awgn_range:0-55", patch_size=12,
                         patches_per_epoch=16, val_split=0.34, val_subset=8, data_dir=str(folder), threads=1)
    fit(ModelConfig(name="ffdnet", depth=3, channels=8), config, run_dir, progress=False)
    return run_dir


@pytest.fixture
def shipped(tmp_path):
    """A folder holding a copy of the real manifest (the package's files stay untouched)."""
    directory = tmp_path / "pretrained"
    directory.mkdir()
    shutil.copy(PRETRAINED_DIR / MANIFEST, directory / MANIFEST)
    return directory


def test_an_exported_ffdnet_loads_with_outputs_equal_to_the_runs(ffdnet_run, shipped):
    before = json.loads((shipped / MANIFEST).read_text())
    entry = export_model(ffdnet_run, "natural-gray", directory=shipped, **TEXTS)
    assert list(entry) == list(ENTRY_KEYS)
    run_model, state = load_model(ffdnet_run)
    model, info = load_pretrained("natural-gray", shipped)
    noisy = torch.rand(2, 1, 17, 13, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert torch.equal(model(noisy), run_model(noisy))
    assert info["model_config"] == state["model_config"] and info["model_config"]["name"] == "ffdnet"
    assert info["train_config"] == state["train_config"] and entry["epoch"] == state["epoch"] == 1
    counted = sum(t.numel() for k, t in run_model.state_dict().items() if not k.endswith("num_batches_tracked"))
    assert entry["parameters"]["total"] == counted
    assert entry["parameters"]["trainable"] == sum(p.numel() for p in run_model.parameters())
    data = (shipped / "natural-gray.safetensors").read_bytes()
    assert entry["sha256"] == hashlib.sha256(data).hexdigest() and entry["bytes"] == len(data)
    assert entry["file"] == "natural-gray.safetensors" and str(ffdnet_run) in entry["converted_from"]
    after = json.loads((shipped / MANIFEST).read_text())
    assert after["models"][0] == before["models"][0] and after["models"][0]["name"] == "fashion-mlp"
    assert [m["name"] for m in after["models"]] == ["fashion-mlp", "natural-gray"]
    assert {k: v for k, v in after.items() if k != "models"} == {k: v for k, v in before.items() if k != "models"}


def test_re_export_replaces_the_entry_in_place_with_the_same_bytes(ffdnet_run, shipped):
    first = export_model(ffdnet_run, "natural-gray", directory=shipped, **TEXTS)
    export_model(ffdnet_run, "other", directory=shipped, **TEXTS)
    second = export_model(ffdnet_run, "natural-gray", directory=shipped, **{**TEXTS, "description": "again"})
    models = list_models(shipped)
    assert [m["name"] for m in models] == ["fashion-mlp", "natural-gray", "other"]
    assert models[1]["description"] == "again" and second["sha256"] == first["sha256"]  # reproducible bytes
    assert not [p.name for p in shipped.iterdir() if p.name.startswith(".")]  # no temp file left behind


def test_an_mlp_run_counts_parameters_as_keras_does(tiny_run, shipped):
    entry = export_model(tiny_run, "tiny-mlp", directory=shipped, checkpoint="last", **TEXTS)
    # The study's MLP: the fashion-mlp entry's count, BatchNorm running statistics as non-trainable.
    assert entry["parameters"] == {"total": 1_438_676, "trainable": 1_434_580, "non_trainable": 4_096}
    assert entry["parameters"] == list_models(shipped)[0]["parameters"]
    model, _ = load_pretrained("tiny-mlp", shipped)
    run_model, _ = load_model(tiny_run, "last")
    codes = torch.rand(5, 784, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        assert torch.equal(model(codes), run_model(codes))


@pytest.mark.parametrize("name", ["Natural", "natural_gray", "a/b", "", "-x", "gray.v2"])
def test_a_bad_name_is_refused_before_anything_is_written(ffdnet_run, shipped, name):
    before = sorted(p.name for p in shipped.iterdir())
    with pytest.raises(ConfigError, match="invalid model name") as info:
        export_model(ffdnet_run, name, directory=shipped, **TEXTS)
    assert "\n" not in str(info.value) and sorted(p.name for p in shipped.iterdir()) == before


def test_a_run_dir_without_the_checkpoint_is_refused(tmp_path, ffdnet_run, shipped):
    (tmp_path / "empty").mkdir()
    with pytest.raises(ConfigError, match="no checkpoint"):
        export_model(tmp_path / "empty", "empty", directory=shipped, **TEXTS)
    with pytest.raises(ConfigError, match="not found"):
        export_model(tmp_path / "missing", "missing", directory=shipped, **TEXTS)
    partial = tmp_path / "partial"
    partial.mkdir()
    shutil.copy(ffdnet_run / "best.pt", partial / "best.pt")
    with pytest.raises(ConfigError, match="no checkpoint"):
        export_model(partial, "partial", directory=shipped, checkpoint="last", **TEXTS)
    assert [m["name"] for m in list_models(shipped)] == [m["name"] for m in list_models()]  # nothing written


EVALUATION = {
    "version": 1, "images_dir": "/data/set12", "images": ["a.png", "b.png"], "noise": ["awgn:15", "awgn:25"],
    "seed": 0,
    "image_results": [
        {"noise": noise, "method": method, "psnr": psnr, "ssim": ssim, "psnr_float": psnr + 0.01, "n_images": 2,
         "seconds_per_image": 0.5, "per_image": {}}
        for noise, rows in {"awgn:15": [("model", 31.234567, 0.88), ("noisy", 24.6, 0.5), ("bm3d", 31.9, 0.89),
                                        ("tv", 29.1, 0.8)],
                            "awgn:25": [("model", 28.5, 0.81), ("noisy", 20.17, 0.3), ("bm3d", 29.4, 0.84),
                                        ("tv", 27.0, 0.75)]}.items()
        for method, psnr, ssim in rows],
}


def test_measured_figures_from_an_image_folder_evaluation():
    measured = measured_from_evaluation(EVALUATION, cpu="test CPU", commit="abc1234")
    assert measured["psnr_db"] == {"awgn:15": 31.2346, "awgn:25": 28.5}
    assert measured["ssim"] == {"awgn:15": 0.88, "awgn:25": 0.81}
    assert measured["noisy_psnr_db"] == {"awgn:15": 24.6, "awgn:25": 20.17}
    assert measured["baselines_psnr_db"] == {"bm3d": {"awgn:15": 31.9, "awgn:25": 29.4},
                                             "tv": {"awgn:15": 29.1, "awgn:25": 27.0}}
    assert "2 images of /data/set12" in measured["psnr_on"] and "seed 0" in measured["psnr_on"]
    assert measured["cpu"] == "test CPU" and measured["commit"] == "abc1234" and "command" not in measured
    without_model = {**EVALUATION, "image_results": [r for r in EVALUATION["image_results"] if r["method"] != "model"]}
    with pytest.raises(ConfigError, match="method 'model'"):
        measured_from_evaluation(without_model)
    with pytest.raises(ConfigError, match="image_results"):
        measured_from_evaluation({"results": []})
    broken = {"image_results": [{**EVALUATION["image_results"][0], "psnr": float("nan")}]}
    with pytest.raises(ConfigError, match="finite"):
        measured_from_evaluation(broken)


def _ensembled(n: int, gain: float) -> dict:
    """EVALUATION as if made with --ensemble n: the model's rows ``gain`` dB higher."""
    rows = [{**r, "psnr": r["psnr"] + gain} if r["method"] == "model" else r for r in EVALUATION["image_results"]]
    return {**EVALUATION, "model": {"model": "natural-gray", "ensemble": n}, "image_results": rows}


def test_ensemble_figures_come_from_evaluations_made_with_an_ensemble():
    figures = ensemble_figures([_ensembled(8, 0.1), _ensembled(2, 0.05)])
    assert list(figures) == ["2", "8"]
    assert figures["2"] == {"awgn:15": 31.2846, "awgn:25": 28.55} and figures["8"]["awgn:25"] == 28.6
    for bad, match in (([EVALUATION], "ensemble None"), ([_ensembled(1, 0.0)], "ensemble 1"),
                       ([_ensembled(2, 0.0), _ensembled(2, 0.1)], "two evaluations")):
        with pytest.raises(ConfigError, match=match):
            ensemble_figures(bad)


def test_the_script_ships_a_run_from_an_evaluation_json(ffdnet_run, shipped, tmp_path, capsys):
    evaluation = tmp_path / "evaluation.json"
    evaluation.write_text(json.dumps(EVALUATION))
    ensembled = tmp_path / "ensemble-2.json"
    ensembled.write_text(json.dumps(_ensembled(2, 0.05)))
    data = tmp_path / "data.json"
    data.write_text(json.dumps({"name": "tiny PNGs", "licence": "CC0"}))
    code = _script().main([str(ffdnet_run), "--name", "natural-gray", "--description", "tiny ffdnet",
                           "--training-command", "pytest", "--data-json", str(data), "--measured-from-evaluation",
                           str(evaluation), "--psnr-on", "two test images", "--cpu", "test CPU",
                           "--measured-commit", "0ther00", "--ensemble-evaluation", str(ensembled),
                           "--directory", str(shipped)])
    out = capsys.readouterr().out
    entry = list_models(shipped)[1]
    assert code == 0 and entry["name"] == "natural-gray"
    assert f"natural-gray: sha256 {entry['sha256'][:12]}, {entry['bytes']:,} bytes" in out
    assert entry["measured"]["psnr_db"] == {"awgn:15": 31.2346, "awgn:25": 28.5}
    assert entry["measured"]["psnr_on"] == "two test images" and entry["measured"]["cpu"] == "test CPU"
    assert entry["measured"]["commit"] == "0ther00"  # where the evaluations ran, not this checkout's HEAD
    assert entry["licence"] == "MIT (the weights, as daelab); trained on tiny PNGs (CC0)"
    assert entry["data"] == {"name": "tiny PNGs", "licence": "CC0"} and entry["commit"] is None
    assert entry["measured"]["ensemble_psnr_db"] == {"2": {"awgn:15": 31.2846, "awgn:25": 28.55}}
    assert "with --ensemble 2 (2x the time; dB): awgn:15 31.28, awgn:25 28.55" in describe([entry])


def test_the_script_answers_errors_in_one_line_and_has_help(ffdnet_run, shipped, capsys):
    script = _script()
    args = [str(ffdnet_run), "--description", "d", "--training-command", "t", "--data-json", "{}",
            "--measured-json", '{"psnr_db": {}}', "--directory", str(shipped)]
    assert script.main(args + ["--name", "Bad_Name"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: invalid model name 'Bad_Name'") and err.count("\n") == 1
    assert script.main([*args[:6], "[1, 2]", *args[7:], "--name", "ok"]) == 2
    assert "is not a JSON object" in capsys.readouterr().err
    assert [m["name"] for m in list_models(shipped)] == [m["name"] for m in list_models()]  # nothing written
    with pytest.raises(SystemExit) as exit_info:
        script.main(["--help"])
    assert exit_info.value.code == 0
    help_text = capsys.readouterr().out
    assert "--measured-from-evaluation" in help_text and "RUN_DIR" in help_text and "examples:" in help_text
    examples = help_text.split("examples:")[1].splitlines()
    starts = [line for line in examples if line.startswith("  scripts/ship_model.py")]
    assert len(starts) >= 3 and all(line.endswith(" \\") for line in starts)  # each example continues
    run = subprocess.run([sys.executable, str(SCRIPT), "--help"], capture_output=True, text=True, timeout=60)
    assert run.returncode == 0 and "--measured-from-evaluation" in run.stdout and not run.stderr


def test_baselines_come_from_a_second_evaluation_of_the_same_noisy_images():
    model_only = {**EVALUATION, "image_results": [r for r in EVALUATION["image_results"]
                                                  if r["method"] in ("model", "noisy")]}
    bm3d_only = {**EVALUATION, "image_results": [{**r, "psnr": r["psnr"] + 0.5} if r["method"] == "bm3d" else r
                                                 for r in EVALUATION["image_results"]
                                                 if r["method"] in ("noisy", "bm3d")]}
    measured = measured_from_evaluation(model_only)
    assert "baselines_psnr_db" not in measured
    merged = baselines_from_evaluation(measured, bm3d_only)
    assert merged["baselines_psnr_db"] == {"bm3d": {"awgn:15": 32.4, "awgn:25": 29.9}}
    assert merged["psnr_db"] == measured["psnr_db"] and "baselines_psnr_db" not in measured  # a copy
    # a baseline the first evaluation had is replaced, the others kept
    both = baselines_from_evaluation(measured_from_evaluation(EVALUATION), bm3d_only)["baselines_psnr_db"]
    assert both == {"bm3d": {"awgn:15": 32.4, "awgn:25": 29.9}, "tv": {"awgn:15": 29.1, "awgn:25": 27.0}}
    # other noisy images (another seed): refused, naming the level and both figures
    other_seed = {**bm3d_only, "image_results": [{**r, "psnr": r["psnr"] + 0.01} if r["method"] == "noisy" else r
                                                 for r in bm3d_only["image_results"]]}
    with pytest.raises(ConfigError, match=r"other noisy images: noisy PSNR at awgn:15 \(24.6 against 24.61 dB\)"):
        baselines_from_evaluation(measured, other_seed)
    fewer = {**bm3d_only, "image_results": [r for r in bm3d_only["image_results"] if r["noise"] == "awgn:15"]}
    with pytest.raises(ConfigError, match="no noisy rows for awgn:25"):
        baselines_from_evaluation(measured, fewer)
    with pytest.raises(ConfigError, match="no baseline rows"):
        baselines_from_evaluation(measured, model_only)


def test_the_script_takes_baselines_from_an_earlier_evaluation(ffdnet_run, shipped, tmp_path, capsys):
    model_only = tmp_path / "model.json"
    model_only.write_text(json.dumps({**EVALUATION, "image_results": [
        r for r in EVALUATION["image_results"] if r["method"] != "bm3d"]}))
    bm3d = tmp_path / "bm3d.json"
    bm3d.write_text(json.dumps({**EVALUATION, "image_results": [
        r for r in EVALUATION["image_results"] if r["method"] in ("noisy", "bm3d")]}))
    args = [str(ffdnet_run), "--name", "natural-gray", "--description", "tiny ffdnet", "--training-command",
            "pytest", "--data-json", "{}", "--directory", str(shipped)]
    assert _script().main([*args, "--measured-from-evaluation", str(model_only),
                           "--baselines-evaluation", str(bm3d)]) == 0
    assert list_models(shipped)[1]["measured"]["baselines_psnr_db"] == {
        "tv": {"awgn:15": 29.1, "awgn:25": 27.0}, "bm3d": {"awgn:15": 31.9, "awgn:25": 29.4}}
    capsys.readouterr()
    with pytest.raises(SystemExit) as exit_info:  # it has no meaning beside --measured-json
        _script().main([*args, "--measured-json", '{"psnr_db": {}}', "--baselines-evaluation", str(bm3d)])
    assert exit_info.value.code == 2 and "go with --measured-from-evaluation" in capsys.readouterr().err
