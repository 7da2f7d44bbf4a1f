"""Building, caching and loading the C kernels, and the helpers every caller of them uses.

``_fused.c``, ``_fused32.c`` and ``_classifier.c`` are compiled on first use with the system C
compiler into one library in the user cache (``$DAELAB_CACHE`` or ``~/.cache/daelab``) and loaded
with ctypes: no build step at install time and no PyTorch headers, so it compiles in seconds. There
is one library per ISA *variant* (:data:`VARIANTS`): ``native`` (``-march=native``: AVX-512 where
the CPU has it), ``avx2`` (AVX2 + FMA) and ``scalar`` (plain x86-64, or any other CPU), each cached
in its own file; :func:`kernel_variant` picks the one for the CPU's ISA class (:mod:`daelab.cpu`,
so ``DAELAB_ISA=avx2`` makes an AVX-512 machine run the AVX2 build). :func:`load_kernels` returns the library as
:class:`Kernels` -- one checked :class:`~daelab.kernels._abi.Kernel` per C function, typed from
``_fused.h`` -- or None, with one warning, where there is no compiler or the library is not the
interface daelab's callers are written for; training then uses PyTorch's ops. With
``DAELAB_KERNEL_DEBUG=1`` it builds and loads a debug library instead (``-O1 -g -DDAELAB_DEBUG``, its
own cache file) whose kernels also check every index in C. :func:`ptr`, :func:`draw_key` and
:func:`keep_threshold` turn tensors, generators and dropout rates into kernel arguments.
"""
from __future__ import annotations

import ctypes
import hashlib
import logging
import os
import platform
import shutil
import subprocess
import tempfile
from pathlib import Path
from types import SimpleNamespace

import torch

from daelab.kernels._abi import Kernel, KernelInterfaceError, check_calls, parse_header

log = logging.getLogger(__name__)

SOURCE = Path(__file__).with_name("_fused.c")  # the MLP step's kernels; the other files are found beside it
HEADER = SOURCE.with_name("_fused.h")
_SOURCE_NAMES = ("_fused.c", "_fused32.c", "_classifier.c")
_INTERNAL_HEADERS = ("_philox.h", "_layers.h")  # included by the sources; part of the build's cache key
# -Werror=missing-prototypes: a kernel not declared in _fused.h does not build (warnings change no code)
COMPILE_FLAGS = ["-O3", "-march=native", "-ffast-math", "-fopenmp", "-fPIC", "-std=c11", "-Werror=missing-prototypes"]
DEBUG_FLAGS = ["-O1", "-g", "-DDAELAB_DEBUG"]  # in place of -O3
DEBUG_ENV = "DAELAB_KERNEL_DEBUG"
_X86 = platform.machine().lower() in ("x86_64", "amd64", "i386", "i686")
# What each variant puts in place of -march=native. AVX2 is x86-64 plus AVX2, FMA and F16C (what a
# Haswell or Zen CPU has; ``-march=x86-64-v3`` would need GCC 11). Off x86 there are no intrinsics
# paths, so "scalar" keeps -march=native there.
VARIANTS = {
    "native": ("-march=native",),
    "avx2": ("-march=x86-64", "-mavx", "-mavx2", "-mfma", "-mf16c") if _X86 else ("-march=native",),
    "scalar": ("-march=x86-64",) if _X86 else ("-march=native",),
}
_LIB: dict | bool = False  # variant -> Kernels or None (a failed build); False: nothing tried yet


def _cpu_id() -> str:
    """What -march=native depends on: the CPU model and feature flags."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                return line
    except OSError:
        pass
    return platform.processor() or platform.machine()


def cache_dir() -> Path:
    """Where compiled kernels are kept: ``$DAELAB_CACHE/kernels`` (default ``~/.cache/daelab/kernels``)."""
    root = os.environ.get("DAELAB_CACHE") or os.path.join(os.environ.get("XDG_CACHE_HOME") or
                                                          os.path.expanduser("~/.cache"), "daelab")
    return Path(root) / "kernels"


def debug_requested() -> bool:
    """Whether ``DAELAB_KERNEL_DEBUG`` asks for the debug build (set, and not ``0``)."""
    return os.environ.get(DEBUG_ENV, "") not in ("", "0")


def compile_flags(debug: bool = False, variant: str = "native") -> list[str]:
    """The C compiler flags of a variant's normal build, or of its debug build (``-O1 -g -DDAELAB_DEBUG``).

    Parameters
    ----------
    debug : the debug build.
    variant : one of :data:`VARIANTS`; its flags replace ``-march=native``.
    """
    if variant not in VARIANTS:
        raise ValueError(f"unknown kernel variant {variant!r}; valid: {', '.join(VARIANTS)}")
    flags = DEBUG_FLAGS + [flag for flag in COMPILE_FLAGS if flag != "-O3"] if debug else list(COMPILE_FLAGS)
    at = flags.index("-march=native") if "-march=native" in flags else len(flags)
    return flags[:at] + list(VARIANTS[variant]) + flags[at + 1:]


def kernel_variant(cpu=None) -> str:
    """The library variant for a CPU: ``native`` for the AVX-512 classes, ``avx2``, else ``scalar``.

    Parameters
    ----------
    cpu : daelab.cpu.CpuInfo, optional
        Default :func:`daelab.cpu.cpu_info` (which honours ``DAELAB_ISA``).
    """
    if cpu is None:
        from daelab.cpu import cpu_info

        cpu = cpu_info()
    if cpu.isa in ("avx512", "avx512_bf16", "amx"):
        return "native"
    return "avx2" if cpu.isa == "avx2" else "scalar"


def build_kernels(compiler: str | None = None, debug: bool = False, source: Path | None = None,
                  extra_flags: tuple[str, ...] = (), variant: str = "native") -> Path:
    """Compile the kernels into the cache (once per source, header, compiler, flags and CPU); the library's path.

    Compiles and links in two steps so that ``-ffast-math`` (needed for vectorised log/sin/cos)
    does not link GCC's crtfastmath, which would switch the whole process to flush-to-zero.
    Builds of other sources with the same flavour (variant, normal or debug) are removed from the cache.

    Parameters
    ----------
    compiler : the C compiler; default ``$CC`` or ``cc``.
    debug : the debug build (``fused-debug-*.so``), whose kernels check every index in C.
    source : ``_fused.c`` (default :data:`SOURCE`); ``_classifier.c`` and ``_fused.h`` are the ones beside it.
    extra_flags : appended to the flags.
    variant : one of :data:`VARIANTS` (``native``, ``avx2``, ``scalar``); each is its own cache file.

    Raises
    ------
    OSError, subprocess.CalledProcessError : there is no working compiler, or the source does not build.
    """
    compiler, source = compiler or os.environ.get("CC") or "cc", source or SOURCE
    if shutil.which(compiler) is None:
        raise OSError(f"no C compiler {compiler!r} on PATH")
    version = subprocess.run([compiler, "--version"], capture_output=True, text=True, check=True).stdout
    sources = [source.with_name(name) for name in _SOURCE_NAMES]
    internal = [source.with_name(name).read_bytes() for name in _INTERNAL_HEADERS]
    header = source.with_name(HEADER.name).read_bytes()
    flags = compile_flags(debug, variant) + list(extra_flags)
    key = hashlib.sha256(b"\0".join([*(s.read_bytes() for s in sources), *internal, header, version.encode(),
                                     " ".join(flags).encode(), _cpu_id().encode()])).hexdigest()[:16]
    flavour = ("fused-debug" if debug else "fused") + ("" if variant == "native" else f"-{variant}")
    target = cache_dir() / f"{flavour}-{key}.so"
    if target.exists():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    stamp = f'-DDAELAB_HEADER_SHA256="{hashlib.sha256(header).hexdigest()}"'
    with tempfile.TemporaryDirectory(dir=target.parent) as tmp:
        objects, lib = [Path(tmp) / f"{s.stem}.o" for s in sources], Path(tmp) / "fused.so"
        for file, obj in zip(sources, objects):
            subprocess.run([compiler, *flags, stamp, "-c", str(file), "-o", str(obj)],
                           capture_output=True, text=True, check=True)
        subprocess.run([compiler, "-shared", "-fopenmp", *map(str, objects), "-o", str(lib), "-lm"],
                       capture_output=True, text=True, check=True)
        os.replace(lib, target)  # atomic: a concurrent build or a crash never leaves half a library
    for old in target.parent.glob(f"{flavour}-{'?' * 16}.so"):  # older sources (a process using one keeps it)
        if old != target:
            old.unlink(missing_ok=True)
    return target


class Kernels:
    """A loaded kernel library: one checked :class:`~daelab.kernels._abi.Kernel` attribute per C kernel.

    ``kernels.adam(...)`` checks its arguments and raises :class:`~daelab.kernels._abi.KernelError`
    on a refused call; ``kernels.trusted.adam(...)`` skips the Python-side checks (for arrays the
    caller checked once, e.g. its own buffers) but not the status. Build with :func:`open_kernels`.

    Parameters
    ----------
    cdll : the ctypes library.
    header : the ``_fused.h`` it was built from.
    """

    def __init__(self, cdll: ctypes.CDLL, header: Path):
        interface = parse_header(header)
        check_calls(interface)
        built_from = _metadata(cdll, "daelab_header_sha256", ctypes.c_char_p)().decode()
        if built_from != hashlib.sha256(header.read_bytes()).hexdigest():
            raise KernelInterfaceError(f"{cdll._name} was built from another _fused.h than {header}")
        self.cdll, self.interface, self.path = cdll, interface, Path(cdll._name)
        self.debug = bool(_metadata(cdll, "daelab_debug_build", ctypes.c_int)())
        self.variant: str | None = None  # the ISA variant it was built as, where load_kernels knows it
        self.constants, self.statuses = interface.constants, interface.statuses
        self.kernels: dict[str, Kernel] = {}
        for name, prototype in interface.functions.items():
            if name.startswith("daelab_"):
                continue
            function = getattr(cdll, name)
            function.argtypes, function.restype = [p.ctype for p in prototype.params], prototype.restype
            self.kernels[name] = Kernel(function, prototype, interface.statuses)
        self.trusted = SimpleNamespace(**{name: kernel.call for name, kernel in self.kernels.items()})
        clashes = set(self.kernels) & (set(vars(self)) | set(dir(type(self))))
        if clashes:
            raise KernelInterfaceError(f"kernels named like attributes of Kernels: {sorted(clashes)}")
        vars(self).update(self.kernels)

    def __repr__(self) -> str:
        return f"Kernels({str(self.path)!r}, debug={self.debug}, variant={self.variant!r})"


def _metadata(cdll: ctypes.CDLL, name: str, restype):
    try:
        function = getattr(cdll, name)
    except AttributeError:
        raise KernelInterfaceError(f"{cdll._name} has no {name}(): not built from this _fused.h") from None
    function.argtypes, function.restype = [], restype
    return function


def open_kernels(path: Path, header: Path | None = None) -> Kernels:
    """The library at ``path`` as :class:`Kernels`, typed and checked against ``header`` (default :data:`HEADER`).

    Raises
    ------
    OSError : the library does not load.
    KernelInterfaceError : it, or the header, is not the interface daelab's callers are written for.
    """
    return Kernels(ctypes.CDLL(str(path)), header or HEADER)


def _one_line(exc: BaseException) -> str:
    detail = (getattr(exc, "stderr", "") or str(exc) or type(exc).__name__).strip()
    lines = detail.splitlines()
    return next((line for line in lines if "error" in line), lines[-1]) if lines else type(exc).__name__


def load_kernels(variant: str | None = None) -> Kernels | None:
    """The compiled kernels (the debug build under ``DAELAB_KERNEL_DEBUG=1``), or None where they cannot be used.

    Each variant is built and loaded once per process; a failure (no compiler, a source that does
    not build, a library whose interface differs from the callers') is logged once, as one line.

    Parameters
    ----------
    variant : str, optional
        One of :data:`VARIANTS`; default :func:`kernel_variant` of this CPU (``DAELAB_ISA`` honoured).
    """
    global _LIB
    if _LIB is False:
        _LIB = {}
    variant = kernel_variant() if variant is None else variant
    if variant not in _LIB:
        try:
            _LIB[variant] = open_kernels(build_kernels(debug=debug_requested(), source=SOURCE, variant=variant),
                                         SOURCE.with_name(HEADER.name))
            _LIB[variant].variant = variant
        except (OSError, subprocess.CalledProcessError, KernelInterfaceError) as exc:
            log.warning("fused CPU kernels unavailable (%s); training with PyTorch ops", _one_line(exc))
            _LIB[variant] = None
    return _LIB[variant]


class Pointer:
    """A tensor's address as a kernel argument (ctypes reads ``_as_parameter_``), with the tensor for the checks."""

    __slots__ = ("_as_parameter_", "tensor")

    def __init__(self, tensor: torch.Tensor):
        self._as_parameter_, self.tensor = tensor.data_ptr(), tensor

    def __int__(self) -> int:
        return self._as_parameter_

    def __repr__(self) -> str:
        return f"Pointer({self._as_parameter_:#x}, {self.tensor.dtype}, {tuple(self.tensor.shape)})"


def ptr(tensor: torch.Tensor | None) -> Pointer | None:
    """``tensor`` as a kernel argument (a :class:`Pointer`: its address, checkable against the kernel), or None."""
    return None if tensor is None else Pointer(tensor)


def draw_key(generator: torch.Generator) -> int:
    """One unsigned 64-bit Philox key from ``generator`` (so its state, checkpointed, fixes the stream)."""
    return int(torch.randint(-2 ** 63, 2 ** 63 - 1, (), generator=generator, dtype=torch.int64)) % 2 ** 64


def keep_threshold(p: float) -> int:
    """Dropout probability ``p`` as the 32-bit threshold below which ``dropout_mask`` drops a value."""
    return min(int(round(p * 2 ** 32)), 2 ** 32 - 1)
