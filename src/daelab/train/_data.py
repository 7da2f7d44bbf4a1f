"""The tensors training works on: clean training images and one fixed noisy validation pair.

:func:`prepare_data` is the one hop from a :class:`~daelab.data.Dataset` to training tensors: it
subsets and splits, checks the images fit the model and the batch size fits the images, and draws
the validation noise once (stream ``VALIDATION_NOISE``), so every epoch and every run of the same
seed is judged on the same noisy images.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from daelab.data import Dataset, load_dataset, to_tensor
from daelab.errors import ConfigError, DataError
from daelab.noise import parse_noise
from daelab.seeds import VALIDATION_NOISE
from daelab.train._config import TrainConfig


@dataclass
class TrainData:
    """Tensors the loop works on: clean training images, and the fixed noisy validation pair."""

    train: torch.Tensor       # (N, ...) clean, float32 in [0, 1]
    val_clean: torch.Tensor   # (M, ...)
    val_noisy: torch.Tensor   # (M, ...) one fixed noise draw


def check_finite(images: torch.Tensor, what: str) -> None:
    """Raise ``ConfigError`` if ``images`` hold a NaN or an infinity (``what`` names them in the message)."""
    if not torch.isfinite(images).all():
        raise ConfigError(f"{what} contain NaN or infinite values", "clean the data first")


def _check_fits_model(images: torch.Tensor, raw_shape: tuple, input_shape: tuple | None, what: str) -> None:
    """The model would fail deep in a matmul on images of another size: say which size fits instead."""
    if input_shape is None or tuple(images.shape[1:]) == tuple(input_shape):
        return
    size = "x".join(map(str, raw_shape))
    model_input = "x".join(map(str, input_shape))
    hint = "resize the images, or build a model for them"
    if len(raw_shape) == 2 and raw_shape[0] == raw_shape[1]:
        hint = f"build the model for them with --image-size {raw_shape[0]}"
    raise DataError(f"the {what} are {size} but the model takes {model_input} inputs", hint)


def prepare_data(config: TrainConfig, layout: str, device: torch.device, dataset: Dataset | None = None,
                 input_shape: tuple[int, ...] | None = None) -> TrainData:
    """Load, subset and split the data, check it, and draw the fixed validation noise.

    Parameters
    ----------
    config : TrainConfig
        Subset, split, batch size, noise and seed.
    layout : str
        The model's input layout (``flat`` or ``image``, see :func:`daelab.data.to_tensor`).
    device : torch.device
        Where the tensors go.
    dataset : Dataset, optional
        Images to use instead of loading ``config.data_dir``.
    input_shape : tuple of int, optional
        The shape of one model input (``(784,)``, ``(1, 28, 28)``); images of another size are a
        ``DataError`` naming the size that fits. Not checked when None.

    Returns
    -------
    TrainData
        Clean training images (N, ...), clean and noisy validation images (M, ...), float32 in [0, 1].
    """
    dataset = dataset if dataset is not None else load_dataset(config.data_dir)
    train = to_tensor(dataset.train_images[: config.subset], layout)
    _check_fits_model(train, dataset.train_images.shape[1:], input_shape, "training images")
    if config.val_split > 0:
        n_val = max(1, int(round(len(train) * config.val_split)))
        if n_val >= len(train):
            raise ConfigError(f"val-split {config.val_split} leaves no training images out of {len(train)}")
        train, val_clean = train[:-n_val], train[-n_val:]
    else:
        val_clean = to_tensor(dataset.test_images, layout)
        _check_fits_model(val_clean, dataset.test_images.shape[1:], input_shape, "test images")
    if config.batch_size > len(train):
        raise ConfigError(f"batch-size {config.batch_size} is larger than the {len(train)} training images",
                          f"use --batch-size {len(train)} or less")
    val_clean = val_clean[: config.val_subset]
    check_finite(train, "training images")
    check_finite(val_clean, "validation images")
    generator = VALIDATION_NOISE.generator(config.seed)
    val_noisy = parse_noise(config.noise)(val_clean, generator)
    return TrainData(train.to(device), val_clean.to(device), val_noisy.to(device))


def usable_samples(n: int, batch_size: int) -> int:
    """Samples an epoch can use: a last batch of one sample cannot be batch-normalised, so it sits out.

    Parameters
    ----------
    n : int
        Samples available (this process's shard under DDP).
    batch_size : int
        Samples per optimizer step.

    Returns
    -------
    int
        ``n - 1`` when the last batch would hold one sample, else ``n``.
    """
    return n - 1 if n > 1 and n % batch_size == 1 else n
