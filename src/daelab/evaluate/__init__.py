"""Denoising evaluation: how well a trained DAE removes noise, beside classical denoisers.

:func:`evaluate_run` scores a run directory's model on the whole test set (MSE, PSNR, SSIM with
95% intervals), runs the classical baselines on a subsample, builds the robustness matrix across
noise families and writes ``evaluation.json``/``.md`` and figures. The private modules serve this
stage only: ``_pipeline`` (the run), ``_metrics`` (per-image MSE/PSNR/SSIM), ``_baselines``
(classical denoisers) and ``_figures``. :func:`evaluate_daes` does the same over several DAEs of
one config (intervals over DAE seeds and images, ``_seeds``), and :func:`evaluate_images` scores
denoisers on a folder of natural images by the published protocol (unclipped ``awgn`` noise,
8-bit quantized PSNR/SSIM: ``_images`` and ``_metrics``).
"""
from daelab.evaluate._images import (
    CROPS_FIGURE,
    IMAGE_EVAL_FILE,
    IMAGE_EVAL_MARKDOWN,
    PUBLISHED_SET12,
    draw_noisy_image,
    evaluate_images,
    format_images_markdown,
    run_denoiser,
)
from daelab.evaluate._metrics import SSIM8_SETTINGS, psnr8, quantize8, ssim8
from daelab.evaluate._pipeline import (
    EVAL_FILE,
    EVAL_MARKDOWN,
    ROBUSTNESS,
    STUDY_LEVELS,
    EvalConfig,
    draw_noisy,
    equivalent_command,
    evaluate_level,
    evaluate_run,
    format_markdown,
    headline,
    noise_seed,
    robustness_matrix,
    run_dae,
    summarise,
)
from daelab.evaluate._seeds import evaluate_daes

__all__ = ["CROPS_FIGURE", "IMAGE_EVAL_FILE", "IMAGE_EVAL_MARKDOWN", "PUBLISHED_SET12", "SSIM8_SETTINGS",
           "draw_noisy_image", "evaluate_images", "format_images_markdown", "psnr8", "quantize8", "run_denoiser",
           "ssim8",
           "EVAL_FILE", "EVAL_MARKDOWN", "ROBUSTNESS", "STUDY_LEVELS", "EvalConfig", "draw_noisy",
           "equivalent_command", "evaluate_daes", "evaluate_level", "evaluate_run", "format_markdown", "headline",
           "noise_seed", "robustness_matrix", "run_dae", "summarise"]
