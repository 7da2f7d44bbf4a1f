"""What the probe can be asked for: the feature sets, the probes, the comparisons, and :class:`ProbeConfig`.

The names here are the probe's vocabulary: the CLI lists them in its help, :class:`ProbeConfig`
rejects any other (listing the valid ones), and ``probe.json`` describes each one it used.
"""
from __future__ import annotations

from dataclasses import dataclass, field

from daelab.errors import ConfigError

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
# The feature sets that a trained DAE produces (the others are the same for every DAE seed).
DAE_FEATURES = ("codes", "codes_noisy")
# Pairs compared when both are present: (a, b) asks "is a better than b?".
COMPARISONS = (("codes", "raw"), ("codes", "pca"), ("pca", "raw"), ("codes_noisy", "codes"))
CLASS_NAMES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag",
               "Ankle boot")
# one name per line: the API reference (griffe) reads module attributes from plain assignments
JSON_FILE = "probe.json"
MARKDOWN_FILE = "probe.md"
CONFUSION_FIGURE = "figures/confusion.png"
ACCURACY_FIGURE = "figures/probe_accuracy.png"
SEEDS_FIGURE = "figures/probe_seeds.png"
CORRECT_FILE = "probe_correct.npz"


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
    n_boot: int = field(default=2000, metadata={"help": "bootstrap replicates of the intervals over DAE seeds, "
                                                        "classifier seeds and test images"})
    interval: str = field(default="t", metadata={
        "help": "the verdicts' interval over DAE seeds x classifier seeds x test images: t (Student-t on the "
                "variance components, Satterthwaite) or percentile (of the crossed bootstrap)",
        "choices": ("t", "percentile")})
    margin: float = field(default=0.01, metadata={
        "help": "the largest accuracy difference that counts as negligible: each comparison also says whether its "
                "interval lies within +-margin, beyond it, or crosses it (0.01: one percentage point; the study "
                "claimed a difference of 0.02)"})
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
                  (0 < self.level < 1, "level must be in (0, 1)"), (self.n_boot >= 2, "n-boot must be >= 2"),
                  (self.interval in ("t", "percentile"), "interval must be t or percentile"),
                  (0 < self.margin < 1, "margin must be in (0, 1)"),
                  (self.threads >= 0, "threads must be >= 0"),
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
