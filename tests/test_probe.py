"""Feature probes: the study's classifier (shape, seed-stacking), the probes, and probe_run end to end."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from daelab.cli import main
from daelab.errors import ConfigError
from daelab.probe import ProbeConfig, probe_run
from daelab.probe._classifier import ClassifierSettings, keras_validation_split, seed_generator, train_classifiers
from daelab.probe._shallow import run_knn, run_linear
from daelab.probe._stacked import StackedClassifier, parameter_counts
from daelab.stats import size_verdict


@pytest.fixture(autouse=True)
def one_thread():
    """These models are tiny: a second OpenMP thread only adds synchronisation, which on a shared,
    loaded machine turns milliseconds per step into hundreds."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _blobs(n: int = 450, dim: int = 12, seed: int = 0):
    """Ten well-separated Gaussian clusters: any sensible probe should get nearly all right."""
    generator = torch.Generator().manual_seed(seed)
    centres = torch.randn(10, dim, generator=generator) * 4
    labels = torch.randint(0, 10, (n,), generator=generator)
    return centres[labels] + torch.randn(n, dim, generator=generator) * 0.5, labels


def test_parameter_count_matches_the_study():
    assert parameter_counts(196) == {"trainable": 15_082, "bn_statistics": 64, "total": 15_146}
    assert parameter_counts(784)["trainable"] == 784 * 64 + 64 + 2_080 + 64 + 330


def test_keras_validation_split_takes_the_floor():
    assert keras_validation_split(60_000, 2 / 9) == 46_666  # 365 steps of 128, as in the study's log
    assert keras_validation_split(600, 2 / 9) == 466
    with pytest.raises(ValueError):
        keras_validation_split(1, 0.5)


def test_glorot_init_limits_and_shared_upper_layers():
    narrow, wide = StackedClassifier(196, 2), StackedClassifier(784, 2)
    narrow.reset_parameters([seed_generator(s, 0) for s in (0, 1)])
    wide.reset_parameters([seed_generator(s, 0) for s in (0, 1)])
    assert narrow.w1.abs().max() <= (6 / (196 + 64)) ** 0.5
    assert narrow.w1.abs().max() > 0.9 * (6 / (196 + 64)) ** 0.5
    # Same seed, different input width: the layers whose shapes agree start equal; seeds differ.
    assert torch.equal(narrow.w2, wide.w2) and torch.equal(narrow.w3, wide.w3)
    assert not torch.equal(narrow.w2[0], narrow.w2[1])
    assert torch.count_nonzero(narrow.b1) == 0


def test_stacked_seeds_equal_seeds_trained_one_by_one():
    features, labels = _blobs()
    cut = keras_validation_split(len(features), 2 / 9)
    settings = ClassifierSettings(epochs=3, batch_size=32)
    args = (features[:cut], labels[:cut], features[cut:], labels[cut:])
    stacked = train_classifiers(*args, seeds=[3, 4, 5], settings=settings)
    for s, seed in enumerate([3, 4, 5]):
        alone = train_classifiers(*args, seeds=[seed], settings=settings)
        for name, value in alone.model.state_dict().items():
            torch.testing.assert_close(stacked.model.state_dict()[name][s], value[0], rtol=1e-5, atol=1e-6)
        assert stacked.val_accuracy[s] == alone.val_accuracy[0]
    assert len(set(map(tuple, stacked.model.w1.detach().flatten(1).tolist()))) == 3  # the seeds really differ


def test_feature_sets_trained_together_equal_each_alone():
    features, labels = _blobs(n=400, dim=16)
    other = features.flip(1) * 0.5 + 1.0  # a second feature set of the same width
    cut = keras_validation_split(len(features), 2 / 9)
    settings = ClassifierSettings(epochs=2, batch_size=32)
    joint = train_classifiers([features[:cut], other[:cut]], labels[:cut], [features[cut:], other[cut:]],
                              labels[cut:], seeds=[3, 4], settings=settings)
    assert joint.model.n_seeds == 4
    for k, feats in enumerate((features, other)):
        alone = train_classifiers(feats[:cut], labels[:cut], feats[cut:], labels[cut:], seeds=[3, 4],
                                  settings=settings)
        for name, value in alone.model.state_dict().items():
            torch.testing.assert_close(joint.model.state_dict()[name][2 * k:2 * k + 2], value, rtol=1e-5, atol=1e-6)
        assert joint.val_accuracy[2 * k:2 * k + 2] == alone.val_accuracy
    assert not torch.equal(joint.model.w1[0], joint.model.w1[2])  # same seed, other features: trained apart
    with pytest.raises(ValueError, match="same shape"):
        train_classifiers([features[:cut], other[:cut, :8]], labels[:cut], [features[cut:], other[cut:, :8]],
                          labels[cut:], seeds=[0], settings=settings)


@pytest.mark.parametrize("batch_size", [32, 50])  # 50: a partial last batch (349 = 6 * 50 + 49)
def test_fused_steps_equal_autograd(batch_size):
    from daelab.kernels.fused import load_kernels
    if load_kernels() is None:
        pytest.skip("no C compiler for the fused kernels")
    features, labels = _blobs(n=449, dim=20)
    cut = keras_validation_split(len(features), 2 / 9)
    settings = ClassifierSettings(epochs=3, batch_size=batch_size)
    args = (features[:cut], labels[:cut], features[cut:], labels[cut:])
    fused = train_classifiers(*args, seeds=[1, 2], settings=settings, fused=True)
    reference = train_classifiers(*args, seeds=[1, 2], settings=settings, fused=False)
    for name, value in reference.model.state_dict().items():
        torch.testing.assert_close(fused.model.state_dict()[name], value, rtol=1e-4, atol=1e-5, msg=name)
    assert not torch.equal(fused.model.w1, StackedClassifier(20, 2).w1)  # it trained
    assert fused.val_accuracy == reference.val_accuracy


def test_more_classes_than_the_c_tail_holds_train_like_autograd():
    # the C classifier tail has room for 16 classes; a 20-class set (KMNIST-49-like) must not use it
    generator = torch.Generator().manual_seed(3)
    labels = torch.randint(0, 20, (300,), generator=generator)
    features = torch.randn(20, 12, generator=generator)[labels] * 3 + torch.randn(300, 12, generator=generator)
    args = (features[:240], labels[:240], features[240:], labels[240:])
    settings = ClassifierSettings(epochs=2, batch_size=32)
    fused = train_classifiers(*args, seeds=[0], settings=settings, n_classes=20, fused=True)
    reference = train_classifiers(*args, seeds=[0], settings=settings, n_classes=20, fused=False)
    for name, value in reference.model.state_dict().items():
        torch.testing.assert_close(fused.model.state_dict()[name], value, rtol=1e-4, atol=1e-5, msg=name)


def test_epoch_masks_rate_and_scale_with_and_without_kernels():
    from daelab.kernels.fused import load_kernels
    from daelab.probe._classifier_step import epoch_masks
    for lib in {None, load_kernels()}:
        masks = epoch_masks([seed_generator(7, 1), seed_generator(8, 1)], torch.empty(2, 5000, 96), lib)
        assert masks.unique().tolist() == [0.0, pytest.approx(1 / 0.6)]
        assert float((masks > 0).float().mean()) == pytest.approx(0.6, abs=0.005)
        assert not torch.equal(masks[0], masks[1])
        again = epoch_masks([seed_generator(7, 1)], torch.empty(1, 5000, 96), lib)
        assert torch.equal(again[0], masks[0])  # a seed's masks do not depend on its neighbours


def test_early_stopping_keeps_the_best_epoch():
    features, labels = _blobs(seed=1)
    cut = keras_validation_split(len(features), 2 / 9)
    fit = train_classifiers(features[:cut], labels[:cut], features[cut:], labels[cut:], seeds=[0, 1],
                            settings=ClassifierSettings(epochs=60, batch_size=32, early_stopping=3))
    for s in range(2):
        history = [row[s] for row in fit.val_history[:fit.epochs_run[s]]]
        assert fit.epochs_run[s] == fit.best_epoch[s] + 3 or fit.epochs_run[s] == 60
        assert fit.best_epoch[s] == 1 + int(np.argmax(history))  # first epoch reaching the maximum
        assert fit.val_accuracy[s] == pytest.approx(max(history))  # the restored weights are the best ones


@pytest.mark.parametrize("probe", ["mlp", "linear", "knn"])
def test_every_probe_separates_separable_data(probe):
    features, labels = _blobs(n=600, seed=2)
    train_x, train_y, test_x, test_y = features[:400], labels[:400], features[400:], labels[400:]
    if probe == "mlp":
        fit = train_classifiers(train_x[:320], train_y[:320], train_x[320:], train_y[320:], seeds=[0, 1],
                                settings=ClassifierSettings(epochs=30, batch_size=32))
        accuracy = (fit.model.predict(test_x) == test_y).float().mean(dim=1)
        assert accuracy.min() >= 0.95
    else:
        run = run_linear if probe == "linear" else run_knn
        predictions, _ = run(train_x.numpy(), train_y.numpy(), test_x.numpy())
        assert (predictions == test_y.numpy()).mean() >= 0.95


def test_probes_in_worker_processes_give_the_same_results(tiny_run, tiny_dataset):
    # two classifier stacks (raw; codes+pca) and six shallow probes: every job goes to the two workers
    # early stopping (patience 1) too, so that copies stop at different epochs and restore their best weights
    common = dict(seeds=2, epochs=4, batch_size=64, early_stopping=1, features=("codes", "raw", "pca"),
                  probes=("mlp", "linear", "knn"))
    alone = probe_run(tiny_run, ProbeConfig(workers=1, **common), dataset=tiny_dataset, progress=False)
    pooled = probe_run(tiny_run, ProbeConfig(workers=2, **common), dataset=tiny_dataset, progress=False)
    keys = ("feature", "probe", "mean", "accuracies", "iterations", "k", "val_accuracy", "epochs_run", "best_epoch",
            "trained_with")
    assert [{k: r.get(k) for k in keys} for r in pooled["results"]] == [{k: r.get(k) for k in keys}
                                                                       for r in alone["results"]]
    assert pooled["comparisons"] == alone["comparisons"] and len(pooled["results"]) == 9
    assert pooled["confusion"] == alone["confusion"]
    assert all(r["seconds"] > 0 for r in pooled["results"])
    assert torch.get_num_threads() == 1  # the jobs' thread settings did not leak into this process


def test_probe_config_rejects_unknown_names():
    with pytest.raises(ConfigError, match="valid: mlp, linear, knn"):
        ProbeConfig(probes=("mlp", "svm"))
    with pytest.raises(ConfigError, match="valid: codes, codes_noisy, raw, pca"):
        ProbeConfig(features=("pixels",))
    for margin in (0.0, -0.01, 1.0):
        with pytest.raises(ConfigError, match=r"margin must be in \(0, 1\)"):
            ProbeConfig(margin=margin)


def test_probe_run_end_to_end(tiny_run, tiny_dataset):
    config = ProbeConfig(seeds=3, epochs=8, batch_size=64, features=("codes", "raw", "pca", "codes_noisy"))
    report = probe_run(tiny_run, config, dataset=tiny_dataset, progress=False)
    saved = json.loads((tiny_run / "probe.json").read_text())
    assert saved["headline"] == json.loads(json.dumps(report["headline"]))
    for key in ("config", "data", "seeds", "features", "probes", "classifier_params", "results", "comparisons",
                "headline", "study", "best", "confusion", "figures"):
        assert key in saved, key
    assert saved["data"]["n_train"] == 466 and saved["data"]["n_val"] == 134
    assert saved["features"]["pca"]["dim"] == saved["features"]["codes"]["dim"] == 196
    assert saved["features"]["codes_noisy"]["noise"] == "gaussian:0.1"
    assert len(saved["results"]) == 4 * 3
    for row in saved["results"]:
        assert row["lo"] <= row["mean"] <= row["hi"]
        assert row["n"] == (3 if row["probe"] == "mlp" else 1)
        assert row["varies_with_seed"] == (row["probe"] == "mlp")
    headline = saved["headline"]
    assert (headline["probe"], headline["a"], headline["b"], headline["over"]) == ("mlp", "codes", "raw", "seeds")
    assert len(headline["differences"]) == 3
    assert headline["verdict"] in ("codes better", "raw better", "no detectable difference")
    assert saved["study"]["codes_accuracy"] == 0.8752 and saved["study"]["raw_accuracy"] == 0.8764
    matrix = np.array(saved["confusion"]["matrix"])
    assert matrix.shape == (10, 10) and matrix.sum() == 200
    for figure in saved["figures"].values():
        assert (tiny_run / figure).stat().st_size > 1000
    assert "| codes | mlp |" in (tiny_run / "probe.md").read_text()


def test_cli_probe_unknown_name_is_one_line(tiny_run, capsys):
    assert main(["probe", str(tiny_run), "--probes", "svm"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "unknown probe 'svm'" in err and "valid: mlp, linear, knn" in err


# ---------------------------------------------------------------- DAE seeds in the design (issue 21)
@pytest.fixture(scope="module")
def second_run(tmp_path_factory, tiny_dataset):
    """The tiny run's config trained with seed 1: a second DAE seed (a second 'machine')."""
    from daelab.models import ModelConfig
    from daelab.train import TrainConfig, fit
    run_dir = tmp_path_factory.mktemp("tiny_run_seed1")
    fit(ModelConfig(), TrainConfig(epochs=2, batch_size=64, seed=1), run_dir, dataset=tiny_dataset, progress=False)
    return run_dir


DESIGN = dict(seeds=2, epochs=3, batch_size=64, features=("codes", "raw", "codes_noisy"),
              probes=("mlp", "linear", "knn"), workers=1, n_boot=200)


def test_one_run_states_its_scope_and_keeps_per_image_correctness(tiny_run, tiny_dataset, tmp_path):
    from daelab.probe import load_correct, probe_runs
    report = probe_runs([tiny_run], ProbeConfig(**DESIGN), dataset=tiny_dataset, progress=False, out_dir=tmp_path)
    saved = json.loads((tmp_path / "probe.json").read_text())
    assert saved["interval_over"]["dae_seeds"] == 1 and saved["interval_over"]["scope"] == "for this one trained DAE"
    headline = saved["headline"]
    assert headline["interval_over"]["dae_seeds"] == 1 and headline["interval_over"]["classifier_seeds"] == 2
    assert headline["interval_over"]["test_images"] == 200 and headline["over"] == "seeds"
    assert headline["verdict_scoped"] == f"{headline['verdict']} for this one trained DAE"
    assert headline["interval"]["lo"] <= headline["interval"]["mean"] <= headline["interval"]["hi"]
    # each comparison also places its design interval against the margin, with the same interval as the verdict
    for comparison in saved["comparisons"]:
        assert comparison["margin"] == 0.01
        assert comparison["size_verdict"] == size_verdict(comparison["interval"], 0.01, comparison["a"],
                                                          comparison["b"])
    markdown = (tmp_path / "probe.md").read_text()
    assert f"**Its size, against a margin of ±0.01: {headline['size_verdict']}.**" in markdown
    correct = load_correct(tmp_path)
    assert set(correct) == {(f, p) for f in DESIGN["features"] for p in DESIGN["probes"]}
    for row in saved["results"]:
        stored = correct[row["feature"], row["probe"]]
        assert stored.shape == (1, 2 if row["probe"] == "mlp" else 1, 200) and stored.dtype == bool
        assert stored[0].mean(axis=1).tolist() == row["accuracies"] == row["accuracies_by_dae"][0]
    assert all(np.array_equal(report["correct_arrays"][key], correct[key]) for key in correct)
    assert saved["figures"]["seeds"] == "figures/probe_seeds.png"
    assert (tmp_path / saved["figures"]["seeds"]).stat().st_size > 1000
    markdown = (tmp_path / "probe.md").read_text()
    assert "for this one trained DAE" in markdown and "1 × 2 × 200" in markdown


def test_several_daes_are_compared_over_dae_seeds_classifier_seeds_and_images(tiny_run, second_run, tiny_dataset,
                                                                              tmp_path):
    from daelab.probe import load_correct, probe_runs
    from daelab.stats import hierarchical_bootstrap
    config = ProbeConfig(**DESIGN)
    alone = probe_runs([tiny_run], config, dataset=tiny_dataset, progress=False, out_dir=tmp_path / "alone")
    both = probe_runs([tiny_run, second_run], config, dataset=tiny_dataset, progress=False, out_dir=tmp_path / "both")
    assert both["dae_seeds"] == [0, 1] and both["interval_over"]["dae_seeds"] == 2
    rows = {(r["feature"], r["probe"]): r for r in both["results"]}
    rows_alone = {(r["feature"], r["probe"]): r for r in alone["results"]}
    for (feature, probe), row in rows.items():
        by_dae = row["accuracies_by_dae"]
        assert len(by_dae) == (2 if feature in ("codes", "codes_noisy") else 1)
        assert by_dae[0] == rows_alone[feature, probe]["accuracies"]  # the first DAE probes as it does alone
        assert row["interval_over"]["dae_seeds"] == len(by_dae)
    assert both["run_dirs"] == [str(tiny_run), str(second_run)]
    correct = load_correct(tmp_path / "both")
    assert correct["codes", "mlp"].shape == (2, 2, 200) and correct["raw", "mlp"].shape == (1, 2, 200)
    assert correct["codes", "knn"].shape == (2, 1, 200)
    comparisons = {(c["probe"], c["a"], c["b"]): c for c in both["comparisons"]}
    assert set(comparisons) == {(p, a, b) for p in DESIGN["probes"] for a, b in (("codes", "raw"),
                                                                                   ("codes_noisy", "codes"))}
    for (probe, a, b), comparison in comparisons.items():
        over = comparison["interval_over"]
        assert (over["dae_seeds"], over["classifier_seeds"], over["test_images"]) == (2, 2 if probe == "mlp" else 1,
                                                                                      200)
        assert comparison["verdict_scoped"] == f"{comparison['verdict']} over 2 trained DAEs"
        assert comparison["over"].endswith("of the first DAE")
        # the interval is reproducible from what the probe stored
        again = hierarchical_bootstrap(correct[a, probe], correct[b, probe], 0.95, 200, 0)
        assert (again["lo"], again["hi"]) == (comparison["interval"]["lo"], comparison["interval"]["hi"])
    # today's fields are the first DAE's
    first = {(c["probe"], c["a"], c["b"]): c for c in alone["comparisons"]}
    for key, comparison in comparisons.items():
        assert [comparison[k] for k in ("mean", "lo", "hi", "n")] == [first[key][k] for k in ("mean", "lo", "hi", "n")]
    assert "over 2 trained DAEs" in (tmp_path / "both" / "probe.md").read_text()
    assert (tmp_path / "both" / "figures" / "probe_seeds.png").stat().st_size > 1000


def test_runs_of_other_configs_or_one_seed_are_refused(tiny_run, tiny_dataset, tmp_path):
    import shutil

    from daelab.probe import probe_runs
    from daelab.probe._pipeline import _check_one_design
    copy = tmp_path / "copy"
    shutil.copytree(tiny_run, copy)
    with pytest.raises(ConfigError, match="two runs have seed 0") as error:
        probe_runs([tiny_run, copy], ProbeConfig(**DESIGN), dataset=tiny_dataset, progress=False, out_dir=tmp_path)
    assert "\n" not in str(error.value)
    checkpoint = {"model_config": {"name": "mlp", "code_dim": 196}, "train_config": {"seed": 0, "epochs": 2,
                                                                                    "noise": "gaussian:0.1"}}
    other = {"model_config": {"name": "mlp", "code_dim": 196}, "train_config": {"seed": 1, "epochs": 3,
                                                                               "noise": "gaussian:0.2", "threads": 4}}
    with pytest.raises(ConfigError, match=r"other settings than a \(epochs, noise\)"):
        _check_one_design([Path("a"), Path("b")], [checkpoint, other])
    same = {**other, "train_config": {**checkpoint["train_config"], "seed": 3, "threads": 4}}
    assert _check_one_design([Path("a"), Path("b")], [checkpoint, same]) == [0, 3]
    with pytest.raises(ConfigError, match="no run directory"):
        probe_runs([])


def test_epoch_masks_refuse_an_output_the_kernel_cannot_walk():
    from daelab.kernels.fused import load_kernels
    from daelab.probe._classifier_step import epoch_masks
    lib = load_kernels()
    if lib is None:
        pytest.skip("no C compiler for the fused kernels")
    strided = torch.empty(1, 96, 50).transpose(1, 2)  # (1, 50, 96) whose rows are not contiguous
    with pytest.raises(ValueError, match="contiguous"):
        epoch_masks([seed_generator(0, 1)], strided, lib)
