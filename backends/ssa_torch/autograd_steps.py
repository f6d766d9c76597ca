"""Step relevance by autograd (method doc, section 4): cut-semantics execution and batched backward passes.

Every tap's output is replaced by a detached leaf that requires grad, so that
the derivative of a tap with respect to one of its parent taps follows only the
paths that meet no other tap (method doc, section 4). A step runs through its own
segment only, from the batch's remembered tap values and scalars (:mod:`ssa_torch.segments`):
the linear head of the segment (residual additions, linear layers, ...), or the top of an activation of
a linear layer, in closed form (:mod:`ssa_torch.head`), the rest forward once (in the batch's cut pass, which keeps it
with its autograd graph: ``_tap_values(graph=True)``; else in the step) and backward for all upper neurons at once
(``torch.autograd.grad(..., is_grads_batched=True)``), or one backward pass per neuron in a
segment with an op that has no batching rule there (LayerNorm, GELU, SiLU, convolution, softmax, attention:
vmap's own per-slice loop costs more than ours). ``_step_relevance_full`` keeps the whole-network
path as the reference.

:class:`AutogradSteps` is a mixin of :class:`~ssa_torch.network.TorchNetwork`.
"""

from __future__ import annotations

import contextlib
import dataclasses
import warnings
from collections.abc import Callable, Collection, Iterator, Mapping, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import fx

from ssa.core.budget import work_bytes
from ssa.core.checks import call_rule
from ssa.core.interfaces import Rule, Tap

from .closed_form.collect import spatial_mean
from .head import head_cotangents, top_cotangents
from .host import exact_arithmetic, statistics_input
from .interpreters import ModelCodeInterpreter
from .segments import Segment, TapValues, recorded_nodes, run_nodes, run_segment, segment_of
from .tokens import aggregate

if TYPE_CHECKING:
    from .taps import TapPlan

__all__ = ["AutogradSteps", "spatial_mean"]

_SCALARS = "scalars/"  # the key prefix of the taps' scalars kept with a batch's tap values (never a node name)
_GRAPH = "graph/"  # the key prefix of a node's value kept with its autograd graph (see ``_tap_values``)
_LEAF = "leaf/"  # the key prefix of a parent tap's cut value that that graph starts from

class _CutInterpreter(ModelCodeInterpreter):
    def __init__(self, gm: fx.GraphModule, cut: Mapping[str, str], input_node: str | None, grad: bool,
                 only: Collection[str] | None = None, keep: Collection[str] = ()):
        super().__init__(gm, garbage_collect_values=True)
        self.cut = cut
        self.input_node = input_node
        self.grad = grad
        self.only = only  # with grad: the taps whose leaves require it (None: every tap)
        self.keep = keep  # nodes whose values are kept in ``kept`` (with their autograd graph)
        self.raw: dict[str, torch.Tensor] = {}
        self.leaf: dict[str, torch.Tensor] = {}
        self.kept: dict[str, Any] = {}  # tensors, and the tuples or sizes some nodes give

    def run_node(self, n: fx.Node) -> Any:
        out = super().run_node(n)
        if n.name in self.keep:
            self.kept[n.name] = out
        tap = self.cut.get(n.name)
        if tap is not None and isinstance(out, torch.Tensor):
            self.raw[tap] = out
            leaf = out.detach()
            if self.grad and (self.only is None or tap in self.only):
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
        _graph_taps: tuple[frozenset[str], frozenset[str]] | None
        _graphs_fit: bool
        _input_node: str
        _token_axes: dict[str, int]

        def tap(self, name: str) -> Tap: ...

        def to_tensor(self, batch: Any) -> torch.Tensor: ...

    def run(self, batch: np.ndarray | torch.Tensor, grad: bool, only: Collection[str] | None = None,
            keep: Collection[str] = ()) -> _CutInterpreter:
        """Run the model with every tap cut; returns the interpreter holding raw and leaf values. With ``grad``,
        the leaves of the taps ``only`` (default: all) require it, and the values of the nodes ``keep`` are kept
        (``interp.kept``) with their autograd graph."""
        plan = self.plan
        cut = {node: tap for tap, node in plan.node_of.items() if tap != plan.input_tap}
        # the statistics pass's layout (channels-last where it runs so), so that both sum in the same order
        x = statistics_input(self.to_tensor(batch), self.device, self.graph_module)
        interp = _CutInterpreter(self.graph_module, cut, None, grad, only, keep)
        interp.args_batch = int(x.shape[0])
        if plan.input_tap is not None:
            if grad and (only is None or plan.input_tap in only):
                x = x.detach().requires_grad_(True)
            interp.raw[plan.input_tap] = x
            interp.leaf[plan.input_tap] = x
        with torch.set_grad_enabled(grad):
            interp.run(x)
        return interp

    def _aggregate(self, value: torch.Tensor, tap: Tap, lead: int = 1) -> torch.Tensor:
        """The neurons' scalars of a tap's value: the mean over positions, or its class token alone."""
        return aggregate(value, tap.channel_axis, self._token_axes.get(tap.name), lead)

    def scalars_of(self, interp: _CutInterpreter) -> dict[str, torch.Tensor]:
        out = {}
        with torch.no_grad():
            for tap in self.plan.taps:
                value = interp.raw[tap.name].detach()
                out[tap.name] = self._aggregate(value, tap).double()
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
        values = self._tap_values(batch, graph=True)
        plan = self.plan
        scalars = self._scalars_of(values)
        parents = [self.tap(p) for p in tap.parents]
        if not parents or len(neurons) == 0:
            return {}, scalars
        if upper not in self._segments:
            self._segments[upper] = segment_of(self.graph_module, plan, upper)
        segment = self._segments[upper]
        head = segment.head
        gm, nodes = self.graph_module, [plan.node_of[p.name] for p in parents]
        recorded = recorded_nodes(gm, segment)
        known = upper not in self._token_axes and all(_LEAF + n in values for n in nodes) and all(
            _GRAPH + n in values for n in recorded) and bool(recorded)
        if known:  # the batch's cut pass ran this segment's forward with gradients and kept it
            leaves = [values[_LEAF + name] for name in nodes]
        else:
            leaves = [values[name].detach().requires_grad_(True) for name in nodes]
        feed = dict(values)
        if upper in self._token_axes:  # the class token alone: the head's cotangents assume the mean over tokens
            feed.update(zip(nodes, leaves, strict=True))
            with torch.enable_grad():
                out = run_segment(gm, segment, feed, len(batch))
            s = self._aggregate(out, tap)[:, list(neurons)]  # (B, n)
            return self._relevance(s, leaves, parents, rule), scalars
        feed.update(zip(nodes, leaves, strict=True))
        if known:  # only the parameters and constants the head reads are fetched
            env = run_nodes(gm, segment, feed, len(batch), tuple(n for n in head.compute if n not in recorded))
            env.update((n, values[_GRAPH + n]) for n in recorded)
        else:
            with torch.enable_grad():  # the forward pass below the head, once for every neuron
                env = run_nodes(gm, segment, feed, len(batch), head.compute)
        top = values[plan.node_of[upper]]
        if head.top is not None and tap.channel_axis % top.dim() != top.dim() - 1:  # its channels are not the layer's
            head = dataclasses.replace(head, stops=(segment.upper,), top=None)
        roots = head_cotangents(gm, head, env, segment.upper, tap.channel_axis, neurons, top.dtype, top.device)
        dz_rows = top_cotangents(gm, head, env, roots.pop(segment.upper), neurons) if head.top else None
        outputs = [env[name] for name in head.stops]
        chunks: dict[str, list[torch.Tensor]] = {p.name: [] for p in parents}
        for j0, j1 in _chunks(leaves, len(neurons), work_bytes(self.device)):
            if dz_rows is not None:  # an activation of a linear layer: its column times the weight's row
                gos = [dz_rows[0][j0:j1] * dz_rows[1][j0:j1]]
            else:
                gos = [roots[name][j0:j1].expand(j1 - j0, *env[name].shape) for name in head.stops]
            for k0, k1, grads in self._pull(segment, outputs, gos, leaves, j1 - j0):
                m = k1 - k0
                for i, name in enumerate(nodes):
                    term = roots.get(name)
                    if term is not None:  # the head's own term (a residual's skip: the one-hot itself)
                        t, g = term[j0 + k0:j0 + k1], grads[i]
                        grads[i] = t.expand(m, *leaves[i].shape) if g is None else g + t
                _apply_rule(rule, m, grads, leaves, parents, chunks, self._aggregate)
        return {k: _joined(v) for k, v in chunks.items()}, scalars

    def _pull(self, segment: Segment, outputs: list[torch.Tensor], gos: list[torch.Tensor],
              leaves: list[torch.Tensor], m: int) -> Iterator[tuple[int, int, list[torch.Tensor | None]]]:
        """The leaves' gradients for the m cotangents ``gos`` (m, ...) at ``outputs``, as ``(k0, k1, grads)`` with
        grads (k1 - k0, ...) for the cotangents k0..k1: one batched backward pass, or one pass per neuron in a
        segment with an op that has no batching rule there (LayerNorm, GELU, SiLU, convolution, softmax,
        attention: vmap loops over the slices itself, with copies that cost more than our loop, and runs the same
        kernels slice by slice). A segment's first batched pass, on two neurons, says which (vmap's loop over a
        whole chunk costs about twice ours), and the choice is kept. Each neuron's gradients go to the rule as they
        come, never stacked (a copy of them all). No cotangent at all (a head
        without stops, such as an MLP stream's): no gradients, the head's terms alone."""
        if not outputs:
            yield 0, m, [None] * len(leaves)
            return
        start = 0
        if segment.batched and m > 1:
            size = m if segment.probed else 2
            try:
                with _vmap_fallbacks() as fell_back:
                    out = torch.autograd.grad(outputs, leaves, [g[:size] for g in gos], retain_graph=True,
                                              allow_unused=True, is_grads_batched=True)
            except torch.OutOfMemoryError:
                raise
            except RuntimeError:  # an op that cannot be batched at all
                segment.batched = False
            else:
                segment.batched, segment.probed = not fell_back, True
                yield 0, size, list(out)
                start = size
                if segment.batched and size < m:
                    out = torch.autograd.grad(outputs, leaves, [g[size:] for g in gos], retain_graph=True,
                                              allow_unused=True, is_grads_batched=True)
                    yield size, m, list(out)
                    return
        for j in range(start, m):
            one = torch.autograd.grad(outputs, leaves, [g[j] for g in gos], retain_graph=True, allow_unused=True)
            yield j, j + 1, [None if g is None else g.unsqueeze(0) for g in one]

    def _tap_values(self, batch: np.ndarray | torch.Tensor, graph: bool = False) -> dict[str, torch.Tensor]:
        """Every tap's value and the input on ``batch`` (node name -> tensor): one cut forward pass, remembered.

        With ``graph``, that pass runs with gradients from the parent taps of the steps that run a backward pass
        below their head, and keeps what those steps' own forward passes would compute (``recorded_nodes``, under
        ``graph/``) with its autograd graph, and the parents' leaves it starts from (under ``leaf/``): the same
        operations on the same values, so each such step runs its backward passes only. When that does not fit
        the budget (or the pass with gradients fails: out of memory), the values alone are kept from then on and the
        steps run their forward passes (as without ``graph``)."""
        key = self._values.key(batch)
        found = self._values.get(key)
        grad_taps, keep = self._graph_plan() if graph and self._graphs_fit else (frozenset(), frozenset())
        if found is not None and (not grad_taps or _LEAF + self.plan.node_of[next(iter(grad_taps))] in found):
            return found
        try:
            interp = self.run(batch, grad=bool(grad_taps), only=grad_taps, keep=keep)
        except RuntimeError:  # out of memory with the graph, or an op autograd cannot record: the values alone
            if not grad_taps:
                raise
            self._graphs_fit = False
            grad_taps = frozenset()
            interp = self.run(batch, grad=False)
        plan = self.plan
        found = {plan.node_of[t]: v.detach() for t, v in interp.raw.items()}
        found[self._input_node] = self.to_tensor(batch)
        for t in plan.taps:  # every tap's scalars, kept with the values (and counted in their budget)
            found[_SCALARS + t.name] = self._aggregate(found[plan.node_of[t.name]], t).double()
        if grad_taps:
            with_graph = dict(found)
            with_graph.update((_LEAF + plan.node_of[t], leaf) for t, leaf in interp.leaf.items() if t in grad_taps)
            with_graph.update((_GRAPH + name, v) for name, v in interp.kept.items())
            if self._values.fits(with_graph):
                found = with_graph
            else:  # from now on the values alone: a pass with gradients whose graph is then dropped costs more
                self._graphs_fit = False
        self._values.put(key, found)
        return found

    def _graph_plan(self) -> tuple[frozenset[str], frozenset[str]]:
        """(the parent taps of the steps that run a backward pass below their head, the nodes those steps read:
        ``recorded_nodes``), from every step's segment (made once)."""
        if self._graph_taps is None:
            taps: set[str] = set()
            keep: set[str] = set()
            for tap in self.plan.taps:
                if not tap.parents or tap.name in self._token_axes:
                    continue
                if tap.name not in self._segments:
                    self._segments[tap.name] = segment_of(self.graph_module, self.plan, tap.name)
                nodes = recorded_nodes(self.graph_module, self._segments[tap.name])
                if nodes:
                    taps.update(tap.parents)
                    keep.update(nodes)
            self._graph_taps = (frozenset(taps), frozenset(keep))
        return self._graph_taps

    def _scalars_of(self, values: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Every tap's scalars, kept with a batch's tap values (read-only)."""
        return {t.name: values[_SCALARS + t.name] for t in self.plan.taps}

    def _step_relevance_full(self, batch: np.ndarray, upper: str, neurons: Sequence[int], rule: Rule
                             ) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
        """The reference of :meth:`_step_relevance`: the whole network run with every tap cut, then the gradients."""
        tap = self.tap(upper)
        interp = self.run(batch, grad=True)
        scalars = self.scalars_of(interp)
        parents = [self.tap(p) for p in tap.parents]
        if not parents or len(neurons) == 0:
            return {}, scalars
        s = self._aggregate(interp.raw[upper], tap)[:, list(neurons)]  # (B, n)
        rel = self._relevance(s, [interp.leaf[p.name] for p in parents], parents, rule)
        return rel, scalars

    def _relevance(self, s: torch.Tensor, leaves: list[torch.Tensor], parents: list[Tap], rule: Rule
                   ) -> dict[str, torch.Tensor]:
        B, n = s.shape
        chunks: dict[str, list[torch.Tensor]] = {p.name: [] for p in parents}
        for j0, j1 in _chunks(leaves, n, work_bytes(self.device)):
            grads = self._grads(s, leaves, j0, j1)
            _apply_rule(rule, j1 - j0, grads, leaves, parents, chunks, self._aggregate)
        return {k: _joined(v) for k, v in chunks.items()}

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


@contextlib.contextmanager
def _vmap_fallbacks() -> Iterator[list[str]]:
    """The ops for which a batched backward pass fell back to vmap's per-slice loop (a list filled on exit)."""
    found: list[str] = []
    show = getattr(torch._C, "_debug_only_display_vmap_fallback_warnings", None)
    if show is None:
        yield found
        return
    before = torch._C._debug_only_are_vmap_fallback_warnings_enabled()
    show(True)
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            yield found
    finally:
        show(before)
    found.extend(str(w.message) for w in caught if "batching rule" in str(w.message))


def _joined(parts: list[torch.Tensor]) -> torch.Tensor:
    """The pieces of a step's omega (neurons, images, parent neurons) along the neurons (no copy of one piece)."""
    return parts[0] if len(parts) == 1 else torch.cat(parts, dim=0)


def _stacked(per_neuron: Sequence[Sequence[torch.Tensor | None]], leaves: list[torch.Tensor]
             ) -> list[torch.Tensor | None]:
    out: list[torch.Tensor | None] = []
    for idx, leaf in enumerate(leaves):
        parts = [g[idx] for g in per_neuron]
        out.append(None if all(p is None for p in parts) else
                   torch.stack([p if p is not None else torch.zeros_like(leaf) for p in parts]))
    return out


def _chunks(leaves: list[torch.Tensor], n: int, budget: int) -> list[tuple[int, int]]:
    """Neurons in chunks whose gradients (and the rule's temporaries) fit the memory budget."""
    per = max(int(leaf.numel()) for leaf in leaves) * 4 * 3
    chunk = max(1, min(n, budget // max(per, 1)))
    return [(j0, min(n, j0 + chunk)) for j0 in range(0, n, chunk)]


def _apply_rule(rule: Rule, m: int, grads: list[torch.Tensor | None], leaves: list[torch.Tensor],
                parents: list[Tap], chunks: dict[str, list[torch.Tensor]],
                agg: Callable[..., torch.Tensor]) -> None:
    """The rule's spatial means of one chunk of m neurons' gradients (m, B, ...) appended to ``chunks``."""
    for p, leaf, g in zip(parents, leaves, grads, strict=True):
        if g is None:
            g = torch.zeros((m, *leaf.shape), device=leaf.device, dtype=leaf.dtype)
        c = call_rule(rule, g, leaf.detach().unsqueeze(0))  # checked: a plugin bug is named
        chunks[p.name].append(agg(c, p, lead=2).double())
