"""Sweeps: a grid of DAE trainings as Optuna trials, each an ordinary run directory, and the report that charts them.

:func:`read_spec` reads and checks a sweep's TOML file into a :class:`SweepSpec` (``_spec``);
:func:`run_sweep` runs its trials as one worker of an Optuna study (``_engine``) in an Optuna
storage (SQLite by default, PostgreSQL for many machines; ``_storage``), each trial train ->
evaluate -> probe -> report in ``OUT/trials/<key>/`` (``_trial``); :func:`trial_metrics` reads a
trial's numbers (``_results``) and :func:`write_sweep_report` writes ``sweep.html``/``.md``/``.json``
(``_render``).
"""
from daelab.sweep._engine import report_only, run_sweep, sweep_rows
from daelab.sweep._results import trial_metrics
from daelab.sweep._spec import OBJECTIVES, SweepSpec, read_spec
from daelab.sweep._storage import open_study, storage_url
from daelab.sweep._trial import run_trial

__all__ = ["OBJECTIVES", "SweepSpec", "open_study", "read_spec", "report_only", "run_sweep", "run_trial",
           "storage_url", "sweep_rows", "trial_metrics", "write_sweep_report"]


def __getattr__(name):  # the renderer is imported when asked for (it pulls in matplotlib)
    if name == "write_sweep_report":
        from daelab.sweep._render import write_sweep_report
        return write_sweep_report
    raise AttributeError(name)
