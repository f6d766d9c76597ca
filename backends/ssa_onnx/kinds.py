"""Op kinds of onnx2torch's own modules, registered with the PyTorch backend's classifier.

The PyTorch backend classifies native torch ops only (:mod:`ssa_torch.kinds`); onnx2torch's
classes are named here, in the ONNX backend, and registered through the public
:func:`ssa_torch.kinds.register_kind` (checked against onnx2torch 1.5's node_converters).
"""

from __future__ import annotations

import torch

from ssa_torch.kinds import register_kind

__all__ = ["register_onnx2torch_kinds"]

_installed = False

_SIMPLE = {
    "OnnxHardSigmoid": "hardsigmoid", "OnnxPReLU": "prelu", "OnnxClip": "hardtanh",
    "OnnxTranspose": "permute", "OnnxFlatten": "flatten", "OnnxReshape": "reshape",
    "OnnxGlobalAveragePoolWithKnownInputShape": "adaptive_avgpool", "OnnxGlobalAveragePool": "adaptive_avgpool",
    "OnnxBatchNorm": "batchnorm", "OnnxMatMul": "matmul", "OnnxGemm": "gemm",
    "OnnxCast": "identity", "OnnxCopyIdentity": "identity", "OnnxDropoutDynamic": "identity",
    "OnnxSqueezeStaticAxes": "reshape", "OnnxSqueezeDynamicAxes": "reshape",
    "OnnxUnsqueezeStaticAxes": "reshape", "OnnxUnsqueezeDynamicAxes": "reshape",
    "OnnxConcat": "cat", "OnnxPadStatic": "other", "OnnxPadDynamic": "other", "OnnxConstant": "constant",
    "OnnxShape": "meta",
}


def _softmax_v1(mod) -> str:
    return "log_softmax" if getattr(mod, "is_log", False) else "softmax"


def _binary(mod) -> str:
    op = getattr(mod, "math_op_function", None)
    kind = {torch.add: "add", torch.sub: "sub", torch.mul: "mul", torch.div: "div"}.get(op)
    if kind is None and getattr(op, "__name__", "") == "_onnx_div":
        kind = "div"
    return kind or "other"


def _function(mod) -> str:
    return "tanh" if getattr(mod, "function", None) is torch.tanh else "other"


def _sequential(mod) -> str:
    # onnx2torch wraps a Conv / MaxPool / AvgPool with asymmetric padding as Sequential(pad, op)
    from ssa_torch.kinds import node_kind  # noqa: F401  (the classifier of the inner modules)
    from ssa_torch.kinds import _module_kind

    inner = [_module_kind(m) for m in mod]
    if inner and all(k in ("other", "identity") for k in inner[:-1]) and inner[-1] in ("conv", "maxpool", "avgpool"):
        return inner[-1]
    return "other"


def register_onnx2torch_kinds() -> None:
    """Register the op kinds of onnx2torch's module classes (once per process)."""
    global _installed
    if _installed:
        return
    import sys

    import onnx2torch.node_converters  # noqa: F401  (imports every converter module)

    classes = {}
    for modname, mod in list(sys.modules.items()):
        if modname.startswith("onnx2torch.node_converters.") and mod is not None:
            for name, obj in vars(mod).items():
                if isinstance(obj, type) and name.startswith("Onnx"):
                    classes[name] = obj
    for name, kind in _SIMPLE.items():
        if name in classes:
            register_kind(classes[name], kind)
    for name, fn in (("OnnxSoftmaxV1V11", _softmax_v1), ("OnnxBinaryMathOperation", _binary),
                     ("OnnxFunction", _function)):
        if name in classes:
            register_kind(classes[name], fn)
    register_kind(torch.nn.Sequential, _sequential)
    _installed = True
