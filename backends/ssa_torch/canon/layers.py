"""Pass: linear layers written as functions become ``nn.Conv2d`` / ``nn.Linear`` modules.

``x @ W`` with a constant 2-D ``W`` (ONNX ``MatMul``, Keras dense layers), ``F.linear`` and
``F.conv2d`` (and their aten forms from ``torch.export``) with constant weights become module
calls, so that the folding pass and the closed form deal with one form of each layer. Each
rewritten node keeps its name; the new module lives under ``ssa_canon.``.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn as nn
from torch import fx

from ..kinds import NAME_KEY, display_name
from .base import CanonPass, PassContext, fresh_module_path

__all__ = ["LayersAsModules", "set_module"]


def set_module(gm: fx.GraphModule, node: fx.Node, module: nn.Module, stem: str, args: tuple) -> None:
    """Turn ``node`` into a call of ``module`` (registered under a fresh path) on ``args``, keeping its name."""
    node.meta.setdefault(NAME_KEY, display_name(node))
    path = fresh_module_path(gm, stem)
    gm.add_submodule(path, module)
    node.op = "call_module"
    node.target = path
    node.args = args
    node.kwargs = {}


def _args(node: fx.Node, names: tuple[str, ...], defaults: tuple) -> list[Any]:
    out = []
    for i, (name, default) in enumerate(zip(names, defaults, strict=True)):
        if i < len(node.args):
            out.append(node.args[i])
        else:
            out.append(node.kwargs.get(name, default))
    return out


def _pair(v: Any) -> tuple[int, int] | str | None:
    if isinstance(v, str):
        return v
    if isinstance(v, int):
        return (v, v)
    if isinstance(v, (list, tuple)) and all(isinstance(i, int) for i in v):
        return (int(v[0]), int(v[0])) if len(v) == 1 else (int(v[0]), int(v[1])) if len(v) == 2 else None
    return None


class LayersAsModules(CanonPass):
    """``matmul(x, W)``, ``F.linear`` and ``F.conv2d`` with constant weights to ``nn.Linear`` / ``nn.Conv2d``."""

    name = "layers-as-modules"
    description = "matmul / linear / conv2d functions with constant weights to nn.Linear / nn.Conv2d modules"

    def run(self, gm: fx.GraphModule, ctx: PassContext) -> int:
        count = 0
        computed = ctx.computed()
        for node in list(gm.graph.nodes):
            if node.op not in ("call_function", "call_method") or ctx.protected(node):
                continue
            kind = ctx.kind(node)
            if kind == "matmul" and len(node.args) == 2 and not node.kwargs:
                x, w = node.args
                w = ctx.const(w)
                if not (isinstance(x, fx.Node) and x.name in computed and isinstance(w, torch.Tensor) and w.dim() == 2):
                    continue
                lin = nn.Linear(w.shape[0], w.shape[1], bias=False, device=w.device, dtype=w.dtype)
                with torch.no_grad():
                    lin.weight.copy_(w.t())
                set_module(gm, node, lin.requires_grad_(False), "linear", (x,))
                count += 1
            elif kind == "linear" and node.op == "call_function" and "addmm" not in str(node.target):
                x, w, b = _args(node, ("input", "weight", "bias"), (None, None, None))
                w, bias = ctx.const(w), (ctx.const(b) if b is not None else None)
                if not (isinstance(x, fx.Node) and isinstance(w, torch.Tensor) and w.dim() == 2):
                    continue
                if b is not None and not isinstance(bias, torch.Tensor):
                    continue
                lin = nn.Linear(w.shape[1], w.shape[0], bias=bias is not None, device=w.device, dtype=w.dtype)
                with torch.no_grad():
                    lin.weight.copy_(w)
                    if bias is not None:
                        lin.bias.copy_(bias)
                set_module(gm, node, lin.requires_grad_(False), "linear", (x,))
                count += 1
            elif kind == "conv" and node.op == "call_function" and "convolution" not in str(node.target):
                x, w, b, stride, padding, dilation, groups = _args(
                    node, ("input", "weight", "bias", "stride", "padding", "dilation", "groups"),
                    (None, None, None, 1, 0, 1, 1))
                w, bias = ctx.const(w), (ctx.const(b) if b is not None else None)
                stride, padding, dilation = _pair(stride), _pair(padding), _pair(dilation)
                if not (isinstance(x, fx.Node) and isinstance(w, torch.Tensor) and w.dim() == 4
                        and isinstance(groups, int) and None not in (stride, padding, dilation)
                        and not isinstance(stride, str) and not isinstance(dilation, str)):
                    continue
                if b is not None and not isinstance(bias, torch.Tensor):
                    continue
                conv = nn.Conv2d(w.shape[1] * groups, w.shape[0], tuple(w.shape[2:]), stride=stride, padding=padding,
                                 dilation=dilation, groups=groups, bias=bias is not None, device=w.device,
                                 dtype=w.dtype)
                with torch.no_grad():
                    conv.weight.copy_(w)
                    if bias is not None:
                        conv.bias.copy_(bias)
                set_module(gm, node, conv.requires_grad_(False), "conv", (x,))
                count += 1
        return count
