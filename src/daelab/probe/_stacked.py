"""The study's small classifier as one model holding ``S`` independent copies stacked along a seed axis.

The study judged its encoder by training this Keras classifier on the 196-d codes and on the 784
raw pixels::

    Dense(64, relu) -> Dropout(0.4) -> Dense(32, relu) -> Dropout(0.4) -> BatchNormalization
    -> Dense(10, softmax);  Adam(1e-3), categorical cross-entropy, batch 128, 100 epochs,
    validation_split = 2/9

:class:`StackedClassifier` is that network with Keras' conventions (glorot-uniform kernels with
zero biases, BatchNorm with momentum 0.99 / epsilon 1e-3), its weights stacked along a leading
seed axis, ``(S, in, out)``, and applied with ``torch.baddbmm``, so that one forward pass runs
every copy. How it is trained lives in :mod:`daelab.probe._classifier`, its hand-written training
step in :mod:`daelab.probe._classifier_step`.
"""
from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from daelab.models import in_batches

HIDDEN = (64, 32)
DROPOUT = 0.4
BN_MOMENTUM = 0.01  # Keras momentum 0.99 = weight of the old running value; PyTorch counts the new one
BN_EPS = 1e-3
ADAM_EPS = 1e-7     # Keras' Adam default (PyTorch's is 1e-8)


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


def parameter_counts(n_in: int, n_classes: int = 10) -> dict[str, int]:
    """Parameters of one copy, counted as Keras counts them (BatchNorm statistics are non-trainable).

    For 196 inputs: 15,082 trainable + 64 BatchNorm statistics = 15,146, the study's total.
    """
    model = StackedClassifier(n_in, 1, n_classes)
    trainable = sum(p.numel() for p in model.parameters())
    statistics = model.running_mean.numel() + model.running_var.numel()
    return {"trainable": trainable, "bn_statistics": statistics, "total": trainable + statistics}
