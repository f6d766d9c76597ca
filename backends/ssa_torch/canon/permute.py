"""Pass: consecutive permutations are composed, and identity permutations removed.

Channels-last exports transpose NHWC to NCHW before every conv and back after it; once the
no-op casts between them are gone, a ``Transpose`` often meets another one directly. The pair
is replaced by its composition (or by nothing when the two undo each other).
"""

from __future__ import annotations

import torch
from torch import fx

from ..kinds import PERMUTATIONS, perm_of
from .base import CanonPass, PassContext, first_tensor_arg, replace_node

__all__ = ["CollapsePermutes"]


class CollapsePermutes(CanonPass):
    """permute(permute(x, p1), p2) -> permute(x, p1[p2]); permute(x, identity) -> x."""

    name = "collapse-permutes"
    description = "compose consecutive Transpose / permute ops; drop identity permutations"

    def run(self, gm: fx.GraphModule, ctx: PassContext) -> int:
        modules = ctx.modules
        values = ctx.values(1)
        count = 0
        for node in list(gm.graph.nodes):
            kind = ctx.kind(node)
            if kind not in PERMUTATIONS or ctx.protected(node):
                continue
            src = first_tensor_arg(node)
            value = values.get(node.name)
            if src is None or not isinstance(value, torch.Tensor):
                continue
            ndim = value.dim()
            perm = perm_of(node, kind, modules, ndim)
            if perm is None:
                continue
            base = src
            src_kind = ctx.kind(src)
            if src_kind in PERMUTATIONS and not ctx.protected(src):
                inner = perm_of(src, src_kind, modules, ndim)
                inner_src = first_tensor_arg(src)
                if inner is not None and inner_src is not None:
                    perm = [inner[p] for p in perm]  # out axis j = src axis perm[j] = input axis inner[perm[j]]
                    base = inner_src
            if perm == list(range(ndim)):
                node.replace_all_uses_with(base)
                gm.graph.erase_node(node)
                count += 1
            elif base is not src:
                with gm.graph.inserting_before(node):
                    new = gm.graph.call_function(torch.permute, (base, tuple(perm)))
                replace_node(node, new)
                count += 1
        return count
