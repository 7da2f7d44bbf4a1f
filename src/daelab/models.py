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

    name: str = field(default="mlp", metadata={"help": "registered model name", "flag": "model",
                                               "known": lambda: sorted(MODELS)})
    image_size: int = field(default=28, metadata={"help": "side of the square input images"})
    input_dim: int | None = field(default=None, metadata={
        "help": "input width of the MLP when the inputs are not image_size**2 pixels (e.g. any tabular "
                "features in [0, 1]); default: image_size**2"})
    hidden: tuple[int, ...] = field(default=(512, 512, 256), metadata={"help": "encoder hidden widths"})
    code_dim: int = field(default=196, metadata={"help": "bottleneck (code) width"})
    decoder_hidden: tuple[int, ...] = field(default=(256, 512), metadata={"help": "decoder hidden widths"})
    dropout: float = field(default=0.2, metadata={"help": "dropout after each encoder hidden layer but the last"})
    negative_slope: float = field(default=0.3, metadata={"help": "LeakyReLU slope (Keras' default alpha)"})
    init_std: float = field(default=0.05, metadata={"help": "std of the Gaussian weight init (Keras 'random_normal')"})
    channels: int = field(default=32, metadata={"help": "base channel count of the conv model; the width of the "
                                                        "dncnn and ffdnet models"})
    depth: int = field(default=17, metadata={"help": "convolution layers of the dncnn and ffdnet models (>= 2)"})
    batch_norm: bool = field(default=True, metadata={"help": "BatchNorm after the inner convolutions of the dncnn "
                                                            "and ffdnet models"})

    def __post_init__(self):
        self.hidden = tuple(int(h) for h in self.hidden)
        self.decoder_hidden = tuple(int(h) for h in self.decoder_hidden)
        if not 0.0 <= self.dropout < 1.0:
            raise ConfigError(f"dropout {self.dropout} out of range", "use 0 <= dropout < 1")
        if self.code_dim < 1 or any(h < 1 for h in self.hidden + self.decoder_hidden) or self.image_size < 1:
            raise ConfigError("layer widths and image size must be positive integers")
        if (self.input_dim is not None and self.input_dim < 1) or self.channels < 1:
            raise ConfigError("input-dim and channels must be positive integers")
        if self.depth < 2:
            raise ConfigError(f"depth {self.depth} is too small", "use --depth 2 or more (a first and a last conv)")

    @property
    def n_inputs(self) -> int:
        """Width of a flat input: ``input_dim`` when set, else ``image_size**2``."""
        return self.input_dim if self.input_dim is not None else self.image_size ** 2


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
        n_pixels = config.n_inputs
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


@torch.inference_mode()
def in_batches(fn: Callable[[torch.Tensor], torch.Tensor], inputs: torch.Tensor, batch_size: int = 4096,
               device: torch.device | str | None = None, dim: int = 0, out_dim: int | None = None) -> torch.Tensor:
    """Apply ``fn`` to ``inputs`` one batch at a time and concatenate the results on the CPU.

    The one batched inference loop of the package: every stage that runs a model over many images
    (denoising, encoding, the classifier's predictions) goes through it, so memory stays bounded by
    ``batch_size`` whatever the input's length.

    Parameters
    ----------
    fn : callable
        Maps a batch (on ``device``) to a tensor whose first dimension (or ``dim``) is the batch.
    inputs : torch.Tensor
        (N, ...) on any device; sliced along ``dim`` without copying.
    batch_size : int
        Rows per call of ``fn``.
    device : torch.device, str or None
        Where each batch is moved before ``fn`` sees it (None: where it is).
    dim : int
        The batch dimension of ``inputs``.
    out_dim : int or None
        The batch dimension of ``fn``'s output (None: ``dim``).

    Returns
    -------
    torch.Tensor
        ``fn``'s outputs for all N rows, concatenated along ``out_dim``, as float32 (or the output's integer
        dtype) on the CPU.
    """
    n = inputs.shape[dim]
    out_dim = dim if out_dim is None else out_dim
    parts = []
    for start in range(0, n, batch_size):
        batch = inputs.narrow(dim, start, min(batch_size, n - start))
        out = fn(batch if device is None else batch.to(device))
        parts.append((out.float() if out.is_floating_point() else out).cpu())
    return torch.cat(parts, dim=out_dim) if parts else fn(inputs.narrow(dim, 0, 0)).cpu()


def example_input(model: nn.Module, batch: int = 2) -> torch.Tensor:
    """A zero batch in the model's input layout, for shape checks and summaries."""
    size = model.config.image_size
    if model.input_layout == "flat":
        return torch.zeros(batch, model.config.n_inputs)
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


# ----------------------------------------------------------------------------------- conv DAE
# A small fully convolutional U-Net for images of any size. Three choices make it fast on a CPU
# and good at every noise level:
# - it never works at full resolution: PixelUnshuffle folds each 2x2 block into 4 channels (as
#   FFDNet does), so every 3x3 conv runs on a quarter of the pixels;
# - the skip between the two levels is added, not concatenated (half the channels to convolve);
# - the output is sigmoid(logit(noisy) + correction): the network only learns the correction, and
#   with the last conv zero-initialised it starts as the identity, so at low noise it leaves clean
#   detail alone instead of squeezing it through a bottleneck (which caps the MLP's PSNR);
# - it is told each image's noise level, estimated from the image itself (as FFDNet is given a noise
#   map, but blind): without it, a model trained on a range of levels also smooths clean images
#   (31.6 dB on clean Fashion-MNIST after 3 epochs), which loses to the noisy input at low noise.
_LOGIT_EPS = 1e-3
_MAD_TO_STD = 1.0 / (0.6745 * 2.0)  # the median |N(0, s)| is 0.6745 s; the diagonal difference has std 2s


def estimate_noise_std(images: torch.Tensor) -> torch.Tensor:
    """(N, 1, H, W) -> (N, 1, 1, 1) robust estimate of each image's additive noise std.

    The median absolute diagonal second difference (x[i,j] - x[i,j+1] - x[i+1,j] + x[i+1,j+1], which
    cancels smooth image content and has std 2s for i.i.d. noise of std s). Clipping at 0 and 1
    biases it low on flat black or white areas, but it stays monotone in the noise level, which is
    all the network needs. Images smaller than 2x2 get 0.
    """
    n = images.shape[0]
    if images.shape[-1] < 2 or images.shape[-2] < 2:
        return images.new_zeros(n, 1, 1, 1)
    diagonal = images[..., 1:, 1:] - images[..., 1:, :-1] - images[..., :-1, 1:] + images[..., :-1, :-1]
    return diagonal.abs().reshape(n, -1).median(dim=1).values.reshape(n, 1, 1, 1) * _MAD_TO_STD


def _pad_to_multiple(images: torch.Tensor, multiple: int) -> torch.Tensor:
    """Pad (N, C, H, W) on the bottom and right by edge replication so that H and W divide by ``multiple``."""
    pad_h, pad_w = -images.shape[-2] % multiple, -images.shape[-1] % multiple
    if pad_h or pad_w:
        images = nn.functional.pad(images, (0, pad_w, 0, pad_h), mode="replicate")
    return images


class ConvDAE(nn.Module):
    """Fully convolutional residual U-Net DAE: (N, 1, H, W) -> (N, 1, H, W) for any H, W.

    With ``c = config.channels``: PixelUnshuffle(2), plus one channel holding the image's estimated
    noise std (:func:`estimate_noise_std`, x10) -> conv 5->c -> conv c->c (skip) -> stride-2
    conv c->2c -> conv 2c->2c (the code, (N, 2c, H/4, W/4)) -> transposed conv 2c->c, + skip ->
    conv c->c -> conv c->4 -> PixelShuffle(2) = a correction added to the logit of the input, then
    sigmoid. Inputs are padded (edge replication) to a multiple of 4 and the output cropped back,
    so the output shape always equals the input shape.
    """

    input_layout = "image"

    def __init__(self, config: ModelConfig):
        super().__init__()
        self.config = config
        c = config.channels
        def act():
            return nn.LeakyReLU(config.negative_slope)
        self.unshuffle = nn.PixelUnshuffle(2)
        self.head = nn.Sequential(nn.Conv2d(5, c, 3, padding=1), act(), nn.Conv2d(c, c, 3, padding=1), act())
        self.down = nn.Sequential(nn.Conv2d(c, 2 * c, 3, stride=2, padding=1), act(),
                                  nn.Conv2d(2 * c, 2 * c, 3, padding=1), act())
        self.up = nn.ConvTranspose2d(2 * c, c, 2, stride=2)
        self.tail = nn.Sequential(act(), nn.Conv2d(c, c, 3, padding=1), act(), nn.Conv2d(c, 4, 3, padding=1))
        self.shuffle = nn.PixelShuffle(2)
        nn.init.zeros_(self.tail[-1].weight)  # start as the identity map
        nn.init.zeros_(self.tail[-1].bias)
        self.code_dim = 2 * c  # channels of the code map (N, 2c, H/4, W/4)
        # channels_last: oneDNN's convolutions run ~1.3x faster in it on a CPU; load_state_dict keeps it
        self.to(memory_format=torch.channels_last)

    def encode_with_skips(self, images: torch.Tensor) -> tuple[torch.Tensor, tuple]:
        """(N, 1, H, W) -> codes (N, 2c, ceil(H/4), ceil(W/4)) and what ``decode`` needs to be exact."""
        padded = _pad_to_multiple(images, 4)                # (N, 1, H4, W4)
        folded = self.unshuffle(padded)                     # (N, 4, H4/2, W4/2)
        level = (10.0 * estimate_noise_std(images)).expand(-1, 1, *folded.shape[-2:])
        folded = torch.cat([folded, level], 1).contiguous(memory_format=torch.channels_last)
        skip = self.head(folded)                            # (N, c, H4/2, W4/2)
        codes = self.down(skip)                             # (N, 2c, H4/4, W4/4)
        return codes, (padded, skip, tuple(images.shape[-2:]))

    def encode(self, images: torch.Tensor) -> torch.Tensor:
        """(N, 1, H, W) images in [0, 1] -> (N, 2c, ceil(H/4), ceil(W/4)) code maps."""
        return self.encode_with_skips(images)[0]

    def decode(self, codes: torch.Tensor, skips: tuple | None = None) -> torch.Tensor:
        """Code maps (and the skips from ``encode_with_skips``) -> (N, 1, H, W) images in [0, 1].

        Without ``skips`` the input and the half-resolution features are taken as zero (a 0.5 grey
        logit base): a code-only reconstruction, which the model was never trained to make, so
        ``forward`` always passes them.
        """
        if skips is None:
            n, _, h, w = codes.shape
            padded = codes.new_full((n, 1, 4 * h, 4 * w), 0.5)
            skip = codes.new_zeros((n, self.config.channels, 2 * h, 2 * w))
            size = (4 * h, 4 * w)
        else:
            padded, skip, size = skips
        correction = self.shuffle(self.tail(self.up(codes) + skip))           # (N, 1, H4, W4)
        base = torch.logit(padded.clamp(_LOGIT_EPS, 1 - _LOGIT_EPS))
        return torch.sigmoid(base + correction)[..., : size[0], : size[1]]

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """(N, 1, H, W) noisy images -> (N, 1, H, W) denoised images."""
        return self.decode(*self.encode_with_skips(images))


@register_model("conv")
def _build_conv(config: ModelConfig) -> nn.Module:
    return ConvDAE(config)


# ------------------------------------------------------------------------------ natural images
class ResidualDenoiser(nn.Module):
    """A plain residual conv stack that predicts the noise: ``denoised = noisy - net(noisy)``, any H, W.

    ``scale = 1`` is DnCNN-like (Zhang et al. 2017): conv 1->c + ReLU, ``depth - 2`` times conv c->c
    (+ BatchNorm) + ReLU, conv c->1, all 3x3 at full resolution. ``scale = 2`` is FFDNet-like (Zhang
    et al. 2018) without the noise-level map (blind, as DnCNN-B): PixelUnshuffle(2) folds each 2x2
    block into 4 channels, the same stack runs at half resolution (4 -> c ... c -> 4, a quarter of
    the pixels per 3x3 conv), and PixelShuffle(2) unfolds the predicted noise; odd sides are padded
    by edge replication and the output cropped back.

    Inputs are unclipped noisy images on the [0, 1] scale (the Set12 protocol's ``awgn``). Training
    sees the unclipped residual output (the loss wants its gradient everywhere); in eval mode the
    output is clipped to [0, 1], as every daelab model's output lies there. The last conv starts at
    zero, so the untrained model is the identity. ``reach`` is how many pixels from an output pixel
    the receptive field extends (``depth`` at full resolution; at half resolution each conv reaches
    two pixels and the 2x2 block one more): :func:`daelab.tiling.tile_apply` with ``margin >= reach``
    gives the whole-image output.
    """

    input_layout = "image"

    def __init__(self, config: ModelConfig, scale: int):
        super().__init__()
        self.config, self.scale = config, scale
        c, folded = config.channels, scale * scale
        layers: list[nn.Module] = [nn.Conv2d(folded, c, 3, padding=1), nn.ReLU(inplace=True)]
        for _ in range(config.depth - 2):
            layers.append(nn.Conv2d(c, c, 3, padding=1, bias=not config.batch_norm))
            if config.batch_norm:
                layers.append(nn.BatchNorm2d(c))
            layers.append(nn.ReLU(inplace=True))
        layers.append(nn.Conv2d(c, folded, 3, padding=1))
        self.body = nn.Sequential(*layers)
        for module in self.body:
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, nonlinearity="relu")
                if module.bias is not None:
                    nn.init.zeros_(module.bias)
        nn.init.zeros_(self.body[-1].weight)  # start as the identity map
        self.code_dim = c
        self.reach = config.depth if scale == 1 else 2 * config.depth + 1
        self.to(memory_format=torch.channels_last)  # oneDNN's convolutions are faster in it on a CPU

    def _fold(self, images: torch.Tensor) -> torch.Tensor:
        if self.scale == 1:
            return images
        return nn.functional.pixel_unshuffle(_pad_to_multiple(images, self.scale), self.scale)

    def encode(self, images: torch.Tensor) -> torch.Tensor:
        """(N, 1, H, W) -> the last hidden feature map (N, c, ceil(H/scale), ceil(W/scale))."""
        return self.body[:-1](self._fold(images).contiguous(memory_format=torch.channels_last))

    def encode_with_skips(self, images: torch.Tensor) -> tuple[torch.Tensor, tuple]:
        """The feature maps and what ``decode`` needs to be exact: the noisy images themselves."""
        return self.encode(images), (images,)

    def predict_noise(self, codes: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
        """The noise (N, 1, H, W) the stack predicts from feature maps, for images of ``size`` (H, W)."""
        noise = self.body[-1](codes)
        if self.scale > 1:
            noise = nn.functional.pixel_shuffle(noise, self.scale)
        return noise[..., : size[0], : size[1]]

    def decode(self, codes: torch.Tensor, skips: tuple | None = None) -> torch.Tensor:
        """Feature maps (and the noisy images from ``encode_with_skips``) -> denoised (N, 1, H, W).

        Without ``skips`` the noisy image is taken as a 0.5 grey (as the conv U-Net does): a
        code-only reconstruction the model was never trained to make, so ``forward`` passes it.
        """
        if skips is None:
            n, _, h, w = codes.shape
            images = codes.new_full((n, 1, self.scale * h, self.scale * w), 0.5)
        else:
            (images,) = skips
        denoised = images - self.predict_noise(codes, tuple(images.shape[-2:]))
        return denoised if self.training else denoised.clamp(0.0, 1.0)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """(N, 1, H, W) noisy images -> (N, 1, H, W) denoised (clipped to [0, 1] in eval mode)."""
        return self.decode(*self.encode_with_skips(images))


@register_model("dncnn")
def _build_dncnn(config: ModelConfig) -> nn.Module:
    return ResidualDenoiser(config, scale=1)


@register_model("ffdnet")
def _build_ffdnet(config: ModelConfig) -> nn.Module:
    return ResidualDenoiser(config, scale=2)



# A residual U-Net for natural images: in short runs on Train400 (docs/natural.md) it reached a
# lower validation loss after 2 epochs than the ffdnet stack after 12, at the same patches/s on one
# core: the quarter-resolution level gives a wide receptive field cheaply, while the full-resolution
# level keeps the fine detail that folding 2x2 blocks (ffdnet) costs at low noise.
class ResUNetDenoiser(nn.Module):
    """A three-level residual U-Net that predicts the noise: ``denoised = noisy - net(noisy)``, any H, W.

    With ``c = config.channels``, widths c, 2c, 4c at full, half and quarter resolution, all convs
    3x3: conv 1->c + ReLU, conv+BatchNorm+ReLU (the full-resolution skip); two conv+BN+ReLU to 2c,
    the first with stride 2 (the half-resolution skip); three to 4c, the first with stride 2 (the
    code, (N, 4c, H/4, W/4)); a 2x2 transposed conv up to 2c, plus the skip, two conv+BN+ReLU; a
    2x2 transposed conv up to c, plus the skip, one conv+BN+ReLU; a last conv c->1 that starts at
    zero (the untrained model is the identity). ``config.depth`` and ``batch_norm`` do not apply. Sides are padded by
    edge replication to a multiple of 4 and the output cropped back. As with ``dncnn`` and
    ``ffdnet``, training sees the unclipped output and eval mode clips it to [0, 1]. ``reach`` (24)
    is the receptive field's extent from an output pixel, ``scale`` (4) the grid that tiles must
    start on for the tiled output to equal the whole-image one (:func:`daelab.denoise.denoise_image`).
    """

    input_layout = "image"
    scale = 4
    # head 2 + stride-2 conv 1 + half-res conv 2 + stride-2 conv 2 + 2 quarter-res convs 8 + up 2 +
    # 2 half-res convs 4 + up 1 + full-res conv 1 + last conv 1 (tests/test_resunet.py checks it)
    reach = 24

    def __init__(self, config: ModelConfig):
        super().__init__()
        self.config = config
        c = config.channels

        def block(cin: int, cout: int, n: int, stride: int = 1) -> nn.Sequential:
            layers: list[nn.Module] = []
            for i in range(n):
                layers += [nn.Conv2d(cin if i == 0 else cout, cout, 3, stride=stride if i == 0 else 1,
                                     padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True)]
            return nn.Sequential(*layers)

        self.head = nn.Sequential(nn.Conv2d(1, c, 3, padding=1), nn.ReLU(inplace=True), *block(c, c, 1))
        self.down1 = block(c, 2 * c, 2, stride=2)
        self.down2 = block(2 * c, 4 * c, 3, stride=2)
        self.up2 = nn.ConvTranspose2d(4 * c, 2 * c, 2, stride=2)
        self.dec1 = block(2 * c, 2 * c, 2)
        self.up1 = nn.ConvTranspose2d(2 * c, c, 2, stride=2)
        self.dec0 = block(c, c, 1)
        self.tail = nn.Conv2d(c, 1, 3, padding=1)
        for module in self.modules():
            if isinstance(module, (nn.Conv2d, nn.ConvTranspose2d)):
                nn.init.kaiming_normal_(module.weight, nonlinearity="relu")
                if module.bias is not None:
                    nn.init.zeros_(module.bias)
        nn.init.zeros_(self.tail.weight)  # start as the identity map
        self.code_dim = 4 * c
        self.to(memory_format=torch.channels_last)  # oneDNN's convolutions are faster in it on a CPU

    def encode_with_skips(self, images: torch.Tensor) -> tuple[torch.Tensor, tuple]:
        """(N, 1, H, W) -> codes (N, 4c, ceil(H/4), ceil(W/4)) and what ``decode`` needs to be exact."""
        full = self.head(_pad_to_multiple(images, self.scale).contiguous(memory_format=torch.channels_last))
        half = self.down1(full)
        return self.down2(half), (images, full, half)

    def encode(self, images: torch.Tensor) -> torch.Tensor:
        """(N, 1, H, W) -> the quarter-resolution code maps (N, 4c, ceil(H/4), ceil(W/4))."""
        return self.encode_with_skips(images)[0]

    def decode(self, codes: torch.Tensor, skips: tuple | None = None) -> torch.Tensor:
        """Code maps (and the skips from ``encode_with_skips``) -> denoised (N, 1, H, W).

        Without ``skips`` the noisy image is a 0.5 grey and the skips zero: a code-only
        reconstruction the model was never trained to make, so ``forward`` always passes them.
        """
        if skips is None:
            n, _, h, w = codes.shape
            c = self.config.channels
            images = codes.new_full((n, 1, 4 * h, 4 * w), 0.5)
            full, half = codes.new_zeros((n, c, 4 * h, 4 * w)), codes.new_zeros((n, 2 * c, 2 * h, 2 * w))
        else:
            images, full, half = skips
        height, width = images.shape[-2:]
        noise = self.tail(self.dec0(self.up1(self.dec1(self.up2(codes) + half)) + full))
        denoised = images - noise[..., :height, :width]
        return denoised if self.training else denoised.clamp(0.0, 1.0)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """(N, 1, H, W) noisy images -> (N, 1, H, W) denoised (clipped to [0, 1] in eval mode)."""
        return self.decode(*self.encode_with_skips(images))


@register_model("resunet")
def _build_resunet(config: ModelConfig) -> nn.Module:
    return ResUNetDenoiser(config)
