"""The study's small classifier, trained for several seeds at once as one seed-stacked model.

The study judged its encoder by training this Keras classifier on the 196-d codes and on the 784
raw pixels::

    Dense(64, relu) -> Dropout(0.4) -> Dense(32, relu) -> Dropout(0.4) -> BatchNormalization
    -> Dense(10, softmax);  Adam(1e-3), categorical cross-entropy, batch 128, 100 epochs,
    validation_split = 2/9

This module reproduces it exactly (Keras' glorot-uniform kernels with zero biases, BatchNorm with
momentum 0.99 / epsilon 1e-3, Adam epsilon 1e-7, the *last* 2/9 of the training arrays held out
unshuffled, a partial last batch) and trains ``S`` independent copies -- one per seed -- as one
model whose weights are stacked along a leading seed axis, ``(S, in, out)``, and applied with
``torch.baddbmm``. Each seed has its own generators: one for its initial weights, one for its
sample order and dropout masks, so a seed's run does not depend on which other seeds share the
stack (``tests/test_probe.py`` checks stacked == one by one). Batches are index-selected from
tensors in memory into a reused buffer; there is no DataLoader.
"""
from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from daelab.kernels.fused import FusedAdam, draw_key, keep_threshold, load_kernels, ptr
from daelab.models import in_batches
from daelab.seeds import CLASSIFIER_DATA, CLASSIFIER_INIT, classifier_generator

HIDDEN = (64, 32)
DROPOUT = 0.4
BN_MOMENTUM = 0.01  # Keras momentum 0.99 = weight of the old running value; PyTorch counts the new one
BN_EPS = 1e-3
ADAM_EPS = 1e-7     # Keras' Adam default (PyTorch's is 1e-8)
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


class StackedClassifier(nn.Module):
    """``S`` independent copies of the study's classifier with weights stacked along a seed axis.

    Parameters
    ----------
    n_in : input features (196 for the study's codes, 784 for raw pixels).
    n_seeds : how many independent copies (S).
    n_classes : output classes.

    Inputs are (S, B, n_in) -- each copy sees its own batch -- or (B, n_in), shared by all copies;
    outputs are logits (S, B, n_classes) (the softmax lives in the cross-entropy loss).
    """

    def __init__(self, n_in: int, n_seeds: int = 1, n_classes: int = 10):
        super().__init__()
        h1, h2 = HIDDEN
        self.n_in, self.n_seeds, self.n_classes = n_in, n_seeds, n_classes
        self.w1 = nn.Parameter(torch.empty(n_seeds, n_in, h1))
        self.b1 = nn.Parameter(torch.zeros(n_seeds, 1, h1))
        self.w2 = nn.Parameter(torch.empty(n_seeds, h1, h2))
        self.b2 = nn.Parameter(torch.zeros(n_seeds, 1, h2))
        self.gamma = nn.Parameter(torch.ones(n_seeds, 1, h2))
        self.beta = nn.Parameter(torch.zeros(n_seeds, 1, h2))
        self.w3 = nn.Parameter(torch.empty(n_seeds, h2, n_classes))
        self.b3 = nn.Parameter(torch.zeros(n_seeds, 1, n_classes))
        self.register_buffer("running_mean", torch.zeros(n_seeds, 1, h2))
        self.register_buffer("running_var", torch.ones(n_seeds, 1, h2))

    @torch.no_grad()
    def reset_parameters(self, generators: Sequence[torch.Generator]) -> None:
        """Keras' glorot-uniform kernels, one generator per seed; biases 0, BatchNorm at identity.

        The kernels are drawn last layer first, so two copies fed different input widths (codes
        vs pixels) but the same seed still start from the same ``w2`` and ``w3``.
        """
        if len(generators) != self.n_seeds:
            raise ValueError(f"need {self.n_seeds} generators, got {len(generators)}")
        for s, generator in enumerate(generators):
            for weight in (self.w3, self.w2, self.w1):
                fan_in, fan_out = weight.shape[1:]
                limit = math.sqrt(6.0 / (fan_in + fan_out))
                weight[s].uniform_(-limit, limit, generator=generator)
        for bias in (self.b1, self.b2, self.b3, self.beta):
            bias.zero_()
        self.gamma.fill_(1.0)
        self.running_mean.zero_()
        self.running_var.fill_(1.0)

    def forward(self, features: torch.Tensor, masks: tuple[torch.Tensor, torch.Tensor] | None = None) -> torch.Tensor:
        """Logits (S, B, n_classes) of features (S, B, n_in) or (B, n_in).

        ``masks`` are the two dropout masks, (S, B, 64) and (S, B, 32), already scaled by
        1 / (1 - p); in training mode without masks, fresh ones come from the global generator.
        """
        if features.dim() == 2:  # one batch shared by every copy: (B, in) @ (S, in, 64) -> (S, B, 64)
            hidden = torch.relu(torch.matmul(features, self.w1) + self.b1)
        else:
            hidden = torch.relu(torch.baddbmm(self.b1, features, self.w1))
        hidden = self._dropout(hidden, masks[0] if masks else None)
        hidden = torch.relu(torch.baddbmm(self.b2, hidden, self.w2))
        hidden = self._dropout(hidden, masks[1] if masks else None)
        if self.training:  # per-copy batch statistics over the batch axis
            mean = hidden.mean(dim=1, keepdim=True)
            var = hidden.var(dim=1, keepdim=True, unbiased=False)
            with torch.no_grad():  # Keras updates its moving variance with the biased batch variance
                self.running_mean.lerp_(mean, BN_MOMENTUM)
                self.running_var.lerp_(var, BN_MOMENTUM)
        else:
            mean, var = self.running_mean, self.running_var
        hidden = (hidden - mean) * torch.rsqrt(var + BN_EPS) * self.gamma + self.beta
        return torch.baddbmm(self.b3, hidden, self.w3)

    def _dropout(self, hidden: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        if not self.training:
            return hidden
        if mask is None:
            return F.dropout(hidden, DROPOUT, training=True)
        return hidden * mask

    @torch.no_grad()
    def predict(self, features: torch.Tensor, batch_size: int = 8192) -> torch.Tensor:
        """Predicted classes (S, N) of features (N, n_in), shared, or (S, N, n_in), per copy; eval mode."""
        was_training = self.training
        self.eval()
        predicted = in_batches(lambda batch: self(batch).argmax(dim=-1), features, batch_size, dim=features.dim() - 2,
                               out_dim=1)
        self.train(was_training)
        return predicted


# Sizes the C classifier tail (``classifier_tail`` in _fused.c) has room for; larger ones train with autograd.
TAIL_MAX_HIDDEN, TAIL_MAX_CLASSES = 256, 16


class FusedSteps:
    """Training steps of a :class:`StackedClassifier` with a hand-written backward (``daelab.kernels.fused``).

    Autograd and the optimizer's bookkeeping cost more than this model's arithmetic: ~60 small ops
    per step, most on (S, 128, 32) arrays. Here the two large matrix products per direction stay in
    PyTorch (``bmm``), the rest of the step -- dropout, BatchNorm, the last Dense, softmax
    cross-entropy and their gradients -- is one C call per layer, and Adam runs in C on the
    optimizer's own state. Same arithmetic in fp32 as :meth:`StackedClassifier.forward` plus
    autograd (``tests/test_probe.py`` checks the weights after several steps against it).
    """

    def __init__(self, model: StackedClassifier, optimizer: torch.optim.Adam, lib):
        self.model, self.optimizer, self.lib = model, optimizer, lib
        self.grads = {p: torch.zeros_like(p) for p in model.parameters()}
        self._buffers: dict[int, dict] = {}
        self._adam = None

    def _batch(self, b: int) -> dict:
        if b not in self._buffers:
            s, (h1, h2), c = self.model.n_seeds, HIDDEN, self.model.n_classes
            self._buffers[b] = {"a1": torch.empty(s, b, h1), "a2": torch.empty(s, b, h2),
                                "h2": torch.empty(s, b, h2), "da2": torch.empty(s, b, h2),
                                "dh1": torch.empty(s, b, h1), "work": torch.empty(s * (3 * b * h2 + 2 * b * c))}
        return self._buffers[b]

    @torch.no_grad()
    def step(self, inputs: torch.Tensor, masks: torch.Tensor, start: int, labels: torch.Tensor) -> float:
        """One Adam step on batch rows ``start:start+b`` of the epoch; returns the summed per-copy mean loss.

        inputs : (S, b, D) this batch's features per copy; masks : (S, N, 96) the epoch's scaled
        dropout masks; labels : (S, N) the epoch's labels in sample order.
        """
        model, lib, grads = self.model, self.lib, self.grads
        n_seeds, b, dim = inputs.shape
        h1, h2 = HIDDEN
        buf = self._batch(b)
        # the C side reads the masks and labels of rows start.. through these (seed, row) strides
        m1, m2, seed_stride, row_stride = masks[:, start], masks[:, start, h1:], masks.stride(0), masks.stride(1)
        torch.baddbmm(model.b1, inputs, model.w1, out=buf["a1"])
        lib.relu_mask(ptr(buf["a1"]), n_seeds, b, h1, ptr(m1), seed_stride, row_stride)
        torch.baddbmm(model.b2, buf["a1"], model.w2, out=buf["a2"])
        loss = lib.classifier_tail(
            ptr(buf["a2"]), n_seeds, b, h2, model.n_classes, ptr(m2), seed_stride, row_stride,
            ptr(labels[:, start]), labels.stride(0), ptr(model.gamma), ptr(model.beta), ptr(model.w3),
            ptr(model.b3), BN_EPS, BN_MOMENTUM, ptr(model.running_mean), ptr(model.running_var), ptr(buf["h2"]),
            ptr(buf["da2"]), ptr(grads[model.w3]), ptr(grads[model.b3]), ptr(grads[model.gamma]),
            ptr(grads[model.beta]), ptr(grads[model.b2]), ptr(buf["work"]))
        torch.bmm(buf["a1"].transpose(1, 2), buf["da2"], out=grads[model.w2])
        torch.bmm(buf["da2"], model.w2.transpose(1, 2), out=buf["dh1"])
        lib.relu_mask_backward(ptr(buf["dh1"]), ptr(buf["a1"]), n_seeds, b, h1, ptr(m1), seed_stride, row_stride,
                               ptr(grads[model.b1]))
        torch.bmm(inputs.transpose(1, 2), buf["dh1"], out=grads[model.w1])
        if self._adam is None:
            self._adam = FusedAdam(lib, self.optimizer, grads)
        self._adam.step()
        return loss


def fused_steps(model: StackedClassifier, optimizer: torch.optim.Optimizer) -> FusedSteps | None:
    """:class:`FusedSteps` where the kernels load, the model is on the CPU in fp32 and small enough."""
    if model.w1.device.type != "cpu" or model.w1.dtype != torch.float32:
        return None
    if HIDDEN[1] > TAIL_MAX_HIDDEN or model.n_classes > TAIL_MAX_CLASSES:  # the C tail's fixed arrays
        return None
    lib = load_kernels()
    return None if lib is None else FusedSteps(model, optimizer, lib)


def epoch_masks(generators: Sequence[torch.Generator], out: torch.Tensor, lib=None) -> torch.Tensor:
    """An epoch of dropout masks, one (N, 96) block per seed, kept units scaled by 1 / (1 - p).

    With daelab's C kernels, seed ``s``'s block is a Philox stream keyed by one 64-bit draw from
    its generator (~30x faster than PyTorch's serial Mersenne Twister at 4.5M values per seed);
    without them, one ``uniform_`` draw per value from the same generator. Either way a seed's
    masks depend only on that seed's stream.
    """
    keep = 1.0 - DROPOUT
    for s, generator in enumerate(generators):
        if lib is not None:
            lib.dropout_mask(draw_key(generator), 0, out[s].numel(), keep_threshold(DROPOUT), None, 1.0 / keep,
                             out[s].data_ptr())
        else:
            out[s].uniform_(0.0, 1.0, generator=generator).ge_(DROPOUT).mul_(1.0 / keep)
    return out


def parameter_counts(n_in: int, n_classes: int = 10) -> dict[str, int]:
    """Parameters of one copy, counted as Keras counts them (BatchNorm statistics are non-trainable).

    For 196 inputs: 15,082 trainable + 64 BatchNorm statistics = 15,146, the study's total.
    """
    model = StackedClassifier(n_in, 1, n_classes)
    trainable = sum(p.numel() for p in model.parameters())
    statistics = model.running_mean.numel() + model.running_var.numel()
    return {"trainable": trainable, "bn_statistics": statistics, "total": trainable + statistics}


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


def _accuracy(model: StackedClassifier, features: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Per-copy accuracy (S,) on a shared set."""
    return (model.predict(features) == labels).float().mean(dim=1)


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
    fused : use :class:`FusedSteps` where it is available (the same arithmetic, ~4x faster on a CPU);
        False: PyTorch's autograd and Adam.
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
    groups = [train_x] if torch.is_tensor(train_x) else list(train_x)
    val_groups = [val_x] if torch.is_tensor(val_x) else list(val_x)
    if len(val_groups) != len(groups) or any(g.shape != groups[0].shape for g in groups):
        raise ValueError("feature sets trained together need the same shape, and one validation set each")
    per_group = [int(s) for s in seeds]
    seeds = per_group * len(groups)
    n_seeds, (n, dim), device = len(seeds), groups[0].shape, groups[0].device
    train_x = groups[0] if len(groups) == 1 else torch.cat(groups)  # (K * N, D): copy s reads rows offset[s] + i
    offsets = (torch.arange(len(groups)) * n).repeat_interleave(len(per_group)).to(device)[:, None]
    # per copy, its own validation features: (S, M, D) (or (M, D), shared, for one feature set)
    val_x = val_groups[0] if len(groups) == 1 else torch.stack([g for g in val_groups for _ in per_group])
    model = StackedClassifier(dim, n_seeds, n_classes).to(device)
    init_generators = [seed_generator(s, STREAM_INIT) for s in seeds]
    data_generators = [seed_generator(s, STREAM_DATA) for s in seeds]
    cpu_model = model if device.type == "cpu" else StackedClassifier(dim, n_seeds, n_classes)
    cpu_model.reset_parameters(init_generators)
    if cpu_model is not model:
        model.load_state_dict(cpu_model.state_dict())
    # The fused kernel updates each stacked tensor in one call: Adam's per-tensor bookkeeping, not
    # its arithmetic, dominates a model this small.
    optimizer = torch.optim.Adam(model.parameters(), lr=settings.lr, eps=ADAM_EPS, fused=True)
    steps = fused_steps(model, optimizer) if fused else None

    h1, h2 = HIDDEN
    batch = settings.batch_size
    batch_buf = torch.empty(n_seeds * batch, dim, dtype=train_x.dtype, device=device)
    masks_buf = torch.empty(n_seeds, n, h1 + h2)  # an epoch of dropout masks per seed, from the CPU generators
    lib = load_kernels()
    patience = settings.early_stopping
    best_acc = torch.full((n_seeds,), -1.0, device=device)
    best_state = {k: v.clone() for k, v in model.state_dict().items()}
    best_epoch: list[int | None] = [None] * n_seeds
    waiting = [0] * n_seeds
    active = [True] * n_seeds
    epochs_run = [0] * n_seeds
    val_history: list[list[float]] = []
    began = time.perf_counter()
    model.train()
    for epoch in tqdm(range(1, settings.epochs + 1), desc=desc, unit="epoch", disable=not progress, leave=False):
        order = torch.stack([torch.randperm(n, generator=g) for g in data_generators]).to(device)  # (S, N)
        labels = train_y[order]                                                                  # (S, N)
        rows = order if len(groups) == 1 else order + offsets   # (S, N) rows of train_x
        masks = epoch_masks(data_generators, masks_buf, lib)  # (S, N, 96): kept units scaled by 1/keep
        if masks.device != device:
            masks = masks.to(device)
        for start in range(0, n, batch):
            index = rows[:, start:start + batch]                   # (S, b)
            b = index.shape[1]
            inputs = torch.index_select(train_x, 0, index.reshape(-1), out=batch_buf[:n_seeds * b])
            if steps is not None:
                loss = steps.step(inputs.view(n_seeds, b, dim), masks, start, labels)
                continue
            logits = model(inputs.view(n_seeds, b, dim),
                           (masks[:, start:start + b, :h1], masks[:, start:start + b, h1:]))
            # Sum over seeds of each seed's mean loss: every copy gets exactly its own gradient.
            loss = F.cross_entropy(logits.reshape(-1, n_classes), labels[:, start:start + b].reshape(-1),
                                   reduction="sum") / b
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            loss = loss.detach()
        if not math.isfinite(float(loss)):
            from daelab.errors import TrainingError
            raise TrainingError(f"classifier loss became {float(loss)} in epoch {epoch}", "lower --lr")
        for s in range(n_seeds):
            epochs_run[s] += active[s]
        if on_epoch is not None:
            on_epoch(epoch)
        if patience > 0:
            accuracy = _accuracy(model, val_x, val_y)
            val_history.append(accuracy.tolist())
            improved = [active[s] and float(accuracy[s]) > float(best_acc[s]) for s in range(n_seeds)]
            if any(improved):
                chosen = torch.tensor(improved, device=device)
                best_acc = torch.where(chosen, accuracy, best_acc)
                for key, value in model.state_dict().items():
                    best_state[key] = torch.where(chosen.view(-1, 1, 1), value, best_state[key])
            for s in range(n_seeds):
                if not active[s]:
                    continue
                if improved[s]:
                    best_epoch[s], waiting[s] = epoch, 0
                else:
                    waiting[s] += 1
                    active[s] = waiting[s] < patience  # Keras: stop once `wait >= patience`
            if not any(active):
                break
    if patience > 0:
        model.load_state_dict(best_state)  # the copies that never stopped also keep their best epoch
    model.eval()
    val_accuracy = _accuracy(model, val_x, val_y).tolist()
    return ClassifierFit(model, seeds, epochs_run, best_epoch, val_accuracy, val_history,
                         time.perf_counter() - began)


def warm_up() -> None:
    """Pay the first-use costs of training a stack (the optimizer's imports, loading the C kernels) now.

    :func:`daelab.probe.probe_run` calls it before forking worker processes, which then inherit them.
    """
    generator = torch.Generator().manual_seed(0)
    x, y = torch.rand(8, 4, generator=generator), torch.arange(8) % 2
    train_classifiers(x, y, x, y, [0], ClassifierSettings(epochs=1, batch_size=4), n_classes=2)
