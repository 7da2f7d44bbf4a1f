"""The report: the matched/beaten rule, rendering with missing inputs, and a real headless-Chromium check
that every embedded figure decodes and every section is there."""
from __future__ import annotations

import importlib.util
import json
import re
import shutil
import subprocess

import pytest

from daelab import study
from daelab.report import (
    BEATEN,
    MATCHED,
    NOT_MATCHED,
    UNDETERMINED,
    judge,
    judge_sentence,
    study_comparisons,
    write_report,
)

SECTIONS = ("model", "training", "denoising", "probe", "study", "run")
HAS_PROBE = importlib.util.find_spec("daelab.probe") is not None


def _ci(mean, lo, hi):
    return {"mean": mean, "lo": lo, "hi": hi, "n": 10}


# ------------------------------------------------------------------------------------- the rule
@pytest.mark.parametrize("study, ours, higher, expected", [
    (0.010, _ci(0.011, 0.009, 0.013), False, MATCHED),        # inside
    (0.009, _ci(0.011, 0.009, 0.013), False, MATCHED),        # on the edge counts as inside
    (0.020, _ci(0.011, 0.009, 0.013), False, BEATEN),         # our loss entirely lower
    (0.005, _ci(0.011, 0.009, 0.013), False, NOT_MATCHED),    # our loss entirely higher
    (0.8752, _ci(0.88, 0.878, 0.882), True, BEATEN),          # our accuracy entirely higher
    (0.8752, _ci(0.86, 0.858, 0.862), True, NOT_MATCHED),     # our accuracy entirely lower
    (0.8752, _ci(0.875, 0.870, 0.880), True, MATCHED),
    (0.8752, {"mean": 0.9, "lo": None, "hi": None, "n": 1}, True, UNDETERMINED),
    (0.8752, None, True, UNDETERMINED),
])
def test_judge_rule(study, ours, higher, expected):
    assert judge(study, ours, higher) == expected


def test_judge_sentence_says_verdict_and_direction():
    loss = _ci(0.011, 0.009, 0.013)
    assert "**beaten**" in judge_sentence("R_loss", 0.02, loss, False) and "below" in judge_sentence("R_loss", 0.02,
                                                                                                      loss, False)
    assert "above" in judge_sentence("R_loss", 0.005, loss, False)
    assert "**not matched**" in judge_sentence("R_loss", 0.005, loss, False)
    assert "**matched**" in judge_sentence("accuracy", 0.875, _ci(0.875, 0.87, 0.88), True)


def test_study_comparisons_use_the_study_means_and_our_levels():
    level = {"noise": "uniform:0.2", "full": {"methods": {"dae": {"mse": _ci(0.001, 0.0009, 0.0011)}}}}
    rows = study_comparisons({"levels": [level]}, None)
    by_what = {r["what"]: r for r in rows}
    row = by_what["mean R_loss at uniform P = 0.2"]
    assert row["study"] == pytest.approx(sum(study.R_LOSS[0.2]) / 10)
    assert row["verdict"] == BEATEN  # our 0.001 is far below the study's ~0.013
    assert by_what["mean R_loss at uniform P = 0.1"]["verdict"] == "not run"
    assert by_what["printed test accuracy on codes"]["verdict"] == "not run"


# ------------------------------------------------------------------------------- run directories
@pytest.fixture(scope="module")
def bare_run(tmp_path_factory, tiny_run):
    """A trained run with nothing evaluated or probed."""
    run_dir = tmp_path_factory.mktemp("bare") / "run"
    # the shared tiny run may already hold other tests' stage outputs: copy only what training wrote
    shutil.copytree(tiny_run, run_dir, ignore=shutil.ignore_patterns("evaluation.*", "probe.*", "reproduce.json",
                                                                        "report.*", "figures"))
    return run_dir


@pytest.fixture(scope="module")
def full_run(tmp_path_factory, tiny_run, tiny_dataset):
    """A trained run with a tiny evaluation and (where the module exists) a tiny probe."""
    from daelab.evaluate import EvalConfig, evaluate_run
    run_dir = tmp_path_factory.mktemp("full") / "run"
    shutil.copytree(tiny_run, run_dir)
    evaluate_run(run_dir, EvalConfig(noise="uniform:0.1,0.2,0.3", denoisers="gaussian_blur,tv", max_images=20,
                                     robustness="gaussian:0.1,0.2;uniform:0.2", robustness_max_images=40, examples=4),
                 dataset=tiny_dataset, progress=False)
    if HAS_PROBE:
        from daelab.probe import ProbeConfig, probe_run
        probe_run(run_dir, ProbeConfig(seeds=2, epochs=2, probes=("mlp", "linear")), dataset=tiny_dataset,
                  progress=False)
    return run_dir


def test_report_with_missing_inputs_says_not_run(bare_run):
    paths = write_report(bare_run)
    page = (bare_run / "report.html").read_text()
    assert paths["html"].endswith("report.html") and (bare_run / "report.md").is_file()
    for section in SECTIONS:
        assert f'id="{section}"' in page
    assert "Not run: evaluation.json is missing" in page
    assert "Not run: probe.json is missing" in page
    assert "No reproduce.json" in page
    config = json.loads((bare_run / "config.json").read_text())
    kernels = "daelab's fused C kernels" if config["kernels"] == "fused" else "PyTorch ops"
    assert f"Training step: {config['precision']} matrix products, {kernels}" in page.replace("&#x27;", "'")
    assert "Not run: evaluation.json is missing" in (bare_run / "report.md").read_text()


def test_report_is_self_contained_and_complete(full_run):
    write_report(full_run)
    page = (full_run / "report.html").read_text()
    images = re.findall(r'<img src="([^"]+)"', page)
    assert images and all(src.startswith("data:image/png;base64,") for src in images)
    assert not re.search(r'(src|href)="(https?:)?//', page)  # nothing fetched from a network
    assert "1,438,676" in page and "0.8752" in page and "matched" in page
    for section in SECTIONS:
        assert f'id="{section}"' in page
    # the markdown links the same figures relatively, and each exists
    markdown = (full_run / "report.md").read_text()
    links = re.findall(r"!\[[^\]]*\]\(([^)]+)\)", markdown)
    assert links and all((full_run / link).is_file() for link in links)
    if HAS_PROBE:
        assert "Not run: probe.json" not in page
    else:
        assert "Not run: probe.json is missing" in page


def test_report_cli(bare_run, capsys):
    from daelab.cli import main
    assert main(["report", str(bare_run)]) == 0
    assert "report.html" in capsys.readouterr().out
    assert main(["report", str(bare_run / "nope")]) == 2
    assert "not found" in capsys.readouterr().err


# --------------------------------------------------------------------------------- real browser
CHROMIUM = shutil.which("chromium")
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                  "--disable-component-update", "--disable-sync", "--no-first-run", "--hide-scrollbars",
                  "--virtual-time-budget=5000"]


@pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed (Debian: 'make browser' installs it)")
def test_report_in_headless_chromium(full_run, tmp_path):
    write_report(full_run)
    url = (full_run / "report.html").resolve().as_uri()
    profile = tmp_path / "profile"
    dom = subprocess.run([CHROMIUM, *CHROMIUM_FLAGS, f"--user-data-dir={profile}", "--dump-dom", url],
                         capture_output=True, text=True, timeout=120)
    assert dom.returncode == 0, dom.stderr[-2000:]
    loaded = re.search(r'data-images-loaded="(\d+)/(\d+)"', dom.stdout)
    assert loaded, "the page's load script did not run"
    n_loaded, n_images = map(int, loaded.groups())
    assert n_images > 0 and n_loaded == n_images, f"only {n_loaded} of {n_images} images decoded"
    for section in SECTIONS:
        assert f'id="{section}"' in dom.stdout
    shot = tmp_path / "report.png"
    subprocess.run([CHROMIUM, *CHROMIUM_FLAGS, f"--user-data-dir={profile}", f"--screenshot={shot}",
                    "--window-size=1280,4000", url], capture_output=True, timeout=120, check=True)
    data = shot.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 10_000


@pytest.mark.skipif(not HAS_PROBE, reason="daelab.probe is not installed")
def test_report_states_the_interval_its_verdict_rests_on(full_run):
    # The verdict follows the design interval (DAE seeds x classifier seeds x test images); the report must show
    # that interval beside it, never the narrower classifier-seeds interval, and say what it is over.
    probe = json.loads((full_run / "probe.json").read_text())
    headline = probe["headline"]
    assert "interval" in headline and "verdict_scoped" in headline
    write_report(full_run)
    markdown = (full_run / "report.md").read_text()
    design = headline["interval"]
    shown = f"[{design['lo']:+.4f}, {design['hi']:+.4f}]"
    verdict_line = next(line for line in markdown.splitlines() if line.startswith("**Verdict ("))
    assert shown in verdict_line and headline["verdict_scoped"] in verdict_line
    assert f"{headline['interval_over']['test_images']:,} test images" in verdict_line
    # and beside it what the same interval says of the size: against the margin, and of the study's claim (+0.02)
    assert f"Against a margin of ±{headline['margin']:g} (`--margin`): **{headline['size_verdict']}**." in verdict_line
    if (headline["a"], headline["b"]) == ("codes", "raw"):
        where = ("above" if 0.02 > design["hi"] else "below" if 0.02 < design["lo"] else "inside")
        assert f"The study's claimed difference, +0.02, lies {where} that interval." in verdict_line
    if headline.get("lo") is not None and (headline["lo"], headline["hi"]) != (design["lo"], design["hi"]):
        assert f"[{headline['lo']:+.4f}, {headline['hi']:+.4f}]" not in verdict_line
