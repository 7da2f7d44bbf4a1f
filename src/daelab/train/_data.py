"""The tensors training works on: clean training images and one fixed noisy validation pair.

:func:`prepare_data` is the one hop from a :class:`~daelab.data.Dataset` to training tensors: it
subsets and splits, checks the images fit the model and the batch size fits the images, and draws
the validation noise once (stream ``VALIDATION_NOISE``), so every epoch and every run of the same
seed is judged on the same noisy images.

An image folder (``--data-dir`` a directory of PNG/JPEG pictures, such as ``Train400``) is the other
kind of training data: :func:`prepare_data` then holds its uint8 images in memory once and a
:class:`~daelab.folders.PatchSampler` draws each epoch's random augmented patches
(:meth:`TrainData.for_epoch`; ``patch_size`` x ``patch_size``, ``patches_per_epoch`` of them), so a
"sample" of the loop is a patch. Validation is one fixed set of noisy patches (``val_subset`` of
them, default :data:`~daelab.train._config.DEFAULT_VAL_PATCHES`): of the images of ``val_dir``, or
of the last ``val_split`` of the folder's images (held out of training), or, when neither is
given, of the training images themselves (not held out; the log says so).
"""
from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path

import torch

from daelab.data import FASHION_FILES, Dataset, load_dataset, to_tensor
from daelab.errors import ConfigError, DataError
from daelab.folders import ImageFolder, PatchSampler, load_image_folder
from daelab.images import IMAGE_SUFFIXES
from daelab.noise import parse_noise
from daelab.seeds import VALIDATION_NOISE
from daelab.train._config import DEFAULT_PATCH_SIZE, DEFAULT_PATCHES_PER_EPOCH, DEFAULT_VAL_PATCHES, TrainConfig

log = logging.getLogger(__name__)
PATCH_SETTINGS = ("patch_size", "patches_per_epoch", "val_dir")


@dataclass
class TrainData:
    """Tensors the loop works on: clean training images, and the fixed noisy validation pair.

    For an image folder ``train`` is one epoch's patches (N, 1, p, p), drawn by ``sampler`` and
    replaced by :meth:`for_epoch`; for a tensor dataset ``sampler`` is None and ``train`` never changes.
    """

    train: torch.Tensor       # (N, ...) clean, float32 in [0, 1]
    val_clean: torch.Tensor   # (M, ...)
    val_noisy: torch.Tensor   # (M, ...) one fixed noise draw
    sampler: PatchSampler | None = None
    drawn_epoch: int = 0      # the epoch whose patches ``train`` holds (image folders)

    def for_epoch(self, epoch: int) -> torch.Tensor:
        """The clean training samples of epoch ``epoch``: the same tensor, or that epoch's patches."""
        if self.sampler is not None and epoch != self.drawn_epoch:
            self.train = self.sampler.draw(epoch).to(self.train.device)
            self.drawn_epoch = epoch
        return self.train


def is_image_folder(path: str | os.PathLike | None) -> bool:
    """Whether ``path`` is a directory of PNG/JPEG pictures (and not a Fashion-MNIST IDX directory)."""
    if path is None or not Path(path).is_dir():
        return False
    names = {entry.name for entry in Path(path).iterdir()}
    if any(name in names or name + ".gz" in names for name in FASHION_FILES.values()):
        return False
    return any(Path(name).suffix.lower() in IMAGE_SUFFIXES and not name.startswith(".") for name in names)


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
    if dataset is None and is_image_folder(config.data_dir):
        return _prepare_folder(config, layout, device)
    given = [name.replace("_", "-") for name in PATCH_SETTINGS if getattr(config, name) is not None]
    if given:
        data = config.data_dir if dataset is None and config.data_dir else "tensor datasets such as Fashion-MNIST"
        raise ConfigError(f"--{given[0]} applies to training on an image folder, not to {data}",
                          "give --data-dir a folder of PNG/JPEG images, or drop it")
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


def _prepare_folder(config: TrainConfig, layout: str, device: torch.device) -> TrainData:
    """TrainData of an image folder: its first epoch's patches and the fixed noisy validation patches."""
    if layout != "image":
        raise ConfigError(f"{config.data_dir} is an image folder, which the flat MLP cannot train on",
                          "train a fully convolutional model on it: --model resunet, dncnn, ffdnet or conv")
    if config.subset is not None:
        raise ConfigError("--subset applies to tensor datasets", "use --patches-per-epoch for an image folder")
    folder = load_image_folder(config.data_dir)
    patch_size = config.patch_size or DEFAULT_PATCH_SIZE
    per_epoch = config.patches_per_epoch or DEFAULT_PATCHES_PER_EPOCH
    if config.batch_size > per_epoch:
        raise ConfigError(f"batch-size {config.batch_size} is larger than the {per_epoch} patches of an epoch",
                          f"use --batch-size {per_epoch} or less, or more --patches-per-epoch")
    if config.val_dir is not None and config.val_split > 0:
        raise ConfigError("--val-dir and --val-split both say what to validate on", "give only one of them")
    if config.val_dir is not None:
        train_folder, val_folder = folder, load_image_folder(config.val_dir)
    elif config.val_split > 0:
        n_val = max(1, int(round(len(folder) * config.val_split)))
        if n_val >= len(folder):
            raise ConfigError(f"val-split {config.val_split} leaves no training images out of {len(folder)}")
        train_folder, val_folder = _split(folder, len(folder) - n_val), _split(folder, len(folder) - n_val, tail=True)
    else:
        train_folder = val_folder = folder
        log.info("validating on patches of the training images (not held out): give --val-split or --val-dir")
    sampler = PatchSampler(train_folder, patch_size, per_epoch, seed=config.seed)
    # the validation patches: their own stream (seed + VALIDATION_NOISE's offset), no augmentation, drawn once
    val_patches = PatchSampler(val_folder, patch_size, config.val_subset or DEFAULT_VAL_PATCHES,
                               seed=VALIDATION_NOISE.seed(config.seed), augment=False)
    val_clean = val_patches.draw(0)
    val_noisy = parse_noise(config.noise)(val_clean, VALIDATION_NOISE.generator(config.seed))
    return TrainData(sampler.draw(0).to(device), val_clean.to(device), val_noisy.to(device), sampler, 0)


def _split(folder: ImageFolder, at: int, tail: bool = False) -> ImageFolder:
    """The first ``at`` images of ``folder`` (or, with ``tail``, the rest), as an ImageFolder."""
    part = slice(at, None) if tail else slice(None, at)
    return ImageFolder(folder.path, folder.names[part], folder.images[part], folder.bit_depths[part],
                       [name for name in folder.converted if name in folder.names[part]])
