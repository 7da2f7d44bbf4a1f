"""Where the sigma -> parameter constants in daelab.evaluate._baselines come from (run by hand, ~1 min).

Grid-searches each classical denoiser's scale constant on 300 Fashion-MNIST *training* images
with Gaussian noise of std 0.05 and 0.15 (true sigma given) and prints the mean PSNR per constant.

    PYTHONPATH=src python scripts/calibrate_baselines.py
"""
import numpy as np
from scipy import ndimage
from skimage.restoration import denoise_nl_means, denoise_tv_chambolle

from daelab.data import load_dataset
from daelab.evaluate._metrics import psnr_from_mse


def mean_psnr(clean, denoised):
    return float(psnr_from_mse(((clean - denoised) ** 2).mean(axis=(1, 2))).mean())


clean = load_dataset().train_images[:300].astype(np.float64) / 255.0
rng = np.random.default_rng(0)
grids = {
    "gaussian_blur k (width=k*sigma px)": (
        [2, 4, 6, 8, 12], lambda x, s, k: ndimage.gaussian_filter(x, float(np.clip(k * s, 0.3, 2.0)))),
    "tv k (weight=k*sigma)": ([0.2, 0.3, 0.5, 0.7, 1.0], lambda x, s, k: denoise_tv_chambolle(x, weight=k * s,
                                                                                              max_num_iter=50)),
    "nlm k (h=k*sigma)": ([0.5, 0.6, 0.7, 0.8, 1.0], lambda x, s, k: denoise_nl_means(
        x, h=k * s, sigma=s, patch_size=5, patch_distance=3, fast_mode=True)),
    "median size": ([3, 5], lambda x, s, k: ndimage.median_filter(x, size=k)),
}
for sigma in (0.05, 0.15):
    noisy = np.clip(clean + sigma * rng.standard_normal(clean.shape), 0, 1)
    print(f"sigma {sigma}: noisy input {mean_psnr(clean, noisy):.2f} dB")
    for label, (values, fn) in grids.items():
        scores = [mean_psnr(clean, np.stack([fn(x, sigma, k) for x in noisy])) for k in values]
        print(f"  {label}: " + ", ".join(f"{k}: {p:.2f}" for k, p in zip(values, scores, strict=True)))
