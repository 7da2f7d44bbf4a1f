"""Models: the registry of denoising autoencoders, the study's MLP DAE, and a Keras-like summary.

Every model maps noisy images to denoised ones in [0, 1] and exposes ``encode`` (images -> codes),
``decode`` (codes -> images) and ``forward`` (their composition). ``input_layout`` says which
tensor layout it eats: ``"flat"`` (N, H*W) or ``"image"`` (N, 1, H, W).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import torch
from torch import nn

from daelab.errors import ConfigError


@dataclass
class ModelConfig:
    """Architecture hyperparameters. The defaults are the study's DAE (1,438,676 parameters)."""

    name: str = field(default="mlp", metadata={"help": "registered model name", "flag": "model"})
    image_size: int = field(default=28, metadata={"help": "side of the square input images"})
    hidden: tuple[int, ...] = field(default=(512, 512, 256), metadata={"help": "encoder hidden widths"})
    code_dim: int = field(default=196, metadata={"help": "bottleneck (code) width"})
    decoder_hidden: tuple[int, ...] = field(default=(256, 512), metadata={"help": "decoder hidden widths"})
    dropout: float = field(default=0.2, metadata={"help": "dropout after each encoder hidden layer but the last"})
    negative_slope: float = field(default=0.3, metadata={"help": "LeakyReLU slope (Keras' default alpha)"})
    init_std: float = field(default=0.05, metadata={"help": "std of the Gaussian weight init (Keras 'random_normal')"})
    channels: int = field(default=32, metadata={"help": "base channel count of the conv model"})

    def __post_init__(self):
        self.hidden = tuple(int(h) for h in self.hidden)
        self.decoder_hidden = tuple(int(h) for h in self.decoder_hidden)
        if not 0.0 <= self.dropout < 1.0:
            raise ConfigError(f"dropout {self.dropout} out of range", "use 0 <= dropout < 1")
        if self.code_dim < 1 or any(h < 1 for h in self.hidden + self.decoder_hidden) or self.image_size < 1:
            raise ConfigError("layer widths and image size must be positive integers")


MODELS: dict[str, Callable[[ModelConfig], nn.Module]] = {}


def register_model(name: str):
    """Decorator adding a model builder ``builder(config) -> nn.Module`` to the registry."""
    def wrap(builder):
        MODELS[name] = builder
        return builder
    return wrap


def build_model(config: ModelConfig | None = None) -> nn.Module:
    """Build the registered model ``config.name``; unknown names raise with the valid ones listed."""
    config = config or ModelConfig()
    if config.name not in MODELS:
        raise ConfigError(f"unknown model {config.name!r}", f"valid: {', '.join(sorted(MODELS))}")
    return MODELS[config.name](config)


class BitDropout(nn.Dropout):
    """Dropout whose keep-mask comes from 16 random bits per unit instead of a Bernoulli draw.

    PyTorch's CPU ``bernoulli_`` costs ~25 ns per element, more than the layer's matrix product at
    batch 256; four 16-bit draws per ``random_()`` int64 are ~6x cheaper. The drop probability is
    rounded to a multiple of 2^-16 (0.2 -> 0.199997); kept units are scaled by 1 / (1 - p) exactly
    as ``nn.Dropout`` does. Uses the global generator, like ``nn.Dropout``, so seeds and checkpoints
    cover it.
    """

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        if not self.training or self.p == 0.0:
            return input
        n = input.numel()
        bits = torch.empty((n + 3) // 4, dtype=torch.int64, device=input.device).random_(-(2**63), None)
        bits = bits.view(torch.int16)[:n].view(input.shape)
        threshold = int(round(self.p * 65536)) - 32768  # int16 is uniform on [-32768, 32767]
        keep = (bits >= threshold).to(input.dtype).mul_(1.0 / (1.0 - self.p))
        return input * keep


# Keras' BatchNormalization: momentum 0.99 (PyTorch's 0.01 for the new value), epsilon 1e-3.
def _dense_block(n_in: int, n_out: int, config: ModelConfig, dropout: float) -> list[nn.Module]:
    layers: list[nn.Module] = [nn.Linear(n_in, n_out), nn.BatchNorm1d(n_out, eps=1e-3, momentum=0.01)]
    if dropout > 0:
        layers.append(BitDropout(dropout))
    layers.append(nn.LeakyReLU(config.negative_slope))
    return layers


class MLPDAE(nn.Module):
    """The study's DAE: 784-512-512-256-196-256-512-784 with BatchNorm, Dropout and LeakyReLU.

    Encoder: Dense -> BN -> Dropout -> LeakyReLU for each hidden width (no dropout on the last),
    then a linear bottleneck. Decoder: Dense -> BN -> LeakyReLU per width, Dense -> sigmoid.
    """

    input_layout = "flat"

    def __init__(self, config: ModelConfig):
        super().__init__()
        self.config = config
        n_pixels = config.image_size ** 2
        widths = (n_pixels,) + config.hidden
        encoder: list[nn.Module] = []
        for i, (n_in, n_out) in enumerate(zip(widths[:-1], widths[1:])):
            last = i == len(config.hidden) - 1
            encoder += _dense_block(n_in, n_out, config, 0.0 if last else config.dropout)
        encoder.append(nn.Linear(widths[-1], config.code_dim))
        self.encoder = nn.Sequential(*encoder)
        widths = (config.code_dim,) + config.decoder_hidden
        decoder: list[nn.Module] = []
        for n_in, n_out in zip(widths[:-1], widths[1:]):
            decoder += _dense_block(n_in, n_out, config, 0.0)
        decoder += [nn.Linear(widths[-1], n_pixels), nn.Sigmoid()]
        self.decoder = nn.Sequential(*decoder)
        self.code_dim = config.code_dim
        for module in self.modules():
            if isinstance(module, nn.Linear):
                nn.init.normal_(module.weight, 0.0, config.init_std)
                nn.init.zeros_(module.bias)

    def encode(self, images: torch.Tensor) -> torch.Tensor:
        """(N, 784) images in [0, 1] -> (N, code_dim) codes."""
        return self.encoder(images)

    def decode(self, codes: torch.Tensor) -> torch.Tensor:
        """(N, code_dim) codes -> (N, 784) images in [0, 1]."""
        return self.decoder(codes)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """(N, 784) noisy images -> (N, 784) denoised images."""
        return self.decoder(self.encoder(images))


@register_model("mlp")
def _build_mlp(config: ModelConfig) -> nn.Module:
    return MLPDAE(config)


def example_input(model: nn.Module, batch: int = 2) -> torch.Tensor:
    """A zero batch in the model's input layout, for shape checks and summaries."""
    size = model.config.image_size
    if model.input_layout == "flat":
        return torch.zeros(batch, size * size)
    return torch.zeros(batch, 1, size, size)


# -------------------------------------------------------------------------------------- summary
def _stat_count(module: nn.Module) -> int:
    """BatchNorm running mean/var values: Keras counts them as non-trainable parameters."""
    return sum(b.numel() for name, b in module.named_buffers(recurse=False) if name in ("running_mean", "running_var"))


def summary_rows(model: nn.Module) -> tuple[list[tuple[str, str, tuple, int]], dict[str, int]]:
    """Rows (name, layer type, output shape, parameters) for each leaf layer, and the totals.

    Parameters are counted as Keras does: weights and biases plus BatchNorm running statistics.
    """
    rows, hooks = [], []
    leaves = [(name, m) for name, m in model.named_modules() if not list(m.children())]
    for name, module in leaves:
        def hook(mod, inputs, output, name=name):
            params = sum(p.numel() for p in mod.parameters(recurse=False)) + _stat_count(mod)
            rows.append((name, type(mod).__name__, tuple(output.shape[1:]), params))
        hooks.append(module.register_forward_hook(hook))
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            model(example_input(model))
    finally:
        model.train(was_training)
        for handle in hooks:
            handle.remove()
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    non_trainable = sum(p.numel() for p in model.parameters() if not p.requires_grad)
    non_trainable += sum(_stat_count(m) for m in model.modules())
    totals = {"total": trainable + non_trainable, "trainable": trainable, "non_trainable": non_trainable}
    return rows, totals


def format_summary(model: nn.Module) -> str:
    """A text table like Keras' ``model.summary()``: layer, output shape, parameter count, totals."""
    rows, totals = summary_rows(model)
    lines = [f"Model: {model.config.name!r}", f"{'Layer (type)':<40}{'Output Shape':<22}{'Param #':>10}", "=" * 72]
    for name, kind, shape, params in rows:
        lines.append(f"{name + ' (' + kind + ')':<40}{str((None,) + shape):<22}{params:>10,}")
    lines += ["=" * 72, f"Total params: {totals['total']:,}", f"Trainable params: {totals['trainable']:,}",
              f"Non-trainable params: {totals['non_trainable']:,}"]
    return "\n".join(lines)
