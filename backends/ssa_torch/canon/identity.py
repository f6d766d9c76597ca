"""Pass: ops that return their input unchanged are removed.

Identity modules, dropout in eval mode, ``contiguous()`` / ``clone()`` / ``detach()`` (a ``view`` reading
one becomes a ``reshape``: ShuffleNet's and Swin's ``transpose().contiguous().view()``), and casts
to the dtype (and device) the value already has: exporters write hundreds of such Casts
(``Cast(to=FLOAT)`` on float tensors), and each one would otherwise sit between a tap and the
layer that reads it.
"""

from __future__ import annotations

import inspect

import torch
import torch.nn as nn
from torch import fx

from .base import CanonPass, PassContext, first_tensor_arg

__all__ = ["DropIdentities"]


def _dropout_active(node: fx.Node, modules) -> bool:
    """Dropout / stochastic depth that is not in eval mode (its ``training`` argument is not False)."""
    if node.op == "call_module":
        mod = modules[node.target]
        return isinstance(mod, nn.Module) and mod.training and isinstance(mod, nn.modules.dropout._DropoutNd)
    if node.op == "call_function" and not isinstance(node.target, torch._ops.OpOverload):
        try:
            params = list(inspect.signature(node.target).parameters)
        except (TypeError, ValueError):
            return False
        if "training" not in params:
            return False
        i = params.index("training")
        training = node.kwargs.get("training", node.args[i] if len(node.args) > i else True)
        return training is not False
    return False


class DropIdentities(CanonPass):
    """Identity ops and no-op casts are bypassed (their users read the input)."""

    name = "drop-identities"
    description = "remove identity ops, eval-mode dropout and casts to the dtype a tensor already has"

    def run(self, gm: fx.GraphModule, ctx: PassContext) -> int:
        modules = ctx.modules
        count = 0
        values = None
        for node in list(gm.graph.nodes):
            kind = ctx.kind(node)
            if kind not in ("identity", "cast") or ctx.protected(node):
                continue
            src = first_tensor_arg(node)
            if src is None:
                continue
            if kind == "identity":
                if _dropout_active(node, modules):
                    continue
                if node.op == "call_method" and len(node.args) > 1:  # contiguous(memory_format) and the like
                    continue
            if kind == "cast" or node.op != "call_module":
                values = values if values is not None else ctx.values(1)
                out, inp = values.get(node.name), values.get(src.name)
                if not (isinstance(out, torch.Tensor) and isinstance(inp, torch.Tensor)):
                    continue
                if out.dtype != inp.dtype or out.device != inp.device or out.shape != inp.shape:
                    continue
            for user in node.users:
                _view_to_reshape(user)  # a view after contiguous() may read a permuted, non-contiguous tensor
            node.replace_all_uses_with(src)
            gm.graph.erase_node(node)
            count += 1
        return count


def _view_to_reshape(node: fx.Node) -> None:
    """``x.view(shape)`` / ``aten.view`` -> reshape: the same values, without requiring contiguous memory."""
    if node.op == "call_method" and node.target == "view" and not any(isinstance(a, torch.dtype) for a in node.args):
        node.target = "reshape"
    elif node.op == "call_function" and node.target is torch.ops.aten.view.default:
        node.target = torch.ops.aten.reshape.default
