"""``daelab sweep``: its flags and the thin call into :func:`daelab.sweep.run_sweep`."""
from __future__ import annotations

from pathlib import Path

from daelab.errors import UsageError

DESCRIPTION = """\
Train, evaluate and probe every point of a grid of DAEs -- e.g. noise kind x level -- and chart what
they show: SPEC is a TOML file ([sweep] name/out/objective, per-trial budgets in [train] [model]
[evaluate] [probe], the axes in [grid], the figures' axes in [report]; see examples/sweeps/noise.toml
and docs/sweep.md). Every trial is an Optuna trial (GridSampler) and an ordinary run directory,
OUT/trials/<key>/, that 'daelab report' opens; OUT/sweep.html (.md, .json) charts the codes - raw
accuracy difference with its interval per noise level and kind, the PSNR per trial, a heatmap and
the best trial.

The study lives in an Optuna storage: SQLite in OUT/sweep.db by default (nothing to start), or any
URL (--storage postgresql://USER:PASSWORD@HOST:PORT/DB) shared by workers on many machines: start
'daelab sweep SPEC --storage URL' as often as you like; each worker takes the next point nobody holds
and no point runs twice. A killed worker's trial is failed once its heartbeat is older than
[sweep] grace seconds and retried by another worker, resuming its run directory (training from
last.pt). Running the command again resumes the sweep; once the grid is complete it only rewrites
the report."""

EPILOG = """\
examples:
  daelab sweep examples/sweeps/noise.toml                     # SQLite in runs/sweep-noise/sweep.db
  daelab sweep examples/sweeps/noise.toml --threads 2         # each stage on 2 CPU threads
  daelab sweep examples/sweeps/noise.toml --storage postgresql://daelab@db-host/sweeps   # one per machine
  daelab sweep examples/sweeps/noise.toml --report-only       # rewrite sweep.html from the storage
  optuna-dashboard sqlite:///runs/sweep-noise/sweep.db        # browse the study live"""


def add_parser(sub, formatter_class, summary: str) -> None:
    p = sub.add_parser("sweep", formatter_class=formatter_class, help=summary, description=DESCRIPTION,
                       epilog=EPILOG)
    p.add_argument("spec", type=Path, metavar="SPEC", help="the sweep's TOML file")
    p.add_argument("--storage", metavar="URL",
                   help="Optuna storage URL shared by the workers (default: sqlite:///OUT/sweep.db); "
                        "postgresql://... needs psycopg2 (pip install 'daelab[postgres]')")
    p.add_argument("--out", type=Path, metavar="DIR", help="the sweep's directory (default: the spec's [sweep] out)")
    p.add_argument("--threads", type=int, default=0, metavar="N",
                   help="CPU threads for each stage (training, evaluation workers, probes); 0 = the spec's "
                        "settings (default: 0)")
    p.add_argument("--no-progress", dest="progress", action="store_false", help="no progress bars")
    p.add_argument("--report-only", action="store_true",
                   help="run nothing: rewrite OUT/sweep.html, .md and .json from the storage's trials")
    p.set_defaults(func=_run)


def _run(args) -> int:
    from daelab.sweep import read_spec, report_only, run_sweep
    if args.threads < 0:
        raise UsageError("--threads must be >= 0")
    spec = read_spec(args.spec, out=args.out)
    if args.report_only:
        rows = report_only(spec, args.storage)
    else:
        rows = run_sweep(spec, storage=args.storage, threads=args.threads, progress=args.progress)
    print(format_table(rows, spec.objective))
    html = Path(spec.out) / "sweep.html"
    print(f"report: {html}" if html.is_file() else f"report not written ({html} missing)")
    return 0


def format_table(rows: list[dict], objective: str) -> str:
    """The trials as a plain-text table: number, state, point, objective, seconds, retries."""
    header = ("trial", "state", "point", objective, "seconds", "retries")
    lines = [[("-" if row["number"] is None else str(row["number"])), row["state"], row["key"],
              "-" if row["value"] is None else f"{row['value']:.4f}",
              "-" if row["seconds"] is None else f"{row['seconds']:.0f}", str(row["retries"])] for row in rows]
    widths = [max(len(header[i]), *(len(line[i]) for line in lines)) for i in range(len(header))]
    out = ["  ".join(text.ljust(width) for text, width in zip(cells, widths)).rstrip() for cells in [header, *lines]]
    done = sum(row["state"] == "COMPLETE" for row in rows)
    out.append(f"{done} of {len(rows)} grid points complete")
    return "\n".join(out)
