"""daelab's fused CPU kernels: C compiled on first use into one library, loaded with ctypes.

``_fused.c`` holds the elementwise work of the MLP's bf16 training step (BatchNorm, dropout, LeakyReLU,
noise, the sigmoid+MSE tail, Adam with the bf16 weight copy), ``_fused32.c`` the same layer kernels for
the fp32 step (both from the one template ``_layers.h``, with Philox in ``_philox.h``), ``_classifier.c``
that of the probe classifier's step; matrix products stay in PyTorch. ``_fused.h`` is their interface,
read by the compiler and by ``_abi``; ``_loader`` builds and loads the library (one per ISA variant:
AVX-512, AVX2, scalar), ``_path`` picks the training path for the CPU (:func:`choose_path`), ``_mlp``
drives the fused MLP step in bf16 or fp32, ``_adam`` the fused Adam. ``daelab.kernels.fused`` holds
the same public names under their older import path.
"""
from daelab.kernels.fused import (
    FusedAdam,
    FusedMLP,
    Kernel,
    KernelError,
    KernelInterfaceError,
    Kernels,
    Pointer,
    TrainingPath,
    build_kernels,
    cache_dir,
    choose_path,
    draw_key,
    keep_threshold,
    kernel_variant,
    load_kernels,
    make_fused,
    open_kernels,
    ptr,
)

__all__ = ["FusedAdam", "FusedMLP", "Kernel", "KernelError", "KernelInterfaceError", "Kernels", "Pointer",
           "TrainingPath", "build_kernels", "cache_dir", "choose_path", "draw_key", "keep_threshold", "kernel_variant",
           "load_kernels", "make_fused", "open_kernels", "ptr"]
