"""The study, redone end to end into one run directory: train -> evaluate -> probe -> report.

:func:`reproduce` runs the four stages in order with the study's settings (or, with ``quick``, a
few-minute version of each) and keeps their state in ``RUN_DIR/reproduce.json``: for each finished
stage its wall seconds, when it finished and the settings it used. Running it again skips every
finished stage, and a training stage that was cut short resumes from ``last.pt``, so an interrupted
reproduction continues where it stopped. The file also records the software and hardware the
results came from, which the report prints.

The design trains several DAEs that differ only in their seed (:data:`DAE_SEEDS`: 3 for the full
study, 1 for ``quick``), so that the probe's verdict -- and the denoising intervals -- cover the
DAE's own training seed, not only the classifier's seeds and the test images. ``RUN_DIR`` is the
first DAE's run directory, as a one-DAE reproduction has always written it; the others are
ordinary ``daelab train`` run directories in ``RUN_DIR/daes/seed-<s>/`` (:func:`dae_run_dirs`).
A reproduction grows: asking for more DAE seeds later trains only the missing ones and redoes
evaluate, probe and report; fewer, or another first seed, is refused.
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
from daelab.errors import ConfigError, UsageError
from daelab.runs import read_json, write_json

log = logging.getLogger(__name__)

STATE_FILE = "reproduce.json"
STAGES = ("train", "evaluate", "probe", "report")
DONE, SKIPPED, PARTIAL = "done", "skipped", "partial"
# How many DAEs (DAE seeds) a reproduction trains unless told: the full study's verdict must not
# flip between runs that differ only in the DAE's seed, which one DAE cannot show; training then
# runs 3 times. --quick keeps one (and its report says so).
DAE_SEEDS = {"full": 3, "quick": 1}
DAES_DIR = "daes"  # RUN_DIR/daes/seed-<s>/: the run directories of every DAE but the first

# --quick: the same pipeline on less data and fewer epochs/seeds (a few minutes on 2 CPU cores).
QUICK_TRAIN = {"epochs": 3, "subset": 10_000}
QUICK_EVAL = {"max_images": 200, "robustness_max_images": 500}
QUICK_PROBE = {"seeds": 2, "epochs": 5, "subset": 9_000, "test_subset": 2_000}


def plan(quick: bool = False, data_dir: str | None = None, seed: int = 0) -> dict:
    """The settings of every stage: the study's, or the quick ones.

    Parameters
    ----------
    quick : bool
        The quick settings instead of the study's.
    data_dir : str or None
        Fashion-MNIST directory or .npz.
    seed : int
        The first DAE's training seed (``TrainConfig.seed``; the others' are ``seed + 1, ...``).

    Returns
    -------
    dict
        ``model`` (ModelConfig), ``train`` (TrainConfig of the first DAE), ``evaluate`` (EvalConfig)
        and ``probe`` (a dict of ProbeConfig fields: the probe module is imported only when it runs).
    """
    from daelab.evaluate import EvalConfig
    from daelab.models import ModelConfig
    from daelab.train import TrainConfig
    train = TrainConfig(data_dir=data_dir, seed=seed)
    evaluate, probe = EvalConfig(data_dir=data_dir), {"data_dir": data_dir}
    if quick:
        train = replace(train, **QUICK_TRAIN)
        evaluate = replace(evaluate, **QUICK_EVAL)
        probe.update(QUICK_PROBE)
    return {"model": ModelConfig(), "train": train, "evaluate": evaluate, "probe": probe}


def dae_run_dirs(run_dir: str | os.PathLike, dae_seeds: list[int]) -> list[Path]:
    """The run directory of each DAE seed: ``run_dir`` itself for the first, ``run_dir/daes/seed-<s>`` for the rest."""
    run_dir = Path(run_dir)
    return [run_dir if k == 0 else run_dir / DAES_DIR / f"seed-{s}" for k, s in enumerate(dae_seeds)]


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


# ------------------------------------------------------------------------------- DAE seeds
def _recorded_seeds(state: dict | None) -> list[int] | None:
    """The DAE seeds a reproduction was started with (one written before DAE seeds existed: its one training seed)."""
    if not state:
        return None
    if state.get("dae_seeds"):
        return [int(s) for s in state["dae_seeds"]]
    train = state.get("stages", {}).get("train")
    if train:
        return [int(train.get("settings", {}).get("train", {}).get("seed", 0))]
    return None


def dae_seed_plan(state: dict | None, quick: bool, dae_seeds: int | None = None, seed: int = 0,
                  run_dir: str | os.PathLike = "RUN_DIR") -> list[int]:
    """The DAE seeds of this reproduction: ``seed, seed + 1, ..., seed + N - 1``.

    Parameters
    ----------
    state : dict or None
        The run directory's ``reproduce.json`` (None for a new reproduction).
    quick : bool
        The mode, whose default N is :data:`DAE_SEEDS`.
    dae_seeds : int or None
        N; None: the mode's default, or as many as the reproduction in ``state`` already has if
        that is more.
    seed : int
        The first DAE's seed.
    run_dir : str or path-like
        For the messages.

    Raises
    ------
    ConfigError
        N < 1.
    UsageError
        ``state`` holds a reproduction with another first seed, or with more DAE seeds than N (a
        reproduction grows; it is not cut down).
    """
    if dae_seeds is not None and dae_seeds < 1:
        raise ConfigError(f"--dae-seeds must be >= 1, got {dae_seeds}", "give the number of DAEs to train")
    default = DAE_SEEDS["quick" if quick else "full"]
    recorded = _recorded_seeds(state)
    if recorded is None:
        return list(range(seed, seed + (dae_seeds or default)))
    if recorded[0] != seed:
        raise UsageError(f"{run_dir} holds a reproduction whose first DAE has seed {recorded[0]}, not {seed}",
                         f"give --seed {recorded[0]} to continue or grow it, or use another --run-dir")
    count = dae_seeds if dae_seeds is not None else max(default, len(recorded))
    if count < len(recorded):
        raise UsageError(f"{run_dir} holds a reproduction over {len(recorded)} DAE seeds ({_seed_list(recorded)}), "
                         f"more than the {count} asked for",
                         f"give --dae-seeds {len(recorded)} or more (more trains only the missing DAEs), or use "
                         "another --run-dir")
    return list(range(seed, seed + count))


def _seed_list(seeds: list[int]) -> str:
    return ", ".join(map(str, seeds))


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
    """Train every DAE seed of the plan that is not trained yet, each resuming its own ``last.pt``.

    Each DAE's record goes into ``reproduce.json`` as soon as it is trained (and a DAE cut short
    records its seconds so far), so a reproduction stopped between two DAEs trains only the rest.
    """
    seeds = settings["dae_seeds"]
    earlier = {int(d["seed"]): d for d in _train_record(load_state(run_dir) or {}, run_dir).get("daes", [])}
    daes: list[dict] = []
    for seed, dae_dir in zip(seeds, dae_run_dirs(run_dir, seeds)):
        before = earlier.get(seed)
        if before and before.get("status") == DONE:
            log.info("train: DAE seed %d already trained (%s)", seed, before["run_dir"])
            daes.append(before)
            continue
        log.info("train: DAE seed %d of %s into %s", seed, _seed_list(seeds), dae_dir)
        daes.append(_train_dae(run_dir, dae_dir, {**settings, "train": replace(settings["train"], seed=seed)},
                               dataset, progress, before, daes))
    first = daes[0]
    return {"settings": {"model": to_jsonable(settings["model"]), "train": to_jsonable(settings["train"])},
            "dae_seeds": seeds, "daes": daes, "resumed": first["resumed"], "epochs_run": first["epochs_run"],
            "best_val_loss": first["best_val_loss"], "final_val_loss": first["final_val_loss"],
            "seconds": sum(d["seconds"] for d in daes)}


def _train_dae(run_dir: Path, dae_dir: Path, settings: dict, dataset: Dataset | None, progress: bool,
               before: dict | None, trained: list[dict]) -> dict:
    """Train (or continue) one DAE into ``dae_dir``; its record, kept in ``reproduce.json`` even when cut short."""
    from daelab.checkpoint import LAST, load_checkpoint
    from daelab.train import fit
    seed = settings["train"].seed
    record = {"seed": seed, "run_dir": str(dae_dir), "status": PARTIAL,
              "seconds": float((before or {}).get("seconds") or 0.0)}
    resume = (dae_dir / LAST).is_file()  # a run cut short: continue it (a finished one runs 0 epochs)
    if resume:
        _check_same_run(dae_dir, load_checkpoint(dae_dir / LAST), settings)
        log.info("train: resuming from %s", dae_dir / LAST)
    began = time.perf_counter()
    try:
        # not 'daelab train --resume', which would leave the other stages (and DAEs) undone
        result = fit(settings["model"], settings["train"], dae_dir, resume=resume, dataset=dataset, progress=progress,
                     resume_hint="to resume, run the same 'daelab reproduce' (or 'make reproduce') again")
    except BaseException:
        record["seconds"] += time.perf_counter() - began
        _save_train_progress(run_dir, [*trained, record])
        raise
    record.update(status=DONE, seconds=record["seconds"] + time.perf_counter() - began, resumed=resume,
                  epochs_run=result["epochs_run"], best_val_loss=result["best_val_loss"],
                  final_val_loss=result["final_val_loss"], finished=_now())
    _save_train_progress(run_dir, [*trained, record])
    return record


def _train_record(state: dict, run_dir: Path) -> dict:
    """The train stage's record with a ``daes`` list (a record from before DAE seeds: its one DAE, ``run_dir``)."""
    record = state.get("stages", {}).get("train") or {}
    if record and "daes" not in record and record.get("status") == DONE:
        seed = int(record.get("settings", {}).get("train", {}).get("seed", 0))
        record = {**record, "daes": [{"seed": seed, "run_dir": str(run_dir), "status": DONE,
                                      "seconds": record.get("seconds") or 0.0, "resumed": record.get("resumed"),
                                      **{k: record.get(k) for k in ("epochs_run", "best_val_loss", "final_val_loss")},
                                      "finished": record.get("finished")}]}
    return record


def _save_train_progress(run_dir: Path, daes: list[dict]) -> None:
    """Write the DAEs trained so far into ``reproduce.json`` (the train stage stays unfinished until every one is)."""
    state = load_state(run_dir)
    if state is None:
        return
    state["stages"]["train"] = {"status": PARTIAL, "dae_seeds": state.get("dae_seeds"), "daes": daes}
    write_json(run_dir / STATE_FILE, state)


def _evaluate(run_dir: Path, settings: dict, dataset: Dataset | None, progress: bool) -> dict:
    from daelab.evaluate import evaluate_daes  # one DAE: exactly evaluate_run; several: a dae_seeds section too
    evaluation = evaluate_daes(dae_run_dirs(run_dir, settings["dae_seeds"]), settings["evaluate"], dataset=dataset,
                               progress=progress)
    over = evaluation.get("dae_seeds", {}).get("seeds") or settings["dae_seeds"][:1]
    return {"settings": to_jsonable(settings["evaluate"]), "dae_seeds": over,
            "outputs": ["evaluation.json", "evaluation.md"] + (["evaluation_daes.npz"] if len(over) > 1 else [])}


def _probe(run_dir: Path, settings: dict, dataset: Dataset | None, progress: bool) -> dict:
    try:
        from daelab.probe import ProbeConfig, probe_runs
    except ImportError as exc:  # the probe module is missing from this installation
        return {"status": SKIPPED, "reason": f"daelab.probe is not available ({exc})"}
    config = ProbeConfig(**settings["probe"])
    report = probe_runs(dae_run_dirs(run_dir, settings["dae_seeds"]), config, dataset=dataset, progress=progress,
                        out_dir=run_dir)
    return {"settings": to_jsonable(config), "dae_seeds": report["dae_seeds"],
            "outputs": ["probe.json", "probe.md", "probe_correct.npz"]}


def _report(run_dir: Path, settings: dict, dataset: Dataset | None, progress: bool) -> dict:
    from daelab.report import write_report
    paths = write_report(run_dir)
    return {"outputs": [Path(p).name for p in paths.values()]}


RUNNERS = {"train": _train, "evaluate": _evaluate, "probe": _probe, "report": _report}


def reproduce(run_dir: str | os.PathLike = "runs/study", quick: bool = False, data_dir: str | None = None,
              progress: bool = True, dataset: Dataset | None = None, dae_seeds: int | None = None,
              seed: int = 0) -> dict:
    """Run every unfinished stage of the reproduction into ``run_dir``; return the stage state.

    Parameters
    ----------
    run_dir : str or path-like
        The run directory, and the first DAE's run directory; created if needed. The further DAEs
        train into ``run_dir/daes/seed-<s>/``. A directory holding a reproduction of the other mode
        (quick vs full) or of another first DAE seed, or with more DAE seeds than asked for, a run that
        reproduce did not start, or a training run of other settings than the plan's is refused
        rather than mixed.
    quick : bool
        The few-minute version (see ``QUICK_TRAIN``, ``QUICK_EVAL``, ``QUICK_PROBE``; one DAE seed).
    data_dir : str or None
        Fashion-MNIST directory or .npz (default: the usual search).
    progress : bool
        Show progress bars.
    dataset : Dataset or None
        Images to use instead of loading them (tests pass a synthetic set).
    dae_seeds : int or None
        How many DAEs to train (training runs that many times); None: :data:`DAE_SEEDS` of the mode
        (3 full, 1 quick), or more if the reproduction in ``run_dir`` already has more. A number above
        what ``run_dir`` holds grows it: only the missing DAEs train, then evaluate, probe and report
        are redone over all of them.
    seed : int
        The first DAE's training seed; DAE k trains with ``seed + k``. 0, the default, is the study's
        run, bit for bit.

    Returns
    -------
    dict
        The content of ``RUN_DIR/reproduce.json``: ``mode``, ``dae_seeds`` (the list), ``environment``,
        ``total_seconds`` (the recorded stages' wall seconds added up: every DAE's training, however
        many calls it took, and the latest evaluate, probe and report) and ``stages``, a dict from stage
        name (``train``, ``evaluate``, ``probe``, ``report``) to ``{status, seconds, finished, settings,
        ...}``; ``status`` is ``done`` or ``skipped`` (with a ``reason``). The train stage lists every
        DAE in ``daes`` (``seed``, ``run_dir``, ``epochs_run``, ``best_val_loss``, ``final_val_loss``,
        ``seconds``, ``resumed``).
    """
    run_dir = Path(run_dir)
    mode = "quick" if quick else "full"
    state = load_state(run_dir)
    if state is not None and state.get("mode") != mode:
        raise UsageError(f"{run_dir} holds a {state.get('mode')} reproduction, not a {mode} one",
                         "use another --run-dir, or repeat the same command to finish it")
    seeds = dae_seed_plan(state, quick, dae_seeds, seed, run_dir)
    settings = {**plan(quick, data_dir, seed), "dae_seeds": seeds}
    if state is None:
        if (run_dir / "config.json").exists():
            raise UsageError(f"{run_dir} already holds a run that 'daelab reproduce' did not start",
                             "use another --run-dir")
        run_dir.mkdir(parents=True, exist_ok=True)
        state = {"version": 1, "mode": mode, "run_dir": str(run_dir), "started": _now(),
                 "data_dir": data_dir, "dataset": None if dataset is None else dataset.source, "stages": {}}
    grown = _recorded_seeds(state) not in (None, seeds)
    if grown:
        log.info("reproduce: growing %s from DAE seeds %s to %s", run_dir, _seed_list(_recorded_seeds(state)),
                 _seed_list(seeds))
        state["stages"]["train"] = {**_train_record(state, run_dir), "status": PARTIAL}  # the new DAEs to train
    state["dae_seeds"] = seeds
    state["environment"] = environment()  # the machine finishing the run (a resumed run may move)
    write_json(run_dir / STATE_FILE, state)
    ran = False
    for stage in STAGES:
        recorded = state["stages"].get(stage)
        # A finished stage is kept; a skipped probe is retried once the module exists; once a stage runs,
        # every stage after it runs again, since it reads that stage's results (the report shows them all).
        redo = (ran or recorded is None or recorded.get("status") not in (DONE, SKIPPED)
                or (stage == "train" and recorded.get("dae_seeds", seeds) != seeds)
                or (stage == "probe" and recorded["status"] == SKIPPED and _probe_available()))
        if not redo:
            log.info("%s: already %s (%s), not redone", stage, recorded["status"], recorded.get("finished"))
            continue
        log.info("%s: starting (%s mode, DAE seeds %s)", stage, mode, _seed_list(seeds))
        began = time.perf_counter()
        record = {"status": DONE, **RUNNERS[stage](run_dir, settings, dataset, progress)}
        record.setdefault("seconds", time.perf_counter() - began)  # the train stage adds up its DAEs' own
        record["finished"] = _now()
        state = load_state(run_dir) or state  # the train stage wrote its DAEs' progress into the file
        state["stages"][stage] = record
        state["total_seconds"] = _total_seconds(state)
        write_json(run_dir / STATE_FILE, state)
        ran = True
        log.info("%s: %s in %.1f s", stage, record["status"], record["seconds"])
    if ran:
        # Once more, so the report's own stage and the finished run appear in it (cheap: it only reads).
        state["finished"] = _now()
        state["total_seconds"] = _total_seconds(state)
        write_json(run_dir / STATE_FILE, state)
        _report(run_dir, settings, dataset, progress)
    return state


def _total_seconds(state: dict) -> float:
    """The wall seconds of the reproduction's recorded stages, added up."""
    return float(sum(stage.get("seconds") or 0.0 for stage in state["stages"].values()))


def _probe_available() -> bool:
    import importlib.util
    return importlib.util.find_spec("daelab.probe") is not None
