"""The sweep's engine: a grid of trials as Optuna trials in an Optuna storage, each an ordinary run directory.

:func:`run_sweep` opens (or joins) the study named by the spec in an Optuna storage -- SQLite in
``OUT/sweep.db`` by default, any SQLAlchemy URL otherwise (``postgresql://...`` for workers on many
machines) -- and runs trials until every grid point has a complete one. Optuna does the
bookkeeping: :class:`optuna.samplers.GridSampler` hands out the points, each running trial beats a
heartbeat into the storage, and a trial whose worker died (SIGKILL, a lost machine) is failed once
its heartbeat is older than the grace period and re-queued (``WAITING``) by the retry callback, for
the next worker to pick up. Any number of ``daelab sweep SPEC --storage URL`` processes share one
study this way.

A trial (:func:`run_trial`) is the run directory ``OUT/trials/<key>/``: train (resuming from
``last.pt`` when a killed trial left one) -> evaluate -> probe -> report, its stages recorded in
``sweep_trial.json`` there so a retried trial skips what is done. The value Optuna records is the
spec's objective, read back by :func:`daelab.sweep._results.trial_metrics`.

No grid point is run twice. GridSampler alone may give one point to two workers at once (it picks
among unfinished points once all are started); so each trial, once its point is known, records its
key and looks at the trials numbered below it: if one of them holds the same point (running,
waiting or complete), this trial ends itself ``PRUNED`` with the user attribute ``duplicate_of``,
having done nothing. Trials numbered lower whose point is not known yet are waited for (a worker
sets it right after creating its trial, and a dead one's trial is failed by the heartbeat), so of
two trials of one point exactly the lower-numbered one goes on -- whatever the timing. A failed
trial holds nothing: its retry carries on.
"""
from __future__ import annotations

import contextlib
import datetime as _dt
import importlib.util
import json
import logging
import os
import time
import warnings
from dataclasses import replace
from pathlib import Path

from daelab.config import to_jsonable
from daelab.data import Dataset
from daelab.errors import CheckpointError, TrainingError, UsageError
from daelab.runs import LOCK_FILE, read_json, write_json
from daelab.sweep._spec import SweepSpec

log = logging.getLogger(__name__)

TRIAL_FILE = "sweep_trial.json"
STAGES = ("train", "evaluate", "probe", "report")
DB_FILE = "sweep.db"
# Settings of where and how fast a stage runs, not of what it computes: a resumed trial may change them.
RUNTIME = {"threads", "workers", "device", "data_dir"}
# Train settings a resumed training run may take from the spec rather than from its checkpoint.
RESUMABLE = RUNTIME | {"epochs", "checkpoint_every"}
CREATE_ATTEMPTS = 6
HOLDING = ("RUNNING", "WAITING", "COMPLETE")  # the states in which a trial holds its grid point


def _optuna():
    import optuna
    optuna.logging.set_verbosity(optuna.logging.WARNING)  # the engine says per stage what happens
    return optuna


def _now() -> str:
    return _dt.datetime.now().astimezone().isoformat(timespec="seconds")


# ------------------------------------------------------------------------------------ storage
def storage_url(spec: SweepSpec, storage: str | None = None) -> str:
    """The storage URL: ``storage`` as given, or SQLite in ``OUT/sweep.db`` (absolute path)."""
    if storage:
        return _with_driver(storage)
    return f"sqlite:///{(Path(spec.out) / DB_FILE).resolve()}"


def _with_driver(url: str) -> str:
    """``postgresql://`` as ``postgresql+psycopg2://`` where only psycopg2 is installed.

    SQLAlchemy 2.1 reads a plain ``postgresql://`` as psycopg 3; daelab's ``postgres`` extra installs
    psycopg2-binary, the driver Optuna documents.
    """
    scheme, sep, rest = url.partition("://")
    if sep and scheme in ("postgresql", "postgres") and importlib.util.find_spec("psycopg") is None \
            and importlib.util.find_spec("psycopg2") is not None:
        return f"postgresql+psycopg2://{rest}"
    return url


def shown_url(url: str) -> str:
    """``url`` with any password hidden (for printing)."""
    try:
        from sqlalchemy.engine import make_url
        return make_url(url).render_as_string(hide_password=True)
    except Exception:  # noqa: BLE001 - not a URL SQLAlchemy reads: shown as given, it holds no parsed password
        return url


def make_storage(spec: SweepSpec, url: str):
    """An :class:`optuna.storages.RDBStorage` on ``url`` with the spec's heartbeat, grace period and retries.

    Raises
    ------
    UsageError
        The URL cannot be opened (bad URL, no driver, server unreachable): one line naming it.
    """
    optuna = _optuna()
    storages = optuna.storages
    retry_class = getattr(storages, "RetryHeartbeatStaleTrialCallback", None)
    callback_arg = "heartbeat_stale_trial_callback" if retry_class else "failed_trial_callback"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", category=optuna.exceptions.ExperimentalWarning)
        retry = (retry_class or storages.RetryFailedTrialCallback)(max_retry=spec.max_retry)
    engine_kwargs = {"connect_args": {"timeout": 60}} if url.startswith("sqlite") else {"pool_pre_ping": True}
    if url.startswith("sqlite:///"):
        Path(url[len("sqlite:///"):]).parent.mkdir(parents=True, exist_ok=True)
    try:
        for attempt in range(CREATE_ATTEMPTS):
            try:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore", category=optuna.exceptions.ExperimentalWarning)
                    return storages.RDBStorage(url, engine_kwargs=engine_kwargs, heartbeat_interval=spec.heartbeat,
                                               grace_period=spec.grace, **{callback_arg: retry})
            except Exception as exc:  # noqa: BLE001 - see below
                # Workers started together race to create the tables (a UNIQUE constraint fails in the one
                # that comes second, or SQLite is locked): the tables are there a moment later.
                text = f"{type(exc).__name__} {exc}"
                if attempt + 1 == CREATE_ATTEMPTS or not ("IntegrityError" in text or "locked" in text):
                    raise
                time.sleep(0.5 * (attempt + 1))
    except ModuleNotFoundError as exc:
        hint = ("pip install 'daelab[postgres]' (psycopg2-binary)" if "psycopg" in str(exc)
                else f"install the database driver ({exc.name})")
        raise UsageError(f"cannot open the sweep storage {shown_url(url)}: {exc}", hint) from None
    except Exception as exc:  # noqa: BLE001 - SQLAlchemy's errors (bad URL, server down) in one line
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise UsageError(f"cannot open the sweep storage {shown_url(url)}: {first}",
                         "check the URL (sqlite:///PATH, postgresql://USER:PASSWORD@HOST:PORT/DB) and that the "
                         "server runs") from None


def open_study(spec: SweepSpec, storage: str | None = None):
    """Create or join the spec's study (``load_if_exists``); refuse one of another objective or grid."""
    optuna = _optuna()
    url = storage_url(spec, storage)
    sampler = optuna.samplers.GridSampler(spec.grid, seed=0)  # the same seed in every worker: one order
    study = optuna.create_study(storage=make_storage(spec, url), sampler=sampler, study_name=spec.name,
                                direction=spec.direction, load_if_exists=True)
    recorded = study.user_attrs
    mine = {"objective": spec.objective, "grid": spec.grid}
    if not recorded.get("objective"):
        for name, value in mine.items():
            study.set_user_attr(name, value)
        study.set_user_attr("spec", spec.path)
    elif recorded.get("objective") != spec.objective or json.dumps(recorded.get("grid")) != json.dumps(spec.grid):
        differ = "objective" if recorded.get("objective") != spec.objective else "grid"
        raise UsageError(f"study {spec.name!r} in {shown_url(url)} was started with another {differ} "
                         f"({json.dumps(recorded.get(differ))})",
                         "use another [sweep] name for a new sweep, or the spec that started it")
    return study


def dashboard_hint(url: str) -> str:
    """The ``optuna-dashboard`` command that browses the study live (and how to install it if missing)."""
    line = f"browse the study live: optuna-dashboard {shown_url(url)}"
    if importlib.util.find_spec("optuna_dashboard") is None:
        line += "  (pip install optuna-dashboard)"
    return line


# ------------------------------------------------------------------------------------ the grid's state
def _trial_key(spec: SweepSpec, trial) -> str | None:
    key = trial.user_attrs.get("key")
    if key:
        return key
    point = spec.point_of(trial.params)
    return None if point is None else spec.key(point)


def _by_key(spec: SweepSpec, trials) -> dict[str, list]:
    groups = {spec.key(point): [] for point in spec.points}
    for trial in trials:
        key = _trial_key(spec, trial)
        if key in groups:
            groups[key].append(trial)
    return groups


def _row_trial(trials: list):
    """The trial that stands for a grid point: the latest complete, else running/waiting, failed, pruned."""
    for states in (("COMPLETE",), ("RUNNING", "WAITING"), ("FAIL",), ("PRUNED",)):
        found = [t for t in trials if t.state.name in states]
        if found:
            return max(found, key=lambda t: t.number)
    return None


def sweep_rows(spec: SweepSpec, study) -> list[dict]:
    """One row per grid point (its latest trial), in grid order: what the report and the CLI's table show.

    Returns
    -------
    list of dict
        ``number`` (the trial's, ``None`` for a point no trial has reached), ``key``, ``state``
        (``COMPLETE``, ``RUNNING``, ``FAIL``, ``WAITING`` -- also for a point not started -- or
        ``PRUNED``), ``params`` (axis -> value), ``run_dir``, ``seconds`` (the trial's work, for
        a finished trial), ``value`` (the objective) and ``retries`` (failed trials of the point).
    """
    groups = _by_key(spec, study.get_trials(deepcopy=False))
    rows = []
    for point in spec.points:
        key = spec.key(point)
        trial = _row_trial(groups[key])
        seconds = None
        if trial is not None and trial.state.is_finished():
            seconds = trial.user_attrs.get("seconds")
            if seconds is None and trial.duration is not None:
                seconds = trial.duration.total_seconds()
        rows.append({"number": None if trial is None else trial.number, "key": key,
                     "state": "WAITING" if trial is None else trial.state.name, "params": dict(point),
                     "run_dir": str(spec.run_dir(point)), "seconds": seconds,
                     "value": None if trial is None or trial.state.name != "COMPLETE" else trial.value,
                     "retries": sum(t.state.name == "FAIL" for t in groups[key])})
    return rows


def _earlier_holder(spec: SweepSpec, study, number: int, key: str, poll: float) -> int | None:
    """The number of a trial below ``number`` that holds ``key``'s point, or ``None``.

    A running trial below ``number`` whose point is not recorded yet is waited for: its worker records
    it right after creating the trial, or dies, and then the heartbeat fails the trial.
    """
    optuna = _optuna()
    while True:
        unknown = False
        for trial in study.get_trials(deepcopy=False):
            if trial.number >= number or trial.state.name not in HOLDING:
                continue
            found = _trial_key(spec, trial)
            if found == key:
                return trial.number
            if trial.state.name == "RUNNING" and "key" not in trial.user_attrs and _young(trial, spec.grace):
                unknown = True  # created, its point not recorded yet
        if not unknown:
            return None
        time.sleep(poll)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", category=optuna.exceptions.ExperimentalWarning)
            optuna.storages.fail_stale_trials(study)


def _young(trial, grace: float) -> bool:
    """Whether ``trial`` started less than ``grace`` seconds ago.

    A worker records its trial's point within moments of creating it; one killed in between (before
    its first heartbeat, so the heartbeat never fails that trial) leaves a trial that holds nothing.
    """
    started = trial.datetime_start
    if started is None:
        return True
    now = _dt.datetime.now(started.tzinfo) if started.tzinfo else _dt.datetime.now()
    return (now - started).total_seconds() < grace


# ------------------------------------------------------------------------------------ one trial
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


# ------------------------------------------------------------------------------------ the sweep
def run_sweep(spec: SweepSpec, storage: str | None = None, threads: int = 0, progress: bool = True,
              dataset: Dataset | None = None, wait: bool = True) -> list[dict]:
    """Run the sweep's unfinished trials as one worker of its Optuna study; write the sweep's report.

    Start as many workers (processes, on any machines sharing ``storage`` and ``OUT``) as you like:
    each takes the next point nobody holds, a killed worker's trial is retried by another, and no
    point runs twice. Running it again resumes the sweep; with the grid complete it only rewrites
    the report.

    Parameters
    ----------
    spec : SweepSpec
        The sweep (:func:`daelab.sweep.read_spec`).
    storage : str, optional
        An Optuna storage URL (default: ``sqlite:///OUT/sweep.db``); ``postgresql://USER@HOST/DB``
        for workers on many machines.
    threads : int
        CPU threads for each stage (0: the spec's settings).
    progress : bool
        Show the stages' progress bars.
    dataset : Dataset, optional
        Images instead of the configs' data (tests pass a synthetic set).
    wait : bool
        When every point left is running in another worker, wait for them (retrying any whose worker
        dies) rather than return; the last worker to finish then writes the complete report.

    Returns
    -------
    list of dict
        :func:`sweep_rows`: one row per grid point.
    """
    optuna = _optuna()
    Path(spec.out).mkdir(parents=True, exist_ok=True)
    url = storage_url(spec, storage)
    study = open_study(spec, url)
    log.info("sweep %s: %d grid points, storage %s", spec.name, len(spec.points), shown_url(url))
    log.info("%s", dashboard_hint(url))
    if threads:
        import torch
        torch.set_num_threads(threads)
    poll = float(min(spec.heartbeat, 5))
    tried_here: set[str] = set()  # points this worker ran or re-queued: each at most once per call
    announced_wait = None
    while True:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", category=optuna.exceptions.ExperimentalWarning)
            optuna.storages.fail_stale_trials(study)  # a dead worker's trial: failed, and re-queued
        groups = _by_key(spec, study.get_trials(deepcopy=False))
        states = {key: {t.state.name for t in trials} for key, trials in groups.items()}
        pending = [key for key, found in states.items() if "COMPLETE" not in found]
        if not pending:
            break
        waiting = [key for key in pending if "WAITING" in states[key]]
        running = [key for key in pending if "RUNNING" in states[key] and "WAITING" not in states[key]]
        fresh = [key for key in pending if not states[key]]  # no trial yet: GridSampler has them to hand out
        failed = [key for key in pending if key not in tried_here and states[key]
                  and not states[key] & {"RUNNING", "WAITING"}]  # only FAIL (or PRUNED) trials
        if not waiting and failed:
            # a point whose trial failed (stopped, not by a dead worker, or past its retries): queue it
            # once more, before the fresh points (an interrupted sweep resumes where it stopped)
            key = failed[0]
            last = max(groups[key], key=lambda t: (t.state.name == "FAIL", t.number))
            log.info("%s: trial %d failed; queued again", spec.label(spec.point_of(last.params)), last.number)
            _queue_again(study, last)
            tried_here.add(key)
            continue
        if waiting or fresh:
            announced_wait = None
            _one_trial(spec, study, dataset, progress, threads, poll, tried_here)
            continue
        if running and wait:
            if announced_wait != len(running):
                log.info("waiting for %d trial(s) running in other workers (%s)", len(running), ", ".join(running))
                announced_wait = len(running)
            time.sleep(poll)
            continue
        break
    rows = sweep_rows(spec, study)
    write_report(spec, rows)
    return rows


def _queue_again(study, failed) -> None:
    """Queue a copy of the ``failed`` trial (``WAITING``), as Optuna's retry callback does for a dead worker's.

    Its grid point's system attributes go with it (``study.enqueue_trial`` would leave out the
    ``grid_id`` that GridSampler reads when the trial ends).
    """
    optuna = _optuna()
    system_attrs = {**failed.system_attrs, "failed_trial": failed.system_attrs.get("failed_trial", failed.number)}
    study.add_trial(optuna.trial.create_trial(
        state=optuna.trial.TrialState.WAITING, params=failed.params, distributions=failed.distributions,
        user_attrs={**{k: v for k, v in failed.user_attrs.items() if k != "duplicate_of"}, "retry_of": failed.number},
        system_attrs=system_attrs))


def _one_trial(spec: SweepSpec, study, dataset, progress: bool, threads: int, poll: float, tried_here: set) -> None:
    """One ``study.optimize`` step: the next waiting or unvisited point, run unless another trial holds it."""
    optuna = _optuna()

    def objective(trial):
        params = {axis: trial.suggest_categorical(axis, values) for axis, values in spec.grid.items()}
        point = spec.point_of(params)
        key = spec.key(point)
        trial.set_user_attr("key", key)
        trial.set_user_attr("run_dir", str(spec.run_dir(point)))
        holder = _earlier_holder(spec, study, trial.number, key, poll)
        label = f"trial {trial.number} {spec.label(point)}"
        if holder is not None:
            trial.set_user_attr("duplicate_of", holder)
            log.info("%s: trial %d holds this point; not run twice", label, holder)
            raise optuna.TrialPruned(f"duplicate of trial {holder}")
        tried_here.add(key)
        frozen = next(t for t in study.get_trials(deepcopy=False) if t.number == trial.number)
        retry_of = frozen.user_attrs.get("retry_of", frozen.system_attrs.get("failed_trial"))
        if retry_of is not None:
            log.info("%s: retrying trial %s (its worker died or it failed); resuming its run directory",
                     label, retry_of)
            # the heartbeat (or the failure) says no live process works here: a lock it left is stale
            with contextlib.suppress(OSError):
                (spec.run_dir(point) / LOCK_FILE).unlink()
        result = run_trial(spec, point, dataset=dataset, progress=progress, threads=threads, label=label)
        trial.set_user_attr("seconds", result["seconds"])
        trial.set_user_attr("stages_run", result["ran"])
        value = objective_value(spec, result["run_dir"])
        log.info("%s: %s = %.4g", label, spec.objective, value)
        return value

    try:
        study.optimize(objective, n_trials=1)
    except (TrainingError, CheckpointError) as exc:  # this trial's own failure: the others go on
        log.warning("trial failed: %s", exc)


def write_report(spec: SweepSpec, rows: list[dict]) -> dict:
    """Write ``sweep.html``, ``.md`` and ``.json`` into ``OUT`` (the results helper's renderer)."""
    try:
        from daelab.sweep._render import write_sweep_report
    except ImportError as exc:  # the renderer is not part of this installation yet
        log.warning("sweep report not written: %s", exc)
        return {}
    return {name: Path(path) for name, path in write_sweep_report(Path(spec.out), rows, spec).items()}


def report_only(spec: SweepSpec, storage: str | None = None) -> list[dict]:
    """Rewrite the sweep's report from the storage without running anything; returns the rows."""
    study = open_study(spec, storage_url(spec, storage))
    rows = sweep_rows(spec, study)
    write_report(spec, rows)
    return rows


__all__ = ["DB_FILE", "TRIAL_FILE", "dashboard_hint", "make_storage", "objective_value", "open_study",
           "report_only", "run_sweep", "run_trial", "shown_url", "storage_url", "sweep_rows", "trial_configs",
           "write_report"]
