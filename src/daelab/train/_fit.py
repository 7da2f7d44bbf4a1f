"""Training: the study's recipe as plain functions, fast on a CPU and exact on resume.

``fit`` drives ``train_steps`` (a chunk of optimizer steps) and ``evaluate_loss`` (validation),
checkpointing after every epoch (and every ``checkpoint_every`` steps when asked) so that a run
killed at any moment resumes from the last checkpoint to the same weights an uninterrupted run
reaches. Batches are index-selected from one float tensor in memory into a reused buffer and noise
is drawn in place into another: no DataLoader, no per-batch allocation on the data path.

Randomness is explicit: the sample order of epoch e is a permutation drawn from ``seed + e`` (the
same on every rank, like ``DistributedSampler.set_epoch``); one ``torch.Generator`` seeded
``seed + rank`` draws the training noise; dropout uses the global generator, seeded once; both
generator states go into every checkpoint. The validation set's noise is drawn once from its own
generator, so every epoch and every run of the same seed is judged on the same noisy images.
"""
from __future__ import annotations

import contextlib
import logging
import math
import signal
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from daelab import distributed as dist
from daelab.checkpoint import BEST, LAST, load_checkpoint, save_checkpoints
from daelab.config import to_jsonable
from daelab.data import Dataset, load_dataset, to_tensor
from daelab.errors import ConfigError, TrainingError, TrainingInterrupted, UsageError
from daelab.kernels.fused import make_fused
from daelab.models import ModelConfig, build_model
from daelab.noise import parse_noise
from daelab.runs import CONFIG_FILE, RunLock, write_json, write_metrics
from daelab.seeds import MODEL_INIT, TRAIN_NOISE, VALIDATION_NOISE
from daelab.train._precision import make_policy

log = logging.getLogger(__name__)

PRECISIONS = ("auto", "fp32", "bf16")
KERNELS = ("auto", "torch")


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
                                                            "weights, within 1%% of fp32 validation loss; auto: bf16 "
                                                            "where the CPU/GPU has native bf16, else fp32)",
                                                    "choices": PRECISIONS})
    kernels: str = field(default="auto", metadata={
        "help": "auto: bf16 MLP training on the CPU runs daelab's fused C kernels (compiled on first use, "
                "~2x faster; PyTorch ops where no C compiler is found); torch: PyTorch ops only",
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

    def __post_init__(self):
        checks = [
            (self.epochs >= 1, "epochs must be >= 1"),
            (self.batch_size >= 1, "batch-size must be >= 1"),
            (math.isfinite(self.lr) and self.lr > 0, "lr must be a positive number"),
            (self.subset is None or self.subset >= 1, "subset must be >= 1"),
            (self.val_subset is None or self.val_subset >= 1, "val-subset must be >= 1"),
            (0.0 <= self.val_split < 1.0, "val-split must be in [0, 1)"),
            (self.early_stopping >= 0, "early-stopping must be >= 0"),
            (self.precision in PRECISIONS, f"precision must be one of {', '.join(PRECISIONS)}"),
            (self.kernels in KERNELS, f"kernels must be one of {', '.join(KERNELS)}"),
            (self.threads >= 0, "threads must be >= 0"),
            (self.checkpoint_every >= 0, "checkpoint-every must be >= 0"),
        ]
        for ok, message in checks:
            if not ok:
                raise ConfigError(message)
        parse_noise(self.noise)  # validates the spec early, with its own clear error


# ----------------------------------------------------------------------------------- helpers
def resolve_device(name: str) -> torch.device:
    """``auto`` -> CUDA when available, else CPU; anything else must name an available device."""
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
    """``auto`` -> ``bf16`` where matmuls have native bf16 (AVX-512 BF16/AMX CPUs, Ampere+ GPUs), else ``fp32``."""
    if precision != "auto":
        return precision
    if device.type == "cuda":
        return "bf16" if torch.cuda.is_bf16_supported() else "fp32"
    try:
        return "bf16" if torch.ops.mkldnn._is_mkldnn_bf16_supported() else "fp32"
    except (AttributeError, RuntimeError):
        return "fp32"


def check_finite(images: torch.Tensor, what: str) -> None:
    if not torch.isfinite(images).all():
        raise ConfigError(f"{what} contain NaN or infinite values", "clean the data first")


@dataclass
class TrainData:
    """Tensors the loop works on: clean training images, and the fixed noisy validation pair."""

    train: torch.Tensor       # (N, ...) clean, float32 in [0, 1]
    val_clean: torch.Tensor   # (M, ...)
    val_noisy: torch.Tensor   # (M, ...) one fixed noise draw


def prepare_data(config: TrainConfig, layout: str, device: torch.device, dataset: Dataset | None = None) -> TrainData:
    """Load, subset and split the data, and draw the fixed validation noise (stream ``VALIDATION_NOISE``)."""
    dataset = dataset if dataset is not None else load_dataset(config.data_dir)
    train = to_tensor(dataset.train_images[: config.subset], layout)
    if config.val_split > 0:
        n_val = max(1, int(round(len(train) * config.val_split)))
        if n_val >= len(train):
            raise ConfigError(f"val-split {config.val_split} leaves no training images out of {len(train)}")
        train, val_clean = train[:-n_val], train[-n_val:]
    else:
        val_clean = to_tensor(dataset.test_images, layout)
    val_clean = val_clean[: config.val_subset]
    check_finite(train, "training images")
    check_finite(val_clean, "validation images")
    generator = VALIDATION_NOISE.generator(config.seed)
    val_noisy = parse_noise(config.noise)(val_clean, generator)
    return TrainData(train.to(device), val_clean.to(device), val_noisy.to(device))


@torch.inference_mode()
def evaluate_loss(model: torch.nn.Module, noisy: torch.Tensor, clean: torch.Tensor, batch_size: int = 4096) -> float:
    """Mean squared error of ``model(noisy)`` against ``clean`` in eval mode (fp32), over all pixels."""
    was_training = model.training
    model.eval()
    total = torch.zeros((), dtype=torch.float64, device=clean.device)
    for start in range(0, len(clean), batch_size):
        denoised = model(noisy[start:start + batch_size]).float()
        total += F.mse_loss(denoised, clean[start:start + batch_size], reduction="sum").double()
    model.train(was_training)
    return float(total) / clean.numel()


def usable_samples(n: int, batch_size: int) -> int:
    """Samples an epoch can use: a last batch of one sample cannot be batch-normalised, so it sits out."""
    return n - 1 if n > 1 and n % batch_size == 1 else n


@dataclass
class StepsResult:
    loss_sum: float   # sum over samples of the per-sample MSE
    samples: int
    steps: int
    seconds: float


def train_steps(policy, optimizer, clean: torch.Tensor, order: torch.Tensor, noise, generator: torch.Generator,
                config: TrainConfig, device: torch.device, start: int, stop: int,
                stop_event: threading.Event | None = None, bar=None, forward=None) -> StepsResult:
    """Run optimizer steps ``start .. stop-1`` of an epoch whose sample order is ``order``.

    Each step index-selects its clean batch into a reused buffer, draws the noise in place into a
    second one, and takes one Adam step on the MSE through the precision ``policy`` (see
    :mod:`daelab.train._precision`); ``forward`` is the module to call (the policy's, or its DDP wrapper).
    A fused policy (:mod:`daelab.kernels.fused`) runs the whole step itself.
    Returns early (after finishing the current step) when ``stop_event`` is set.
    """
    forward = forward or policy.module
    forward.train()
    fused = getattr(policy, "fused", False)
    if fused:  # the C gather reads rows of one dense block (an F-ordered array from sklearn is not one)
        clean = clean.contiguous()
    batch_size = config.batch_size
    if not fused:  # the fused step keeps its own batch buffers
        clean_buf = torch.empty((batch_size,) + tuple(clean.shape[1:]), dtype=clean.dtype, device=device)
        noisy_buf = torch.empty_like(clean_buf)
        low = policy.dtype != clean.dtype
    loss_sum = torch.zeros((), dtype=torch.float64, device=device)
    samples = steps = 0
    began = time.perf_counter()
    for step in range(start, stop):
        index = order[step * batch_size:(step + 1) * batch_size]
        n = len(index)
        if fused:
            loss = policy.step(clean, index, noise, generator)
        else:
            batch, noisy = clean_buf[:n], noisy_buf[:n]
            torch.index_select(clean, 0, index, out=batch)
            noise.apply_(batch, noisy, generator)
            denoised = forward(noisy.to(policy.dtype) if low else noisy)
            loss = F.mse_loss(denoised.float(), batch)
            loss.backward()
            policy.after_backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            policy.after_step()
        loss_sum += loss.detach() * n
        samples += n
        steps += 1
        if bar is not None:
            bar.update(1)
            if steps % 25 == 0:
                bar.set_postfix(loss=f"{float(loss_sum) / samples:.5f}", refresh=False)
        if stop_event is not None and stop_event.is_set():
            break
    return StepsResult(float(loss_sum), samples, steps, time.perf_counter() - began)


class StopSignals:
    """Turn SIGINT/SIGTERM into an event the loop checks after each step (main thread only)."""

    def __init__(self):
        self.event = threading.Event()
        self._previous = {}

    def _handle(self, signum, frame):
        if self.event.is_set():  # a second Ctrl-C: stop now
            raise KeyboardInterrupt
        log.warning("%s received: finishing the current step and writing a checkpoint",
                    signal.Signals(signum).name)
        self.event.set()

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                self._previous[sig] = signal.signal(sig, self._handle)
        return self.event

    def __exit__(self, *exc):
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)


def _rng_state(generator: torch.Generator, device: torch.device) -> dict:
    state = {"torch": torch.get_rng_state(), "generator": generator.get_state()}
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def _set_rng_state(state: dict, generator: torch.Generator, device: torch.device) -> None:
    torch.set_rng_state(state["torch"])
    generator.set_state(state["generator"])
    if device.type == "cuda" and "cuda" in state:
        torch.cuda.set_rng_state(state["cuda"], device)


def make_training_policy(model: torch.nn.Module, optimizer: torch.optim.Optimizer, config: TrainConfig,
                         device: torch.device, distributed: bool = False):
    """How the training step runs: daelab's fused kernels where they apply, else a precision policy.

    Fused: bf16, ``--kernels auto``, one process, a CPU, an MLP of the study's shape and a C compiler
    (see :func:`daelab.kernels.fused.make_fused`). Otherwise PyTorch's ops through
    :func:`daelab.train._precision.make_policy`. Call after loading a checkpoint: the bf16 copies are taken then.
    """
    precision = resolve_precision(config.precision, device)
    if precision == "bf16" and config.kernels == "auto" and not distributed:
        policy = make_fused(model, optimizer, device)
        if policy is not None:
            return policy
    return make_policy(model, precision)


def make_optimizer(model: torch.nn.Module, config: TrainConfig) -> torch.optim.Optimizer:
    """Adam with PyTorch's fused kernel where it has one (CPU and CUDA), else foreach."""
    try:
        return torch.optim.Adam(model.parameters(), lr=config.lr, fused=True)
    except (RuntimeError, TypeError):
        return torch.optim.Adam(model.parameters(), lr=config.lr, foreach=True)


# -------------------------------------------------------------------------------------- fit
def fit(model_config: ModelConfig, config: TrainConfig, run_dir: str | Path, resume: bool = False,
        dataset: Dataset | None = None, progress: bool = True, resume_hint: str | None = None) -> dict:
    """Train a DAE into ``run_dir`` (or continue the run there with ``resume``).

    Writes ``config.json``, ``last.pt``/``best.pt`` checkpoints, ``metrics.jsonl``, TensorBoard
    events and ``loss_curve.png``. Under ``torchrun`` each process trains on its shard with DDP and
    only rank 0 writes. Stopped by SIGINT/SIGTERM, it checkpoints and raises ``TrainingInterrupted``
    whose hint is ``resume_hint`` (default: ``daelab train --resume RUN_DIR``; a caller that resumes
    otherwise says how).

    Returns
    -------
    dict with ``epochs_run``, ``best_val_loss``, ``final_val_loss``, ``history``, ``run_dir``, the
    trained ``model`` (unwrapped, last epoch's weights), and this process's ``rank``/``world_size``.
    """
    run_dir = Path(run_dir)
    ctx = dist.init(config.device)
    device = ctx.device if ctx.enabled else resolve_device(config.device)
    if config.threads:
        torch.set_num_threads(config.threads)
    if ctx.is_main:
        try:
            run_dir.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise UsageError(f"cannot create run directory {run_dir}: {exc.strerror or exc}",
                             "choose another --run-dir") from None
        for stale in run_dir.glob(".*.pt.*.tmp"):  # temp files of checkpoint writes a crash cut short
            stale.unlink(missing_ok=True)
    lock = RunLock(run_dir) if ctx.is_main else contextlib.nullcontext()
    with lock, StopSignals() as stop_event:
        state = load_checkpoint(run_dir / LAST, expect_model=model_config.name) if resume else None
        torch.manual_seed(MODEL_INIT.seed(config.seed))
        model = build_model(model_config).to(device)
        data = prepare_data(config, model.input_layout, device, dataset)
        optimizer = make_optimizer(model, config)
        generator = TRAIN_NOISE.generator(config.seed, ctx.rank, device)
        history: list[dict] = []
        epoch, epoch_step, epoch_acc = 0, 0, [0.0, 0, 0.0]
        best = math.inf
        if state is not None:
            model.load_state_dict(state["model"])
            optimizer.load_state_dict(state["optimizer"])
            _set_rng_state(state["rng"], generator, device)
            epoch, epoch_step, history = state["epoch"], state["epoch_step"], list(state["history"])
            best = state["best_metric"]
            if epoch_step:
                epoch_acc = list(state["epoch_acc"])
            log.info("resuming %s at epoch %d step %d", run_dir, epoch + 1, epoch_step)
        policy = make_training_policy(model, optimizer, config, device, ctx.enabled)  # after loading
        if ctx.is_main:
            write_json(run_dir / CONFIG_FILE, {"model": to_jsonable(model_config), "train": to_jsonable(config),
                                               "precision": resolve_precision(config.precision, device),
                                               "kernels": "fused" if getattr(policy, "fused", False) else "torch",
                                               "device": str(device), "world_size": ctx.world_size})
        train_model = dist.wrap_model(policy.module, ctx, config.sync_bn)
        noise = parse_noise(config.noise)
        n_local = usable_samples(dist.shard_size(len(data.train), ctx), config.batch_size)
        steps_per_epoch = math.ceil(n_local / config.batch_size)
        writer = _tensorboard(run_dir, epoch, ctx)
        bad_epochs = _epochs_without_improvement(history)

        def checkpoint(path_names):
            if not ctx.is_main:
                return
            mid = epoch_step > 0
            payload = {
                "model_config": to_jsonable(model_config), "train_config": to_jsonable(config),
                "model": model.state_dict(), "optimizer": optimizer.state_dict(),
                "epoch": epoch, "epoch_step": epoch_step, "step": epoch * steps_per_epoch + epoch_step,
                "epoch_acc": epoch_acc if mid else None,
                "rng": _rng_state(generator, device), "best_metric": best, "history": history,
            }
            save_checkpoints([run_dir / name for name in path_names], payload)

        try:
            while epoch < config.epochs:
                order = dist.epoch_order(len(data.train), config.seed, epoch, ctx, device)[:n_local]
                if epoch_step == 0:
                    epoch_acc = [0.0, 0, 0.0]
                bar = tqdm(total=steps_per_epoch, initial=epoch_step, desc=f"epoch {epoch + 1}/{config.epochs}",
                           unit="batch", leave=False, disable=not (progress and ctx.is_main), dynamic_ncols=True)
                while epoch_step < steps_per_epoch:
                    stop_at = steps_per_epoch
                    if config.checkpoint_every:
                        stop_at = min(stop_at, (epoch_step // config.checkpoint_every + 1) * config.checkpoint_every)
                    done = train_steps(policy, optimizer, data.train, order, noise, generator, config, device,
                                       epoch_step, stop_at, None if ctx.enabled else stop_event, bar, train_model)
                    epoch_step += done.steps
                    epoch_acc = [epoch_acc[0] + done.loss_sum, epoch_acc[1] + done.samples, epoch_acc[2] + done.seconds]
                    if not math.isfinite(epoch_acc[0]):
                        raise TrainingError(f"training loss became non-finite in epoch {epoch + 1}",
                                            f"the last good checkpoint is kept in {run_dir}; try a lower --lr")
                    # under DDP every rank finishes the chunk before they agree to stop (no rank may skip a step)
                    if dist.any_true(stop_event.is_set(), ctx):
                        bar.close()
                        checkpoint([LAST])
                        raise TrainingInterrupted(f"stopped at epoch {epoch + 1}, step {epoch_step}; checkpoint "
                                                  f"written to {run_dir / LAST}",
                                                  resume_hint or f"resume with: daelab train --resume {run_dir}")
                    if epoch_step < steps_per_epoch:
                        checkpoint([LAST])
                bar.close()
                dist.broadcast_buffers(model, ctx)
                train_loss = dist.all_reduce_mean(epoch_acc[0] / max(epoch_acc[1], 1), ctx)
                val_loss = evaluate_loss(model, data.val_noisy, data.val_clean)
                if not (math.isfinite(train_loss) and math.isfinite(val_loss)) or not _params_healthy(model):
                    raise TrainingError(f"training diverged in epoch {epoch + 1} (train loss {train_loss:.4g}, "
                                        f"validation loss {val_loss:.4g}, weights non-finite or past "
                                        f"{DIVERGED_WEIGHT:g})",
                                        f"the last good checkpoint is kept in {run_dir}; try a lower --lr")
                seconds = dist.all_reduce_max(epoch_acc[2], ctx)
                row = {"epoch": epoch + 1, "train_loss": train_loss, "val_loss": val_loss, "epoch_seconds": seconds,
                       "samples_per_s": len(data.train) / seconds if seconds else None, "lr": config.lr}
                history.append(row)
                epoch, epoch_step = epoch + 1, 0
                improved = val_loss < best
                best = min(best, val_loss)
                checkpoint([LAST, BEST] if improved else [LAST])
                if ctx.is_main:
                    write_metrics(run_dir, history)
                    scalars = {"train/loss": train_loss, "val/loss": val_loss, "time/epoch_seconds": seconds,
                               "time/samples_per_s": row["samples_per_s"] or 0.0}
                    for tag, value in scalars.items():
                        writer.add_scalar(tag, value, epoch)
                    writer.flush()
                log.info("epoch %d/%d  train_loss %.5f  val_loss %.5f  %.2fs  %.0f samples/s", epoch, config.epochs,
                         train_loss, val_loss, seconds, row["samples_per_s"] or 0)
                bad_epochs = 0 if improved else bad_epochs + 1
                if config.early_stopping and bad_epochs >= config.early_stopping:
                    log.info("early stopping: no better validation loss for %d epochs", bad_epochs)
                    break
        finally:
            if writer is not None:
                writer.close()
        if ctx.is_main:
            from daelab.plots import plot_loss_curves
            plot_loss_curves(history, run_dir / "loss_curve.png")
    dist.cleanup(ctx)
    return {"run_dir": str(run_dir), "epochs_run": len(history), "best_val_loss": best,
            "final_val_loss": history[-1]["val_loss"] if history else None, "history": history,
            "model": model, "rank": ctx.rank, "world_size": ctx.world_size}


# Healthy DAEs keep weights of order 1; a run whose weights pass this has blown up even where BatchNorm
# and the sigmoid keep its loss finite (Adam at lr 1e3 does exactly that).
DIVERGED_WEIGHT = 1e3


@torch.no_grad()
def _params_healthy(model: torch.nn.Module) -> bool:
    return all(bool(torch.isfinite(p).all()) and float(p.abs().max()) < DIVERGED_WEIGHT for p in model.parameters())


def _epochs_without_improvement(history: list[dict]) -> int:
    """Epochs since the best validation loss so far (for early stopping after a resume)."""
    if not history:
        return 0
    losses = [row["val_loss"] for row in history]
    return len(losses) - 1 - losses.index(min(losses))


def _tensorboard(run_dir: Path, epoch: int, ctx):
    if not ctx.is_main:
        return None
    from torch.utils.tensorboard import SummaryWriter
    # purge_step drops events a killed run logged past its last checkpoint
    return SummaryWriter(log_dir=str(run_dir / "tensorboard"), purge_step=epoch + 1 if epoch else None)
