"""What this CPU offers, in one place: its model name, its ISA class, and whether it has native bf16.

The ISA class is one of :data:`ISA_CLASSES`, from least to most capable: ``"other"`` (no AVX2:
scalar/SSE x86, or a non-x86 CPU), ``"avx2"``, ``"avx512"``, ``"avx512_bf16"`` (AVX-512 with bf16
dot products), ``"amx"`` (Intel AMX tiles with bf16). Only the last two multiply bf16 natively; on
the others a bf16 matrix product is emulated and far slower than fp32 (a 2048^3 bf16 product ran at
1.4 GFLOP/s on a 2-core AVX2 EPYC), so bf16 training only pays off where :func:`has_native_bf16`.

On Linux the class comes from the ``flags`` line of ``/proc/cpuinfo`` (:func:`parse_cpuinfo` is a
pure function of that text, so it is testable on any machine); elsewhere from PyTorch's own dispatch
level, ``torch.backends.cpu.get_cpu_capability()``, which cannot see bf16 and so says ``avx512`` at
most. The environment variable ``DAELAB_ISA`` (``avx2``, ``avx512``, ``avx512_bf16``, ``amx`` or
``scalar``) caps the class, so an AMX machine can be told to behave as an AVX2 one (no native bf16)
and the AVX2 path measured and tested there too; :func:`isa_environment` gives the variables that
make PyTorch's own kernels (ATen, oneDNN, MKL) respect the same cap. A cap never raises the class.

This module imports nothing heavy: it can run before ``torch`` is imported, which is when those
variables must be set.
"""
from __future__ import annotations

import os
import platform
from dataclasses import dataclass, field, replace
from pathlib import Path

from daelab.errors import ConfigError

ISA_CLASSES = ("other", "avx2", "avx512", "avx512_bf16", "amx")
# DAELAB_ISA's names: the classes, with "scalar" for "other" (no vector ISA a kernel may rely on)
OVERRIDES = {"scalar": "other", "avx2": "avx2", "avx512": "avx512", "avx512_bf16": "avx512_bf16", "amx": "amx"}
ISA_VARIABLE = "DAELAB_ISA"
CPUINFO = Path("/proc/cpuinfo")

# The flags each class needs beyond the class below it. "avx512" is the AVX-512 subset PyTorch's
# AVX512 kernels are compiled for (F, BW, VL, DQ), so the class matches what PyTorch dispatches to.
_NEEDS = {
    "avx2": {"avx2", "fma"},
    "avx512": {"avx512f", "avx512bw", "avx512vl", "avx512dq"},
    "avx512_bf16": {"avx512_bf16"},
    "amx": {"amx_bf16", "amx_tile"},
}
# PyTorch's get_cpu_capability() names -> classes
_TORCH_CAPABILITY = {"AVX512": "avx512", "AVX2": "avx2"}
# What each class caps PyTorch's libraries to: ATen's kernel dispatch, oneDNN (bf16 and some fp32
# matmuls) and MKL (fp32 GEMM). Values are the libraries' own names.
_LIBRARY_CAPS = {
    "other": {"ATEN_CPU_CAPABILITY": "default", "ONEDNN_MAX_CPU_ISA": "SSE41", "MKL_ENABLE_INSTRUCTIONS": "SSE4_2"},
    "avx2": {"ATEN_CPU_CAPABILITY": "avx2", "ONEDNN_MAX_CPU_ISA": "AVX2", "MKL_ENABLE_INSTRUCTIONS": "AVX2"},
    "avx512": {"ATEN_CPU_CAPABILITY": "avx512", "ONEDNN_MAX_CPU_ISA": "AVX512_CORE",
               "MKL_ENABLE_INSTRUCTIONS": "AVX512"},
    "avx512_bf16": {"ATEN_CPU_CAPABILITY": "avx512", "ONEDNN_MAX_CPU_ISA": "AVX512_CORE_BF16",
                    "MKL_ENABLE_INSTRUCTIONS": "AVX512"},
    "amx": {},
}


@dataclass(frozen=True)
class CpuInfo:
    """What a CPU offers.

    Attributes
    ----------
    model : str
        The CPU's model name (``/proc/cpuinfo``'s ``model name``), or the best the platform says.
    isa : str
        The ISA class in effect: one of :data:`ISA_CLASSES`, after any ``DAELAB_ISA`` cap.
    detected_isa : str
        The class the CPU itself has, before any cap.
    flags : frozenset of str
        The CPU's feature flags (empty where they are unknown).
    source : str
        Where the class came from: ``"/proc/cpuinfo"``, ``"torch"`` or ``"text"`` (parsed text).
    capped_by : str or None
        The ``DAELAB_ISA`` value that lowered the class, or None.
    """

    model: str
    isa: str
    detected_isa: str
    flags: frozenset = field(default_factory=frozenset, repr=False)
    source: str = "text"
    capped_by: str | None = None

    @property
    def native_bf16(self) -> bool:
        """Whether bf16 matrix products run natively (AVX-512 BF16 or AMX), after any cap."""
        return self.isa in ("avx512_bf16", "amx")

    def describe(self) -> str:
        """One line for a log: ``"<model>, ISA class <isa>"`` plus the cap, if one applies."""
        text = f"{self.model}, ISA class {self.isa}"
        if self.capped_by is not None:
            text += f" (capped by {ISA_VARIABLE}={self.capped_by}; the CPU has {self.detected_isa})"
        return text


def classify_flags(flags) -> str:
    """The ISA class of a set of ``/proc/cpuinfo`` flags.

    Parameters
    ----------
    flags : iterable of str
        Feature flags as Linux spells them (``avx2``, ``avx512f``, ``amx_bf16``, ...).

    Returns
    -------
    str
        The highest class of :data:`ISA_CLASSES` whose flags, and those of every class below it,
        are all present.
    """
    flags = set(flags)
    isa = "other"
    for name in ISA_CLASSES[1:]:
        if not _NEEDS[name] <= flags:
            break
        isa = name
    return isa


def parse_cpuinfo(text: str) -> CpuInfo:
    """The CPU described by the text of ``/proc/cpuinfo`` (the first processor's block).

    Parameters
    ----------
    text : str
        The file's contents. x86 blocks have ``model name`` and ``flags``; ARM ones have
        ``Features`` (not x86 flags: the class is then ``"other"``) and at most ``Hardware`` or
        ``Model`` for a name.

    Returns
    -------
    CpuInfo
        ``source="text"``, no cap applied (see :func:`cap_isa`). ``model`` is ``"unknown CPU"``
        where the text names none.
    """
    fields: dict[str, str] = {}
    for line in text.splitlines():
        key, sep, value = line.partition(":")
        key = key.strip().lower()
        if sep and key and key not in fields:
            fields[key] = value.strip()
    flags = frozenset(fields.get("flags", "").split())
    model = fields.get("model name") or fields.get("hardware") or fields.get("model") or "unknown CPU"
    isa = classify_flags(flags)
    return CpuInfo(model=model, isa=isa, detected_isa=isa, flags=flags, source="text")


def parse_override(value: str | None) -> str | None:
    """The class a ``DAELAB_ISA`` value caps to, or None for no cap (unset or empty).

    Raises
    ------
    daelab.errors.ConfigError
        For a name that is not one of ``avx2``, ``avx512``, ``avx512_bf16``, ``amx``, ``scalar``.
    """
    if value is None or not value.strip():
        return None
    name = value.strip().lower()
    if name not in OVERRIDES:
        raise ConfigError(f"{ISA_VARIABLE}={value!r} is not an ISA class", "valid: " + ", ".join(OVERRIDES))
    return OVERRIDES[name]


def cap_isa(info: CpuInfo, override: str | None) -> CpuInfo:
    """``info`` with its class capped by a ``DAELAB_ISA`` value (a cap lowers, never raises).

    Parameters
    ----------
    info : CpuInfo
        What the CPU has.
    override : str or None
        A ``DAELAB_ISA`` value; None or empty leaves ``info`` as it is.

    Returns
    -------
    CpuInfo
        With ``isa`` the lower of the detected class and the cap, and ``capped_by`` set where the
        cap lowered it.
    """
    cap = parse_override(override)
    if cap is None or ISA_CLASSES.index(cap) >= ISA_CLASSES.index(info.detected_isa):
        return replace(info, isa=info.detected_isa, capped_by=None)
    return replace(info, isa=cap, capped_by=override.strip().lower())


def _from_torch() -> CpuInfo:
    """The class PyTorch dispatches to, where there is no ``/proc/cpuinfo`` (it cannot see bf16)."""
    import torch

    capability = torch.backends.cpu.get_cpu_capability()
    isa = _TORCH_CAPABILITY.get(capability, "other")
    model = platform.processor() or platform.machine() or "unknown CPU"
    return CpuInfo(model=model, isa=isa, detected_isa=isa, source="torch")


def cpu_info(override: str | None = None, cpuinfo: Path | None = None) -> CpuInfo:
    """What this CPU offers, with the ``DAELAB_ISA`` cap applied.

    Parameters
    ----------
    override : str, optional
        The cap; default ``$DAELAB_ISA``.
    cpuinfo : Path, optional
        The file to read (default :data:`CPUINFO`); where it is missing or has no ``flags`` line,
        PyTorch is asked instead.

    Returns
    -------
    CpuInfo
    """
    if override is None:
        override = os.environ.get(ISA_VARIABLE)
    cpuinfo = CPUINFO if cpuinfo is None else cpuinfo
    try:
        info = parse_cpuinfo(cpuinfo.read_text(errors="replace"))
    except OSError:
        info = None
    if info is not None and info.flags:
        info = replace(info, source=str(cpuinfo))
    else:
        fallback = _from_torch()
        # keep /proc/cpuinfo's name where it has one (ARM: "Hardware"), PyTorch's class
        if info is not None and info.model != "unknown CPU":
            fallback = replace(fallback, model=info.model)
        info = fallback
    return cap_isa(info, override)


def has_native_bf16(override: str | None = None) -> bool:
    """Whether this CPU multiplies bf16 natively (AVX-512 BF16 or AMX), honouring ``DAELAB_ISA``.

    Parameters
    ----------
    override : str, optional
        The cap; default ``$DAELAB_ISA``.
    """
    return cpu_info(override).native_bf16


def isa_environment(isa: str) -> dict[str, str]:
    """The variables that cap PyTorch's libraries (ATen dispatch, oneDNN, MKL) to an ISA class.

    They take effect only if set before ``torch`` is imported (or at least before its first
    operation). ``"amx"`` caps nothing.

    Parameters
    ----------
    isa : str
        One of :data:`ISA_CLASSES`.

    Returns
    -------
    dict of str to str
    """
    if isa not in _LIBRARY_CAPS:
        raise ConfigError(f"unknown ISA class {isa!r}", "valid: " + ", ".join(ISA_CLASSES))
    return dict(_LIBRARY_CAPS[isa])


def format_caps(caps: dict[str, str]) -> str:
    """``NAME=value`` pairs of library caps (what :func:`apply_isa_cap` set), space-separated, for a log line."""
    return " ".join(f"{name}={value}" for name, value in caps.items())


def apply_isa_cap(info: CpuInfo | None = None) -> dict[str, str]:
    """Set the library caps of a ``DAELAB_ISA`` cap in ``os.environ``; call before importing torch.

    Variables the user already set are left alone. Nothing is set where no cap lowered the class.

    Parameters
    ----------
    info : CpuInfo, optional
        Default :func:`cpu_info`; on a machine without ``/proc/cpuinfo`` that imports torch, and
        the caps then only reach the libraries that have not started yet.

    Returns
    -------
    dict of str to str
        The variables this call set.
    """
    info = cpu_info() if info is None else info
    if info.capped_by is None:
        return {}
    applied = {}
    for name, value in isa_environment(info.isa).items():
        if name not in os.environ:
            os.environ[name] = applied[name] = value
    return applied
