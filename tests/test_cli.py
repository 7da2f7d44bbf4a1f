"""The command line end to end on a tiny dataset: train, resume, summary, and one-line errors."""
import json
import subprocess
import sys

import pytest

from daelab.cli import main


def test_train_then_resume_via_cli(tmp_path, npz_data, capsys):
    run = tmp_path / "run"
    args = ["train", "--data-dir", str(npz_data), "--run-dir", str(run), "--batch-size", "100", "--no-progress"]
    assert main(args + ["--epochs", "1", "--subset", "300"]) == 0
    assert "trained 1 epochs" in capsys.readouterr().out
    config = json.loads((run / "config.json").read_text())
    assert config["train"]["subset"] == 300 and config["model"]["code_dim"] == 196
    assert main(["train", "--resume", str(run), "--epochs", "2", "--no-progress"]) == 0
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows] == [1, 2]
    assert {"epoch", "train_loss", "val_loss", "epoch_seconds"} <= set(rows[0])
    # changing the architecture on resume is refused in one line
    assert main(["train", "--resume", str(run), "--code-dim", "32"]) == 2
    assert "cannot change code_dim" in capsys.readouterr().err


def test_config_file_and_flags_win(tmp_path, npz_data):
    cfg = tmp_path / "c.toml"
    cfg.write_text('[train]\nepochs = 1\nbatch_size = 50\nsubset = 200\n[model]\ncode_dim = 32\n')
    run = tmp_path / "run"
    assert main(["train", "--config", str(cfg), "--batch-size", "100", "--data-dir", str(npz_data),
                 "--run-dir", str(run), "--no-progress"]) == 0
    config = json.loads((run / "config.json").read_text())
    assert config["train"]["batch_size"] == 100 and config["train"]["epochs"] == 1
    assert config["model"]["code_dim"] == 32


@pytest.mark.parametrize("argv,words,code", [
    (["train", "--noise", "poisson:0.1"], "unknown noise model", 2),
    (["train", "--model", "nope"], "unknown model 'nope'", 2),
    (["train", "--epochs", "0"], "epochs must be >= 1", 2),
    (["train", "--data-dir", "/nonexistent"], "no dataset there", 2),
    (["train", "--config", "/nonexistent.toml"], "not found", 2),
    (["summary", "/nonexistent-run"], "not found", 2),
])
def test_one_line_errors(argv, words, code, capsys):
    assert main(argv) == code
    err = capsys.readouterr().err
    assert err.startswith("daelab: error:") and words in err and "Traceback" not in err
    assert len(err.strip().splitlines()) == 1


def test_bad_config_file(tmp_path, capsys):
    bad = tmp_path / "bad.toml"
    bad.write_text("[train\nepochs = ")
    assert main(["train", "--config", str(bad)]) == 2
    assert "not valid" in capsys.readouterr().err
    unknown = tmp_path / "u.yaml"
    unknown.write_text("train:\n  epoch: 3\n")
    assert main(["train", "--config", str(unknown)]) == 2
    assert "unknown setting 'epoch'" in capsys.readouterr().err


def test_summary_and_help(capsys):
    assert main(["summary"]) == 0
    assert "Total params: 1,438,676" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        main(["train", "--help"])
    out = capsys.readouterr().out
    assert "--epochs" in out and "(default: 100)" in out and "--noise" in out
    # a setting with fixed choices shows them in the usage line, and --model names the registered models
    assert "[--precision {auto,fp32,bf16}]" in out and "[--kernels {auto,torch}]" in out
    from daelab.models import MODELS
    model_help = " ".join(out.split("\n  --model STR", 1)[1].split("(default: mlp)", 1)[0].split())
    assert model_help.startswith("registered model name:") and all(name in model_help for name in MODELS)


def test_python_dash_m_entry_point():
    result = subprocess.run([sys.executable, "-m", "daelab", "--version"], capture_output=True, text=True)
    assert result.returncode == 0 and result.stdout.startswith("daelab ")


def test_top_level_help_lists_every_command_without_importing_torch():
    # `daelab --help` builds only the command list: no command's options, so no torch import (~3 s)
    code = ("import sys\nfrom daelab.cli import main\ntry:\n    main(['--help'])\nexcept SystemExit:\n    pass\n"
            "print('TORCH' if 'torch' in sys.modules else 'NO-TORCH')")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert result.stdout.rstrip().endswith("NO-TORCH")
    for name in ("train", "summary", "evaluate", "probe", "denoise", "reproduce", "report"):
        assert f"    {name} " in result.stdout


def test_each_command_parses_its_own_options_when_named():
    from daelab.cli import build_parser
    args = build_parser(["--debug", "probe", "runs/x", "--seeds", "3"]).parse_args(
        ["--debug", "probe", "runs/x", "--seeds", "3"])
    assert args.command == "probe" and args.seeds == 3 and args.debug
    with pytest.raises(SystemExit):  # another command's options are not built
        build_parser(["report", "runs/x"]).parse_args(["train", "--epochs", "2"])


def test_resume_of_a_run_still_training_says_it_is_in_use(tmp_path, capsys):
    # the training process holds the lock but has not written its first checkpoint yet
    import os
    import socket

    from daelab.runs import LOCK_FILE
    (tmp_path / LOCK_FILE).write_text(f"{socket.gethostname()} {os.getpid()}\n")  # a live owner: this process
    assert main(["train", "--resume", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "in use by another training process" in err and len(err.strip().splitlines()) == 1
    (tmp_path / LOCK_FILE).write_text(f"{socket.gethostname()} 999999999\n")  # its process is gone
    assert main(["train", "--resume", str(tmp_path)]) == 1
    assert "no checkpoint" in capsys.readouterr().err


# ------------------------------------------------------------ issue 18: configs are not trusted
@pytest.mark.parametrize("name, text, words", [
    ("typo.toml", "[trian]\nepochs = 1\n", "unknown section [trian]"),
    ("typo.toml", "[trian]\nepochs = 1\n", "did you mean [train]?"),
    ("flat.toml", "epoch = 1\n", "did you mean 'epochs'?"),
    ("flat.yaml", "epochs: 1\ncode_dimm: 8\n", "did you mean 'code_dim'?"),
    ("other.yaml", "evaluate:\n  noize: gaussian:0.1\n", "unknown setting 'noize' in [evaluate]"),
    ("model.json", '{"model": {"hiden": [8]}}', "did you mean 'hidden'?"),
])
def test_unknown_config_names_are_errors_naming_the_nearest(tmp_path, capsys, name, text, words):
    path = tmp_path / name
    path.write_text(text)
    # --data-dir that does not exist: without the check, training would start and stop there instead
    assert main(["train", "--config", str(path), "--data-dir", str(tmp_path / "none")]) == 2
    err = capsys.readouterr().err
    assert words in err and len(err.strip().splitlines()) == 1 and "no dataset" not in err


def test_one_config_file_serves_every_command(tmp_path, npz_data):
    path = tmp_path / "study.toml"
    path.write_text("[train]\nepochs = 1\nsubset = 200\nbatch_size = 100\n[model]\ncode_dim = 16\n"
                    "[evaluate]\ndenoisers = 'none'\n[probe]\nseeds = 1\n")
    run = tmp_path / "run"
    assert main(["train", "--config", str(path), "--data-dir", str(npz_data), "--run-dir", str(run),
                 "--no-progress"]) == 0


def _billion_laughs(levels: int, width: int = 9) -> str:
    lines = ['a0: &a0 "lol"']
    lines += [f"a{i}: &a{i} [" + ", ".join([f"*a{i - 1}"] * width) + "]" for i in range(1, levels + 1)]
    return "\n".join(lines) + f"\ntrain:\n  epochs: *a{levels}\n"


def test_yaml_alias_bomb_is_refused_at_once_in_one_short_line(tmp_path, capsys):
    path = tmp_path / "bomb.yaml"
    path.write_text(_billion_laughs(7))  # 9**7 = 4.8 million strings: before, a 33 MB error message
    assert main(["train", "--config", str(path), "--data-dir", str(tmp_path / "none")]) == 2
    err = capsys.readouterr().err
    assert "YAML aliases" in err and len(err) < 500


def test_yaml_billion_laughs_and_self_reference_do_not_hang(tmp_path):
    import time

    from daelab.config import build_config, read_config_file
    from daelab.errors import ConfigError
    from daelab.train import TrainConfig
    for text in (_billion_laughs(12), "train: &t\n  epochs: 1\n  again: *t\n", "x: &x [*x]\n"):
        path = tmp_path / "bomb.yaml"
        path.write_text(text)
        start = time.perf_counter()
        with pytest.raises(ConfigError, match="YAML aliases"):
            build_config(TrainConfig, read_config_file(path), None, "train")
        assert time.perf_counter() - start < 5


def test_huge_config_file_is_refused_unread(tmp_path, capsys):
    path = tmp_path / "big.toml"
    path.write_text("# padding\n" * 200_000)
    assert main(["train", "--config", str(path), "--data-dir", str(tmp_path / "none")]) == 2
    assert "larger than" in capsys.readouterr().err


def test_a_second_train_into_a_finished_run_needs_overwrite(tmp_path, npz_data, capsys):
    run = tmp_path / "run"
    args = ["train", "--data-dir", str(npz_data), "--run-dir", str(run), "--batch-size", "100", "--no-progress",
            "--epochs", "1", "--subset", "300"]
    assert main(args) == 0
    (run / "probe.json").write_text("{}")  # a later stage's output of the first model
    before = (run / "last.pt").read_bytes()
    capsys.readouterr()
    assert main(args + ["--seed", "3"]) == 2
    assert "--overwrite" in capsys.readouterr().err
    assert (run / "last.pt").read_bytes() == before and (run / "probe.json").exists()
    assert main(args + ["--seed", "3", "--overwrite"]) == 0
    assert (run / "last.pt").read_bytes() != before and not (run / "probe.json").exists()
    assert main(["train", "--resume", str(run), "--epochs", "2", "--no-progress"]) == 0  # --overwrite not "changed"


def test_probe_over_several_trained_daes(tmp_path, npz_data, capsys):
    runs = [tmp_path / f"seed{seed}" for seed in (0, 1)]
    for seed, run in enumerate(runs):
        assert main(["train", "--data-dir", str(npz_data), "--run-dir", str(run), "--batch-size", "100",
                     "--no-progress", "--epochs", "1", "--subset", "300", "--code-dim", "16", "--seed", str(seed)]) == 0
    capsys.readouterr()
    assert main(["probe", *map(str, runs), "--seeds", "2", "--epochs", "1", "--probes", "mlp",
                 "--features", "codes,raw", "--no-progress", "--margin", "0.02"]) == 0
    out = capsys.readouterr().out
    assert "over 2 DAE(s) x 2 classifier seeds" in out and "over 2 trained DAEs" in out
    probe = json.loads((runs[0] / "probe.json").read_text())
    assert probe["headline"]["margin"] == 0.02  # --margin reaches the comparisons, and the console says their size
    assert f"against a margin of +-0.02 (--margin): {probe['headline']['size_verdict']}\n" in out
    assert probe["dae_seeds"] == [0, 1] and probe["interval_over"]["dae_seeds"] == 2
