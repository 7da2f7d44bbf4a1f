"""daelab's fused CPU kernels: C compiled on first use into one library, loaded with ctypes.

``_fused.c`` holds the elementwise work of the MLP's training step (BatchNorm, dropout, LeakyReLU,
noise, the sigmoid+MSE tail, Adam with the bf16 weight copy), ``_classifier.c`` that of the probe
classifier's step; matrix products stay in PyTorch. ``_fused.h`` is their interface, read by the
compiler and by ``_abi``; ``_loader`` builds and loads the library, ``_mlp`` drives the fused MLP
step, ``_adam`` the fused Adam. ``daelab.kernels.fused`` holds the same public names under their
older import path.
"""
from daelab.kernels.fused import (
    FusedAdam,
    FusedMLP,
    Kernel,
    KernelError,
    KernelInterfaceError,
    Kernels,
    Pointer,
    build_kernels,
    cache_dir,
    draw_key,
    keep_threshold,
    load_kernels,
    make_fused,
    open_kernels,
    ptr,
)

__all__ = ["FusedAdam", "FusedMLP", "Kernel", "KernelError", "KernelInterfaceError", "Kernels", "Pointer",
           "build_kernels", "cache_dir", "draw_key", "keep_threshold", "load_kernels", "make_fused", "open_kernels",
           "ptr"]
