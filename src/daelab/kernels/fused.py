"""The import path ``daelab.kernels.fused``: the fused kernels' public names, kept for their callers.

The code lives by concept in this package: ``_loader`` (build, cache, load, :func:`ptr`,
:func:`draw_key`, :func:`keep_threshold`), ``_abi`` (the interface read from ``_fused.h``, the
argument checks, :class:`KernelError`), ``_mlp`` (:class:`FusedMLP`, :func:`make_fused`) and
``_adam`` (:class:`FusedAdam`) and ``_path`` (:func:`choose_path`).
"""
from daelab.kernels._abi import Kernel, KernelError, KernelInterfaceError
from daelab.kernels._adam import FusedAdam
from daelab.kernels._loader import (
    COMPILE_FLAGS,
    HEADER,
    SOURCE,
    Kernels,
    Pointer,
    build_kernels,
    cache_dir,
    draw_key,
    keep_threshold,
    kernel_variant,
    load_kernels,
    open_kernels,
    ptr,
)
from daelab.kernels._mlp import FusedMLP, make_fused
from daelab.kernels._path import TrainingPath, choose_path

__all__ = ["COMPILE_FLAGS", "HEADER", "SOURCE", "FusedAdam", "FusedMLP", "Kernel", "KernelError",
           "KernelInterfaceError", "Kernels", "Pointer", "TrainingPath", "build_kernels", "cache_dir", "choose_path",
           "draw_key", "keep_threshold", "kernel_variant", "load_kernels", "make_fused", "open_kernels", "ptr"]
