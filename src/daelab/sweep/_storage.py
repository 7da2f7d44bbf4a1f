"""The sweep's Optuna storage: its URL, opening it, and creating or joining the study in it.

:func:`storage_url` is SQLite in ``OUT/sweep.db`` by default, any SQLAlchemy URL otherwise
(``postgresql://...`` for workers on many machines, with the psycopg2 driver where only it is
installed); :func:`shown_url` hides a password for printing. :func:`make_storage` opens an
:class:`optuna.storages.RDBStorage` with the spec's heartbeat, grace period and retry callback
(retrying while workers started together race to create its tables), :func:`open_study` creates or
joins the spec's study there, refusing one started with another objective or grid, and
:func:`dashboard_hint` says how to browse it live.
"""
from __future__ import annotations

import importlib.util
import json
import time
import warnings
from pathlib import Path

from daelab.errors import UsageError
from daelab.sweep._spec import SweepSpec

DB_FILE = "sweep.db"
CREATE_ATTEMPTS = 6


def _optuna():
    import optuna
    optuna.logging.set_verbosity(optuna.logging.WARNING)  # the engine says per stage what happens
    return optuna


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
                # that comes second, SQLite is locked, or "table ... already exists" when both passed the
                # check before either created it): the tables are there a moment later.
                text = f"{type(exc).__name__} {exc}"
                racing = ("IntegrityError", "locked", "already exists")
                if attempt + 1 == CREATE_ATTEMPTS or not any(word in text for word in racing):
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


__all__ = ["DB_FILE", "dashboard_hint", "make_storage", "open_study", "shown_url", "storage_url"]
