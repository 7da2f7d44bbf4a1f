"""The ``daelab`` command line: a thin layer of argparse over the library.

Each subcommand parses its flags, calls one library function, and prints what it did. Errors the
user can cause end as ``daelab: error: <what> (<hint>)`` on stderr with exit code 2 (usage/input)
or 1 (runtime); ``--debug`` shows the traceback instead.
"""
from __future__ import annotations

import argparse
import contextlib
import logging
import sys
from pathlib import Path

from daelab import __version__
from daelab.config import (
    add_dataclass_args,
    build_config,
    check_config_keys,
    config_values,
    from_jsonable,
    read_config_file,
)
from daelab.errors import ConfigError, DaelabError

log = logging.getLogger("daelab")

# Settings that may change when a run is resumed; everything else is the checkpoint's.
# The warm restart is among them: it leaves the epochs before it as they were, so a finished cosine
# run can be continued into a restart schedule (natural-gray's lr 1e-3 weights were trained that way).
RESUMABLE = {"epochs", "device", "threads", "data_dir", "checkpoint_every", "early_stopping", "lr_restart_after",
             "lr_restart_peak"}


class _Formatter(argparse.ArgumentDefaultsHelpFormatter, argparse.RawDescriptionHelpFormatter):
    def _get_help_string(self, action):  # our helps already say their defaults
        return action.help


# The sections a --config file may hold (module, dataclass): one file can serve every command, and a
# typo in any of them is an error, not a silent default.
CONFIG_SECTIONS = {"train": ("daelab.train", "TrainConfig"), "model": ("daelab.models", "ModelConfig"),
                   "evaluate": ("daelab.evaluate", "EvalConfig"), "probe": ("daelab.probe", "ProbeConfig")}


def _read_config(path: Path) -> dict:
    """The values of a ``--config`` file, every section and setting name checked."""
    import importlib
    values = read_config_file(path)
    sections = {}
    for name, (module, cls) in CONFIG_SECTIONS.items():
        try:
            sections[name] = getattr(importlib.import_module(module), cls)
        except (ImportError, AttributeError):  # an optional stage missing: its section is checked by its command
            sections[name] = None
    check_config_keys(values, sections, path)
    return values


# What each command does, in a line: the top-level help lists these without building the commands'
# own parsers (which import torch).
SUMMARIES = {
    "train": "train a denoising autoencoder",
    "summary": "print a model's layer table",
    "evaluate": "score a trained DAE against noisy input and classical denoisers",
    "probe": "are the encoder's codes worth more than pixels?",
    "denoise": "denoise your own images with a trained run or a shipped model",
    "models": "list the shipped pretrained models and their measured figures",
    "reproduce": "redo the whole study into one run directory and write its report",
    "report": "write report.html and report.md of a run",
    "sweep": "train, evaluate and probe a grid of DAEs (Optuna trials) and chart what it shows",
}


# ------------------------------------------------------------------------------------ train
def _add_train(sub) -> None:
    from daelab.models import ModelConfig
    from daelab.train import TrainConfig
    p = sub.add_parser("train", formatter_class=_Formatter, help=SUMMARIES["train"],
                       description="Train a DAE. The defaults reproduce the study: the 784-512-512-256-196 MLP, "
                                   "Adam 1e-3, MSE, batch 256, 100 epochs, noise gaussian:0.1, validated on the "
                                   "noisy test set.",
                       epilog="examples:\n  daelab train --epochs 2 --subset 5000\n"
                              "  daelab train --config my.toml --run-dir runs/exp1\n"
                              "  daelab train --resume runs/exp1 --epochs 150")
    p.add_argument("--run-dir", type=Path, help="where to write the run (default: runs/<timestamp>)")
    p.add_argument("--resume", type=Path, metavar="RUN_DIR",
                   help="continue the run in RUN_DIR from its last checkpoint (may raise --epochs)")
    p.add_argument("--overwrite", action="store_true",
                   help="replace the run already in --run-dir: its checkpoints, metrics, TensorBoard events, "
                        "figures and evaluate/probe/report outputs")
    p.add_argument("--config", type=Path, metavar="FILE",
                   help="TOML/YAML/JSON file with [train] and [model] settings; explicit flags win")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    add_dataclass_args(p.add_argument_group("training"), TrainConfig)
    add_dataclass_args(p.add_argument_group("model"), ModelConfig)
    p.set_defaults(func=_run_train)


def _run_train(args) -> int:
    from daelab.checkpoint import LAST
    from daelab.models import ModelConfig
    from daelab.runs import RunLock, default_run_dir
    from daelab.train import TrainConfig, fit
    file_values = _read_config(args.config) if args.config else None
    if args.resume:
        if args.run_dir and args.run_dir != args.resume:
            raise ConfigError("--resume and --run-dir name different directories", "give only --resume RUN_DIR")
        RunLock(args.resume).check_free()  # a run still in training may have no checkpoint yet
        state = _resumable_state(Path(args.resume) / LAST)
        given = {k for k, v in vars(args).items() if v is not None} - {"func", "command", "config", "resume",
                                                                         "run_dir", "no_progress", "overwrite", "debug",
                                                                         "verbose", "quiet"}
        fixed = given - RESUMABLE
        if fixed:
            raise ConfigError(f"cannot change {', '.join(sorted(fixed))} when resuming",
                              f"only {', '.join(sorted(RESUMABLE))} may change; start a new run for the rest")
        model_config = state["model_config"]
        train_values = dict(state["train_config"])
        train_values.update({k: getattr(args, k) for k in given})
        config = from_jsonable(TrainConfig, train_values)
        run_dir = Path(args.resume)
    else:
        _scale_file_restart(file_values, args)
        config = build_config(TrainConfig, file_values, args, "train")
        model_config = build_config(ModelConfig, file_values, args, "model")
        run_dir = args.run_dir or default_run_dir()
    result = fit(model_config, config, run_dir, resume=bool(args.resume), progress=not args.no_progress,
                 overwrite=args.overwrite)
    if result["history"] and result["rank"] == 0:  # under torchrun, one line, not one per process
        last = result["history"][-1]
        print(f"trained {result['epochs_run']} epochs into {run_dir}: final val_loss {last['val_loss']:.5f}, "
              f"best {result['best_val_loss']:.5f}")
    return 0


def _scale_file_restart(file_values: dict | None, args) -> None:
    """A warm restart read from a config file keeps its place in the schedule when ``--epochs`` changes.

    ``configs/natural-gray.toml`` restarts after 40 of its 56 epochs; ``--config natural-gray.toml
    --epochs 5`` (a short try of the recipe) then restarts after 4 of 5, not after 40 of 5 (no epochs
    left for the second cosine). Only a restart from the file is scaled, and one that would leave no
    epoch on either side is dropped; ``--lr-restart-after`` on the command line is taken as given.
    Sets ``args.lr_restart_after`` and logs what it did.
    """
    if not file_values or args.epochs is None or args.lr_restart_after is not None:
        return
    from daelab.train import TrainConfig
    in_file = config_values(TrainConfig, file_values, None, "train")  # read as build_config reads it
    restart, epochs = in_file.get("lr_restart_after", 0), in_file.get("epochs")
    if epochs is None or not 0 < restart < epochs or epochs == args.epochs:
        return
    scaled = round(restart * args.epochs / epochs)
    args.lr_restart_after = scaled if 0 < scaled < args.epochs else 0
    log.info("--epochs %d: the config's warm restart after %d of %d epochs %s", args.epochs, restart, epochs,
             f"comes after {scaled} of {args.epochs}" if args.lr_restart_after else "is dropped (too few epochs)")


def _resumable_state(path: Path) -> dict:
    """The checkpoint at ``path``, checked in full before training touches it (one line if it is not fit).

    Returns the state with ``model_config`` as a :class:`ModelConfig`. Besides what
    :func:`daelab.checkpoint.load_checkpoint` checks, every weight and Adam moment must fit the model
    its config describes (built on the ``meta`` device: no memory, whatever the config claims).
    """
    import torch

    from daelab.checkpoint import check_resume_state, load_checkpoint
    from daelab.errors import CheckpointError, UsageError
    from daelab.models import ModelConfig, build_model
    from daelab.train import TrainConfig
    state = load_checkpoint(path)
    try:
        model_config = from_jsonable(ModelConfig, state.get("model_config", {}))
        from_jsonable(TrainConfig, dict(state.get("train_config", {})))
        with torch.device("meta"):
            skeleton = build_model(model_config)
    except (UsageError, TypeError, ValueError, RuntimeError) as exc:
        raise CheckpointError(f"{path} has invalid settings: {str(exc).splitlines()[0][:200]}",
                              "the file is damaged or from another daelab; start a new run") from None
    check_resume_state(state, skeleton, str(path))
    return {**state, "model_config": model_config}


# ---------------------------------------------------------------------------------- summary
def _add_summary(sub) -> None:
    from daelab.models import ModelConfig
    p = sub.add_parser("summary", formatter_class=_Formatter, help=SUMMARIES["summary"],
                       description="Print a Keras-like summary (layer, output shape, parameters, totals) of a "
                                   "registered model, or of the model in a run directory.")
    p.add_argument("run_dir", nargs="?", type=Path, metavar="MODEL",
                   help="a run directory or a shipped model's name (default: build from the flags)")
    add_dataclass_args(p.add_argument_group("model"), ModelConfig)
    p.set_defaults(func=_run_summary)


def _run_summary(args) -> int:
    from daelab.models import ModelConfig, build_model, format_summary
    if args.run_dir:
        from daelab.pretrained import resolve_model
        model, _ = resolve_model(args.run_dir)
    else:
        model = build_model(build_config(ModelConfig, None, args, "model"))
    print(format_summary(model))
    return 0


# --------------------------------------------------------------------------------- evaluate
def _add_evaluate(sub) -> None:
    from daelab.denoise import ENSEMBLE_HELP, ENSEMBLES
    from daelab.evaluate import EvalConfig
    p = sub.add_parser("evaluate", formatter_class=_Formatter, help=SUMMARIES["evaluate"],
                       description="Evaluate the DAE of RUN_DIR: MSE (R_loss), PSNR and SSIM with 95% intervals "
                                   "for the noisy input, the DAE (whole test set) and classical baselines (a seeded "
                                   "subsample), one fixed noise draw per level, plus a robustness matrix across "
                                   "noise families. Writes RUN_DIR/evaluation.json, evaluation.md and figures/.",
                       epilog="examples:\n  daelab evaluate runs/exp1\n"
                              "  daelab evaluate runs/exp1 --noise uniform:0.1 gaussian:0.2 --denoisers tv,nlm\n"
                              "  daelab evaluate runs/exp1 --denoisers none --robustness none\n"
                              "  daelab evaluate runs/study runs/study/daes/seed-*   # over 3 DAE seeds\n"
                              "  daelab evaluate runs/natural --images Set12 --noise awgn:15,25,50 --baselines bm3d "
                              "--out runs/natural/set12")
    p.add_argument("run_dirs", nargs="+", type=Path, metavar="RUN_DIR",
                   help="a run directory written by 'daelab train' (with --images: or a shipped model's name); "
                        "several DAEs of one config that differ only "
                        "in --seed add intervals over DAE seeds x images to the first one's evaluation.json")
    p.add_argument("--config", type=Path, metavar="FILE", help="TOML/YAML/JSON file with an [evaluate] section; "
                                                               "explicit flags win")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    group = p.add_argument_group("evaluation")
    group.add_argument("--noise", nargs="+", metavar="SPEC",
                       help="one or more noise specs NAME:L1,L2,... (default: uniform:0.05,0.1,0.2,0.3,0.4)")
    group.add_argument("--robustness", nargs="+", metavar="SPEC",
                       help="noise specs of the DAE robustness matrix, or none (default: gaussian, uniform, "
                            "salt_pepper and masking at four levels each)")
    add_dataclass_args(group, EvalConfig, skip=("noise", "robustness"))
    images = p.add_argument_group("an image folder (the published Set12 protocol: unclipped awgn, 8-bit PSNR/SSIM)")
    images.add_argument("--images", type=Path, metavar="DIR",
                        help="score the model of RUN_DIR on every grayscale image of DIR instead (default noise "
                             "awgn:15,25,50); writes OUT/evaluation.json with its image_results, .md and crops.png")
    images.add_argument("--baselines", dest="denoisers", metavar="NAMES",
                        help="classical denoisers beside it, comma-separated or none (default with --images: bm3d, "
                             "skipped with a note where the optional bm3d package is missing)")
    images.add_argument("--out", type=Path, metavar="OUT",
                        help="where --images writes (default: RUN_DIR/images-DIR, or ./images-DIR-NAME for a "
                             "shipped model NAME)")
    images.add_argument("--ensemble", type=int, default=1, choices=ENSEMBLES, help=f"score {ENSEMBLE_HELP}")
    p.set_defaults(func=_run_evaluate)


def _run_evaluate_images(args) -> int:
    from daelab.evaluate import evaluate_images, format_images_markdown
    from daelab.pretrained import resolve_denoiser, shipped_name
    if len(args.run_dirs) != 1:
        raise ConfigError("--images scores one model", "give one RUN_DIR")
    name = shipped_name(args.run_dirs[0])
    default = Path(f"images-{args.images.name}-{name}") if name else args.run_dirs[0] / f"images-{args.images.name}"
    out = args.out or default
    denoise_fn = resolve_denoiser(args.run_dirs[0], args.checkpoint or "best", ensemble=args.ensemble)
    result = evaluate_images(denoise_fn, args.images,
                             noise=" ".join(args.noise or ["awgn:15,25,50"]), baselines=args.denoisers or "bm3d",
                             seed=args.seed or 0, out=out, progress=not args.no_progress,
                             model={"model": str(args.run_dirs[0]), "checkpoint": args.checkpoint or "best",
                                    "ensemble": args.ensemble})
    print(format_images_markdown(result))
    print(f"wrote {out / 'evaluation.json'}")
    return 0


def _run_evaluate(args) -> int:
    from daelab.evaluate import EvalConfig, evaluate_daes
    if args.images is not None:
        return _run_evaluate_images(args)
    from daelab.pretrained import refuse_shipped
    refuse_shipped(args.run_dirs, "evaluate on the Fashion-MNIST test set")
    for name in ("noise", "robustness"):
        if getattr(args, name) is not None:
            setattr(args, name, " ".join(getattr(args, name)))
    file_values = _read_config(args.config) if args.config else None
    config = build_config(EvalConfig, file_values, args, "evaluate")
    result = evaluate_daes(args.run_dirs, config, progress=not args.no_progress)
    for level in result["levels"]:
        methods = level["full"]["methods"]
        print(f"{level['noise']}: PSNR noisy {methods['noisy']['psnr']['mean']:.2f} dB, "
              f"DAE {methods['dae']['psnr']['mean']:.2f} dB (gain {level['psnr_gain']['dae']['mean']:+.2f})")
    for level in (result.get("dae_seeds") or {}).get("levels", []):
        psnr = level["dae"]["psnr"]
        print(f"{level['noise']}: DAE {psnr['mean']:.2f} dB [{psnr['lo']:.2f}, {psnr['hi']:.2f}] over "
              f"{len(level['per_dae'])} DAE seeds x images")
    print(f"wrote {Path(args.run_dirs[0]) / 'evaluation.json'} and {len(result['figures'])} figure groups "
          f"in {result['timing']['total_seconds']:.1f}s")
    return 0


# -------------------------------------------------------------------------------- reproduce
def _add_reproduce(sub) -> None:
    p = sub.add_parser("reproduce", formatter_class=_Formatter, help=SUMMARIES["reproduce"],
                       description="Run the study end to end into RUN_DIR: train the DAE with the study's settings "
                                   "(100 epochs), by default 3 times with seeds 0, 1, 2 so that the verdicts cover the "
                                   "DAE's own training seed (3 times the training time of one DAE); evaluate the DAEs "
                                   "at the study's uniform noise levels against classical baselines; probe their "
                                   "codes against raw pixels over 5 classifier seeds; write report.html and "
                                   "report.md. The verdicts' intervals "
                                   "are over DAE seeds x classifier seeds x test images. RUN_DIR is the first DAE's "
                                   "run directory; the others are run directories in RUN_DIR/daes/seed-<s>/. Stage "
                                   "state is kept in RUN_DIR/reproduce.json: running the same command again skips "
                                   "finished stages and DAEs and resumes an interrupted training from its last "
                                   "checkpoint.",
                       epilog="examples:\n  daelab reproduce                      # the full study into runs/study "
                              "(trains 3 DAEs)\n"
                              "  daelab reproduce --quick --run-dir runs/quick   # a few minutes, says so on "
                              "the report\n  daelab reproduce --dae-seeds 1          # one DAE: a third of the "
                              "training, verdicts 'for this one trained DAE'\n"
                              "  daelab reproduce --dae-seeds 5          # grow runs/study to 5 DAEs: trains only "
                              "seeds 3 and 4\n  daelab reproduce --data-dir ~/fashion-mnist")
    p.add_argument("--run-dir", type=Path, default=Path("runs/study"), metavar="DIR",
                   help="where to write everything (default: runs/study)")
    p.add_argument("--quick", action="store_true",
                   help="a few-minute version: 3 epochs on 10,000 training images, one DAE, baselines on 200 "
                        "images, probe with 2 seeds and 5 classifier epochs on 9,000 images; the report says it is "
                        "quick")
    p.add_argument("--dae-seeds", type=int, metavar="N",
                   help="how many DAEs to train, with seeds S, S+1, ..., S+N-1: training runs N times (the full "
                        "study's 100 epochs each), and the verdicts cover DAE seeds. Default: 3 (--quick: 1), or "
                        "as many as RUN_DIR already holds if more; a larger N than RUN_DIR holds trains only the "
                        "missing DAEs and redoes evaluate, probe and report")
    p.add_argument("--seed", type=int, default=0, metavar="S",
                   help="the first DAE's training seed (default: 0, the study's run bit for bit)")
    p.add_argument("--data-dir", metavar="PATH", help="Fashion-MNIST directory (the four IDX files) or .npz "
                                                      "(default: $DAELAB_DATA, the user cache, "
                                                      "/usr/share/datasets/fashion-mnist)")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.set_defaults(func=_run_reproduce)


def _run_reproduce(args) -> int:
    from daelab.reproduce import reproduce
    state = reproduce(args.run_dir, quick=args.quick, data_dir=args.data_dir, progress=not args.no_progress,
                      dae_seeds=args.dae_seeds, seed=args.seed)
    for name, stage in state["stages"].items():
        extra = f" ({stage['reason']})" if stage.get("reason") else ""
        print(f"{name:<9} {stage['status']:<8} {stage.get('seconds', 0.0):9.1f} s{extra}")
        for dae in stage.get("daes", []) if name == "train" else []:
            loss = "" if dae.get("best_val_loss") is None else f", best val_loss {dae['best_val_loss']:.5f}"
            print(f"  DAE seed {dae['seed']:<4} {dae.get('seconds', 0.0):9.1f} s  {dae['run_dir']}{loss}")
    print(f"total     {state.get('total_seconds', 0.0):18.1f} s over {len(state['dae_seeds'])} DAE seed(s)")
    print(f"report: {Path(args.run_dir) / 'report.html'}")
    return 0


# ----------------------------------------------------------------------------------- report
def _add_report(sub) -> None:
    p = sub.add_parser("report", formatter_class=_Formatter, help=SUMMARIES["report"],
                       description="Write RUN_DIR/report.html (self-contained: figures embedded, no network) and "
                                   "report.md from what the stages wrote there (config.json, metrics.jsonl, "
                                   "evaluation.json, probe.json, reproduce.json). Nothing is recomputed; a stage "
                                   "that has not run shows as 'not run'.",
                       epilog="example:\n  daelab report runs/study")
    p.add_argument("run_dir", type=Path, metavar="RUN_DIR", help="a run directory")
    p.set_defaults(func=_run_report)


def _run_report(args) -> int:
    from daelab.report import write_report
    paths = write_report(args.run_dir)
    print(f"wrote {paths['html']} and {paths['markdown']}")
    return 0


# ---------------------------------------------------------------------------------- denoise
def _add_denoise(sub) -> None:
    from daelab.denoise import ENSEMBLE_HELP, ENSEMBLES
    p = sub.add_parser("denoise", formatter_class=_Formatter, help=SUMMARIES["denoise"],
                       description="Denoise .npy/.npz arrays (an image (H, W) or a stack (N, H, W): uint8, uint16 "
                                   "or float in [0, 1]) and PNG/JPEG files: 8- and 16-bit grayscale are kept as "
                                   "they are, colour is denoised channel by channel, an alpha channel is carried "
                                   "through unchanged. An input of more than $DAELAB_MAX_PIXELS values (default "
                                   "64 Mi) is refused before it is decoded. Writes NAME.denoised.EXT beside each "
                                   "input, or into --out; never writes onto an input. The MLP needs 28x28 images; "
                                   "a conv, dncnn, ffdnet or resunet model (natural-gray) takes any size (large "
                                   "images are tiled).",
                       epilog="examples:\n  daelab denoise fashion-mlp shirt.png   # a shipped model\n"
                              "  daelab denoise runs/exp1 shirt.png\n"
                              "  daelab denoise runs/conv photo.png --add-noise gaussian:0.1 --out denoised/\n"
                              "  daelab denoise runs/conv noisy.npy --reference clean.npy")
    p.add_argument("run_dir", type=Path, metavar="MODEL",
                   help="a run directory holding a trained model, or a shipped model's name (see 'daelab models')")
    p.add_argument("files", nargs="+", type=Path, metavar="FILE", help="images to denoise")
    p.add_argument("--out", type=Path, metavar="DIR", help="write the outputs into DIR (default: beside the inputs)")
    p.add_argument("--overwrite", action="store_true", help="replace existing output files (never inputs)")
    p.add_argument("--add-noise", metavar="SPEC", help="corrupt the inputs with this noise first (e.g. "
                   "gaussian:0.1), write NAME.noisy.EXT too, and report PSNR against the clean inputs")
    p.add_argument("--reference", type=Path, metavar="CLEAN_FILE",
                   help="a clean version of the (single) input: report PSNR against it")
    p.add_argument("--seed", type=int, default=0, help="seed of --add-noise (default: 0)")
    p.add_argument("--tile", type=int, default=None,
                   help="largest tile side (default: 256 for the conv model, 1024 for dncnn/ffdnet/resunet, tiled "
                        "exactly)")
    p.add_argument("--ensemble", type=int, default=1, choices=ENSEMBLES, help=f"denoise with {ENSEMBLE_HELP}")
    p.add_argument("--overlap", type=int, default=32, help="pixels shared by neighbouring tiles (default: 32)")
    p.add_argument("--checkpoint", choices=("best", "last"), default="best", help="which checkpoint (default: best)")
    p.set_defaults(func=_run_denoise)


def _run_denoise(args) -> int:
    from daelab.denoise import denoise_files
    from daelab.pretrained import resolve_model
    model, _ = resolve_model(args.run_dir, args.checkpoint)
    results = denoise_files(model, args.files, out_dir=args.out, overwrite=args.overwrite, add_noise=args.add_noise,
                            reference=args.reference, seed=args.seed, tile=args.tile, overlap=args.overlap,
                            ensemble=args.ensemble)
    for result in results:
        line = f"{result['input']} -> {result['output']}"
        if result["psnr_denoised"] is not None:
            line += f"  PSNR {result['psnr_input']:.2f} dB (input) -> {result['psnr_denoised']:.2f} dB (denoised)"
        print(line)
    return 0


# ------------------------------------------------------------------------------------ probe
def _add_probe(sub) -> None:
    from daelab.probe import FEATURES, PROBES, ProbeConfig
    p = sub.add_parser("probe", formatter_class=_Formatter, help=SUMMARIES["probe"],
                       description="Train probes (the study's classifier over several seeds, logistic regression, "
                                   "k nearest neighbours) on the encoder's codes, the raw pixels and a PCA of the "
                                   "same width, and compare them with paired differences whose intervals are over "
                                   "DAE seeds x classifier seeds x test images. Give one RUN_DIR, and the verdicts "
                                   "hold 'for this one trained DAE'; give several (DAEs of one config trained with "
                                   "different --seed, e.g. a reproduction's RUN_DIR and RUN_DIR/daes/seed-*), and "
                                   "they hold 'over N trained DAEs'. Writes probe.json, probe.md, probe_correct.npz "
                                   "and figures/ into the first RUN_DIR.\n\nfeatures: "
                                   + "; ".join(f"{k} = {v}" for k, v in FEATURES.items())
                                   + "\nprobes: " + "; ".join(f"{k} = {v}" for k, v in PROBES.items()),
                       epilog="examples:\n  daelab probe runs/exp1\n"
                              "  daelab probe runs/exp1 --seeds 10 --features codes,raw,pca,codes_noisy\n"
                              "  daelab probe runs/exp1 --probes mlp --epochs 20 --early-stopping 20\n"
                              "  daelab probe runs/seed0 runs/seed1 runs/seed2   # verdicts over 3 trained DAEs\n"
                              "  daelab probe runs/study runs/study/daes/seed-*   # a reproduction's DAEs")
    p.add_argument("run_dir", type=Path, metavar="RUN_DIR", help="a run directory written by 'daelab train'")
    p.add_argument("more_runs", type=Path, nargs="*", metavar="RUN_DIR",
                   help="more runs of the same config with other --seed values: the comparisons' intervals are then "
                        "over DAE seeds too (results are written into the first RUN_DIR)")
    p.add_argument("--config", type=Path, metavar="FILE", help="TOML/YAML/JSON file with a [probe] section")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    add_dataclass_args(p.add_argument_group("probe"), ProbeConfig)
    p.set_defaults(func=_run_probe)


def _run_probe(args) -> int:
    from daelab.probe import JSON_FILE, MARKDOWN_FILE, ProbeConfig, probe_run
    file_values = _read_config(args.config) if args.config else None
    config = build_config(ProbeConfig, file_values, args, "probe")
    if args.more_runs:
        from daelab.probe import probe_runs
        report = probe_runs([args.run_dir, *args.more_runs], config, progress=not args.no_progress)
    else:
        report = probe_run(args.run_dir, config, progress=not args.no_progress)
    for row in report["results"]:
        print(f"{row['feature']:>12} {row['probe']:>6}: {row['mean']:.4f} +- {row['std']:.4f} (n={row['n']})")
    if report["headline"]:
        h = report["headline"]
        i, o = h.get("interval", h), h.get("interval_over") or {}
        over = (f"{o['dae_seeds']} DAE(s) x {o['classifier_seeds']} classifier seeds x {o['test_images']} test images"
                if o else f"{h['n']} {h['over']}")
        print(f"{h['probe']}: {h['a']} - {h['b']} = {i['mean']:+.4f}, {100 * report['level']:.0f}% interval "
              f"[{i['lo']:+.4f}, {i['hi']:+.4f}] over {over}: {h.get('verdict_scoped', h['verdict'])}")
        if "size_verdict" in h:
            print(f"against a margin of +-{h['margin']:g} (--margin): {h['size_verdict']}")
    print(f"wrote {Path(args.run_dir) / JSON_FILE}, {Path(args.run_dir) / MARKDOWN_FILE} and figures/")
    return 0


# ------------------------------------------------------------------------------------ sweep
def _add_sweep(sub) -> None:
    from daelab.sweep.cli import add_parser  # the sweep's flags live beside its engine
    add_parser(sub, _Formatter, SUMMARIES["sweep"])


# ----------------------------------------------------------------------------------- models
def _add_models(sub) -> None:
    p = sub.add_parser("models", formatter_class=_Formatter, help=SUMMARIES["models"],
                       description="List the pretrained models shipped in the package: name, what it is, parameters, "
                                   "measured PSNR and validation MSE (with the command, commit and CPU they came "
                                   "from), and the weights' sha256 prefix. Any MODEL argument takes these names.",
                       epilog="examples:\n  daelab models\n  daelab denoise fashion-mlp shirt.png")
    p.set_defaults(func=_run_models)


def _run_models(args) -> int:
    from daelab.pretrained import describe
    print(describe())
    return 0


COMMANDS = {"train": _add_train, "summary": _add_summary, "evaluate": _add_evaluate, "probe": _add_probe,
            "denoise": _add_denoise, "reproduce": _add_reproduce, "report": _add_report,
            "sweep": _add_sweep, "models": _add_models}


def _requested_command(argv: list[str]) -> str | None:
    """The command named on the command line (the top-level options take no values), or None."""
    name = next((arg for arg in argv if not arg.startswith("-")), None)
    return name if name in COMMANDS else None


def build_parser(argv: list[str] | None = None) -> argparse.ArgumentParser:
    """The parser; with ``argv``, only the command it names gets its options (``daelab --help`` and
    ``daelab report ...`` then start without importing torch). Without, every command gets them."""
    wanted = _requested_command(argv) if argv is not None else None
    parser = argparse.ArgumentParser(prog="daelab", formatter_class=_Formatter,
                                     description="daelab: train denoising autoencoders, denoise with them, and "
                                                 "measure honestly what their features are worth.")
    parser.add_argument("--version", action="version", version=f"daelab {__version__}")
    parser.add_argument("--debug", action="store_true", help="show tracebacks on errors")
    parser.add_argument("-q", "--quiet", action="store_true", help="only warnings and errors on the console")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name, add in COMMANDS.items():
        if argv is None or name == wanted:
            add(sub)
        else:
            sub.add_parser(name, help=SUMMARIES[name])
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    parser = build_parser(argv)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING if args.quiet else logging.INFO, format="%(message)s")
    from tqdm.contrib.logging import logging_redirect_tqdm
    try:
        with logging_redirect_tqdm() if sys.stderr.isatty() else contextlib.nullcontext():
            return args.func(args)
    except DaelabError as exc:
        if args.debug:
            raise
        print(f"daelab: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        if args.debug:
            raise
        print("daelab: interrupted", file=sys.stderr)
        return 130
    except OSError as exc:  # the machine, not daelab: a disk filled or went read-only where no stage expected it
        if args.debug:
            raise
        where = f" ({exc.filename})" if getattr(exc, "filename", None) else ""
        print(f"daelab: error: {exc.strerror or exc}{where} (run again with --debug for the traceback)",
              file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
