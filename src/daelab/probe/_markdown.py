"""``probe.md``: the probe's report as a Markdown page (results table, comparisons, headline, figures)."""
from __future__ import annotations


def format_markdown(report: dict) -> str:
    """``probe.md``: the results table (feature x probe) and the comparisons with their verdicts.

    Parameters
    ----------
    report : dict
        The content of ``probe.json``, as :func:`daelab.probe.probe_run` returns it.

    Returns
    -------
    str
        The Markdown page.
    """
    pct = int(round(100 * report["level"]))
    lines = [f"# Feature probes: {report['run_dir']}", "",
             f"{report['data']['split']}. Seeds: {report['seeds']}; intervals are {pct}% Student-t intervals.", "",
             f"| feature | probe | test accuracy (mean ± std) | {pct}% interval | n | varied between seeds |",
             "|---|---|---|---|---|---|"]
    for r in report["results"]:
        lines.append(f"| {r['feature']} | {r['probe']} | {r['mean']:.4f} ± {r['std']:.4f} | "
                     f"[{r['lo']:.4f}, {r['hi']:.4f}] | {r['n']} | {r['varied']} |")
    lines += ["", f"| probe | comparison | mean difference | {pct}% interval | paired over | verdict |",
              "|---|---|---|---|---|---|"]
    for c in report["comparisons"]:
        lines.append(f"| {c['probe']} | {c['a']} − {c['b']} | {c['mean']:+.4f} | [{c['lo']:+.4f}, {c['hi']:+.4f}] | "
                     f"{c['n']} {c['over']} | **{c['verdict']}** |")
    study = report["study"]
    lines += ["", f"The study (one run each): codes {study['codes_accuracy']}, raw {study['raw_accuracy']} "
                  f"(claimed {study['codes_claimed']} vs {study['raw_claimed']}).", ""]
    if report["headline"]:
        h = report["headline"]
        lines.append(f"**Headline ({h['probe']}, {h['a']} vs {h['b']}): {h['verdict']}** "
                     f"(difference {h['mean']:+.4f}, {pct}% interval [{h['lo']:+.4f}, {h['hi']:+.4f}]).")
    lines += ["", f"![confusion]({report['figures']['confusion']}) ![accuracy]({report['figures']['accuracy']})", ""]
    return "\n".join(lines)
