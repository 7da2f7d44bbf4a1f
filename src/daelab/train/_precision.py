"""Mixed precision for training: a bf16 working copy of the weights, fp32 master weights.

``BF16Shadow`` keeps the model itself in fp32 (the weights that are checkpointed, evaluated and
updated by Adam) and a *shadow* module for the training forward and backward whose Linear/Conv
weights are bf16 copies. BatchNorm modules are shared between the two (their running statistics
and affine parameters stay fp32: a 1% momentum update is below bf16's resolution). Per step this
costs one fused copy of the gradients into fp32 and one fused copy of the updated weights back to
bf16, where ``torch.autocast`` casts every weight, bias and activation twice per step: on a 2-core
CPU those casts were 15% of the step.
"""
from __future__ import annotations

import copy
from typing import Protocol, runtime_checkable

import torch
from torch import nn

LOW_PRECISION = (nn.Linear, nn.Conv2d, nn.ConvTranspose2d)


@runtime_checkable
class WeightPolicy(Protocol):
    """Which weights PyTorch's training step runs through, and how they meet the master weights.

    ``module`` is called for the forward and backward pass on inputs of ``dtype``;
    ``after_backward`` hands its gradients to the master weights before ``optimizer.step()``, and
    ``after_step`` copies the updated master weights back. :class:`FP32` and :class:`BF16Shadow`
    satisfy it; :class:`daelab.train.TorchStep` turns one into a step policy.
    """

    module: nn.Module
    dtype: torch.dtype

    def after_backward(self) -> None:
        ...

    def after_step(self) -> None:
        ...


class FP32:
    """The identity policy: train the model as it is."""

    dtype = torch.float32

    def __init__(self, model: nn.Module):
        self.module = model

    def after_backward(self) -> None:
        """Nothing to do: the gradients are already on the trained weights."""

    def after_step(self) -> None:
        """Nothing to do: the trained weights are the master weights."""


class BF16Shadow:
    """Train through a bf16 shadow of ``model``; ``model`` keeps the fp32 master weights.

    Use: forward/backward through ``self.module`` with bf16 inputs, then call ``after_backward``
    (gradients -> fp32 master ``.grad``), ``optimizer.step()`` on ``model.parameters()``, then
    ``after_step`` (master -> shadow).
    """

    dtype = torch.bfloat16

    def __init__(self, model: nn.Module):
        self.master = model
        self.module = copy.deepcopy(model)
        master_modules = dict(model.named_modules())
        for name, shadow_module in list(self.module.named_modules()):
            if list(shadow_module.children()) or not name:
                continue
            if isinstance(shadow_module, LOW_PRECISION):
                shadow_module.to(torch.bfloat16)
            else:  # share BatchNorm & co.: one set of fp32 statistics and affine parameters
                parent_name, _, child = name.rpartition(".")
                parent = self.module.get_submodule(parent_name) if parent_name else self.module
                setattr(parent, child, master_modules[name])
        shared = {id(p) for p in model.parameters()}
        self.pairs = [(m, s) for m, s in zip(_low_params(model), _low_params(self.module)) if id(s) not in shared]
        self._grads = [torch.zeros_like(m) for m, _ in self.pairs]
        self.after_step()

    def after_backward(self) -> None:
        """Copy the shadow's bf16 gradients into the fp32 master weights' ``.grad``."""
        torch._foreach_copy_(self._grads, [s.grad for _, s in self.pairs])
        for (master, shadow), grad in zip(self.pairs, self._grads):
            master.grad = grad
            shadow.grad = None

    @torch.no_grad()
    def after_step(self) -> None:
        """Copy the updated fp32 master weights into the bf16 shadow."""
        torch._foreach_copy_([s for _, s in self.pairs], [m for m, _ in self.pairs])


def _low_params(model: nn.Module) -> list[torch.Tensor]:
    return [p for module in model.modules() if isinstance(module, LOW_PRECISION) for p in module.parameters()]


def make_policy(model: nn.Module, precision: str) -> WeightPolicy:
    """The weight policy of ``precision``.

    Parameters
    ----------
    model : nn.Module
        The model with its fp32 master weights.
    precision : str
        ``fp32`` (train ``model`` as is) or ``bf16`` (a :class:`BF16Shadow` of it).

    Returns
    -------
    WeightPolicy
        :class:`FP32` or :class:`BF16Shadow`.
    """
    return BF16Shadow(model) if precision == "bf16" else FP32(model)
