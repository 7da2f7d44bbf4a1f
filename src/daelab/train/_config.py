"""Training settings: :class:`TrainConfig`, its bounds, and how ``auto`` device and precision resolve.

The defaults reproduce the study (Adam 1e-3, MSE, batch 256, 100 epochs, Gaussian noise 0.1). Every
setting is checked when the config is built, so a bad flag is a one-line :class:`ConfigError` before
any data is read; the checks that need the data (the batch size against the number of images, the
image size against the model's input) live in :func:`daelab.train.prepare_data`.
"""
from __future__ import annotations

import math
import os
from dataclasses import dataclass, field

import torch

from daelab.errors import ConfigError
from daelab.noise import parse_noise
from daelab.seeds import STRIDE

PRECISIONS = ("auto", "fp32", "bf16")
KERNELS = ("auto", "torch")
LR_SCHEDULES = ("constant", "cosine")
# What training on an image folder uses when the patch settings are not given (the natural models' defaults).
DEFAULT_PATCH_SIZE = 40
DEFAULT_PATCHES_PER_EPOCH = 12_800
DEFAULT_VAL_PATCHES = 512
# The cosine schedule ends at this fraction of --lr.
COSINE_FLOOR = 0.01

# Each epoch's order is drawn from seed * STRIDE + epoch (daelab.seeds.epoch_order_seed), and torch
# seeds are at most 2**64 - 1: this keeps every derived seed below 2**63 for any realistic epoch count.
MAX_SEED = (2 ** 63 - 1) // STRIDE - 1
# More threads than this only oversubscribes the cores (10**5 makes OpenMP spawn 10**5 threads).
THREADS_PER_CPU = 4


def max_threads() -> int:
    """The most ``--threads`` this machine accepts: a few per CPU."""
    return THREADS_PER_CPU * (os.cpu_count() or 1)


@dataclass
class TrainConfig:
    """Training settings. The defaults reproduce the study (Adam 1e-3, MSE, batch 256, 100 epochs)."""

    epochs: int = field(default=100, metadata={"help": "number of epochs"})
    batch_size: int = field(default=256, metadata={"help": "samples per optimizer step"})
    lr: float = field(default=1e-3, metadata={"help": "Adam learning rate"})
    noise: str = field(default="gaussian:0.1", metadata={"help": "training noise spec NAME:LEVEL", "metavar": "SPEC"})
    seed: int = field(default=0, metadata={"help": "random seed (weights, order, noise, dropout)"})
    subset: int | None = field(default=None, metadata={"help": "train on the first N training images only"})
    val_split: float = field(default=0.0, metadata={
        "help": "hold out this fraction of the training images for validation; 0 validates on the noisy "
                "test set as the study did"})
    val_subset: int | None = field(default=None, metadata={"help": "validate on the first N validation images only"})
    early_stopping: int = field(default=0, metadata={"help": "stop after this many epochs without a better "
                                                             "validation loss; 0 = off"})
    precision: str = field(default="auto", metadata={"help": "matmul precision of the training step "
                                                            "(bf16: bf16 weights for forward/backward, fp32 master "
                                                            "weights, within 2%% of fp32's 10-epoch validation "
                                                            "loss (docs/performance.md); auto: bf16 "
                                                            "where the CPU/GPU has native bf16, else fp32)",
                                                    "choices": PRECISIONS})
    kernels: str = field(default="auto", metadata={
        "help": "auto: the study's MLP training in one CPU process runs daelab's fused C kernels, in bf16 or "
                "fp32 (compiled on first use; PyTorch ops where no C compiler is found); conv models, torchrun and "
                "GPUs use PyTorch ops; torch: PyTorch ops only",
        "choices": KERNELS})
    device: str = field(default="auto", metadata={"help": "cpu, cuda, cuda:N or auto (CUDA when present)"})
    threads: int = field(default=0, metadata={"help": "CPU threads for PyTorch; 0 = PyTorch's default"})
    checkpoint_every: int = field(default=0, metadata={"help": "also checkpoint every N steps within an epoch; "
                                                               "0 = at the end of each epoch only"})
    data_dir: str | None = field(default=None, metadata={"help": "dataset directory or .npz (default: search "
                                                                 "$DAELAB_DATA, the user cache, "
                                                                 "/usr/share/datasets/fashion-mnist)",
                                                         "metavar": "PATH"})
    sync_bn: bool = field(default=False, metadata={"help": "under torchrun, synchronise BatchNorm statistics "
                                                           "across processes"})
    patch_size: int | None = field(default=None, metadata={
        "help": "training on an image folder (--data-dir DIR of PNG/JPEG): side of the random patches drawn each "
                f"epoch, {DEFAULT_PATCH_SIZE} when not given; refused for other data"})
    patches_per_epoch: int | None = field(default=None, metadata={
        "help": f"training on an image folder: patches drawn per epoch, {DEFAULT_PATCHES_PER_EPOCH:,} when not given "
                f"(validation: --val-subset patches, {DEFAULT_VAL_PATCHES} when not given); refused for other data"})
    val_dir: str | None = field(default=None, metadata={
        "help": "training on an image folder: validate on fixed noisy patches of this folder's images (when not "
                "given: of the --val-split held-out images, or of the training images when val-split is 0)",
        "metavar": "DIR"})
    lr_schedule: str = field(default="constant", metadata={
        "help": f"learning rate per epoch: constant, or cosine from --lr down to {COSINE_FLOOR:g} x --lr at the "
                "last epoch", "choices": LR_SCHEDULES})
    lr_restart_after: int = field(default=0, metadata={
        "help": "cosine schedule with one warm restart: the first cosine ends after this many epochs, and the "
                "epochs after them run a second cosine from --lr-restart-peak x --lr down to the same floor; "
                "0 = one cosine over all epochs", "metavar": "N"})
    lr_restart_peak: float = field(default=0.25, metadata={
        "help": "the second cosine's starting learning rate as a fraction of --lr (with --lr-restart-after)",
        "metavar": "F"})
    bn_recalibration: int = field(default=0, metadata={
        "help": "before each validation, set BatchNorm's running statistics to their exact average over N fixed "
                "training batches with the epoch's weights (precise BatchNorm; the weights' path is unchanged); "
                "0 = PyTorch's running averages", "metavar": "N"})

    def __post_init__(self):
        checks = [
            (self.epochs >= 1, "epochs must be >= 1", None),
            (self.batch_size >= 1, "batch-size must be >= 1", None),
            (math.isfinite(self.lr) and self.lr > 0, "lr must be a positive number", None),
            (0 <= self.seed <= MAX_SEED, f"seed {self.seed} is out of range", f"use a seed in 0..{MAX_SEED}"),
            (self.subset is None or self.subset >= 1, "subset must be >= 1", None),
            (self.val_subset is None or self.val_subset >= 1, "val-subset must be >= 1", None),
            (0.0 <= self.val_split < 1.0, "val-split must be in [0, 1)", None),
            (self.early_stopping >= 0, "early-stopping must be >= 0", None),
            (self.precision in PRECISIONS, f"precision must be one of {', '.join(PRECISIONS)}", None),
            (self.kernels in KERNELS, f"kernels must be one of {', '.join(KERNELS)}", None),
            (self.threads >= 0, "threads must be >= 0", None),
            (self.threads <= max_threads(), f"threads {self.threads} is more than this machine can use",
             f"use --threads 0 (PyTorch's default) or at most {max_threads()} ({THREADS_PER_CPU} per CPU)"),
            (self.checkpoint_every >= 0, "checkpoint-every must be >= 0", None),
            (self.patch_size is None or self.patch_size >= 1, "patch-size must be >= 1", None),
            (self.patches_per_epoch is None or self.patches_per_epoch >= 1, "patches-per-epoch must be >= 1", None),
            (self.lr_schedule in LR_SCHEDULES, f"lr-schedule must be one of {', '.join(LR_SCHEDULES)}", None),
            (self.bn_recalibration >= 0, "bn-recalibration must be >= 0", None),
            (self.lr_restart_after >= 0, "lr-restart-after must be >= 0", None),
            (self.lr_restart_after == 0 or self.lr_schedule == "cosine",
             "lr-restart-after applies to the cosine schedule", "add --lr-schedule cosine or drop it"),
            (self.lr_restart_after < self.epochs or self.lr_restart_after == 0,
             f"lr-restart-after {self.lr_restart_after} leaves no epochs for the second cosine",
             f"use fewer than --epochs ({self.epochs}) or 0"),
            (math.isfinite(self.lr_restart_peak) and 0 < self.lr_restart_peak <= 1,
             "lr-restart-peak must be in (0, 1]", None),
        ]
        for ok, message, hint in checks:
            if not ok:
                raise ConfigError(message, hint)
        parse_noise(self.noise)  # validates the spec early, with its own clear error


def epoch_lr(config: TrainConfig, epoch: int) -> float:
    """The learning rate of epoch ``epoch`` (0-based) under ``config.lr_schedule``.

    ``constant`` is ``config.lr``; ``cosine`` falls from ``lr`` at epoch 0 to ``COSINE_FLOOR * lr`` at
    the last epoch along half a cosine (so raising ``--epochs`` on a resume stretches what is left).
    With ``lr_restart_after = N`` the first cosine spans epochs 0..N-1 alone (exactly the schedule of
    an N-epoch run, so such a run can be resumed into this one), and epochs N.. run a second cosine
    from ``lr_restart_peak * lr`` to the same floor.
    """
    if config.lr_schedule == "constant":
        return config.lr
    floor = COSINE_FLOOR * config.lr
    restart = config.lr_restart_after
    if restart and epoch >= restart:
        return _half_cosine(config.lr_restart_peak * config.lr, floor, epoch - restart, config.epochs - restart)
    return _half_cosine(config.lr, floor, epoch, restart or config.epochs)


def _half_cosine(top: float, floor: float, step: int, steps: int) -> float:
    """``top`` at step 0 down to ``floor`` at step ``steps - 1`` along half a cosine (``top`` if one step)."""
    if steps == 1:
        return top
    return floor + (top - floor) * 0.5 * (1.0 + math.cos(math.pi * step / (steps - 1)))


def resolve_device(name: str) -> torch.device:
    """The device ``name`` stands for.

    Parameters
    ----------
    name : str
        ``auto`` (CUDA when available, else the CPU), ``cpu``, ``cuda`` or ``cuda:N``.

    Returns
    -------
    torch.device
        The device; a ``ConfigError`` if it is unknown or not available here.
    """
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise ConfigError(f"unknown device {name!r}", "use cpu, cuda, cuda:N or auto") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"device {name!r} requested but CUDA is not available", "use --device cpu or auto")
    return device


def resolve_precision(precision: str, device: torch.device) -> str:
    """The precision ``precision`` stands for on ``device``.

    Parameters
    ----------
    precision : str
        ``auto``, ``fp32`` or ``bf16``; ``auto`` is ``bf16`` where matmuls have native bf16
        (AVX-512 BF16/AMX CPUs, Ampere+ GPUs), else ``fp32``.
    device : torch.device
        The device training runs on.

    Returns
    -------
    str
        ``fp32`` or ``bf16``.
    """
    # one rule, the one training runs by (daelab.kernels.choose_path, honouring DAELAB_ISA), so config.json
    # records the precision that ran; oneDNN's own query says yes on CPUs that only emulate bf16
    from daelab.kernels import choose_path
    return choose_path(device, precision).precision
