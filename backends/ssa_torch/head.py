"""The linear head of a step in closed form, so that autograd runs only below it (method doc, sections 4b and 6).

An upper neuron's scalar is a channel averaged over positions (tokens, pixels), so the cotangent it sends
into its segment is the same one-hot channel vector at every position of every image. Through the linear
ops at the top of a segment (residual additions, linear layers, scaling by constants, permutations and
reshapes: the **head**) that cotangent stays a small tensor, broadcast over every axis it does not vary on:
the skip of a residual block hands its parent the one-hot itself (as the logits' identity term), a linear
layer turns it into a row of its weight, and only the ops below the head (LayerNorm, attention, activations)
run by autograd, from the cotangents the head leaves at their outputs (the **stops**). Every rule is the
exact derivative of its op (what autograd would compute, on a tensor without the broadcast axes).

A node belongs to the head when its op is one of the linear ops below, it depends on a parent tap, and every
node of the segment that reads it is in the head too (so its whole cotangent is known in closed form).

An upper tap that is a pointwise activation of a linear layer along the channels (a transformer's MLP
activation, ``GELU(fc1(LayerNorm(x)))``) has no linear head, but its cotangent is still one channel: the
activation's derivative on that one column of the layer's output (the activation's own backward kernel, on
that column only), times that row of the weight, is the cotangent of the layer's input (the **top**,
:func:`top_cotangents`). It equals what autograd computes through the whole layer bit for bit: the layer's
backward matrix product then sums one product and exact zeros. Autograd runs from the layer's input down.
"""

from __future__ import annotations

import math
import operator
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import fx, nn

from .kinds import ACTIVATIONS, node_kind

__all__ = ["Head", "split_head", "head_cotangents", "top_cotangents"]

#: activations applied to each value alone (a per-channel parameter, as PReLU's, would need its column too)
_POINTWISE = ACTIVATIONS - {"prelu", "rrelu"}

# out-of-place ops only: a head node is not computed, so an in-place op there would leave its input unchanged
_ADD = {operator.add, torch.add, "add"}
_SUB = {operator.sub, torch.sub, "sub"}
_MUL = {operator.mul, torch.mul, "mul"}
_DIV = {operator.truediv, torch.div, "div", "truediv"}
_RESHAPE = {torch.reshape, "reshape", "view"}
_PERMUTE = {torch.permute, "permute"}
_TRANSPOSE = {torch.transpose, "transpose"}
_FLATTEN = {torch.flatten, "flatten"}
_SAME = {"contiguous"}


def _kind(node: fx.Node, gm: fx.GraphModule) -> str | None:
    """The head rule of ``node`` (``None``: not a linear op of the head)."""
    if node.op == "call_module":
        mod = gm.get_submodule(str(node.target))
        if type(mod) is nn.Linear:
            return "linear"
        if type(mod) is nn.Identity or (isinstance(mod, nn.Dropout) and not mod.training):
            return "same"
        return None
    if node.op not in ("call_function", "call_method"):
        return None
    t = node.target
    for kind, targets in (("add", _ADD), ("sub", _SUB), ("mul", _MUL), ("div", _DIV), ("reshape", _RESHAPE),
                          ("permute", _PERMUTE), ("transpose", _TRANSPOSE), ("flatten", _FLATTEN), ("same", _SAME)):
        if t in targets:
            return kind
    if t is F.linear:
        return "linear"
    return None


def _nodes_in(value: Any) -> list[fx.Node]:
    out: list[fx.Node] = []
    fx.node.map_arg(value, out.append)
    return out


@dataclass(frozen=True)
class Head:
    """The head of a segment; node names in graph order."""

    nodes: tuple[str, ...]  # the head (empty: autograd from the upper tap itself)
    stops: tuple[str, ...]  # nodes below the head that get a cotangent from it; autograd starts there
    compute: tuple[str, ...]  # the nodes the forward pass runs: what the stops and the head's arguments need
    operand: Mapping[str, int]  # the parent-dependent operand of each product or quotient by a constant
    top: tuple[str, str] | None = None  # (activation, linear layer) when the upper tap is act(linear(x)): see above


def split_head(gm: fx.GraphModule, nodes: Sequence[str], upper: str, parents: Sequence[str]) -> Head:
    """The head of the segment ``nodes`` (graph order) of tap node ``upper`` whose parent taps are ``parents``."""
    by_name = {n.name: n for n in gm.graph.nodes}
    inside = set(nodes)
    live = set(parents)
    for name in nodes:  # depends on a parent tap
        if any(a.name in live for a in by_name[name].all_input_nodes):
            live.add(name)
    head: set[str] = set()
    operand: dict[str, int] = {}
    for name in reversed(nodes):
        node = by_name[name]
        kind = _kind(node, gm)
        if name not in live or kind is None:
            continue
        if name != upper and not all(u.name in head for u in node.users if u.name in inside):
            continue
        if kind == "linear" and node.op == "call_function" and any(
                a.name in live for a in _nodes_in((node.args[1:], node.kwargs))):
            continue  # a weight computed from the parents is not a linear layer
        if kind in ("mul", "div"):
            which = _live_operands(node, live)
            if len(which) != 1 or (kind == "div" and which != [0]) or node.kwargs or len(node.args) != 2:
                continue  # a product of two parent-dependent tensors is not linear
            operand[name] = which[0]
        if kind in ("add", "sub") and (node.kwargs or len(node.args) != 2):
            continue  # alpha=... or an unusual call
        head.add(name)
    roots = {a.name for name in head for a in by_name[name].all_input_nodes if a.name in inside and a.name not in head}
    stops = {a.name for name in head for a in _receivers(by_name[name], gm, operand)
             if a.name in inside and a.name in live and a.name not in head}
    need: set[str] = set()
    stack = list(roots)
    while stack:
        name = stack.pop()
        if name in need:
            continue
        need.add(name)
        stack.extend(a.name for a in by_name[name].all_input_nodes if a.name in inside)
    if upper not in head:  # nothing peeled: autograd from the upper tap itself, or from below its top
        top = _top(by_name[upper], gm, live, inside)
        if top is not None:
            return Head((), (top[1],), tuple(nodes), {}, (upper, top[0]))
        return Head((), (upper,), tuple(nodes), {})
    return Head(tuple(n for n in nodes if n in head), tuple(n for n in nodes if n in stops),
                tuple(n for n in nodes if n in need), {k: v for k, v in operand.items() if k in head})


def _top(node: fx.Node, gm: fx.GraphModule, live: set[str], inside: set[str]) -> tuple[str, str] | None:
    """(the linear layer, its input) when ``node`` is a pointwise activation of a linear layer of the segment
    whose input depends on the parents (its weight does not); else None."""
    args = node.all_input_nodes
    if len(args) != 1 or node_kind(node, dict(gm.named_modules())) not in _POINTWISE:
        return None
    lin = args[0]
    if tuple(node.args[:1]) != (lin,) or lin.name not in inside or _kind(lin, gm) != "linear":
        return None
    if not lin.args or not isinstance(lin.args[0], fx.Node):
        return None
    if any(a.name in live for a in _nodes_in((lin.args[1:], lin.kwargs))) or lin.args[0].name not in live:
        return None  # a weight computed from the parents is not a linear layer
    return lin.name, lin.args[0].name


def _receivers(node: fx.Node, gm: fx.GraphModule, operand: Mapping[str, int]) -> list[fx.Node]:
    """The arguments of a head node that its cotangent flows to."""
    kind = _kind(node, gm)
    if kind in ("add", "sub"):
        picked = list(node.args[:2])
    elif kind in ("mul", "div"):
        picked = [node.args[operand[node.name]]] if node.name in operand else []
    else:
        picked = [node.args[0]]
    return [a for a in picked if isinstance(a, fx.Node)]


def _live_operands(node: fx.Node, live: set[str]) -> list[int]:
    return [i for i, a in enumerate(node.args[:2]) if isinstance(a, fx.Node) and a.name in live]


def _resolve(value: Any, env: Mapping[str, Any]) -> Any:
    return fx.node.map_arg(value, lambda n: env[n.name])


def _shape(value: Any) -> tuple[int, ...]:
    return tuple(value.shape) if isinstance(value, torch.Tensor) else ()


def _method_dims(node: fx.Node, env: Mapping[str, Any], key: str) -> tuple[int, ...]:
    """The dims of ``x.permute(*dims)`` / ``x.reshape(shape)`` / ``torch.permute(x, dims)`` calls."""
    args = _resolve(node.args[1:], env)
    if key in node.kwargs:
        args = (_resolve(node.kwargs[key], env),)
    if len(args) == 1 and isinstance(args[0], (tuple, list, torch.Size)):
        args = tuple(args[0])
    return tuple(int(a) for a in args)


def _reshaped(in_shape: tuple[int, ...], dims: tuple[int, ...]) -> tuple[int, ...]:
    if -1 in dims:
        known = math.prod(d for d in dims if d != -1)
        dims = tuple(math.prod(in_shape) // known if d == -1 else d for d in dims)
    return dims


def _flatten_dims(node: fx.Node, env: Mapping[str, Any], ndim: int) -> tuple[int, int]:
    args = _resolve(node.args[1:], env)
    start = int(node.kwargs.get("start_dim", args[0] if len(args) > 0 else 0))
    end = int(node.kwargs.get("end_dim", args[1] if len(args) > 1 else -1))
    return start % ndim, end % ndim


def _transpose_dims(node: fx.Node, env: Mapping[str, Any], ndim: int) -> tuple[int, int]:
    args = _resolve(node.args[1:], env)
    a = int(node.kwargs.get("dim0", args[0] if len(args) > 0 else 0))
    b = int(node.kwargs.get("dim1", args[1] if len(args) > 1 else 0))
    return a % ndim, b % ndim


def _weight(node: fx.Node, gm: fx.GraphModule, env: Mapping[str, Any]) -> torch.Tensor:
    if node.op == "call_module":
        return gm.get_submodule(str(node.target)).weight
    return _resolve(node.kwargs.get("weight", node.args[1] if len(node.args) > 1 else None), env)


def _out_shape(node: fx.Node, kind: str, gm: fx.GraphModule, env: Mapping[str, Any],
               shapes: Mapping[str, tuple[int, ...]]) -> tuple[int, ...]:
    def shape_of(a: Any) -> tuple[int, ...]:
        return shapes[a.name] if isinstance(a, fx.Node) else _shape(a)

    x = shape_of(node.args[0])
    if kind in ("add", "sub", "mul", "div"):
        return tuple(torch.broadcast_shapes(x, shape_of(node.args[1])))
    if kind == "linear":
        return (*x[:-1], int(_weight(node, gm, env).shape[0]))
    if kind == "permute":
        return tuple(x[d] for d in _method_dims(node, env, "dims"))
    if kind == "transpose":
        a, b = _transpose_dims(node, env, len(x))
        out = list(x)
        out[a], out[b] = out[b], out[a]
        return tuple(out)
    if kind == "reshape":
        return _reshaped(x, _method_dims(node, env, "shape"))
    if kind == "flatten":
        s, e = _flatten_dims(node, env, len(x))
        return (*x[:s], math.prod(x[s:e + 1]), *x[e + 1:])
    return x


def _reduce(v: torch.Tensor, out: tuple[int, ...], shape: tuple[int, ...]) -> torch.Tensor:
    """The cotangent ``v`` (broadcast to ``out``) of an operand of ``shape`` that was broadcast to ``out``."""
    lead = len(out) - len(shape)
    padded = (1,) * lead + tuple(shape)
    axes = [i for i, (o, p) in enumerate(zip(out, padded, strict=True)) if p == 1 and o != 1]
    if axes:
        size = list(v.shape)
        for i in axes:
            size[i + 1] = out[i]
        v = v.expand(size).sum(dim=tuple(i + 1 for i in axes), keepdim=True)
    return v.reshape(v.shape[0], *v.shape[1 + lead:]) if lead else v


def _unreshape(v: torch.Tensor, out: tuple[int, ...], shape: tuple[int, ...]) -> torch.Tensor:
    """The cotangent of a reshape's input of ``shape`` from ``v`` on its output ``out`` (broadcast axes kept
    where both shapes share a prefix)."""
    p = 0
    while p < min(len(out), len(shape)) and out[p] == shape[p]:
        p += 1
    v = v.expand(*v.shape[:1 + p], *out[p:])
    return v.reshape(*v.shape[:1 + p], *shape[p:])


def head_cotangents(gm: fx.GraphModule, head: Head, env: Mapping[str, Any], upper: str, channel_axis: int,
                    neurons: Sequence[int], dtype: torch.dtype, device: torch.device | str
                    ) -> dict[str, torch.Tensor]:
    """The cotangent of every root of the head (parent taps and stops) for each upper neuron.

    ``env``: the values of every node the head reads (node name -> value). The cotangent of the upper
    neurons' spatial means is pushed through the head; each result has shape ``(n, *s)`` with ``s``
    broadcastable to the node's shape (size 1 on the axes it does not vary on, the batch axis among them).
    """
    by_name = {n.name: n for n in gm.graph.nodes}
    kinds = {name: _kind(by_name[name], gm) or "same" for name in head.nodes}
    shapes: dict[str, tuple[int, ...]] = {k: _shape(v) for k, v in env.items()}
    for name in head.nodes:
        shapes[name] = _out_shape(by_name[name], kinds[name], gm, env, shapes)
    up = shapes[upper]
    axis = channel_axis % len(up)
    positions = math.prod(up[1:]) // up[axis]
    size = [len(neurons)] + [1] * len(up)
    size[axis + 1] = up[axis]
    v0 = torch.zeros(size, dtype=dtype, device=device)
    index = [slice(None)] * len(size)
    index[0] = torch.arange(len(neurons), device=device)
    index[axis + 1] = torch.as_tensor(list(neurons), device=device)
    v0[tuple(index)] = 1.0 / positions
    if not head.nodes:
        return {upper: v0}
    cot: dict[str, torch.Tensor] = {upper: v0}
    roots: dict[str, torch.Tensor] = {}

    def give(a: Any, v: torch.Tensor) -> None:
        if not isinstance(a, fx.Node):
            return
        target = cot if a.name in kinds else roots
        target[a.name] = v if a.name not in target else target[a.name] + v

    for name in reversed(head.nodes):
        node = by_name[name]
        v = cot.pop(name, None)
        if v is None:
            continue
        kind, out = kinds[name], shapes[name]
        x = node.args[0]
        if kind in ("add", "sub"):
            for i, a in enumerate(node.args[:2]):
                if isinstance(a, fx.Node):
                    r = _reduce(v, out, shapes[a.name])
                    give(a, -r if (kind == "sub" and i == 1) else r)
        elif kind in ("mul", "div"):
            i = head.operand[name]
            a, c = node.args[i], _resolve(node.args[1 - i], env)
            r = v * c if kind == "mul" else v / c
            give(a, _reduce(r, out, shapes[a.name]))
        elif kind == "linear":
            w = _weight(node, gm, env)
            give(x, torch.matmul(v.expand(*v.shape[:-1], out[-1]), w.to(v.dtype)))
        elif kind == "permute":
            dims = [d % len(out) for d in _method_dims(node, env, "dims")]
            inv = sorted(range(len(dims)), key=lambda i: dims[i])
            give(x, v.permute(0, *(1 + i for i in inv)))
        elif kind == "transpose":
            a0, b0 = _transpose_dims(node, env, len(out))
            give(x, v.transpose(1 + a0, 1 + b0))
        elif kind in ("reshape", "flatten"):
            give(x, _unreshape(v, out, shapes[x.name]))
        else:
            give(x, v)
    return roots


def top_cotangents(gm: fx.GraphModule, head: Head, env: Mapping[str, Any], v0: torch.Tensor, neurons: Sequence[int]
                   ) -> tuple[torch.Tensor, torch.Tensor]:
    """The top of a step (``head.top``, see the module doc): ``(dz, rows)`` with ``dz`` (n, B, ..., 1) the
    activation's derivative times the upper neurons' cotangent on their columns of the layer's output, and
    ``rows`` (n, 1, ..., C_in) their rows of the layer's weight: the cotangent of the layer's input is
    ``dz[j0:j1] * rows[j0:j1]``. ``v0``: the upper neurons' cotangents (:func:`head_cotangents`), one value each
    on their channel, the last axis."""
    by_name = {n.name: n for n in gm.graph.nodes}
    assert head.top is not None
    act, lin = by_name[head.top[0]], by_name[head.top[1]]
    z = env[lin.name].detach()
    idx = torch.as_tensor(list(neurons), device=z.device)
    column = z.index_select(-1, idx).requires_grad_(True)  # (B, ..., n): each neuron's column, contiguous
    value = v0.reshape(len(neurons), -1).sum(1).to(z.dtype)  # the one value of each cotangent (the rest are 0)
    with torch.enable_grad():
        if act.op == "call_module":
            y = gm.get_submodule(str(act.target))(column)
        else:
            rest = _resolve((act.args[1:], act.kwargs), env)
            y = (getattr(column, str(act.target))(*rest[0], **rest[1]) if act.op == "call_method"
                 else act.target(column, *rest[0], **rest[1]))  # type: ignore[operator]
        (dz,) = torch.autograd.grad(y, column, value.expand(column.shape))
    dz = dz.movedim(-1, 0).unsqueeze(-1)  # (n, B, ..., 1)
    w = _weight(lin, gm, env).detach().to(z.dtype).index_select(0, idx)  # (n, C_in)
    return dz, w.reshape(len(neurons), *([1] * (z.dim() - 1)), w.shape[-1])
