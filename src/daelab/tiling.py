"""Running a fully-convolutional denoiser over a large image in overlapping tiles, with bounded memory and no seams.

:func:`tile_apply` cuts an image (H, W) into ``tile`` x ``tile`` tiles that overlap by at least
``overlap`` pixels, runs ``fn`` on each, and blends the outputs with weights that are **zero**
within ``margin`` pixels of every tile edge that lies inside the image, rise linearly over the
rest of the overlap, and are one elsewhere. Where tiles meet, then, only pixels at least
``margin`` from a cut are used: a model whose receptive field reaches at most ``margin`` pixels
from the output pixel (a stack of k 3x3 convolutions reaches k) sees there exactly what it sees on
the whole image, so the blend of equal values is the whole-image output (to float rounding), and
no seam can appear. For a model that reaches further (a U-Net's bottleneck) the linear ramp still
hides the cut. Edges on the image's own border are never cut, so they are not masked.

Memory: the model sees one tile at a time; beside the image, two (H, W) float32 accumulators are
held. The default ``margin`` is ``overlap // 4``, leaving half the overlap to the ramp.
"""
from __future__ import annotations

from collections.abc import Callable

import numpy as np

from daelab.errors import UsageError


def tile_weights(length: int, overlap: int, margin: int, start_cut: bool, end_cut: bool) -> np.ndarray:
    """1-D weights of a tile side: 0 over ``margin`` px at a cut edge, a ramp over ``overlap - 2 margin`` px, then 1."""
    weights = np.ones(length, np.float32)
    ramp_length = overlap - 2 * margin
    ramp = (np.arange(ramp_length, dtype=np.float32) + 1.0) / (ramp_length + 1.0)    # strictly in (0, 1)
    edge = np.concatenate([np.zeros(margin, np.float32), ramp])[:length]
    if start_cut:
        weights[:len(edge)] = np.minimum(weights[:len(edge)], edge)
    if end_cut:
        weights[length - len(edge):] = np.minimum(weights[length - len(edge):], edge[::-1])
    return weights


def tile_starts(size: int, tile: int, overlap: int) -> list[int]:
    """Starts of tiles of side ``tile`` covering ``size`` pixels, neighbours sharing at least ``overlap``."""
    if size <= tile:
        return [0]
    stride = tile - overlap
    return sorted(set(range(0, size - tile, stride)) | {size - tile})


def tile_apply(fn: Callable[[np.ndarray], np.ndarray], image: np.ndarray, tile: int = 256, overlap: int = 32,
               margin: int | None = None) -> np.ndarray:
    """Apply an image-to-image ``fn`` to ``image`` tile by tile, blended without seams.

    Parameters
    ----------
    fn : ``fn(patch (h, w) float32) -> (h, w)``, e.g. a fully-convolutional model wrapped to take
        and return arrays; called once per tile, on tiles of at most ``tile`` x ``tile``.
    image : (H, W) array; an image no larger than ``tile`` on both sides is one call of ``fn``.
    tile : the tile side.
    overlap : the least overlap of neighbouring tiles, ``0 <= 2 * margin < overlap < tile``.
    margin : pixels next to a cut whose output is discarded (default ``overlap // 4``); the tiled
        output equals the whole-image output where ``fn``'s receptive field reaches at most ``margin``.

    Returns
    -------
    (H, W) float32: the blended output.
    """
    image = np.asarray(image)
    if image.ndim != 2:
        raise UsageError(f"tile_apply takes one image (H, W), got shape {image.shape}")
    margin = overlap // 4 if margin is None else margin
    if not (0 <= 2 * margin < overlap < tile) and not (overlap == 0 and margin == 0 and tile >= 1):
        raise UsageError(f"tile {tile} / overlap {overlap} / margin {margin} invalid",
                         "use 0 <= 2 * margin < overlap < tile")
    height, width = image.shape
    source = image.astype(np.float32, copy=False)
    if height <= tile and width <= tile:
        return np.asarray(fn(np.ascontiguousarray(source)), dtype=np.float32)
    total = np.zeros((height, width), np.float32)
    weight_sum = np.zeros((height, width), np.float32)
    for top in tile_starts(height, tile, overlap):
        for left in tile_starts(width, tile, overlap):
            patch = np.ascontiguousarray(source[top:top + tile, left:left + tile])
            h, w = patch.shape
            output = np.asarray(fn(patch), dtype=np.float32)
            if output.shape != (h, w):
                raise UsageError(f"fn returned shape {output.shape} for a {h}x{w} tile", "it must keep the size")
            weights = np.outer(tile_weights(h, overlap, margin, top > 0, top + h < height),
                               tile_weights(w, overlap, margin, left > 0, left + w < width))
            total[top:top + h, left:left + w] += output * weights
            weight_sum[top:top + h, left:left + w] += weights
    return total / weight_sum
