"""``probe.md``: the probe's report as a Markdown page (results table, comparisons, headline, figures).

Every interval on the page says what it is over: the Student-t interval over the first DAE's
classifier seeds (or test images, for a deterministic probe) that the probe has always reported,
and the interval over DAE seeds x classifier seeds x test images that the verdicts follow.
"""
from __future__ import annotations

from daelab.report._dae_seeds import _per_dae  # one wording of the per-DAE accuracies, probe.md and the report
from daelab.study import claimed_sentence


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
    over = report.get("interval_over", {})
    several = over.get("dae_seeds", 1) != 1
    design = (f"{over['dae_seeds']} trained DAE{'s' if several else ''} (seed{'s' if several else ''} "
              f"{', '.join(map(str, report.get('dae_seeds', [])))}) x {over['classifier_seeds']} classifier seeds x "
              f"{over['test_images']} test images" if over else "")
    lines = [f"# Feature probes: {report['run_dir']}", "",
             f"{report['data']['split']}. Seeds: {report['seeds']}; the t-intervals are {pct}% Student-t intervals "
             "over the first DAE's classifier seeds (a deterministic probe: over its test images)."]
    if over:
        lines += ["", f"**What the verdicts rest on:** {pct}% intervals over {design}, paired: {over['method']} "
                      f"(bootstrap: {over['n_boot']} replicates). Verdicts hold {over['scope']}: "
                      + ("the DAE's training seed -- and the CPU, which changes the trained codes as a new seed "
                         "would -- is not in the interval." if over["dae_seeds"] == 1 else
                         "the DAE's training seed is resampled with the rest.")]
    per_dae = ["per DAE seed (mean over classifier seeds)"] if several else []
    lines += ["", "| " + " | ".join(["feature", "probe", "test accuracy (mean ± std)", f"{pct}% t-interval", "n",
                                     f"{pct}% interval over the design", *per_dae, "varied between seeds"]) + " |",
              "|" + "---|" * (7 + len(per_dae))]
    for r in report["results"]:
        design_interval = f"[{r['interval']['lo']:.4f}, {r['interval']['hi']:.4f}]" if "interval" in r else "–"
        by_dae = [_per_dae(r, report.get("dae_seeds", []))] if several else []
        lines.append("| " + " | ".join([r["feature"], r["probe"], f"{r['mean']:.4f} ± {r['std']:.4f}",
                                         f"[{r['lo']:.4f}, {r['hi']:.4f}]", str(r["n"]), design_interval, *by_dae,
                                         str(r["varied"])]) + " |")
    lines += ["", f"| probe | comparison | mean difference | {pct}% t-interval | paired over | "
                  f"{pct}% interval over the design | over (DAE seeds × classifier seeds × images) | verdict | "
                  "its size against the margin |",
              "|---|---|---|---|---|---|---|---|---|"]
    for c in report["comparisons"]:
        if "interval" in c:
            o = c["interval_over"]
            design_interval = f"[{c['interval']['lo']:+.4f}, {c['interval']['hi']:+.4f}]"
            sizes = f"{o['dae_seeds']} × {o['classifier_seeds']} × {o['test_images']}"
        else:
            design_interval = sizes = "–"
        lines.append(f"| {c['probe']} | {c['a']} − {c['b']} | {c['mean']:+.4f} | [{c['lo']:+.4f}, {c['hi']:+.4f}] | "
                     f"{c['n']} {c['over']} | {design_interval} | {sizes} | "
                     f"**{c.get('verdict_scoped', c['verdict'])}** | {c.get('size_verdict', '–')} |")
    study = report["study"]
    lines += ["", f"The study (one run each): codes {study['codes_accuracy']}, raw {study['raw_accuracy']} "
                  f"(claimed {study['codes_claimed']} vs {study['raw_claimed']}).", ""]
    if report["headline"]:
        h = report["headline"]
        if "interval" in h:
            lines.append(f"**Headline ({h['probe']}, {h['a']} vs {h['b']}): {h['verdict_scoped']}** (difference "
                         f"{h['interval']['mean']:+.4f}, {pct}% interval [{h['interval']['lo']:+.4f}, "
                         f"{h['interval']['hi']:+.4f}] over {design}; the t-interval over {h['n']} {h['over']} "
                         f"alone: [{h['lo']:+.4f}, {h['hi']:+.4f}], {h['seeds_verdict']}).")
            if "size_verdict" in h:  # probe.json of daelab before the margin has none
                lines.append("")
                lines.append(f"**Its size, against a margin of ±{h['margin']:g}: {h['size_verdict']}.** "
                             f"{claimed_sentence(h)}".rstrip())
        else:
            lines.append(f"**Headline ({h['probe']}, {h['a']} vs {h['b']}): {h['verdict']}** "
                         f"(difference {h['mean']:+.4f}, {pct}% interval [{h['lo']:+.4f}, {h['hi']:+.4f}]).")
    figures = report["figures"]
    lines += ["", " ".join(f"![{name}]({path})" for name, path in figures.items()), ""]
    return "\n".join(lines)

