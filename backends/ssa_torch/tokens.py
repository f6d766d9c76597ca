"""The class token alone (``tokens="cls"``; method doc, section 4b).

By default a token tap (N, T, C) aggregates its T tokens as positions are aggregated (the mean). With
``tokens="cls"`` the taps that carry a class token take that token alone: a neuron's value is its channel at
position 0 of the token axis, and a step's relevance is the rule's value there (no mean over tokens).

A class token is found in the canonical graph: a concatenation along axis 1 of a 3-D tensor whose first
piece is one token that does not depend on the image (a learnt parameter expanded over the batch, as
torchvision's and timm's ViTs write it). The taps it reaches with the same token count on axis 1 and their
channels on the last axis take the class token; a model without one is refused.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import fx

from ssa.core.options import TOKEN_MODES
from ssa.errors import InvalidInputError

from .closed_form.collect import spatial_mean
from .interpreters import node_values

__all__ = ["TOKEN_MODES", "class_token_axes", "aggregate"]


def class_token_axes(gm: fx.GraphModule, plan: Any, x: torch.Tensor) -> dict[str, int]:
    """Tap name -> its token axis (in the batched tensor), for the taps that carry a class token; refused
    (``InvalidInputError``) when the model has none. ``x``: one example image (a batch of 1)."""
    cats = [n for n in gm.graph.nodes if n.op == "call_function" and n.target in (torch.cat, torch.concat)
            and n.args and isinstance(n.args[0], (list, tuple)) and len(n.args[0]) >= 2
            and (n.kwargs.get("dim", n.args[1] if len(n.args) > 1 else 0)) in (1, -2)]
    firsts = {c.args[0][0].name for c in cats if isinstance(c.args[0][0], fx.Node)}
    wanted = firsts | {c.name for c in cats}
    one = node_values(gm, x, wanted)
    other = node_values(gm, torch.rand_like(x) * 2 - 1 + x.mean(), wanted)
    tokens: dict[str, int] = {}  # cat node -> its token count
    for c in cats:
        first, out = c.args[0][0], one.get(c.name)
        if not isinstance(first, fx.Node) or not isinstance(out, torch.Tensor) or out.dim() != 3:
            continue
        a, b = one.get(first.name), other.get(first.name)
        if isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor) and a.shape == b.shape and a.dim() == 3 \
                and a.shape[1] == 1 and torch.equal(a, b):
            tokens[c.name] = int(out.shape[1])
    below: dict[str, set[int]] = {}
    for node in gm.graph.nodes:
        counts = set().union(*(below.get(a.name, set()) for a in node.all_input_nodes)) if node.all_input_nodes \
            else set()
        if node.name in tokens:
            counts = counts | {tokens[node.name]}
        below[node.name] = counts
    out: dict[str, int] = {}
    for tap in plan.taps:
        node = plan.node_of.get(tap.name)
        shape = (1, *tap.shape)
        if node and len(shape) == 3 and tap.channel_axis == 2 and shape[1] in below.get(node, set()):
            out[tap.name] = 1
    if not out:
        raise InvalidInputError("tokens='cls' (--tokens cls) asks for the class token alone, but the model has no "
                                "class token (no image-independent token concatenated before the others on a "
                                "token tap); use tokens='all' (the default).")
    return out


def aggregate(value: torch.Tensor, channel_axis: int, token_axis: int | None, lead: int = 1) -> torch.Tensor:
    """The neurons' scalars of ``value``: the mean over positions (:func:`spatial_mean`), or, with a token axis,
    the class token alone (position 0 of that axis; axes counted as in a tensor with one leading batch axis,
    ``lead`` leading axes in ``value``)."""
    if token_axis is not None:
        value = value.narrow(token_axis + lead - 1, 0, 1)
    return spatial_mean(value, channel_axis + lead - 1, lead=lead)
