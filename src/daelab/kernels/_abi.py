"""The kernels' interface as Python sees it: ``_fused.h`` parsed into ctypes types and argument checks.

``_fused.h`` is the one description of the C interface: ``_fused.c`` and ``_classifier.c`` include
it (so the compiler rejects a definition that differs from it) and :func:`parse_header` reads it here for the ctypes
argument types, the status codes and, from the comment after each array parameter, how many
elements the kernel touches there and the range of the indices it holds. :data:`CALLS` is what
daelab's callers pass, in order; :func:`check_calls` refuses a header whose prototypes say
otherwise, so a changed prototype cannot silently meet callers written for the old one. Each
kernel becomes a :class:`Kernel`: called, it checks its arguments (dtypes, contiguity, the extent
of every array, index ranges) before the C call, and turns a nonzero status into :class:`KernelError`.
"""
from __future__ import annotations

import ctypes
import functools
import re
import weakref
from dataclasses import dataclass
from pathlib import Path

import torch

from daelab.errors import TrainingError

# What daelab's Python callers pass to each kernel (FusedMLP and FusedAdam here, FusedSteps and
# epoch_masks in daelab.probe._classifier), in order: the loader refuses a header that differs.
CALLS = {
    "gather_gaussian": "data n_rows index batch dim sigma seed stream clean noisy",
    "dropout_mask": "seed stream n threshold keep scale scaled",
    "bn_forward": "z batch feat bias gamma beta eps momentum running_mean running_var keep keep_scale slope act "
                  "mean_out rstd_out",
    "bn_backward": "dact act z batch feat keep keep_scale slope gamma mean rstd dz dgamma dbeta",
    "sigmoid_mse": "z bias clean batch feat grad_scale dz dbias total_out",
    "gather_gaussian_f32": "data n_rows index batch dim sigma seed stream clean noisy",
    "bn_forward_f32": "z batch feat bias gamma beta eps momentum running_mean running_var keep keep_scale slope act "
                      "mean_out rstd_out",
    "bn_backward_f32": "dact act z batch feat keep keep_scale slope gamma mean rstd dz dgamma dbeta",
    "sigmoid_mse_f32": "z bias clean batch feat grad_scale dz dbias total_out",
    "adam": "param grad grad_bf16 exp_avg exp_avg_sq shadow n beta1 beta2 eps step_size bias_correction2_sqrt",
    "to_bf16": "src dst n",
    "relu_mask": "a seeds batch width mask mask_seed_stride mask_row_stride",
    "relu_mask_backward": "dh h seeds batch width mask mask_seed_stride mask_row_stride dbias",
    "classifier_tail": "a2 seeds batch hidden classes mask mask_seed_stride mask_row_stride labels label_seed_stride "
                       "gamma beta w3 b3 eps momentum running_mean running_var h da2 dw3 db3 dgamma dbeta db2 work "
                       "total_out",
}

_SCALARS = {"int": ctypes.c_int, "int64_t": ctypes.c_int64, "uint32_t": ctypes.c_uint32,
            "uint64_t": ctypes.c_uint64, "float": ctypes.c_float, "double": ctypes.c_double}
_RESULTS = {"int": ctypes.c_int, "const char *": ctypes.c_char_p}
# the tensor dtypes an array of each C element type may be (bf16 is stored as uint16_t; void: any)
_DTYPES = {"float": (torch.float32,), "double": (torch.float64,), "int64_t": (torch.int64,),
           "uint16_t": (torch.bfloat16,), "uint8_t": (torch.uint8, torch.bool), "void": None}
_EXPRESSION = re.compile(r"[\w\s()+\-*]+")


class KernelError(TrainingError):
    """A fused kernel refused its input (an index out of range, a size it has no room for); it did no work.

    Parameters
    ----------
    kernel : the C function's name.
    reason : what was wrong, in words.
    """

    def __init__(self, kernel: str, reason: str):
        super().__init__(f"fused kernel {kernel}: {reason}")
        self.kernel, self.reason = kernel, reason


class KernelInterfaceError(RuntimeError):
    """The kernels' header or library is not the interface daelab's callers are written for."""


@dataclass(frozen=True)
class Param:
    """One parameter of a kernel, as ``_fused.h`` declares it."""

    name: str
    ctype: type                      # the ctypes type of the argument
    element: str | None = None       # arrays: the C element type ("float", "uint16_t", ...)
    count: str | None = None         # contiguous arrays: how many elements the kernel touches
    shape: tuple[str, ...] | None = None    # strided arrays: the extents the kernel walks ...
    strides: tuple[str, ...] | None = None  # ... and their strides, in elements
    index_range: tuple[str, str] | None = None  # index arrays: [low, high) of the values
    nullable: bool = False
    returned: bool = False           # an out value (one element) the Python wrapper allocates and returns

    @property
    def strided(self) -> bool:
        """Read through explicit strides rather than as one contiguous block."""
        return self.strides is not None

    @property
    def expressions(self) -> tuple[str, ...]:
        """Every count, extent, stride and bound of this parameter (each in the int64_t parameters' names)."""
        return tuple(e for e in (self.count, *(self.shape or ()), *(self.strides or ()), *(self.index_range or ()))
                     if e is not None)


@dataclass(frozen=True)
class Prototype:
    """A function of ``_fused.h``: its name, ctypes result type and parameters."""

    name: str
    restype: type
    params: tuple[Param, ...]


@dataclass(frozen=True)
class Interface:
    """All of ``_fused.h``: the functions, the status codes (value -> meaning) and the numeric constants."""

    functions: dict[str, Prototype]
    statuses: dict[int, str]
    constants: dict[str, int]


def _param(text: str, note: str | None) -> Param:
    match = re.fullmatch(r"(.+?)\s*\b(\w+)", " ".join(text.split()))
    if match is None:
        raise KernelInterfaceError(f"cannot read parameter {text!r} in _fused.h")
    ctype_text, name = match.group(1).replace("const ", "").strip(), match.group(2)
    if not ctype_text.endswith("*"):
        if ctype_text not in _SCALARS or note:
            raise KernelInterfaceError(f"parameter {name}: unsupported scalar type {ctype_text!r} in _fused.h")
        return Param(name, _SCALARS[ctype_text])
    element = ctype_text.rstrip("* ")
    parts = [part.strip() for part in (note or "").split(";")]
    count, shape, strides = parts[0], None, None
    layout = re.fullmatch(r"(.+) at strides \((.+)\)", count)  # "seeds x batch at strides (label_seed_stride, 1)"
    if layout:
        count = None
        shape = tuple(extent.strip() for extent in layout.group(1).split(" x "))
        strides = tuple(stride.strip() for stride in layout.group(2).split(","))
    expressions = (count,) if count is not None else (*shape, *strides)
    if (element not in _DTYPES or not all(e and _EXPRESSION.fullmatch(e) for e in expressions)
            or (shape is not None and len(shape) != len(strides))):
        raise KernelInterfaceError(f"array parameter {name} needs a known element type and a count in _fused.h")
    index_range, nullable, returned = None, False, False
    for part in parts[1:]:
        bounds = re.fullmatch(r"in \[(.+),(.+)\)", part)
        if bounds and all(_EXPRESSION.fullmatch(b) for b in bounds.groups()):
            index_range = (bounds.group(1).strip(), bounds.group(2).strip())
        elif part == "may be NULL":
            nullable = True
        elif part == "returned" and element == "double" and parts[0] == "1":
            returned = True
        else:
            raise KernelInterfaceError(f"array parameter {name}: cannot read {part!r} in _fused.h")
    return Param(name, ctypes.c_void_p, element, count, shape, strides, index_range, nullable, returned)


def _declarations(text: str):
    """(result type, name, parameters with their notes) of each prototype: the text up to the ``)`` that
    closes it outside comments (notes hold brackets too), plus the note after its ``);``."""
    for match in re.finditer(r"^(int|const char \*)\s*(\w+)\(", text, flags=re.M):
        depth, k = 1, match.end()
        while depth:
            if text.startswith("/*", k):
                k = text.index("*/", k) + 2
                continue
            depth += {"(": 1, ")": -1}.get(text[k], 0)
            k += 1
        tail = re.match(r";[ \t]*(/\*.*?\*/)?", text[k:], flags=re.S)
        if tail is None:
            raise KernelInterfaceError(f"{match.group(2)}: a prototype in _fused.h must end in ');'")
        yield match.group(1), match.group(2), text[match.end():k - 1] + (tail.group(1) or "")


def parse_header(path: Path) -> Interface:
    """The interface ``_fused.h`` at ``path`` declares.

    Raises
    ------
    KernelInterfaceError : a declaration this parser (and so the ctypes side) does not understand.
    """
    text = path.read_text()
    statuses = {int(value): message.strip() for _, value, message in
                re.findall(r"^\s*(DAELAB_\w+)\s*=\s*(\d+),\s*/\*(.*?)\*/", text, flags=re.M)}
    constants = {name: int(value) for name, value in re.findall(r"^#define (DAELAB_\w+) (\d+)\s*$", text, flags=re.M)}
    functions = {}
    for result, name, body in _declarations(text):
        params, pieces = [], re.split(r"(/\*.*?\*/)", body, flags=re.S)
        for piece in pieces:
            if piece.startswith("/*"):  # the note on the parameter just before it
                if not params:
                    raise KernelInterfaceError(f"{name}: a comment before the first parameter in _fused.h")
                params[-1][1] = piece[2:-2].strip()
                continue
            params += [[decl, None] for decl in (d.strip() for d in piece.split(",")) if decl and decl != "void"]
        functions[name] = Prototype(name, _RESULTS[result], tuple(_param(decl, note) for decl, note in params))
    if not functions or 0 not in statuses:
        raise KernelInterfaceError(f"no prototypes or status codes in {path}")
    return Interface(functions, statuses, constants)


def check_calls(interface: Interface) -> None:
    """Raise :class:`KernelInterfaceError` unless every kernel in :data:`CALLS` is declared with those parameters."""
    for name, expected in CALLS.items():
        prototype = interface.functions.get(name)
        if prototype is None:
            raise KernelInterfaceError(f"{name} is not declared in _fused.h")
        declared = " ".join(p.name for p in prototype.params)
        if declared != expected or prototype.restype is not ctypes.c_int:
            raise KernelInterfaceError(f"{name} is declared as int {name}({declared}) in _fused.h, "
                                       f"but daelab calls it with ({expected})")


_NO_BUILTINS = {"__builtins__": {}}


@functools.lru_cache(maxsize=None)
def _compiled(expression: str):
    """A count or bound of _fused.h, compiled once (_EXPRESSION let through only names, numbers, + - * and brackets)."""
    return compile(expression, "<_fused.h>", "eval")


class Kernel:
    """One C kernel with its checks: ``kernel(*args)`` checks the arguments, calls C, raises on a nonzero status.

    Arguments are the C parameters in order, without the ``returned`` ones, whose values the call
    returns instead (one value, or None). An array argument is ``ptr(tensor)`` (checked: dtype,
    device, contiguity, that the tensor holds every element the kernel touches, index ranges),
    None where the header allows NULL, or a bare address, which nothing can check. The checks of
    an index array's values are remembered per tensor until it is written to, so a caller that
    walks one epoch's labels in steps pays for one ``aminmax`` an epoch.

    Parameters
    ----------
    function : the ctypes function, its ``argtypes``/``restype`` set from ``prototype``.
    prototype : its declaration in ``_fused.h``.
    statuses : the header's status codes, value -> meaning.
    """

    def __init__(self, function, prototype: Prototype, statuses: dict[int, str]):
        self.function, self.prototype, self.statuses = function, prototype, statuses
        self.name = prototype.name
        self.inputs = tuple(p for p in prototype.params if not p.returned)
        self._returned = tuple(p for p in prototype.params if p.returned)
        if prototype.params[len(self.inputs):] != self._returned:
            raise KernelInterfaceError(f"{self.name}: returned parameters must come last in _fused.h")
        self._checked: dict[str, tuple] = {}  # index parameter -> what _check_indices last found valid
        # what check() walks, worked out once: the sizes (int64 scalars) and (position, param, dtypes) of the arrays
        self._size_slots = [(k, p.name) for k, p in enumerate(self.inputs) if p.ctype is ctypes.c_int64]
        self._array_slots = [(k, p, _DTYPES[p.element]) for k, p in enumerate(self.inputs) if p.element is not None]
        self._sizes_seen: dict[tuple, list] = {}  # size arguments -> _sizes
        sizes = {name for _, name in self._size_slots}
        for _, param, _ in self._array_slots:
            for expression in param.expressions:
                unknown = set(_compiled(expression).co_names) - sizes
                if unknown:
                    raise KernelInterfaceError(f"{self.name}: {param.name}'s count or range names {sorted(unknown)}, "
                                               "which are not int64_t parameters, in _fused.h")

    def __call__(self, *args):
        self.check(*args)
        return self.call(*args)

    def call(self, *args):
        """The C call without the Python-side checks (for callers that checked these arrays once already)."""
        if not self._returned:
            status = self.function(*args)
            if status:
                self._fail(status)
            return None
        outs = [ctypes.c_double() for _ in self._returned]
        status = self.function(*args, *(ctypes.byref(out) for out in outs))
        if status:
            self._fail(status)
        return outs[0].value if len(outs) == 1 else tuple(out.value for out in outs)

    def _fail(self, status: int):
        raise KernelError(self.name, self.statuses.get(status, f"status {status}"))

    def check(self, *args) -> None:
        """Raise ``ValueError``/:class:`KernelError` where ``args`` do not fit the kernel; see the class."""
        if len(args) != len(self.inputs):
            raise TypeError(f"{self.name} takes {len(self.inputs)} arguments ({len(args)} given)")
        sizes = self._sizes(args)
        for (k, param, dtypes), (count, layout, bounds) in zip(self._array_slots, sizes):
            value = args[k]
            if value is None:
                if not param.nullable:
                    raise ValueError(f"{self.name}: {param.name} is required")
                continue
            tensor = getattr(value, "tensor", None)
            if tensor is None:  # a bare address: nothing to check it against
                continue
            if not tensor.is_cpu or (dtypes is not None and tensor.dtype not in dtypes):
                raise ValueError(f"{self.name}: {param.name} must be a CPU {param.element} tensor, "
                                 f"not {tensor.dtype} on {tensor.device}")
            if param.strided:  # read through strides: every element must lie inside the tensor's storage
                storage = tensor.untyped_storage()
                if count and tensor.data_ptr() + count * tensor.element_size() > storage.data_ptr() + storage.nbytes():
                    raise ValueError(f"{self.name}: {param.name}: the kernel reads {count} values from here, "
                                     "past the end of the tensor")
            elif tensor.numel() < count or not tensor.is_contiguous():
                raise ValueError(f"{self.name}: {param.name} must be contiguous with at least {count} values "
                                 f"(got {tuple(tensor.shape)}, contiguous={tensor.is_contiguous()})")
            if bounds is not None and count:
                self._check_indices(param, tensor, count, layout, *bounds)

    def _sizes(self, args: tuple) -> list[tuple]:
        """Per array parameter, (count, layout, index bounds) for these size arguments (remembered: a caller's
        steps mostly repeat them): the elements it touches from the pointer on, the (shape, strides) of a
        strided one, the [low, high) of an index array."""
        key = tuple(args[k] for k, _ in self._size_slots)
        sizes = self._sizes_seen.get(key)
        if sizes is None:
            scalars = {}
            for (_, name), value in zip(self._size_slots, key):
                if value < 0:
                    raise ValueError(f"{self.name}: {name} = {value} is negative")
                scalars[name] = value
            def value(expression):
                return eval(_compiled(expression), _NO_BUILTINS, scalars)

            sizes = []
            for _, param, _ in self._array_slots:
                layout = None
                if param.strided:  # the count is the span from the first element to one past the last
                    layout = [value(e) for e in param.shape], [value(e) for e in param.strides]
                    count = 0 if 0 in layout[0] else 1 + sum((n - 1) * stride for n, stride in zip(*layout))
                else:
                    count = max(0, value(param.count))
                bounds = None if param.index_range is None else tuple(value(bound) for bound in param.index_range)
                sizes.append((count, layout, bounds))
            if len(self._sizes_seen) > 64:
                self._sizes_seen.clear()
            self._sizes_seen[key] = sizes
        return sizes

    def _check_indices(self, param: Param, tensor: torch.Tensor, count: int, layout: tuple | None, low: int,
                       high: int) -> None:
        """All values the kernel reads from ``tensor`` lie in [low, high).

        The first call on an index tensor checks the whole tensor it is a view of (an epoch's labels,
        say) and remembers the result until that tensor is written to; calls that read inside it are
        then free. Where that whole tensor holds other values too (padding, another set's rows), the
        values this call reads are checked instead, each call.
        """
        root = tensor if tensor._base is None else tensor._base
        start = tensor.data_ptr()
        end = start + count * tensor.element_size()
        seen = self._checked.get(param.name)  # (tensor, version, smallest, largest, start, end): all of it valid
        if (seen is not None and seen[0]() is root and seen[1] == root._version and low <= seen[2] and seen[3] < high
                and seen[4] <= start and end <= seen[5]):
            return
        root_start = root.data_ptr()
        root_end = root_start + root.numel() * root.element_size()
        if root.dtype == tensor.dtype and root.is_contiguous() and root_start <= start and end <= root_end:
            smallest, largest = (int(v) for v in torch.aminmax(root))
            if low <= smallest and largest < high:
                self._checked[param.name] = (weakref.ref(root), root._version, smallest, largest, root_start, root_end)
                return
        # exactly the values the kernel reads (not the gaps between a strided array's rows)
        values = tensor.as_strided(*layout) if layout else tensor.reshape(-1)[:count]
        smallest, largest = (int(v) for v in torch.aminmax(values))
        if smallest < low or largest >= high:
            bad = smallest if smallest < low else largest
            raise KernelError(self.name, f"{param.name} holds {bad}, outside [{low}, {high})")
