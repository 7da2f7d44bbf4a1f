"""Adam in C on ``torch.optim.Adam``'s own state: the optimizer step of both fused training steps.

:class:`FusedAdam` serves the MLP's :class:`~daelab.kernels._mlp.FusedMLP` and the probe
classifier's ``FusedSteps``: one ``adam`` kernel call per parameter, which also rewrites the
parameter's bf16 shadow copy where there is one, on the optimizer's ``step``/``exp_avg``/
``exp_avg_sq`` tensors, so that checkpoints move freely between the fused and PyTorch's paths.
"""
from __future__ import annotations

import math

import torch

from daelab.kernels._loader import Kernels, ptr


class FusedAdam:
    """``torch.optim.Adam``'s step (one group, no weight decay, no amsgrad) in C, on its own state.

    The state tensors (``step``, ``exp_avg``, ``exp_avg_sq``) are the optimizer's, created here as
    Adam would, so ``optimizer.state_dict()`` stays valid; build this after loading any optimizer
    state. Every array is checked against the kernel once, here: they are fixed for this object's life.

    Parameters
    ----------
    lib : the loaded kernels (:func:`~daelab.kernels.load_kernels`).
    optimizer : a plain ``torch.optim.Adam`` with one parameter group.
    grads : each parameter -> its gradient buffer (fp32 or bf16, same number of values).
    shadows : some parameters -> bf16 copies rewritten with the updated values in the same pass.
    """

    def __init__(self, lib: Kernels, optimizer: torch.optim.Adam, grads: dict, shadows: dict | None = None):
        self.lib, self.group = lib, optimizer.param_groups[0]
        shadows = shadows or {}
        states, self.calls = [], []
        for param, grad in grads.items():
            if grad.dtype not in (torch.float32, torch.bfloat16):
                raise ValueError(f"fused Adam takes fp32 or bf16 gradients, not {grad.dtype}")
            state = optimizer.state[param]
            if not state:
                state["step"] = torch.tensor(0.0)
                state["exp_avg"] = torch.zeros_like(param, memory_format=torch.preserve_format)
                state["exp_avg_sq"] = torch.zeros_like(param, memory_format=torch.preserve_format)
            states.append(state)
            call = (ptr(param), ptr(grad), int(grad.dtype == torch.bfloat16), ptr(state["exp_avg"]),
                    ptr(state["exp_avg_sq"]), ptr(shadows.get(param)), param.numel())
            lib.adam.check(*call, 0.9, 0.999, 1e-8, 1e-3, 1.0)
            self.calls.append(call)
        self.t = float(states[0]["step"]) if states else 0.0
        if any(float(state["step"]) != self.t for state in states):
            raise ValueError("parameters at different Adam steps")
        # Every parameter's step count becomes a 0-d view of one tensor, so that a step adds 1 to all
        # of them in one op (a foreach add over 24 scalars cost ~0.1 ms a step). They stay separate
        # values in the optimizer's state, saved and loaded as before.
        self.step_counts = torch.full((len(states),), self.t)
        for k, state in enumerate(states):
            state["step"] = self.step_counts[k]

    def step(self) -> None:
        """One Adam step of every parameter from its gradient buffer (and its bf16 shadow, where it has one)."""
        self.step_counts.add_(1.0)
        self.t += 1
        beta1, beta2 = self.group["betas"]
        step_size = float(self.group["lr"]) / (1 - beta1 ** self.t)
        bias_correction2_sqrt = math.sqrt(1 - beta2 ** self.t)
        eps, adam = self.group["eps"], self.lib.trusted.adam  # the arrays were checked in __init__
        for param, grad, grad_bf16, exp_avg, exp_avg_sq, shadow, n in self.calls:
            adam(param, grad, grad_bf16, exp_avg, exp_avg_sq, shadow, n, beta1, beta2, eps, step_size,
                 bias_correction2_sqrt)
