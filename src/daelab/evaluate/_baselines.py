"""Classical denoisers: the baselines a DAE must beat, each taken from a well-kept library.

A :class:`Denoiser` turns one noisy image (H, W) float64 in [0, 1] into a denoised one, given the
noise standard deviation ``sigma``. The evaluation calls every method twice: with the true sigma
(the *oracle* setting, which flatters the baseline) and with ``skimage.restoration.estimate_sigma``
of the image (what a user without the clean image would do). How sigma becomes each method's own
parameter is fixed below and stored in ``evaluation.json`` (``Denoiser.mapping``):

=============  =======================================================================
gaussian_blur  ``scipy.ndimage.gaussian_filter``, blur width ``clip(4 * sigma, 0.3, 2.0)`` px
median         ``scipy.ndimage.median_filter``, 3x3 window (wider windows erase 28 px detail)
tv             ``skimage.restoration.denoise_tv_chambolle``, ``weight = 0.4 * sigma``
nlm            ``skimage.restoration.denoise_nl_means`` (fast mode), ``h = 0.7 * sigma``,
               5x5 patches searched within 3 px (a 7x7 neighbourhood)
wavelet        ``skimage.restoration.denoise_wavelet``, BayesShrink soft thresholds with ``sigma``
bm3d           ``bm3d.bm3d(image, sigma_psd=sigma)``; optional (``pip install daelab[bm3d]``):
               BM3D is free for non-commercial use only, so it is never a hard dependency;
               ~2 s per image, so not in ``all`` and run on the first 20 images only
=============  =======================================================================

The constants come from ``scripts/calibrate_baselines.py``: a grid search on 300 Fashion-MNIST
*training* images (never the test set) with Gaussian noise of std 0.05 and 0.15, keeping a round
value between the two optima (TV best at 0.3 and 0.5 sigma, NLM at 0.8 and 0.6 sigma, blur at
~4 sigma px, median best at 3x3; a 5x5 median loses 2-4 dB more). The search window of NLM is
small because the images are 28 px wide and a wider one costs 4x the time for no gain. A method
whose package is missing is skipped with a note, never an error.
"""
from __future__ import annotations

import importlib.util
import time
from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np

from daelab.errors import ConfigError
from daelab.evaluate._metrics import image_metrics

ORACLE = "oracle"
ESTIMATED = "estimated"
SIGMA_MODES = (ORACLE, ESTIMATED)


@dataclass(frozen=True)
class Denoiser:
    """A classical denoiser: ``denoise(image (H, W) float64, sigma) -> (H, W)`` plus what it needs."""

    name: str
    denoise: Callable[[np.ndarray, float], np.ndarray]
    mapping: str                    # how sigma becomes the method's parameter, for the JSON and the docs
    requires: str | None = None     # import name of an optional package
    max_images: int | None = None   # a slow method only sees the head of the subsample
    in_all: bool = True             # whether ``all`` includes it (slow methods must be named)

    @property
    def available(self) -> bool:
        return self.requires is None or importlib.util.find_spec(self.requires) is not None


DENOISERS: dict[str, Denoiser] = {}


def register_denoiser(name: str, mapping: str, requires: str | None = None, max_images: int | None = None,
                      in_all: bool = True):
    """Decorator adding ``denoise(image, sigma) -> image`` to the registry under ``name``."""
    def wrap(denoise):
        DENOISERS[name] = Denoiser(name, denoise, mapping, requires, max_images, in_all)
        return denoise
    return wrap


# Registered fastest first: the evaluation runs them in this order, so a slow or interrupted
# run has the cheap baselines done already.
@register_denoiser("gaussian_blur", "scipy.ndimage.gaussian_filter, blur width clip(4*sigma, 0.3, 2.0) px")
def _gaussian_blur(image, sigma):
    from scipy import ndimage
    return ndimage.gaussian_filter(image, float(np.clip(4.0 * sigma, 0.3, 2.0)), mode="reflect")


@register_denoiser("median", "scipy.ndimage.median_filter, 3x3 window (sigma not used)")
def _median(image, sigma):
    from scipy import ndimage
    return ndimage.median_filter(image, size=3, mode="reflect")


@register_denoiser("wavelet", "skimage.restoration.denoise_wavelet, BayesShrink, soft, sigma passed as is")
def _wavelet(image, sigma):
    from skimage.restoration import denoise_wavelet
    return denoise_wavelet(image, sigma=max(sigma, 1e-6), method="BayesShrink", mode="soft", rescale_sigma=True)


@register_denoiser("nlm", "skimage.restoration.denoise_nl_means fast mode, h=0.7*sigma, patch 5, distance 3")
def _nlm(image, sigma):
    from skimage.restoration import denoise_nl_means
    return denoise_nl_means(image, h=0.7 * max(sigma, 1e-6), sigma=sigma, patch_size=5, patch_distance=3,
                            fast_mode=True)


@register_denoiser("tv", "skimage.restoration.denoise_tv_chambolle, weight=0.4*sigma, at most 50 iterations")
def _tv(image, sigma):
    from skimage.restoration import denoise_tv_chambolle
    # 50 iterations reach the same PSNR as the default 200 on 28 px images, in a quarter of the time.
    return denoise_tv_chambolle(image, weight=0.4 * max(sigma, 1e-6), max_num_iter=50)


# bm3d 4.0 takes ~2 s per 28 px image on one core (its block machinery is sized for large
# photos), so it is never part of "all" and, when named, scores only the first 20 images.
@register_denoiser("bm3d", "bm3d.bm3d, sigma_psd=sigma, first 20 images only (optional; non-commercial licence)",
                   requires="bm3d", max_images=20, in_all=False)
def _bm3d(image, sigma):
    import bm3d
    return np.asarray(bm3d.bm3d(image, sigma_psd=max(sigma, 1e-6)), dtype=np.float64)


def resolve_denoisers(names: str | Sequence[str]) -> tuple[list[Denoiser], list[dict]]:
    """Denoisers named in ``names`` (a comma-separated string or a list; ``all`` or ``none``).

    Returns
    -------
    (denoisers, skipped) : the available denoisers in registry order, and one
    ``{"name", "reason"}`` note per requested method whose optional package is not installed.
    Unknown names raise :class:`ConfigError` listing the valid ones.
    """
    if isinstance(names, str):
        names = [n.strip() for n in names.split(",") if n.strip()]
    names = [n.lower().replace("-", "_") for n in names]
    if names in ([], ["none"]):
        return [], []
    chosen, skipped = [], []
    if "all" in names:
        left_out = [d for d in DENOISERS.values() if not d.in_all and d.name not in names]
        skipped += [{"name": d.name, "reason": f"not in 'all' (slow); name it to run it on {d.max_images} images"}
                    for d in left_out]
        names = [d.name for d in DENOISERS.values() if d.in_all] + [n for n in names if n != "all"]
    unknown = [n for n in names if n not in DENOISERS]
    if unknown:
        raise ConfigError(f"unknown denoiser {unknown[0]!r}", f"valid: {', '.join(DENOISERS)}, all, none")
    for name in DENOISERS:  # registry order = fastest first
        if name not in names:
            continue
        denoiser = DENOISERS[name]
        if denoiser.available:
            chosen.append(denoiser)
        else:
            skipped.append({"name": name, "reason": f"package {denoiser.requires!r} not installed "
                                                    f"(pip install 'daelab[{denoiser.requires}]')"})
    return chosen, skipped


def estimate_sigmas(noisy: np.ndarray) -> np.ndarray:
    """``skimage.restoration.estimate_sigma`` of each image of ``noisy`` (N, H, W) -> (N,)."""
    from skimage.restoration import estimate_sigma
    return np.array([estimate_sigma(image) for image in noisy], dtype=np.float64)


def run_denoiser(denoiser: Denoiser, noisy: np.ndarray, sigmas: np.ndarray) -> tuple[np.ndarray, float]:
    """Denoise every image of ``noisy`` (N, H, W) float64 with its own ``sigmas[i]``.

    Returns
    -------
    (denoised, seconds) : denoised images (N, H, W) float64 clipped to [0, 1], and the CPU time of
    this thread: the methods are single-threaded, and CPU time does not grow when other processes
    share the cores (as the evaluation's parallel workers do).
    """
    start = time.thread_time()
    denoised = np.empty_like(noisy, dtype=np.float64)
    for i, (image, sigma) in enumerate(zip(noisy, sigmas, strict=True)):
        denoised[i] = denoiser.denoise(image, float(sigma))
    np.clip(denoised, 0.0, 1.0, out=denoised)
    return denoised, time.thread_time() - start


def score_denoiser(name: str, noisy: np.ndarray, clean: np.ndarray, sigmas: np.ndarray,
                   keep: int) -> tuple[dict[str, np.ndarray], float, np.ndarray]:
    """Run the registered denoiser ``name`` on ``noisy`` and score it against ``clean``.

    Returns
    -------
    (metrics, seconds, head) : :func:`daelab.evaluate._metrics.image_metrics` of the output, the denoiser's
    CPU time (see :func:`run_denoiser`; scoring excluded), and its first ``keep`` output images
    (for the figures).
    """
    output, seconds = run_denoiser(DENOISERS[name], noisy, sigmas)
    return image_metrics(clean, output), seconds, output[:keep]


def warm_up() -> None:
    """Import what the methods import lazily (a worker calls this first, so no job's time includes it)."""
    tiny = np.zeros((8, 8))
    for denoiser in DENOISERS.values():
        if denoiser.in_all and denoiser.available:
            denoiser.denoise(tiny, 0.1)
    image_metrics(tiny[None], tiny[None])
