"""The report of a run: what the study claimed, what this run measured, side by side.

The blocks of the report, from what the stages wrote into a run directory (``config.json``,
``metrics.jsonl``, ``evaluation.json``, ``probe.json``, ``reproduce.json``, read by
:mod:`daelab.report._files`, and the figures those files list). It recomputes nothing: every
number comes from those files (the model table is a description of the architecture, built
from the config). Sections follow the study's order (model, training, denoising, probe), then the
study's own numbers beside ours with a stated rule for "matched" / "beaten" / "not matched", then
the run's settings, software, hardware and stage times. A stage that has not run shows a note.
What several trained DAEs add (the design intervals, the DAE-seed tables) comes from
:mod:`daelab.report._dae_seeds`; the shared number formats from :mod:`daelab.report._format`.
"""
from __future__ import annotations

import json
import math
from pathlib import Path

from daelab import study
from daelab.report._dae_seeds import (
    _comparison_cells,
    _dae_seeds_table,
    _daes_table,
    _design,
    _design_stat,
    _per_dae,
    _row_design,
    _seeds_mse,
)
from daelab.report._format import _ci, _level_of, _seconds
from daelab.report._render import Block
from daelab.report._rule import BEATEN, MATCHED, NOT_MATCHED, RULE, judge, judge_sentence


# ---------------------------------------------------------------------------------- helpers
def _find_level(evaluation: dict | None, p: float) -> dict | None:
    for level in (evaluation or {}).get("levels", []):
        family, value = _level_of(level["noise"])
        if family == "uniform" and value is not None and math.isclose(value, p):
            return level
    return None


def _probe_row(probe: dict | None, feature: str, kind: str = "mlp") -> dict | None:
    return next((r for r in (probe or {}).get("results", []) if r["feature"] == feature and r["probe"] == kind), None)


def _verdict(c: dict) -> str:
    return c.get("verdict_scoped", c["verdict"])


# ---------------------------------------------------------------------------------- sections
def _model_section(config: dict | None) -> list[Block]:
    blocks = [Block("section", "Model", id="model")]
    if not config:
        return blocks + [Block("note", "Not run: config.json is missing, so there is no model to describe.")]
    import torch

    from daelab.config import from_jsonable
    from daelab.models import ModelConfig, build_model, summary_rows
    with torch.device("meta"):  # shapes and counts only: no weights, however large the config says it is
        rows, totals = summary_rows(build_model(from_jsonable(ModelConfig, config["model"])))
    table = [[f"{name} ({kind})", str((None, *shape)), f"{params:,}"] for name, kind, shape, params in rows]
    layers = Block("table", header=["layer (type)", "output shape", "parameters"], rows=table, align="llr")
    same = all(totals[key] == study.PARAMS[key] for key in study.PARAMS)
    totals_table = Block("table", header=["parameters", "ours", "the study"], align="lrr", rows=[
        [label, f"{totals[key]:,}", f"{study.PARAMS[key]:,}"]
        for key, label in (("total", "total"), ("trainable", "trainable"), ("non_trainable", "non-trainable"))])
    side = [Block("p", f"The `{config['model']['name']}` denoising autoencoder (code width "
                       f"{config['model'].get('code_dim', '?')}), parameters counted as Keras counts them: "
                       "BatchNorm running statistics are non-trainable."), totals_table,
            Block("p", "**Same parameter counts as the study.**" if same else
                  "**The parameter counts differ from the study's** (a different model config).")]
    return blocks + [Block("columns", children=[layers, Block("group", children=side)])]


def _training_section(run_dir: Path, config: dict | None, metrics: list[dict],
                      state: dict | None = None) -> list[Block]:
    blocks = [Block("section", "Training", id="training")]
    if not metrics:
        return blocks + [Block("note", "Not run: metrics.jsonl is missing or empty.")] + _daes_table(state)
    train = (config or {}).get("train", {})
    best = min(metrics, key=lambda r: r["val_loss"])
    epoch_seconds = [r["epoch_seconds"] for r in metrics if r.get("epoch_seconds")]
    mean_epoch = sum(epoch_seconds) / len(epoch_seconds) if epoch_seconds else None
    images = f"the first {train['subset']:,}" if train.get("subset") else "all"
    blocks.append(Block("p", f"{len(metrics)} of {train.get('epochs', '?')} epochs (the study: {study.EPOCHS}), "
                             f"noise `{train.get('noise', '?')}`, batch {train.get('batch_size', '?')}, "
                             f"lr {train.get('lr', '?')}, {images} training images; validated on the noisy test "
                             "set as the study did."))
    blocks.append(Block("table", header=["final train loss", "final val loss", "best val loss (epoch)",
                                         "s / epoch", "training time"], align="rrrrr", rows=[[
        f"{metrics[-1]['train_loss']:.5f}", f"{metrics[-1]['val_loss']:.5f}",
        f"{best['val_loss']:.5f} ({best['epoch']})", "–" if mean_epoch is None else f"{mean_epoch:.2f}",
        _seconds(sum(epoch_seconds) if epoch_seconds else None)]]))
    if (run_dir / "loss_curve.png").is_file():
        blocks.append(Block("figure", "Training and validation loss per epoch (MSE, log scale).",
                            path="loss_curve.png"))
    return blocks + _daes_table(state)


def _denoising_section(evaluation: dict | None) -> list[Block]:
    blocks = [Block("section", "Denoising", id="denoising")]
    if not evaluation:
        return blocks + [Block("note", "Not run: evaluation.json is missing (run `daelab evaluate RUN_DIR`).")]
    figures = evaluation.get("figures", {})
    n_dae, n_base = evaluation["n_images"]["dae"], evaluation["n_images"]["baselines"]
    blocks.append(Block("p", f"Checkpoint `{evaluation['checkpoint']['file']}` (epoch "
                             f"{evaluation['checkpoint']['epoch']}); one seeded noise draw per level (seed "
                             f"{evaluation['seed']}) shared by every method. R_loss is the per-image MSE against "
                             "the raw image, as in the study; means come with 95% t-intervals over images."))
    for level in evaluation["levels"]:
        spec = level["noise"]
        if spec in figures.get("examples", {}):
            blocks += [Block("h3", f"Noise {spec}"),
                       Block("figure", f"Rows: raw, noisy ({spec}), denoised by the DAE; R_loss above each image.",
                             path=figures["examples"][spec])]
    rows = []
    for level in evaluation["levels"]:
        for name, label in (("noisy", "noisy input"), ("dae", "DAE")):
            m = level["full"]["methods"][name]
            rows.append([level["noise"], label, f"{m['mse']['n']:,}", _ci(m["mse"], 5), _ci(m["psnr"], 2),
                         _ci(m["ssim"], 3)])
    blocks += [Block("h3", "Full test set"),
               Block("table", f"Mean [95% interval] over {n_dae:,} test images.", rows=rows, align="llrrrr",
                     header=["noise", "images", "n", "MSE (R_loss)", "PSNR (dB)", "SSIM"])]
    blocks += _dae_seeds_table(evaluation.get("dae_seeds"))
    table = evaluation.get("headline", {})
    if table.get("methods"):
        gain_rows = []
        for name, gains in zip(table["methods"], table["psnr_gain_db"]):
            best_at = [g is not None and g == max(x for x in column if x is not None)
                       for g, column in zip(gains, zip(*table["psnr_gain_db"]))]
            gain_rows.append([name] + ["–" if g is None else (f"**{g:+.2f}**" if b else f"{g:+.2f}")
                                       for g, b in zip(gains, best_at)])
        blocks += [Block("h3", "PSNR gain over the noisy input: DAE vs classical baselines"),
                   Block("table", f"Mean gain in dB on a common seeded subsample of {n_base or n_dae:,} images "
                                  "(the DAE row: the same images); best per level in bold; negative = the method "
                                  "makes images worse. `@oracle`: the true noise sigma; `@estimated`: sigma "
                                  "estimated from the noisy image.", header=["method", *table["noise"]],
                         rows=gain_rows)]
    if figures.get("psnr_gain"):
        blocks.append(Block("figure", "PSNR gain with 95% intervals per method and noise level.",
                            path=figures["psnr_gain"]))
    if figures.get("robustness"):
        blocks.append(Block("figure", f"Robustness: the DAE's PSNR gain across noise families it was not trained "
                                      f"on ({evaluation['robustness']['n']:,} test images per cell).",
                            path=figures["robustness"]))
    extended = [Block("figure", f"{spec}: raw, noisy, DAE and each baseline (oracle sigma).", path=path)
                for spec, path in figures.get("examples_extended", {}).items()]
    if extended:
        blocks.append(Block("details", "Example images of every baseline", children=extended))
    return blocks


def _probe_section(probe: dict | None) -> list[Block]:
    blocks = [Block("section", "Feature probe: codes vs raw pixels", id="probe")]
    if not probe:
        return blocks + [Block("note", "Not run: probe.json is missing (run `daelab probe RUN_DIR`).")]
    data = probe.get("data", {})
    pct = int(round(100 * probe.get("level", 0.95)))
    split = data.get("split", "")
    over = probe.get("interval_over")
    scope = (f" The comparisons' {pct}% intervals are over {_design(over)} (resampled together; "
             f"{over.get('method', '')}), so their verdicts hold {over.get('scope', '')}." if over else "")
    dae_seeds = probe.get("dae_seeds") or []
    several = len(dae_seeds) > 1
    runs = (f"the runs of every DAE seed ({', '.join(map(str, dae_seeds))}) x classifier seed, pooled"
            if several else "classifier seeds")
    blocks.append(Block("p", f"{split[:1].upper()}{split[1:]}. Classifier seeds {probe.get('seeds')}; the accuracy "
                             f"table's {pct}% t-intervals are over {runs} (deterministic probes run once per DAE); "
                             f"the design intervals beside them are over every source of chance the design has."
                             f"{scope}"))
    rows = []
    for r in probe.get("results", []):
        spread = r.get("n", 1) > 1  # a deterministic probe runs once: no spread, no interval
        design = (f"{_ci(r['interval'], 4).partition(' ')[2]} over {_row_design(r)}" if "interval" in r else "–")
        rows.append([r["feature"], r["probe"], f"{r['mean']:.4f}", f"{r['std']:.4f}" if spread else "–",
                     _ci(r, 4).partition(" ")[2] if spread else "one run", str(r["n"]), design]
                    + ([_per_dae(r, dae_seeds)] if several else []))
    blocks.append(Block("table", header=["features", "probe", "test accuracy", "std", f"{pct}% t-interval", "runs",
                                         f"{pct}% interval over the design"]
                        + (["per DAE seed (mean over classifier seeds)"] if several else []),
                        rows=rows, align="llrrrrr" + ("l" if several else "")))
    comparisons = probe.get("comparisons", [])
    if comparisons:
        blocks.append(Block("table", "Paired differences (same classifier seeds, same split, same test images); a "
                                     "difference is called only when its interval excludes zero, and its size "
                                     "says where the same interval lies against ±margin.",
                            header=["probe", "comparison", "difference", f"{pct}% interval", "over", "verdict",
                                    "its size against the margin"],
                            align="llrrlll", rows=[[c["probe"], f"{c['a']} − {c['b']}", *_comparison_cells(c),
                                                    _verdict(c), c.get("size_verdict", "–")] for c in comparisons]))
    if probe.get("headline"):
        h = probe["headline"]
        difference, interval, design = _comparison_cells(h)
        blocks.append(Block("p", f"**Verdict ({h['probe']} probe, {h['a']} vs {h['b']}): {_verdict(h)}** "
                                 f"(difference {difference}, {pct}% interval {interval} over {design})."
                                 f"{_size_sentence(h)}"
                                 if interval != "–" else f"**Verdict ({h['probe']}, {h['a']} vs {h['b']}): "
                                                         f"{_verdict(h)}**."))
    figures = [Block("figure", caption, path=probe["figures"][key]) for key, caption in (
        ("accuracy", "Test accuracy per feature set and probe (mean and interval over seeds), with the study's "
                     "numbers."),
        ("seeds", "Each run's test accuracy as a dot (one colour and marker per DAE seed, a dot per classifier "
                  "seed) and the interval the verdict rests on as a bar."),
        ("confusion", "Confusion matrix of the best probe (rows: true class).")) if probe.get("figures", {}).get(key)]
    return blocks + [Block("columns", "figures", children=figures)]


def _size_sentence(comparison: dict) -> str:
    """`` Against a margin of ±0.01: **codes and raw within ±0.01**. The study's claimed ...``, or empty for a
    probe.json written before the margin."""
    if "size_verdict" not in comparison:
        return ""
    claimed = study.claimed_sentence(comparison)
    return (f" Against a margin of ±{comparison['margin']:g} (`--margin`): **{comparison['size_verdict']}**."
            + (f" {claimed}" if claimed else ""))


def study_comparisons(evaluation: dict | None, probe: dict | None) -> list[dict]:
    """Each of the study's numbers beside ours: ``{what, study, ours, verdict, sentence}``."""
    from daelab.stats import mean_ci
    out = []
    for p, losses in study.R_LOSS.items():
        level = _find_level(evaluation, p)
        ours = _seeds_mse(evaluation, p) or (level["full"]["methods"]["dae"]["mse"] if level else None)
        study_mean = sum(losses) / len(losses)
        what = f"mean R_loss at uniform P = {p:g}"
        sentence = (judge_sentence(what, study_mean, ours, higher_is_better=False, over=ours.get("over", ""))
                    if ours else f"The study's {what} ({study_mean:.4f}) has no counterpart: this level was not "
                                 "evaluated.")
        out.append({"what": what, "study": study_mean, "study_ci": mean_ci(losses), "ours": ours,
                    "verdict": judge(study_mean, ours, False) if ours else "not run", "sentence": sentence})
    for feature, label in (("codes", "codes"), ("raw", "raw pixels")):
        ours = _design_stat(_probe_row(probe, feature))  # the interval the verdicts use, where there is one
        for value, kind in ((study.ACCURACY[feature], "printed"), (study.CLAIMED[feature], "claimed")):
            what = f"{kind} test accuracy on {label}"
            sentence = (judge_sentence(what, value, ours, higher_is_better=True, digits=4 if kind == "printed" else 2,
                                       over=ours.get("over", ""))
                        if ours else f"The study's {what} ({value}) has no counterpart: the probe was not run.")
            out.append({"what": what, "study": value, "ours": ours,
                        "verdict": judge(value, ours, True) if ours else "not run", "sentence": sentence})
    return out


def _study_section(evaluation: dict | None, probe: dict | None, comparisons: list[dict]) -> list[Block]:
    blocks = [Block("section", "The study's numbers beside ours", id="study"),
              Block("p", "The study printed ten per-image R_loss values per noise level (the first ten test "
                         "images, one noise draw) and one test accuracy per feature set (one run each). Ours are "
                         "means with 95% intervals over every source of chance our design has: for the accuracies, "
                         "DAE seeds x classifier seeds x test images (the interval the probe's verdicts use); for "
                         "R_loss, DAE seeds x test images where several DAEs were evaluated, else the test images."),
              Block("p", RULE)]
    rows = [[p, *[f"{v:.4f}" for v in losses], f"{sum(losses) / len(losses):.4f}"]
            for p, losses in study.R_LOSS.items()]
    blocks.append(Block("table", "The study's per-image R_loss (its printout).", rows=rows,
                        header=["P", *[f"img {i}" for i in range(1, 11)], "mean"]))
    blocks.append(Block("table", header=["quantity", "the study", "ours [95% interval]", "verdict"], align="lrrl",
                        rows=[[c["what"], f"{c['study']:.4f}" if c["study"] < 0.5 else f"{c['study']:.4f}",
                               _ci(c["ours"], 4) if c["ours"] else "not run", c["verdict"]] for c in comparisons]))
    blocks += [Block("p", c["sentence"]) for c in comparisons]
    note = ("**The study's conclusion is not backed by its own printout.** It concludes that the codes beat the "
            f"raw pixels, {study.CLAIMED['codes']} vs {study.CLAIMED['raw']}, but the accuracies it printed are "
            f"{study.ACCURACY['codes']} (codes) and {study.ACCURACY['raw']} (raw): the raw pixels were ahead, by "
            f"{study.ACCURACY['raw'] - study.ACCURACY['codes']:.4f}, in a single run each, which cannot separate them.")
    if probe and probe.get("headline"):
        h = probe["headline"]
        note += (f" Our paired comparison ({h['a']} − {h['b']}, {_comparison_cells(h)[2]}) says: {_verdict(h)}."
                 + _size_sentence(h))
    return blocks + [Block("p", note)]


def _run_section(config: dict | None, evaluation: dict | None, probe: dict | None, state: dict | None) -> list[Block]:
    blocks = [Block("section", "The run", id="run")]
    if state and state.get("stages"):
        daes = len(state.get("dae_seeds") or [None])
        rows = [[f"{name} ({daes} DAEs)" if name == "train" and daes > 1 else name, s.get("status", "?"),
                 _seconds(s.get("seconds")), (s.get("finished") or "–")[:19].replace("T", " ")]
                for name, s in state["stages"].items()]
        total = state.get("total_seconds", sum(s.get("seconds") or 0 for s in state["stages"].values()))
        rows.append(["**total**", "", f"**{_seconds(total)}**", ""])
        blocks += [Block("h3", f"Stages ({state.get('mode', '?')} mode)"),
                   Block("table", header=["stage", "status", "wall time", "finished"], rows=rows, align="llrl")]
        skipped = [f"{n}: {s.get('reason')}" for n, s in state["stages"].items() if s.get("status") == "skipped"]
        if skipped:
            blocks.append(Block("note", "Skipped: " + "; ".join(skipped)))
    else:
        blocks.append(Block("note", "No reproduce.json: the stages were not run by `daelab reproduce`, so their "
                                    "wall times were not recorded."))
    env = (state or {}).get("environment")
    if env:
        blocks += [Block("h3", "Software and hardware"), Block("kv", rows=[
            ["python", env.get("python")], ["torch", env.get("torch")], ["numpy", env.get("numpy")],
            ["scikit-learn", env.get("sklearn")], ["scikit-image", env.get("skimage")],
            ["daelab", env.get("daelab")], ["CPU", env.get("cpu")],
            ["cores (usable / total)", f"{env.get('cpu_affinity')} / {env.get('cpu_count')}"],
            ["torch threads", env.get("torch_threads")], ["GPU", env.get("gpu") or "none"],
            ["platform", env.get("platform")]])]
    if config and config.get("precision"):
        kernels = "daelab's fused C kernels" if config.get("kernels") == "fused" else "PyTorch ops"
        blocks.append(Block("p", f"Training step: {config['precision']} matrix products, {kernels}, on "
                                 f"{config.get('device', '?')}."))
    dae_seeds = (state or {}).get("dae_seeds") or (probe or {}).get("dae_seeds")
    seeds = [["training (DAE seeds)" if dae_seeds and len(dae_seeds) > 1 else "training",
              dae_seeds if dae_seeds and len(dae_seeds) > 1 else (config or {}).get("train", {}).get("seed", "–")],
             ["evaluation noise draws", (evaluation or {}).get("seed", "not run")],
             ["probe", (probe or {}).get("seeds", "not run")]]
    blocks += [Block("h3", "Seeds"), Block("kv", rows=seeds)]
    config = config or {}
    configs = [Block("group", children=[Block("h3", title), Block("kv", rows=[[k, json.dumps(v)]
                                                                               for k, v in values.items()])])
               for title, values in (("Model config", config.get("model")), ("Training config", config.get("train")),
                                     ("Evaluation config", (evaluation or {}).get("config")),
                                     ("Probe config", (probe or {}).get("config"))) if values]
    blocks.append(Block("columns", "figures", children=configs))
    if evaluation and evaluation.get("command"):
        blocks += [Block("p", "Evaluation command:"), Block("kv", rows=[["$", evaluation["command"]]])]
    return blocks


def _headline(config, metrics, evaluation, probe, comparisons) -> list[str]:
    """Three or four findings in plain words, each generated from the numbers."""
    items = []
    if evaluation and evaluation["levels"]:
        gains = [(lv["noise"], lv["psnr_gain"]["dae"]) for lv in evaluation["levels"] if "dae" in lv["psnr_gain"]]
        helped = [g for g in gains if g[1]["lo"] is not None and g[1]["lo"] > 0]
        lo_spec, lo = min(gains, key=lambda g: g[1]["mean"])
        hi_spec, hi = max(gains, key=lambda g: g[1]["mean"])
        worse = "" if lo["mean"] > 0 else " (negative: its output is further from the clean image than its input)"
        section = evaluation.get("dae_seeds") or {}
        daes = (f" (the first DAE; over its {section['interval_over']['dae_seeds']} trained DAEs in section 3)"
                if section.get("interval_over") else "")
        items.append(f"**Denoising:** the DAE raises PSNR above the noisy input's at {len(helped)} of {len(gains)} "
                     f"noise levels; its gain runs from {lo['mean']:+.2f} dB ({lo_spec}) to {hi['mean']:+.2f} dB "
                     f"({hi_spec}){worse}{daes}.")
        table = evaluation.get("headline", {})
        others = [i for i, m in enumerate(table.get("methods", [])) if m != "dae"]
        if others and "dae" in table["methods"]:
            dae = table["psnr_gain_db"][table["methods"].index("dae")]
            wins = 0
            for j, _ in enumerate(table["noise"]):
                best = max((table["psnr_gain_db"][i][j] for i in others if table["psnr_gain_db"][i][j] is not None),
                           default=None)
                wins += best is None or (dae[j] is not None and dae[j] > best)
            items.append(f"**Against classical denoisers:** the DAE has the highest mean PSNR gain at {wins} of "
                         f"{len(table['noise'])} levels ({len(others)} baseline variants, even those told the "
                         "true noise level).")
    else:
        items.append("**Denoising:** not evaluated yet.")
    if probe and probe.get("headline"):
        h = probe["headline"]
        codes, raw = _probe_row(probe, h["a"], h["probe"]), _probe_row(probe, h["b"], h["probe"])
        accs = f" ({codes['mean']:.4f} vs {raw['mean']:.4f})" if codes and raw else ""
        size = f"; against a ±{h['margin']:g} margin, {h['size_verdict']}" if "size_verdict" in h else ""
        items.append(f"**Features:** with the study's classifier ({_comparison_cells(h)[2]}), {h['a']} vs "
                     f"{h['b']}{accs}: **{_verdict(h)}**{size}.")
    else:
        items.append("**Features:** the probe has not been run.")
    counts = {v: sum(c["verdict"] == v for c in comparisons) for v in (MATCHED, BEATEN, NOT_MATCHED)}
    judged = sum(counts.values())
    if judged:
        items.append(f"**The study's numbers:** of {judged} we could compare, {counts[BEATEN]} beaten, "
                     f"{counts[MATCHED]} matched, {counts[NOT_MATCHED]} not matched (section 5).")
    return items


def _banner(config: dict | None, state: dict | None) -> list[Block]:
    train = (config or {}).get("train", {})
    images = f"{train['subset']:,}" if train.get("subset") else "all"
    if state and state.get("mode") == "quick":
        from daelab.reproduce import DAE_SEEDS
        daes = len(state.get("dae_seeds") or [None])
        fewer = (f", {daes} trained DAE{'s' if daes != 1 else ''} (the full study trains {DAE_SEEDS['full']}"
                 f"{', so its verdicts hold for this one trained DAE only' if daes == 1 else ''})"
                 if daes < DAE_SEEDS["full"] else f", {daes} trained DAEs")
        return [Block("banner", f"**Quick run.** This is `daelab reproduce --quick`: {train.get('epochs')} epochs on "
                                f"{images} training images{fewer}, subsampled baselines and a "
                                "shortened probe. Its numbers show the pipeline works; they are not the study "
                                "reproduced. Run `daelab reproduce` for that.")]
    if config and (train.get("epochs") != study.EPOCHS or train.get("subset")):
        subset = f", the first {train['subset']:,} training images" if train.get("subset") else ""
        return [Block("banner", f"**Not the study's settings:** {train.get('epochs')} epochs (the study: "
                                f"{study.EPOCHS}){subset}. Read the numbers as a check of the pipeline.")]
    return []


def blocks_from(run_dir: Path, inputs: dict) -> list[Block]:
    """The report's blocks from the stage files' values ``inputs`` (see :func:`daelab.report.read_inputs`)."""
    config, evaluation, probe, state = (inputs[k] for k in ("config", "evaluation", "probe", "state"))
    comparisons = study_comparisons(evaluation, probe)
    blocks = _banner(config, state)
    blocks.append(Block("headline", "Headline", items=_headline(config, inputs["metrics"], evaluation, probe,
                                                                comparisons)))
    blocks += _model_section(config)
    blocks += _training_section(run_dir, config, inputs["metrics"], state)
    blocks += _denoising_section(evaluation)
    blocks += _probe_section(probe)
    blocks += _study_section(evaluation, probe, comparisons)
    blocks += _run_section(config, evaluation, probe, state)
    return blocks
