"""Property-based fuzzing of the files daelab reads back (issue 18): checkpoints, YAML configs, stage JSON.

Generators for checkpoint tensor layouts (dtypes, shapes, strides, expanded and sliced views,
sparse tensors, NaN and infinities, placed anywhere in the checkpoint), for YAML anchors and aliases
(nested, wide, self-referencing, in any section), and for stage JSON (a real run's files with any
subtree replaced by any JSON value). Only daelab's own one-line errors may come out, quickly; what
is accepted is what daelab can use. The suite runs a quick profile; ``HYPOTHESIS_PROFILE=fuzz pytest
tests/test_fuzz_files.py`` runs the long one.
"""
from __future__ import annotations

import copy
import json
import os
import shutil
import time
import zipfile

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from daelab.checkpoint import FORMAT, LAST, VERSION, check_optimizer_state, load_checkpoint
from daelab.config import build_config, check_config_keys, read_config_file
from daelab.errors import DaelabError

settings.register_profile("ci", max_examples=60, deadline=None,
                          suppress_health_check=[HealthCheck.function_scoped_fixture])
settings.register_profile("fuzz", max_examples=3000, deadline=None,
                          suppress_health_check=[HealthCheck.function_scoped_fixture])
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))
QUICK = os.environ.get("HYPOTHESIS_PROFILE", "ci") == "ci"


def _only_our_errors(call):
    try:
        return call()
    except DaelabError as exc:
        assert str(exc) and "\n" not in str(exc) and len(str(exc)) < 1000, str(exc)[:2000]
        return None


# ------------------------------------------------------------------ checkpoint tensor layouts
DTYPES = [torch.float32, torch.float64, torch.float16, torch.bfloat16, torch.int64, torch.int32, torch.uint8,
          torch.bool, torch.complex64]


@st.composite
def tensors(draw):
    """A tensor of any dtype and shape, laid out any way torch.save keeps: contiguous, expanded
    (stride 0), transposed, a slice of a larger storage, sparse; possibly holding NaN or inf."""
    dtype = draw(st.sampled_from(DTYPES))
    shape = draw(st.lists(st.integers(0, 5), max_size=4))
    base = torch.arange(max(1, int(torch.tensor(shape).prod()) if shape else 1)).to(dtype)
    tensor = base[:int(torch.tensor(shape).prod()) if shape else 1].reshape(shape)
    layout = draw(st.sampled_from(["contiguous", "expanded", "transposed", "sliced", "strided", "sparse"]))
    if layout == "expanded":
        tensor = torch.zeros(1, dtype=dtype).expand(*(shape or [draw(st.integers(2, 10 ** 6))]))
    elif layout == "transposed" and tensor.dim() >= 2:
        tensor = tensor.transpose(0, 1)
    elif layout == "sliced":
        tensor = torch.zeros(tensor.numel() + draw(st.integers(0, 50)), dtype=dtype)[-tensor.numel():]
    elif layout == "strided" and tensor.numel():
        storage = torch.zeros(tensor.numel() * 3, dtype=dtype)
        tensor = storage.as_strided((tensor.numel(),), (draw(st.sampled_from([0, 2, 3])),))
    elif layout == "sparse" and tensor.dim() >= 1 and dtype not in (torch.bool, torch.bfloat16, torch.float16):
        tensor = tensor.to_sparse()
    special = draw(st.sampled_from([None, float("nan"), float("inf"), -float("inf")]))
    if special is not None and tensor.layout == torch.strided and tensor.numel() and \
            (dtype.is_floating_point or dtype.is_complex):
        tensor = tensor.clone()  # keeps a transposed layout; an expanded one becomes dense
        where = draw(st.integers(0, tensor.numel() - 1))
        tensor[tuple(int(i) for i in torch.unravel_index(torch.tensor(where), tensor.shape))] = special
    return tensor


PLACES = ["model", "exp_avg", "step", "history", "rng", "deep"]


def _checkpoint_with(tensor: torch.Tensor, place: str) -> dict:
    state = {"format": FORMAT, "version": VERSION, "model_config": {"name": "mlp"}, "epoch": 1,
             "model": {"w": torch.ones(3)}, "history": [{"epoch": 1}],
             "optimizer": {"state": {0: {"step": torch.tensor(1.0), "exp_avg": torch.zeros(3),
                                         "exp_avg_sq": torch.zeros(3)}}, "param_groups": [{"params": [0]}]}}
    if place == "model":
        state["model"]["w"] = tensor
    elif place in ("exp_avg", "step"):
        state["optimizer"]["state"][0][place] = tensor
    elif place == "history":
        state["history"].append({"loss": tensor})
    elif place == "rng":
        state["rng"] = {"torch": tensor, "generator": tensor}
    else:
        state["x"] = [[{"y": (tensor,)}]]
    return state


def _dense_finite(tensor: torch.Tensor) -> bool:
    """Each element at its own address, the addresses one block (worked out element by element)."""
    if tensor.layout != torch.strided:
        return False
    addresses = sorted(tensor.storage_offset() + sum(i * st for i, st in zip(index, tensor.stride()))
                       for index in __import__("itertools").product(*map(range, tensor.shape)))
    if addresses != list(range(addresses[0], addresses[0] + len(addresses))) if addresses else False:
        return False
    return not (tensor.is_floating_point() or tensor.is_complex()) or bool(torch.isfinite(tensor).all())


@given(tensors(), st.sampled_from(PLACES))
def test_checkpoint_tensor_layouts(tmp_path, tensor, place):
    path = tmp_path / LAST
    torch.save(_checkpoint_with(tensor, place), path)  # as anyone may write it: none of daelab's checks
    state = _only_our_errors(lambda: load_checkpoint(path))
    if state is not None:  # whatever was accepted is dense, contiguous and finite
        found = []

        def walk(value):
            if isinstance(value, torch.Tensor):
                found.append(value)
            elif isinstance(value, dict):
                list(map(walk, value.values()))
            elif isinstance(value, (list, tuple)):
                list(map(walk, value))
        walk(state)
        assert found and all(_dense_finite(t) for t in found)
        assert _dense_finite(tensor) or tensor.numel() <= 1  # a refused layout never comes back as accepted


@given(tensors(), st.sampled_from(["exp_avg", "exp_avg_sq", "step"]), st.booleans())
def test_optimizer_state_layouts_against_a_model(tensor, key, drop):
    model = torch.nn.Linear(2, 3)  # parameters: weight (3, 2), bias (3,)
    params = list(model.parameters())
    state = {i: {"step": torch.tensor(2.0), "exp_avg": torch.zeros_like(p), "exp_avg_sq": torch.ones_like(p)}
             for i, p in enumerate(params)}
    state[1][key] = tensor
    if drop:
        del state[0]["exp_avg"]
    optimizer_state = {"state": state, "param_groups": torch.optim.Adam(params).state_dict()["param_groups"]}
    accepted = _only_our_errors(lambda: check_optimizer_state(optimizer_state, model) or True)
    if accepted:  # Adam can use it as it is: it loads and takes a step without error
        optimizer = torch.optim.Adam(params)
        optimizer.load_state_dict(copy.deepcopy(optimizer_state))
        model(torch.ones(1, 2)).sum().backward()
        optimizer.step()
        assert all(torch.isfinite(p).all() for p in params)


@given(st.lists(st.tuples(st.integers(0, 10 ** 6), st.integers(0, 255)), max_size=8), st.integers(0, 10 ** 6))
def test_mutated_checkpoint_bytes(tmp_path_factory, flips, cut):
    path = tmp_path_factory.mktemp("ckpt") / LAST
    torch.save(_checkpoint_with(torch.ones(4), "model"), path)
    data = bytearray(path.read_bytes())
    for position, value in flips:
        data[position % len(data)] = value
    path.write_bytes(bytes(data[:cut % (len(data) + 1)] if cut % 3 == 0 else data))
    _only_our_errors(lambda: load_checkpoint(path))


def test_deflated_records_are_refused(tmp_path):
    plain, packed = tmp_path / "a.pt", tmp_path / "b.pt"
    torch.save(_checkpoint_with(torch.zeros(10), "model"), plain)
    with zipfile.ZipFile(plain) as source, zipfile.ZipFile(packed, "w", zipfile.ZIP_DEFLATED) as target:
        for record in source.infolist():
            target.writestr(record.filename, source.read(record))
    assert _only_our_errors(lambda: load_checkpoint(packed)) is None


# ---------------------------------------------------------------------------- YAML aliases
@st.composite
def yaml_with_aliases(draw):
    """YAML whose anchors nest ``levels`` deep, ``width`` aliases each, used where a setting goes."""
    levels, width = draw(st.integers(1, 14)), draw(st.integers(1, 12))
    leaf = draw(st.sampled_from(['"lol"', "1", "0.5", "true", "null", "{epochs: 1}", "[1, 2]"]))
    lines = [f"a0: &a0 {leaf}"]
    for i in range(1, levels + 1):
        items = ", ".join([f"*a{i - 1}"] * width)
        lines.append(f"a{i}: &a{i} " + (f"[{items}]" if draw(st.booleans()) or width == 1 else
                                       "{" + ", ".join(f"k{j}: *a{i - 1}" for j in range(width)) + "}"))
    use = f"*a{draw(st.integers(0, levels))}"
    where = draw(st.sampled_from(["train", "flat", "section", "self", "model"]))
    if where == "train":
        lines.append(f"train:\n  {draw(st.sampled_from(['epochs', 'noise', 'lr', 'subset']))}: {use}")
    elif where == "model":
        lines.append(f"model:\n  hidden: {use}")
    elif where == "section":
        lines.append(f"train: {use}")
    elif where == "self":
        lines.append("train: &t\n  epochs: 1\n  nested: [*t]")
    text = "\n".join(lines) + "\n"
    if draw(st.booleans()):  # the anchors themselves need not be top-level keys
        text = "defs:\n" + "".join(f"  {line}\n" for line in text.splitlines() if line.startswith("a")) + \
            "\n".join(line for line in text.splitlines() if not line.startswith("a")) + "\n"
    return text


@given(yaml_with_aliases())
def test_yaml_aliases_are_bounded(tmp_path, text):
    from daelab.models import ModelConfig
    from daelab.train import TrainConfig
    path = tmp_path / "c.yaml"
    path.write_text(text)
    start = time.perf_counter()

    def load():
        values = read_config_file(path)
        check_config_keys(values, {"train": TrainConfig, "model": ModelConfig}, path)
        build_config(TrainConfig, values, None, "train")
        build_config(ModelConfig, values, None, "model")
    _only_our_errors(load)
    assert time.perf_counter() - start < 5, "an alias expansion was not bounded"


# -------------------------------------------------------------------------------- stage JSON
json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-10 ** 20, 10 ** 20) | st.floats(allow_nan=False) |
    st.text(max_size=20) | st.sampled_from(["../../etc/passwd", "/etc/passwd", "figures", "<b>x</b>", "inf"]),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4),
    max_leaves=12)


def _paths(value, prefix=()):
    """Every path to a subtree of ``value`` (a JSON tree)."""
    yield prefix
    if isinstance(value, dict):
        for key, item in value.items():
            yield from _paths(item, (*prefix, key))
    elif isinstance(value, list):
        for index, item in enumerate(value):
            yield from _paths(item, (*prefix, index))


def _replace(value, path, new):
    if not path:
        return new
    value = copy.copy(value)
    value[path[0]] = _replace(value[path[0]], path[1:], new)
    return value


PROBE = {"data": {"split": "train on 100, test on 50"}, "level": 0.95, "seeds": [0, 1],
         "results": [{"feature": f, "probe": "mlp", "mean": 0.8, "std": 0.01, "lo": 0.79, "hi": 0.81, "n": 2}
                     for f in ("codes", "raw")],
         "comparisons": [{"probe": "mlp", "a": "codes", "b": "raw", "mean": 0.0, "lo": -0.01, "hi": 0.01,
                          "n": 2, "over": "seeds", "verdict": "no detectable difference"}],
         "headline": {"probe": "mlp", "a": "codes", "b": "raw", "mean": 0.0, "lo": -0.01, "hi": 0.01,
                      "n": 2, "over": "seeds", "verdict": "no detectable difference"},
         "figures": {}, "config": {"seeds": 2}}
STATE = {"mode": "quick", "stages": {"train": {"status": "done", "seconds": 1.0, "finished": "2026-01-01T00:00"}},
         "environment": {"python": "3.11", "cpu": "x"}}


@pytest.fixture(scope="module")
def stage_run(tmp_path_factory, tiny_run, tiny_dataset):
    """A copy of the tiny run with every stage file: a real evaluation, a probe.json and reproduce.json."""
    from daelab.evaluate import EvalConfig, evaluate_run
    run = tmp_path_factory.mktemp("stages") / "run"
    shutil.copytree(tiny_run, run, ignore=shutil.ignore_patterns("*.pt", "tensorboard", "report.*"))
    shutil.copy(tiny_run / "best.pt" if (tiny_run / "best.pt").exists() else tiny_run / LAST, run / "best.pt")
    evaluate_run(run, EvalConfig(denoisers="none", noise="uniform:0.1", robustness="gaussian:0.1",
                                 dae_max_images=40, robustness_max_images=40, examples=2),
                 dataset=tiny_dataset, progress=False)
    (run / "probe.json").write_text(json.dumps(PROBE))
    (run / "reproduce.json").write_text(json.dumps(STATE))
    originals = {name: json.loads((run / name).read_text())
                 for name in ("config.json", "evaluation.json", "probe.json", "reproduce.json")}
    originals["metrics.jsonl"] = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    from daelab.report import write_report
    write_report(run)  # the unchanged files make a report: every failure below is the mutation's
    assert "Not run: probe.json" not in (run / "report.html").read_text()
    return run, originals


def _write_stage(run, name, value) -> None:
    if name == "metrics.jsonl":
        rows = value if isinstance(value, list) else [value]
        (run / name).write_text("".join(json.dumps(row) + "\n" for row in rows))
    else:
        (run / name).write_text(json.dumps(value))


@settings(max_examples=15 if QUICK else settings.default.max_examples)
@given(st.sampled_from(["config.json", "evaluation.json", "probe.json", "reproduce.json", "metrics.jsonl"]),
       st.data(), json_values)
def test_stage_json_with_any_subtree_replaced(stage_run, name, data, new):
    from daelab.report import write_report
    run, originals = stage_run
    for other, value in originals.items():
        _write_stage(run, other, value)
    paths = list(_paths(originals[name]))
    path = data.draw(st.sampled_from(paths))
    _write_stage(run, name, _replace(originals[name], path, new))
    result = _only_our_errors(lambda: write_report(run))
    if result is not None:
        page = (run / "report.html").read_text()
        assert "<b>x</b>" not in page and "root:" not in page  # escaped; nothing outside the run embedded
        assert "<b>x</b>" not in __import__("re").sub(r"(`+)(.+?)\1", "", (run / "report.md").read_text())


@settings(max_examples=15 if QUICK else settings.default.max_examples)
@given(st.sampled_from(["config.json", "evaluation.json", "probe.json", "reproduce.json", "metrics.jsonl"]),
       st.integers(0, 10 ** 6))
def test_truncated_stage_json(stage_run, name, cut):
    from daelab.report import write_report
    run, originals = stage_run
    for other, value in originals.items():
        _write_stage(run, other, value)
    text = (run / name).read_bytes()
    (run / name).write_bytes(text[:cut % max(1, len(text))])
    _only_our_errors(lambda: write_report(run))
