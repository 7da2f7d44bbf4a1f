"""Denoising evaluation: how well a trained DAE removes noise, beside classical denoisers.

:func:`evaluate_run` scores a run directory's model on the whole test set (MSE, PSNR, SSIM with
95% intervals), runs the classical baselines on a subsample, builds the robustness matrix across
noise families and writes ``evaluation.json``/``.md`` and figures. The private modules serve this
stage only: ``_pipeline`` (the run), ``_metrics`` (per-image MSE/PSNR/SSIM), ``_baselines``
(classical denoisers) and ``_figures``.
"""
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

__all__ = ["EVAL_FILE", "EVAL_MARKDOWN", "ROBUSTNESS", "STUDY_LEVELS", "EvalConfig", "draw_noisy",
           "equivalent_command", "evaluate_daes", "evaluate_level", "evaluate_run", "format_markdown", "headline",
           "noise_seed", "robustness_matrix", "run_dae", "summarise"]
