"""The sweep's engine: a grid of trials as Optuna trials in an Optuna storage, each an ordinary run directory.

:func:`run_sweep` opens (or joins) the study named by the spec in an Optuna storage
(:mod:`daelab.sweep._storage`: SQLite in ``OUT/sweep.db`` by default, any SQLAlchemy URL otherwise --
``postgresql://...`` for workers on many machines) and runs trials until every grid point has a
complete one. Optuna does the bookkeeping: :class:`optuna.samplers.GridSampler` hands out the points,
each running trial beats a heartbeat into the storage, and a trial whose worker died (SIGKILL, a lost
machine) is failed once its heartbeat is older than the grace period and re-queued (``WAITING``) by
the retry callback, for the next worker to pick up. Any number of ``daelab sweep SPEC --storage URL``
processes share one study this way. Each trial is one grid point's run directory, its stages run by
:func:`daelab.sweep._trial.run_trial`; :func:`sweep_rows` reads the grid's state back, one row per
point, for the report (:func:`write_report`, :func:`report_only`).

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
import logging
import time
import warnings
from pathlib import Path

from daelab.data import Dataset
from daelab.errors import CheckpointError, TrainingError
from daelab.runs import LOCK_FILE
from daelab.sweep._spec import SweepSpec
from daelab.sweep._storage import _optuna, dashboard_hint, open_study, shown_url, storage_url
from daelab.sweep._trial import objective_value, run_trial

log = logging.getLogger(__name__)

HOLDING = ("RUNNING", "WAITING", "COMPLETE")  # the states in which a trial holds its grid point


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


__all__ = ["report_only", "run_sweep", "sweep_rows", "write_report"]
