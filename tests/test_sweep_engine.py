"""daelab sweep's engine: the spec's checks, a tiny grid end to end, workers sharing one study (SQLite and a
real PostgreSQL server) with each grid point run exactly once, and a SIGKILLed worker's trial retried.

Run as a script, this file is one sweep worker (``python tests/test_sweep_engine.py SPEC LOG``): it sweeps
the synthetic set and appends one line per stage it runs to LOG (``pid stage key``), so the tests can
count what ran where. With ``BLOCK_EVALUATE=MARKER`` the first evaluate stage it reaches writes MARKER
and hangs (training done, ``last.pt`` written), to be SIGKILLed there.
"""
from __future__ import annotations

import glob
import os
import pwd
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

import pytest

from ci_rules import cannot_run
from daelab.errors import ConfigError

TINY = """\
[sweep]
name = "tiny"
out = "{out}"
heartbeat = 1
grace = 3
[train]
epochs = 1
batch_size = 64
threads = 1
[model]
hidden = "64"
code_dim = 16
decoder_hidden = "64"
[evaluate]
noise = "uniform:0.1,0.3"
denoisers = "none"
robustness = "none"
examples = 2
workers = 1
[probe]
seeds = 1
epochs = 2
probes = "mlp"
n_boot = 50
threads = 1
workers = 1
[grid]
"train.noise.kind" = ["gaussian", "masking"]
"train.noise.level" = [0.1, 0.3]
[report]
x = "train.noise.level"
group = "train.noise.kind"
"""


def write_spec(tmp_path: Path, text: str = TINY, name: str = "tiny.toml") -> Path:
    path = tmp_path / name
    path.write_text(text.format(out=tmp_path / "sweep"))
    return path


def read_log(path: Path) -> list[tuple[str, str, str]]:
    return [tuple(line.split()) for line in path.read_text().splitlines()] if path.exists() else []


# ------------------------------------------------------------------------------------ the worker
def _instrument(log_path: str, block_marker: str | None) -> None:
    """Wrap the stages so each run appends ``pid stage key`` to the log; optionally hang in evaluate."""
    import daelab.evaluate
    import daelab.probe
    import daelab.train

    def note(stage, run_dir):
        with open(log_path, "a") as handle:
            handle.write(f"{os.getpid()} {stage} {Path(run_dir).name}\n")

    real_fit, real_eval, real_probe = daelab.train.fit, daelab.evaluate.evaluate_run, daelab.probe.probe_run

    def fit(model_config, config, run_dir, **kwargs):
        result = real_fit(model_config, config, run_dir, **kwargs)
        note("train", run_dir)
        return result

    def evaluate_run(run_dir, *args, **kwargs):
        if block_marker and not Path(block_marker).exists():
            Path(block_marker).write_text(Path(run_dir).name)
            while True:  # wait here to be killed
                time.sleep(1)
        result = real_eval(run_dir, *args, **kwargs)
        note("evaluate", run_dir)
        return result

    def probe_run(run_dir, *args, **kwargs):
        result = real_probe(run_dir, *args, **kwargs)
        note("probe", run_dir)
        return result

    daelab.train.fit, daelab.evaluate.evaluate_run, daelab.probe.probe_run = fit, evaluate_run, probe_run


def _worker_main(argv: list[str]) -> int:
    import logging

    import torch
    torch.set_num_threads(1)
    sys.path.insert(0, str(Path(__file__).parent))
    from conftest import make_synthetic
    from daelab.sweep import read_spec, run_sweep
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    spec_path, log_path = argv[0], argv[1]
    storage = argv[2] if len(argv) > 2 else None
    _instrument(log_path, os.environ.get("BLOCK_EVALUATE"))
    run_sweep(read_spec(spec_path), storage=storage, progress=False, dataset=make_synthetic())
    return 0


def start_worker(spec: Path, log: Path, storage: str | None = None, block: Path | None = None,
                 name: str = "worker") -> subprocess.Popen:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    env.pop("BLOCK_EVALUATE", None)
    if block is not None:
        env["BLOCK_EVALUATE"] = str(block)
    out = open(spec.parent / f"{name}.out", "w")
    cmd = [sys.executable, __file__, str(spec), str(log)] + ([storage] if storage else [])
    return subprocess.Popen(cmd, env=env, stdout=out, stderr=subprocess.STDOUT)


def wait_all(procs, spec: Path, timeout: float = 240) -> None:
    deadline = time.monotonic() + timeout
    for proc in procs:
        try:
            proc.wait(timeout=max(1.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    outputs = {p.name: p.read_text()[-3000:] for p in spec.parent.glob("*.out")}
    assert all(proc.returncode == 0 for proc in procs), outputs


def trials_of(spec_path: Path, storage: str | None = None):
    from daelab.sweep import open_study, read_spec
    spec = read_spec(spec_path)
    return spec, open_study(spec, storage).get_trials(deepcopy=False)


def assert_each_point_once(spec_path: Path, log: Path, storage: str | None = None) -> Counter:
    """Every grid point: one complete trial, each stage run once; any other trial a marked duplicate or a death."""
    from daelab.sweep import open_study, sweep_rows
    spec, trials = trials_of(spec_path, storage)
    keys = {spec.key(p) for p in spec.points}
    ran = Counter((stage, key) for _, stage, key in read_log(log))
    assert ran == Counter({(stage, key): 1 for stage in ("train", "evaluate", "probe") for key in keys}), ran
    complete = Counter(t.user_attrs["key"] for t in trials if t.state.name == "COMPLETE")
    assert complete == Counter(keys)
    for trial in trials:
        assert trial.state.name in ("COMPLETE", "PRUNED", "FAIL")
        if trial.state.name == "PRUNED":
            assert "duplicate_of" in trial.user_attrs
    rows = sweep_rows(spec, open_study(spec, storage))
    assert [row["state"] for row in rows] == ["COMPLETE"] * len(keys)
    assert all(isinstance(row["value"], float) for row in rows)
    return Counter(t.state.name for t in trials)


# ------------------------------------------------------------------------------------ the spec
def test_spec_points_keys_and_configs(tmp_path):
    from daelab.sweep import read_spec
    spec = read_spec(write_spec(tmp_path))
    assert spec.name == "tiny" and spec.direction == "maximize" and len(spec.points) == 4
    point = {"train.noise.kind": "masking", "train.noise.level": 0.3}
    assert spec.key(point) == "noise.kind-masking_noise.level-0.3"
    assert spec.label(point) == "noise.kind=masking,noise.level=0.3"
    configs = spec.configs(point)
    assert configs["train"].noise == "masking:0.3" and configs["train"].epochs == 1
    assert configs["model"].hidden == (64,) and configs["probe"].probes == ("mlp",)
    assert spec.point_of({"train.noise.kind": "masking", "train.noise.level": 0.3}) == point
    assert spec.run_dir(point) == tmp_path / "sweep" / "trials" / "noise.kind-masking_noise.level-0.3"
    # a key keeps the section where two axes would share a name
    text = TINY.replace('"train.noise.level" = [0.1, 0.3]', '"train.seed" = [0, 1]\n"probe.seed" = [3]')
    other = read_spec(write_spec(tmp_path, text.replace('x = "train.noise.level"', 'x = "train.seed"'), "two.toml"))
    assert other.key(other.points[0]) == "noise.kind-gaussian_train.seed-0_probe.seed-3"


@pytest.mark.parametrize("name", ["noise.toml", "noise-quick.toml"])
def test_the_shipped_example_specs_read_and_hold_the_study_point(name):
    """The documented examples parse, and the study's own choice (gaussian:0.1) is a point of each grid."""
    from daelab.sweep import read_spec
    spec = read_spec(Path(__file__).parents[1] / "examples" / "sweeps" / name)
    points = [dict(point) for point in spec.points]
    assert len(points) >= 9 and {"train.noise.kind": "gaussian", "train.noise.level": 0.1} in points


@pytest.mark.parametrize("edit, match", [
    (("epochs = 1", "epoch = 1"), r"unknown setting 'epoch' in \[train\].*did you mean 'epochs'"),
    (("[train]", "[trian]"), r"unknown section \[trian\].*did you mean \[train\]"),
    (('"masking"]', '"masking"]\n"train.noise.levle" = [0.2]'), r"unknown grid axis 'train.noise.levle'"),
    (("[0.1, 0.3]", "[0.1, 1.5]"), r"grid point noise.kind=gaussian,noise.level=1.5: noise level 1.5 out of range"),
    (('name = "tiny"', 'name = "tiny"\nobjective = "accuracy"'), r"unknown objective 'accuracy'"),
    (('name = "tiny"', 'name = "tiny"\nobjectiv = "psnr"'), r"unknown setting 'objectiv' in \[sweep\].*objective"),
    (('x = "train.noise.level"', 'x = "model.code_dim"'), r"\[report\] x = 'model.code_dim' is not a grid axis"),
])
def test_spec_errors_are_one_line_naming_the_file(tmp_path, edit, match):
    from daelab.sweep import read_spec
    path = write_spec(tmp_path, TINY.replace(*edit))
    with pytest.raises(ConfigError, match=match) as caught:
        read_spec(path)
    assert str(path) in str(caught.value) and "\n" not in str(caught.value)


def test_cli_spec_error_is_one_line(tmp_path, capsys):
    from daelab.cli import main
    path = write_spec(tmp_path, TINY.replace("[0.1, 0.3]", "[0.1, 1.5]"))
    assert main(["sweep", str(path)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("daelab: error: sweep spec") and "1.5" in err and len(err.splitlines()) == 1
    assert not (tmp_path / "sweep" / "trials").exists()  # nothing trained


def test_cli_help_lists_flags_and_examples(capsys):
    from daelab.cli import main
    with pytest.raises(SystemExit):
        main(["sweep", "--help"])
    out = capsys.readouterr().out
    for flag in ("--storage", "--out", "--threads", "--no-progress", "--report-only", "postgresql://",
                 "optuna-dashboard", "examples/sweeps/noise.toml"):
        assert flag in out


# ------------------------------------------------------------------------------------ one worker
@pytest.fixture(scope="module")
def tiny_sweep(tmp_path_factory, tiny_dataset):
    """The 2 x 2 grid swept once, in-process, with every stage counted."""
    from daelab.sweep import read_spec, run_sweep
    tmp = tmp_path_factory.mktemp("sweep")
    log = tmp / "stages.log"
    import daelab.evaluate
    import daelab.probe
    import daelab.train
    saved = daelab.train.fit, daelab.evaluate.evaluate_run, daelab.probe.probe_run
    _instrument(str(log), None)
    spec = read_spec(write_spec(tmp))
    rows = run_sweep(spec, progress=False, dataset=tiny_dataset)
    yield spec, rows, log, tmp
    daelab.train.fit, daelab.evaluate.evaluate_run, daelab.probe.probe_run = saved


def test_tiny_grid_completes_as_ordinary_run_dirs(tiny_sweep, capsys):
    from daelab.cli import main
    spec, rows, log, _ = tiny_sweep
    assert [row["key"] for row in rows] == [spec.key(p) for p in spec.points]
    assert all(row["state"] == "COMPLETE" and row["retries"] == 0 for row in rows)
    assert sorted(row["number"] for row in rows) == [0, 1, 2, 3]
    for row in rows:
        assert -1.0 <= row["value"] <= 1.0 and row["seconds"] > 0
        run_dir = Path(row["run_dir"])
        for name in ("config.json", "last.pt", "evaluation.json", "probe.json", "report.html", "sweep_trial.json"):
            assert (run_dir / name).is_file(), name
        assert main(["report", str(run_dir)]) == 0  # an ordinary run directory
    assert Counter(stage for _, stage, _ in read_log(log)) == {"train": 4, "evaluate": 4, "probe": 4}
    assert (Path(spec.out) / "sweep.db").is_file()


def test_rerun_runs_no_trial_and_rewrites_the_report(tiny_sweep, tiny_dataset, capsys):
    from daelab.cli import main
    from daelab.sweep import open_study, run_sweep
    spec, rows, log, tmp = tiny_sweep
    before = len(read_log(log))
    n_trials = len(open_study(spec).get_trials())
    again = run_sweep(spec, progress=False, dataset=tiny_dataset)
    assert [(r["number"], r["value"]) for r in again] == [(r["number"], r["value"]) for r in rows]
    assert len(read_log(log)) == before and len(open_study(spec).get_trials()) == n_trials
    # the CLI: --report-only prints the table and the report's path
    capsys.readouterr()
    assert main(["sweep", str(tmp / "tiny.toml"), "--report-only"]) == 0
    out = capsys.readouterr().out
    assert "4 of 4 grid points complete" in out and "noise.kind-masking_noise.level-0.3" in out
    assert "report:" in out


def test_a_retried_trial_skips_its_finished_stages(tiny_sweep, tiny_dataset):
    from daelab.sweep import run_trial
    spec, rows, log, _ = tiny_sweep
    before = len(read_log(log))
    result = run_trial(spec, spec.points[0], dataset=tiny_dataset, progress=False)
    assert result["ran"] == [] and len(read_log(log)) == before


def test_a_second_trial_of_one_point_is_pruned_as_duplicate(tmp_path, tiny_dataset):
    """Two trials of one point queued at once (as GridSampler may hand one point to two workers): the
    lower-numbered one runs, the other ends PRUNED with duplicate_of, without doing any work."""
    from daelab.sweep import open_study, read_spec, run_sweep
    spec = read_spec(write_spec(tmp_path, TINY.replace('["gaussian", "masking"]', '["gaussian"]')))
    study = open_study(spec)
    point = spec.points[1]
    for _ in range(2):
        study.enqueue_trial(point, user_attrs={"key": spec.key(point)})
    log = tmp_path / "stages.log"
    import daelab.evaluate
    import daelab.probe
    import daelab.train
    saved = daelab.train.fit, daelab.evaluate.evaluate_run, daelab.probe.probe_run
    try:
        _instrument(str(log), None)
        rows = run_sweep(spec, progress=False, dataset=tiny_dataset)
    finally:
        daelab.train.fit, daelab.evaluate.evaluate_run, daelab.probe.probe_run = saved
    trials = open_study(spec).get_trials()
    assert [t.state.name for t in trials[:2]] == ["COMPLETE", "PRUNED"]
    assert trials[1].user_attrs["duplicate_of"] == 0
    assert all(row["state"] == "COMPLETE" for row in rows)
    assert Counter(key for _, stage, key in read_log(log) if stage == "train") == {spec.key(p): 1 for p in spec.points}


def test_an_interrupted_sweep_resumes_its_trial_first(tmp_path, tiny_dataset, monkeypatch):
    """Ctrl-C in a trial's training: the trial ends FAIL and the command stops; run again, that point is
    queued first and its training continues from last.pt instead of starting over."""
    import daelab.train
    from daelab.errors import TrainingInterrupted
    from daelab.sweep import open_study, read_spec, run_sweep
    spec = read_spec(write_spec(tmp_path, TINY.replace('["gaussian", "masking"]', '["gaussian"]')))
    real_fit, calls = daelab.train.fit, []

    def stopped(model_config, config, run_dir, **kwargs):  # one epoch checkpointed, then Ctrl-C
        real_fit(model_config, config, run_dir, **kwargs)
        raise TrainingInterrupted("stopped at epoch 1", kwargs.get("resume_hint"))

    def counted(model_config, config, run_dir, **kwargs):
        result = real_fit(model_config, config, run_dir, **kwargs)
        calls.append((Path(run_dir).name, kwargs["resume"], result["epochs_run"]))
        return result

    monkeypatch.setattr(daelab.train, "fit", stopped)
    with pytest.raises(TrainingInterrupted) as caught:
        run_sweep(spec, progress=False, dataset=tiny_dataset)
    assert "daelab sweep" in caught.value.hint
    first = open_study(spec).get_trials()
    assert [t.state.name for t in first] == ["FAIL"]
    monkeypatch.setattr(daelab.train, "fit", counted)
    rows = run_sweep(spec, progress=False, dataset=tiny_dataset)
    trials = open_study(spec).get_trials()
    assert trials[1].user_attrs["retry_of"] == 0 and trials[1].user_attrs["key"] == first[0].user_attrs["key"]
    assert calls[0] == (first[0].user_attrs["key"], True, 1)  # resumed: the one epoch kept, none retrained
    assert all(row["state"] == "COMPLETE" for row in rows)
    assert sorted(row["retries"] for row in rows) == [0, 1]


def test_storage_that_cannot_open_is_one_line(tmp_path):
    from daelab.errors import UsageError
    from daelab.sweep import open_study, read_spec
    spec = read_spec(write_spec(tmp_path))
    with pytest.raises(UsageError, match="cannot open the sweep storage") as caught:
        open_study(spec, "postgresql://nobody:secret@127.0.0.1:1/none")
    assert "secret" not in str(caught.value) and "\n" not in str(caught.value)


# ------------------------------------------------------------------------------------ many workers
@pytest.mark.slow
def test_two_workers_on_sqlite_run_each_point_once(tmp_path):
    spec, log = write_spec(tmp_path), tmp_path / "stages.log"
    procs = [start_worker(spec, log, name=f"w{i}") for i in range(2)]
    wait_all(procs, spec)
    states = assert_each_point_once(spec, log)
    assert states["COMPLETE"] == 4 and states["FAIL"] == 0
    assert len({pid for pid, _, _ in read_log(log)}) >= 1


@pytest.mark.slow
def test_a_sigkilled_worker_trial_is_retried_and_resumed(tmp_path):
    """Worker A is killed in a trial's evaluate stage (its training done): the trial stays RUNNING until its
    heartbeat is older than the grace period, then worker B fails it, runs its retry and resumes the run
    directory (training not redone); no point is lost or run twice."""
    spec, log, marker = write_spec(tmp_path), tmp_path / "stages.log", tmp_path / "blocked"
    a = start_worker(spec, log, block=marker, name="a")
    deadline = time.monotonic() + 120
    while not marker.exists() and a.poll() is None and time.monotonic() < deadline:
        time.sleep(0.1)
    assert marker.exists(), (tmp_path / "a.out").read_text()[-3000:]
    killed_key = marker.read_text()
    a.send_signal(signal.SIGKILL)
    a.wait()
    b = start_worker(spec, log, name="b")
    wait_all([b], spec)
    states = assert_each_point_once(spec, log)
    assert states["COMPLETE"] == 4 and states["FAIL"] == 1
    a_pid = str(a.pid)
    assert [(pid == a_pid, stage) for pid, stage, key in read_log(log) if key == killed_key] == [
        (True, "train"), (False, "evaluate"), (False, "probe")]  # trained by A, finished by B
    from daelab.sweep import open_study, read_spec, sweep_rows
    spec_ = read_spec(spec)
    row = next(r for r in sweep_rows(spec_, open_study(spec_)) if r["key"] == killed_key)
    assert row["retries"] == 1
    assert "retrying trial" in (tmp_path / "b.out").read_text()


# ------------------------------------------------------------------------------------ PostgreSQL
def _postgres_bin() -> Path | None:
    found = shutil.which("initdb")
    if found:
        return Path(found).parent
    versions = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"),
                      key=lambda p: int(Path(p).parts[-3]) if Path(p).parts[-3].isdigit() else 0)
    return Path(versions[-1]).parent if versions else None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _cannot(reason: str):
    """Skip, saying why -- except under CI, which installs PostgreSQL and must run the test."""
    cannot_run("the PostgreSQL test", reason)


@pytest.fixture
def postgres_url():
    """A PostgreSQL server started in a temporary directory (as the postgres user under root), stopped after."""
    bindir = _postgres_bin()
    if bindir is None:
        _cannot("PostgreSQL binaries (initdb, pg_ctl) not found: install Debian's postgresql (make postgres)")
    try:
        import psycopg2  # noqa: F401
    except ImportError:
        _cannot("psycopg2 not installed (pip install 'daelab[postgres]')")
    root = Path(tempfile.mkdtemp(prefix="daelab-pg-"))
    run_as: list[str] = []
    if os.geteuid() == 0:  # the server refuses to run as root
        try:
            user = pwd.getpwnam("postgres")
        except KeyError:
            shutil.rmtree(root)
            _cannot("running as root and no 'postgres' user to run the server as")
        os.chown(root, user.pw_uid, user.pw_gid)
        run_as = ["runuser", "-u", "postgres", "--"]
    data, port = root / "data", _free_port()

    def run(*cmd):
        return subprocess.run(run_as + [str(bindir / cmd[0]), *cmd[1:]], capture_output=True, text=True, timeout=120)

    try:
        made = run("initdb", "-D", str(data), "-A", "trust", "-U", "postgres", "--no-sync")
        if made.returncode != 0:
            _cannot(f"initdb failed: {(made.stderr.strip().splitlines() or ['?'])[-1]}")
        options = f"-p {port} -k {root} -c listen_addresses=127.0.0.1 -c fsync=off"
        started = run("pg_ctl", "-D", str(data), "-l", str(root / "server.log"), "-o", options, "-w", "start")
        if started.returncode != 0:
            log = (root / "server.log").read_text() if (root / "server.log").exists() else started.stderr
            _cannot(f"PostgreSQL did not start: {(log.strip().splitlines() or ['?'])[-1]}")
        yield f"postgresql://postgres@127.0.0.1:{port}/postgres"
    finally:
        if data.exists():
            run("pg_ctl", "-D", str(data), "-m", "immediate", "-w", "stop")
        shutil.rmtree(root, ignore_errors=True)


@pytest.mark.slow
def test_two_workers_on_postgresql_run_each_point_once(tmp_path, postgres_url):
    spec, log = write_spec(tmp_path), tmp_path / "stages.log"
    procs = [start_worker(spec, log, storage=postgres_url, name=f"w{i}") for i in range(2)]
    wait_all(procs, spec)
    states = assert_each_point_once(spec, log, postgres_url)
    assert states["COMPLETE"] == 4 and states["FAIL"] == 0
    assert not (tmp_path / "sweep" / "sweep.db").exists()  # the study lives in the server


if __name__ == "__main__":
    sys.exit(_worker_main(sys.argv[1:]))
