"""Collection: one forward pass that records every closed-form term's statistics.

The pass runs the canonical graph once per batch with every tap cut (its value detached, as
cut semantics asks). Each term's *head* (a layer output, or a parent tap for a skip) is made an
autograd leaf; the ops between the heads and a tap's activation run with autograd, so that one
``torch.autograd.grad`` of the tap's summed activation gives, per image, the derivative ``m`` of
the tap with respect to every head at once (channels do not mix there). Everything else runs
without autograd. Statistics stay torch tensors on the model's device.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import fx

from ..taps import TapPlan
from .planner import ClosedFormPlan, TapForm

__all__ = ["StatsInterpreter"]


def spatial_mean(t: torch.Tensor, channel_axis: int, lead: int = 1) -> torch.Tensor:
    """Mean over every axis except the ``lead`` leading ones and the channel axis; channel last."""
    t = t.movedim(channel_axis, -1)
    dims = tuple(range(lead, t.dim() - 1))
    return t.mean(dim=dims) if dims else t


class StatsInterpreter(fx.Interpreter):
    """One forward pass recording ``stats["<tap>/<term>/<key>"]`` and ``stats["scalars/<tap>"]`` (torch tensors)."""

    def __init__(self, gm: fx.GraphModule, plan: TapPlan, cf: ClosedFormPlan, forms: Sequence[str]) -> None:
        super().__init__(gm, garbage_collect_values=True)
        self.forms = tuple(forms)
        self.tap_of_node = {node: tap for tap, node in plan.node_of.items()}
        self.taps = {t.name: t for t in plan.taps}
        self.record_at: dict[str, TapForm] = {tf.act_node or tf.z_node: tf for tf in cf.taps.values()}
        self.heads: set[str] = set()
        self.grad_nodes: set[str] = set()
        self.derivatives: set[str] = set()
        self.keep: dict[str, int] = {}
        for tf in cf.taps.values():
            self.heads.update(tf.heads)
            self.grad_nodes.update(tf.segment)
            self.grad_nodes.add(tf.act_node or tf.z_node)
            for term in tf.terms:
                for need in term.needs:
                    if need.endswith(":d"):
                        self.derivatives.add(need[:-2])
                    self.keep[need] = self.keep.get(need, 0) + 1
        self.leaves: dict[str, torch.Tensor] = {}
        self.values: dict[str, torch.Tensor] = {}
        self.stats: dict[str, torch.Tensor] = {}

    def run_node(self, n: fx.Node) -> Any:
        with torch.set_grad_enabled(n.name in self.grad_nodes):
            if n.name in self.derivatives:
                out = self._with_derivative(n)
            else:
                out = super().run_node(n)
        if not isinstance(out, torch.Tensor):
            return out
        tap = self.tap_of_node.get(n.name)
        tf = self.record_at.get(n.name)
        if tf is not None and n.name not in tf.heads:
            self._record(tf, out)  # the tap's own derivative first; then it may be a head of a tap above
        if tap is not None:
            t = self.taps[tap]
            self.stats[f"scalars/{tap}"] = spatial_mean(out.detach(), t.channel_axis)
            out = out.detach()  # cut semantics
        if n.name in self.heads:
            out = out.detach().requires_grad_(True)
            self.leaves[n.name] = out
        if tf is not None and n.name in tf.heads:
            self._record(tf, out)  # logits that are a layer output: the head itself (m = 1)
        if n.name in self.keep:
            self.values[n.name] = out.detach()
        return out

    def _with_derivative(self, n: fx.Node) -> torch.Tensor:
        """Run a gate activation and keep its elementwise derivative (``<node>:d``)."""
        args, kwargs = self.fetch_args_kwargs_from_env(n)
        with torch.enable_grad():
            z = args[0].detach().requires_grad_(True)
            out = getattr(self, n.op)(n.target, (z, *args[1:]), kwargs)
            (d,) = torch.autograd.grad(out.sum(), z)
        self.values[n.name + ":d"] = d
        return out.detach()

    def _record(self, tf: TapForm, out: torch.Tensor) -> None:
        forms = [f for f in self.forms if f in tf.forms]
        heads = list(tf.heads)
        leaves = [self.leaves[h] for h in heads]
        if out.requires_grad:
            with torch.enable_grad():
                total = out.sum()
            # retain: ops between heads and z can be shared by several taps (DenseNet concatenations)
            grads = torch.autograd.grad(total, leaves, allow_unused=True, retain_graph=True)
        else:
            grads = (None,) * len(leaves)
        masks = {h: (g if g is not None else torch.zeros_like(leaf)).detach()
                 for h, leaf, g in zip(heads, leaves, grads, strict=True)}
        for i, term in enumerate(tf.terms):
            for key, val in term.statistics(masks[term.head], self.values, forms).items():
                self.stats[f"{tf.tap}/{i}/{key}"] = val.detach()
            for need in term.needs:
                self.keep[need] -= 1
                if self.keep[need] <= 0:
                    self.values.pop(need, None)
