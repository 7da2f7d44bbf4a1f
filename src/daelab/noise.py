"""Noise models: the corruptions a DAE learns to undo and is judged on.

A noise model is a small object built from a spec string ``name:level`` (``gaussian:0.1``,
``uniform:0.2``, ``salt_pepper:0.1``, ``masking:0.25``). Calling it on a clean batch with a
``torch.Generator`` returns a new noisy tensor clipped to [0, 1]; ``apply_`` does the same in a
buffer the caller owns, which is what the training loop uses so no batch allocates.

The natural-image protocol's noises are the exception to the clipping (``clipped`` is False):
``awgn:S`` adds ``S/255 * N(0, 1)`` with S on the 0-255 scale and leaves the noisy values outside
[0, 1] where they fall, as the published Set12 protocol (DnCNN, BM3D) does; ``awgn_range:A-B``
draws each image's std uniformly in [A, B] (0-255 scale) for training a blind denoiser. A range
level is written ``A-B`` (``awgn_range:0-55``); lists still split on commas (``awgn:15,25,50``).

Reading of the study's "P value": the study evaluates "uniform noise of intensity P" without
giving its formula. daelab reads it as additive uniform noise ``clip(x + U(-P, P), 0, 1)``, the
uniform counterpart of its Gaussian training noise ``clip(x + 0.1 * N(0, 1), 0, 1)``.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar

import torch

from daelab.errors import ConfigError


@dataclass(frozen=True)
class NoiseModel:
    """Base class. ``level`` is the one number of the spec; subclasses define what it means."""

    level: float
    name: ClassVar[str] = ""
    max_level: ClassVar[float] = 1.0
    meaning: ClassVar[str] = ""
    clipped: ClassVar[bool] = True       # whether the noisy output is clipped to [0, 1]
    takes_range: ClassVar[bool] = False  # whether the level may be a range ``A-B``

    @property
    def spec(self) -> str:
        return f"{self.name}:{self.level:g}"

    @property
    def nominal_std(self) -> float:
        """Standard deviation of the noise before clipping (what an oracle denoiser is told)."""
        raise NotImplementedError

    def __call__(self, clean: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """A noisy copy of ``clean`` (any shape, values in [0, 1]), clipped to [0, 1]."""
        return self.apply_(clean, torch.empty_like(clean), generator)

    def apply_(self, clean: torch.Tensor, out: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """Write the noisy version of ``clean`` into ``out`` (same shape) and return ``out``."""
        raise NotImplementedError

    def __str__(self) -> str:
        return self.spec


@dataclass(frozen=True)
class Gaussian(NoiseModel):
    name: ClassVar[str] = "gaussian"
    max_level: ClassVar[float] = 1.0
    meaning: ClassVar[str] = "clip(x + s * N(0, 1), 0, 1), s in [0, 1] (the study's training noise, s = 0.1)"

    @property
    def nominal_std(self) -> float:
        return self.level

    def apply_(self, clean, out, generator=None):
        return out.normal_(0.0, self.level, generator=generator).add_(clean).clamp_(0.0, 1.0)


@dataclass(frozen=True)
class Uniform(NoiseModel):
    name: ClassVar[str] = "uniform"
    max_level: ClassVar[float] = 1.0
    meaning: ClassVar[str] = "clip(x + U(-P, P), 0, 1), P in [0, 1] (the study's evaluation noise)"

    @property
    def nominal_std(self) -> float:
        return self.level / math.sqrt(3.0)

    def apply_(self, clean, out, generator=None):
        return out.uniform_(-self.level, self.level, generator=generator).add_(clean).clamp_(0.0, 1.0)


@dataclass(frozen=True)
class SaltPepper(NoiseModel):
    name: ClassVar[str] = "salt_pepper"
    max_level: ClassVar[float] = 1.0
    meaning: ClassVar[str] = "a fraction p in [0, 1] of pixels set to 0 or 1 with equal odds"

    @property
    def nominal_std(self) -> float:
        # Each hit moves a pixel by at most 1; for images mostly near 0 or 1 the spread is ~sqrt(p/2).
        return math.sqrt(self.level / 2.0)

    def apply_(self, clean, out, generator=None):
        draw = torch.rand(clean.shape, generator=generator, dtype=out.dtype, device=out.device)
        out.copy_(clean)
        out.masked_fill_(draw < self.level / 2.0, 0.0)
        return out.masked_fill_((draw >= self.level / 2.0) & (draw < self.level), 1.0)


@dataclass(frozen=True)
class Masking(NoiseModel):
    name: ClassVar[str] = "masking"
    max_level: ClassVar[float] = 1.0
    meaning: ClassVar[str] = "a fraction p in [0, 1] of pixels set to 0 (Vincent et al.'s masking noise)"

    @property
    def nominal_std(self) -> float:
        return math.sqrt(self.level) * 0.5

    def apply_(self, clean, out, generator=None):
        draw = torch.rand(clean.shape, generator=generator, dtype=out.dtype, device=out.device)
        out.copy_(clean)
        return out.masked_fill_(draw < self.level, 0.0)


@dataclass(frozen=True)
class GaussianRange(NoiseModel):
    """Gaussian noise whose std is drawn per image: trains one blind denoiser for a range of levels.

    The std is ``S * u**2`` with ``u ~ U(0, 1)`` (median S/4) rather than uniform on [0, S]: the MSE
    weighs an image by its noise variance, so with uniform stds a blind model learns the high
    levels and neglects the low ones, where it then loses to leaving the input alone.
    """

    name: ClassVar[str] = "gaussian_range"
    max_level: ClassVar[float] = 1.0
    meaning: ClassVar[str] = ("clip(x + s * N(0, 1), 0, 1) with s = S * U(0, 1)**2 drawn per image, S in [0, 1] "
                              "(training a blind denoiser)")

    @property
    def nominal_std(self) -> float:
        return self.level / math.sqrt(5.0)  # the rms std over the range: sqrt(E[u**4]) = 1/sqrt(5)

    def apply_(self, clean, out, generator=None):
        u = torch.rand((len(clean),) + (1,) * (clean.dim() - 1), generator=generator, dtype=out.dtype,
                       device=out.device)
        return out.normal_(0.0, 1.0, generator=generator).mul_(u.square_() * self.level).add_(clean).clamp_(0.0, 1.0)


@dataclass(frozen=True)
class AWGN(NoiseModel):
    """The published protocol's additive white Gaussian noise, std ``S/255``, **not clipped**.

    ``level`` is S on the 0-255 scale; :attr:`nominal_std` is ``S/255``, on the [0, 1] scale the
    tensors are on. Unlike ``gaussian:s`` the noisy values are left outside [0, 1], so that PSNR
    figures compare with the published ones (clipping the input shrinks the noise at dark and light
    pixels and flatters every method).
    """

    name: ClassVar[str] = "awgn"
    max_level: ClassVar[float] = 255.0
    meaning: ClassVar[str] = "x + S/255 * N(0, 1), NOT clipped, S in [0, 255] on the 0-255 scale (Set12 protocol)"
    clipped: ClassVar[bool] = False

    @property
    def nominal_std(self) -> float:
        return self.level / 255.0

    def apply_(self, clean, out, generator=None):
        return out.normal_(0.0, self.level / 255.0, generator=generator).add_(clean)


@dataclass(frozen=True)
class AWGNRange(NoiseModel):
    """Unclipped Gaussian noise whose std is drawn per image uniformly in ``[low, level]`` (0-255 scale).

    Each item along the first axis (an image of a batch (N, ...), a patch of (N, 1, p, p)) gets its
    own std; pass a lone image as (1, H, W). ``awgn_range:B`` means ``awgn_range:0-B``.
    """

    low: float = 0.0
    name: ClassVar[str] = "awgn_range"
    max_level: ClassVar[float] = 255.0
    meaning: ClassVar[str] = ("x + s/255 * N(0, 1), NOT clipped, with s ~ U(A, B) drawn per image, written A-B, "
                              "0 <= A <= B <= 255 on the 0-255 scale (training a blind denoiser)")
    clipped: ClassVar[bool] = False
    takes_range: ClassVar[bool] = True

    @property
    def spec(self) -> str:
        return f"{self.name}:{self.low:g}-{self.level:g}"

    @property
    def nominal_std(self) -> float:
        # the rms std over the range: sqrt(E[s**2]) for s ~ U(A, B)
        low, high = self.low, self.level
        return math.sqrt((low * low + low * high + high * high) / 3.0) / 255.0

    def apply_(self, clean, out, generator=None):
        std = torch.rand((len(clean),) + (1,) * (clean.dim() - 1), generator=generator, dtype=out.dtype,
                         device=out.device)
        std.mul_((self.level - self.low) / 255.0).add_(self.low / 255.0)   # (N, 1, ...) in [A, B] / 255
        return out.normal_(0.0, 1.0, generator=generator).mul_(std).add_(clean)


NOISE_MODELS: dict[str, type[NoiseModel]] = {cls.name: cls for cls in (Gaussian, Uniform, SaltPepper, Masking,
                                                                        GaussianRange, AWGN, AWGNRange)}


def valid_specs() -> str:
    return "; ".join(f"{name}:{'A-B' if cls.takes_range else 'LEVEL'} = {cls.meaning}"
                     for name, cls in NOISE_MODELS.items())


def _check_level(cls: type[NoiseModel], level) -> float:
    if not (isinstance(level, (int, float)) and math.isfinite(level) and 0.0 <= level <= cls.max_level):
        raise ConfigError(f"noise level {level!r} out of range for {cls.name}", cls.meaning)
    return float(level)


def make_noise(name: str, level: float | tuple[float, float]) -> NoiseModel:
    """Build a noise model by registry name; unknown names and out-of-range levels raise ConfigError.

    ``level`` is one number, or for a range noise (``awgn_range``) a pair ``(low, high)``.
    """
    cls = NOISE_MODELS.get(name.strip().lower().replace("-", "_"))
    if cls is None:
        raise ConfigError(f"unknown noise model {name!r}", f"valid: {', '.join(NOISE_MODELS)}")
    if isinstance(level, tuple):
        if not cls.takes_range:
            raise ConfigError(f"{cls.name} takes one level, not a range {level[0]:g}-{level[1]:g}", cls.meaning)
        low, high = (_check_level(cls, value) for value in level)
        if low > high:
            raise ConfigError(f"noise range {low:g}-{high:g} of {cls.name} runs backwards", cls.meaning)
        return cls(high, low=low)
    return cls(_check_level(cls, level))


def _parse_level(text: str) -> float | tuple[float, float] | None:
    """``"0.1"`` -> 0.1, ``"15-50"`` -> (15.0, 50.0), anything else None.

    A number is tried first, so ``1e-3`` stays one number and ``-0.1`` is a (negative) number;
    only then is the text split at a ``-`` whose both sides are numbers.
    """
    try:
        return float(text)
    except ValueError:
        pass
    for at in (i for i, char in enumerate(text) if char == "-" and i > 0):
        try:
            return float(text[:at]), float(text[at + 1:])
        except ValueError:
            continue
    return None


def parse_noise_list(spec: str) -> list[NoiseModel]:
    """Parse ``name:l1,l2,...`` or several of those joined by ``;`` or spaces into noise models.

    ``"uniform:0.05,0.1"`` -> [Uniform(0.05), Uniform(0.1)];
    ``"gaussian:0.1;masking:0.25"`` -> [Gaussian(0.1), Masking(0.25)];
    ``"awgn:15,25,50"`` -> three AWGN levels; ``"awgn_range:0-55"`` -> one range (a level ``A-B``).
    """
    if not isinstance(spec, str) or not spec.strip():
        raise ConfigError("empty noise spec", f"write NAME:LEVEL; {valid_specs()}")
    models = []
    for group in spec.replace(";", " ").split():
        name, sep, levels = group.partition(":")
        if not sep or not levels:
            raise ConfigError(f"noise spec {group!r} has no level", f"write NAME:LEVEL; {valid_specs()}")
        for text in levels.split(","):
            level = _parse_level(text)
            if level is None:
                raise ConfigError(f"noise level {text!r} in {group!r} is not a number", valid_specs())
            models.append(make_noise(name, level))
    return models


def parse_noise(spec: str) -> NoiseModel:
    """Parse one ``name:level`` spec into a noise model."""
    models = parse_noise_list(spec)
    if len(models) != 1:
        raise ConfigError(f"expected one noise spec, got {len(models)} in {spec!r}")
    return models[0]
