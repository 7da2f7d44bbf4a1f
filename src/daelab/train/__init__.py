"""Training: fit a DAE into a run directory, crash-safe and resumable.

:func:`fit` is the driver; :class:`TrainConfig` holds every setting (the defaults are the study's).
``_fit`` holds the loop and its steps, ``_precision`` the fp32 and bf16-shadow weight policies.
"""
from daelab.train._fit import (
    KERNELS,
    PRECISIONS,
    StepsResult,
    TrainConfig,
    TrainData,
    evaluate_loss,
    fit,
    make_optimizer,
    make_training_policy,
    prepare_data,
    resolve_device,
    resolve_precision,
    train_steps,
    usable_samples,
)

__all__ = ["KERNELS", "PRECISIONS", "StepsResult", "TrainConfig", "TrainData", "evaluate_loss", "fit",
           "make_optimizer", "make_training_policy", "prepare_data", "resolve_device", "resolve_precision",
           "train_steps", "usable_samples"]
