"""The study, redone end to end into one run directory: train -> evaluate -> probe -> report.

:func:`reproduce` runs the four stages in order with the study's settings (or, with ``quick``, a
few-minute version of each) and keeps their state in ``RUN_DIR/reproduce.json``: for each finished
stage its wall seconds, when it finished and the settings it used. Running it again skips every
finished stage, and a training stage that was cut short resumes from ``last.pt``, so an interrupted
reproduction continues where it stopped. The file also records the software and hardware the
results came from, which the report prints.
"""
from __future__ import annotations

import datetime as _dt
import json
import logging
import os
import platform
import time
from dataclasses import replace
from pathlib import Path

from daelab.config import to_jsonable
from daelab.data import Dataset
from daelab.errors import UsageError
from daelab.runs import read_json, write_json

log = logging.getLogger(__name__)

STATE_FILE = "reproduce.json"
STAGES = ("train", "evaluate", "probe", "report")
DONE, SKIPPED = "done", "skipped"

# --quick: the same pipeline on less data and fewer epochs/seeds (a few minutes on 2 CPU cores).
QUICK_TRAIN = {"epochs": 3, "subset": 10_000}
QUICK_EVAL = {"max_images": 200, "robustness_max_images": 500}
QUICK_PROBE = {"seeds": 2, "epochs": 5, "subset": 9_000, "test_subset": 2_000}


def plan(quick: bool = False, data_dir: str | None = None) -> dict:
    """The settings of every stage: the study's, or the quick ones.

    Returns
    -------
    dict
        ``model`` (ModelConfig), ``train`` (TrainConfig), ``evaluate`` (EvalConfig) and ``probe``
        (a dict of ProbeConfig fields: the probe module is imported only when it runs).
    """
    from daelab.evaluate import EvalConfig
    from daelab.models import ModelConfig
    from daelab.train import TrainConfig
    train, evaluate, probe = TrainConfig(data_dir=data_dir), EvalConfig(data_dir=data_dir), {"data_dir": data_dir}
    if quick:
        train = replace(train, **QUICK_TRAIN)
        evaluate = replace(evaluate, **QUICK_EVAL)
        probe.update(QUICK_PROBE)
    return {"model": ModelConfig(), "train": train, "evaluate": evaluate, "probe": probe}


def environment() -> dict:
    """Versions of Python and the numerical packages, and the CPU/GPU the stages ran on."""
    import numpy
    import skimage
    import sklearn
    import torch

    from daelab import __version__
    cpu = platform.processor() or platform.machine()
    try:  # the model name as the kernel reports it (Linux); platform.processor() is often empty
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {
        "daelab": __version__, "python": platform.python_version(), "torch": torch.__version__,
        "numpy": numpy.__version__, "sklearn": sklearn.__version__, "skimage": skimage.__version__,
        "platform": platform.platform(), "cpu": cpu, "cpu_count": os.cpu_count(),
        "cpu_affinity": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        "torch_threads": torch.get_num_threads(),
        "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
    }


def _now() -> str:
    return _dt.datetime.now().astimezone().isoformat(timespec="seconds")


def load_state(run_dir: str | os.PathLike) -> dict | None:
    """``RUN_DIR/reproduce.json``, or ``None`` when there is none."""
    path = Path(run_dir) / STATE_FILE
    return read_json(path) if path.is_file() else None


# ------------------------------------------------------------------------------------ stages
# What a resumed train stage may take from this call rather than from the checkpoint it continues: the
# machine's settings, and more epochs (a run cut short has done fewer than planned).
RESUMABLE = {"epochs", "data_dir", "device", "threads"}


def _check_same_run(run_dir: Path, checkpoint: dict, settings: dict) -> None:
    """Refuse to continue a training run of other settings than the plan's (it would report them as the study's)."""
    def plain(values):  # tuples and lists alike, as the checkpoint holds them
        return json.loads(json.dumps(values, default=str))

    differ = []
    for section, key in (("model", "model_config"), ("train", "train_config")):
        planned, found = plain(to_jsonable(settings[section])), plain(checkpoint.get(key) or {})
        defaults = plain(to_jsonable(type(settings[section])()))  # for a setting newer than the checkpoint
        differ += [name for name, value in planned.items()
                   if name not in RESUMABLE and found.get(name, defaults[name]) != value]
    if checkpoint.get("epoch", 0) > settings["train"].epochs:
        differ.append(f"{checkpoint['epoch']} epochs done of {settings['train'].epochs} planned")
    if differ:
        raise UsageError(f"{run_dir} holds a training run of other settings than this reproduction "
                         f"({', '.join(differ)})",
                         f"use another --run-dir, or remove {run_dir} to start the reproduction over")


def _train(run_dir: Path, settings: dict, dataset: Dataset | None, progress: bool) -> dict:
    from daelab.checkpoint import LAST, load_checkpoint
    from daelab.train import fit
    resume = (run_dir / LAST).is_file()  # a run cut short: continue it (a finished one runs 0 epochs)
    if resume:
        _check_same_run(run_dir, load_checkpoint(run_dir / LAST), settings)
        log.info("train: resuming from %s", run_dir / LAST)
    # not 'daelab train --resume', which would leave the other stages undone
    result = fit(settings["model"], settings["train"], run_dir, resume=resume, dataset=dataset, progress=progress,
                 resume_hint="to resume, run the same 'daelab reproduce' (or 'make reproduce') again")
    return {"settings": {"model": to_jsonable(settings["model"]), "train": to_jsonable(settings["train"])},
            "resumed": resume, "epochs_run": result["epochs_run"], "best_val_loss": result["best_val_loss"],
            "final_val_loss": result["final_val_loss"]}


def _evaluate(run_dir: Path, settings: dict, dataset: Dataset | None, progress: bool) -> dict:
    from daelab.evaluate import evaluate_run
    evaluate_run(run_dir, settings["evaluate"], dataset=dataset, progress=progress)
    return {"settings": to_jsonable(settings["evaluate"]), "outputs": ["evaluation.json", "evaluation.md"]}


def _probe(run_dir: Path, settings: dict, dataset: Dataset | None, progress: bool) -> dict:
    try:
        from daelab.probe import ProbeConfig, probe_run
    except ImportError as exc:  # the probe module is missing from this installation
        return {"status": SKIPPED, "reason": f"daelab.probe is not available ({exc})"}
    config = ProbeConfig(**settings["probe"])
    probe_run(run_dir, config, dataset=dataset, progress=progress)
    return {"settings": to_jsonable(config), "outputs": ["probe.json", "probe.md"]}


def _report(run_dir: Path, settings: dict, dataset: Dataset | None, progress: bool) -> dict:
    from daelab.report import write_report
    paths = write_report(run_dir)
    return {"outputs": [Path(p).name for p in paths.values()]}


RUNNERS = {"train": _train, "evaluate": _evaluate, "probe": _probe, "report": _report}


def reproduce(run_dir: str | os.PathLike = "runs/study", quick: bool = False, data_dir: str | None = None,
              progress: bool = True, dataset: Dataset | None = None) -> dict:
    """Run every unfinished stage of the reproduction into ``run_dir``; return the stage state.

    Parameters
    ----------
    run_dir : str or path-like
        The run directory; created if needed. A directory holding a reproduction of the other
        mode (quick vs full), a run that reproduce did not start, or a training run of other
        settings than the plan's is refused rather than mixed.
    quick : bool
        The few-minute version (see ``QUICK_TRAIN``, ``QUICK_EVAL``, ``QUICK_PROBE``).
    data_dir : str or None
        Fashion-MNIST directory or .npz (default: the usual search).
    progress : bool
        Show progress bars.
    dataset : Dataset or None
        Images to use instead of loading them (tests pass a synthetic set).

    Returns
    -------
    dict
        The content of ``RUN_DIR/reproduce.json``: ``mode``, ``environment`` and ``stages``, a
        dict from stage name (``train``, ``evaluate``, ``probe``, ``report``) to ``{status,
        seconds, finished, settings, ...}``; ``status`` is ``done`` or ``skipped`` (with a
        ``reason``).
    """
    run_dir = Path(run_dir)
    mode = "quick" if quick else "full"
    state = load_state(run_dir)
    if state is not None and state.get("mode") != mode:
        raise UsageError(f"{run_dir} holds a {state.get('mode')} reproduction, not a {mode} one",
                         "use another --run-dir, or repeat the same command to finish it")
    if state is None:
        if (run_dir / "config.json").exists():
            raise UsageError(f"{run_dir} already holds a run that 'daelab reproduce' did not start",
                             "use another --run-dir")
        run_dir.mkdir(parents=True, exist_ok=True)
        state = {"version": 1, "mode": mode, "run_dir": str(run_dir), "started": _now(),
                 "data_dir": data_dir, "dataset": None if dataset is None else dataset.source, "stages": {}}
    state["environment"] = environment()  # the machine finishing the run (a resumed run may move)
    write_json(run_dir / STATE_FILE, state)
    settings = plan(quick, data_dir)
    ran = False
    for stage in STAGES:
        recorded = state["stages"].get(stage)
        # A finished stage is kept; a skipped probe is retried once the module exists; the report is
        # rewritten whenever a stage before it ran, since it shows their results.
        redo = recorded is None or (stage == "probe" and recorded["status"] == SKIPPED and _probe_available()) \
            or (stage == "report" and ran)
        if not redo:
            log.info("%s: already %s (%s), not redone", stage, recorded["status"], recorded.get("finished"))
            continue
        log.info("%s: starting (%s mode)", stage, mode)
        began = time.perf_counter()
        record = {"status": DONE, **RUNNERS[stage](run_dir, settings, dataset, progress)}
        record.update(seconds=time.perf_counter() - began, finished=_now())
        state["stages"][stage] = record
        write_json(run_dir / STATE_FILE, state)
        ran = True
        log.info("%s: %s in %.1f s", stage, record["status"], record["seconds"])
    if ran:
        # Once more, so the report's own stage and the finished run appear in it (cheap: it only reads).
        state["finished"] = _now()
        write_json(run_dir / STATE_FILE, state)
        _report(run_dir, settings, dataset, progress)
    return state


def _probe_available() -> bool:
    import importlib.util
    return importlib.util.find_spec("daelab.probe") is not None
