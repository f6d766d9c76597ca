"""Pass: in-place ops become out-of-place ops.

``x += y`` (``operator.iadd``), ``x.relu_()``, ``F.relu(x, inplace=True)``, ``nn.ReLU(inplace=True)``
and aten's ``relu_`` / ``add_`` overwrite a value that cut semantics (method doc, section 4) and
the closed form still need. Their out-of-place forms compute the same values.
"""

from __future__ import annotations

import operator

import torch
from torch import fx

from .base import CanonPass, PassContext

__all__ = ["OutOfPlace"]

_INPLACE_FUNCS = {operator.iadd: operator.add, operator.isub: operator.sub, operator.imul: operator.mul,
                  operator.itruediv: operator.truediv, torch.relu_: torch.relu}


def _out_of_place_aten(target):
    if not isinstance(target, torch._ops.OpOverload):
        return None
    name = target.overloadpacket.__name__
    if not name.endswith("_") or name.startswith("_"):
        return None
    packet = getattr(torch.ops.aten, name[:-1], None)
    overload = getattr(packet, target._overloadname, None) if packet is not None else None
    return overload


class OutOfPlace(CanonPass):
    """In-place functions, methods, modules and aten ops to their out-of-place forms."""

    name = "out-of-place"
    description = "in-place ops (x += y, relu_(), inplace=True) to out-of-place ops"

    def run(self, gm: fx.GraphModule, ctx: PassContext) -> int:
        count = 0
        inplace_modules = set()
        for path, m in gm.named_modules():
            if getattr(m, "inplace", False) is True:
                m.inplace = False
                inplace_modules.add(path)
        order = {n: i for i, n in enumerate(gm.graph.nodes)}
        for node in list(gm.graph.nodes):
            changed = False
            if node.op == "call_function":
                new = _INPLACE_FUNCS.get(node.target) if _hashable(node.target) else None
                new = new or _out_of_place_aten(node.target)
                if new is not None:
                    node.target = new
                    changed = True
                if node.kwargs.get("inplace") is True:
                    node.kwargs = {**node.kwargs, "inplace": False}
                    changed = True
            elif node.op == "call_method":
                t = str(node.target)
                if t.endswith("_") and not t.startswith("_") and t != "requires_grad_" and hasattr(torch.Tensor,
                                                                                                   t[:-1]):
                    node.target = t[:-1]
                    changed = True
            elif node.op == "call_module" and str(node.target) in inplace_modules:
                changed = True
            if changed:
                count += 1
                _rewire_later_uses(node, order)
        return count + len(inplace_modules)


def _rewire_later_uses(node: fx.Node, order: dict[fx.Node, int]) -> None:
    """Uses of the overwritten input after ``node`` read ``node`` instead (what in-place meant)."""
    x = node.args[0] if node.args else None
    if not isinstance(x, fx.Node):
        return
    for user in list(x.users):
        if user is not node and order.get(user, -1) > order[node]:
            user.replace_input_with(x, node)


def _hashable(target) -> bool:
    try:
        hash(target)
    except TypeError:
        return False
    return True
