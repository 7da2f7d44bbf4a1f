"""Named random streams: which draw uses which seed, in one table.

Every random draw in daelab comes from a generator seeded from the user's one ``seed`` (``daelab
train --seed``, ``EvalConfig.seed``, ``ProbeConfig.seed``, ``DenoisingAutoencoder(random_state=)``)
through one of the streams below, so that draws never share a seed by accident and a reader can see
what each seed drives. The offsets are the ones the study's runs have always used: changing one
changes the numbers a run produces.

| stream | seed | drives |
|---|---|---|
| ``MODEL_INIT`` | ``seed`` | the DAE's initial weights (global torch RNG) |
| ``TRAIN_NOISE`` | ``seed + rank`` | training noise and the fused dropout masks |
| ``EPOCH_ORDER`` | ``seed * 1_000_003 + epoch`` | each epoch's sample order (all ranks alike) |
| ``VALIDATION_NOISE`` | ``seed + 10007`` | the one fixed noise draw of the validation set |
| ``EVAL_NOISE`` | ``(seed * 1_000_003 + crc32(spec)) % 2**63`` | the evaluation's noise, per noise spec |
| ``CODES_NOISY`` | ``seed + 20011`` | the probe's noisy-codes feature |
| ``CLASSIFIER_INIT`` | ``SeedSequence([seed, 0])`` | a probe classifier's initial weights |
| ``CLASSIFIER_DATA`` | ``SeedSequence([seed, 1])`` | a probe classifier's batch order and dropout |
| ``BOOTSTRAP`` | ``SeedSequence([seed, 2])`` | the resamples of the probe's intervals |
| ``PATCHES`` | ``SeedSequence([seed, 3, epoch])`` | an epoch's random patches of an image folder |
| ``IMAGE_NOISE`` | ``SeedSequence([seed, 4, crc32(spec), crc32(name)])`` | image evaluation noise, per image and spec |
"""
from __future__ import annotations

import zlib
from dataclasses import dataclass

import numpy as np
import torch

# A prime stride: seed * STRIDE + index stays apart from (seed + 1) * STRIDE for index < STRIDE.
STRIDE = 1_000_003


@dataclass(frozen=True)
class Stream:
    """One named random stream: ``offset`` is added to the user's seed (plus an index such as the rank)."""

    name: str
    offset: int
    drives: str

    def seed(self, seed: int, index: int = 0) -> int:
        """The integer seed of this stream for ``seed`` (and ``index``, e.g. the process rank)."""
        return int(seed) + self.offset + int(index)

    def generator(self, seed: int, index: int = 0, device: torch.device | str | None = None) -> torch.Generator:
        """A fresh ``torch.Generator`` on ``device`` seeded for this stream."""
        generator = torch.Generator(device=device) if device is not None else torch.Generator()
        return generator.manual_seed(self.seed(seed, index))


MODEL_INIT = Stream("model_init", 0, "the DAE's initial weights (torch.manual_seed)")
TRAIN_NOISE = Stream("train_noise", 0, "training noise and the fused path's dropout masks; index = rank")
VALIDATION_NOISE = Stream("validation_noise", 10007, "the fixed noise draw of the validation set")
CODES_NOISY = Stream("codes_noisy", 20011, "the probe's noisy-codes feature")
BN_RECALIBRATION = Stream("bn_recalibration", 30011, "precise BatchNorm's fixed batches (patches and noise)")
STREAMS = (MODEL_INIT, TRAIN_NOISE, VALIDATION_NOISE, CODES_NOISY, BN_RECALIBRATION)

# SeedSequence stream numbers of a probe classifier seed.
CLASSIFIER_INIT, CLASSIFIER_DATA = 0, 1
# SeedSequence stream number of the probe's bootstrap (daelab.stats.hierarchical_bootstrap), beside the classifier's.
BOOTSTRAP = 2
# SeedSequence stream numbers of the natural-image protocol (daelab.folders, daelab.evaluate._images).
PATCHES, IMAGE_NOISE = 3, 4


def epoch_order_seed(seed: int, epoch: int) -> int:
    """Seed of epoch ``epoch``'s sample permutation (the same on every rank)."""
    return int(seed) * STRIDE + int(epoch)


def eval_noise_seed(seed: int, spec: str) -> int:
    """Seed of the evaluation's noise for one noise spec: each spec gets its own draw, stable across runs."""
    return (int(seed) * STRIDE + zlib.crc32(spec.encode())) % (2 ** 63)


def classifier_generator(seed: int, stream: int) -> torch.Generator:
    """A CPU generator for one stream (:data:`CLASSIFIER_INIT` or :data:`CLASSIFIER_DATA`) of a classifier seed.

    The streams of one seed are independent (``numpy.random.SeedSequence``), unlike ``seed + k`` offsets,
    which overlap between neighbouring seeds.
    """
    state = np.random.SeedSequence([int(seed), int(stream)]).generate_state(1)[0]
    return torch.Generator().manual_seed(int(state))


def bootstrap_rng(seed: int) -> np.random.Generator:
    """The NumPy generator of the :data:`BOOTSTRAP` stream of ``seed`` (the resamples of a probe's intervals)."""
    return np.random.default_rng(np.random.SeedSequence([int(seed), BOOTSTRAP]))


def patch_rng(seed: int, epoch: int = 0) -> np.random.Generator:
    """The NumPy generator of the :data:`PATCHES` stream: the patches (image, position, flip) of epoch ``epoch``."""
    return np.random.default_rng(np.random.SeedSequence([int(seed), PATCHES, int(epoch)]))


def image_noise_generator(seed: int, spec: str, name: str) -> torch.Generator:
    """A CPU generator for the :data:`IMAGE_NOISE` of image ``name`` at noise ``spec``.

    Keyed by the image's name, not its position, so an image's noisy copy stays the same when the
    folder gains or loses other images; every method is scored on this one draw.
    """
    words = [int(seed), IMAGE_NOISE, zlib.crc32(spec.encode()), zlib.crc32(name.encode())]
    state = np.random.SeedSequence(words).generate_state(1)[0]
    return torch.Generator().manual_seed(int(state))
