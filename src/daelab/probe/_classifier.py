"""Training the study's classifier for several seeds at once, as one seed-stacked model.

This module reproduces the study's fit exactly (the *last* 2/9 of the training arrays held out
unshuffled, Adam with Keras' epsilon 1e-7, batch 128 with a partial last batch) and trains ``S``
independent copies -- one per seed -- as one :class:`~daelab.probe._stacked.StackedClassifier`.
Each seed has its own generators: one for its initial weights, one for its sample order and
dropout masks, so a seed's run does not depend on which other seeds share the stack
(``tests/test_probe.py`` checks stacked == one by one). Batches are index-selected from tensors in
memory into a reused buffer; there is no DataLoader. :func:`train_classifiers` reads top to bottom:
lay the feature sets out as a stack, initialise, then per epoch draw the order and masks, take the
steps (:class:`~daelab.probe._classifier_step.FusedSteps` or autograd) and, with early stopping,
keep each copy's best weights.
"""
from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from daelab.errors import TrainingError
from daelab.kernels.fused import load_kernels
from daelab.probe._classifier_step import FusedSteps, epoch_masks, fused_steps
from daelab.probe._stacked import ADAM_EPS, HIDDEN, StackedClassifier
from daelab.seeds import CLASSIFIER_DATA, CLASSIFIER_INIT, classifier_generator

# The classifier's random streams (SeedSequence stream numbers; see daelab.seeds).
STREAM_INIT, STREAM_DATA = CLASSIFIER_INIT, CLASSIFIER_DATA
seed_generator = classifier_generator


def keras_validation_split(n: int, fraction: float) -> int:
    """Index where Keras' ``validation_split`` cuts ``n`` samples: ``floor(n * (1 - fraction))``.

    Keras trains on ``[:cut]`` and validates on ``[cut:]``, before any shuffling.
    """
    cut = int(math.floor(n * (1.0 - fraction)))
    if not 0 < cut < n:
        raise ValueError(f"validation split {fraction} of {n} samples leaves an empty part")
    return cut


@dataclass
class ClassifierSettings:
    """How the classifier is trained; the defaults are the study's."""

    epochs: int = 100
    batch_size: int = 128
    lr: float = 1e-3
    early_stopping: int = 0  # patience in epochs on validation accuracy; 0 = off (the study's fit had none)


@dataclass
class ClassifierFit:
    """A trained stack and what happened on the way."""

    model: StackedClassifier
    seeds: list[int]
    epochs_run: list[int]                 # per seed: epochs trained before (early) stopping
    best_epoch: list[int | None]          # per seed: the epoch whose weights were kept (early stopping)
    val_accuracy: list[float]             # per seed, of the kept weights
    val_history: list[list[float]] = field(default_factory=list)  # per epoch, per seed (early stopping only)
    seconds: float = 0.0


# ------------------------------------------------------------------------------ the stack
@dataclass
class _Stack:
    """K feature sets x the seeds laid out as the stacked model reads them: copy ``k * S + j`` is set k, seed j."""

    train_x: torch.Tensor   # (K * N, D): copy s reads rows offsets[s] + i
    train_y: torch.Tensor   # (N,)
    val_x: torch.Tensor     # (M, D), shared by every copy (K = 1), or (copies, M, D)
    offsets: torch.Tensor   # (copies, 1): where each copy's feature set starts in train_x
    groups: int             # K
    seeds: list[int]        # per copy
    n: int                  # samples per feature set

    @property
    def copies(self) -> int:
        return len(self.seeds)

    def rows(self, order: torch.Tensor) -> torch.Tensor:
        """Rows of :attr:`train_x` (copies, N) for each copy's sample order (copies, N)."""
        return order if self.groups == 1 else order + self.offsets


def _stack(train_x, val_x, seeds: Sequence[int], train_y: torch.Tensor) -> _Stack:
    groups = [train_x] if torch.is_tensor(train_x) else list(train_x)
    val_groups = [val_x] if torch.is_tensor(val_x) else list(val_x)
    if len(val_groups) != len(groups) or any(g.shape != groups[0].shape for g in groups):
        raise ValueError("feature sets trained together need the same shape, and one validation set each")
    per_group = [int(s) for s in seeds]
    n, device = len(groups[0]), groups[0].device
    stacked = groups[0] if len(groups) == 1 else torch.cat(groups)
    offsets = (torch.arange(len(groups)) * n).repeat_interleave(len(per_group)).to(device)[:, None]
    # per copy, its own validation features (or, for one feature set, one shared set)
    val = val_groups[0] if len(groups) == 1 else torch.stack([g for g in val_groups for _ in per_group])
    return _Stack(stacked, train_y, val, offsets, len(groups), per_group * len(groups), n)


def _initial_model(stack: _Stack, n_classes: int) -> StackedClassifier:
    """The stack's copies at Keras' initialisation, each drawn from its seed's init stream on the CPU."""
    dim, device = stack.train_x.shape[1], stack.train_x.device
    model = StackedClassifier(dim, stack.copies, n_classes).to(device)
    cpu_model = model if device.type == "cpu" else StackedClassifier(dim, stack.copies, n_classes)
    cpu_model.reset_parameters([seed_generator(s, STREAM_INIT) for s in stack.seeds])
    if cpu_model is not model:
        model.load_state_dict(cpu_model.state_dict())
    return model


# ----------------------------------------------------------------------------- one epoch
@dataclass
class _EpochBuffers:
    """Reused per epoch: the gathered batch and an epoch of dropout masks per copy (drawn on the CPU)."""

    batch: torch.Tensor   # (copies * batch_size, D)
    masks: torch.Tensor   # (copies, N, 64 + 32)


def _train_epoch(model: StackedClassifier, optimizer: torch.optim.Optimizer, steps: FusedSteps | None,
                 stack: _Stack, generators: list[torch.Generator], buffers: _EpochBuffers, batch: int,
                 lib) -> float | torch.Tensor:
    """One epoch of every copy, each in its own sample order; returns the last step's summed loss."""
    copies, n, dim, device = stack.copies, stack.n, stack.train_x.shape[1], stack.train_x.device
    order = torch.stack([torch.randperm(n, generator=g) for g in generators]).to(device)  # (S, N)
    labels = stack.train_y[order]                                                         # (S, N)
    rows = stack.rows(order)                                                              # (S, N)
    masks = epoch_masks(generators, buffers.masks, lib)  # (S, N, 96): kept units scaled by 1/keep
    if masks.device != device:
        masks = masks.to(device)
    for start in range(0, n, batch):
        index = rows[:, start:start + batch]                                              # (S, b)
        b = index.shape[1]
        inputs = torch.index_select(stack.train_x, 0, index.reshape(-1), out=buffers.batch[:copies * b])
        inputs = inputs.view(copies, b, dim)
        if steps is not None:
            loss = steps.step(inputs, masks, start, labels)
        else:
            loss = _autograd_step(model, optimizer, inputs, masks, start, labels)
    return loss


def _autograd_step(model: StackedClassifier, optimizer: torch.optim.Optimizer, inputs: torch.Tensor,
                   masks: torch.Tensor, start: int, labels: torch.Tensor) -> torch.Tensor:
    """One Adam step through PyTorch's autograd: the reference for :class:`FusedSteps`."""
    h1 = HIDDEN[0]
    b = inputs.shape[1]
    logits = model(inputs, (masks[:, start:start + b, :h1], masks[:, start:start + b, h1:]))
    # Sum over seeds of each seed's mean loss: every copy gets exactly its own gradient.
    loss = F.cross_entropy(logits.reshape(-1, model.n_classes), labels[:, start:start + b].reshape(-1),
                           reduction="sum") / b
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    return loss.detach()


# ------------------------------------------------------------------------ early stopping
@dataclass
class _CopyState:
    """What one copy of the stack has done so far."""

    epochs_run: int = 0
    active: bool = True               # still training (early stopping has not stopped it)
    best_epoch: int | None = None
    best_accuracy: float = -1.0       # validation accuracy of best_epoch
    waiting: int = 0                  # epochs since best_epoch


def _accuracy(model: StackedClassifier, features: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Per-copy accuracy (S,) on a shared set."""
    return (model.predict(features) == labels).float().mean(dim=1)


def _watch(model: StackedClassifier, stack: _Stack, val_y: torch.Tensor, epoch: int, patience: int,
           states: list[_CopyState], best_weights: dict, history: list[list[float]]) -> None:
    """Early stopping after ``epoch``: keep the weights of the copies that improved; stop those out of patience."""
    accuracy = _accuracy(model, stack.val_x, val_y)
    history.append(accuracy.tolist())
    improved = [state.active and float(accuracy[s]) > state.best_accuracy for s, state in enumerate(states)]
    if any(improved):
        chosen = torch.tensor(improved, device=accuracy.device).view(-1, 1, 1)
        for key, value in model.state_dict().items():
            best_weights[key] = torch.where(chosen, value, best_weights[key])
    for s, state in enumerate(states):
        if not state.active:
            continue
        if improved[s]:
            state.best_epoch, state.best_accuracy, state.waiting = epoch, float(accuracy[s]), 0
        else:
            state.waiting += 1
            state.active = state.waiting < patience  # Keras: stop once `wait >= patience`


# ---------------------------------------------------------------------------- the driver
def train_classifiers(train_x: torch.Tensor, train_y: torch.Tensor, val_x: torch.Tensor, val_y: torch.Tensor,
                      seeds: Sequence[int], settings: ClassifierSettings | None = None, n_classes: int = 10,
                      progress: bool = False, desc: str = "classifier", fused: bool = True,
                      on_epoch: Callable[[int], None] | None = None) -> ClassifierFit:
    """Train one copy of the study's classifier per seed, all at once.

    Parameters
    ----------
    train_x : (N, D) float32 features, or a list of K such feature sets (all (N, D), same samples
        in the same order); train_y : (N,) int64 labels (same device).
    val_x, val_y : (M, D) (or a list of K) and (M,): the validation set (Keras' last 2/9), watched by
        early stopping and reported; never trained on.
    seeds : one copy per seed. A seed fixes its copy's initial weights (stream 0) and its sample
        order and dropout masks (stream 1), whatever the features and whichever seeds share the stack.
    settings : epochs, batch size, learning rate, early-stopping patience.
    fused : use :class:`~daelab.probe._classifier_step.FusedSteps` where it is available (the same
        arithmetic, ~4x faster on a CPU); False: PyTorch's autograd and Adam.
    on_epoch : called with the epoch number after each epoch (progress from a worker process).

    Returns
    -------
    ClassifierFit with the trained stack (eval mode). With early stopping each copy stops when
    its validation accuracy has not improved for ``patience`` epochs and keeps its best weights.
    With K feature sets the stack holds K * len(seeds) copies, copy ``k * len(seeds) + j`` trained
    on set k with seed j -- each exactly as it would be alone (tested), with a K-th of the per-step
    overhead, which dominates this small model's steps.
    """
    settings = settings or ClassifierSettings()
    stack = _stack(train_x, val_x, seeds, train_y)
    model = _initial_model(stack, n_classes)
    data_generators = [seed_generator(s, STREAM_DATA) for s in stack.seeds]
    # The fused kernel updates each stacked tensor in one call: Adam's per-tensor bookkeeping, not
    # its arithmetic, dominates a model this small.
    optimizer = torch.optim.Adam(model.parameters(), lr=settings.lr, eps=ADAM_EPS, fused=True)
    steps = fused_steps(model, optimizer) if fused else None
    buffers = _EpochBuffers(torch.empty(stack.copies * settings.batch_size, stack.train_x.shape[1],
                                        dtype=stack.train_x.dtype, device=stack.train_x.device),
                            torch.empty(stack.copies, stack.n, sum(HIDDEN)))
    lib = load_kernels()  # Philox dropout masks where the kernels load, with or without the fused step
    patience = settings.early_stopping
    states = [_CopyState() for _ in stack.seeds]
    best_weights = {k: v.clone() for k, v in model.state_dict().items()} if patience > 0 else {}
    val_history: list[list[float]] = []
    began = time.perf_counter()
    model.train()
    for epoch in tqdm(range(1, settings.epochs + 1), desc=desc, unit="epoch", disable=not progress, leave=False):
        loss = _train_epoch(model, optimizer, steps, stack, data_generators, buffers, settings.batch_size, lib)
        if not math.isfinite(float(loss)):
            raise TrainingError(f"classifier loss became {float(loss)} in epoch {epoch}", "lower --lr")
        for state in states:
            state.epochs_run += state.active
        if on_epoch is not None:
            on_epoch(epoch)
        if patience > 0:
            _watch(model, stack, val_y, epoch, patience, states, best_weights, val_history)
            if not any(state.active for state in states):
                break
    if patience > 0:
        model.load_state_dict(best_weights)  # the copies that never stopped also keep their best epoch
    model.eval()
    val_accuracy = _accuracy(model, stack.val_x, val_y).tolist()
    return ClassifierFit(model, stack.seeds, [s.epochs_run for s in states], [s.best_epoch for s in states],
                         val_accuracy, val_history, time.perf_counter() - began)


def warm_up() -> None:
    """Pay the first-use costs of training a stack (the optimizer's imports, loading the C kernels) now.

    :func:`daelab.probe.probe_run` calls it before forking worker processes, which then inherit them.
    """
    generator = torch.Generator().manual_seed(0)
    x, y = torch.rand(8, 4, generator=generator), torch.arange(8) % 2
    train_classifiers(x, y, x, y, [0], ClassifierSettings(epochs=1, batch_size=4), n_classes=2)
