"""The training driver: :func:`fit` reads top to bottom over named steps and two small dataclasses.

:class:`FitSetup` holds what a run does not change once started (configs, model, optimizer, step
policy, data, generator); :class:`FitState` what it moves (epoch, step within it, best validation
loss, history, the epoch's running :class:`EpochTotals`) -- exactly what a checkpoint keeps. The
steps: open the run directory (lock first, then clean up), set up (and restore a checkpoint),
:func:`train_one_epoch`, validate, end the epoch (history, checkpoint, metrics), decide to stop.
A checkpoint is written after every epoch (and every ``checkpoint_every`` steps when asked), so a
run killed at any moment resumes from the last one to the same weights an uninterrupted run reaches.

Randomness is explicit (``daelab.seeds``): epoch e's order is a permutation seeded
``epoch_order_seed(seed, e)`` (the same on every rank, like ``DistributedSampler.set_epoch``); one
``torch.Generator`` seeded ``seed + rank`` draws the training noise; dropout uses the global
generator, seeded once; both generator states go into every checkpoint.
"""
from __future__ import annotations

import contextlib
import logging
import math
import threading
from dataclasses import dataclass, field
from pathlib import Path

import torch
from tqdm.auto import tqdm

from daelab import distributed as dist
from daelab.checkpoint import BEST, LAST, check_resume_state, load_checkpoint, save_checkpoints
from daelab.config import to_jsonable
from daelab.data import Dataset
from daelab.errors import ConfigError, TrainingError, TrainingInterrupted
from daelab.models import ModelConfig, build_model, example_input
from daelab.noise import NoiseModel, parse_noise
from daelab.runs import CONFIG_FILE, RunLock, claim_run_dir, make_run_dir, remove_temp_files, write_json, write_metrics
from daelab.seeds import MODEL_INIT, TRAIN_NOISE
from daelab.train._batchnorm import batchnorm_layers, recalibrate_batchnorm, recalibration_batches
from daelab.train._config import TrainConfig, epoch_lr, resolve_device, resolve_precision
from daelab.train._data import TrainData, prepare_data, usable_samples
from daelab.train._precision import WeightPolicy
from daelab.train._signals import StopSignals
from daelab.train._steps import (
    StepPolicy,
    StepsResult,
    evaluate_loss,
    make_optimizer,
    make_training_policy,
    train_steps,
)

log = logging.getLogger(__name__)

# Healthy DAEs keep weights of order 1; a run whose weights pass this has blown up even where BatchNorm
# and the sigmoid keep its loss finite (Adam at lr 1e3 does exactly that).
DIVERGED_WEIGHT = 1e3


@dataclass
class EpochTotals:
    """What the steps of the current epoch add up to so far (a mid-epoch checkpoint keeps them)."""

    loss_sum: float = 0.0   # sum over samples of the per-sample MSE
    samples: int = 0
    seconds: float = 0.0

    def add(self, done: StepsResult) -> None:
        """Add a chunk of steps."""
        self.loss_sum, self.samples, self.seconds = (self.loss_sum + done.loss_sum, self.samples + done.samples,
                                                     self.seconds + done.seconds)


@dataclass
class FitState:
    """Where a run stands: what a checkpoint saves and a resume restores."""

    epoch: int = 0                  # epochs finished
    epoch_step: int = 0             # steps finished of the epoch after them
    best: float = math.inf          # best validation loss so far
    history: list[dict] = field(default_factory=list)   # one metrics row per finished epoch
    totals: EpochTotals = field(default_factory=EpochTotals)


@dataclass
class FitSetup:
    """What a run works with and does not change: settings, model, optimizer, step policy, data."""

    model_config: ModelConfig
    config: TrainConfig
    run_dir: Path
    ctx: dist.DistContext
    device: torch.device
    model: torch.nn.Module            # the unwrapped model: the weights checkpointed and evaluated
    optimizer: torch.optim.Optimizer
    policy: StepPolicy | WeightPolicy  # a weight policy runs through TorchStep (see train_steps)
    train_model: torch.nn.Module       # what the forward pass calls: the policy's module, or its DDP wrapper
    generator: torch.Generator        # the training-noise stream
    noise: NoiseModel
    data: TrainData
    n_local: int                      # samples this process uses per epoch
    steps_per_epoch: int
    recalibration: list | None = None  # precise BatchNorm's fixed batches (bn_recalibration > 0), else None


def fit(model_config: ModelConfig, config: TrainConfig, run_dir: str | Path, resume: bool = False,
        dataset: Dataset | None = None, progress: bool = True, resume_hint: str | None = None,
        overwrite: bool = False) -> dict:
    """Train a DAE into ``run_dir`` (or continue the run there with ``resume``).

    Writes ``config.json``, ``last.pt``/``best.pt`` checkpoints, ``metrics.jsonl``, TensorBoard
    events and ``loss_curve.png``. Under ``torchrun`` each process trains on its shard with DDP and
    only rank 0 takes the run lock and writes. Stopped by SIGINT/SIGTERM, it checkpoints and raises
    ``TrainingInterrupted``.

    Parameters
    ----------
    model_config : ModelConfig
        The architecture.
    config : TrainConfig
        The training settings.
    run_dir : str or Path
        The run directory; created if needed.
    resume : bool
        Continue from ``run_dir/last.pt``.
    dataset : Dataset, optional
        Images to train on instead of loading ``config.data_dir``.
    progress : bool
        Show a progress bar per epoch.
    resume_hint : str, optional
        The hint of ``TrainingInterrupted`` (default: ``daelab train --resume RUN_DIR``; a caller
        that resumes otherwise says how).
    overwrite : bool
        Replace a run already in ``run_dir`` (removing its checkpoints, metrics and the later
        stages' outputs); without it, and without ``resume``, such a directory is refused.

    Returns
    -------
    dict
        ``epochs_run``, ``best_val_loss``, ``final_val_loss``, ``history``, ``run_dir``, the trained
        ``model`` (unwrapped, last epoch's weights), and this process's ``rank``/``world_size``.
    """
    if resume and overwrite:
        raise ConfigError("resume and overwrite exclude each other", "give only one of --resume and --overwrite")
    run_dir = Path(run_dir)
    ctx = dist.init(config.device)
    device = ctx.device if ctx.enabled else resolve_device(config.device)
    if config.threads:
        torch.set_num_threads(config.threads)
    with _open_run(run_dir, ctx, resume, overwrite), StopSignals() as stop_event:
        setup, state = _set_up(model_config, config, run_dir, ctx, device, dataset, resume)
        hint = resume_hint or f"resume with: daelab train --resume {run_dir}"
        with _tensorboard(run_dir, state.epoch, ctx) as writer:
            while state.epoch < config.epochs:
                totals = train_one_epoch(setup, state, stop_event, progress, hint)
                row = _validate(setup, state, totals)
                _end_epoch(setup, state, row, writer)
                if _should_stop(config, state.history):
                    break
        if ctx.is_main:
            from daelab.plots import plot_loss_curves
            plot_loss_curves(state.history, run_dir / "loss_curve.png")
    dist.cleanup(ctx)
    history = state.history
    return {"run_dir": str(run_dir), "epochs_run": len(history), "best_val_loss": state.best,
            "final_val_loss": history[-1]["val_loss"] if history else None, "history": history,
            "model": setup.model, "rank": ctx.rank, "world_size": ctx.world_size}


# ------------------------------------------------------------------------------------ the steps
@contextlib.contextmanager
def _open_run(run_dir: Path, ctx: dist.DistContext, resume: bool, overwrite: bool):
    """Create and lock ``run_dir`` (rank 0 only); then, holding the lock, claim it and clean up.

    The lock comes first: before it, another process may be training here, and its temp files are
    its checkpoint being written, not debris.
    """
    if not ctx.is_main:
        yield
        return
    make_run_dir(run_dir)
    with RunLock(run_dir):
        if not resume:
            claim_run_dir(run_dir, overwrite)
        remove_temp_files(run_dir)  # of writes a killed run cut short
        yield


def _set_up(model_config: ModelConfig, config: TrainConfig, run_dir: Path, ctx: dist.DistContext,
            device: torch.device, dataset: Dataset | None, resume: bool) -> tuple[FitSetup, FitState]:
    """Build the model, data, optimizer and step policy, restore a checkpoint, and write ``config.json``.

    The order is the random draws' order: the model's initial weights come from the global RNG
    seeded ``MODEL_INIT``, then the validation noise (its own stream), then the training-noise
    generator; a resume then replaces the generators' states with the checkpoint's.
    """
    checkpoint = load_checkpoint(run_dir / LAST, expect_model=model_config.name) if resume else None
    torch.manual_seed(MODEL_INIT.seed(config.seed))
    model = build_model(model_config).to(device)
    data = prepare_data(config, model.input_layout, device, dataset, tuple(example_input(model, 1).shape[1:]))
    optimizer = make_optimizer(model, config)
    generator = TRAIN_NOISE.generator(config.seed, ctx.rank, device)
    state = _restore(checkpoint, model, optimizer, generator, device, run_dir) if checkpoint else FitState()
    policy = make_training_policy(model, optimizer, config, device, ctx.enabled)  # after loading: bf16 copies
    if ctx.is_main:
        write_json(run_dir / CONFIG_FILE, {"model": to_jsonable(model_config), "train": to_jsonable(config),
                                           "precision": resolve_precision(config.precision, device),
                                           "kernels": "fused" if getattr(policy, "fused", False) else "torch",
                                           "device": str(device), "world_size": ctx.world_size})
    n_local = usable_samples(dist.shard_size(len(data.train), ctx), config.batch_size)
    setup = FitSetup(model_config, config, run_dir, ctx, device, model, optimizer, policy,
                     dist.wrap_model(policy.module, ctx, config.sync_bn), generator, parse_noise(config.noise), data,
                     n_local, math.ceil(n_local / config.batch_size))
    if config.bn_recalibration and batchnorm_layers(model):  # drawn after the rest: no other draw moves
        setup.recalibration = recalibration_batches(config, data)
    return setup, state


def _restore(checkpoint: dict, model: torch.nn.Module, optimizer: torch.optim.Optimizer,
             generator: torch.Generator, device: torch.device, run_dir: Path) -> FitState:
    """Load a checkpoint's weights, Adam state and generator states; return where it stood."""
    source = str(run_dir / LAST)
    # the weights, Adam state, generator states and running sums, all checked before any is used
    check_resume_state(checkpoint, model, source)
    model.load_state_dict(checkpoint["model"])
    optimizer.load_state_dict(checkpoint["optimizer"])
    _set_rng_state(checkpoint["rng"], generator, device)
    state = FitState(checkpoint["epoch"], checkpoint["epoch_step"], checkpoint["best_metric"],
                     list(checkpoint["history"]))
    if state.epoch_step:
        state.totals = EpochTotals(*checkpoint["epoch_acc"])
    log.info("resuming %s at epoch %d step %d", run_dir, state.epoch + 1, state.epoch_step)
    return state


def train_one_epoch(setup: FitSetup, state: FitState, stop_event: threading.Event, progress: bool,
                    resume_hint: str) -> dict[str, float]:
    """Train epoch ``state.epoch`` from step ``state.epoch_step`` to its end, checkpointing as configured.

    Parameters
    ----------
    setup : FitSetup
        The run.
    state : FitState
        Advanced in place: ``epoch_step`` and ``totals`` (``epoch`` is left to the epoch's end).
    stop_event : threading.Event
        Set by SIGINT/SIGTERM: checkpoint and raise ``TrainingInterrupted`` after the current step.
    progress : bool
        Show a progress bar.
    resume_hint : str
        The interrupt's hint.

    Returns
    -------
    dict
        ``train_loss`` (mean over samples, averaged over ranks) and ``epoch_seconds`` (slowest rank).
    """
    config, ctx = setup.config, setup.ctx
    clean = setup.data.for_epoch(state.epoch)  # an image folder's patches of this epoch; else the one tensor
    if config.lr_schedule != "constant":
        for group in setup.optimizer.param_groups:
            group["lr"] = epoch_lr(config, state.epoch)
    order = dist.epoch_order(len(clean), config.seed, state.epoch, ctx, setup.device)[:setup.n_local]
    if state.epoch_step == 0:
        state.totals = EpochTotals()
    with tqdm(total=setup.steps_per_epoch, initial=state.epoch_step, desc=f"epoch {state.epoch + 1}/{config.epochs}",
              unit="batch", leave=False, disable=not (progress and ctx.is_main), dynamic_ncols=True) as bar:
        while state.epoch_step < setup.steps_per_epoch:
            done = train_steps(setup.policy, setup.optimizer, clean, order, setup.noise, setup.generator,
                               config, setup.device, state.epoch_step, _chunk_end(setup, state.epoch_step),
                               None if ctx.enabled else stop_event, bar, setup.train_model)
            state.epoch_step += done.steps
            state.totals.add(done)
            if not math.isfinite(state.totals.loss_sum):
                raise TrainingError(f"training loss became non-finite in epoch {state.epoch + 1}",
                                    f"the last good checkpoint is kept in {setup.run_dir}; try a lower --lr")
            # under DDP every rank finishes the chunk before they agree to stop (no rank may skip a step)
            if dist.any_true(stop_event.is_set(), ctx):
                bar.close()
                _checkpoint(setup, state, [LAST])
                raise TrainingInterrupted(f"stopped at epoch {state.epoch + 1}, step {state.epoch_step}; "
                                          f"checkpoint written to {setup.run_dir / LAST}", resume_hint)
            if state.epoch_step < setup.steps_per_epoch:
                _checkpoint(setup, state, [LAST])
    dist.broadcast_buffers(setup.model, ctx)
    train_loss = dist.all_reduce_mean(state.totals.loss_sum / max(state.totals.samples, 1), ctx)
    return {"train_loss": train_loss, "epoch_seconds": dist.all_reduce_max(state.totals.seconds, ctx)}


def _chunk_end(setup: FitSetup, epoch_step: int) -> int:
    """The step the next chunk stops before: the epoch's end, or the next ``checkpoint_every`` boundary."""
    every = setup.config.checkpoint_every
    if not every:
        return setup.steps_per_epoch
    return min(setup.steps_per_epoch, (epoch_step // every + 1) * every)


def _validate(setup: FitSetup, state: FitState, totals: dict[str, float]) -> dict:
    """The epoch's metrics row, after checking that training has not diverged."""
    train_loss, seconds = totals["train_loss"], totals["epoch_seconds"]
    if setup.recalibration is not None:  # precise BatchNorm: statistics of these weights, not a trailing average
        recalibrate_batchnorm(setup.model, setup.recalibration, bf16=setup.policy.dtype == torch.bfloat16)
    val_loss = evaluate_loss(setup.model, setup.data.val_noisy, setup.data.val_clean)
    if not (math.isfinite(train_loss) and math.isfinite(val_loss)) or not _params_healthy(setup.model):
        raise TrainingError(f"training diverged in epoch {state.epoch + 1} (train loss {train_loss:.4g}, "
                            f"validation loss {val_loss:.4g}, weights non-finite or past {DIVERGED_WEIGHT:g})",
                            f"the last good checkpoint is kept in {setup.run_dir}; try a lower --lr")
    return {"epoch": state.epoch + 1, "train_loss": train_loss, "val_loss": val_loss, "epoch_seconds": seconds,
            "samples_per_s": len(setup.data.train) / seconds if seconds else None,
            "lr": epoch_lr(setup.config, state.epoch)}


def _end_epoch(setup: FitSetup, state: FitState, row: dict, writer) -> None:
    """Record the finished epoch: history, checkpoint (``best.pt`` too when it improved), metrics, TensorBoard."""
    state.history.append(row)
    state.epoch, state.epoch_step = state.epoch + 1, 0
    improved = row["val_loss"] < state.best
    state.best = min(state.best, row["val_loss"])
    _checkpoint(setup, state, [LAST, BEST] if improved else [LAST])
    if setup.ctx.is_main:
        write_metrics(setup.run_dir, state.history)
        scalars = {"train/loss": row["train_loss"], "val/loss": row["val_loss"],
                   "time/epoch_seconds": row["epoch_seconds"], "time/samples_per_s": row["samples_per_s"] or 0.0}
        for tag, value in scalars.items():
            writer.add_scalar(tag, value, state.epoch)
        writer.flush()
    log.info("epoch %d/%d  train_loss %.5f  val_loss %.5f  %.2fs  %.0f samples/s", state.epoch, setup.config.epochs,
             row["train_loss"], row["val_loss"], row["epoch_seconds"], row["samples_per_s"] or 0)


def _should_stop(config: TrainConfig, history: list[dict]) -> bool:
    """Early stopping: ``config.early_stopping`` epochs in a row without a better validation loss."""
    bad_epochs = _epochs_without_improvement(history)
    if config.early_stopping and bad_epochs >= config.early_stopping:
        log.info("early stopping: no better validation loss for %d epochs", bad_epochs)
        return True
    return False


def _checkpoint(setup: FitSetup, state: FitState, names: list[str]) -> None:
    """Write the run's state to ``names`` in the run directory (rank 0 only; one write, hard links)."""
    if not setup.ctx.is_main:
        return
    payload = {
        "model_config": to_jsonable(setup.model_config), "train_config": to_jsonable(setup.config),
        "model": setup.model.state_dict(), "optimizer": setup.optimizer.state_dict(),
        "epoch": state.epoch, "epoch_step": state.epoch_step,
        "step": state.epoch * setup.steps_per_epoch + state.epoch_step,
        "epoch_acc": [state.totals.loss_sum, state.totals.samples, state.totals.seconds] if state.epoch_step else None,
        "rng": _rng_state(setup.generator, setup.device), "best_metric": state.best, "history": state.history,
    }
    save_checkpoints([setup.run_dir / name for name in names], payload)


# ------------------------------------------------------------------------------------ helpers
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


@torch.no_grad()
def _params_healthy(model: torch.nn.Module) -> bool:
    return all(bool(torch.isfinite(p).all()) and float(p.abs().max()) < DIVERGED_WEIGHT for p in model.parameters())


def _epochs_without_improvement(history: list[dict]) -> int:
    """Epochs since the best validation loss so far (for early stopping, also after a resume)."""
    if not history:
        return 0
    losses = [row["val_loss"] for row in history]
    return len(losses) - 1 - losses.index(min(losses))


@contextlib.contextmanager
def _tensorboard(run_dir: Path, epoch: int, ctx: dist.DistContext):
    """A TensorBoard writer on rank 0 (None elsewhere), closed on the way out."""
    if not ctx.is_main:
        yield None
        return
    from torch.utils.tensorboard import SummaryWriter
    # purge_step drops events a killed run logged past its last checkpoint
    writer = SummaryWriter(log_dir=str(run_dir / "tensorboard"), purge_step=epoch + 1 if epoch else None)
    try:
        yield writer
    finally:
        writer.close()
