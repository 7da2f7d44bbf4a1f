"""Training: fit a DAE into a run directory, crash-safe and resumable.

:func:`fit` is the driver; :class:`TrainConfig` holds every setting (the defaults are the study's).
``_config`` holds the settings and how ``auto`` resolves, ``_data`` the tensors training works on,
``_steps`` the training step (:class:`StepPolicy`, :func:`train_steps`, validation), ``_precision``
the fp32 and bf16-shadow weight policies, ``_batchnorm`` precise BatchNorm statistics, ``_signals``
the Ctrl-C handling, and ``_fit`` the driver.
"""
from daelab.train._batchnorm import recalibrate_batchnorm, recalibrate_run, recalibration_batches
from daelab.train._config import KERNELS, PRECISIONS, TrainConfig, resolve_device, resolve_precision
from daelab.train._data import TrainData, prepare_data, usable_samples
from daelab.train._fit import EpochTotals, FitSetup, FitState, fit, train_one_epoch
from daelab.train._precision import WeightPolicy
from daelab.train._signals import StopSignals
from daelab.train._steps import (
    StepPolicy,
    StepsResult,
    TorchStep,
    evaluate_loss,
    make_optimizer,
    make_training_policy,
    train_steps,
)

__all__ = ["KERNELS", "PRECISIONS", "EpochTotals", "FitSetup", "FitState", "StepPolicy", "StepsResult",
           "StopSignals", "TorchStep", "TrainConfig", "TrainData", "WeightPolicy", "evaluate_loss", "fit",
           "make_optimizer", "make_training_policy", "prepare_data", "recalibrate_batchnorm", "recalibrate_run",
           "recalibration_batches", "resolve_device", "resolve_precision", "train_one_epoch", "train_steps",
           "usable_samples"]
