"""The sweep's report: ``sweep.html`` (self-contained), ``sweep.md`` and ``sweep.json`` from the trials' rows.

:func:`write_sweep_report` reads each trial's run directory (:func:`~daelab.sweep._results.trial_metrics`)
and lays the grid out for a person: the codes - raw accuracy difference with its interval against
``report.x``, one curve per ``report.group`` value (the study's choice, ``gaussian:0.1`` with a
196-wide code, marked where the grid holds it), the DAE's PSNR on every evaluated noise level per
trial, a heatmap over ``report.heatmap``, the best trial per objective and a table of every trial.
It computes no statistics of its own: every interval is the probe's, over classifier seeds x test
images for the one trained DAE a trial is, so the report says "for this one trained DAE" and
does not test trials against each other. A trial that failed, is running, has not started, or
whose files are damaged shows as such; it never stops the report. The page and the Markdown are
drawn by :mod:`daelab.report._render`, the run report's renderer.
"""
from __future__ import annotations

import datetime as _dt
import html
import itertools
import json
import os
from collections.abc import Mapping
from pathlib import Path
from urllib.parse import quote

from daelab.checkpoint import atomic_write, output_error
from daelab.errors import UsageError
from daelab.report._format import _seconds
from daelab.report._render import Block, _cell, _inline, to_html, to_markdown
from daelab.runs import write_json
from daelab.stats import NOTHING_RESAMPLED, size_class
from daelab.sweep._figures import plot_differences, plot_heatmap, plot_psnr
from daelab.sweep._layout import STUDY_CHOICE, Layout, _is_study_choice, _same, _show, layout_of
from daelab.sweep._results import DIFFERENCES, OBJECTIVE_METRIC, RANKED, missing_metrics, trial_metrics

HTML_FILE, MARKDOWN_FILE, JSON_FILE = "sweep.html", "sweep.md", "sweep.json"
FIGURES = {"difference": "figures/sweep_codes_minus_raw.png", "psnr": "figures/sweep_psnr.png",
           "heatmap": "figures/sweep_heatmap.png"}
NOT_STARTED = "NOT STARTED"  # a grid point the engine has no trial for yet
_TABLE_TOKEN = "@@sweep-trials-table@@"  # where the HTML page gets the trials table with its links


def _link(out_dir: Path, run_dir: str | None, suffix: str) -> str | None:
    """The trial's report (``report.<suffix>`` where written, else its directory), relative to ``out_dir``."""
    if not run_dir:
        return None
    path = Path(run_dir)
    target = path / f"report.{suffix}" if (path / f"report.{suffix}").is_file() else path
    try:
        return quote(Path(os.path.relpath(target.resolve(), out_dir.resolve())).as_posix())
    except ValueError:  # another drive (Windows): no relative path
        return None


def collect_trials(rows: list[dict], layout: Layout, out_dir: Path) -> list[dict]:
    """Every grid point in grid order: its row (or a ``NOT STARTED`` one), its metrics, and whether it is the study's.

    A trial whose files are damaged keeps its state and gets ``error`` (the one-line message).
    """
    points = list(itertools.product(*(layout.values[a] for a in layout.axes)))
    rows = [row for row in rows if isinstance(row, Mapping)]

    def position(row) -> int:
        params = row.get("params") or {}
        return next((i for i, point in enumerate(points)
                     if all(a in params and _same(params[a], v) for a, v in zip(layout.axes, point))), len(points))

    placed = {}
    for row in rows:
        placed.setdefault(position(row), []).append(row)
    trials = []
    for index in sorted(set(range(len(points))) | set(placed)):  # index len(points): rows off the grid, last
        found = placed.get(index) or [{"number": None, "state": NOT_STARTED, "key": None, "run_dir": None,
                                       "params": dict(zip(layout.axes, points[index])), "seconds": None,
                                       "value": None, "retries": 0}]
        trials += [_trial(dict(row), layout, out_dir) for row in found]
    return trials


def _trial(row: dict, layout: Layout, out_dir: Path) -> dict:
    params = dict(row.get("params") or {})
    metrics, error = missing_metrics(), None
    run_dir = row.get("run_dir")
    if run_dir and Path(run_dir).is_dir():
        try:
            metrics = trial_metrics(run_dir)
        except UsageError as exc:
            error = str(exc)
        for name, _ in DIFFERENCES:  # an interval with a non-finite end (null in the JSON) says nothing
            value = metrics[name]
            if value and any(value[k] is None for k in ("mean", "lo", "hi")):
                metrics[name] = None
    label = ", ".join(_show(params.get(a, "?")) for a in layout.axes if a != layout.x) or "all trials"
    return {"number": row.get("number"), "key": row.get("key"), "state": str(row.get("state") or "UNKNOWN"),
            "params": params, "run_dir": run_dir, "seconds": row.get("seconds"), "value": row.get("value"),
            "retries": row.get("retries", 0), "metrics": metrics, "error": error, "curve": label,
            "study_choice": _is_study_choice(params, layout.spec),
            "link_html": _link(out_dir, run_dir, "html"), "link_md": _link(out_dir, run_dir, "md"),
            "link_text": "report" if run_dir and (Path(run_dir) / "report.html").is_file() else "run dir"}


def _complete(trials: list[dict]) -> list[dict]:
    return [t for t in trials if t["state"] == "COMPLETE" and not t["error"]]


def _value(trial: dict, objective: str) -> float | None:
    value = trial["metrics"].get(objective)
    return value.get("mean") if isinstance(value, dict) else value


# ----------------------------------------------------------------------------- what it says
def curves(trials: list[dict], layout: Layout) -> list[dict]:
    """The difference curve's data: one curve per value of the non-x axes (group first), its points in grid order."""
    by_label: dict[str, dict] = {}
    for trial in trials:
        curve = by_label.setdefault(trial["curve"], {
            "label": trial["curve"], "params": {a: trial["params"].get(a) for a in layout.axes if a != layout.x},
            "group": trial["params"].get(layout.group) if layout.group else None, "points": []})
        point = {"x": trial["params"].get(layout.x) if layout.x else None, "key": trial["key"],
                 "number": trial["number"], "state": trial["state"], "study_choice": trial["study_choice"]}
        for name, _ in DIFFERENCES:
            value = trial["metrics"][name] if not trial["error"] else None
            point[name] = {k: value[k] for k in ("mean", "lo", "hi", "verdict")} if value else None
        curve["points"].append(point)
    return list(by_label.values())


def heatmap(trials: list[dict], layout: Layout) -> dict | None:
    """Codes - raw and PSNR mean over ``layout.heatmap``'s two axes (cells average the other axes' trials)."""
    if layout.heatmap is None:
        return None
    rows_axis, cols_axis = layout.heatmap
    grid = {"rows_axis": rows_axis, "cols_axis": cols_axis, "rows": layout.values[rows_axis],
            "cols": layout.values[cols_axis], "averaged_over": [a for a in layout.axes if a not in layout.heatmap]}
    for name in ("codes_minus_raw", "psnr_mean", "n", "states", "study_choice", "lo", "hi"):
        grid[name] = [[None] * len(grid["cols"]) for _ in grid["rows"]]
    for i, r in enumerate(grid["rows"]):
        for j, c in enumerate(grid["cols"]):
            cell = [t for t in trials if _same(t["params"].get(rows_axis), r) and _same(t["params"].get(cols_axis), c)]
            done = _complete(cell)
            for name in ("codes_minus_raw", "psnr_mean"):
                found = [v for v in (_value(t, name) for t in done) if v is not None]
                grid[name][i][j] = sum(found) / len(found) if found else None
            grid["n"][i][j] = len(done)
            grid["states"][i][j] = sorted({t["state"] for t in cell})
            grid["study_choice"][i][j] = any(t["study_choice"] for t in cell)
            if len(done) == 1 and done[0]["metrics"]["codes_minus_raw"]:
                grid["lo"][i][j] = done[0]["metrics"]["codes_minus_raw"]["lo"]
                grid["hi"][i][j] = done[0]["metrics"]["codes_minus_raw"]["hi"]
    return grid


def best_trials(trials: list[dict]) -> dict:
    """Per ranked metric (:data:`~daelab.sweep._results.RANKED`), the complete trial that does best.

    A tie goes to the first in grid order.
    """
    best = {}
    for objective, direction in RANKED.items():
        scored = [(t, _value(t, objective)) for t in _complete(trials)]
        scored = [(t, v) for t, v in scored if v is not None]
        if not scored:
            best[objective] = None
            continue
        sign = 1 if direction == "maximize" else -1
        trial, value = max(scored, key=lambda pair: sign * pair[1])
        best[objective] = {"direction": direction, "number": trial["number"], "key": trial["key"],
                           "params": trial["params"], "value": value, "study_choice": trial["study_choice"],
                           "codes_minus_raw": trial["metrics"]["codes_minus_raw"]}
    return best


def _ci(value: dict | None) -> str:
    if not value:
        return "–"
    return f"{value['mean']:+.4f} [{value['lo']:+.4f}, {value['hi']:+.4f}]"


def _number(value, digits: int = 4) -> str:
    return "–" if value is None else f"{value:.{digits}f}"


def _verdict_counts(done: list[dict]) -> dict:
    counts = {"codes better": 0, "raw better": 0, "no detectable difference": 0, "other": 0}
    for trial in done:
        verdict = (trial["metrics"]["codes_minus_raw"] or {}).get("verdict", "")
        counts[next((k for k in counts if verdict.startswith(k)), "other")] += 1
    return counts


def _size_counts(done: list[dict]) -> str:
    """`` Against the probe's margin (±0.01): within it in **K**, ...``, over the trials whose probe.json has one."""
    sized = [t["metrics"]["codes_minus_raw"] for t in done
             if t["metrics"]["codes_minus_raw"].get("size") not in (None, NOTHING_RESAMPLED)]
    margins = {value["margin"] for value in sized}
    if not sized or len(margins) != 1:  # none, or trials probed with different margins: no one sentence holds
        return ""
    margin = margins.pop()
    where = [size_class(value["lo"], value["hi"], margin) for value in sized]
    within, beyond = where.count("within"), where.count("above") + where.count("below")
    return (f" Against the probe's margin (±{margin:g}): within it in **{within}**, beyond it in **{beyond}**, "
            f"not ruled out either way in **{len(sized) - within - beyond}** of {len(sized)}.")


def headline(trials: list[dict], best: dict, layout: Layout) -> list[str]:
    """The sentences at the top: how far the sweep is, its best trial, where the study's choice stands."""
    done = [t for t in _complete(trials) if t["metrics"]["codes_minus_raw"]]
    states = {}
    for trial in trials:
        states[trial["state"]] = states.get(trial["state"], 0) + 1
    items = [f"**{len(_complete(trials))} of {len(trials)} trials complete** ("
             + ", ".join(f"{n} {state.lower()}" for state, n in states.items()) + ")."]
    damaged = [t for t in trials if t["error"]]
    if damaged:
        items.append(f"{len(damaged)} trial(s) with damaged files, left out of every summary (see the table).")
    if not done:
        return items + ["No trial has a probe result yet: nothing to compare."]
    counts = _verdict_counts(done)
    items.append(f"Codes vs raw pixels (mlp probe), each trial for its one trained DAE: codes better in "
                 f"**{counts['codes better']}**, raw better in **{counts['raw better']}**, no detectable "
                 f"difference in **{counts['no detectable difference']}** of {len(done)} trials."
                 + _size_counts(done))
    top = best["codes_minus_raw"]
    items.append(f"Largest codes - raw difference: trial `{top['key']}` ({_settings(top['params'])}), "
                 f"{_ci(top['codes_minus_raw'])}: {top['codes_minus_raw']['verdict']}.")
    mine = next((t for t in done if t["study_choice"]), None)
    pending = next((t for t in trials if t["study_choice"]), None)
    if mine is None and pending is None:
        items.append(f"The study's choice ({STUDY_CHOICE}) is not in this grid.")
    elif mine is None:
        items.append(f"The study's choice ({STUDY_CHOICE}) is in the grid; its trial is "
                     f"{pending['state'].lower()}{' (damaged files)' if pending['error'] else ''}, "
                     "no probe result yet.")
    else:
        ranked = sorted(done, key=lambda t: -_value(t, "codes_minus_raw"))
        rank = ranked.index(mine) + 1
        value = mine["metrics"]["codes_minus_raw"]
        best_value = top["codes_minus_raw"]
        overlap = "overlap" if value["hi"] >= best_value["lo"] and best_value["hi"] >= value["lo"] else "do not overlap"
        items.append(f"The study's choice ({STUDY_CHOICE}): {_ci(value)}, {value['verdict']}; rank {rank} of "
                     f"{len(done)} by codes - raw" + ("" if rank == 1 else
                                                     f"; its interval and the best trial's {overlap} (the sweep "
                                                     "does not test trials against each other)") + ".")
    for objective, words in (("psnr_mean", "Best mean DAE PSNR over the evaluated levels"),
                             ("val_loss", "Lowest validation loss")):
        entry = best[objective]
        if entry:
            items.append(f"{words}: trial `{entry['key']}` ({_settings(entry['params'])}), "
                         f"{entry['value']:.{2 if objective == 'psnr_mean' else 5}f}"
                         f"{' dB' if objective == 'psnr_mean' else ''}.")
    return items


def _settings(params: dict) -> str:
    return ", ".join(f"{axis} = {_show(value)}" for axis, value in params.items()) or "no axes"


TRIAL_HEADER = ["#", "state", "codes - raw (mlp) [95%]", "verdict", "size, against the margin", "linear", "kNN",
                "accuracy codes / raw",
                "PSNR mean (dB)", "val loss", "time", "retries", "run"]
TRIAL_CAPTION = ("★ the study's choice. Intervals and verdicts: the probe's, over classifier seeds x test images, "
                 "for each trial's one trained DAE (a verdict with another scope says so); size: where that "
                 "interval lies against the probe's margin (--margin). linear, kNN: codes - raw "
                 "under those probes, * where the interval excludes 0 (intervals in the figure and sweep.json).")


def _mean(value: dict | None) -> str:
    """A difference's mean, starred where its interval excludes 0."""
    if not value:
        return "–"
    return f"{value['mean']:+.4f}" + ("*" if value["lo"] > 0 or value["hi"] < 0 else "")


def _align(layout: Layout) -> str:
    return "ll" + "l" * len(layout.axes) + "rllrrlrrrrl"


def _short_verdict(value: dict | None) -> str:
    """The verdict without its scope where that is the table's (one trained DAE), else as it is."""
    if not value:
        return "–"
    verdict, scope = value["verdict"], value.get("scope") or ""
    if scope == "for this one trained DAE" and verdict.endswith(scope):
        return verdict[: -len(scope)].strip()
    return verdict


def _trial_cells(trial: dict, layout: Layout) -> list[str]:
    m = trial["metrics"]
    state = trial["state"].lower() + (f" (damaged: {trial['error']})" if trial["error"] else "")
    accuracy = ("–" if m["accuracy"]["codes"] is None and m["accuracy"]["raw"] is None else
                f"{_number(m['accuracy']['codes'])} / {_number(m['accuracy']['raw'])}")
    return [("–" if trial["number"] is None else str(trial["number"])) + (" ★" if trial["study_choice"] else ""),
            state, *(_show(trial["params"].get(a, "–")) for a in layout.axes), _ci(m["codes_minus_raw"]),
            _short_verdict(m["codes_minus_raw"]), (m["codes_minus_raw"] or {}).get("size") or "–",
            _mean(m["linear_codes_minus_raw"]), _mean(m["knn_codes_minus_raw"]),
            accuracy, _number(m["psnr_mean"], 2), _number(m["val_loss"], 5), _seconds(trial["seconds"]),
            str(trial["retries"] or 0)]


def _trials_markdown(trials: list[dict], layout: Layout) -> Block:
    header = TRIAL_HEADER[:2] + layout.axes + TRIAL_HEADER[2:]
    rows = [_trial_cells(t, layout) + [f"[{t['link_text']}]({t['link_md']})" if t["link_md"] else "–"]
            for t in trials]
    return Block("table", header=header, rows=rows, align=_align(layout), text=TRIAL_CAPTION)


def _trials_html(trials: list[dict], layout: Layout) -> str:
    """The trials table as the run report draws tables, with each trial's run linked (relative to the sweep)."""
    header, align = TRIAL_HEADER[:2] + layout.axes + TRIAL_HEADER[2:], _align(layout)
    head = "".join(f'<th class="{a}">{_inline(h)}</th>' for h, a in zip(header, align))
    body = []
    for trial in trials:
        cells = [_cell(v, a) for v, a in zip(_trial_cells(trial, layout), align)]
        link = trial["link_html"]
        cells.append(f'<td><a href="{html.escape(link)}" title="{html.escape(str(trial["key"]))}">'
                     f"{trial['link_text']}</a></td>" if link else "<td>–</td>")
        body.append("<tr>" + "".join(cells) + "</tr>")
    return (f'<div class="table-wrap"><table><caption>{_inline(TRIAL_CAPTION)}</caption><thead><tr>{head}</tr>'
            f"</thead><tbody>{''.join(body)}</tbody></table></div>")


def _best_block(best: dict, objective: str) -> Block:
    words = {"codes_minus_raw": "codes - raw accuracy (mlp)", "psnr_mean": "mean DAE PSNR (dB)",
             "val_loss": "validation loss (MSE)"}
    rows = []
    for metric, entry in best.items():
        name = words[metric] + (" (the sweep's objective)" if OBJECTIVE_METRIC.get(objective) == metric else "")
        if entry is None:
            rows.append([name, RANKED[metric], "–", "no complete trial has it", "–"])
            continue
        value = (_ci(entry["codes_minus_raw"]) + f" ({entry['codes_minus_raw']['verdict']})"
                 if metric == "codes_minus_raw" else _number(entry["value"], 2 if metric == "psnr_mean" else 5))
        rows.append([name, RANKED[metric], f"#{entry['number']} `{entry['key']}`"
                     + (" ★" if entry["study_choice"] else ""), value, _settings(entry["params"])])
    return Block("table", header=["objective", "better", "best trial", "value", "settings"], rows=rows, align="lllrl")


def blocks_for(trials: list[dict], layout: Layout, data: dict, figures: dict, html_page: bool) -> list[Block]:
    """The report's blocks; ``html_page`` leaves a placeholder where the linked trials table goes."""
    blocks = [Block("headline", text="What the sweep found", items=data["headline"])]
    blocks += [Block("banner", text=note) for note in layout.notes]
    blocks += [Block("section", text="Feature quality: codes - raw against " + (layout.x or "the trials"),
                     id="curve")]
    if "difference" in figures:
        blocks.append(Block("figure", path=figures["difference"], text=(
            f"One curve per {layout.group or 'combination of the other axes'}; the error bars are the probe's 95% "
            "interval over classifier seeds x test images for that trial's one trained DAE (its training seed "
            f"is not resampled). ★: the study's choice ({STUDY_CHOICE}). Left: the study's mlp classifier; right: "
            "linear and kNN probes.")))
    else:
        blocks.append(Block("note", text="No trial has a probe result yet: no curve."))
    blocks.append(Block("section", text="Denoising: DAE PSNR per evaluated noise level", id="psnr"))
    blocks.append(Block("figure", path=figures["psnr"], text="Each line one trial (colour: "
                        f"{layout.group or 'one colour'}; lighter: a lower {layout.x}); thick: the study's choice.")
                  if "psnr" in figures else Block("note", text="No trial has been evaluated yet: no PSNR."))
    blocks.append(Block("section", text="Heatmap" + (f": {layout.heatmap[0]} x {layout.heatmap[1]}"
                                                     if layout.heatmap else ""), id="heatmap"))
    if layout.heatmap is None:
        blocks.append(Block("note", text="No heatmap: the grid has one axis (a heatmap needs two)."))
    elif "heatmap" in figures:
        over = data["heatmap"]["averaged_over"]
        blocks.append(Block("figure", path=figures["heatmap"], text="Complete trials only; a cell with several "
                            f"trials (over {', '.join(over)}) shows their mean." if over else
                            "Complete trials only; the others show their state."))
    else:
        blocks.append(Block("note", text="No complete trial yet: no heatmap."))
    blocks += [Block("section", text="Best trial per objective", id="best"),
               _best_block(data["best"], layout.objective),
               Block("p", text=f"The sweep's objective (what Optuna records): `{layout.objective}`. Complete "
                     "trials only; a tie goes to the first in grid order.")]
    blocks.append(Block("section", text="Every trial", id="trials"))
    blocks.append(Block("p", text=_TABLE_TOKEN) if html_page else _trials_markdown(trials, layout))
    blocks.append(Block("section", text="How to read this", id="reading"))
    blocks.append(Block("p", text="Each trial is **one trained DAE** (one training seed), trained, evaluated and "
                        "probed at the budget the spec's `[train]`, `[evaluate]` and `[probe]` set (a quick "
                        "budget's numbers are not the study's 100 epochs'); its verdict is worded "
                        "\"for this one trained DAE\" because the interval covers the classifier's seeds and the "
                        "test images, not the DAE's own training. Two trials' intervals are not a test of the "
                        "difference between them; rerun a pair with several DAE seeds (`daelab probe` on "
                        "several run directories) to ask that."))
    spec = layout.spec
    blocks.append(Block("kv", rows=[(section, json.dumps(spec.get(section), default=str))
                                    for section in ("sweep", "train", "model", "evaluate", "probe", "grid", "report")
                                    if spec.get(section) is not None]))
    return blocks


# ------------------------------------------------------------------------------ the files
def write_sweep_report(out_dir: str | os.PathLike, rows: list[dict], spec) -> dict[str, Path]:
    """Write ``sweep.html``, ``sweep.md``, ``sweep.json`` (and ``figures/sweep_*.png``) into ``out_dir``.

    Parameters
    ----------
    out_dir : str or os.PathLike
        The sweep's directory (``[sweep] out``); created if missing.
    rows : list of dict
        One per grid point (its latest trial): ``number``, ``key``, ``state`` (``COMPLETE``,
        ``RUNNING``, ``FAIL``, ``WAITING``, ``PRUNED``), ``params`` (``{"train.noise.kind": ...}``),
        ``run_dir``, ``seconds``, ``value``, ``retries``. Grid points without a row show as
        ``NOT STARTED``.
    spec : SweepSpec or dict
        The sweep's spec: an object with ``raw`` (the TOML's dict) or that dict
        (``{"sweep": {...}, "grid": {...}, "report": {...}, ...}``).

    Returns
    -------
    dict
        ``{"html": Path, "md": Path, "json": Path}``.
    """
    out_dir = Path(out_dir)
    layout = layout_of(spec)
    try:
        (out_dir / "figures").mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise output_error(out_dir / "figures", exc) from None
    trials = collect_trials(list(rows), layout, out_dir)
    data = {"curves": curves(trials, layout), "heatmap": heatmap(trials, layout), "best": best_trials(trials)}
    data["headline"] = headline(trials, data["best"], layout)
    figures = {}
    for name, draw in (("difference", lambda p: plot_differences(p, data["curves"], layout)),
                       ("psnr", lambda p: plot_psnr(p, trials, layout)),
                       ("heatmap", lambda p: data["heatmap"] is not None and plot_heatmap(p, data["heatmap"]))):
        path = out_dir / FIGURES[name]
        if draw(path):
            figures[name] = FIGURES[name]
        else:
            path.unlink(missing_ok=True)  # an old figure would show trials that are no longer what it drew
    title = f"Sweep {layout.name}"
    subtitle = (f"{len(trials)} grid points over {', '.join(layout.axes) or 'no axes'} · objective "
                f"`{layout.objective}` · written {_dt.datetime.now().astimezone().strftime('%Y-%m-%d %H:%M %Z')} "
                "by daelab")
    page = to_html(title, subtitle, blocks_for(trials, layout, data, figures, True), out_dir)
    page = page.replace(f"<p>{_TABLE_TOKEN}</p>", _trials_html(trials, layout))
    markdown = to_markdown(title, subtitle, blocks_for(trials, layout, data, figures, False), out_dir)
    paths = {"html": out_dir / HTML_FILE, "md": out_dir / MARKDOWN_FILE, "json": out_dir / JSON_FILE}
    keep = ("number", "key", "state", "params", "run_dir", "seconds", "value", "retries", "metrics", "error",
            "study_choice")
    try:
        write_json(paths["json"], {"version": 1, "name": layout.name, "objective": layout.objective,
                                   "axes": layout.axes, "x": layout.x, "group": layout.group,
                                   "heatmap_axes": list(layout.heatmap) if layout.heatmap else None,
                                   "notes": layout.notes, "study_choice": STUDY_CHOICE,
                                   "rows": [{k: t[k] for k in keep} for t in trials], "curves": data["curves"],
                                   "heatmap": data["heatmap"], "best": data["best"], "headline": data["headline"],
                                   "figures": figures, "spec": layout.spec})
        for key, text in (("html", page), ("md", markdown)):
            atomic_write(paths[key], lambda handle, text=text: handle.write(text.encode()))
    except OSError as exc:
        raise output_error(out_dir, exc) from None
    return paths
