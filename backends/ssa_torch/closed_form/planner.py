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

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn as nn
from torch import fx
from torch.fx.node import map_arg

from ..kinds import (
    ACTIVATIONS,
    GATE_ACTIVATIONS,
    LAYERS,
    NO_CLOSED_FORM,
    PERMUTATIONS,
    POOLING,
    RESHAPES,
    SUMS,
    node_kind,
)
from ..taps import TapPlan
from .linear import LinearOp, NotClosedForm
from .terms import Term

__all__ = ["Planner", "Branch", "Gate", "TapForm", "ClosedFormPlan", "plan_closed_form", "FORMS"]

FORMS = ("gradient", "gradient_x_activation")
_PATH = POOLING | RESHAPES | PERMUTATIONS | {"identity", "cast", "pad", "getitem"}
_OUTPUT = _PATH | {"batchnorm", "cat"}
_SHAPE_ONLY_GATE = {"reshape", "flatten", "identity", "getitem", "cast"}


@dataclass
class Gate:
    """A squeeze-excitation product ``data * gate`` at a layer's input (the gate: one value per image and channel).

    node : the gate value multiplied in. act : the gate activation (sigmoid, hard-sigmoid, ...).
    u : the activation's input, the output of ``inner`` (a dense layer or a 1x1 conv on a 1x1 map).
    x : the input of ``inner``. data : the other factor. branches : how ``x`` is computed from taps.
    """

    node: str
    act: str
    u: str
    inner: LinearOp
    x: str
    data: str
    outer: LinearOp | None = None  # the layer the gated product enters
    branches: list[Branch] = field(default_factory=list)


@dataclass
class Branch:
    """One way a (possibly composed) layer's input is computed from parent taps.

    parents : the parent taps, in tap order. chan : per layer input channel (conv) or feature (dense),
    the parent code (parent i's channel k is ``offsets[i] + k``; -1: no parent). x : the fx node whose
    value enters ``op`` (times ``gate`` when there is one). x_shape : its per-image shape.
    scale : per input element, the sum over parent positions of d(input)/d(parent) (None: 1 everywhere).
    shifted : a constant shift lies between the parents and x (``gradient_x_activation`` does not hold).
    """

    parents: tuple[str, ...]
    offsets: tuple[int, ...]
    chan: torch.Tensor
    x: str
    x_shape: tuple[int, ...]
    scale: torch.Tensor | None
    shifted: bool
    op: LinearOp
    gate: Gate | None = None

    def channels_of(self, parent: str) -> torch.Tensor:
        """``chan`` for one parent: its channel, -1 elsewhere."""
        i = self.parents.index(parent)
        lo = self.offsets[i]
        hi = self.offsets[i + 1] if i + 1 < len(self.offsets) else None
        mine = (self.chan >= lo) & ((self.chan < hi) if hi is not None else torch.ones_like(self.chan,
                                                                                            dtype=torch.bool))
        return torch.where(mine, self.chan - lo, torch.full_like(self.chan, -1))


@dataclass
class TapForm:
    """The closed form of one upper tap: its terms (one or more per parent)."""

    tap: str
    act_node: str | None  # the activation's fx node (None for the logits)
    z_node: str  # the activation's input (the logits node itself for the logits)
    terms: list[Term]
    segment: tuple[str, ...] = ()  # the ops between the heads and z (run with autograd during collection)

    @property
    def forms(self) -> tuple[str, ...]:
        have = set(FORMS)
        for t in self.terms:
            have &= set(t.forms)
        return tuple(f for f in FORMS if f in have)

    @property
    def heads(self) -> tuple[str, ...]:
        return tuple(dict.fromkeys(t.head for t in self.terms))


@dataclass
class ClosedFormPlan:
    taps: dict[str, TapForm] = field(default_factory=dict)
    reasons: dict[str, str] = field(default_factory=dict)  # tap -> why it falls back to autograd

    def covers(self, tap: str, form: str | None = None) -> bool:
        return tap in self.taps and (form is None or form in self.taps[tap].forms)


def _pair(v: Any) -> tuple[int, int]:
    if isinstance(v, (tuple, list)):
        return (int(v[0]), int(v[1])) if len(v) == 2 else (int(v[0]), int(v[0]))
    return (int(v), int(v))


def reason_for(kind: str, where: str) -> str:
    """Why an op of ``kind`` stops the closed form."""
    return NO_CLOSED_FORM.get(kind, f"{kind} op {where}")


class Planner:
    """The context closed forms are planned in: the canonical graph, its values at batch 1, the taps.

    Builders (:class:`~ssa_torch.closed_form.registry.ClosedForm`) use :meth:`layer_op`,
    :meth:`resolve` and :meth:`value` to build their terms.
    """

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
        if not isinstance(mod, nn.Conv2d) or mod.padding_mode != "zeros":
            raise NotClosedForm("not a zero-padded 2-D convolution")
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

    # -- input side -------------------------------------------------------------------------------------
    def resolve(self, x: fx.Node, op: LinearOp, gate: Gate | None = None) -> list[Branch]:
        """How the input ``x`` of ``op`` is computed from parent taps: one :class:`Branch` per path."""
        while (not self.is_tap(x) and self.kind(x) in ("identity", "cast") and len(self.computed_args(x)) == 1
               and x.args and x.args[0] is self.computed_args(x)[0]):
            x = x.args[0]
        if self.is_tap(x):
            return [self._path_branch(x, op, gate)]
        kind = self.kind(x)
        comp = self.computed_args(x)
        if kind in SUMS and len(comp) >= 2:
            if set(x.kwargs) - {"alpha"} or float(x.kwargs.get("alpha", 1.0)) != 1.0 or len(x.args) != 2:
                raise NotClosedForm("a sum with a scale factor (alpha) before a layer")
            out = self.resolve(x.args[0], op, gate)
            out += self.resolve(x.args[1], op.negated() if kind == "sub" else op, gate)
            return out
        if kind == "mul" and len(comp) == 2:
            if gate is not None:
                raise NotClosedForm("a product of computed tensors inside a gated input")
            g = self._gate(x, op)
            g.outer = op
            return self.resolve(self.nodes[g.data], op, g)
        if kind in LAYERS and x.name in self.computed:
            if gate is not None:
                raise NotClosedForm("a gate on the input of a linear chain")
            inner, inner_x = self.layer_op(x)
            return self.resolve(inner_x, op.compose(inner), gate)
        return [self._path_branch(x, op, gate)]

    def _gate(self, x: fx.Node, op: LinearOp) -> Gate:
        """A squeeze-excitation product: one factor is the data, the other a per-image, per-channel gate."""
        if op.kind != "conv":
            raise NotClosedForm("a product of computed tensors before a dense layer")
        a, b = x.args[0], x.args[1]
        xv = self.value(x)
        for data, g in ((a, b), (b, a)):
            dv, gv = self.value(data), self.value(g)
            if not (isinstance(dv, torch.Tensor) and isinstance(gv, torch.Tensor)) or dv.shape != xv.shape:
                continue
            if xv.dim() != 4 or gv.numel() != xv.shape[1] or (gv.dim() == 4 and gv.shape[1] != xv.shape[1]):
                continue
            if gv.dim() == 4 and tuple(gv.shape[2:]) != (1, 1):
                continue
            act = g
            while self.kind(act) in _SHAPE_ONLY_GATE and not self.is_tap(act) and len(self.computed_args(act)) == 1:
                act = self.computed_args(act)[0]
            if self.kind(act) not in ACTIVATIONS or self.is_tap(act) or len(self.computed_args(act)) != 1:
                continue
            u = self.computed_args(act)[0]
            av, uv = self.value(act), self.value(u)
            if not isinstance(av, torch.Tensor) or av.shape != uv.shape or av.numel() != gv.numel():
                raise NotClosedForm("a gate whose activation changes the shape")
            if self.kind(u) not in LAYERS or self.is_tap(u):
                raise NotClosedForm(f"a gate computed by a {self.kind(u)} op (not a layer)")
            inner, inner_x = self.layer_op(u)
            if inner.kind == "conv":
                if not (inner.pointwise() and uv.dim() == 4 and tuple(uv.shape[2:]) == (1, 1)):
                    raise NotClosedForm("a gate computed by a spatial convolution")
                inner = LinearOp("dense", inner.full_weight()[:, :, 0, 0], flat=True)
            elif uv.dim() != 2:
                raise NotClosedForm("a gate computed by a dense layer on a spatial map")
            gate = Gate(g.name, act.name, u.name, inner, inner_x.name, data.name)
            gate.branches = self.resolve(inner_x, inner)
            if any(br.gate is not None for br in gate.branches):
                raise NotClosedForm("a gate inside a gate")
            return gate
        raise NotClosedForm("a product of computed tensors that is not a per-channel gate")

    def _path_branch(self, x: fx.Node, op: LinearOp, gate: Gate | None) -> Branch:
        """The parent taps reached from ``x`` through path ops, and the channel of every input element."""
        parents: list[str] = []
        dag: list[fx.Node] = []
        seen: set[str] = set()
        stack = [x]
        while stack:
            node = stack.pop()
            if node.name in seen:
                continue
            seen.add(node.name)
            if self.is_tap(node):
                parents.append(self.tap_of_node[node.name])
                continue
            if node.op == "placeholder":
                raise NotClosedForm("the input image reaches the layer without a tap (use --include-input)")
            kind = self.kind(node)
            comp = self.computed_args(node)
            if self.affine(node) is None:
                if kind not in _PATH and kind != "cat":
                    raise NotClosedForm(reason_for(kind, "between a layer and its parent tap"))
                if kind != "cat" and len(comp) != 1:
                    raise NotClosedForm("an op with several computed inputs between a layer and its parent tap")
                if kind == "maxpool" and node.op == "call_module" and getattr(self.modules[node.target],
                                                                              "return_indices", False):
                    raise NotClosedForm("max pooling with indices")
                if kind == "pad" and self._zero_pad(node) is None:
                    raise NotClosedForm("padding that is not zero padding")
            dag.append(node)
            stack.extend(comp)
        if not parents:
            raise NotClosedForm("a layer input computed from no tap")
        dag.sort(key=lambda n: self.order[n.name])
        parents = sorted(set(parents), key=lambda t: self.taps[t].order)
        offsets, total = [], 0
        for p in parents:
            offsets.append(total)
            total += self.taps[p].n_neurons
        chan, scale, shifted = self._decode(parents, offsets, dag, x, op)
        xv = self.value(x)
        return Branch(tuple(parents), tuple(offsets), chan, x.name, tuple(xv.shape[1:]), scale, shifted, op, gate)

    # -- channel codes ------------------------------------------------------------------------------------
    def push(self, sources: Mapping[str, torch.Tensor], nodes: Sequence[fx.Node], target: fx.Node,
             ) -> tuple[torch.Tensor, bool]:
        """Push ``sources`` (node -> float64 value at batch 1) forward through ``nodes`` to ``target``.

        Per-element constant affine ops apply only their scale; every other op is applied as it is.
        Returns the value at ``target`` and whether any affine op on the way had a shift.
        """
        env: dict[str, Any] = dict(sources)
        shifted = False

        def fetch(a: fx.Node) -> Any:
            if a.name in env:
                return env[a.name]
            if a.name in self.computed:
                raise NotClosedForm("a path that reads another computed tensor")
            return self.env1[a.name]

        with torch.no_grad():
            for node in nodes:
                if node.name in env:
                    continue
                aff = self.affine(node)
                if aff is not None:
                    data, scale_only, has_shift = aff
                    env[node.name] = scale_only(env[data.name])
                    shifted = shifted or has_shift
                    continue
                args = map_arg(node.args, fetch)
                kwargs = map_arg(node.kwargs, fetch)
                if node.op == "call_module":
                    env[node.name] = self.modules[node.target](*args, **kwargs)
                elif node.op == "call_function":
                    env[node.name] = node.target(*args, **kwargs)
                elif node.op == "call_method":
                    env[node.name] = getattr(args[0], node.target)(*args[1:], **kwargs)
                else:
                    raise NotClosedForm(f"unsupported {node.op} node on a path")
        return env[target.name], shifted

    def _sources(self, parents: Sequence[str], offsets: Sequence[int], code: str) -> dict[str, torch.Tensor]:
        out = {}
        for parent, offset in zip(parents, offsets, strict=True):
            tap = self.taps[parent]
            pv = self.value(self.plan.node_of[parent])
            shape = [1] * pv.dim()
            k = pv.shape[tap.channel_axis]
            shape[tap.channel_axis] = k
            if code == "ones":
                v = torch.ones(k, dtype=torch.float64)
            elif code == "index":
                v = offset + 1 + torch.arange(k, dtype=torch.float64)
            else:
                v = 1 + torch.rand(k, generator=self._gen, dtype=torch.float64)
            out[self.plan.node_of[parent]] = v.to(pv.device).reshape(shape).expand(pv.shape).contiguous()
        return out

    def _decode(self, parents, offsets, dag, x: fx.Node, op: LinearOp) -> tuple[torch.Tensor, torch.Tensor | None,
                                                                                bool]:
        ones, shifted = self.push(self._sources(parents, offsets, "ones"), dag, x)
        index, _ = self.push(self._sources(parents, offsets, "index"), dag, x)
        rand_sources = self._sources(parents, offsets, "random")
        rand, _ = self.push(rand_sources, dag, x)
        table = torch.cat([rand_sources[self.plan.node_of[p]].movedim(self.taps[p].channel_axis, -1)
                           .reshape(-1, self.taps[p].n_neurons)[0] for p in parents]).cpu()
        ones, index, rand = ones[0].cpu(), index[0].cpu(), rand[0].cpu()
        fed = ones != 0
        code = torch.where(fed, index / torch.where(fed, ones, torch.ones_like(ones)), torch.zeros_like(ones))
        chan = torch.round(code).long() - 1
        if not torch.allclose(code, chan.double() + 1, atol=1e-6):
            raise NotClosedForm("the path mixes parent channels")
        ok = ~fed | torch.isclose(rand, table[chan.clamp_min(0)] * ones, rtol=1e-9, atol=1e-12)
        if not bool(ok.all()):
            raise NotClosedForm("the path mixes parent channels")
        chan = torch.where(fed, chan, torch.full_like(chan, -1))
        if op.kind == "conv":
            if chan.dim() != 3:
                raise NotClosedForm("a convolution input that is not 4-D")
            per = chan.reshape(chan.shape[0], -1)
            fed_c = fed.reshape(chan.shape[0], -1)
            first = torch.where(fed_c.any(1), per.max(1).values, torch.full_like(per[:, 0], -1))
            if not bool(torch.all((per == first[:, None]) | ~fed_c)):
                raise NotClosedForm("a conv input channel mixes parent channels")
            chan = first
        else:
            flat = chan.reshape(-1) if op.flat else chan.reshape(-1, chan.shape[-1])
            if not op.flat:
                fed_f = fed.reshape(-1, chan.shape[-1])
                first = torch.where(fed_f.any(0), flat.max(0).values, torch.full_like(flat[0], -1))
                if not bool(torch.all((flat == first[None]) | ~fed_f)):
                    raise NotClosedForm("a dense input feature mixes parent channels")
                flat = first
            chan = flat
        scale = None if bool(torch.all(ones == 1)) else ones
        return chan, scale, shifted

    # -- output side -------------------------------------------------------------------------------------
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
        """Per upper channel, the head channel feeding it (-1: none); refused when channels mix."""
        hv = self.value(head)
        axis = self.head_channel_axis(head, own)
        n_head = hv.shape[axis]
        shape = [1] * hv.dim()
        shape[axis] = n_head

        def sources(v: torch.Tensor) -> dict[str, torch.Tensor]:
            out = {h.name: torch.zeros(self.value(h).shape, dtype=torch.float64, device=hv.device) for h in heads}
            out[head.name] = v.to(hv.device).reshape(shape).expand(hv.shape).contiguous()
            return out

        rand = 1 + torch.rand(n_head, generator=self._gen, dtype=torch.float64)
        pushes = []
        for v in (torch.ones(n_head, dtype=torch.float64), 1 + torch.arange(n_head, dtype=torch.float64), rand):
            out, _ = self.push(sources(v), segment, z)
            pushes.append(out[0].movedim(upper_axis - 1, 0).reshape(n_upper, -1).cpu())
        ones, index, rv = pushes
        fed = ones != 0
        code = torch.where(fed, index / torch.where(fed, ones, torch.ones_like(ones)), torch.zeros_like(ones))
        chan = torch.round(code).long() - 1
        if not torch.allclose(code, chan.double() + 1, atol=1e-6):
            raise NotClosedForm("a layer output channel is mixed into the tap")
        ok = ~fed | torch.isclose(rv, rand[chan.clamp_min(0)] * ones, rtol=1e-9, atol=1e-12)
        first = torch.where(fed.any(1), chan.max(1).values, torch.full((n_upper,), -1, dtype=torch.long))
        if not bool(ok.all()) or not bool(torch.all((chan == first[:, None]) | ~fed)):
            raise NotClosedForm("a layer output channel is mixed into the tap")
        used = first[first >= 0]
        if used.numel() != torch.unique(used).numel():
            raise NotClosedForm("a layer output channel feeds several channels of the tap")
        return first


def plan_closed_form(gm: fx.GraphModule, plan: TapPlan, env1: Mapping[str, Any]) -> ClosedFormPlan:
    """Find the taps whose steps have a closed form; record why the others do not."""
    from .registry import form_for

    planner = Planner(gm, plan, env1)
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

