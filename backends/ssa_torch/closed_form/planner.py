"""Which steps have a closed form, and its terms (method doc, section 6).

For every tap with parents, :func:`plan_closed_form` walks the canonical graph:

* **output side**, from the activation's input z back to the *heads*: layers (conv, dense, or any
  op kind a plugin registered) and parent taps reached directly (skip connections). In between
  may sit ops that keep channels apart: sums, per-channel constant scales and shifts,
  batch-norm, permutations, reshapes, pooling and concatenations (DenseNet's concatenated
  outputs). Their effect is not modelled: during collection, autograd gives the exact
  derivative ``m`` of the tap's summed activation with respect to each head, per image. Which
  head channel feeds which upper channel is found by pushing channel codes forward.
* **input side**, from a layer's input back to the parent taps (:class:`Planner.resolve`):
  paths of pooling / reshape / permute / per-channel affine / concatenation ops (the parent
  channel of each layer input is found by pushing channel codes through the path), sums
  (the layer distributes over them: residual connections into the next conv), further layers
  with no tap in between (composed: linear chains), and squeeze-excitation products (the gate is
  a per-image, per-channel scale of the layer input).

Each head is handed to the :class:`~ssa_torch.closed_form.registry.ClosedForm` registered for
its op kind, which returns the terms; a step whose walk meets anything else keeps exact
autograd, and the reason is recorded for ``ssa check``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import fx

from ..kinds import ACTIVATIONS, GATE_ACTIVATIONS, SUMS
from ..taps import TapPlan
from .codes import decode_channels
from .facts import reason_for
from .inputs import _PATH, InputSide
from .linear import NotClosedForm
from .plan import FORMS, Branch, ClosedFormPlan, Gate, TapForm
from .terms import Term

__all__ = ["Planner", "Branch", "Gate", "TapForm", "ClosedFormPlan", "plan_closed_form", "FORMS"]

_OUTPUT = _PATH | {"batchnorm", "cat"}


class Planner(InputSide):
    """The context closed forms are planned in: the canonical graph, its values at batch 1, the taps.

    Builders (:class:`~ssa_torch.closed_form.registry.ClosedForm`) use :meth:`layer_op`,
    :meth:`resolve` and :meth:`value` to build their terms. The facts (:mod:`.facts`), channel codes
    (:mod:`.codes`) and the input side (:mod:`.inputs`) are inherited; the output side is here.
    """

    def heads(self, z: fx.Node, own: str | None) -> tuple[list[fx.Node], list[fx.Node]]:
        """The heads reached from ``z`` backwards, and the segment of ops between them and ``z``."""
        from .registry import form_for

        heads: list[fx.Node] = []
        segment: list[fx.Node] = []
        seen: set[str] = set()
        stack = [z]
        while stack:
            node = stack.pop()
            if node.name in seen:
                continue
            seen.add(node.name)
            if node.name != own and self.is_tap(node):
                heads.append(node)
                continue
            kind = self.kind(node)
            if node.op == "placeholder":
                raise NotClosedForm("the input image reaches the tap without a layer or tap")
            if form_for(kind) is not None:
                heads.append(node)
                continue
            comp = self.computed_args(node)
            if self.affine(node) is not None or kind in _OUTPUT or (kind in SUMS and len(comp) >= 2):
                if kind in ("maxpool",) and node.op == "call_module" and getattr(self.modules[node.target],
                                                                                 "return_indices", False):
                    raise NotClosedForm("max pooling with indices")
                if kind not in ("cat",) and kind not in SUMS and len(comp) != 1:
                    raise NotClosedForm("an op with several computed inputs between the tap and its parents")
                segment.append(node)
                stack.extend(comp)
                continue
            if kind == "mul" and len(comp) == 2:
                raise NotClosedForm("a product of computed tensors after the layer (an output gate)")
            raise NotClosedForm(reason_for(kind, "between the tap and its parents"))
        segment.sort(key=lambda n: self.order[n.name])
        heads.sort(key=lambda n: self.order[n.name])
        return heads, segment

    def head_channel_axis(self, head: fx.Node, own: str | None = None) -> int:
        from .registry import form_for

        kind = "tap" if self.is_tap(head) and head.name != own else self.kind(head)
        return form_for(kind).channel_axis(head, self)

    def out_index(self, head: fx.Node, heads: Sequence[fx.Node], segment: Sequence[fx.Node], z: fx.Node,
                  upper_axis: int, n_upper: int, own: str | None = None) -> torch.Tensor:
        """Per upper channel, the head channel feeding it (-1: none); refused when channels mix.

        Codes are pushed from ``head`` alone (the other heads give zeros) through the segment to ``z``
        (:meth:`~ssa_torch.closed_form.codes.ChannelCodes.push_codes`: one value per channel where the segment
        keeps channels apart pointwise).
        """
        axes = {h.name: self.head_channel_axis(h, own) for h in heads}
        n_head = self.value(head).shape[axes[head.name]]
        rand = 1 + torch.rand(n_head, generator=self._gen, dtype=torch.float64)
        probes = [{h.name: torch.zeros(self.value(h).shape[axes[h.name]], dtype=torch.float64) for h in heads}
                  for _ in range(3)]
        for probe, v in zip(probes, (torch.ones(n_head, dtype=torch.float64),
                                     1 + torch.arange(n_head, dtype=torch.float64), rand), strict=True):
            probe[head.name] = v
        outs, _, _ = self.push_codes(probes, axes, segment, z, target_axis=upper_axis)
        ones, index, rv = (out[0].movedim(upper_axis - 1, 0).reshape(n_upper, -1).cpu() for out in outs)
        why = "a layer output channel is mixed into the tap"
        fed, chan = decode_channels(ones, index, rv, rand, why)
        first = torch.where(fed.any(1), chan.max(1).values, torch.full((n_upper,), -1, dtype=torch.long))
        if not bool(torch.all((chan == first[:, None]) | ~fed)):
            raise NotClosedForm(why)
        used = first[first >= 0]
        if used.numel() != torch.unique(used).numel():
            raise NotClosedForm("a layer output channel feeds several channels of the tap")
        return first


def plan_closed_form(gm: fx.GraphModule, plan: TapPlan, env1: Mapping[str, Any], *,
                     full_push: bool = False) -> ClosedFormPlan:
    """Find the taps whose steps have a closed form; record why the others do not.

    ``full_push`` pushes every channel code at full size (the slow reference the tests compare the default
    with; see :mod:`~ssa_torch.closed_form.codes`).
    """
    from .registry import form_for

    planner = Planner(gm, plan, env1)
    planner.full_push = full_push
    out = ClosedFormPlan()
    for tap in plan.taps:
        if not tap.parents or tap.kind == "input":
            continue
        node = planner.nodes[plan.node_of[tap.name]]
        try:
            inner: list[fx.Node] = []  # the gate of a composite activation (x * sigmoid(x))
            if tap.kind == "logits":
                act, z = None, node
            else:
                comp = planner.computed_args(node)
                if planner.kind(node) not in ACTIVATIONS:
                    raise NotClosedForm("the tap is not a pointwise activation of one tensor")
                if len(comp) == 2:  # swish / hard-swish written as x * sigmoid(x) (ONNX exports)
                    pair = [(x, g) for x, g in (comp, comp[::-1]) if planner.kind(g) in GATE_ACTIVATIONS
                            and planner.computed_args(g) == [x]]
                    if not pair:
                        raise NotClosedForm("the tap is not a pointwise activation of one tensor")
                    z, gate = pair[0]
                    inner.append(gate)
                elif len(comp) == 1:
                    z = comp[0]
                else:
                    raise NotClosedForm("the tap is not a pointwise activation of one tensor")
                act = node.name
                if tuple(env1[z.name].shape) != tuple(env1[node.name].shape):
                    raise NotClosedForm("the activation changes the shape")
            heads, segment = planner.heads(z, node.name)
            segment = segment + inner
            terms: list[Term] = []
            for head in heads:
                kind = "tap" if planner.is_tap(head) and head is not node else planner.kind(head)
                made = form_for(kind).terms(head, planner)
                index = planner.out_index(head, heads, segment, z, tap.channel_axis, tap.n_neurons, node.name)
                for t in made:
                    t.head = head.name
                    t.out_index = index
                    t.n_parent = planner.taps[t.parent].n_neurons
                    t.scale = 1.0 / (tap.n_positions * planner.taps[t.parent].n_positions)
                terms.extend(made)
            reached = {t.parent for t in terms}
            if reached != set(tap.parents):
                missing = sorted(set(tap.parents) - reached)
                raise NotClosedForm(f"parent {missing[0]} is not reached through a closed-form term" if missing
                                    else "a term reaches a tap that is not a parent")
            out.taps[tap.name] = TapForm(tap.name, act, z.name, terms, tuple(n.name for n in segment))
        except NotClosedForm as exc:
            out.reasons[tap.name] = str(exc)
    return out
