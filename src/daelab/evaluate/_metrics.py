"""Per-image quality metrics of denoised images against clean ones: MSE, PSNR and SSIM.

All take (N, H, W) arrays in [0, 1] and return one float64 value per image. PSNR of a perfect
image is infinite; daelab caps it at :data:`PSNR_CAP_DB` (100 dB, an MSE of 1e-10, below float32
resolution) so means and intervals stay finite and JSON stays valid. NumPy and scikit-image only,
so worker processes that score baselines need not import PyTorch.
"""
from __future__ import annotations

import numpy as np

PSNR_CAP_DB = 100.0


def mse_per_image(clean: np.ndarray, images: np.ndarray, chunk: int = 1000) -> np.ndarray:
    """Mean squared error of each image, (N, H, W) x (N, H, W) -> (N,) float64 (the study's R_loss)."""
    mse = np.empty(len(clean), dtype=np.float64)
    for start in range(0, len(clean), chunk):  # in float64, a chunk at a time to keep memory flat
        diff = np.asarray(images[start:start + chunk], dtype=np.float64) - clean[start:start + chunk]
        mse[start:start + chunk] = np.square(diff).reshape(len(diff), -1).mean(axis=1)
    return mse


def psnr_from_mse(mse: np.ndarray, cap_db: float = PSNR_CAP_DB) -> np.ndarray:
    """PSNR in dB for images in [0, 1] (data_range 1): ``10 log10(1 / mse)``, capped at ``cap_db``."""
    floor = 10.0 ** (-cap_db / 10.0)
    return 10.0 * np.log10(1.0 / np.maximum(np.asarray(mse, dtype=np.float64), floor))


def ssim_per_image(clean: np.ndarray, images: np.ndarray, chunk: int = 1000) -> np.ndarray:
    """SSIM of each image (scikit-image, data_range 1, 7x7 window), (N, H, W) x (N, H, W) -> (N,).

    Equal to calling ``skimage.metrics.structural_similarity`` once per image, but one call per
    ``chunk`` images: the images are stacked into a tall strip, the SSIM map is taken with
    ``full=True``, and each image's SSIM is the mean of its own map without a 3 px border, which is
    exactly what scikit-image averages for a lone image (its 7x7 windows there never cross into a
    neighbour). This is ~100x faster for 28 px images, where per-call overhead dominates.
    """
    from skimage.metrics import structural_similarity
    n, height, width = clean.shape
    pad = 3  # (win_size - 1) // 2 for scikit-image's default win_size 7
    scores = np.empty(n, dtype=np.float64)
    for start in range(0, n, chunk):
        stop = min(start + chunk, n)
        strips = [np.asarray(a[start:stop], dtype=np.float64).reshape(-1, width) for a in (clean, images)]
        _, ssim_map = structural_similarity(*strips, data_range=1.0, full=True)
        tiles = ssim_map.reshape(stop - start, height, width)[:, pad:height - pad, pad:width - pad]
        scores[start:stop] = tiles.reshape(stop - start, -1).mean(axis=1)
    return scores


def image_metrics(clean: np.ndarray, images: np.ndarray) -> dict[str, np.ndarray]:
    """Per-image ``mse``, ``psnr`` and ``ssim`` of ``images`` against ``clean`` (both (N, H, W) in [0, 1])."""
    mse = mse_per_image(clean, images)
    return {"mse": mse, "psnr": psnr_from_mse(mse), "ssim": ssim_per_image(clean, images)}


# ------------------------------------------------------------------ the natural-image protocol (8-bit)
# The published Set12 figures (DnCNN's and BM3D's code) score an output saved as an 8-bit image:
# clipped to [0, 1], rounded to 1/255, PSNR and SSIM then taken on the 0-255 scale against the
# uint8 clean image. SSIM is Wang et al.'s: an 11x11 Gaussian window of sigma 1.5, population
# covariances, K1 = 0.01, K2 = 0.03, averaged over the 'valid' positions (5 px border left out).
SSIM8_SETTINGS = {"data_range": 255.0, "gaussian_weights": True, "sigma": 1.5, "use_sample_covariance": False}


def quantize8(images: np.ndarray) -> np.ndarray:
    """``round(clip(x, 0, 1) * 255) / 255`` as float64, the 8-bit image the published code scores.

    NumPy rounds halves to even where MATLAB's ``im2uint8`` rounds them away from zero; a float
    output lands exactly on a half only by accident, so the two agree in practice.
    """
    return np.round(np.clip(np.asarray(images, dtype=np.float64), 0.0, 1.0) * 255.0) / 255.0


def _levels8(clean_uint8: np.ndarray, output: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    clean = np.asarray(clean_uint8)
    if clean.dtype != np.uint8:
        raise TypeError(f"clean must be uint8 on the 0-255 scale, got {clean.dtype}")
    output = np.asarray(output)
    if output.shape != clean.shape:
        raise ValueError(f"output shape {output.shape} differs from the clean image's {clean.shape}")
    return clean.astype(np.float64), np.round(np.clip(output.astype(np.float64), 0.0, 1.0) * 255.0)


def psnr8(clean_uint8: np.ndarray, output: np.ndarray, cap_db: float = PSNR_CAP_DB) -> float:
    """PSNR in dB of ``output`` (float, [0, 1] scale, any range) quantized to 8 bits, against a uint8 image.

    ``10 log10(255**2 / mean((clean - round(clip(output, 0, 1) * 255))**2))`` on the 0-255 scale,
    capped at ``cap_db`` like :func:`psnr_from_mse`.
    """
    clean, levels = _levels8(clean_uint8, output)
    mse = float(np.mean(np.square(clean - levels)))
    return float(10.0 * np.log10(255.0 ** 2 / max(mse, 255.0 ** 2 * 10.0 ** (-cap_db / 10.0))))


def ssim8(clean_uint8: np.ndarray, output: np.ndarray) -> float:
    """SSIM of ``output`` quantized to 8 bits against a uint8 image, on the 0-255 scale (:data:`SSIM8_SETTINGS`)."""
    from skimage.metrics import structural_similarity
    clean, levels = _levels8(clean_uint8, output)
    return float(structural_similarity(clean, levels, **SSIM8_SETTINGS))
