"""The training step: what a step policy offers, the chunk of steps the loop runs, and validation.

A *step policy* (:class:`StepPolicy`) takes one optimizer step on a batch of rows of the data and
returns its loss. Two kinds satisfy it: :class:`TorchStep`, which runs PyTorch's forward, backward
and Adam through a weight policy of :mod:`daelab.train._precision` (fp32 as is, or a bf16 shadow
with fp32 master weights), and :class:`daelab.kernels.fused.FusedMLP`, which runs the whole step in
daelab's C kernels. :func:`make_training_policy` picks one; :func:`train_steps` runs steps
``start .. stop-1`` of an epoch with whichever it gets. Batches are index-selected from one float
tensor in memory into a reused buffer and noise is drawn in place into another: no DataLoader, no
per-batch allocation on the data path.
"""
from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

import torch
import torch.nn.functional as F
from torch import nn

from daelab.kernels.fused import choose_path, make_fused
from daelab.train._config import TrainConfig
from daelab.train._precision import WeightPolicy, make_policy

log = logging.getLogger(__name__)
_PATHS_SAID: set[str] = set()  # the training paths already logged, once each per process


@runtime_checkable
class StepPolicy(Protocol):
    """What a training-step policy offers :func:`train_steps`.

    ``module`` is the module the training forward runs through (the model itself, or its bf16
    shadow; the model keeps the master weights that are checkpointed), ``dtype`` the dtype its
    matrix products run in, and ``step`` takes one optimizer step on
    ``data[index]`` with fresh ``noise`` from ``generator`` and returns the batch's mean loss as a
    0-d tensor. :class:`TorchStep` and :class:`daelab.kernels.fused.FusedMLP` satisfy it.
    """

    module: nn.Module
    dtype: torch.dtype

    def step(self, data: torch.Tensor, index: torch.Tensor, noise, generator: torch.Generator) -> torch.Tensor:
        ...


class TorchStep:
    """A :class:`StepPolicy` of PyTorch ops: gather, noise, forward, MSE, backward and Adam.

    Parameters
    ----------
    weights : WeightPolicy
        The fp32 or bf16-shadow policy (:func:`daelab.train._precision.make_policy`).
    optimizer : torch.optim.Optimizer
        Adam over the master weights.
    forward : nn.Module
        What to call for the forward pass: ``weights.module`` or its DDP wrapper.
    data : torch.Tensor
        (N, ...) the clean images batches are drawn from (sets the buffers' shape and dtype).
    batch_size : int
        The largest batch; the buffers are made once at this size.
    """

    def __init__(self, weights: WeightPolicy, optimizer: torch.optim.Optimizer, forward: nn.Module,
                 data: torch.Tensor, batch_size: int):
        self.weights, self.optimizer, self.forward = weights, optimizer, forward
        self.module, self.dtype = weights.module, weights.dtype
        self._clean = torch.empty((batch_size,) + tuple(data.shape[1:]), dtype=data.dtype, device=data.device)
        self._noisy = torch.empty_like(self._clean)
        self._low = weights.dtype != data.dtype

    def step(self, data: torch.Tensor, index: torch.Tensor, noise, generator: torch.Generator) -> torch.Tensor:
        """One Adam step on ``data[index]`` with fresh ``noise``; returns the batch's mean loss (0-d)."""
        n = len(index)
        batch, noisy = self._clean[:n], self._noisy[:n]
        torch.index_select(data, 0, index, out=batch)
        noise.apply_(batch, noisy, generator)
        denoised = self.forward(noisy.to(self.dtype) if self._low else noisy)
        loss = F.mse_loss(denoised.float(), batch)
        loss.backward()
        self.weights.after_backward()
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.weights.after_step()
        return loss


@dataclass
class StepsResult:
    """What a chunk of steps did: summed loss, samples, steps and wall seconds."""

    loss_sum: float   # sum over samples of the per-sample MSE
    samples: int
    steps: int
    seconds: float


def train_steps(policy: StepPolicy | WeightPolicy, optimizer: torch.optim.Optimizer, clean: torch.Tensor,
                order: torch.Tensor, noise, generator: torch.Generator, config: TrainConfig, device: torch.device,
                start: int, stop: int, stop_event: threading.Event | None = None, bar=None,
                forward: nn.Module | None = None) -> StepsResult:
    """Run optimizer steps ``start .. stop-1`` of an epoch whose sample order is ``order``.

    Parameters
    ----------
    policy : StepPolicy or WeightPolicy
        From :func:`make_training_policy`: a step policy (the fused kernels) runs each step itself;
        a weight policy (fp32, bf16 shadow) runs through a :class:`TorchStep`.
    optimizer : torch.optim.Optimizer
        Adam over the model's parameters.
    clean : torch.Tensor
        (N, ...) clean training images, float32 in [0, 1].
    order : torch.Tensor
        (N',) int64 sample indices of this epoch; step ``s`` uses ``order[s*B:(s+1)*B]``.
    noise : daelab.noise.NoiseModel
        The training noise, drawn in place from ``generator``.
    generator : torch.Generator
        The training-noise stream.
    config : TrainConfig
        For the batch size ``B``.
    device : torch.device
        Unused since the buffers follow ``clean``; kept for callers.
    start, stop : int
        The steps to run.
    stop_event : threading.Event, optional
        Return early, after finishing the current step, once it is set.
    bar : tqdm, optional
        Advanced once per step; shows the running loss.
    forward : nn.Module, optional
        The module to call (a DDP wrapper of ``policy.module``); default ``policy.module``.

    Returns
    -------
    StepsResult
        Summed per-sample loss, samples, steps taken and seconds.
    """
    (forward or policy.module).train()
    if isinstance(policy, StepPolicy):  # the C gather reads rows of one dense block (not an F-ordered array)
        clean = clean.contiguous()
        stepper = policy
    else:
        stepper = TorchStep(policy, optimizer, forward or policy.module, clean, config.batch_size)
    batch_size = config.batch_size
    loss_sum = torch.zeros((), dtype=torch.float64, device=clean.device)
    samples = steps = 0
    began = time.perf_counter()
    for step in range(start, stop):
        index = order[step * batch_size:(step + 1) * batch_size]
        loss = stepper.step(clean, index, noise, generator)
        n = len(index)
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


@torch.inference_mode()
def evaluate_loss(model: nn.Module, noisy: torch.Tensor, clean: torch.Tensor, batch_size: int = 4096) -> float:
    """Mean squared error of ``model(noisy)`` against ``clean`` in eval mode (fp32), over all pixels.

    Parameters
    ----------
    model : nn.Module
        The denoiser; its train/eval mode is restored afterwards.
    noisy, clean : torch.Tensor
        (M, ...) the noisy inputs and their clean targets.
    batch_size : int
        Images per forward pass.

    Returns
    -------
    float
        The mean over all M x pixels squared errors.
    """
    was_training = model.training
    model.eval()
    total = torch.zeros((), dtype=torch.float64, device=clean.device)
    for start in range(0, len(clean), batch_size):
        denoised = model(noisy[start:start + batch_size]).float()
        total += F.mse_loss(denoised, clean[start:start + batch_size], reduction="sum").double()
    model.train(was_training)
    return float(total) / clean.numel()


def make_training_policy(model: nn.Module, optimizer: torch.optim.Optimizer, config: TrainConfig,
                         device: torch.device, distributed: bool = False) -> StepPolicy | WeightPolicy:
    """How the training step runs: daelab's fused kernels where they apply, else a precision policy.

    :func:`daelab.kernels.choose_path` picks the precision and whether to fuse: on a CPU with
    ``--kernels auto`` and one process, the fused step in bf16 where bf16 is native, else in fp32;
    it then needs an MLP of the study's shape and a C compiler (see
    :func:`daelab.kernels.fused.make_fused`). Otherwise PyTorch's ops through
    :func:`daelab.train._precision.make_policy`. The path taken and why is logged once per process
    (e.g. "fp32 fused kernels (AVX2; no native bf16)"). Call after loading a checkpoint: the bf16
    copies are taken then.

    Parameters
    ----------
    model : nn.Module
        The model, with its fp32 master weights.
    optimizer : torch.optim.Optimizer
        Adam over ``model.parameters()``.
    config : TrainConfig
        For ``precision`` and ``kernels``.
    device : torch.device
        The training device.
    distributed : bool
        Under DDP (the fused kernels do not apply).

    Returns
    -------
    StepPolicy or WeightPolicy
        A :class:`~daelab.kernels.fused.FusedMLP`, or an fp32 / bf16-shadow weight policy.
    """
    path = choose_path(device, config.precision, config.kernels, distributed=distributed,
                       layout=getattr(model, "input_layout", "flat"))
    policy = make_fused(model, optimizer, device, precision=path.precision) if path.fused else None
    reason = path.reason
    if path.fused and policy is None:  # make_fused has warned why
        reason = f"{path.precision} PyTorch ops (the fused kernels do not apply: see the warning)"
    if reason not in _PATHS_SAID:
        _PATHS_SAID.add(reason)
        log.info("training path: %s", reason)
    return policy if policy is not None else make_policy(model, path.precision)


def make_optimizer(model: nn.Module, config: TrainConfig) -> torch.optim.Optimizer:
    """Adam with PyTorch's fused kernel where it has one (CPU and CUDA), else foreach.

    Parameters
    ----------
    model : nn.Module
        Its parameters are optimised.
    config : TrainConfig
        For the learning rate.

    Returns
    -------
    torch.optim.Optimizer
        ``torch.optim.Adam``.
    """
    try:
        return torch.optim.Adam(model.parameters(), lr=config.lr, fused=True)
    except (RuntimeError, TypeError):
        return torch.optim.Adam(model.parameters(), lr=config.lr, foreach=True)
