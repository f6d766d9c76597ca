"""onnx2torch modules to native torch ops: the ONNX backend's own canonicalisation pass.

onnx2torch converts each ONNX node into a module of its own (``OnnxTranspose``, ``OnnxReshape``,
``OnnxBinaryMathOperation``, ...). :class:`Onnx2TorchNative` replaces them with the native torch
modules and functions they compute, so that the PyTorch backend (tap discovery, the other
canonicalisation passes, the closed form) sees the same graph it sees for a PyTorch model and
never names onnx2torch. It runs before :data:`ssa_torch.canon.DEFAULT_PASSES`; the parity check
against onnxruntime runs again on the result (``OnnxNetwork``).

Every rewritten node keeps the name it is shown under (the ONNX node name), so taps named by
hand (``--taps``) still resolve. Modules with no native equivalent stay; the one of them that
matters for tap discovery, ``OnnxHardSigmoid`` with ONNX's own slope (0.2), is registered as a
hard-sigmoid with :func:`ssa_torch.kinds.register_kind`.
"""

from __future__ import annotations

import operator
from collections.abc import Callable
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F
from ssa_torch.canon import (
    CanonPass,
    PassContext,
    batch_free_reshape,
    fresh_module_path,
    replace_node,
)
from ssa_torch.kinds import NAME_KEY, display_name, register_kind
from torch import fx

__all__ = ["Onnx2TorchNative", "register_onnx2torch_kinds"]

_registered = False


def register_onnx2torch_kinds() -> None:
    """Register the onnx2torch classes that stay in canonical graphs with the op-kind classifier."""
    global _registered
    if _registered:
        return
    from onnx2torch.node_converters.activations import OnnxHardSigmoid

    register_kind(OnnxHardSigmoid, "hardsigmoid")
    _registered = True


def _is_onnx2torch(mod: nn.Module) -> bool:
    """A module of onnx2torch's, or of the converters :mod:`ssa_onnx.compat` adds to it."""
    return type(mod).__module__.startswith(("onnx2torch.", "ssa_onnx.compat"))


def _swap(gm: fx.GraphModule, node: fx.Node, new: nn.Module) -> None:
    """Put ``new`` where the node's module was (same path, so the node and its name stay)."""
    path = str(node.target)
    parent = gm.get_submodule(path.rsplit(".", 1)[0]) if "." in path else gm
    setattr(parent, path.rsplit(".", 1)[-1], new)


def _to_function(node: fx.Node, fn: Callable, args: tuple, kwargs: dict | None = None) -> None:
    """Turn the module call ``node`` into ``fn(*args, **kwargs)``, keeping its name."""
    node.meta.setdefault(NAME_KEY, display_name(node))
    node.op = "call_function"
    node.target = fn
    node.args = args
    node.kwargs = kwargs or {}


def _number(v: Any) -> float | None:
    if v is None:
        return None
    if isinstance(v, torch.Tensor):
        return float(v.item()) if v.numel() == 1 else None
    return float(v)


class Onnx2TorchNative(CanonPass):
    """onnx2torch's modules to the native torch modules and functions they compute."""

    name = "onnx2torch-native"
    description = ("onnx2torch modules (Transpose, Reshape, MatMul, Add/Sub/Mul/Div, Concat, Cast, Clip, ...) to "
                   "native torch")

    def run(self, gm: fx.GraphModule, ctx: PassContext) -> int:
        register_onnx2torch_kinds()
        count = 0
        values = ctx.values(1)
        for node in list(gm.graph.nodes):
            if node.op != "call_module" or ctx.protected(node):
                continue
            mod = gm.get_submodule(str(node.target))
            if isinstance(mod, nn.Sequential):
                count += self._sequential(gm, node, mod)
                continue
            if not _is_onnx2torch(mod):
                continue
            handler = getattr(self, "_" + type(mod).__name__, None)
            if handler is not None and handler(gm, ctx, node, mod, values):
                count += 1
        return count

    # -- structure -------------------------------------------------------------------------------
    def _sequential(self, gm: fx.GraphModule, node: fx.Node, seq: nn.Sequential) -> int:
        """onnx2torch writes a Conv / MaxPool / AvgPool with asymmetric pads as Sequential(pad, op)."""
        if len(seq) != 2 or type(seq[0]).__name__ != "OnnxPadStatic" or len(node.args) != 1:
            return 0
        pad: Any = seq[0]  # onnx2torch's OnnxPadStatic: pads, mode, constant_value
        with gm.graph.inserting_before(node):
            padded = gm.graph.call_function(F.pad, (node.args[0], tuple(int(p) for p in pad.pads)),
                                            {"mode": pad.mode, "value": float(pad.constant_value)})
            op = gm.graph.call_module(f"{node.target}.1", (padded,))
        op.meta[NAME_KEY] = display_name(node)
        replace_node(node, op)
        return 1

    def _OnnxConstant(self, gm, ctx, node, mod, values) -> bool:
        value = values.get(node.name)
        if not isinstance(value, torch.Tensor):
            return False
        path = fresh_module_path(gm, "const")
        holder, name = path.split(".")
        gm.get_submodule(holder).register_buffer(name, value.detach().clone())
        with gm.graph.inserting_before(node):
            new = gm.graph.get_attr(path)
        replace_node(node, new)
        return True

    def _OnnxTranspose(self, gm, ctx, node, mod, values) -> bool:
        value = values.get(node.name)
        if not isinstance(value, torch.Tensor):
            return False
        perm = mod.perm if mod.perm is not None else list(range(value.dim()))[::-1]
        _to_function(node, torch.permute, (node.args[0], tuple(int(p) for p in perm)))
        return True

    def _reshape(self, gm, ctx, node) -> bool:
        found = batch_free_reshape(ctx, node, node.args[0])
        if found is None:
            return False
        fn, args = found
        _to_function(node, fn, args)
        return True

    def _OnnxReshape(self, gm, ctx, node, mod, values) -> bool:
        return self._reshape(gm, ctx, node)

    def _OnnxFlatten(self, gm, ctx, node, mod, values) -> bool:
        return self._reshape(gm, ctx, node)

    _OnnxSqueezeStaticAxes = _OnnxSqueezeDynamicAxes = _OnnxFlatten
    _OnnxUnsqueezeStaticAxes = _OnnxUnsqueezeDynamicAxes = _OnnxFlatten

    def _OnnxConcat(self, gm, ctx, node, mod, values) -> bool:
        _to_function(node, torch.cat, (tuple(node.args),), {"dim": int(mod.axis)})
        return True

    def _OnnxMatMul(self, gm, ctx, node, mod, values) -> bool:
        _to_function(node, torch.matmul, tuple(node.args))
        return True

    def _OnnxBinaryMathOperation(self, gm, ctx, node, mod, values) -> bool:
        if mod.broadcast == 1 and mod.axis is not None:
            return False  # old-style broadcasting (opset < 7)
        fn = {torch.add: operator.add, torch.sub: operator.sub, torch.mul: operator.mul}.get(mod.math_op_function)
        if fn is None and getattr(mod.math_op_function, "__name__", "") == "_onnx_div":
            a, b = (values.get(a.name) if isinstance(a, fx.Node) else a for a in node.args[:2])
            floating = any(isinstance(v, torch.Tensor) and v.is_floating_point() for v in (a, b))
            fn = operator.truediv if floating else None
        if fn is None or len(node.args) != 2:
            return False
        _to_function(node, fn, tuple(node.args))
        return True

    def _OnnxCast(self, gm, ctx, node, mod, values) -> bool:
        node.meta.setdefault(NAME_KEY, display_name(node))
        node.op = "call_method"
        node.target = "to"
        node.args = (node.args[0], mod.torch_dtype)
        return True

    def _identity(self, gm, ctx, node, mod, values) -> bool:
        node.replace_all_uses_with(node.args[0])
        gm.graph.erase_node(node)
        return True

    _OnnxCopyIdentity = _identity

    def _OnnxDropoutDynamic(self, gm, ctx, node, mod, values) -> bool:
        return not mod.training and self._identity(gm, ctx, node, mod, values)

    def _OnnxPadStatic(self, gm, ctx, node, mod, values) -> bool:
        _to_function(node, F.pad, (node.args[0], tuple(int(p) for p in mod.pads)),
                     {"mode": mod.mode, "value": float(mod.constant_value)})
        return True

    def _OnnxPadDynamic(self, gm, ctx, node, mod, values) -> bool:
        """A Pad (opset >= 11) whose pads are computed from constants alone (``F.pad`` in a TorchScript export), or
        from the input's shape (SAME pads on an input of unfixed size, ``ssa_onnx.pads``): folded where they are
        the same at two batch sizes (they then depend on the image size only, which the analysis keeps)."""
        computed = ctx.computed()
        args = list(node.args)
        if mod.mode != "constant" or len(args) not in (2, 3) or node.kwargs:
            return False
        if isinstance(args[2] if len(args) == 3 else None, fx.Node) and args[2].name in computed:
            return False
        if isinstance(args[1], fx.Node) and args[1].name in computed:
            other = ctx.try_values(2)
            at_two = other.get(args[1].name) if other is not None else None
            here = values.get(args[1].name)
            if not (isinstance(here, torch.Tensor) and isinstance(at_two, torch.Tensor) and torch.equal(here, at_two)):
                return False
        pads = values.get(args[1].name) if isinstance(args[1], fx.Node) else None
        value = _number(values.get(args[2].name) if isinstance(args[2], fx.Node) else args[2]) if len(args) == 3 \
            else 0.0
        if not isinstance(pads, torch.Tensor) or pads.dim() != 1 or pads.numel() % 2 or value is None:
            return False
        half = [int(v) for v in pads.tolist()]
        begin, end = half[:len(half) // 2][::-1], half[len(half) // 2:][::-1]
        torch_pads = [v for pair in zip(begin, end, strict=True) for v in pair]  # last axis first, as F.pad
        while len(torch_pads) > 2 and torch_pads[-2:] == [0, 0]:  # leading axes (batch, channels) not padded
            torch_pads = torch_pads[:-2]
        _to_function(node, F.pad, (args[0], tuple(torch_pads)), {"mode": "constant", "value": value})
        return True

    def _OnnxReduceStaticAxes(self, gm, ctx, node, mod, values) -> bool:
        if mod.operation_type != "ReduceMean" or not mod.axes:
            return False
        _to_function(node, torch.mean, (node.args[0],), {"dim": tuple(int(a) for a in mod.axes),
                                                          "keepdim": bool(mod.keepdims)})
        return True

    # -- activations and pooling: native modules at the same path ----------------------------------
    def _OnnxClip(self, gm, ctx, node, mod, values) -> bool:
        lo, hi = _number(mod.min_val), _number(mod.max_val)
        if lo == 0 and hi is None:
            new: nn.Module = nn.ReLU()
        elif lo == 0 and hi == 6:
            new = nn.ReLU6()
        elif lo is not None and hi is not None:
            new = nn.Hardtanh(lo, hi)
        else:
            return False
        _swap(gm, node, new)
        return True

    def _OnnxHardSigmoid(self, gm, ctx, node, mod, values) -> bool:
        if abs(mod.alpha - 1.0 / 6.0) > 1e-6 or abs(mod.beta - 0.5) > 1e-6:
            return False  # ONNX's default slope 0.2: stays, registered as a hard-sigmoid
        _swap(gm, node, nn.Hardsigmoid())
        return True

    def _OnnxSoftmaxV1V11(self, gm, ctx, node, mod, values) -> bool:
        value = values.get(node.name)
        if not isinstance(value, torch.Tensor) or value.dim() != 2 or mod.axis not in (1, -1):
            return False
        _swap(gm, node, nn.LogSoftmax(dim=1) if mod.is_log else nn.Softmax(dim=1))
        return True

    def _OnnxFunction(self, gm, ctx, node, mod, values) -> bool:
        if mod.function is torch.tanh:
            _swap(gm, node, nn.Tanh())
        else:
            _to_function(node, mod.function, tuple(node.args))
        return True

    def _OnnxSlice(self, gm, ctx, node, mod, values) -> bool:
        """Slice with bounds computed from shapes (ShuffleNetV2's channel split): folded to ``x[..., a:b]`` where
        the bounds are the same at two batch sizes and leave the batch axis alone."""
        x, *bounds = node.args
        xv = values.get(x.name) if isinstance(x, fx.Node) else None
        other = ctx.try_values(2)
        if not isinstance(xv, torch.Tensor) or other is None or len(bounds) < 2:
            return False
        folded: list[list[int] | None] = []
        for b in bounds:
            if b is None:
                folded.append(None)
                continue
            v1 = values.get(b.name) if isinstance(b, fx.Node) and b.op != "get_attr" else ctx.const(b)
            v2 = other.get(b.name) if isinstance(b, fx.Node) and b.op != "get_attr" else v1
            if not isinstance(v1, torch.Tensor) or not isinstance(v2, torch.Tensor) or not torch.equal(v1, v2) \
                    or v1.is_floating_point():
                return False
            folded.append([int(i) for i in v1.reshape(-1).tolist()])
        starts, ends = folded[0], folded[1]
        axes = folded[2] if len(folded) > 2 and folded[2] is not None else list(range(len(starts or [])))
        steps = folded[3] if len(folded) > 3 and folded[3] is not None else [1] * len(axes)
        if starts is None or ends is None or not (len(starts) == len(ends) == len(axes) == len(steps)):
            return False
        index: list[Any] = [slice(None)] * xv.dim()
        for start, end, axis, step in zip(starts, ends, axes, steps, strict=True):
            axis %= xv.dim()
            if axis == 0 or step <= 0:
                return False  # the batch axis, or a reversed slice: left to onnx2torch
            index[axis] = slice(start, end, step)
        _to_function(node, operator.getitem, (x, tuple(index)))
        return True

    def _OnnxSplit18(self, gm, ctx, node, mod, values) -> bool:
        """Split-18 to ``torch.split`` with its sizes (constants), which :class:`ssa_torch.canon.SplitToSlices`
        then reads piece by piece (ShuffleNetV2's channel split, exported by the dynamo exporter)."""
        x, *rest = node.args
        xv = values.get(x.name) if isinstance(x, fx.Node) else None
        split = ctx.const(rest[0]) if rest and rest[0] is not None else None
        if not isinstance(xv, torch.Tensor) or (rest and rest[0] is not None and not isinstance(split, torch.Tensor)):
            return False
        _to_function(node, torch.split, (x, mod.sizes(xv, split)), {"dim": mod.axis})
        return True

    def _OnnxErf(self, gm, ctx, node, mod, values) -> bool:
        _to_function(node, torch.erf, tuple(node.args))  # GELU's erf form is then fused (FuseActivations)
        return True

    def _global_pool(self, gm, ctx, node, mod, values, new: dict[int, nn.Module]) -> bool:
        value = values.get(node.name)
        if not isinstance(value, torch.Tensor) or value.dim() not in new:
            return False
        _swap(gm, node, new[value.dim()])
        return True

    def _OnnxGlobalAveragePool(self, gm, ctx, node, mod, values) -> bool:
        return self._global_pool(gm, ctx, node, mod, values,
                                 {5: nn.AdaptiveAvgPool3d(1), 4: nn.AdaptiveAvgPool2d(1), 3: nn.AdaptiveAvgPool1d(1)})

    _OnnxGlobalAveragePoolWithKnownInputShape = _OnnxGlobalAveragePool

    def _GlobalMaxPool(self, gm, ctx, node, mod, values) -> bool:
        return self._global_pool(gm, ctx, node, mod, values,
                                 {5: nn.AdaptiveMaxPool3d(1), 4: nn.AdaptiveMaxPool2d(1), 3: nn.AdaptiveMaxPool1d(1)})

    def _OnnxPReLU(self, gm, ctx, node, mod, values) -> bool:
        x, slope = node.args
        w = ctx.const(slope)
        xv = values.get(x.name) if isinstance(x, fx.Node) else None
        if not isinstance(w, torch.Tensor) or not isinstance(xv, torch.Tensor) or xv.dim() < 2:
            return False
        if not (w.numel() == 1 or (w.shape[0] == xv.shape[1] and all(s == 1 for s in w.shape[1:]))):
            return False
        prelu = nn.PReLU(w.numel()).to(device=w.device, dtype=w.dtype)
        with torch.no_grad():
            prelu.weight.copy_(w.reshape(-1))
        prelu.requires_grad_(False)
        _swap(gm, node, prelu)
        node.args = (x,)
        return True
