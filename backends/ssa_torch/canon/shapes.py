"""Pass: shape arithmetic is resolved to constants for the prepared input shape.

``x.view(x.size(0), -1)`` in PyTorch code, and ``Shape -> Gather -> Unsqueeze -> Concat ->
Reshape`` in Keras exports, compute a reshape's target from the input's shape. For the image
size the network is prepared with, the target is a constant except for the batch axis: the
reshape is replaced by ``torch.flatten(x, 1)`` or ``torch.reshape(x, (-1, ...))`` after checking,
at two batch sizes, that the output is (batch, constant...) of an input that starts with the batch.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import fx
from torch.fx.node import map_arg

from ..kinds import RESHAPES
from .base import CanonPass, PassContext, first_tensor_arg, replace_node

__all__ = ["ResolveShapes", "batch_free_reshape"]


def batch_free_reshape(ctx: PassContext, node: fx.Node, data: fx.Node) -> tuple[Any, tuple] | None:
    """``(torch.flatten, (data, 1))`` or ``(torch.reshape, (data, (-1, ...)))`` equal to ``node`` at any batch.

    None when ``node``'s output is not (batch, constant...) of an input (batch, ...) at batch sizes 1 and 2.
    """
    v1, v2 = ctx.try_values(1), ctx.try_values(2)
    if v1 is None or v2 is None:
        return None
    shapes = []
    for values, b in ((v1, 1), (v2, 2)):
        out, inp = values.get(node.name), values.get(data.name)
        if not (isinstance(out, torch.Tensor) and isinstance(inp, torch.Tensor)):
            return None
        if out.dim() < 1 or inp.dim() < 1 or out.shape[0] != b or inp.shape[0] != b:
            return None
        shapes.append((tuple(out.shape), tuple(inp.shape)))
    (o1, i1), (o2, i2) = shapes
    if o1[1:] != o2[1:] or i1[1:] != i2[1:]:
        return None
    if len(o1) == 2 and o1[1] == math.prod(i1[1:]):
        return torch.flatten, (data, 1)
    return torch.reshape, (data, (-1, *o1[1:]))


def _computed_arg(args: Any, computed: set[str]) -> bool:
    found = []
    map_arg(args, lambda a: found.append(a.name in computed) or a)
    return any(found)


class ResolveShapes(CanonPass):
    """Reshapes whose target shape is computed from the input become constant flatten / reshape ops."""

    name = "resolve-shapes"
    description = "reshape targets computed from the input's shape (size(), Shape/Gather/Concat) to constants"

    def run(self, gm: fx.GraphModule, ctx: PassContext) -> int:
        computed = ctx.computed()
        count = 0
        for node in list(gm.graph.nodes):
            if ctx.kind(node) not in RESHAPES or ctx.protected(node):
                continue
            data = first_tensor_arg(node)
            if data is None or not _computed_arg((node.args[1:], node.kwargs), computed):
                continue
            found = batch_free_reshape(ctx, node, data)
            if found is None:
                continue
            fn, args = found
            with gm.graph.inserting_before(node):
                new = gm.graph.call_function(fn, args)
            replace_node(node, new)
            count += 1
        return count
