"""Collection: one forward pass that records every closed-form term's statistics.

The pass runs the canonical graph once per batch with every tap cut (its value detached, as
cut semantics asks). Each term's *head* (a layer output, or a parent tap for a skip) is made an
autograd leaf; the ops between the heads and a tap's activation run with autograd, so that one
``torch.autograd.grad`` of the tap's summed activation gives, per image, the derivative ``m`` of
the tap with respect to every head at once (channels do not mix there). Everything else runs
without autograd. Statistics stay torch tensors on the model's device.

Where a tap's activation is a ReLU of its one head, or of heads summed by additions (a residual block's output),
``m`` of every head is ReLU's derivative, the 0/1 mask of the activation's positive values: that mask is read
from the activation's output (:func:`relu_mask`) instead of a backward pass, bit for bit the same values
(``tests/test_collect_masks.py`` checks it against the backward pass).
"""

from __future__ import annotations

import operator
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import fx

from ..taps import TapPlan
from .masks import relu_mask
from .planner import ClosedFormPlan, TapForm
from .terms import statistics_slots

__all__ = ["StatsInterpreter", "relu_mask", "relu_of_sums"]

_RELU_FUNCS = (torch.relu, F.relu)
_ADDS = (operator.add, torch.add)


def spatial_mean(t: torch.Tensor, channel_axis: int, lead: int = 1) -> torch.Tensor:
    """Mean over every axis except the ``lead`` leading ones and the channel axis; channel last."""
    t = t.movedim(channel_axis, -1)
    dims = tuple(range(lead, t.dim() - 1))
    return t.mean(dim=dims) if dims else t


def _is_relu(node: fx.Node, gm: fx.GraphModule) -> bool:
    if len(node.args) != 1 or any(k != "inplace" for k in node.kwargs):
        return False
    if node.op == "call_module":
        return type(gm.get_submodule(str(node.target))) is torch.nn.ReLU
    if node.op == "call_function":
        return node.target in _RELU_FUNCS
    return node.op == "call_method" and node.target == "relu"


#: layers whose output is a new tensor (never a view of their input or of a weight)
_NEW_OUTPUT = (torch.nn.Conv1d, torch.nn.Conv2d, torch.nn.Conv3d, torch.nn.Linear)


def _new_output(node: fx.Node, gm: fx.GraphModule) -> bool:
    """Whether ``node`` calls a layer whose output is a new tensor (:data:`_NEW_OUTPUT`)."""
    return node.op == "call_module" and type(gm.get_submodule(str(node.target))) in _NEW_OUTPUT


def relu_of_sums(tf: TapForm, gm: fx.GraphModule) -> bool:
    """Whether ``tf``'s activation is a ReLU of its heads summed (each head once, by additions of two values,
    nothing else between), so that every head's ``m`` is :func:`relu_mask` of the activation (where the heads
    have the activation's shape; :meth:`StatsInterpreter._record` checks that per batch)."""
    if tf.act_node is None:
        return False
    nodes = {n.name: n for n in gm.graph.nodes}
    act = nodes.get(tf.act_node)
    if act is None or not _is_relu(act, gm) or not isinstance(act.args[0], fx.Node) \
            or act.args[0].name != tf.z_node:
        return False
    segment, heads = set(tf.segment), list(tf.heads)
    if not segment:
        return heads == [tf.z_node]
    if tf.z_node not in segment:
        return False
    seen: list[str] = []
    for name in segment:
        n = nodes.get(name)
        if n is None or n.op != "call_function" or n.target not in _ADDS or n.kwargs or len(n.args) != 2 \
                or not all(isinstance(a, fx.Node) for a in n.args):
            return False
        seen.extend(a.name for a in n.args)  # type: ignore[union-attr]
    # the sum tree: every head and every segment node but z read exactly once, nothing else read
    return sorted(seen) == sorted(heads + [s for s in segment if s != tf.z_node])


class StatsInterpreter(fx.Interpreter):
    """One forward pass recording ``stats["<tap>/<term>/<key>"]`` and ``stats["scalars/<tap>"]`` (torch tensors)."""

    #: read ReLU masks from the activations where :func:`relu_of_sums` holds (tests turn it off for the reference)
    relu_masks = True
    #: hand a ReLU's output to the terms that make each image's mask themselves (tests turn it off)
    lazy_masks = True
    #: run a contiguous (NCHW) 2-D max-pooling on the CPU channels-last (tests turn it off)
    nhwc_max_pool = True
    #: run a masked tap's ReLU in place where nothing else reads its input (tests turn it off)
    relu_in_place = True

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
        #: taps whose heads' m is the ReLU mask of the activation (:func:`relu_of_sums`); False: autograd for every tap
        self.masked = {tf.tap for tf in cf.taps.values() if self.relu_masks and relu_of_sums(tf, gm)}
        #: a masked tap's ReLU runs in place on its input (no new tensor: the model's own forward does so too) where
        #: that input (its one head, or the heads' sum) is read by nothing else and kept for nothing (no term's input,
        #: no tap, no other tap's head), and the ReLU is no gate's activation; value: the tap's heads
        users = {n.name: len(n.users) for n in gm.graph.nodes}
        heads_of = [h for tf in cf.taps.values() for h in tf.heads]
        self.in_place = {str(tf.act_node): tf.heads for tf in cf.taps.values()
                         if self.relu_in_place and tf.tap in self.masked and users.get(tf.z_node) == 1
                         and heads_of.count(tf.z_node) == (0 if tf.segment else 1)
                         and tf.z_node not in self.keep and tf.z_node not in self.tap_of_node
                         and str(tf.act_node) not in self.derivatives}
        #: every other ReLU (the lowest tap's, which has no step; a tap's by autograd) runs in place where its input is
        #: a layer's new output (a convolution's or a dense layer's) that nothing else reads, keeps, taps or
        #: differentiates (VGG16's first ReLU: a 100 MB tensor per 8 images not made)
        self.free_in_place = {n.name for n in gm.graph.nodes
                              if self.relu_in_place and n.name not in self.in_place and _is_relu(n, gm)
                              and isinstance(n.args[0], fx.Node) and _new_output(n.args[0], gm)
                              and users.get(n.args[0].name) == 1 and n.name not in self.grad_nodes
                              and n.name not in self.derivatives and not self._read(n.args[0].name)}
        self.leaves: dict[str, torch.Tensor] = {}
        self.values: dict[str, torch.Tensor] = {}
        self.stats: dict[str, torch.Tensor] = {}
        #: where the caller takes the statistics: ``slots(key, shape, like)`` (see :func:`~.terms.statistics_slot`)
        self.slots: Any = None

    def _read(self, name: str) -> bool:
        """Whether the pass reads node ``name``'s value beyond its users (kept for a term, a tap, a head,
        differentiated)."""
        return name in self.keep or name in self.tap_of_node or name in self.heads or name in self.grad_nodes \
            or name in self.derivatives

    def run_node(self, n: fx.Node) -> Any:
        with torch.set_grad_enabled(n.name in self.grad_nodes):
            if n.name in self.in_place and self._same_shapes(self.in_place[n.name], self.env[n.args[0]]):  # type: ignore
                out = self.env[n.args[0]].detach().relu_()  # type: ignore[index]
            elif n.name in self.free_in_place:
                out = self.env[n.args[0]].relu_()  # type: ignore[index]
            elif n.name in self.derivatives:
                out = self._with_derivative(n)
            elif self.nhwc_max_pool and n.name not in self.grad_nodes and self._nchw_max_pool(n):
                x = self.env[n.args[0]]  # type: ignore[index]
                mod = self.module.get_submodule(str(n.target))
                out = mod(x.contiguous(memory_format=torch.channels_last)).contiguous()
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

    def _nchw_max_pool(self, n: fx.Node) -> bool:
        """Whether ``n`` is an ``nn.MaxPool2d`` (no indices) of a contiguous 4-D CPU tensor: PyTorch's NCHW max-pooling
        is a scalar loop on the CPU, its channels-last one vectorised (ResNet-50's stem, 8 images: 61 ms against 16 ms
        with both conversions); a maximum is exact, so the values are the same bit for bit."""
        if n.op != "call_module" or len(n.args) != 1 or n.kwargs or not isinstance(n.args[0], fx.Node):
            return False
        mod = self.module.get_submodule(str(n.target))
        x = self.env.get(n.args[0])
        return type(mod) is torch.nn.MaxPool2d and not mod.return_indices and isinstance(x, torch.Tensor) \
            and x.dim() == 4 and x.device.type == "cpu" and x.shape[1] > 1 and x.is_contiguous()

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
        if tf.tap in self.masked and self._same_shapes(heads, out):
            return self._record_masked(tf, out.detach(), forms)
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
            self._statistics(tf, i, masks[term.head], forms)

    def _same_shapes(self, heads: Sequence[str], out: torch.Tensor) -> bool:
        """Whether every head has ``out``'s shape and dtype (a masked tap's m is then the mask; else autograd)."""
        return all(self.leaves[h].shape == out.shape and self.leaves[h].dtype == out.dtype for h in heads)

    def _record_masked(self, tf: TapForm, act: torch.Tensor, forms: list[str]) -> None:
        """Every head's m is the ReLU mask of ``act``; a term that takes the ReLU's output itself
        (:attr:`~.terms.Term.takes_relu_output`: a conv's per-image kernels make each image's mask) gets ``act``, the
        others the mask, made once."""
        mask = None
        for i, term in enumerate(tf.terms):
            if term.takes_relu_output and self.lazy_masks:
                self._statistics(tf, i, act, forms, relu_of=True)
                continue
            if mask is None:
                mask = relu_mask(act)
            self._statistics(tf, i, mask, forms)

    def _statistics(self, tf: TapForm, i: int, m: torch.Tensor, forms: list[str], **kwargs: Any) -> None:
        """Term ``i``'s statistics from ``m``, written where :attr:`slots` says (the term's key bound)."""
        slots, prefix = self.slots, f"{tf.tap}/{i}/"
        bound = None if slots is None else (lambda field, shape, like: slots(prefix + field, shape, like))
        with statistics_slots(bound):
            stats = tf.terms[i].statistics(m, self.values, forms, **kwargs)
        self._term_statistics(tf, i, stats)

    def _term_statistics(self, tf: TapForm, i: int, stats: dict[str, torch.Tensor]) -> None:
        """Keep term ``i``'s statistics; drop the values no term needs any more."""
        for key, val in stats.items():
            self.stats[f"{tf.tap}/{i}/{key}"] = val.detach()
        for need in tf.terms[i].needs:
            self.keep[need] -= 1
            if self.keep[need] <= 0:
                self.values.pop(need, None)
