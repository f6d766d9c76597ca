"""Tap discovery on a torch.fx graph (method doc, sections 3, 4 and 4b).

Taps are the outputs of activation functions in execution order, plus the
logits (the model output, with a final Softmax / LogSoftmax stripped). Gates
(activations whose every consumer multiplies them with another computed
tensor) are not taps. Where a residual addition (two computed operands) feeds
a normalisation that mixes channels (LayerNorm, GroupNorm, RMSNorm) before any
activation, as in transformers and ConvNeXt, its output is a tap too: the
stream after the block (section 4b). Only tensors whose leading axis is the
batch are taps (a transformer run on unfolded patches, ``(B * P, N, C)``, has
none inside). A model with no tap below the logits is refused. The parents of a tap are the taps reachable backwards
without passing through another tap (cut semantics). The channel axis of a tap
is found by following the graph back to the producing conv / dense layer
through permutations, so channels-last models get the right neurons.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import torch.nn as nn
from torch import fx

from ssa.core.interfaces import Tap
from ssa.errors import InvalidInputError, UnsupportedModelError

from .kinds import (
    ACTIVATIONS,
    CHANNEL_FIRST,
    GATE_ACTIVATIONS,
    PERMUTATIONS,
    SHAPE_ONLY,
    SOFTMAX,
    STREAM_NORMS,
    display_name,
    mean_dims,
    node_kind,
    perm_of,
    target_name,
)

__all__ = ["TapPlan", "discover_taps"]


@dataclass
class TapPlan:
    """Which fx nodes are taps, and how they relate."""

    taps: tuple[Tap, ...]
    node_of: dict[str, str]  # tap name -> fx node name ("" for the input tap)
    input_tap: str | None
    stripped: str | None  # name of a final Softmax/LogSoftmax that was removed
    kinds: dict[str, str] = field(default_factory=dict)  # fx node name -> op kind


def _computed_nodes(graph: fx.Graph) -> set[str]:
    computed: set[str] = set()
    for node in graph.nodes:
        if node.op == "placeholder" or any(a.name in computed for a in node.all_input_nodes):
            computed.add(node.name)
    return computed


def _channel_axes(graph: fx.Graph, kinds: dict[str, str], shapes: dict[str, tuple[int, ...]],
                  modules: Mapping[str, nn.Module]) -> dict[str, int | None]:
    axis: dict[str, int | None] = {}
    for node in graph.nodes:
        kind = kinds[node.name]
        shape = shapes.get(node.name)
        ndim = len(shape) if shape is not None else 0
        ins = [axis.get(a.name) for a in node.all_input_nodes]
        first = next((a for a in ins if a is not None), None)
        if shape is None:
            val = None
        elif kind in CHANNEL_FIRST:
            val = 1
        elif kind in ("linear", "matmul"):
            val = ndim - 1
        elif kind in PERMUTATIONS:
            perm = perm_of(node, kind, modules, ndim)
            val = perm.index(first) if (perm is not None and first is not None and first in perm) else None
        elif kind in ("flatten", "reshape"):
            src = node.args[0] if node.args and isinstance(node.args[0], fx.Node) else None
            val = 1 if ndim == 2 else (_kept_axis(shapes.get(src.name), shape, axis.get(src.name))
                                       if src is not None else None)
        elif kind == "mean" and first is not None and node.all_input_nodes:
            reduced = mean_dims(node, len(shapes.get(node.all_input_nodes[0].name, ())) or ndim)
            if reduced is None or first in reduced[0]:
                val = None
            else:
                val = first if reduced[1] else first - sum(d < first for d in reduced[0])
        else:
            src = next((a for a in node.all_input_nodes if axis.get(a.name) is not None), None)
            val = _kept_axis(shapes.get(src.name), shape, first) if src is not None else None
        axis[node.name] = val
    return axis


def _kept_axis(src: tuple[int, ...] | None, shape: tuple[int, ...], a: int | None) -> int | None:
    """Where channel axis ``a`` of a tensor shaped ``src`` is in a result shaped ``shape`` computed from it (an
    op that keeps the shape, broadcasts, reshapes or resizes), when the axes up to it, or from it on, keep their
    sizes; None when neither does."""
    if src is None or a is None:
        return None
    if a < len(shape) and tuple(src[:a + 1]) == tuple(shape[:a + 1]):
        return a  # the shape kept, or only the axes after the channels changed: (N, C, H, W) -> (N, C, H * W)
    shift = len(shape) - len(src)
    if a + shift >= 1 and tuple(src[a:]) == tuple(shape[a + shift:]):
        return a + shift  # only the axes before them: (T * N, C) -> (T, N, C) in attention
    return None


def _feeds_norm(node: fx.Node, kinds: dict[str, str], stops: set[str]) -> bool:
    """Whether ``node`` reaches a channel-mixing normalisation without passing through a tap in ``stops``."""
    seen = {node.name}
    queue = list(node.users)
    while queue:
        u = queue.pop(0)
        if u.name in seen or u.name in stops:
            continue
        seen.add(u.name)
        if kinds[u.name] in STREAM_NORMS:
            return True
        queue.extend(u.users)
    return False


def _stream_taps(nodes: list[fx.Node], kinds: dict[str, str], computed: set[str], batched: set[str],
                 activations: list[fx.Node]) -> list[fx.Node]:
    """Residual additions (two computed operands) that feed a normalisation before an activation (section 4b)."""
    stops = {n.name for n in activations}
    return [n for n in nodes
            if kinds[n.name] == "add" and n.name in batched
            and sum(a.name in computed for a in n.all_input_nodes) >= 2 and _feeds_norm(n, kinds, stops)]


def _no_taps(nodes: list[fx.Node], kinds: dict[str, str], computed: set[str], modules: Mapping[str, nn.Module]
             ) -> UnsupportedModelError:
    others = Counter(target_name(n, modules) for n in nodes if n.name in computed and kinds[n.name] == "other")
    listed = ", ".join(f"{name} x{k}" if k > 1 else name for name, k in others.most_common(4))
    unknown = f" (ops it does not classify: {listed})" if listed else ""
    return UnsupportedModelError(
        "no taps below the logits: the model has no pointwise activation function and no residual stream feeding "
        f"a normalisation{unknown}, so its graph would be only the class node; name taps by hand with --taps, "
        "or add the input's channels with --include-input"
    )


def _input_channel_axis(graph: fx.Graph, placeholder: fx.Node, kinds: dict[str, str],
                        shapes: dict[str, tuple[int, ...]], modules: Mapping[str, nn.Module]) -> int:
    """Follow the input forward through permutations to the first conv/dense layer."""
    ndim = len(shapes.get(placeholder.name, ())) or 4
    node, perm_total = placeholder, list(range(ndim))  # out axis j = input axis perm_total[j]
    for _ in range(64):
        users = [u for u in node.users if kinds.get(u.name) not in ("meta",)]
        if not users:
            break
        user = users[0]
        kind = kinds[user.name]
        if kind in PERMUTATIONS:
            perm = perm_of(user, kind, modules, ndim)
            if perm is None:
                break
            perm_total = [perm_total[p] for p in perm]
        elif kind in ("conv", "batchnorm", "maxpool", "avgpool"):
            return perm_total[1]
        elif kind in ("linear", "matmul"):
            return perm_total[ndim - 1]
        elif kind not in ("identity", "cast", "other", "add", "sub", "mul", "div"):
            break
        node = user
    return 1 if ndim >= 2 else 0


def discover_taps(
    gm: fx.GraphModule,
    shapes: dict[str, tuple[int, ...]],
    *,
    tap_names: Sequence[str] | None = None,
    include_input: bool = False,
    channel_axes: Mapping[str, int] | None = None,
    output_index: int | None = None,
) -> TapPlan:
    """Find the taps of ``gm`` given the output shapes of its nodes (batched)."""
    graph = gm.graph
    modules = dict(gm.named_modules())
    kinds = {n.name: node_kind(n, modules) for n in graph.nodes}
    computed = _computed_nodes(graph)
    nodes = list(graph.nodes)
    position = {n.name: i for i, n in enumerate(nodes)}

    # --- logits -------------------------------------------------------------
    out_node = next(n for n in nodes if n.op == "output")
    result = out_node.args[0]
    if isinstance(result, (tuple, list)):
        outs = [r for r in result if isinstance(r, fx.Node)]
        if len(outs) == 1 and output_index is None:
            result = outs[0]
        elif output_index is None:
            raise UnsupportedModelError(
                f"the model returns {len(result)} outputs, expected one tensor of logits; "
                "choose one with --output-index N (Python: output_index=N)."
            )
        elif not 0 <= output_index < len(result):
            raise InvalidInputError(
                f"output_index must be in [0, {len(result) - 1}], got {output_index}."
            )
        else:
            result = result[output_index]
    elif isinstance(result, dict):
        raise UnsupportedModelError("the model returns a dict; wrap it so that forward() returns the logits tensor.")
    if not isinstance(result, fx.Node):
        raise UnsupportedModelError("the model output is not computed from its input; cannot find the logits.")
    stripped = None
    while kinds[result.name] in SOFTMAX and result.all_input_nodes:
        stripped = target_name(result, modules)
        result = result.all_input_nodes[0]
    logits_node = result
    if len(shapes.get(logits_node.name, ())) != 2:
        raise UnsupportedModelError(
            f"the logits must be 2-D (batch, classes), got shape {shapes.get(logits_node.name)}; "
            "make forward() return class scores."
        )

    # --- activation taps ------------------------------------------------------
    def is_gate(node: fx.Node) -> bool:
        # every consumer, looking through shape-only ops (``s[:, :, None, None]``, ``s.view(b, c, 1, 1)``),
        # must multiply the gate with another computed tensor
        users = [(node, u) for u in node.users]
        if not users:
            return False
        seen: set[str] = set()
        while users:
            src, u = users.pop()
            if u.name in seen:
                continue
            seen.add(u.name)
            if kinds[u.name] in SHAPE_ONLY and u.all_input_nodes and u.all_input_nodes[0] is src:
                if not u.users:
                    return False
                users.extend((u, w) for w in u.users)
                continue
            if kinds[u.name] != "mul":
                return False
            others = [a for a in u.all_input_nodes if a is not src]
            if not others or not any(o.name in computed for o in others):
                return False
        return True

    stream_names: set[str] = set()  # residual additions taken as stream taps
    composite: set[str] = set()  # products x * sigmoid(x) / x * hardsigmoid(x) that are the activation
    module_calls: Counter[str] = Counter()
    names: dict[str, str] = {}
    for n in nodes:
        base = display_name(n)
        k = module_calls[base]
        names[n.name] = base if k == 0 else f"{base}@{k}"
        module_calls[base] += 1

    if tap_names:
        by_name = {names[n.name]: n for n in nodes}
        by_name.update({n.name: n for n in nodes})
        chosen = []
        for t in tap_names:
            if t == "logits":
                continue
            if t not in by_name:
                candidates = ", ".join(names[n.name] for n in nodes if kinds[n.name] in ACTIVATIONS)
                raise InvalidInputError(
                    f"tap {t!r} is not a node of the model; expected a module path or node name such as: {candidates}."
                )
            if by_name[t].name not in computed or len(shapes.get(by_name[t].name, ())) < 2:
                raise InvalidInputError(f"tap {t!r} is not a batched tensor computed from the input; name another "
                                        "node.")
            chosen.append(by_name[t])
        tap_nodes = sorted(set(chosen), key=lambda n: position[n.name])
        kind_of_tap = "manual"
    else:
        # per-image tensors: the leading axis is the batch (the shapes are of the example batch)
        batch = shapes.get(next((n.name for n in nodes if n.op == "placeholder"), ""), (1,))[:1]
        batched = {n.name for n in nodes if n.name in computed and len(shapes.get(n.name, ())) >= 2
                   and shapes[n.name][:1] == batch}
        tap_nodes = [n for n in nodes if kinds[n.name] in ACTIVATIONS and n.name in batched and not is_gate(n)]
        # swish written as x * sigmoid(x), hardswish as x * hardsigmoid(x) (ONNX opset < 14 exports it
        # so): the product is the activation
        for n in nodes:
            if kinds[n.name] in GATE_ACTIVATIONS and is_gate(n) and n.all_input_nodes:
                x = n.all_input_nodes[0]
                for u in n.users:
                    if x in u.all_input_nodes and u.name in batched:
                        tap_nodes.append(u)
                        kinds[u.name] = "swish" if kinds[n.name] == "sigmoid" else "hardswish"
                        composite.add(u.name)
        streams = _stream_taps(nodes, kinds, computed, batched, tap_nodes)
        stream_names = {n.name for n in streams}
        tap_nodes = sorted(set(tap_nodes) | set(streams), key=lambda n: position[n.name])
        kind_of_tap = "activation"
    tap_nodes = [n for n in tap_nodes if n is not logits_node and position[n.name] < position[logits_node.name]]
    if not tap_nodes and not tap_names and not include_input:
        raise _no_taps(nodes, kinds, computed, modules)

    axes = _channel_axes(graph, kinds, shapes, modules)
    channel_axes = dict(channel_axes or {})

    tap_of_node: dict[str, str] = {n.name: names[n.name] for n in tap_nodes}
    tap_of_node[logits_node.name] = "logits"
    placeholders = [n for n in nodes if n.op == "placeholder"]
    if not placeholders:
        raise UnsupportedModelError("the model has no input.")
    if len(placeholders) > 1:
        raise UnsupportedModelError(
            f"the model takes {len(placeholders)} inputs, expected one image tensor; wrap it in a module with one "
            "input."
        )
    ph = placeholders[0]

    def parents_of(node: fx.Node) -> tuple[str, ...]:
        found: list[str] = []
        seen: set[str] = set()
        stack = list(node.all_input_nodes)
        while stack:
            a = stack.pop()
            if a.name in seen:
                continue
            seen.add(a.name)
            if a.name in tap_of_node:
                found.append(tap_of_node[a.name])
            elif a.op == "placeholder":
                if include_input:
                    found.append("input")
            else:
                stack.extend(a.all_input_nodes)
        return tuple(sorted(set(found), key=lambda t: -order_of[t]))

    ordered = list(tap_nodes) + [logits_node]
    order_of: dict[str, int] = {}
    base = 1 if include_input else 0
    if include_input:
        order_of["input"] = 0
    for i, n in enumerate(ordered):
        order_of[tap_of_node[n.name]] = base + i

    taps: list[Tap] = []
    if include_input:
        shape = tuple(shapes[ph.name][1:])
        ax = channel_axes.get("input", _input_channel_axis(graph, ph, kinds, shapes, modules))
        taps.append(Tap("input", 0, "input", shape, _check_axis("input", ax, len(shape) + 1), (), "input"))
    for n in ordered:
        tname = tap_of_node[n.name]
        shape = tuple(shapes[n.name][1:])
        ndim = len(shape) + 1
        ax = channel_axes.get(tname)
        if ax is None:
            ax = axes.get(n.name)
            if ax is None or ax == 0:
                ax = 1
        kind = "logits" if n is logits_node else ("stream" if n.name in stream_names else kind_of_tap)
        taps.append(Tap(tname, order_of[tname], kind, shape, _check_axis(tname, ax, ndim),
                        parents_of(n), kinds[n.name] if n.name in composite else target_name(n, modules)))
    unknown_axes = set(channel_axes) - {t.name for t in taps}
    if unknown_axes:
        raise InvalidInputError(f"channel axis given for unknown tap {sorted(unknown_axes)[0]!r}; use a tap name from "
                                "`ssa check`.")
    node_of = {tap_of_node[n.name]: n.name for n in ordered}
    if include_input:
        node_of["input"] = ph.name
    return TapPlan(tuple(taps), node_of, "input" if include_input else None, stripped, kinds)


def _check_axis(name: str, axis: int, ndim: int) -> int:
    axis = int(axis)
    if axis < 0:
        axis += ndim
    if not 1 <= axis < ndim:
        raise InvalidInputError(
            f"channel axis of tap {name!r} must be in [1, {ndim - 1}] (axis 0 is the batch), got {axis}."
        )
    return axis
