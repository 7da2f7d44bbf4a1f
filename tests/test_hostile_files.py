"""Hostile files (issue 18): checkpoints, configs, stage JSON and full or read-only disks.

Every file a user can hand daelab, or find damaged in a run directory, ends in one line
``daelab: error: ...`` (or a refusal inside the report), never a traceback, a crash, a hang or a
lost run. Disk conditions are real: a small tmpfs mounted for the test (we run as root; where
mounting is not allowed those tests skip and say why).
"""
from __future__ import annotations

import base64
import os
import re
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch

from daelab.checkpoint import BEST, LAST, atomic_write, check_optimizer_state, load_checkpoint, save_checkpoint
from daelab.cli import main
from daelab.errors import CheckpointError, OutputError, UsageError


# ------------------------------------------------------------------------------------ fixtures
@pytest.fixture(scope="module")
def cli_run(tmp_path_factory, npz_data):
    """The study's MLP trained one epoch on 300 images through the CLI (its last.pt resumes)."""
    run = tmp_path_factory.mktemp("hostile") / "run"
    assert main(["train", "--data-dir", str(npz_data), "--run-dir", str(run), "--batch-size", "100",
                 "--epochs", "1", "--subset", "300", "--no-progress"]) == 0
    return run


@pytest.fixture
def run(cli_run, tmp_path):
    copy = tmp_path / "run"
    shutil.copytree(cli_run, copy)
    return copy


@pytest.fixture
def image(tmp_path):
    path = tmp_path / "shirt.npy"
    np.save(path, np.random.default_rng(0).integers(0, 256, (28, 28), dtype=np.uint8))
    return path


def _rewrite(path: Path, change) -> None:
    """Change a checkpoint as an attacker would: torch.load/torch.save, none of daelab's checks."""
    state = torch.load(path, weights_only=True)
    change(state)
    torch.save(state, path)


def _one_line_error(capsys, code: int, returned: int) -> str:
    err = capsys.readouterr().err
    assert returned == code, err
    assert err.startswith("daelab: error:") and "Traceback" not in err
    assert len(err.strip().splitlines()) == 1, err
    return err


def _daelab(*args, timeout=120) -> subprocess.CompletedProcess:
    """daelab in a child process: a crash (segfault) or a hang there cannot take the test run with it."""
    return subprocess.run([sys.executable, "-m", "daelab", *map(str, args)], capture_output=True, text=True,
                          timeout=timeout, env={**os.environ, "PYTHONPATH": str(Path(__file__).parents[1] / "src")})


# ------------------------------------------------------------------- 5. tensors are checked
def test_expanded_adam_state_is_refused_by_resume_instead_of_crashing(run):
    def expand(state):
        for entry in state["optimizer"]["state"].values():
            entry["exp_avg"] = torch.zeros(1).expand_as(entry["exp_avg"])  # stride 0: 4 bytes for millions
    _rewrite(run / LAST, expand)
    with pytest.raises(CheckpointError, match="not contiguous"):
        load_checkpoint(run / LAST)
    done = _daelab("train", "--resume", run, "--epochs", "2", "--no-progress")
    # before: a segfault in the fused Adam kernel, or (with its own checks) a traceback
    assert done.returncode == 1, (done.returncode, done.stderr[-2000:])
    assert done.stderr.startswith("daelab: error:") and len(done.stderr.strip().splitlines()) == 1
    assert "not contiguous" in done.stderr


def test_dense_layouts_load_and_overlapping_ones_do_not(tmp_path):
    path = tmp_path / "c.pt"
    conv = torch.randn(8, 5, 3, 3).to(memory_format=torch.channels_last)  # how a conv run saves its weights
    save_checkpoint(path, {"model": {"conv": conv, "t": torch.randn(4, 3).t()}})
    loaded = load_checkpoint(path)["model"]
    assert torch.equal(loaded["conv"], conv) and loaded["conv"].stride() == conv.stride()
    for bad in (torch.zeros(3, 1).expand(3, 4), torch.zeros(20)[::2], torch.zeros(6).as_strided((3, 3), (1, 1))):
        save_checkpoint(path, {"model": {"w": bad}})
        with pytest.raises(CheckpointError, match="not contiguous"):
            load_checkpoint(path)


def test_nan_weight_is_refused_and_denoise_writes_nothing(run, image, capsys):
    _rewrite(run / BEST, lambda state: state["model"]["encoder.0.weight"].view(-1)[7].fill_(float("nan")))
    err = _one_line_error(capsys, 1, main(["denoise", str(run), str(image)]))
    assert "NaN" in err
    assert not list(image.parent.glob("*.denoised.*"))


def test_adam_state_of_wrong_shape_is_one_line_on_resume(run, capsys):
    def shrink(state):
        state["optimizer"]["state"][0]["exp_avg_sq"] = torch.zeros(3)
    _rewrite(run / LAST, shrink)
    err = _one_line_error(capsys, 1, main(["train", "--resume", str(run), "--epochs", "2", "--no-progress"]))
    assert "exp_avg_sq" in err and "(3,)" in err


def test_check_optimizer_state_names_what_is_wrong(cli_run):
    from daelab.config import from_jsonable
    from daelab.models import ModelConfig, build_model
    state = torch.load(cli_run / LAST, weights_only=True)
    with torch.device("meta"):
        model = build_model(from_jsonable(ModelConfig, state["model_config"]))
    check_optimizer_state(state["optimizer"], model)  # the real one passes
    bad = {"state": dict(state["optimizer"]["state"]), "param_groups": state["optimizer"]["param_groups"]}
    bad["state"][1] = {**bad["state"][1], "exp_avg": bad["state"][1]["exp_avg"].double()}
    with pytest.raises(CheckpointError, match="float64"):
        check_optimizer_state(bad, model)
    bad["state"][1] = {**state["optimizer"]["state"][1], "step": torch.tensor(float("inf"))}
    with pytest.raises(CheckpointError, match="NaN or infinite"):
        check_optimizer_state(bad, model)
    with pytest.raises(CheckpointError, match="parameters"):
        check_optimizer_state({"state": {}, "param_groups": [{"params": [0, 1]}]}, model)


# ------------------------------------------------------------- 10. malformed checkpoints: one line
@pytest.mark.parametrize("change, words", [
    (lambda s: s.pop("model"), "holds no model"),
    (lambda s: s.update(model_config="mlp"), "model_config is a str"),
    (lambda s: s["model_config"].update(code_dim=32), "does not fit its model config"),  # another architecture
    (lambda s: s["model"].pop("encoder.0.bias"), "1 missing"),
    (lambda s: s["model_config"].update(hidden=[10 ** 9]), "does not fit"),  # never allocated: built on meta
    (lambda s: s.update(epoch="one"), "epoch is a str"),
])
def test_malformed_checkpoint_is_one_line(run, image, capsys, change, words):
    _rewrite(run / BEST, change)
    err = _one_line_error(capsys, 1, main(["denoise", str(run), str(image)]))
    assert words in err


def test_checkpoint_without_training_state_cannot_be_resumed(run, capsys):
    _rewrite(run / LAST, lambda s: s.pop("rng"))
    err = _one_line_error(capsys, 1, main(["train", "--resume", str(run), "--epochs", "2"]))
    assert "cannot be resumed" in err and "rng" in err


# ------------------------------------------------------------ 11. refused by size before reading
def test_compressed_checkpoint_is_refused_before_inflating(tmp_path):
    plain, packed = tmp_path / "plain.pt", tmp_path / "packed.pt"
    save_checkpoint(plain, {"model": {"w": torch.zeros(8_000_000)}})  # 32 MB of zeros
    with zipfile.ZipFile(plain) as source, zipfile.ZipFile(packed, "w") as target:
        for record in source.infolist():
            target.writestr(record, source.read(record), compress_type=zipfile.ZIP_DEFLATED)
    assert packed.stat().st_size < 200_000  # torch.load would inflate it to 32 MB
    with pytest.raises(CheckpointError, match="compressed"):
        load_checkpoint(packed)


def test_records_larger_than_the_file_and_oversized_files_are_refused(tmp_path, monkeypatch):
    import daelab.checkpoint as checkpoint
    path = tmp_path / "c.pt"
    save_checkpoint(path, {"model": {"w": torch.zeros(1000)}})
    monkeypatch.setattr(checkpoint, "MAX_CHECKPOINT_BYTES", 1000)
    with pytest.raises(CheckpointError, match="more than a daelab checkpoint may hold"):
        load_checkpoint(path)


# ------------------------------------------------------------------------- 12. file modes
def test_atomic_write_respects_the_umask(tmp_path):
    modes = {}
    for umask in (0o022, 0o002, 0o077):
        old = os.umask(umask)
        try:
            atomic_write(tmp_path / f"{umask:o}.json", lambda handle: handle.write(b"{}"))
        finally:
            os.umask(old)
        modes[umask] = (tmp_path / f"{umask:o}.json").stat().st_mode & 0o777
    assert modes == {0o022: 0o644, 0o002: 0o664, 0o077: 0o600}  # as open() would; mkstemp alone: 0o600


# ------------------------------------------------------------- 10. real full and read-only disks
@pytest.fixture
def tmpfs(tmp_path):
    """Mount a small tmpfs; yields ``mount(size, read_only=False)``, unmounted after the test."""
    mounted = []

    def mount(size: str) -> Path:
        point = tmp_path / f"mnt{len(mounted)}"
        point.mkdir()
        done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(point)],
                              capture_output=True, text=True)
        if done.returncode != 0:
            pytest.skip(f"cannot mount a tmpfs here ({(done.stderr.strip() or 'not root').splitlines()[0]})")
        mounted.append(point)
        return point

    if shutil.which("mount") is None:
        pytest.skip("no mount command: cannot make a real full or read-only disk")
    yield mount
    for point in reversed(mounted):
        subprocess.run(["umount", "-l", str(point)], capture_output=True)


def _read_only(point: Path) -> None:
    subprocess.run(["mount", "-o", "remount,ro", str(point)], check=True, capture_output=True)


def _fill(point: Path) -> None:
    """Fill the file system (leaving less than one small write)."""
    try:
        with open(point / "filler", "wb") as handle:
            while True:
                handle.write(b"\0" * 4096)
                handle.flush()
    except OSError:
        pass


def test_real_full_disk_is_a_one_line_checkpoint_error_and_keeps_the_last(tmpfs):
    disk = tmpfs("2m")
    save_checkpoint(disk / LAST, {"model": {"w": torch.ones(1000)}, "epoch": 1})
    _fill(disk)
    with pytest.raises(CheckpointError, match="the disk is full") as caught:
        save_checkpoint(disk / LAST, {"model": {"w": torch.zeros(200_000)}, "epoch": 2})
    assert "\n" not in str(caught.value) and "previous checkpoint is unchanged" in str(caught.value)
    kept = load_checkpoint(disk / LAST)
    assert kept["epoch"] == 1 and torch.equal(kept["model"]["w"], torch.ones(1000))
    assert not list(disk.glob(".*.tmp"))


def test_evaluate_on_a_read_only_run_dir_fails_before_computing(cli_run, tmpfs, monkeypatch):
    import daelab.evaluate._pipeline as pipeline
    from daelab.evaluate import EvalConfig, evaluate_run
    disk = tmpfs("64m")
    shutil.copytree(cli_run, disk / "run")
    _read_only(disk)
    monkeypatch.setattr(pipeline, "load_model", lambda *a, **k: pytest.fail("computing before checking"))
    with pytest.raises(UsageError, match="Read-only file system"):
        evaluate_run(disk / "run", EvalConfig(denoisers="none", robustness="none"), progress=False)


def test_train_resume_and_denoise_on_a_read_only_run_dir_are_one_line(cli_run, tmpfs, capsys):
    # a real read-only file system (root ignores directory permissions): one line, exit 2, the run untouched
    disk = tmpfs("64m")
    shutil.copytree(cli_run, disk / "run")
    before = (disk / "run" / LAST).read_bytes()
    _read_only(disk)
    err = _one_line_error(capsys, 2, main(["train", "--resume", str(disk / "run"), "--epochs", "2", "--no-progress"]))
    assert "Read-only file system" in err or "cannot write" in err
    picture = disk.parent / "noisy.npy"
    np.save(picture, np.zeros((2, 28, 28), dtype=np.float32))
    err = _one_line_error(capsys, 2, main(["denoise", str(disk / "run"), str(picture), "--out",
                                           str(disk / "run" / "out")]))
    assert "Read-only file system" in err or "cannot write" in err or "not writable" in err
    assert (disk / "run" / LAST).read_bytes() == before


def test_report_on_a_read_only_run_dir_is_one_line(cli_run, tmpfs, capsys):
    disk = tmpfs("64m")
    shutil.copytree(cli_run, disk / "run")
    _read_only(disk)
    err = _one_line_error(capsys, 2, main(["report", str(disk / "run")]))
    assert "Read-only file system" in err


def test_evaluate_figures_in_the_way_is_one_line(run, capsys):
    (run / "figures").write_text("not a directory")
    err = _one_line_error(capsys, 2, main(["evaluate", str(run), "--denoisers", "none", "--robustness", "none"]))
    assert "not a directory" in err


def test_evaluate_disk_full_at_the_end_is_one_line(run, tiny_dataset, monkeypatch):
    import daelab.evaluate._pipeline as pipeline
    from daelab.evaluate import EvalConfig, evaluate_run

    def full(*args, **kwargs):
        raise OSError(28, "No space left on device")
    monkeypatch.setattr(pipeline, "write_json", full)
    with pytest.raises(OutputError, match="the disk is full"):
        evaluate_run(run, EvalConfig(denoisers="none", robustness="none", dae_max_images=50, examples=2),
                     dataset=tiny_dataset, progress=False)


# ------------------------------------------------------------------ 7 and 10. the report's inputs
def _png(path: Path, payload: bytes) -> bytes:
    data = b"\x89PNG\r\n\x1a\n" + payload
    path.write_bytes(data)
    return data


def test_report_embeds_only_figures_inside_the_run_dir(run, tmp_path, caplog):
    import json
    secret = _png(tmp_path / "secret.png", b"top secret " * 20)  # a PNG: old code embedded any file
    (run / "figures").mkdir(exist_ok=True)
    os.symlink(tmp_path / "secret.png", run / "figures" / "link.png")
    inside = _png(run / "figures" / "ok.png", b"fine")
    evaluation = {"n_images": {"dae": 1, "baselines": 0}, "checkpoint": {"file": "best.pt", "epoch": 1},
                  "seed": 0, "levels": [], "headline": {},
                  "figures": {"psnr_gain": str(tmp_path / "secret.png"), "robustness": "../secret.png",
                              "examples_extended": {"a": "figures/link.png", "b": "figures/ok.png"}},
                  "robustness": {"n": 1}}
    (run / "evaluation.json").write_text(json.dumps(evaluation))
    assert main(["report", str(run)]) == 0
    page = (run / "report.html").read_text()
    assert base64.b64encode(secret).decode() not in page and "outside the run directory" in page
    assert base64.b64encode(inside).decode() in page
    markdown = (run / "report.md").read_text()
    assert "secret.png)" not in markdown and "link.png)" not in markdown and "(figures/ok.png)" in markdown
    assert any("outside the run directory" in r.getMessage() for r in caplog.records)


@pytest.mark.parametrize("name, text, words", [
    ("evaluation.json", '{"levels": [', "evaluation.json is not valid JSON"),
    ("probe.json", "[1, 2]", "probe.json holds a JSON list"),
    ("evaluation.json", '{"levels": 5, "n_images": {"dae": 1, "baselines": 0}}', "evaluation.json does not hold"),
    ("probe.json", '{"results": [{"feature": 3}]}', "probe.json does not hold"),
    ("reproduce.json", '{"stages": "all"}', "reproduce.json does not hold"),
    ("config.json", '{"model": {"name": "mlp", "code_dim": "big"}}', "config.json does not hold"),
    ("metrics.jsonl", '{"epoch": 1, "train_loss": 0.1, "val_loss": 0.1}\n{"epoch": 2, "tr', "line 2"),
    ("metrics.jsonl", '{"epoch": 1, "val_loss": "low"}\n', "metrics.jsonl does not hold"),
])
def test_damaged_stage_files_are_one_line_report_errors(run, capsys, name, text, words):
    (run / name).write_text(text)
    err = _one_line_error(capsys, 2, main(["report", str(run)]))
    assert words in err


def test_markdown_report_escapes_html_from_the_json(run):
    import json
    hostile = '<img src=x onerror="alert(1)">'
    (run / "reproduce.json").write_text(json.dumps({"mode": "full", "stages": {
        hostile: {"status": hostile, "seconds": 1.0}}, "environment": {"cpu": hostile + "`<b>`"}}))
    assert main(["report", str(run)]) == 0
    markdown = (run / "report.md").read_text()
    html_page = (run / "report.html").read_text()
    # raw HTML only inside code spans, which Markdown shows as text (the fence outgrows any backticks)
    outside_code = re.sub(r"(`+)(.+?)\1", "", markdown)
    assert "<img" not in outside_code and "&lt;img" in outside_code and "<b>" not in outside_code
    assert "<img src=x" not in html_page


def test_figures_past_the_page_budget_are_refused(run, monkeypatch):
    import json

    import daelab.report._render as render
    first, second = (_png(run / f"{name}.png", name.encode() * 1000) for name in ("a", "b"))
    (run / "evaluation.json").write_text(json.dumps({
        "n_images": {"dae": 1, "baselines": 0}, "checkpoint": {"file": "best.pt", "epoch": 1}, "seed": 0,
        "levels": [], "headline": {}, "robustness": {"n": 1},
        "figures": {"examples_extended": {"a": "a.png", "b": "b.png"}}}))
    monkeypatch.setattr(render, "MAX_EMBEDDED_BYTES", 1500)
    assert main(["report", str(run)]) == 0
    page = (run / "report.html").read_text()
    assert base64.b64encode(first).decode() in page and base64.b64encode(second).decode() not in page
    assert "beyond the" in page


def test_an_os_error_nobody_expected_is_one_line(monkeypatch, capsys):
    import daelab.cli as cli

    def full(args):
        raise OSError(28, "No space left on device", "/somewhere/file")
    monkeypatch.setattr(cli, "_run_report", full)
    err = _one_line_error(capsys, 1, main(["report", "x"]))
    assert "No space left on device (/somewhere/file)" in err
    with pytest.raises(OSError):
        main(["--debug", "report", "x"])
