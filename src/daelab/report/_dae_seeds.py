"""The report's DAE-seed sections and design intervals: what a run of several trained DAEs adds.

A reproduction may train the same config once per DAE seed; the probe then computes its intervals
over the whole design (DAE seeds x classifier seeds x test images) and the evaluation a table over
the DAEs (``evaluation.json["dae_seeds"]``). This module says what such an interval is over
(:func:`_design`, :func:`_row_design`), turns a probe's results row or comparison into the numbers
the report shows and the rule judges (:func:`_design_stat`, :func:`_comparison_cells`,
:func:`_per_dae`, :func:`_seeds_mse`), and builds the two DAE-seed tables: the trained DAEs
(:func:`_daes_table`) and the denoising over them (:func:`_dae_seeds_table`). Each gives nothing
for a run of one DAE. :mod:`daelab.report._content` places them in its sections.
"""
from __future__ import annotations

import math

from daelab.report._format import _ci, _level_of, _seconds
from daelab.report._render import Block


# ---------------------------------------------------------------------------------- design intervals
def _design(over: dict | None) -> str:
    """What an interval is over, in words: ``3 DAEs x 5 classifier seeds x 10,000 test images``."""
    if not over:
        return ""
    daes = over.get("dae_seeds", 1)
    parts = [f"{daes} DAE{'s' if daes != 1 else ''}", _classifier_seeds(over),
             f"{over.get('test_images', 0):,} test images"]
    return " x ".join(parts)


def _classifier_seeds(over: dict) -> str:
    seeds = over.get("classifier_seeds", "?")
    return f"{seeds} classifier seed{'' if seeds == 1 else 's'}"


# The feature sets a DAE produces (daelab.probe.DAE_FEATURES, named here so the report imports no probe code).
_DAE_FEATURES = ("codes", "codes_noisy")


def _row_design(row: dict) -> str:
    """What a results row's design interval is over: ``5 classifier seeds x 10,000 test images`` for a feature set
    no DAE produces (raw pixels, PCA: the DAE seeds do not enter), else :func:`_design`."""
    over = row.get("interval_over") or {}
    if row.get("feature") in _DAE_FEATURES or not over:
        return _design(over)
    return f"{_classifier_seeds(over)} x {over.get('test_images', 0):,} test images"


def _design_stat(row: dict | None) -> dict | None:
    """A results row's accuracy as the rule judges it: its interval over the design where the probe computed one
    (``n`` 1 when nothing was resampled, so the rule says undetermined), else its t-summary over seeds."""
    if not row or "interval" not in row:
        return row
    interval, over = row["interval"], row.get("interval_over") or {}
    return {"mean": interval["mean"], "lo": interval["lo"], "hi": interval["hi"],
            "n": 2 if over.get("resampled", [None]) else 1, "over": _row_design(row)}


def _per_dae(row: dict, dae_seeds: list) -> str:
    """Each DAE seed's accuracy (mean over classifier seeds) of a results row: ``seed 0: 0.8736 · seed 1: ...``."""
    by_dae = row.get("accuracies_by_dae") or []
    if len(by_dae) < 2:
        return "–"
    seeds = dae_seeds if len(dae_seeds) == len(by_dae) else range(len(by_dae))
    return " · ".join(f"seed {s}: {sum(accs) / len(accs):.4f}" for s, accs in zip(seeds, by_dae))


def _comparison_cells(c: dict) -> tuple[str, str, str]:
    """(difference, interval, over) of a comparison: the design interval where the probe computed one."""
    if "interval" in c:  # over DAE seeds x classifier seeds x test images (probe_runs)
        i = c["interval"]
        return f"{i['mean']:+.4f}", f"[{i['lo']:+.4f}, {i['hi']:+.4f}]", _design(c.get("interval_over"))
    interval = "–" if c.get("lo") is None else f"[{c['lo']:+.4f}, {c['hi']:+.4f}]"
    return f"{c['mean']:+.4f}", interval, f"{c['n']} {c['over']}"


# ---------------------------------------------------------------------------------- DAE-seed tables
def _daes_table(state: dict | None) -> list[Block]:
    """The trained DAEs of a reproduction, one row per DAE seed (none for one DAE: the section above is it)."""
    daes = ((state or {}).get("stages", {}).get("train") or {}).get("daes") or []
    if len(daes) < 2:
        return []

    def loss(value):
        return "–" if value is None else f"{value:.5f}"

    rows = [[str(d.get("seed")), f"`{d.get('run_dir')}`", str(d.get("epochs_run", "–")), loss(d.get("best_val_loss")),
             loss(d.get("final_val_loss")), _seconds(d.get("seconds")),
             "trained" if d.get("status") == "done" else "not finished"] for d in daes]
    total = sum(d.get("seconds") or 0.0 for d in daes)
    return [Block("h3", f"{len(daes)} trained DAEs"),
            Block("table", f"The same config trained once per DAE seed (training ran {len(daes)} times, "
                           f"{_seconds(total)} in all); the numbers above are the first DAE's. The probe and the "
                           "denoising intervals below are over all of them.",
                  header=["DAE seed", "run directory", "epochs", "best val loss", "final val loss", "training time",
                          "status"], rows=rows, align="llrrrrl")]


def _dae_seeds_table(section: dict | None) -> list[Block]:
    """The denoising table over several trained DAEs (``evaluation.json["dae_seeds"]``); nothing without one."""
    if not section or not section.get("levels"):
        return []
    over = section.get("interval_over", {})
    daes = over.get("dae_seeds", len(section.get("seeds", [])))
    rows = []
    for level in section["levels"]:
        dae, gains = level["dae"], level.get("gain", {})
        best = [(name, gain) for name, gain in gains.items() if name != "noisy"]
        rows.append([level["noise"], str(len(level.get("per_dae", [])) or daes), _ci(dae.get("psnr"), 2),
                     " / ".join(f"{d['psnr']:.2f}" for d in level.get("per_dae", [])) or "–",
                     _ci(dae.get("ssim"), 3), _ci(dae.get("mse"), 5), _ci(gains.get("noisy"), 2),
                     f"{best[0][0]}: {_ci(best[0][1], 2)}" if best else "–"])
    seeds = ", ".join(str(s) for s in section.get("seeds", []))
    return [Block("h3", f"Over {daes} trained DAEs (seeds {seeds})"),
            Block("table", f"Mean [95% interval] over {daes} DAE seeds x {over.get('test_images', 0):,} test images "
                           f"({over.get('method', 'resampled together')}), so these hold {over.get('scope', '')}; "
                           "per DAE: each DAE's mean PSNR over the images (seeds in the order above). Gains are "
                           "paired per image: over the noisy input, and over the level's best baseline on the images "
                           "it was scored on. The table above is the first DAE's alone.", rows=rows,
                  header=["noise", "DAEs", "PSNR (dB)", "PSNR per DAE", "SSIM", "MSE (R_loss)",
                          "gain over noisy (dB)", "gain over the best baseline (dB)"], align="lrrrrrrr")]


def _seeds_mse(evaluation: dict | None, p: float) -> dict | None:
    """The DAE's MSE at uniform P = ``p`` over DAE seeds x images (``evaluation.json["dae_seeds"]``), or None."""
    section = (evaluation or {}).get("dae_seeds") or {}
    for level in section.get("levels", []):
        family, value = _level_of(level["noise"])
        mse = level.get("dae", {}).get("mse")
        if family == "uniform" and value is not None and math.isclose(value, p) and mse:
            over = section.get("interval_over", {})
            return {**mse, "over": f"{over.get('dae_seeds', '?')} DAEs x {over.get('test_images', 0):,} test images"}
    return None
