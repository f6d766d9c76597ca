"""Pass: a channel split (``chunk`` / ``split``) read piece by piece becomes one slice per piece.

ShuffleNetV2 splits its channels with ``x.chunk(2, dim=1)``; ``x1, x2 = ...`` reads the pieces with
``getitem``. Each ``getitem(chunk(x), i)`` becomes ``x[:, a:b]`` with the piece's bounds (read from the
example's values), which the closed form follows like any channel selection. Splits along the batch
axis, and splits whose pieces are used other than by indexing, stay.
"""

from __future__ import annotations

import operator

import torch
from torch import fx

from ..kinds import NAME_KEY, display_name
from .base import CanonPass, PassContext, first_tensor_arg

__all__ = ["SplitToSlices"]

_METHODS = frozenset({"chunk", "split"})
_FUNCTIONS = {torch.chunk, torch.split}
_ATEN = frozenset({"chunk", "split", "split_with_sizes"})


def _is_split(node: fx.Node) -> bool:
    if node.op == "call_method":
        return str(node.target) in _METHODS
    if node.op != "call_function":
        return False
    if node.target in _FUNCTIONS:
        return True
    return isinstance(node.target, torch._ops.OpOverload) and node.target.overloadpacket.__name__ in _ATEN


class SplitToSlices(CanonPass):
    """getitem(chunk(x, k, dim), i) / getitem(split(x, s, dim), i) -> x[..., a_i:b_i] along dim."""

    name = "split-to-slices"
    description = "channel splits (chunk / split) read piece by piece to one slice per piece"

    def run(self, gm: fx.GraphModule, ctx: PassContext) -> int:
        splits = [n for n in gm.graph.nodes if _is_split(n) and not ctx.protected(n)]
        if not splits:
            return 0
        values = ctx.values(1)
        count = 0
        for node in splits:
            x = first_tensor_arg(node)
            pieces = values.get(node.name)
            xv = values.get(x.name) if x is not None else None
            if x is None or not isinstance(xv, torch.Tensor) or not isinstance(pieces, (tuple, list)):
                continue
            dim = node.kwargs.get("dim", node.args[2] if len(node.args) > 2 else 0)
            if not isinstance(dim, int) or dim % xv.dim() == 0:
                continue
            dim %= xv.dim()
            users = list(node.users)
            if not users or not all(u.op == "call_function" and u.target is operator.getitem
                                    and isinstance(u.args[1], int) for u in users):
                continue
            bounds, start = [], 0
            for p in pieces:
                bounds.append((start, start + int(p.shape[dim])))
                start += int(p.shape[dim])
            for u in users:
                a, b = bounds[u.args[1]]
                index = (*([slice(None)] * dim), slice(a, b))
                u.meta.setdefault(NAME_KEY, display_name(u))
                u.args = (x, index)
                count += 1
        return count
