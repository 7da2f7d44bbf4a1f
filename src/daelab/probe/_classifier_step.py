"""The classifier's training step with a hand-written backward, and an epoch of its dropout masks.

Autograd and the optimizer's bookkeeping cost more than the study's small classifier's arithmetic,
so :class:`FusedSteps` runs a :class:`~daelab.probe._stacked.StackedClassifier` step as two
PyTorch matrix products per direction plus one C call per layer (``daelab.kernels.fused``), and
:func:`epoch_masks` draws a whole epoch of dropout masks per seed from a Philox stream. Both are
the same arithmetic as the autograd path in :mod:`daelab.probe._classifier` (tested).
"""
from __future__ import annotations

from collections.abc import Sequence

import torch

from daelab.kernels.fused import FusedAdam, draw_key, keep_threshold, load_kernels, ptr
from daelab.probe._stacked import BN_EPS, BN_MOMENTUM, DROPOUT, HIDDEN, StackedClassifier

# Sizes the C classifier tail (``classifier_tail`` in _classifier.c) has room for; larger ones train with autograd.
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
                             ptr(out[s]))  # ptr: dtype, contiguity and size checked before the C call
        else:
            out[s].uniform_(0.0, 1.0, generator=generator).ge_(DROPOUT).mul_(1.0 / keep)
    return out
