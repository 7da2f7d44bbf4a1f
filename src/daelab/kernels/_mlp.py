"""The fused CPU training step for MLP DAEs: bf16 or fp32 matrix products in PyTorch, everything else in C.

On a 2-core CPU the study MLP's bf16 step spends more time outside its matrix products than in
them: PyTorch walks each (256, 512) activation 4-10 times per layer (BatchNorm statistics,
normalisation, dropout mask, scale, LeakyReLU, the autograd copies, and as many again backward),
draws noise and dropout masks with a serial Mersenne Twister, and runs Adam and the bf16 shadow
copy as separate passes. :class:`FusedMLP` computes the forward and backward by hand: the matrix
products go to PyTorch (oneDNN, bf16 in, bf16 out), and each layer's elementwise work is one C
function that reads and writes every value once or twice (``_fused.c``), using counter-based Philox
random numbers that do not depend on the thread count. The fp32 step (``precision="fp32"``, for CPUs
without native bf16, where a bf16 product is emulated and slower than fp32) is the same step with
fp32 activations and the master weights themselves in the products: the ``_f32`` kernels of
``_fused32.c``, and Adam without a bf16 copy. :func:`make_fused` builds it where the model, the
optimizer and the machine allow, and otherwise says once why not.

Semantics are those of the PyTorch path: same model, same Adam state (``torch.optim.Adam``'s
``step``/``exp_avg``/``exp_avg_sq``, so checkpoints move freely between the two paths), BatchNorm
running statistics updated as ``nn.BatchNorm1d`` does. Two differences: dropout masks and noise come
from Philox streams keyed by one 64-bit draw per step from the training generator (not from
PyTorch's global generator), and a Linear bias whose effect a BatchNorm cancels (the bias of a layer
feeding a BatchNorm, directly or through the next Linear) gets its exact gradient, 0, where autograd
returns rounding noise that Adam, dividing by its own tiny running scale, turns into a random walk.
"""
from __future__ import annotations

import logging

import torch
from torch import nn

from daelab.kernels._adam import FusedAdam
from daelab.kernels._loader import Kernels, draw_key, keep_threshold, load_kernels, ptr
from daelab.noise import Gaussian

log = logging.getLogger(__name__)
_WARNED: set[str] = set()  # reasons make_fused has already given, one warning each per process


class _Unsupported(Exception):
    """Why :func:`make_fused` cannot fuse a model or optimizer, in words for the warning."""


class _Layer:
    """One Linear of the MLP and what follows it: ``bn`` (BatchNorm [+ dropout] + LeakyReLU),
    ``linear`` (nothing: the bottleneck) or ``sigmoid`` (the output)."""

    def __init__(self, kind: str, linear: nn.Linear, bn: nn.BatchNorm1d | None = None, dropout: float = 0.0,
                 slope: float = 0.0):
        self.kind, self.linear, self.bn, self.dropout, self.slope = kind, linear, bn, dropout, slope
        self.threshold, self.keep_scale = keep_threshold(dropout), 1.0 / (1.0 - dropout)
        self.weight = self.bias = None  # the products' weights: set by use(), for the step's precision

    def use(self, dtype: torch.dtype) -> None:
        """Take the weights the products run on: bf16 shadows (rewritten by Adam), or fp32 views of the masters."""
        # (out, in); .to(float32) of an fp32 parameter is the parameter's own storage, updated in place by Adam
        self.weight = self.linear.weight.detach().to(dtype)
        self.bias = self.linear.bias.detach().to(dtype) if self.kind == "linear" else None


def _layers(model: nn.Module) -> list[_Layer]:
    """The MLP as a list of fusable layers; raises :class:`_Unsupported` saying which module does not fit."""
    modules = [(f"{part}.{k}", m) for part in ("encoder", "decoder")
               if isinstance(getattr(model, part, None), nn.Sequential) for k, m in enumerate(getattr(model, part))]
    if not modules:
        raise _Unsupported(f"{type(model).__name__} has no encoder/decoder nn.Sequential of layers")
    layers, i = [], 0
    while i < len(modules):
        name, linear = modules[i]
        if type(linear) is not nn.Linear or linear.bias is None:
            raise _Unsupported(f"{name} is {type(linear).__name__}, not an nn.Linear with a bias")
        rest = [m for _, m in modules[i + 1:]]
        if rest and type(rest[0]) is nn.BatchNorm1d:
            (bn_name, bn), i, dropout = modules[i + 1], i + 2, 0.0
            if not (bn.affine and bn.track_running_stats and bn.momentum is not None):
                raise _Unsupported(f"{bn_name} is a BatchNorm1d without affine weights, running statistics or a "
                                   "momentum")
            if i < len(modules) and isinstance(modules[i][1], nn.Dropout):
                dropout, i = modules[i][1].p, i + 1
            if i >= len(modules) or type(modules[i][1]) is not nn.LeakyReLU or modules[i][1].negative_slope <= 0:
                found = f"{modules[i][0]} is {type(modules[i][1]).__name__}" if i < len(modules) else "nothing comes"
                raise _Unsupported(f"{found} after the BatchNorm1d at {bn_name}, where the fused step needs a "
                                   "LeakyReLU with a positive slope")
            layers.append(_Layer("bn", linear, bn, dropout, modules[i][1].negative_slope))
            i += 1
        elif rest and type(rest[0]) is nn.Sigmoid and len(rest) == 1:
            layers.append(_Layer("sigmoid", linear))
            i += 2
        elif not rest or type(rest[0]) is nn.Linear:
            layers.append(_Layer("linear", linear))
            i += 1
        else:
            raise _Unsupported(f"{modules[i + 1][0]} is {type(rest[0]).__name__}, which the fused step does not do")
    if layers[-1].kind != "sigmoid":
        raise _Unsupported("the model does not end in nn.Linear + nn.Sigmoid")
    return layers


def _check_adam(optimizer: torch.optim.Optimizer, model: nn.Module) -> None:
    """Raise :class:`_Unsupported` unless ``optimizer`` is a plain one-group Adam over all of ``model``'s parameters."""
    if type(optimizer) is not torch.optim.Adam:
        raise _Unsupported(f"the optimizer is {type(optimizer).__name__}, not torch.optim.Adam")
    if len(optimizer.param_groups) != 1:
        raise _Unsupported(f"Adam has {len(optimizer.param_groups)} parameter groups, not 1")
    group = optimizer.param_groups[0]
    for option, plain in (("weight_decay", 0), ("amsgrad", False), ("maximize", False)):
        if group[option] != plain:
            raise _Unsupported(f"Adam has {option}={group[option]}")
    if {id(p) for p in group["params"]} != {id(p) for p in model.parameters()}:
        raise _Unsupported("Adam does not hold exactly the model's parameters")


def _check_parameters(model: nn.Module) -> None:
    for name, param in model.named_parameters():
        if param.dtype != torch.float32 or not param.is_contiguous():
            raise _Unsupported(f"parameter {name} is not a contiguous float32 tensor")


class FusedMLP:
    """A training policy (see :mod:`daelab.train._precision`) that runs whole steps itself: :meth:`step`.

    ``model`` keeps the fp32 master weights and BatchNorm statistics; ``optimizer`` (a plain
    ``torch.optim.Adam`` over all of them) keeps the Adam state, which this class updates in place.
    Build it with :func:`make_fused`, which returns None for models, optimizers or machines it does
    not handle.

    Parameters
    ----------
    model : the MLP DAE (fp32, on the CPU).
    optimizer : a plain ``torch.optim.Adam`` over exactly ``model``'s parameters.
    layers : ``model`` as fusable layers (``_layers``).
    lib : the loaded kernels.
    dtype : ``torch.bfloat16`` (bf16 products and activations, bf16 weight shadows) or ``torch.float32``
        (fp32 throughout: the products run on the master weights).
    """

    fused = True

    def __init__(self, model: nn.Module, optimizer: torch.optim.Adam, layers: list[_Layer], lib: Kernels,
                 dtype: torch.dtype = torch.bfloat16):
        if dtype not in (torch.bfloat16, torch.float32):
            raise ValueError(f"the fused step runs in bf16 or fp32, not {dtype}")
        self.module, self.dtype = model, dtype
        self.optimizer, self.layers, self.lib = optimizer, layers, lib
        self._suffix = "" if dtype == torch.bfloat16 else "_f32"  # the kernels of _fused.h for this precision
        for layer in layers:
            layer.use(dtype)
        self._buffers: dict[int, dict] = {}
        self._checked: set[int] = set()  # batch sizes whose buffers the kernels have checked once
        self._optimizer_step: FusedAdam | None = None
        self._grads: dict[torch.Tensor, torch.Tensor] = {}  # master parameter -> its gradient buffer
        for layer in layers:
            self._grads[layer.linear.weight] = torch.empty_like(layer.weight)  # self.dtype, from a matrix product
            self._grads[layer.linear.bias] = torch.zeros_like(layer.linear.bias)
            if layer.bn is not None:
                self._grads[layer.bn.weight] = torch.zeros_like(layer.bn.weight)
                self._grads[layer.bn.bias] = torch.zeros_like(layer.bn.bias)

    @property
    def grads(self) -> dict[str, torch.Tensor]:
        """The last :meth:`forward_backward`'s gradients by parameter name (:attr:`dtype` for Linear weights)."""
        names = {id(p): name for name, p in self.module.named_parameters()}
        return {names[id(p)]: g for p, g in self._grads.items()}

    def batch_state(self, batch: int) -> dict:
        """The work buffers for batch size ``batch`` (inputs, activations, dropout masks), made once."""
        if batch not in self._buffers:
            bf16 = self.dtype  # the activations' dtype (bf16 or fp32)
            first = self.layers[0].linear
            noisy32 = torch.empty(batch, first.in_features)
            buffers = {"clean": torch.empty(batch, self.layers[-1].linear.out_features), "noisy32": noisy32,
                       "input": noisy32 if bf16 == torch.float32 else torch.empty(batch, first.in_features, dtype=bf16),
                       "layers": []}
            for layer in self.layers:
                width = layer.linear.out_features
                entry = {"z": torch.empty(batch, width, dtype=bf16), "dz": torch.empty(batch, width, dtype=bf16),
                         "dact_in": torch.empty(batch, layer.linear.in_features, dtype=bf16)}
                if layer.kind == "bn":
                    entry.update(act=torch.empty(batch, width, dtype=bf16), mean=torch.empty(width),
                                 rstd=torch.empty(width))
                    if layer.dropout > 0:
                        entry["keep"] = torch.empty(batch, width, dtype=torch.uint8)
                buffers["layers"].append(entry)
            for below, above in zip(buffers["layers"], buffers["layers"][1:]):
                below["dact_out"] = above["dact_in"]  # the gradient a layer gets is what the next one computes
            self._buffers[batch] = buffers
        return self._buffers[batch]

    def step(self, data: torch.Tensor, index: torch.Tensor, noise, generator: torch.Generator) -> torch.Tensor:
        """One Adam step on ``data[index]`` with fresh ``noise``; returns the batch's mean loss (a 0-d tensor).

        Parameters as for :meth:`forward_backward`, which this follows with the Adam update.
        """
        loss = self.forward_backward(data, index, noise, generator)
        self._adam()
        return loss

    @torch.no_grad()
    def forward_backward(self, data: torch.Tensor, index: torch.Tensor, noise,
                         generator: torch.Generator) -> torch.Tensor:
        """Forward and backward of one batch: the mean MSE (a 0-d tensor), gradients in :attr:`grads`.

        Parameters
        ----------
        data : (N, D) float32 clean images in [0, 1], contiguous, on the CPU.
        index : (B,) int64 rows of ``data`` in this batch, each in [0, N).
        noise : a :class:`daelab.noise.NoiseModel`; the study's Gaussian is drawn inside the C gather.
        generator : the training generator; one 64-bit draw per step seeds noise and dropout.

        Raises
        ------
        ValueError : ``data`` or ``index`` of the wrong dtype, layout or width.
        ~daelab.kernels.KernelError : a row number outside ``data`` (checked before any work).
        """
        batch, width_in = len(index), self.layers[0].linear.in_features
        # the C gather reads fp32 rows of one block by int64 row numbers
        if data.dtype != torch.float32 or not data.is_contiguous() or index.dtype != torch.int64:
            raise ValueError("fused step needs contiguous float32 data and int64 indices")
        if data.dim() != 2 or data.shape[1] != width_in or index.dim() != 1 or batch == 0:
            raise ValueError(f"fused step needs (N, {width_in}) data and a non-empty (B,) index, "
                             f"not {tuple(data.shape)} and {tuple(index.shape)}")
        # a batch size's buffers (and the parameters) are checked against the kernels on its first step
        lib = self.lib.trusted if batch in self._checked else self.lib
        buffers = self.batch_state(batch)
        seed, suffix = draw_key(generator), self._suffix
        clean, noisy = buffers["clean"], buffers["input"]
        if isinstance(noise, Gaussian):  # always checked: data and index are the caller's
            getattr(self.lib, "gather_gaussian" + suffix)(ptr(data), data.shape[0], ptr(index), batch, data.shape[1],
                                                          noise.level, seed, 0, ptr(clean), ptr(noisy))
        else:
            torch.index_select(data, 0, index, out=clean)
            noise.apply_(clean, buffers["noisy32"], generator)
            if noisy is not buffers["noisy32"]:
                lib.to_bf16(ptr(buffers["noisy32"]), ptr(noisy), noisy.numel())
        activations = [noisy]
        for k, (layer, buf) in enumerate(zip(self.layers, buffers["layers"])):
            x = activations[-1]
            if layer.kind == "linear":
                torch.addmm(layer.bias, x, layer.weight.t(), out=buf["z"])
                activations.append(buf["z"])
                continue
            torch.mm(x, layer.weight.t(), out=buf["z"])
            if layer.kind == "bn":
                activations.append(self._bn_forward(lib, layer, buf, batch, seed, k + 1))
        out = self.layers[-1]
        width = out.linear.out_features
        sigmoid_mse, bn_backward = getattr(lib, "sigmoid_mse" + suffix), getattr(lib, "bn_backward" + suffix)
        total = sigmoid_mse(ptr(buffers["layers"][-1]["z"]), ptr(out.linear.bias), ptr(clean), batch, width,
                            1.0 / (batch * width), ptr(buffers["layers"][-1]["dz"]),
                            ptr(self._grads[out.linear.bias]))
        for k in range(len(self.layers) - 1, -1, -1):
            layer, buf, x = self.layers[k], buffers["layers"][k], activations[k]
            dz = buf["dz"]
            if layer.kind == "bn":
                bn, keep = layer.bn, buf.get("keep")
                bn_backward(ptr(buf["dact_out"]), ptr(buf["act"]), ptr(buf["z"]), batch, layer.linear.out_features,
                            ptr(keep), layer.keep_scale, layer.slope, ptr(bn.weight), ptr(buf["mean"]),
                            ptr(buf["rstd"]), ptr(dz), ptr(self._grads[bn.weight]), ptr(self._grads[bn.bias]))
            elif layer.kind == "linear":
                if self.layers[k + 1].kind != "bn":  # before a BatchNorm layer the bias has no effect: grad 0
                    torch.sum(buf["dact_out"], 0, dtype=torch.float32, out=self._grads[layer.linear.bias])
                dz = buf["dact_out"]
            torch.mm(dz.t(), x, out=self._grads[layer.linear.weight])
            if k:
                torch.mm(dz, layer.weight, out=buf["dact_in"])
        self._checked.add(batch)
        return torch.tensor(total / (batch * width))

    def _bn_forward(self, lib, layer: _Layer, buf: dict, batch: int, seed: int, stream: int) -> torch.Tensor:
        bn, keep, width = layer.bn, buf.get("keep"), layer.linear.out_features
        if keep is not None:
            lib.dropout_mask(seed, stream, keep.numel(), layer.threshold, ptr(keep), 0.0, None)
        bn_forward = getattr(lib, "bn_forward" + self._suffix)
        bn_forward(ptr(buf["z"]), batch, width, ptr(layer.linear.bias), ptr(bn.weight), ptr(bn.bias), bn.eps,
                   bn.momentum, ptr(bn.running_mean), ptr(bn.running_var), ptr(keep), layer.keep_scale, layer.slope,
                   ptr(buf["act"]), ptr(buf["mean"]), ptr(buf["rstd"]))
        bn.num_batches_tracked.add_(1)  # in place: `+=` would go through Module.__setattr__
        return buf["act"]

    def _adam(self) -> None:
        if self._optimizer_step is None:  # built at the first step: after any optimizer state was loaded
            shadows = {}
            if self.dtype == torch.bfloat16:  # fp32 products read the master weights themselves
                shadows = {layer.linear.weight: layer.weight for layer in self.layers}
                shadows.update({layer.linear.bias: layer.bias for layer in self.layers if layer.bias is not None})
            self._optimizer_step = FusedAdam(self.lib, self.optimizer, self._grads, shadows)
        self._optimizer_step.step()


def make_fused(model: nn.Module, optimizer: torch.optim.Optimizer, device: torch.device, precision: str = "bf16",
               variant: str | None = None) -> FusedMLP | None:
    """A :class:`FusedMLP` for ``model`` when it, the optimizer and this machine allow; else None.

    The caller asked for the fused kernels (``--kernels auto``, one CPU process; see
    :func:`~daelab.kernels.choose_path`), so where they cannot be used on a CPU the reason is logged
    as a warning, once per reason and process: a model or layer the fused step does not do, an
    optimizer other than plain Adam, parameters that are not contiguous fp32, or (logged by
    :func:`~daelab.kernels.load_kernels`) no usable C kernels. On other devices it returns None
    quietly: the kernels are CPU code.

    Parameters
    ----------
    model : the DAE.
    optimizer : its optimizer.
    device : where training runs.
    precision : ``"bf16"`` (bf16 products and activations; the default, as before) or ``"fp32"``.
    variant : the kernels' ISA variant (``native``, ``avx2``, ``scalar``; see
        :func:`~daelab.kernels.load_kernels`); default the one for this CPU (``DAELAB_ISA`` honoured).
    """
    dtypes = {"bf16": torch.bfloat16, "fp32": torch.float32}
    if precision not in dtypes:
        raise ValueError(f"the fused step runs in {' or '.join(dtypes)}, not {precision!r}")
    if device.type != "cpu":
        return None
    try:  # the model's structure first: for a model of another kind, that is the reason worth giving
        layers = _layers(model)
        _check_parameters(model)
        _check_adam(optimizer, model)
    except _Unsupported as unsupported:
        reason = str(unsupported)
        if reason not in _WARNED:
            _WARNED.add(reason)
            log.warning("fused CPU kernels not used: %s; training with PyTorch ops (slower)", reason)
        return None
    lib = load_kernels(variant)
    return None if lib is None else FusedMLP(model, optimizer, layers, lib, dtypes[precision])
