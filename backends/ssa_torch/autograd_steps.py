"""Step relevance by autograd (method doc, section 4): cut-semantics execution and batched backward passes.

Every tap's output is replaced by a detached leaf that requires grad, so that
the derivative of a tap with respect to one of its parent taps follows only the
paths that meet no other tap (method doc, section 4). The relevance of one step
for a set of upper neurons is computed with one batched backward pass
(``torch.autograd.grad(..., is_grads_batched=True)``), falling back to one
backward pass per neuron where an op has no batching rule (and from then on: the fallback is sticky).
A step runs through its own segment only, from the batch's remembered tap values (:mod:`ssa_torch.segments`).

:class:`AutogradSteps` is a mixin of :class:`~ssa_torch.network.TorchNetwork`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import fx

from ssa.core.budget import WORK_BYTES
from ssa.core.checks import call_rule
from ssa.core.interfaces import Rule, Tap

from .closed_form.collect import spatial_mean
from .host import exact_arithmetic
from .interpreters import ModelCodeInterpreter
from .head import head_cotangents
from .segments import Segment, TapValues, batch_key, run_nodes, segment_of

if TYPE_CHECKING:
    from .taps import TapPlan

__all__ = ["AutogradSteps", "spatial_mean"]

class _CutInterpreter(ModelCodeInterpreter):
    def __init__(self, gm: fx.GraphModule, cut: Mapping[str, str], input_node: str | None, grad: bool):
        super().__init__(gm, garbage_collect_values=True)
        self.cut = cut
        self.input_node = input_node
        self.grad = grad
        self.raw: dict[str, torch.Tensor] = {}
        self.leaf: dict[str, torch.Tensor] = {}

    def run_node(self, n: fx.Node) -> Any:
        out = super().run_node(n)
        tap = self.cut.get(n.name)
        if tap is not None and isinstance(out, torch.Tensor):
            self.raw[tap] = out
            leaf = out.detach()
            if self.grad:
                leaf.requires_grad_(True)
            self.leaf[tap] = leaf
            return leaf
        return out


class AutogradSteps:
    """Cut-semantics runs, tap scalars, logits and step relevance by autograd (a mixin; see the module doc)."""

    if TYPE_CHECKING:  # provided by TorchNetwork
        device: str
        graph_module: fx.GraphModule
        plan: TapPlan
        _batched_ok: bool
        _values: TapValues
        _segments: dict[str, Segment]
        _input_node: str

        def tap(self, name: str) -> Tap: ...

        def to_tensor(self, batch: Any) -> torch.Tensor: ...

    def run(self, batch: np.ndarray | torch.Tensor, grad: bool) -> _CutInterpreter:
        """Run the model with every tap cut; returns the interpreter holding raw and leaf values."""
        plan = self.plan
        cut = {node: tap for tap, node in plan.node_of.items() if tap != plan.input_tap}
        x = self.to_tensor(batch)
        interp = _CutInterpreter(self.graph_module, cut, None, grad)
        interp.args_batch = int(x.shape[0])
        if plan.input_tap is not None:
            if grad:
                x = x.detach().requires_grad_(True)
            interp.raw[plan.input_tap] = x
            interp.leaf[plan.input_tap] = x
        with torch.set_grad_enabled(grad):
            interp.run(x)
        return interp

    def scalars_of(self, interp: _CutInterpreter) -> dict[str, torch.Tensor]:
        out = {}
        with torch.no_grad():
            for tap in self.plan.taps:
                value = interp.raw[tap.name].detach()
                out[tap.name] = spatial_mean(value, tap.channel_axis).double()
        return out

    def logits(self, batch: np.ndarray) -> np.ndarray:
        with exact_arithmetic(self.device):
            interp = self.run(batch, grad=False)
        return interp.raw["logits"].detach().double().cpu().numpy()

    def tap_scalars(self, batch: np.ndarray) -> dict[str, torch.Tensor]:
        """Every tap's neuron scalars (value, or spatial mean) on a batch, float64 torch on the device."""
        with exact_arithmetic(self.device):
            return self.scalars_of(self.run(batch, grad=False))

    def step_relevance(self, batch: np.ndarray, upper: str, neurons: Sequence[int], rule: Rule
                       ) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
        """omega ``{parent: (n, B, K)}`` of one step by autograd, and every tap's scalars (torch, on the device)."""
        with exact_arithmetic(self.device):
            return self._step_relevance(batch, upper, neurons, rule)

    def _step_relevance(self, batch: np.ndarray, upper: str, neurons: Sequence[int], rule: Rule
                        ) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
        """The step through its own segment only, from the batch's tap values (see :mod:`ssa_torch.segments`)."""
        tap = self.tap(upper)
        values = self._tap_values(batch)
        plan = self.plan
        scalars = {t.name: spatial_mean(values[plan.node_of[t.name]], t.channel_axis).double() for t in plan.taps}
        parents = [self.tap(p) for p in tap.parents]
        if not parents or len(neurons) == 0:
            return {}, scalars
        if upper not in self._segments:
            self._segments[upper] = segment_of(self.graph_module, plan, upper)
        segment = self._segments[upper]
        head = segment.head
        feed = dict(values)
        leaves = []
        for p in parents:
            leaf = values[plan.node_of[p.name]].detach().requires_grad_(True)
            feed[plan.node_of[p.name]] = leaf
            leaves.append(leaf)
        with torch.enable_grad():
            env = run_nodes(self.graph_module, segment, feed, len(batch), head.compute)
        top = values[plan.node_of[upper]]
        roots = head_cotangents(self.graph_module, head, env, segment.upper, tap.channel_axis, neurons,
                                top.dtype, top.device)
        stops = [name for name in head.stops if name in roots and isinstance(env[name], torch.Tensor)
                 and env[name].requires_grad]
        closed = [roots.get(plan.node_of[p.name]) for p in parents]
        rel = self._head_relevance([env[name] for name in stops], [roots[name] for name in stops], leaves, closed,
                                   parents, rule, len(neurons))
        return rel, scalars

    def _tap_values(self, batch: np.ndarray | torch.Tensor) -> dict[str, torch.Tensor]:
        """Every tap's value and the input on ``batch`` (node name -> tensor): one cut forward pass, remembered."""
        key = batch_key(batch)
        found = self._values.get(key)
        if found is None:
            interp = self.run(batch, grad=False)
            plan = self.plan
            found = {plan.node_of[t]: v.detach() for t, v in interp.raw.items()}
            found[self._input_node] = self.to_tensor(batch)
            self._values.put(key, found)
        return found

    def _step_relevance_full(self, batch: np.ndarray, upper: str, neurons: Sequence[int], rule: Rule
                             ) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
        """The reference of :meth:`_step_relevance`: the whole network run with every tap cut, then the gradients."""
        tap = self.tap(upper)
        interp = self.run(batch, grad=True)
        scalars = self.scalars_of(interp)
        parents = [self.tap(p) for p in tap.parents]
        if not parents or len(neurons) == 0:
            return {}, scalars
        s = spatial_mean(interp.raw[upper], tap.channel_axis)[:, list(neurons)]  # (B, n)
        rel = self._relevance(s, [interp.leaf[p.name] for p in parents], parents, rule)
        return rel, scalars

    def _relevance(self, s: torch.Tensor, leaves: list[torch.Tensor], parents: list[Tap], rule: Rule
                   ) -> dict[str, torch.Tensor]:
        B, n = s.shape
        chunks: dict[str, list[torch.Tensor]] = {p.name: [] for p in parents}
        for j0, j1 in _chunks(leaves, n):
            grads = self._grads(s, leaves, j0, j1)
            _apply_rule(rule, j1 - j0, grads, leaves, parents, chunks)
        return {k: torch.cat(v, dim=0) for k, v in chunks.items()}

    def _head_relevance(self, outputs: list[torch.Tensor], cots: list[torch.Tensor], leaves: list[torch.Tensor],
                        closed: list[torch.Tensor | None], parents: list[Tap], rule: Rule, n: int
                        ) -> dict[str, torch.Tensor]:
        """omega from autograd below a segment's head (cotangents ``cots`` (n, ...) at ``outputs``) plus the
        head's closed-form terms of the parents (``closed``, (n, ...) broadcast to each parent's shape)."""
        chunks: dict[str, list[torch.Tensor]] = {p.name: [] for p in parents}
        for j0, j1 in _chunks(leaves, n):
            m = j1 - j0
            grads: list[torch.Tensor | None] = [None] * len(leaves)
            if outputs:
                gos = [c[j0:j1].expand(m, *o.shape) for o, c in zip(outputs, cots, strict=True)]
                grads = self._grads_at(outputs, gos, leaves)
            for i, term in enumerate(closed):
                if term is not None:
                    t = term[j0:j1]
                    g = grads[i]
                    grads[i] = t.expand(m, *leaves[i].shape).clone() if g is None else g + t
            _apply_rule(rule, m, grads, leaves, parents, chunks)
        return {k: torch.cat(v, dim=0) for k, v in chunks.items()}

    def _grads_at(self, outputs: list[torch.Tensor], gos: list[torch.Tensor], leaves: list[torch.Tensor]
                  ) -> list[torch.Tensor | None]:
        """The gradients of the leaves for each of the m cotangents ``gos`` (m, ...) at ``outputs``."""
        m = int(gos[0].shape[0])
        if self._batched_ok and m > 1:
            try:
                return list(torch.autograd.grad(outputs, leaves, gos, retain_graph=True, allow_unused=True,
                                                is_grads_batched=True))
            except RuntimeError:
                self._batched_ok = False  # an op without a batching rule: one backward pass per neuron
        per_neuron = [torch.autograd.grad(outputs, leaves, [g[j] for g in gos], retain_graph=True, allow_unused=True)
                      for j in range(m)]
        return _stacked(per_neuron, leaves)

    def _grads(self, s: torch.Tensor, leaves: list[torch.Tensor], j0: int, j1: int) -> list[torch.Tensor | None]:
        m = j1 - j0
        if self._batched_ok and m > 1:
            go = torch.zeros((m, *s.shape), device=s.device, dtype=s.dtype)
            go[torch.arange(m), :, torch.arange(j0, j1)] = 1.0
            try:
                out = torch.autograd.grad(s, leaves, go, retain_graph=True, allow_unused=True, is_grads_batched=True)
                return list(out)
            except RuntimeError:
                self._batched_ok = False  # an op without a batching rule: one backward pass per neuron
        per_neuron = [torch.autograd.grad(s[:, j].sum(), leaves, retain_graph=True, allow_unused=True)
                      for j in range(j0, j1)]
        return _stacked(per_neuron, leaves)


def _stacked(per_neuron: Sequence[Sequence[torch.Tensor | None]], leaves: list[torch.Tensor]
             ) -> list[torch.Tensor | None]:
    out: list[torch.Tensor | None] = []
    for idx, leaf in enumerate(leaves):
        parts = [g[idx] for g in per_neuron]
        out.append(None if all(p is None for p in parts) else
                   torch.stack([p if p is not None else torch.zeros_like(leaf) for p in parts]))
    return out


def _chunks(leaves: list[torch.Tensor], n: int) -> list[tuple[int, int]]:
    """Neurons in chunks whose gradients (and the rule's temporaries) fit the memory budget."""
    per = max(int(leaf.numel()) for leaf in leaves) * 4 * 3
    chunk = max(1, min(n, WORK_BYTES // max(per, 1)))
    return [(j0, min(n, j0 + chunk)) for j0 in range(0, n, chunk)]


def _apply_rule(rule: Rule, m: int, grads: list[torch.Tensor | None], leaves: list[torch.Tensor],
                parents: list[Tap], chunks: dict[str, list[torch.Tensor]]) -> None:
    """The rule's spatial means of one chunk of m neurons' gradients (m, B, ...) appended to ``chunks``."""
    for p, leaf, g in zip(parents, leaves, grads, strict=True):
        if g is None:
            g = torch.zeros((m, *leaf.shape), device=leaf.device, dtype=leaf.dtype)
        c = call_rule(rule, g, leaf.detach().unsqueeze(0))  # checked: a plugin bug is named
        chunks[p.name].append(spatial_mean(c, p.channel_axis + 1, lead=2).double())
