"""One trial of a sweep: a grid point's run directory ``OUT/trials/<key>/``, train -> evaluate -> probe -> report.

:func:`run_trial` runs the stages (training resumes from ``last.pt`` when a killed trial left one,
after checking it was started with the trial's settings), recording each in ``sweep_trial.json``
there so a retried trial skips what is done; :func:`trial_configs` gives the point's configs, and
:func:`objective_value` reads the spec's objective back from the finished run directory
(:func:`daelab.sweep._results.trial_metrics`): the value Optuna records.
"""
from __future__ import annotations

import datetime as _dt
import json
import logging
import os
import time
from dataclasses import replace
from pathlib import Path

from daelab.config import to_jsonable
from daelab.data import Dataset
from daelab.errors import TrainingError, UsageError
from daelab.runs import read_json, write_json
from daelab.sweep._spec import SweepSpec

log = logging.getLogger(__name__)

TRIAL_FILE = "sweep_trial.json"
STAGES = ("train", "evaluate", "probe", "report")
# Settings of where and how fast a stage runs, not of what it computes: a resumed trial may change them.
RUNTIME = {"threads", "workers", "device", "data_dir"}
# Train settings a resumed training run may take from the spec rather than from its checkpoint.
RESUMABLE = RUNTIME | {"epochs", "checkpoint_every"}


def _now() -> str:
    return _dt.datetime.now().astimezone().isoformat(timespec="seconds")


def trial_configs(spec: SweepSpec, point: dict, threads: int = 0) -> dict:
    """The point's configs, with ``threads`` (when given) for every stage."""
    configs = spec.configs(point)
    if threads:
        configs["train"] = replace(configs["train"], threads=threads)
        configs["probe"] = replace(configs["probe"], threads=threads, workers=min(threads, configs["probe"].workers
                                                                                  or threads))
        configs["evaluate"] = replace(configs["evaluate"], workers=threads)
    return configs


def _plain(config, drop=RUNTIME) -> dict:
    values = json.loads(json.dumps(to_jsonable(config), default=str))
    return {k: v for k, v in values.items() if k not in drop}


def _check_same_training(run_dir: Path, configs: dict) -> None:
    """Refuse to continue a training run of other settings than the trial's (the spec changed)."""
    from daelab.checkpoint import LAST, load_checkpoint
    checkpoint = load_checkpoint(run_dir / LAST)
    differ = []
    for section, key in (("model", "model_config"), ("train", "train_config")):
        planned = _plain(configs[section], RESUMABLE)
        found = json.loads(json.dumps(checkpoint.get(key) or {}, default=str))
        defaults = _plain(type(configs[section])(), RESUMABLE)
        differ += [name for name, value in planned.items() if found.get(name, defaults[name]) != value]
    if checkpoint.get("epoch", 0) > configs["train"].epochs:
        differ.append(f"{checkpoint['epoch']} epochs done of {configs['train'].epochs} planned")
    if differ:
        raise UsageError(f"{run_dir} holds a training run of other settings than this sweep's trial "
                         f"({', '.join(differ)})",
                         "the spec changed since: use another [sweep] out and name, or remove that trial directory")


def run_trial(spec: SweepSpec, point: dict, dataset: Dataset | None = None, progress: bool = True,
              threads: int = 0, label: str | None = None, out: str | os.PathLike | None = None) -> dict:
    """Run (or finish) one grid point's trial in ``OUT/trials/<key>``: train -> evaluate -> probe -> report.

    Each stage is skipped when ``sweep_trial.json`` records it done with the same settings (a
    retried trial resumes; training continues from ``last.pt``); a stage after one that ran again
    is redone.

    Parameters
    ----------
    spec : SweepSpec
        The sweep.
    point : dict
        The grid point (axis -> value).
    dataset : Dataset, optional
        Images instead of the configs' data (tests pass a synthetic set).
    progress : bool
        Show the stages' progress bars.
    threads : int
        CPU threads for each stage (0: the spec's settings).
    label : str, optional
        How the log lines name the trial (default: the point).
    out : str or os.PathLike, optional
        The sweep's directory (default: the spec's).

    Returns
    -------
    dict
        ``{"run_dir", "stages": {stage: {"status", "seconds", "finished", ...}}, "ran": [stages run now],
        "seconds": the seconds this call worked}``.
    """
    from daelab.checkpoint import LAST
    configs = trial_configs(spec, point, threads)
    run_dir = spec.run_dir(point, out)
    run_dir.mkdir(parents=True, exist_ok=True)
    label = label or spec.label(point)
    state_path = run_dir / TRIAL_FILE
    state = read_json(state_path) if state_path.is_file() else {}
    if not isinstance(state.get("stages"), dict):
        state = {"version": 1, "key": spec.key(point), "params": point, "started": _now(), "stages": {}}
    planned = {"train": {"model": _plain(configs["model"]), "train": _plain(configs["train"])},
               "evaluate": _plain(configs["evaluate"]), "probe": _plain(configs["probe"]), "report": {}}
    began_all = time.perf_counter()
    ran: list[str] = []
    for stage in STAGES:
        recorded = state["stages"].get(stage)
        if recorded is not None and recorded.get("settings") == planned[stage] and not ran:
            log.info("%s: %s already done (%s), not redone", label, stage, recorded.get("finished"))
            continue
        log.info("%s: %s: starting", label, stage)
        began = time.perf_counter()
        extra = {}
        if stage == "train":
            resume = (run_dir / LAST).is_file()
            if resume:
                _check_same_training(run_dir, configs)
                log.info("%s: train: resuming from %s", label, run_dir / LAST)
            extra = _train(run_dir, configs, dataset, progress, resume)
        elif stage == "evaluate":
            from daelab.evaluate import evaluate_run
            evaluate_run(run_dir, configs["evaluate"], dataset=dataset, progress=progress)
        elif stage == "probe":
            from daelab.probe import probe_run
            probe_run(run_dir, configs["probe"], dataset=dataset, progress=progress)
        else:
            from daelab.report import write_report
            write_report(run_dir)
        seconds = time.perf_counter() - began
        state["stages"][stage] = {"status": "done", "settings": planned[stage], "seconds": seconds,
                                  "finished": _now(), **extra}
        write_json(state_path, state)
        ran.append(stage)
        log.info("%s: %s: done in %.1f s", label, stage, seconds)
    return {"run_dir": str(run_dir), "stages": state["stages"], "ran": ran,
            "seconds": time.perf_counter() - began_all}


def _train(run_dir: Path, configs: dict, dataset: Dataset | None, progress: bool, resume: bool) -> dict:
    from daelab import train
    result = train.fit(configs["model"], configs["train"], run_dir, resume=resume, dataset=dataset,
                       progress=progress, resume_hint="to resume, run the same 'daelab sweep' again")
    return {"resumed": resume, "epochs_run": result["epochs_run"], "best_val_loss": result["best_val_loss"]}


def objective_value(spec: SweepSpec, run_dir: str | os.PathLike) -> float:
    """The spec's objective, read from a finished trial's run directory.

    Raises
    ------
    TrainingError
        The trial's files do not give it (a stage did not write its number).
    """
    from daelab.sweep._results import trial_metrics
    metrics = trial_metrics(run_dir)
    value = {"codes_minus_raw": lambda: (metrics.get("codes_minus_raw") or {}).get("mean"),
             "psnr": lambda: metrics.get("psnr_mean"), "val_loss": lambda: metrics.get("val_loss")}[spec.objective]()
    if value is None:
        raise TrainingError(f"trial {run_dir} gives no {spec.objective}", "see its report.html")
    return float(value)


__all__ = ["STAGES", "TRIAL_FILE", "objective_value", "run_trial", "trial_configs"]
