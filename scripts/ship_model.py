"""Ship a trained run as a pretrained model: its weights and its manifest entry, in one command.

A thin command over :func:`daelab.pretrained._export.export_model`: it writes
``DIR/NAME.safetensors`` and replaces (or appends) NAME's entry in ``DIR/manifest.json`` (DIR is
the package's ``src/daelab/pretrained`` unless ``--directory`` says otherwise), then prints the
entry's name, sha256 prefix and size. ``--measured-from-evaluation`` builds the measured figures
from the ``evaluation.json`` that ``daelab evaluate RUN_DIR --images DIR`` wrote;
``--baselines-evaluation`` takes the baselines' figures from an earlier evaluation of the same
noisy images (BM3D need not run again for a retrained model).

    PYTHONPATH=src python scripts/ship_model.py runs/natural-gray --name natural-gray \\
        --description "..." --training-command "make natural-gray at abc1234" \\
        --data-json data.json --measured-from-evaluation runs/natural-gray/set12/evaluation.json \\
        --psnr-on "Set12, awgn:15,25,50 (seed 0)" --cpu "2-core Intel Xeon (AVX-512, AMX)"
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

EXAMPLES = """examples:
  scripts/ship_model.py runs/natural-gray --name natural-gray --description "FFDNet-like grayscale denoiser" \\
      --training-command "make natural-gray" --data-json '{"name": "BSD400"}' \\
      --measured-from-evaluation runs/natural-gray/set12/evaluation.json --psnr-on "Set12" --cpu "2-core Xeon"
  scripts/ship_model.py runs/study --name fashion-mlp --description "..." --training-command "make reproduce" \\
      --data-json data.json --measured-json measured.json --commit fd5d0c8 --directory /tmp/addons
  scripts/ship_model.py runs/retrained --name natural-gray --description "..." --training-command "..." \\
      --data-json data.json --measured-from-evaluation runs/retrained/set12/evaluation.json \\
      --baselines-evaluation runs/natural-gray/set12-bm3d/evaluation.json
"""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="ship_model.py", formatter_class=argparse.RawDescriptionHelpFormatter, epilog=EXAMPLES,
        description="Write RUN_DIR's trained model as DIR/NAME.safetensors and its entry in DIR/manifest.json "
                    "(replacing an entry of that name, keeping the others and their order), so "
                    "'daelab denoise NAME ...' and load_pretrained(NAME) use it. Prints the name, sha256 prefix "
                    "and size.")
    parser.add_argument("run_dir", metavar="RUN_DIR", help="a run directory written by 'daelab train'")
    entry = parser.add_argument_group("the manifest entry")
    entry.add_argument("--name", required=True, help="the shipped name: lowercase letters, digits and '-'")
    entry.add_argument("--description", required=True, metavar="TEXT",
                       help="what the model is and what it was trained on")
    entry.add_argument("--training-command", required=True, metavar="TEXT",
                       help="the command (and commit) that trained the run")
    entry.add_argument("--data-json", required=True, metavar="FILE_OR_JSON",
                       help="the training data as a JSON object (name, source, licence, image counts), "
                            "inline or in a file")
    entry.add_argument("--licence", default=None, metavar="TEXT",
                       help="the weights' licence (default: 'MIT (the weights, as daelab)', plus the data's "
                            "licence when --data-json has one)")
    entry.add_argument("--commit", default=None, help="the commit the run was trained at (default: not recorded)")
    measured = entry.add_mutually_exclusive_group(required=True)
    measured.add_argument("--measured-json", metavar="FILE_OR_JSON",
                          help="the measured figures as a JSON object, inline or in a file")
    measured.add_argument("--measured-from-evaluation", metavar="EVALUATION_JSON",
                          help="build them from OUT/evaluation.json of 'daelab evaluate MODEL --images DIR': "
                               "psnr_db, ssim, noisy_psnr_db and baselines_psnr_db per noise level, with the "
                               "commit they were measured at (--measured-commit)")
    figures = parser.add_argument_group("with --measured-from-evaluation")
    figures.add_argument("--psnr-on", default=None, metavar="TEXT",
                         help="what the figures were measured on (default: the evaluation's folder, image count, "
                              "noise levels and seed)")
    figures.add_argument("--cpu", default=None, metavar="TEXT",
                         help="the CPU they were measured on (default: not recorded)")
    figures.add_argument("--measured-commit", default=None, metavar="REV",
                         help="the commit the evaluations ran at (default: this checkout's, 'git rev-parse --short "
                              "HEAD', which is right only where they ran in it)")
    figures.add_argument("--evaluation-command", default=None, metavar="TEXT",
                         help="the 'daelab evaluate' command that measured them (default: not recorded)")
    figures.add_argument("--ensemble-evaluation", action="append", default=[], metavar="EVALUATION_JSON",
                         help="an evaluation.json of the same images with --ensemble N (N > 1): its PSNR per noise "
                              "level goes into ensemble_psnr_db[N], which 'daelab models' lists; repeatable")
    figures.add_argument("--baselines-evaluation", default=None, metavar="EVALUATION_JSON",
                         help="take baselines_psnr_db from this evaluation.json instead (e.g. an earlier "
                              "'--baselines bm3d' run, as BM3D does not change when the model is retrained); "
                              "refused unless its noisy PSNR equals the evaluation's at every noise level, "
                              "i.e. the same noisy images")
    where = parser.add_argument_group("what to read and where to write")
    where.add_argument("--checkpoint", choices=("best", "last"), default="best",
                       help="which checkpoint of RUN_DIR ('best' falls back to 'last')")
    where.add_argument("--directory", default=None, metavar="DIR",
                       help="the folder holding manifest.json and the weight files (default: the package's)")
    return parser


def json_object(text: str, what: str) -> dict:
    """``text`` as a JSON object: a file's contents when ``text`` names a file, else ``text`` itself."""
    from daelab.errors import ConfigError
    from daelab.runs import read_json
    if Path(text).is_file():
        value = read_json(text)
    else:
        try:
            value = json.loads(text)
        except json.JSONDecodeError as exc:
            raise ConfigError(f"{what} is neither a file nor valid JSON: {exc}", "pass a JSON file or an inline "
                              "JSON object") from None
    if not isinstance(value, dict):
        raise ConfigError(f"{what} is not a JSON object ({type(value).__name__})", "pass {\"key\": value, ...}")
    return value


def git_commit() -> str | None:
    """``git rev-parse --short HEAD`` of this script's checkout, or None where git or a repository is missing."""
    try:
        done = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, timeout=10,
                              cwd=Path(__file__).resolve().parent)
    except (OSError, subprocess.SubprocessError):
        return None
    if done.returncode != 0:
        return None
    return done.stdout.strip() or None


def default_licence(data: dict) -> str:
    licence = "MIT (the weights, as daelab)"
    if data.get("licence"):
        licence += f"; trained on {data.get('name', 'its data')} ({data['licence']})"
    return licence


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.measured_json is not None and (args.baselines_evaluation or args.ensemble_evaluation):
        parser.error("--baselines-evaluation and --ensemble-evaluation go with --measured-from-evaluation")
    from daelab.errors import DaelabError
    from daelab.pretrained._export import (
        baselines_from_evaluation,
        ensemble_figures,
        export_model,
        measured_from_evaluation,
        validate_name,
    )
    from daelab.runs import read_json
    try:
        validate_name(args.name)
        data = json_object(args.data_json, "--data-json")
        if args.measured_json is not None:
            measured = json_object(args.measured_json, "--measured-json")
        else:
            measured = measured_from_evaluation(read_json(args.measured_from_evaluation), psnr_on=args.psnr_on,
                                                cpu=args.cpu, commit=args.measured_commit or git_commit(),
                                                command=args.evaluation_command)
            if args.baselines_evaluation:
                measured = baselines_from_evaluation(measured, read_json(args.baselines_evaluation))
            if args.ensemble_evaluation:
                measured["ensemble_psnr_db"] = ensemble_figures([read_json(p) for p in args.ensemble_evaluation])
        entry = export_model(args.run_dir, args.name, directory=args.directory, checkpoint=args.checkpoint,
                             description=args.description, training_command=args.training_command, data=data,
                             measured=measured, licence=args.licence or default_licence(data), commit=args.commit)
    except DaelabError as exc:  # one line; ConfigError and the other usage errors exit 2, a bad checkpoint 1
        print(f"error: {exc}", file=sys.stderr)
        return exc.exit_code
    print(f"{entry['name']}: sha256 {entry['sha256'][:12]}, {entry['bytes']:,} bytes ({entry['file']})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
