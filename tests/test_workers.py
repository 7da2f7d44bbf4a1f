"""Worker processes: a caller's script runs once, spawn is used only where that is certain, and jobs
report progress to the parent."""
import os
import subprocess
import sys
import textwrap
import types

import pytest

import daelab.workers as workers

SCRIPT = textwrap.dedent('''
    import numpy as np
    from daelab.data import Dataset
    from daelab.evaluate import EvalConfig, evaluate_run
    from daelab.models import ModelConfig
    from daelab.train import TrainConfig, fit

    print("body", flush=True)  # no __main__ guard: a worker that re-imported this file would train again
    rng = np.random.default_rng(0)
    ds = Dataset(rng.integers(0, 255, (300, 28, 28), dtype=np.uint8), rng.integers(0, 10, 300),
                 rng.integers(0, 255, (250, 28, 28), dtype=np.uint8), rng.integers(0, 10, 250), "synthetic")
    fit(ModelConfig(), TrainConfig(epochs=1, batch_size=64), RUN, dataset=ds, progress=False)
    result = evaluate_run(RUN, EvalConfig(noise="uniform:0.2", denoisers="median", max_images=250, workers=2,
                                          robustness="none"), dataset=ds, progress=False)
    print("workers", result["timing"]["baseline_workers"], flush=True)
''')


def test_an_unguarded_script_runs_once_with_workers(tmp_path):
    script = tmp_path / "unguarded.py"
    script.write_text(f"RUN = {str(tmp_path / 'run')!r}\n" + SCRIPT)
    done = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    lines = done.stdout.split()
    assert lines.count("body") == 1
    if sys.platform.startswith("linux"):
        assert "workers 2" in done.stdout


def test_spawn_only_where_the_callers_script_cannot_run_again(monkeypatch):
    monkeypatch.setattr(sys, "platform", "darwin")
    script = types.SimpleNamespace(__file__="/home/me/job.py", __spec__=None)
    module = types.SimpleNamespace(__file__="/x/daelab/__main__.py",
                                   __spec__=types.SimpleNamespace(name="daelab.__main__"))
    interactive = types.SimpleNamespace(__spec__=None)
    for main, expected in ((script, None), (module, "spawn"), (interactive, "spawn")):
        monkeypatch.setitem(sys.modules, "__main__", main)
        context = workers._start_method()
        assert (context and context.get_start_method()) == expected
    monkeypatch.setitem(sys.modules, "__main__", script)
    assert workers.WorkerPool(2).workers == 1  # no safe way: the jobs stay in this process


def _count_to(slot: int, value: int) -> int:
    for step in range(1, value + 1):
        workers.report(slot, step)
    return value


def test_jobs_in_workers_report_progress_through_shared_counters():
    with workers.WorkerPool(2, counters=3) as pool:
        futures = [pool.submit(_count_to, slot, 5 * (slot + 1)) for slot in range(3)]
        assert [f.result() for f in futures] == [5, 10, 15]
        if pool.workers > 1:
            assert list(pool.counters) == [5, 10, 15]
    workers.report(0, 7)  # in this process, outside any worker: nothing to report to, and no error
    with workers.WorkerPool(1, counters=2) as pool:
        assert pool.workers == 1 and list(pool.counters) == [0, 0]
        assert pool.submit(_count_to, 0, 3).result() == 3


_PARENT = os.getpid()


def _die_in_a_worker(value: int) -> int:
    if os.getpid() != _PARENT:
        os._exit(1)  # the worker dies: the pool is broken
    return value * 2


def test_a_job_whose_worker_died_reruns_in_this_process(caplog):
    with workers.WorkerPool(2) as pool:
        if pool.workers == 1:
            pytest.skip("no worker processes here")
        futures = [pool.submit(_die_in_a_worker, v) for v in (1, 2, 3)]
        assert [pool.result(f) for f in futures] == [2, 4, 6]
    assert "worker processes failed" in caplog.text
