"""Feature probes: are a trained encoder's codes worth more to a classifier than raw pixels?

The study answered with one run each (codes 0.8752 vs pixels 0.8764 test accuracy, reported as
"0.89 vs 0.87"). ``probe_run`` answers with statistics: it extracts feature sets from a run's
encoder and from the images (``codes``, ``codes_noisy``, ``raw``, and ``pca`` -- the classical
linear code of the same width), trains probes on each (``mlp``: the study's classifier, over
``n`` seeds, all seeds of a feature set trained at once by :mod:`daelab.probe._classifier`; ``linear``:
standardised multinomial logistic regression; ``knn``: k nearest neighbours), and compares feature
sets with paired differences and t-intervals (:mod:`daelab.stats`). Every probe trains on the
same split -- Keras' ``validation_split``: the first 7/9 of the training images, the last 2/9
held out -- and is judged on the test set. It writes ``probe.json`` (every number, and the
relative paths of the figures), ``probe.md`` and ``figures/`` into the run directory.
"""
from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from daelab import study
from daelab.config import to_jsonable
from daelab.data import Dataset, load_dataset, to_tensor
from daelab.errors import ConfigError
from daelab.models import in_batches
from daelab.noise import parse_noise
from daelab.probe._classifier import ClassifierSettings, keras_validation_split, parameter_counts, train_classifiers
from daelab.probe._classifier import warm_up as classifier_warm_up
from daelab.probe._shallow import run_shallow
from daelab.probe._shallow import warm_up as shallow_warm_up
from daelab.runs import load_model, write_json
from daelab.seeds import CODES_NOISY
from daelab.stats import mean_ci, paired_difference, verdict
from daelab.workers import WorkerPool, available_cores, report

log = logging.getLogger(__name__)

FEATURES = {
    "codes": "encoder codes of the clean images (model in eval mode)",
    "codes_noisy": "encoder codes of the images corrupted with the run's training noise (one fixed draw)",
    "raw": "the raw pixels in [0, 1]",
    "pca": "PCA of the raw pixels to the code width, fit on the probe's training split only",
}
PROBES = {
    "mlp": "the study's classifier (Dense 64-Dropout-Dense 32-Dropout-BatchNorm-Dense 10, Adam, batch 128)",
    "linear": "multinomial logistic regression (lbfgs) on standardised features",
    "knn": "k nearest neighbours (Euclidean, brute force) on the features as they are",
}
# Pairs compared when both are present: (a, b) asks "is a better than b?".
COMPARISONS = (("codes", "raw"), ("codes", "pca"), ("pca", "raw"), ("codes_noisy", "codes"))
CLASS_NAMES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag",
               "Ankle boot")
JSON_FILE, MARKDOWN_FILE = "probe.json", "probe.md"
CONFUSION_FIGURE, ACCURACY_FIGURE = "figures/confusion.png", "figures/probe_accuracy.png"


def _names_help(names: dict) -> str:
    return "; ".join(f"{k}: {v}" for k, v in names.items())


@dataclass
class ProbeConfig:
    """Probe settings. The defaults repeat the study's classifier over 5 seeds beside two standard probes."""

    seeds: int = field(default=5, metadata={"help": "seeds per (feature, probe) for the seeded probes"})
    seed: int = field(default=0, metadata={"help": "first seed; the seeds are seed, seed+1, ..."})
    features: tuple[str, ...] = field(default=("codes", "raw", "pca"), metadata={
        "help": "feature sets, comma-separated, from " + ", ".join(FEATURES)})
    probes: tuple[str, ...] = field(default=("mlp", "linear", "knn"), metadata={
        "help": "probes, comma-separated, from " + ", ".join(PROBES)})
    epochs: int = field(default=100, metadata={"help": "epochs of the mlp probe (the study: 100)"})
    batch_size: int = field(default=128, metadata={"help": "batch size of the mlp probe (the study: 128)"})
    lr: float = field(default=1e-3, metadata={"help": "Adam learning rate of the mlp probe"})
    early_stopping: int = field(default=0, metadata={
        "help": "mlp: stop after this many epochs without better validation accuracy and keep the best "
                "weights; 0 = off, as in the study's fit (its patience-20 callback was never passed)"})
    val_split: float = field(default=2 / 9, metadata={
        "help": "fraction held out from the END of the training images, as Keras' validation_split"})
    knn_k: int = field(default=5, metadata={"help": "neighbours of the knn probe"})
    linear_c: float = field(default=1.0, metadata={"help": "inverse L2 strength of the linear probe"})
    linear_max_iter: int = field(default=300, metadata={"help": "lbfgs iterations of the linear probe"})
    subset: int | None = field(default=None, metadata={"help": "use the first N training images only"})
    test_subset: int | None = field(default=None, metadata={"help": "test on the first N test images only"})
    checkpoint: str = field(default="best", metadata={"help": "which checkpoint of the run",
                                                      "choices": ("best", "last")})
    level: float = field(default=0.95, metadata={"help": "confidence level of the intervals"})
    # Default 0. With worker processes (see workers) every probe job runs on one thread in its own
    # process. Without them the classifier (fused kernels) and kNN run on every core, and the linear
    # probe on one, which measured fastest on a quiet 2-core machine (5-epoch probe: MLPs 12.0 s ->
    # 8.5 s, kNN 27 s -> 15 s with 2 threads; lbfgs 31 s with 1 thread, 54 s with 2). On a machine
    # shared with other jobs use 1: spinning OpenMP threads on busy cores once made a classifier
    # epoch 100x slower.
    threads: int = field(default=0, metadata={"help": "CPU threads for PyTorch and scikit-learn; 0 = every core "
                                                     "(the linear probe on one); use 1 on a busy shared machine"})
    workers: int = field(default=0, metadata={"help": "processes that run the probes side by side, one thread each; "
                                                     "0 = one per CPU core (5,000+ training images), 1 = none"})
    data_dir: str | None = field(default=None, metadata={"help": "dataset (default: the run's own data_dir, "
                                                                 "then the usual search)", "metavar": "PATH"})

    def __post_init__(self):
        self.features = _check_names(self.features, FEATURES, "feature")
        self.probes = _check_names(self.probes, PROBES, "probe")
        checks = [(self.seeds >= 1, "seeds must be >= 1"), (self.epochs >= 1, "epochs must be >= 1"),
                  (self.batch_size >= 1, "batch-size must be >= 1"), (self.lr > 0, "lr must be > 0"),
                  (self.early_stopping >= 0, "early-stopping must be >= 0"),
                  (0 < self.val_split < 1, "val-split must be in (0, 1)"), (self.knn_k >= 1, "knn-k must be >= 1"),
                  (self.linear_c > 0, "linear-c must be > 0"), (self.linear_max_iter >= 1, "linear-max-iter >= 1"),
                  (self.subset is None or self.subset >= 2, "subset must be >= 2"),
                  (self.test_subset is None or self.test_subset >= 1, "test-subset must be >= 1"),
                  (0 < self.level < 1, "level must be in (0, 1)"), (self.threads >= 0, "threads must be >= 0"),
                  (self.workers >= 0, "workers must be >= 0")]
        for ok, message in checks:
            if not ok:
                raise ConfigError(message)


def _check_names(names, valid: dict, what: str) -> tuple[str, ...]:
    names = tuple(dict.fromkeys(str(n).strip() for n in names if str(n).strip()))
    unknown = [n for n in names if n not in valid]
    if unknown or not names:
        raise ConfigError(f"unknown {what} {', '.join(map(repr, unknown))}" if unknown else f"no {what} given",
                          f"valid: {', '.join(valid)}")
    return names


# --------------------------------------------------------------------------------- features
@torch.inference_mode()
def encode_images(model: torch.nn.Module, images: np.ndarray, batch_size: int = 4096) -> torch.Tensor:
    """Codes (N, code_dim) float32 of images (N, H, W), with the model in eval mode."""
    model.eval()
    device = next(model.parameters()).device
    tensor = to_tensor(images, model.input_layout)
    return in_batches(model.encode, tensor, batch_size, device)


@torch.inference_mode()
def encode_noisy(model: torch.nn.Module, images: np.ndarray, noise_spec: str, generator: torch.Generator,
                 batch_size: int = 4096) -> torch.Tensor:
    """Codes (N, code_dim) of images corrupted once with ``noise_spec`` (drawn from ``generator``)."""
    model.eval()
    device = next(model.parameters()).device
    noise = parse_noise(noise_spec)
    tensor = to_tensor(images, model.input_layout)
    # the noise is drawn on the CPU, batch after batch, so the draw does not depend on the device
    return in_batches(lambda batch: model.encode(noise(batch, generator).to(device)), tensor, batch_size)


def pca_features(train_pixels: np.ndarray, fit_rows: int, test_pixels: np.ndarray, dim: int, seed: int = 0):
    """PCA to ``dim`` components fit on ``train_pixels[:fit_rows]`` only; returns (train, test) projections."""
    from sklearn.decomposition import PCA
    dim = min(dim, fit_rows, train_pixels.shape[1])
    pca = PCA(n_components=dim, svd_solver="full", random_state=seed).fit(train_pixels[:fit_rows])
    return (pca.transform(train_pixels).astype(np.float32), pca.transform(test_pixels).astype(np.float32),
            float(pca.explained_variance_ratio_.sum()))


def extract_features(model, checkpoint: dict, dataset: Dataset, names, fit_rows: int, seed: int = 0) -> dict:
    """Feature sets by name: ``{name: {"train": (N, D) float32, "test": (M, D), "dim": D, ...}}``."""
    features = {}
    train_pixels = to_tensor(dataset.train_images, "flat").numpy()
    test_pixels = to_tensor(dataset.test_images, "flat").numpy()
    for name in names:
        began = time.perf_counter()
        info: dict = {"description": FEATURES[name]}
        if name == "codes":
            train, test = encode_images(model, dataset.train_images), encode_images(model, dataset.test_images)
        elif name == "codes_noisy":
            spec = checkpoint["train_config"]["noise"]
            generator = CODES_NOISY.generator(seed)
            train = encode_noisy(model, dataset.train_images, spec, generator)
            test = encode_noisy(model, dataset.test_images, spec, generator)
            info["noise"] = spec
        elif name == "raw":
            train, test = torch.from_numpy(train_pixels), torch.from_numpy(test_pixels)
        else:  # pca
            train, test, explained = pca_features(train_pixels, fit_rows, test_pixels, model.code_dim, seed)
            train, test = torch.from_numpy(train), torch.from_numpy(test)
            info["explained_variance"] = explained
        info.update(train=train.contiguous(), test=test.contiguous(), dim=int(train.shape[1]),
                    seconds=time.perf_counter() - began)
        features[name] = info
    return features


# ----------------------------------------------------------------------------------- probes
def _outcome(predictions: np.ndarray, test_y: torch.Tensor, seeds: list[int], varied: str | None, seconds: float,
             **extra) -> dict:
    correct = predictions == test_y.numpy()[None, :]  # (n, M)
    return {"predictions": predictions, "correct": correct, "accuracies": correct.mean(axis=1).tolist(),
            "seeds": seeds, "varied": varied, "seconds": seconds, **extra}


def fit_mlp_stack(trains: list[np.ndarray], train_y: np.ndarray, vals: list[np.ndarray], val_y: np.ndarray,
                  tests: list[np.ndarray], seeds: list[int], settings: ClassifierSettings, threads: int = 0,
                  slot: int = -1, progress: bool = False, desc: str = "mlp") -> dict:
    """The study's classifier on K feature sets of one width, ``len(seeds)`` copies each, trained as one stack.

    A job for :class:`daelab.workers.WorkerPool`: plain arrays in and out, so it runs the same here
    or in a worker process. ``threads`` (0 = leave as is) caps PyTorch's threads while it runs;
    ``slot`` is the progress counter it advances once per epoch in a worker.

    Returns ``{"predictions": (K*S, M) test classes, "val_accuracy", "epochs_run", "best_epoch"
    (per copy), "seconds"}``; copy ``k * S + j`` is feature set k, seed j.
    """
    began = time.perf_counter()
    previous = torch.get_num_threads()
    if threads:
        torch.set_num_threads(threads)
    try:
        fit = train_classifiers([torch.from_numpy(x) for x in trains], torch.from_numpy(train_y),
                                [torch.from_numpy(x) for x in vals], torch.from_numpy(val_y), seeds, settings,
                                progress=progress, desc=desc, on_epoch=lambda epoch: report(slot, epoch))
        tests = [torch.from_numpy(x) for x in tests]
        per_copy = tests[0] if len(tests) == 1 else torch.stack([t for t in tests for _ in seeds])
        predictions = fit.model.predict(per_copy).numpy()
    finally:
        torch.set_num_threads(previous)
    return {"predictions": predictions, "val_accuracy": fit.val_accuracy, "epochs_run": fit.epochs_run,
            "best_epoch": fit.best_epoch, "seconds": time.perf_counter() - began}


def _mlp_args(names: list[str], features: dict, labels: dict, cut: int, seeds: list[int], config: ProbeConfig,
              threads: int, slot: int, progress: bool) -> tuple:
    """The arguments of :func:`fit_mlp_stack` for the feature sets ``names``."""
    settings = ClassifierSettings(config.epochs, config.batch_size, config.lr, config.early_stopping)
    arrays = [features[f] for f in names]
    return ([f["train"][:cut].numpy() for f in arrays], labels["train"][:cut].numpy(),
            [f["train"][cut:].numpy() for f in arrays], labels["train"][cut:].numpy(),
            [f["test"].numpy() for f in arrays], seeds, settings, threads, slot, progress, "mlp/" + "+".join(names))


def _mlp_outcomes(names: list[str], result: dict, features: dict, labels: dict, seeds: list[int]) -> dict[str, dict]:
    """``{name: outcome}`` of one stack, as each feature set would give alone (the stacked training is
    the same arithmetic, tested); each outcome's ``seconds`` is its share of the stack's wall time."""
    varied = "initial weights, sample order and dropout masks (each seed its own streams)"
    outcomes = {}
    for k, name in enumerate(names):
        copies = slice(k * len(seeds), (k + 1) * len(seeds))
        outcomes[name] = _outcome(result["predictions"][copies], labels["test"], seeds, varied,
                                  result["seconds"] / len(names), val_accuracy=result["val_accuracy"][copies],
                                  epochs_run=result["epochs_run"][copies], best_epoch=result["best_epoch"][copies],
                                  params=parameter_counts(features[name]["dim"]),
                                  trained_with=[n for n in names if n != name])
    return outcomes


def _shallow_args(probe: str, feature: dict, labels: dict, cut: int, config: ProbeConfig, threads: int) -> tuple:
    """The arguments of :func:`daelab.probe._shallow.run_shallow` for ``probe`` on one feature set."""
    return (probe, feature["train"][:cut].numpy(), labels["train"][:cut].numpy(), feature["test"].numpy(),
            config.linear_c, config.linear_max_iter, config.knn_k, threads)


def _shallow_outcome(result: tuple, labels: dict, seeds: list[int]) -> dict:
    prediction, extra, seconds = result
    # deterministic given the data: run once, not once per seed
    return _outcome(prediction[None, :], labels["test"], seeds[:1], None, seconds, **extra)


def _await(pending: dict, pool: WorkerPool, epochs: int, progress: bool) -> None:
    """Wait for the pooled jobs, with one progress bar over the classifier epochs and the shallow fits."""
    from concurrent.futures import FIRST_COMPLETED, wait
    stacks = [future for key, future in pending.items() if key[0] == "mlp"]  # in the order of their slots
    others = [future for key, future in pending.items() if key[0] != "mlp"]
    waiting = set(pending.values())
    with tqdm(total=len(stacks) * epochs + len(others), desc="probes (mlp epochs + linear/knn fits)", leave=False,
              disable=not progress) as bar:
        while waiting:
            _, waiting = wait(waiting, timeout=0.5, return_when=FIRST_COMPLETED)
            # a finished stack counts in full (early stopping may end it before the last epoch)
            done = sum(pool.counters[slot] if f in waiting else epochs for slot, f in enumerate(stacks))
            bar.update(done + sum(f not in waiting for f in others) - bar.n)


# -------------------------------------------------------------------------------- statistics
def compare(outcome_a: dict, outcome_b: dict, a: str, b: str, level: float) -> dict:
    """Paired comparison of two feature sets under one probe.

    Seeded probes pair per seed (same seed: same order, dropout masks and -- where the shapes allow
    -- initial weights). Deterministic probes have one run each: they are paired per test image
    (correct_a - correct_b), whose interval measures test-set sampling, not seed-to-seed spread.
    """
    if outcome_a["varied"] and outcome_b["varied"]:
        diff = paired_difference(outcome_a["accuracies"], outcome_b["accuracies"], level)
        over = "seeds"
    else:
        diff = paired_difference(outcome_a["correct"][0], outcome_b["correct"][0], level)
        diff.pop("differences")  # one 0/+-1 value per test image: summarised by the interval
        over = "test images"
    return {"a": a, "b": b, **diff, "over": over, "verdict": verdict(diff, a, b)}


def probe_run(run_dir: str | os.PathLike, config: ProbeConfig | None = None, dataset: Dataset | None = None,
              progress: bool = True) -> dict:
    """Probe the encoder of ``run_dir``; write ``probe.json``, ``probe.md`` and figures there.

    Parameters
    ----------
    run_dir : a run directory written by ``daelab train``.
    config : which features, probes, seeds, and the classifier recipe (defaults: the study's).
    dataset : images to use instead of loading the run's dataset (tests pass a synthetic one).
    progress : show progress bars.

    Returns
    -------
    dict: the content of ``probe.json`` (see its keys: ``results``, ``comparisons``, ``headline``,
    ``study``, ``best``, ``confusion``, ``figures``, ...).
    """
    config = config or ProbeConfig()
    if not config.threads:
        return _probe_run(Path(run_dir), config, dataset, progress)
    # Cap torch *and* the BLAS/OpenMP pools scikit-learn uses: on a shared machine, idle threads
    # spinning in a pool make lbfgs several times slower (measured 7.5x on 2 loaded cores).
    from threadpoolctl import threadpool_limits
    threads = torch.get_num_threads()
    torch.set_num_threads(config.threads)
    try:
        with threadpool_limits(limits=config.threads):
            return _probe_run(Path(run_dir), config, dataset, progress)
    finally:
        torch.set_num_threads(threads)


def _probe_run(run_dir: Path, config: ProbeConfig, dataset: Dataset | None, progress: bool) -> dict:
    from daelab.probe._figures import plot_confusion, plot_probe_accuracy
    began = time.perf_counter()
    model, checkpoint = load_model(run_dir, config.checkpoint)
    if dataset is None:
        dataset = load_dataset(config.data_dir or checkpoint["train_config"].get("data_dir"))
    dataset = dataset.subset(config.subset, config.test_subset)
    n_train = len(dataset.train_images)
    try:
        cut = keras_validation_split(n_train, config.val_split)
    except ValueError as exc:
        raise ConfigError(str(exc), "use more training images or another --val-split") from None
    labels = {"train": torch.from_numpy(dataset.train_labels), "test": torch.from_numpy(dataset.test_labels)}
    n_classes = int(max(labels["train"].max(), labels["test"].max())) + 1
    seeds = list(range(config.seed, config.seed + config.seeds))
    features = extract_features(model, checkpoint, dataset, config.features, cut, config.seed)

    results, outcomes = [], {}
    stacks: list[list[str]] = []  # feature sets of one width train as one stack: less per-step overhead
    if "mlp" in config.probes:
        widths: dict[int, list[str]] = {}
        for fname in config.features:
            widths.setdefault(features[fname]["dim"], []).append(fname)
        stacks = sorted(widths.values(), key=lambda names: -features[names[0]]["dim"])
    shallow = sorted(((f, p) for f in config.features for p in config.probes if p != "mlp"),
                     key=lambda job: -features[job[0]]["dim"])
    jobs = len(stacks) + len(shallow)
    workers = config.workers or (available_cores() if jobs > 1 and cut >= 5000 else 1)
    mlp, shallow_outcomes = {}, {}
    with WorkerPool(workers, warm=shallow_warm_up, counters=len(stacks)) as pool:
        # Every job runs single-threaded in a worker, one per core, longest first (the classifier
        # stacks, then the shallow probes by feature width): this small classifier gains 1.4-1.7x
        # from a second thread, two stacks side by side 2x (measured on 2 cores). With fewer stacks
        # than workers, the stacks train here first on every thread, as the only work running.
        pooled = pool.workers > 1 and len(stacks) >= pool.workers
        pending = {}
        if pooled:
            classifier_warm_up()  # once, before the workers fork: PyTorch's optimizer imports, the C kernels
        for slot, names in enumerate(stacks):
            args = _mlp_args(names, features, labels, cut, seeds, config, 1 if pooled else config.threads, slot,
                             progress and not pooled)
            if pooled:
                pending["mlp", tuple(names)] = pool.submit(fit_mlp_stack, *args)
            else:
                mlp.update(_mlp_outcomes(names, fit_mlp_stack(*args), features, labels, seeds))
        threads = 1 if pool.workers > 1 else config.threads  # one thread per worker process
        for fname, pname in shallow:
            args = _shallow_args(pname, features[fname], labels, cut, config, threads)
            pending[fname, pname] = pool.submit(run_shallow, *args)
        if pooled:
            _await(pending, pool, config.epochs, progress)
        quiet = not progress or pooled or not shallow  # pooled jobs had their bar in _await
        for key, future in tqdm(pending.items(), desc="linear/knn probes", leave=False, disable=quiet):
            result = pool.result(future)
            if key[0] == "mlp":
                mlp.update(_mlp_outcomes(list(key[1]), result, features, labels, seeds))
            else:
                shallow_outcomes[key] = _shallow_outcome(result, labels, seeds)
    for fname in config.features:
        for pname in config.probes:
            outcome = mlp[fname] if pname == "mlp" else shallow_outcomes[fname, pname]
            outcomes[fname, pname] = outcome
            summary = mean_ci(outcome["accuracies"], config.level)
            log.info("probe %-6s on %-11s: accuracy %.4f +- %.4f (n=%d, %.1f s)", pname, fname, summary["mean"],
                     summary["std"], summary["n"], outcome["seconds"])
            row = {"feature": fname, "probe": pname, **summary,
                   "varies_with_seed": outcome["varied"] is not None,
                   "varied": outcome["varied"] or "nothing: deterministic given the data, run once",
                   **{k: v for k, v in outcome.items() if k not in ("predictions", "correct", "varied")}}
            results.append(row)

    comparisons = [{"probe": pname, **compare(outcomes[a, pname], outcomes[b, pname], a, b, config.level)}
                   for pname in config.probes for a, b in COMPARISONS
                   if a in config.features and b in config.features]
    headline = next((c for c in comparisons if (c["probe"], c["a"], c["b"]) == ("mlp", "codes", "raw")),
                    comparisons[0] if comparisons else None)
    best = max(results, key=lambda r: r["mean"])
    best_outcome = outcomes[best["feature"], best["probe"]]
    confusion = np.zeros((n_classes, n_classes), dtype=np.int64)
    np.add.at(confusion, (dataset.test_labels, best_outcome["predictions"][0]), 1)
    class_names = list(CLASS_NAMES) if n_classes == len(CLASS_NAMES) else [str(k) for k in range(n_classes)]

    (run_dir / "figures").mkdir(parents=True, exist_ok=True)
    title = f"{best['probe']} on {best['feature']} (seed {best['seeds'][0]})"
    plot_confusion(confusion, class_names, run_dir / CONFUSION_FIGURE, title)
    plot_probe_accuracy(results, run_dir / ACCURACY_FIGURE, config.level, study.probe_summary())

    report = {
        "version": 1,
        "run_dir": str(run_dir),
        "checkpoint": config.checkpoint,
        "config": to_jsonable(config),
        "data": {"source": dataset.source, "n_train": cut, "n_val": n_train - cut,
                 "n_test": len(dataset.test_images), "n_classes": n_classes,
                 "split": f"train on the first {cut} training images, validate on the last {n_train - cut} "
                          "(Keras validation_split, unshuffled); every probe trains on the same images; "
                          "accuracies are on the test set"},
        "seeds": seeds,
        "level": config.level,
        "features": {k: {key: v for key, v in f.items() if key not in ("train", "test")} for k, f in features.items()},
        "probes": {k: PROBES[k] for k in config.probes},
        "classifier_params": parameter_counts(model.code_dim),
        "results": results,
        "comparisons": comparisons,
        "headline": headline,
        "study": study.probe_summary(),
        "best": {"feature": best["feature"], "probe": best["probe"], "mean": best["mean"]},
        "confusion": {"feature": best["feature"], "probe": best["probe"], "seed": best["seeds"][0],
                      "class_names": class_names, "matrix": confusion.tolist(),
                      "rows": "true class", "columns": "predicted class"},
        "figures": {"confusion": CONFUSION_FIGURE, "accuracy": ACCURACY_FIGURE},
        "seconds": time.perf_counter() - began,
    }
    write_json(run_dir / JSON_FILE, report)
    (run_dir / MARKDOWN_FILE).write_text(format_markdown(report))
    return report


def format_markdown(report: dict) -> str:
    """``probe.md``: the results table (feature x probe) and the comparisons with their verdicts."""
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
