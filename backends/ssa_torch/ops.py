"""Classification of torch.fx graph nodes into the op kinds tap discovery needs.

Works on graphs from ``torch.fx.symbolic_trace`` (modules, functions, methods),
from ``torch.export`` (aten ops) and from onnx2torch (its own module classes,
recognised by name so that onnx2torch stays an optional import here).
"""

from __future__ import annotations

import operator
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import fx

__all__ = ["node_kind", "target_name", "ACTIVATIONS", "is_mul", "is_add"]

ACTIVATIONS = {
    "relu", "relu6", "leaky_relu", "elu", "selu", "celu", "gelu", "silu", "hardswish", "mish",
    "prelu", "softplus", "sigmoid", "hardsigmoid", "tanh", "hardtanh", "rrelu", "swish", "softsign",
}

_MODULE_KINDS: dict[type, str] = {
    nn.ReLU: "relu", nn.ReLU6: "relu6", nn.LeakyReLU: "leaky_relu", nn.ELU: "elu", nn.SELU: "selu",
    nn.CELU: "celu", nn.GELU: "gelu", nn.SiLU: "silu", nn.Hardswish: "hardswish", nn.Mish: "mish",
    nn.PReLU: "prelu", nn.Softplus: "softplus", nn.Sigmoid: "sigmoid", nn.Hardsigmoid: "hardsigmoid",
    nn.Tanh: "tanh", nn.Hardtanh: "hardtanh", nn.RReLU: "rrelu", nn.Softsign: "softsign",
    nn.Conv1d: "conv", nn.Conv2d: "conv", nn.Conv3d: "conv", nn.Linear: "linear",
    nn.BatchNorm1d: "batchnorm", nn.BatchNorm2d: "batchnorm", nn.BatchNorm3d: "batchnorm",
    nn.MaxPool1d: "maxpool", nn.MaxPool2d: "maxpool", nn.AvgPool1d: "avgpool", nn.AvgPool2d: "avgpool",
    nn.AdaptiveAvgPool1d: "adaptive_avgpool", nn.AdaptiveAvgPool2d: "adaptive_avgpool",
    nn.AdaptiveMaxPool2d: "adaptive_maxpool",
    nn.Flatten: "flatten", nn.Dropout: "identity", nn.Dropout2d: "identity", nn.Identity: "identity",
    nn.Softmax: "softmax", nn.LogSoftmax: "log_softmax",
}

# onnx2torch converted modules, by class name (checked against onnx2torch 1.5's node_converters).
# Many ONNX ops convert to plain torch.nn modules and are covered by _MODULE_KINDS: Relu -> nn.ReLU,
# Clip(0, 6) -> nn.ReLU6, HardSwish -> nn.Hardswish, Sigmoid, LeakyRelu, Elu, Celu, Selu, Softplus,
# Softmax / LogSoftmax (opset >= 13) -> nn.Softmax / nn.LogSoftmax, Conv -> nn.Conv2d (inside an
# nn.Sequential after a padding module when the padding is asymmetric), Gemm with constant weights ->
# nn.Linear, BatchNormalization with constant statistics -> nn.BatchNorm2d, MaxPool / AveragePool,
# Flatten(axis=1) -> nn.Flatten, Dropout -> nn.Dropout. Softmax / LogSoftmax of opset < 13 convert to
# OnnxSoftmaxV1V11 (its ``is_log`` attribute tells which), Tanh to OnnxFunction (holding torch.tanh);
# see _module_kind.
_ONNX2TORCH_KINDS = {
    "OnnxHardSigmoid": "hardsigmoid", "OnnxPReLU": "prelu", "OnnxClip": "hardtanh", "OnnxErf": "other",
    "OnnxTranspose": "permute", "OnnxFlatten": "flatten", "OnnxReshape": "reshape",
    "OnnxGlobalAveragePoolWithKnownInputShape": "adaptive_avgpool", "OnnxGlobalAveragePool": "adaptive_avgpool",
    "OnnxBatchNorm": "batchnorm", "OnnxMatMul": "matmul", "OnnxGemm": "gemm",
    "OnnxCast": "identity", "OnnxCopyIdentity": "identity", "OnnxDropoutDynamic": "identity",
    "OnnxSqueezeStaticAxes": "reshape", "OnnxSqueezeDynamicAxes": "reshape",
    "OnnxUnsqueezeStaticAxes": "reshape", "OnnxUnsqueezeDynamicAxes": "reshape",
    "OnnxConcat": "cat", "OnnxPadStatic": "other", "OnnxPadDynamic": "other", "OnnxConstant": "constant",
    "OnnxShape": "meta",
}

_FUNCTION_KINDS: dict[Any, str] = {
    F.relu: "relu", torch.relu: "relu", F.relu6: "relu6", F.leaky_relu: "leaky_relu", F.elu: "elu",
    F.selu: "selu", F.celu: "celu", F.gelu: "gelu", F.silu: "silu", F.hardswish: "hardswish",
    F.mish: "mish", F.softplus: "softplus", torch.sigmoid: "sigmoid", F.sigmoid: "sigmoid",
    F.hardsigmoid: "hardsigmoid", torch.tanh: "tanh", F.tanh: "tanh", F.hardtanh: "hardtanh", F.prelu: "prelu",
    F.conv1d: "conv", F.conv2d: "conv", F.conv3d: "conv", F.linear: "linear",
    F.max_pool2d: "maxpool", F.avg_pool2d: "avgpool", F.adaptive_avg_pool2d: "adaptive_avgpool",
    F.adaptive_max_pool2d: "adaptive_maxpool", F.batch_norm: "batchnorm",
    torch.flatten: "flatten", torch.reshape: "reshape", torch.permute: "permute", torch.transpose: "transpose",
    F.softmax: "softmax", torch.softmax: "softmax", F.log_softmax: "log_softmax", torch.log_softmax: "log_softmax",
    F.dropout: "identity", torch.add: "add", operator.add: "add", operator.iadd: "add", torch.sub: "sub",
    operator.sub: "sub", torch.mul: "mul", operator.mul: "mul", operator.imul: "mul", torch.matmul: "matmul",
    operator.matmul: "matmul", operator.getitem: "getitem", torch.cat: "cat",
}

_METHOD_KINDS = {
    "relu": "relu", "relu_": "relu", "sigmoid": "sigmoid", "sigmoid_": "sigmoid", "tanh": "tanh",
    "view": "reshape", "reshape": "reshape", "flatten": "flatten", "permute": "permute",
    "transpose": "transpose", "add": "add", "add_": "add", "mul": "mul", "mul_": "mul", "sub": "sub",
    "softmax": "softmax", "log_softmax": "log_softmax", "contiguous": "identity", "size": "meta",
    "squeeze": "reshape", "unsqueeze": "reshape", "mean": "other", "matmul": "matmul",
}

_ATEN_KINDS = {
    "relu": "relu", "relu_": "relu", "relu6": "relu6", "hardtanh": "hardtanh", "hardtanh_": "hardtanh",
    "leaky_relu": "leaky_relu", "elu": "elu", "selu": "selu", "celu": "celu", "gelu": "gelu", "silu": "silu",
    "silu_": "silu", "hardswish": "hardswish", "hardswish_": "hardswish", "mish": "mish", "softplus": "softplus",
    "sigmoid": "sigmoid", "hardsigmoid": "hardsigmoid", "tanh": "tanh", "prelu": "prelu", "_prelu_kernel": "prelu",
    "conv1d": "conv", "conv2d": "conv", "conv3d": "conv", "convolution": "conv", "linear": "linear",
    "addmm": "linear", "max_pool2d": "maxpool", "max_pool2d_with_indices": "maxpool", "avg_pool2d": "avgpool",
    "adaptive_avg_pool2d": "adaptive_avgpool", "_adaptive_avg_pool2d": "adaptive_avgpool",
    "_native_batch_norm_legit_no_training": "batchnorm", "batch_norm": "batchnorm",
    "flatten": "flatten", "view": "reshape", "reshape": "reshape", "_unsafe_view": "reshape",
    "permute": "permute", "transpose": "transpose", "t": "transpose", "add": "add", "add_": "add",
    "sub": "sub", "mul": "mul", "mul_": "mul", "_softmax": "softmax", "softmax": "softmax",
    "_log_softmax": "log_softmax", "log_softmax": "log_softmax", "dropout": "identity", "clone": "identity",
    "contiguous": "identity", "alias": "identity", "detach": "identity", "mm": "matmul", "matmul": "matmul",
    "cat": "cat", "mean": "other",
}


def target_name(node: fx.Node, modules: dict[str, nn.Module]) -> str:
    """A short, human-readable name of what the node computes."""
    if node.op == "call_module":
        return type(modules[node.target]).__name__
    if node.op == "call_function":
        return getattr(node.target, "__name__", str(node.target))
    if node.op == "call_method":
        return f".{node.target}()"
    return node.op


def _module_kind(mod: nn.Module) -> str:
    for cls in type(mod).__mro__:
        if cls in _MODULE_KINDS:
            return _MODULE_KINDS[cls]
    name = type(mod).__name__
    if name == "OnnxSoftmaxV1V11":  # onnx2torch: Softmax / LogSoftmax of opset < 13
        return "log_softmax" if getattr(mod, "is_log", False) else "softmax"
    if name == "OnnxBinaryMathOperation":  # onnx2torch: Add, Sub, Mul, Div
        op = getattr(mod, "math_op_function", None)
        kind = {torch.add: "add", torch.sub: "sub", torch.mul: "mul", torch.div: "div"}.get(op)
        if kind is None and getattr(op, "__name__", "") == "_onnx_div":
            kind = "div"
        return kind or "other"
    if name == "OnnxFunction":  # onnx2torch: Tanh, Exp, Log, Abs, ... as one module holding the torch function
        return "tanh" if getattr(mod, "function", None) is torch.tanh else "other"
    if name in _ONNX2TORCH_KINDS:
        return _ONNX2TORCH_KINDS[name]
    if isinstance(mod, nn.Sequential) and len(mod) > 0:
        # onnx2torch wraps a Conv / MaxPool / AvgPool with asymmetric padding as Sequential(pad, op)
        inner = [_module_kind(m) for m in mod]
        if all(k in ("other", "identity") for k in inner[:-1]) and inner[-1] in (
                "conv", "maxpool", "avgpool"):
            return inner[-1]
    return "other"


def node_kind(node: fx.Node, modules: dict[str, nn.Module]) -> str:
    """The op kind of a node ("relu", "conv", "add", "permute", ..., "other")."""
    if node.op in ("placeholder", "output", "get_attr"):
        return node.op
    if node.op == "call_module":
        return _module_kind(modules[node.target])
    if node.op == "call_method":
        return _METHOD_KINDS.get(str(node.target), "other")
    target = node.target
    try:
        if target in _FUNCTION_KINDS:
            return _FUNCTION_KINDS[target]
    except TypeError:
        pass
    if isinstance(target, torch._ops.OpOverload):
        return _ATEN_KINDS.get(target.overloadpacket.__name__, "other")
    if isinstance(target, torch._ops.OpOverloadPacket):
        return _ATEN_KINDS.get(target.__name__, "other")
    return "other"


def is_mul(kind: str) -> bool:
    return kind == "mul"


def is_add(kind: str) -> bool:
    return kind in ("add", "sub")
