"""Op kinds: the one place that says what a torch.fx node computes.

Every part of the PyTorch backend (canonicalisation, tap discovery, the closed form) asks
:func:`node_kind` what a node is and tests the answer against the families below; no other
module names torch functions, methods or module classes (like zennit's ``types.py``).

Graphs come from ``torch.fx.symbolic_trace`` (modules, functions, methods), from
``torch.export`` (aten ops) and from other front ends after their own canonicalisation (the
ONNX backend turns its converter's modules into native torch ones first). A front end or plugin
whose graphs hold other callables registers them with :func:`register_kind`.
"""

from __future__ import annotations

import operator
from collections.abc import Callable, Mapping
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import fx

__all__ = [
    "node_kind", "target_name", "display_name", "register_kind", "perm_of", "mean_dims",
    "ACTIVATIONS", "GATE_ACTIVATIONS", "LAYERS", "POOLING", "PERMUTATIONS", "RESHAPES", "SHAPE_ONLY",
    "SUMS", "ARITHMETIC", "CHANNEL_FIRST", "SOFTMAX", "NO_CLOSED_FORM", "NAME_KEY", "STREAM_NORMS",
]

# -- families ------------------------------------------------------------------------------------

#: pointwise activation functions: their outputs are the default taps (method doc, section 3)
ACTIVATIONS = frozenset({
    "relu", "relu6", "leaky_relu", "elu", "selu", "celu", "gelu", "silu", "hardswish", "mish",
    "prelu", "softplus", "sigmoid", "hardsigmoid", "tanh", "hardtanh", "rrelu", "swish", "softsign",
})
#: activations that are gates (not taps) when every consumer multiplies them with a computed tensor
GATE_ACTIVATIONS = frozenset({"sigmoid", "hardsigmoid"})
#: linear layers with a weight: the "layer" of a closed-form step
LAYERS = frozenset({"conv", "linear", "matmul"})
#: pooling and spatial means: keep channels apart, mix positions
POOLING = frozenset({"maxpool", "avgpool", "adaptive_avgpool", "adaptive_maxpool", "mean"})
PERMUTATIONS = frozenset({"permute", "transpose"})
RESHAPES = frozenset({"flatten", "reshape"})
#: ops that only re-index their first input (a gate may pass through them on its way to the multiply)
SHAPE_ONLY = frozenset({"getitem", "reshape", "flatten", "permute", "transpose", "identity"})
SUMS = frozenset({"add", "sub"})
ARITHMETIC = frozenset({"add", "sub", "mul", "div"})
#: ops whose output has its channels on axis 1
CHANNEL_FIRST = frozenset({"conv", "batchnorm", "maxpool", "avgpool", "adaptive_avgpool", "adaptive_maxpool"})
SOFTMAX = frozenset({"softmax", "log_softmax"})
#: normalisations that mix the channels of a position: a residual addition feeding one is a stream tap
#: (method doc, section 4b)
STREAM_NORMS = frozenset({"layernorm", "groupnorm", "rmsnorm"})
#: ops for which the closed form of method doc section 6 cannot exist, and why (``ssa check`` says so)
NO_CLOSED_FORM: Mapping[str, str] = {
    "layernorm": "layer normalisation mixes the channels of a position (no closed form)",
    "groupnorm": "group normalisation mixes channels (no closed form)",
    "rmsnorm": "RMS normalisation mixes the channels of a position (no closed form)",
    "instancenorm": "instance normalisation depends on the whole feature map (no closed form)",
    "lrn": "local response normalisation mixes channels (no closed form)",
}

#: key of ``node.meta`` holding the name a node is shown under when a pass replaced the original node
NAME_KEY = "ssa_name"

# -- tables ---------------------------------------------------------------------------------------

_MODULE_KINDS: dict[type, str] = {
    nn.ReLU: "relu", nn.ReLU6: "relu6", nn.LeakyReLU: "leaky_relu", nn.ELU: "elu", nn.SELU: "selu",
    nn.CELU: "celu", nn.GELU: "gelu", nn.SiLU: "silu", nn.Hardswish: "hardswish", nn.Mish: "mish",
    nn.PReLU: "prelu", nn.Softplus: "softplus", nn.Sigmoid: "sigmoid", nn.Hardsigmoid: "hardsigmoid",
    nn.Tanh: "tanh", nn.Hardtanh: "hardtanh", nn.RReLU: "rrelu", nn.Softsign: "softsign",
    nn.Conv1d: "conv", nn.Conv2d: "conv", nn.Conv3d: "conv", nn.Linear: "linear",
    nn.BatchNorm1d: "batchnorm", nn.BatchNorm2d: "batchnorm", nn.BatchNorm3d: "batchnorm",
    nn.LayerNorm: "layernorm", nn.RMSNorm: "rmsnorm", nn.GroupNorm: "groupnorm", nn.LocalResponseNorm: "lrn",
    nn.InstanceNorm1d: "instancenorm", nn.InstanceNorm2d: "instancenorm",
    nn.MaxPool1d: "maxpool", nn.MaxPool2d: "maxpool", nn.AvgPool1d: "avgpool", nn.AvgPool2d: "avgpool",
    nn.AdaptiveAvgPool1d: "adaptive_avgpool", nn.AdaptiveAvgPool2d: "adaptive_avgpool",
    nn.AdaptiveMaxPool1d: "adaptive_maxpool", nn.AdaptiveMaxPool2d: "adaptive_maxpool",
    nn.MaxPool3d: "maxpool", nn.AvgPool3d: "avgpool", nn.AdaptiveAvgPool3d: "adaptive_avgpool",
    nn.AdaptiveMaxPool3d: "adaptive_maxpool",
    nn.Flatten: "flatten", nn.Dropout: "identity", nn.Dropout2d: "identity", nn.Identity: "identity",
    nn.Softmax: "softmax", nn.LogSoftmax: "log_softmax",
}

_FUNCTION_KINDS: dict[Any, str] = {
    F.relu: "relu", torch.relu: "relu", F.relu6: "relu6", F.leaky_relu: "leaky_relu", F.elu: "elu",
    F.selu: "selu", F.celu: "celu", F.gelu: "gelu", F.silu: "silu", F.hardswish: "hardswish",
    F.mish: "mish", F.softplus: "softplus", torch.sigmoid: "sigmoid", F.sigmoid: "sigmoid",
    F.hardsigmoid: "hardsigmoid", torch.tanh: "tanh", F.tanh: "tanh", F.hardtanh: "hardtanh", F.prelu: "prelu",
    F.conv1d: "conv", F.conv2d: "conv", F.conv3d: "conv", F.linear: "linear",
    F.max_pool2d: "maxpool", F.avg_pool2d: "avgpool", F.adaptive_avg_pool2d: "adaptive_avgpool",
    F.adaptive_max_pool2d: "adaptive_maxpool", F.batch_norm: "batchnorm", F.layer_norm: "layernorm",
    F.rms_norm: "rmsnorm", F.group_norm: "groupnorm", F.local_response_norm: "lrn", F.instance_norm: "instancenorm",
    torch.flatten: "flatten", torch.reshape: "reshape", torch.permute: "permute", torch.transpose: "transpose",
    torch.swapaxes: "transpose", torch.swapdims: "transpose",
    F.softmax: "softmax", torch.softmax: "softmax", F.log_softmax: "log_softmax", torch.log_softmax: "log_softmax",
    torch.erf: "erf", torch.special.erf: "erf",
    F.dropout: "identity", torch.add: "add", operator.add: "add", operator.iadd: "add", torch.sub: "sub",
    operator.sub: "sub", operator.isub: "sub", torch.mul: "mul", operator.mul: "mul", operator.imul: "mul",
    torch.div: "div", operator.truediv: "div", operator.itruediv: "div", torch.matmul: "matmul",
    operator.matmul: "matmul", operator.getitem: "getitem", torch.cat: "cat", torch.concat: "cat",
    torch.mean: "mean", F.pad: "pad", getattr: "meta", torch.squeeze: "reshape", torch.unsqueeze: "reshape",
}

_METHOD_KINDS = {
    "relu": "relu", "relu_": "relu", "sigmoid": "sigmoid", "sigmoid_": "sigmoid", "tanh": "tanh", "erf": "erf",
    "view": "reshape", "reshape": "reshape", "flatten": "flatten", "permute": "permute",
    "transpose": "transpose", "swapaxes": "transpose", "swapdims": "transpose", "add": "add", "add_": "add",
    "mul": "mul", "mul_": "mul", "sub": "sub",
    "sub_": "sub", "div": "div", "div_": "div", "softmax": "softmax", "log_softmax": "log_softmax",
    "contiguous": "identity", "clone": "identity", "size": "meta", "dim": "meta", "squeeze": "reshape",
    "unsqueeze": "reshape", "mean": "mean", "matmul": "matmul", "to": "cast", "float": "cast", "type": "cast",
}

_ATEN_KINDS = {
    "relu": "relu", "relu_": "relu", "relu6": "relu6", "hardtanh": "hardtanh", "hardtanh_": "hardtanh",
    "leaky_relu": "leaky_relu", "elu": "elu", "selu": "selu", "celu": "celu", "gelu": "gelu", "silu": "silu",
    "silu_": "silu", "hardswish": "hardswish", "hardswish_": "hardswish", "mish": "mish", "softplus": "softplus",
    "sigmoid": "sigmoid", "hardsigmoid": "hardsigmoid", "tanh": "tanh", "erf": "erf", "prelu": "prelu",
    "_prelu_kernel": "prelu",
    "conv1d": "conv", "conv2d": "conv", "conv3d": "conv", "convolution": "conv", "linear": "linear",
    "addmm": "linear", "max_pool2d": "maxpool", "max_pool2d_with_indices": "maxpool", "avg_pool2d": "avgpool",
    "adaptive_avg_pool2d": "adaptive_avgpool", "_adaptive_avg_pool2d": "adaptive_avgpool",
    "_native_batch_norm_legit_no_training": "batchnorm", "batch_norm": "batchnorm",
    "layer_norm": "layernorm", "native_layer_norm": "layernorm", "rms_norm": "rmsnorm", "group_norm": "groupnorm",
    "native_group_norm": "groupnorm", "instance_norm": "instancenorm",
    "flatten": "flatten", "view": "reshape", "reshape": "reshape", "_unsafe_view": "reshape",
    "squeeze": "reshape", "unsqueeze": "reshape",
    "permute": "permute", "transpose": "transpose", "t": "transpose", "add": "add", "add_": "add",
    "sub": "sub", "sub_": "sub", "mul": "mul", "mul_": "mul", "div": "div", "div_": "div",
    "_softmax": "softmax", "softmax": "softmax",
    "_log_softmax": "log_softmax", "log_softmax": "log_softmax", "dropout": "identity", "clone": "identity",
    "contiguous": "identity", "alias": "identity", "detach": "identity", "mm": "matmul", "matmul": "matmul",
    "cat": "cat", "mean": "mean", "_to_copy": "cast", "to": "cast", "constant_pad_nd": "pad", "pad": "pad",
    "sym_size": "meta", "size": "meta",
}

_REGISTERED_MODULES: dict[type, str | Callable[[nn.Module], str]] = {}
_REGISTERED_FUNCTIONS: dict[Any, str] = {}


def register_kind(target: Any, kind: str | Callable[[nn.Module], str]) -> None:
    """Classify ``target`` as ``kind`` (for front ends and plugins).

    Parameters
    ----------
    target : an ``nn.Module`` subclass (its instances, and subclasses', in ``call_module`` nodes) or a
        callable (``call_function`` nodes).
    kind : the op kind, e.g. ``"relu"``, ``"conv"`` or a new kind that a registered closed form handles
        (``ssa_torch.closed_form.register_closed_form``); for a module class it may also be a function
        of the module instance returning the kind.
    """
    if isinstance(target, type) and issubclass(target, nn.Module):
        _REGISTERED_MODULES[target] = kind
    elif callable(target) and isinstance(kind, str):
        _REGISTERED_FUNCTIONS[target] = kind
    else:
        raise TypeError(f"register_kind expects an nn.Module subclass or a function and a kind, got {target!r}.")


def _module_kind(mod: nn.Module) -> str:
    for cls in type(mod).__mro__:
        found = _REGISTERED_MODULES.get(cls)
        if found is not None:
            return found(mod) if callable(found) else found
        if cls in _MODULE_KINDS:
            return _MODULE_KINDS[cls]
    return "other"


def node_kind(node: fx.Node, modules: Mapping[str, nn.Module]) -> str:
    """The op kind of a node ("relu", "conv", "add", "permute", ..., "other")."""
    if node.op in ("placeholder", "output", "get_attr"):
        return node.op
    if node.op == "call_module":
        return _module_kind(modules[node.target])
    if node.op == "call_method":
        return _METHOD_KINDS.get(str(node.target), "other")
    target = node.target
    try:
        if target in _REGISTERED_FUNCTIONS:
            return _REGISTERED_FUNCTIONS[target]
        if target in _FUNCTION_KINDS:
            return _FUNCTION_KINDS[target]
    except TypeError:
        pass
    if getattr(target, "__name__", "") == "stochastic_depth" and \
            str(getattr(target, "__module__", "")).startswith("torchvision."):
        return "identity"  # torchvision.ops.stochastic_depth: the input itself when not training
    if isinstance(target, torch._ops.OpOverload):
        return _ATEN_KINDS.get(target.overloadpacket.__name__, "other")
    if isinstance(target, torch._ops.OpOverloadPacket):
        return _ATEN_KINDS.get(target.__name__, "other")
    return "other"


def target_name(node: fx.Node, modules: Mapping[str, nn.Module]) -> str:
    """A short, human-readable name of what the node computes (the module class, function or method)."""
    if node.op == "call_module":
        return type(modules[node.target]).__name__
    if node.op == "call_function":
        return getattr(node.target, "__name__", str(node.target))
    if node.op == "call_method":
        return f".{node.target}()"
    return node.op


def display_name(node: fx.Node) -> str:
    """The name a node is shown under: the module path for module calls, else the node name.

    A canonicalisation pass that replaces a node keeps the original name in ``node.meta[NAME_KEY]``.
    """
    kept = node.meta.get(NAME_KEY)
    if kept:
        return str(kept)
    return str(node.target) if node.op == "call_module" else node.name


def perm_of(node: fx.Node, kind: str, modules: Mapping[str, nn.Module], ndim: int) -> list[int] | None:
    """The permutation a permute / transpose node applies (output axis j = input axis perm[j])."""
    if kind == "permute":
        if node.op == "call_module":
            perm = getattr(modules[node.target], "perm", None)
            return [int(p) % ndim for p in perm] if perm is not None else None
        dims = node.kwargs.get("dims", node.args[1:])
        if len(dims) == 1 and isinstance(dims[0], (list, tuple)):
            dims = dims[0]
        if not dims or not all(isinstance(d, int) for d in dims):
            return None
        return [int(d) % ndim for d in dims]
    if kind == "transpose":
        if len(node.args) >= 3 and isinstance(node.args[1], int) and isinstance(node.args[2], int):
            a, b = int(node.args[1]) % ndim, int(node.args[2]) % ndim
        elif ndim == 2 and len(node.args) == 1:
            a, b = 0, 1
        else:
            return None
        perm = list(range(ndim))
        perm[a], perm[b] = perm[b], perm[a]
        return perm
    return None


def mean_dims(node: fx.Node, ndim: int) -> tuple[tuple[int, ...], bool] | None:
    """The reduced axes and ``keepdim`` of a mean node, or None when they are not constants."""
    args = list(node.args[1:])
    dims = node.kwargs.get("dim", args[0] if args else None)
    keep = node.kwargs.get("keepdim", args[1] if len(args) > 1 else False)
    if dims is None:
        return None
    if isinstance(dims, int):
        dims = (dims,)
    if not isinstance(dims, (list, tuple)) or not all(isinstance(d, int) for d in dims) or not isinstance(keep, bool):
        return None
    return tuple(sorted(int(d) % ndim for d in dims)), keep
