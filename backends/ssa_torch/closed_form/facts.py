"""The facts a closed form is planned from: op kinds, constants, per-element affine ops, layer operators.

:class:`GraphFacts` is the base of :class:`~ssa_torch.closed_form.planner.Planner`.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import torch
import torch.nn as nn
from torch import fx

from ..kinds import NO_CLOSED_FORM, node_kind
from ..taps import TapPlan
from .linear import LinearOp, NotClosedForm

__all__ = ["GraphFacts", "reason_for"]


def _pair(v: Any) -> tuple[int, int]:
    if isinstance(v, (tuple, list)):
        return (int(v[0]), int(v[1])) if len(v) == 2 else (int(v[0]), int(v[0]))
    return (int(v), int(v))


def reason_for(kind: str, where: str) -> str:
    """Why an op of ``kind`` stops the closed form."""
    return NO_CLOSED_FORM.get(kind, f"{kind} op {where}")


class GraphFacts:
    """The canonical graph, its values at batch 1 and the taps, with what the planner asks of them."""

    def __init__(self, gm: fx.GraphModule, plan: TapPlan, env1: Mapping[str, Any]):
        self.gm = gm
        self.plan = plan
        self.env1 = env1
        self.modules = dict(gm.named_modules())
        self.kinds = dict(plan.kinds)
        self.nodes = {n.name: n for n in gm.graph.nodes}
        self.order = {n.name: i for i, n in enumerate(gm.graph.nodes)}
        self.tap_of_node = {node: tap for tap, node in plan.node_of.items()}
        self.taps = {t.name: t for t in plan.taps}
        computed: set[str] = set()
        for node in gm.graph.nodes:
            if node.op == "placeholder" or any(a.name in computed for a in node.all_input_nodes):
                computed.add(node.name)
        self.computed = computed
        self._gen = torch.Generator().manual_seed(1234)

    # -- facts ----------------------------------------------------------------------------------------
    def kind(self, node: fx.Node) -> str:
        kind = self.kinds.get(node.name)
        return kind if kind is not None else node_kind(node, self.modules)

    def value(self, node: fx.Node | str) -> Any:
        return self.env1[node if isinstance(node, str) else node.name]

    def is_tap(self, node: fx.Node) -> bool:
        return node.name in self.tap_of_node

    def computed_args(self, node: fx.Node) -> list[fx.Node]:
        return [a for a in node.all_input_nodes if a.name in self.computed]

    def const(self, arg: Any) -> torch.Tensor | float | None:
        if isinstance(arg, bool):
            return None
        if isinstance(arg, (int, float)):
            return float(arg)
        if isinstance(arg, fx.Node) and arg.name not in self.computed:
            v = self.env1.get(arg.name)
            return v if isinstance(v, torch.Tensor) else (float(v) if isinstance(v, (int, float)) else None)
        return None

    def affine(self, node: fx.Node) -> tuple[fx.Node, Callable[[torch.Tensor], torch.Tensor], bool] | None:
        """For a per-element constant affine op: (data input, the map without its shift, has a shift)."""
        kind = self.kind(node)
        if kind == "batchnorm":
            if node.op == "call_module":
                bn = self.modules[node.target]
                if not isinstance(bn, nn.modules.batchnorm._BatchNorm) or bn.training or bn.running_var is None:
                    return None
                s = torch.rsqrt(bn.running_var.double() + bn.eps)
                if bn.weight is not None:
                    s = s * bn.weight.double()
                x = node.args[0]
                return x, (lambda v, s=s: v * s.to(v).reshape((1, -1) + (1,) * (v.dim() - 2))), True
            return None
        if kind not in ("add", "sub", "mul", "div") or len(node.args) != 2:
            return None
        comp = [i for i, a in enumerate(node.args) if isinstance(a, fx.Node) and a.name in self.computed]
        if len(comp) != 1 or set(node.kwargs) - {"alpha"}:
            return None
        i = comp[0]
        c = self.const(node.args[1 - i])
        if c is None:
            return None
        alpha = float(node.kwargs.get("alpha", 1.0))
        x = node.args[i]
        if kind == "add":
            factor = alpha if i == 1 else 1.0
            return x, (lambda v, f=factor: v * f), True
        if kind == "sub":
            factor = -alpha if i == 1 else 1.0
            return x, (lambda v, f=factor: v * f), True
        if kind == "mul":
            return x, (lambda v, c=c: v * (c.to(v) if isinstance(c, torch.Tensor) else c)), False
        if i == 0:
            return x, (lambda v, c=c: v / (c.to(v) if isinstance(c, torch.Tensor) else c)), False
        return None

    # -- layers ----------------------------------------------------------------------------------------
    def layer_op(self, node: fx.Node) -> tuple[LinearOp, fx.Node]:
        """The linear operator of a conv / dense layer node and the node it reads (a zero pad absorbed)."""
        if node.op != "call_module":
            raise NotClosedForm(f"{self.kind(node)} layer with a computed or non-constant weight")
        mod = self.modules[node.target]
        x = node.args[0] if node.args else None
        if not isinstance(x, fx.Node) or len(self.computed_args(node)) != 1:
            raise NotClosedForm("a layer with several computed inputs")
        if isinstance(mod, nn.Linear):
            return LinearOp("dense", mod.weight.detach()), x
        if isinstance(mod, nn.Conv3d) and mod.padding_mode == "zeros":
            return self._conv3d_op(mod, x)
        if not isinstance(mod, nn.Conv2d) or mod.padding_mode != "zeros":
            raise NotClosedForm("not a zero-padded 2-D or 3-D convolution")
        if isinstance(mod.padding, str):
            rp = mod._reversed_padding_repeated_twice  # (left, right, top, bottom)
            pad = (int(rp[2]), int(rp[3]), int(rp[0]), int(rp[1]))
        else:
            ph, pw = _pair(mod.padding)
            pad = (ph, ph, pw, pw)
        if self.kind(x) == "pad" and len(x.users) == 1 and not self.is_tap(x):
            extra = self._zero_pad(x)
            if extra is not None:
                pad = tuple(a + b for a, b in zip(pad, extra, strict=True))  # type: ignore[assignment]
                x = x.args[0]
        op = LinearOp("conv", mod.weight.detach(), int(mod.groups), _pair(mod.stride), _pair(mod.dilation), pad)
        return op, x

    def _conv3d_op(self, mod: nn.Conv3d, x: fx.Node) -> tuple[LinearOp, fx.Node]:
        """A zero-padded ``nn.Conv3d`` (pad: front, back, top, bottom, left, right), a zero pad before it absorbed."""
        if isinstance(mod.padding, str):
            rp = mod._reversed_padding_repeated_twice  # (left, right, top, bottom, front, back)
            pad = tuple(int(rp[i]) for i in (4, 5, 2, 3, 0, 1))
        else:
            pad = tuple(int(p) for p in mod.padding for _ in range(2))
        if self.kind(x) == "pad" and len(x.users) == 1 and not self.is_tap(x):
            extra = self._zero_pad_3d(x)
            if extra is not None:
                pad = tuple(a + b for a, b in zip(pad, extra, strict=True))
                x = x.args[0]
        op = LinearOp("conv", mod.weight.detach(), int(mod.groups), tuple(int(v) for v in mod.stride),
                      tuple(int(v) for v in mod.dilation), pad)
        return op, x

    def _zero_pad_3d(self, node: fx.Node) -> tuple[int, ...] | None:
        """A zero pad of the three spatial axes of a 5-D tensor: (front, back, top, bottom, left, right)."""
        pads = node.args[1] if len(node.args) > 1 else node.kwargs.get("pad")
        mode = node.kwargs.get("mode", node.args[2] if len(node.args) > 2 else "constant")
        value = node.kwargs.get("value", node.args[3] if len(node.args) > 3 else 0.0)
        xv = self.value(node)
        if (mode != "constant" or (value or 0.0) != 0.0 or not isinstance(pads, (list, tuple))
                or len(pads) not in (2, 4, 6) or not isinstance(xv, torch.Tensor) or xv.dim() != 5):
            return None
        p = [int(v) for v in pads] + [0] * (6 - len(pads))  # F.pad order: left, right, top, bottom, front, back
        if min(p) < 0:
            return None
        return (p[4], p[5], p[2], p[3], p[0], p[1])

    def _zero_pad(self, node: fx.Node) -> tuple[int, int, int, int] | None:
        pads = node.args[1] if len(node.args) > 1 else node.kwargs.get("pad")
        mode = node.kwargs.get("mode", node.args[2] if len(node.args) > 2 else "constant")
        value = node.kwargs.get("value", node.args[3] if len(node.args) > 3 else 0.0)
        if mode != "constant" or (value or 0.0) != 0.0 or not isinstance(pads, (list, tuple)) or len(pads) != 4:
            return None
        left, right, top, bottom = (int(p) for p in pads)
        if min(left, right, top, bottom) < 0:
            return None
        return (top, bottom, left, right)
