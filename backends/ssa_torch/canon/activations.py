"""Pass: activations written out as arithmetic become the activation they compute.

Exporters write GELU as ``x * 0.5 * (1 + erf(x / sqrt(2)))`` (ONNX before opset 20), its tanh
approximation as ``0.5 * x * (1 + tanh(sqrt(2 / pi) * (x + 0.044715 * x**3)))`` and Mish as
``x * tanh(softplus(x))`` (ONNX before opset 18). Left as they are, tap discovery would see no
activation (``erf``) or the wrong one (the inner ``tanh``, ``softplus``): the method doc, section 4b,
makes the output of every pointwise nonlinearity a tap, so each pattern is replaced by one call of
``nn.GELU`` / ``nn.GELU(approximate="tanh")`` / ``nn.Mish`` on ``x``.

A pattern is found from its ``erf`` or ``tanh`` node: ``x`` is one of the nodes a few steps above it,
the output ``y`` one of the arithmetic nodes a few steps below it, and the pair is taken only when
``y``'s value on the example equals the activation of ``x``'s value (to float tolerance, on a tensor
whose values are not all in the flat part of the activation). The fused node is shown under the
``erf`` / ``tanh`` node's name.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import fx

from ..kinds import ARITHMETIC, NAME_KEY, display_name
from .base import CanonPass, PassContext, fresh_module_path

__all__ = ["FuseActivations"]

_DEPTH = 5  # steps searched above the erf / tanh (x) and below it (y)

#: (kind of the inner node, module, function) in the order they are tried
_FORMS: dict[str, tuple[tuple[str, Callable[[], nn.Module], Callable[[torch.Tensor], torch.Tensor]], ...]] = {
    "erf": (("gelu", nn.GELU, F.gelu),),
    "tanh": (("gelu_tanh", lambda: nn.GELU(approximate="tanh"), lambda t: F.gelu(t, approximate="tanh")),
             ("mish", nn.Mish, F.mish)),
}


def _nearby(node: fx.Node, step: Callable[[fx.Node], Iterable[fx.Node]], keep: Callable[[fx.Node], bool]
            ) -> list[fx.Node]:
    """Nodes up to ``_DEPTH`` ``step``s from ``node`` that ``keep`` accepts (the walk goes on through them
    only), nearest first."""
    out: list[fx.Node] = []
    frontier = [node]
    seen = {node.name}
    for _ in range(_DEPTH):
        nxt = []
        for n in frontier:
            for a in step(n):
                if a.name not in seen and keep(a):
                    seen.add(a.name)
                    out.append(a)
                    nxt.append(a)
        frontier = nxt
    return out


def _above(node: fx.Node, computed: set[str]) -> list[fx.Node]:
    """Computed nodes up to ``_DEPTH`` steps above ``node``, nearest first."""
    return _nearby(node, lambda n: n.all_input_nodes, lambda a: a.name in computed)


def _below(node: fx.Node, kind_of: Callable[[fx.Node], str]) -> list[fx.Node]:
    """Arithmetic nodes up to ``_DEPTH`` steps below ``node``, nearest first."""
    return _nearby(node, lambda n: n.users, lambda u: kind_of(u) in ARITHMETIC)


def _equal(y: torch.Tensor, expected: torch.Tensor) -> bool:
    if y.shape != expected.shape or not y.is_floating_point() or expected.numel() < 2:
        return False
    scale = float(expected.abs().max())
    if scale == 0.0 or float(expected.std()) < 1e-3 * scale:
        return False  # a constant activation (every x in a flat part): the values say nothing
    return bool(torch.allclose(y, expected, rtol=1e-4, atol=1e-5 * scale))


class FuseActivations(CanonPass):
    """GELU (erf and tanh forms) and Mish written as arithmetic to one activation module."""

    name = "fuse-activations"
    description = "GELU written as x*0.5*(1+erf(x/sqrt2)) or with tanh, Mish as x*tanh(softplus(x)), to one module"

    def run(self, gm: fx.GraphModule, ctx: PassContext) -> int:
        inner = [n for n in gm.graph.nodes if ctx.kind(n) in _FORMS]
        if not inner:
            return 0
        computed = ctx.computed()
        values = ctx.values(1)
        count = 0
        done: set[str] = set()
        for e in inner:
            if e.name in done or e.name not in computed:
                continue
            found = self._match(e, ctx, computed, values)
            if found is None:
                continue
            x, y, stem, make = found
            path = fresh_module_path(gm, stem)
            gm.add_submodule(path, make())
            with gm.graph.inserting_before(y):
                new = gm.graph.call_module(path, (x,))
            new.meta[NAME_KEY] = display_name(e)
            y.replace_all_uses_with(new)
            done.add(e.name)
            count += 1
        return count

    def _match(self, e: fx.Node, ctx: PassContext, computed: set[str], values: dict
               ) -> tuple[fx.Node, fx.Node, str, Callable[[], nn.Module]] | None:
        xs = [x for x in _above(e, computed) if isinstance(values.get(x.name), torch.Tensor)]
        for y in _below(e, ctx.kind):
            if ctx.protected(y) or not isinstance(values.get(y.name), torch.Tensor):
                continue
            yv = values[y.name]
            for stem, make, fn in _FORMS[ctx.kind(e)]:
                for x in xs:
                    xv = values[x.name]
                    if xv.shape == yv.shape and xv.is_floating_point() and _equal(yv, fn(xv)):
                        return x, y, stem, make
        return None
