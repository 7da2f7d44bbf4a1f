"""Which training path a run takes: the precision, whether daelab's fused kernels run it, and why.

:func:`choose_path` is the one place that turns ``--precision`` and ``--kernels`` into a path for the
CPU (or GPU) at hand. On a CPU with native bf16 (AVX-512 BF16 or AMX) ``auto`` is the fused bf16
step, as before; on one without (AVX2, AVX-512 without BF16, scalar), where a bf16 matrix product is
emulated and slower than fp32, it is the fused fp32 step; on a GPU, PyTorch's ops. The reason is one
line for the log, e.g. ``"fp32 fused kernels (AVX2; no native bf16)"``. Whether the model and
optimizer fit the fused step is :func:`~daelab.kernels.make_fused`'s to say (it returns None, with a
warning, where they do not).
"""
from __future__ import annotations

from typing import NamedTuple

import torch

from daelab.cpu import ISA_VARIABLE, CpuInfo, cpu_info
from daelab.kernels._loader import kernel_variant

# How each kernel variant and each ISA class is named in the reason
_VARIANT_WORDS = {"native": "AVX-512", "avx2": "AVX2", "scalar": "scalar"}
_ISA_WORDS = {"amx": "AMX", "avx512_bf16": "AVX-512 BF16", "avx512": "AVX-512", "avx2": "AVX2", "other": "no AVX2"}


class TrainingPath(NamedTuple):
    """What :func:`choose_path` picked (unpacks as ``precision, fused, reason``)."""

    precision: str  # "fp32" or "bf16"
    fused: bool     # daelab's fused C step (else PyTorch's ops)
    reason: str     # one line for the log


def choose_path(device: torch.device, precision: str = "auto", kernels: str = "auto", cpu: CpuInfo | None = None,
                distributed: bool = False, layout: str = "flat") -> TrainingPath:
    """The fastest correct training path for ``device`` under the ``--precision``/``--kernels`` requests.

    Parameters
    ----------
    device : torch.device
        Where training runs.
    precision : str
        ``auto``, ``fp32`` or ``bf16``. On a CPU ``auto`` is bf16 where :attr:`CpuInfo.native_bf16`
        (after any ``DAELAB_ISA`` cap), else fp32; on CUDA, bf16 where the GPU supports it.
    kernels : str
        ``auto`` (the fused step on one CPU process) or ``torch`` (PyTorch's ops always).
    cpu : daelab.cpu.CpuInfo, optional
        The CPU; default :func:`daelab.cpu.cpu_info` (``DAELAB_ISA`` honoured).
    distributed : bool
        Under DDP: the fused step is single-process, so PyTorch's ops.
    layout : str
        The model's ``input_layout``: the fused step is the flat MLP's, so an ``image`` model (conv,
        dncnn, ffdnet, resunet) trains on PyTorch's ops at the chosen precision.

    Returns
    -------
    TrainingPath
        ``(precision, fused, reason)``; pass ``precision`` to :func:`~daelab.kernels.make_fused`
        when ``fused``, and fall back to PyTorch's ops at that precision where it returns None.
    """
    if precision not in ("auto", "fp32", "bf16") or kernels not in ("auto", "torch"):
        raise ValueError(f"precision must be auto, fp32 or bf16 and kernels auto or torch, not {precision!r}, "
                         f"{kernels!r}")
    if device.type != "cpu":
        if precision == "auto":
            precision = "bf16" if device.type == "cuda" and torch.cuda.is_bf16_supported() else "fp32"
        reason = f"{precision} PyTorch ops ({device.type}: the fused kernels are CPU code)"
        return TrainingPath(precision, False, reason)
    cpu = cpu_info() if cpu is None else cpu
    if precision == "auto":
        precision = "bf16" if cpu.native_bf16 else "fp32"
        why = f"native bf16: {_ISA_WORDS[cpu.isa]}" if cpu.native_bf16 else "no native bf16"
    elif precision == "bf16" and not cpu.native_bf16:
        why = "--precision bf16, emulated on this CPU: slower than fp32"
    else:
        why = f"--precision {precision}"
    if cpu.capped_by is not None:
        why += f"; {ISA_VARIABLE}={cpu.capped_by}"
    if kernels == "torch":
        return TrainingPath(precision, False, f"{precision} PyTorch ops (--kernels torch; {why})")
    if distributed:
        return TrainingPath(precision, False, f"{precision} PyTorch ops (distributed: the fused step is one process; "
                                              f"{why})")
    if layout != "flat":
        return TrainingPath(precision, False,
                            f"{precision} PyTorch ops (an image model: the fused kernels are the MLP's; {why})")
    return TrainingPath(precision, True, f"{precision} fused kernels ({_VARIANT_WORDS[kernel_variant(cpu)]}; {why})")
