"""Exact relevance from one forward pass (method doc, section 6).

For a step shaped "parent -> [pooling] -> [flatten / permute / reshape] -> conv or
dense -> [batch-norm] -> [permute] -> pointwise activation -> upper tap" (and
residual sums of such terms, and identity skips), the ``gradient`` rule has the
closed form

    omega[n, k] = 1 / (P_u * P_l) * sum_delta W'[n, k, delta] * C[n, delta],
    C[n, delta] = sum_p m[n, p] * [position p + delta reads inside the input],

with m = sigma'(z) the activation derivative, W' the weight with the batch-norm
scale folded in, and the parent channel k of each conv input channel found by
pushing a channel-index tensor through the path (pooling keeps a channel-constant
map constant, permutations and flattening re-index it). ``gradient_x_activation``
replaces C by the weight-gradient of the mask against the conv input.

:func:`plan_fast` analyses the fx graph once; :class:`FastCollector` computes the
per-image statistics of a batch in one forward pass; :func:`omega_from_stats`
turns statistics back into omega for any set of upper neurons.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Mapping, Sequence

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import fx
from torch.fx.node import map_arg

from .kinds import ACTIVATIONS, perm_of
from .taps import TapPlan

__all__ = ["Term", "TapFast", "FastPlan", "plan_fast", "term_stats", "omega_from_stats", "scatter_sum"]

_PATH_KINDS = {"maxpool", "avgpool", "adaptive_avgpool", "adaptive_maxpool", "flatten", "reshape", "permute",
               "transpose", "identity"}


class _NotFast(Exception):
    """The step has a shape the closed form does not cover (autograd is used)."""


@dataclass
class Term:
    """One linear term of an upper tap's pre-activation, reaching one parent tap."""

    parent: str
    kind: str  # "conv", "linear" or "identity"
    weight: torch.Tensor  # conv: (N, Cx/G, kh, kw); linear: (N, D); identity: (N,) scale
    x_node: str | None  # the fx node whose value enters the conv / dense layer
    out_perms: tuple[tuple[int, ...], ...] = ()  # permutations applied after the layer (forward order)
    stride: tuple[int, int] = (1, 1)
    padding: tuple[int, int] = (0, 0)
    dilation: tuple[int, int] = (1, 1)
    groups: int = 1
    chan_of: torch.Tensor | None = None  # conv input channel / dense feature -> parent channel
    x_shape: tuple[int, ...] = ()  # per-image shape of the conv / dense input
    scale: float = 1.0  # 1 / (P_u * P_l)
    gxa: bool = True  # the gradient x activation form holds (no shift between the parent and the layer)
    # static, for the gradient rule
    wk: torch.Tensor | None = None  # conv: (N, K, kh*kw); linear/identity: (N, K)


@dataclass
class TapFast:
    tap: str
    act_node: str | None  # fx node of the activation (None for the logits)
    z_node: str  # the activation's input (the logits node itself for the logits)
    terms: list[Term]

    @property
    def forms(self) -> tuple[str, ...]:
        return ("gradient", "gradient_x_activation") if all(t.gxa for t in self.terms) else ("gradient",)


@dataclass
class FastPlan:
    taps: dict[str, TapFast] = field(default_factory=dict)
    reasons: dict[str, str] = field(default_factory=dict)  # tap -> why it falls back to autograd

    def covers(self, tap: str, form: str | None = None) -> bool:
        return tap in self.taps and (form is None or form in self.taps[tap].forms)


def _pair(v: Any) -> tuple[int, int]:
    if isinstance(v, (tuple, list)):
        return (int(v[0]), int(v[1])) if len(v) == 2 else (int(v[0]), int(v[0]))
    return (int(v), int(v))


def _const(node: Any, gm: fx.GraphModule, computed: set[str]) -> torch.Tensor | float | None:
    """The value of a constant argument (python number or get_attr tensor), else None."""
    if isinstance(node, (int, float)):
        return float(node)
    if isinstance(node, fx.Node) and node.name not in computed and node.op == "get_attr":
        obj: Any = gm
        for part in str(node.target).split("."):
            obj = getattr(obj, part)
        return obj if isinstance(obj, torch.Tensor) else None
    return None


class _Planner:
    def __init__(self, gm: fx.GraphModule, plan: TapPlan, env1: Mapping[str, Any]):
        self.gm = gm
        self.plan = plan
        self.modules = dict(gm.named_modules())
        self.kinds = plan.kinds
        self.env1 = env1  # node values of one forward pass at batch 1
        self.nodes = {n.name: n for n in gm.graph.nodes}
        self.tap_of_node = {node: tap for tap, node in plan.node_of.items()}
        self.taps = {t.name: t for t in plan.taps}
        computed: set[str] = set()
        for node in gm.graph.nodes:
            if node.op == "placeholder" or any(a.name in computed for a in node.all_input_nodes):
                computed.add(node.name)
        self.computed = computed

    # -- output side: z -> terms ------------------------------------------------
    def terms(self, tap: str, z: fx.Node) -> list[Term]:
        out: list[Term] = []
        self._walk(z, torch.ones(()), (), out, top=True)
        return out

    def _walk(self, node: fx.Node, scale: torch.Tensor, perms: tuple, out: list[Term], top: bool = False) -> None:
        kind = self.kinds[node.name]
        if node.name in self.tap_of_node and not top:  # identity term (skip connection)
            if perms:
                raise _NotFast("permuted skip connection")
            out.append(self._identity_term(self.tap_of_node[node.name], node, scale))
            return
        if kind == "identity" and node.all_input_nodes:
            return self._walk(node.all_input_nodes[0], scale, perms, out)
        if kind in ("maxpool", "avgpool", "adaptive_avgpool", "adaptive_maxpool"):  # pooled skip connection
            if perms:
                raise _NotFast("permuted skip connection")
            parent, path = self._path_to_parent(node)
            out.append(self._identity_term(parent, node, scale, path))
            return
        if kind in ("permute", "transpose"):
            ndim = len(self.env1[node.name].shape)
            perm = perm_of(node, kind, self.modules, ndim)
            if perm is None or scale.dim() > 0:
                raise _NotFast("permutation after a channel scale")
            return self._walk(node.all_input_nodes[0], scale, (tuple(perm),) + perms, out)
        if kind == "batchnorm":
            if perms:
                raise _NotFast("batch-norm after a permutation")
            s, src = self._bn_scale(node)
            return self._walk(src, scale * s if scale.dim() == 0 else scale * s, perms, out)
        if kind in ("add", "sub"):
            if perms:
                raise _NotFast("sum after a permutation")
            args = [a for a in (list(node.args) + list(node.kwargs.values()))]
            computed_args = [a for a in args if isinstance(a, fx.Node) and a.name in self.computed]
            if self.kinds[node.name] == "sub" and len(computed_args) == 2:
                self._walk(args[0], scale, perms, out)
                self._walk(args[1], -scale, perms, out)
                return
            if "alpha" in node.kwargs and node.kwargs["alpha"] != 1:
                raise _NotFast("add with alpha")
            for a in computed_args:
                self._walk(a, scale, perms, out)
            return
        if kind == "mul":
            args = list(node.args)
            comp = [a for a in args if isinstance(a, fx.Node) and a.name in self.computed]
            consts = [a for a in args if a not in comp]
            if len(comp) != 1 or len(consts) != 1:
                raise _NotFast("product of computed tensors (a gate)")
            c = _const(consts[0], self.gm, self.computed)
            if c is None or (isinstance(c, torch.Tensor) and c.numel() != 1):
                raise _NotFast("multiplication by a non-scalar")
            return self._walk(comp[0], scale * float(c), perms, out)
        if kind == "conv":
            out.extend(self._conv_term(node, scale, perms))
            return
        if kind in ("linear", "matmul"):
            out.extend(self._linear_term(node, scale, perms))
            return
        raise _NotFast(f"{kind} op between the tap and its parents")

    def _bn_scale(self, node: fx.Node) -> tuple[torch.Tensor, fx.Node]:
        if node.op == "call_module":
            bn = self.modules[node.target]
            if bn.training or bn.running_var is None:
                raise _NotFast("batch-norm without running statistics")
            s = torch.rsqrt(bn.running_var + bn.eps)
            if bn.weight is not None:
                s = s * bn.weight
            return s.detach(), node.all_input_nodes[0]
        # aten / functional: (input, weight, bias, running_mean, running_var, [training], momentum, eps)
        args = list(node.args)
        x = args[0]
        w = _const(args[1], self.gm, self.computed) if len(args) > 1 else None
        var = _const(args[4], self.gm, self.computed) if len(args) > 4 else None
        eps = args[-1] if isinstance(args[-1], float) else node.kwargs.get("eps", 1e-5)
        if not isinstance(var, torch.Tensor):
            raise _NotFast("batch-norm without running statistics")
        s = torch.rsqrt(var + float(eps))
        if isinstance(w, torch.Tensor):
            s = s * w
        if node.target is F.batch_norm and (node.kwargs.get("training") or (len(args) > 5 and args[5] is True)):
            raise _NotFast("batch-norm in training mode")
        return s.detach(), x

    def _scale_vector(self, scale: torch.Tensor, n: int) -> torch.Tensor:
        if scale.dim() == 0:
            return scale.expand(n).clone()
        if scale.numel() != n:
            raise _NotFast("channel scale does not match the layer")
        return scale.reshape(n)

    # -- input side: x -> parent tap ----------------------------------------------
    def _affine_kind(self, node: fx.Node) -> str | None:
        """"scale" / "shift" / "both" for a channel-wise affine op on the input side, else None."""
        kind = self.kinds[node.name]
        if kind == "batchnorm":
            if node.op == "call_module" and (self.modules[node.target].training
                                             or self.modules[node.target].running_var is None):
                return None
            return "both"
        if kind in ("mul", "div", "add", "sub"):
            comp = [a for a in node.all_input_nodes if a.name in self.computed]
            others = [a for a in node.args if a not in comp]
            if len(comp) != 1 or len(others) != 1 or _const(others[0], self.gm, self.computed) is None:
                return None
            if kind == "div" and node.args[0] is not comp[0]:
                return None
            return "scale" if kind in ("mul", "div") else "shift"
        return None

    def _input_dag(self, x: fx.Node) -> tuple[list[str], list[fx.Node]]:
        """The parent taps a layer input ``x`` is computed from, and the ops in between (graph order).

        Allowed ops: pooling, flatten / reshape / permutations, channel-wise affine ops and
        concatenations (Inception, SqueezeNet); anything else is not the closed form.
        """
        parents: list[str] = []
        dag: list[fx.Node] = []
        seen: set[str] = set()
        stack = [x]
        while stack:
            node = stack.pop()
            if node.name in seen:
                continue
            seen.add(node.name)
            if node.name in self.tap_of_node:
                parents.append(self.tap_of_node[node.name])
                continue
            kind = self.kinds[node.name]
            if kind not in _PATH_KINDS and kind != "cat" and self._affine_kind(node) is None:
                raise _NotFast(f"{kind} op between a layer and its parent tap")
            if kind == "avgpool":
                self._check_avgpool(node)
            if kind == "maxpool" and node.op == "call_module" and getattr(self.modules[node.target], "return_indices", False):
                raise _NotFast("max pooling with indices")
            comp = [a for a in node.all_input_nodes if a.name in self.computed]
            if kind != "cat" and len(comp) != 1:
                raise _NotFast("op with several computed inputs")
            dag.append(node)
            stack.extend(comp)
        order = {n.name: i for i, n in enumerate(self.gm.graph.nodes)}
        dag.sort(key=lambda n: order[n.name])
        parents.sort(key=lambda t: self.taps[t].order)
        return parents, dag

    def _path_to_parent(self, x: fx.Node) -> tuple[str, list[fx.Node]]:
        parents, dag = self._input_dag(x)
        if len(parents) != 1:
            raise _NotFast("a skip connection from several taps")
        return parents[0], dag

    def _check_avgpool(self, node: fx.Node) -> None:
        if node.op == "call_module":
            m = self.modules[node.target]
            pad = _pair(m.padding)
            if (any(pad) and m.count_include_pad) or m.ceil_mode or getattr(m, "divisor_override", None):
                raise _NotFast("average pooling that drops gradient (padding counted / ceil mode)")
        else:
            raise _NotFast("functional average pooling")

    def _chan_of(self, parent: str, path: list[fx.Node], x: fx.Node, mode: str = "idx") -> torch.Tensor:
        """Parent channel of every element of the layer's input (batch 1), via an index tensor.

        ``mode="scale"`` instead pushes ones through the path, applying only the multiplicative part
        of the channel-wise affine ops: the factor by which each input element scales its parent.
        """
        return self._codes([parent], path, x, mode)

    def _offsets(self, parents: Sequence[str]) -> list[int]:
        out, total = [], 0
        for p in parents:
            out.append(total)
            total += self.taps[p].n_neurons
        return out

    def _codes(self, parents: Sequence[str], path: list[fx.Node], x: fx.Node, mode: str = "idx") -> torch.Tensor:
        """Like :meth:`_chan_of` for several parents: parent i's channel k has code offset_i + k."""
        values: dict[str, Any] = {}
        for parent, offset in zip(parents, self._offsets(parents)):
            tap = self.taps[parent]
            pnode = self.nodes[self.plan.node_of[parent]]
            pval = self.env1[pnode.name]
            shape = [1] * pval.dim()
            shape[tap.channel_axis] = pval.shape[tap.channel_axis]
            if mode == "idx":
                start = offset + torch.arange(pval.shape[tap.channel_axis], dtype=torch.float64,
                                              device=pval.device).reshape(shape).expand(pval.shape).contiguous()
            else:
                start = torch.ones(pval.shape, dtype=torch.float64, device=pval.device)
            values[pnode.name] = start
        for node in path:
            def fetch(a: fx.Node) -> Any:
                return values[a.name] if a.name in values else self.env1[a.name]

            affine = self._affine_kind(node) if self.kinds[node.name] not in _PATH_KINDS | {"cat"} else None
            if affine is not None:
                comp = next(a for a in node.all_input_nodes if a.name in self.computed)
                v = values[comp.name]
                if mode == "scale":
                    v = v * self._affine_factor(node, comp, v.dim()).to(v)
                values[node.name] = v
                continue
            args = map_arg(node.args, fetch)
            kwargs = map_arg(node.kwargs, fetch)
            if node.op == "call_module":
                mod = self.modules[node.target]
                with torch.no_grad():
                    values[node.name] = mod(*args, **kwargs)
            elif node.op == "call_function":
                values[node.name] = node.target(*args, **kwargs)
            elif node.op == "call_method":
                values[node.name] = getattr(args[0], node.target)(*args[1:], **kwargs)
            else:
                raise _NotFast(f"unsupported path node {node.op}")
        xi = values[x.name]
        if mode != "idx":
            return xi[0]
        if not isinstance(xi, torch.Tensor) or torch.any(xi != torch.round(xi)):
            raise _NotFast("the path mixes channels")
        return xi[0].round().long()

    def _affine_factor(self, node: fx.Node, comp: fx.Node, ndim: int) -> torch.Tensor:
        kind = self.kinds[node.name]
        if kind == "batchnorm":
            s, _ = self._bn_scale(node)
            return s.double().reshape((1, -1) + (1,) * (ndim - 2))
        if kind in ("add", "sub"):
            return torch.tensor(-1.0 if kind == "sub" and node.args[0] is not comp else 1.0, dtype=torch.float64)
        other = next(a for a in node.args if a is not comp)
        c = _const(other, self.gm, self.computed)
        c = torch.as_tensor(c, dtype=torch.float64)
        return 1.0 / c if kind == "div" else c

    def _input_scale(self, parents: Sequence[str], path: list[fx.Node], x: fx.Node
                     ) -> tuple[torch.Tensor | None, bool]:
        """Per-element input scale of the path's affine ops (None when there are none), and whether any shifts."""
        kinds = [self._affine_kind(n) for n in path if self.kinds[n.name] not in _PATH_KINDS | {"cat"}]
        if not kinds:
            return None, False
        return self._codes(parents, path, x, "scale"), any(k in ("shift", "both") for k in kinds)

    # -- terms ------------------------------------------------------------------------
    def _conv_term(self, node: fx.Node, scale: torch.Tensor, perms: tuple) -> list[Term]:
        if node.op == "call_module":
            conv = self.modules[node.target]
            if not isinstance(conv, nn.Conv2d) or conv.padding_mode != "zeros":
                raise _NotFast("not a zero-padded 2-D convolution")
            weight, stride, dilation, groups = conv.weight.detach(), conv.stride, conv.dilation, conv.groups
            padding = conv.padding
            x = node.all_input_nodes[0]
        else:
            args = list(node.args) + [None] * 7
            w = _const(args[1], self.gm, self.computed)
            if not isinstance(w, torch.Tensor) or w.dim() != 4:
                raise _NotFast("convolution with a computed or non-2-D weight")
            weight = w.detach()
            stride = node.kwargs.get("stride", args[3] if args[3] is not None else 1)
            padding = node.kwargs.get("padding", args[4] if args[4] is not None else 0)
            dilation = node.kwargs.get("dilation", args[5] if args[5] is not None else 1)
            groups = node.kwargs.get("groups", args[6] if args[6] is not None else 1)
            if self.kinds[node.name] == "conv" and "convolution" in str(node.target):
                raise _NotFast("aten.convolution")
            x = args[0]
        if isinstance(padding, str):
            if padding == "valid":
                padding = (0, 0)
            else:
                kh, kw = weight.shape[2:]
                d = _pair(dilation)
                if (d[0] * (kh - 1)) % 2 or (d[1] * (kw - 1)) % 2:
                    raise _NotFast("asymmetric 'same' padding")
                padding = (d[0] * (kh - 1) // 2, d[1] * (kw - 1) // 2)
        parents, dag = self._input_dag(x)
        codes = self._codes(parents, dag, x)  # (Cx, Hx, Wx)
        if codes.dim() != 3:
            raise _NotFast("convolution input is not 4-D")
        per_channel = codes.reshape(codes.shape[0], -1)
        if not torch.all(per_channel == per_channel[:, :1]):
            raise _NotFast("a conv input channel mixes parent channels")
        n_out = weight.shape[0]
        w = weight * self._scale_vector(scale, n_out).to(weight).reshape(-1, 1, 1, 1)
        in_scale, shifted = self._input_scale(parents, dag, x)
        if in_scale is not None:
            per = in_scale.reshape(in_scale.shape[0], -1)
            if not torch.all(per == per[:, :1]):
                raise _NotFast("input scale varies within a channel")
            g, cg = int(groups), w.shape[1]
            sc = per[:, 0].to(w).reshape(g, 1, cg).expand(g, n_out // g, cg).reshape(n_out, cg)
            w = w * sc[:, :, None, None]
        return [Term(parent, "conv", w, x.name, perms, _pair(stride), _pair(padding), _pair(dilation), int(groups),
                     chan, tuple(codes.shape), gxa=not shifted)
                for parent, chan in self._split(parents, per_channel[:, 0])]

    def _split(self, parents: Sequence[str], codes: torch.Tensor) -> list[tuple[str, torch.Tensor]]:
        """Per parent: the parent channel of each layer input, -1 where it belongs to another parent."""
        codes = codes.round().long()
        out = []
        for parent, offset in zip(parents, self._offsets(parents)):
            n = self.taps[parent].n_neurons
            mine = (codes >= offset) & (codes < offset + n)
            out.append((parent, torch.where(mine, codes - offset, torch.full_like(codes, -1))))
        return out

    def _linear_term(self, node: fx.Node, scale: torch.Tensor, perms: tuple) -> list[Term]:
        kind = self.kinds[node.name]
        if node.op == "call_module" and kind == "matmul":  # a MatMul module with a constant weight
            a, b = (list(node.args) + [None, None])[:2]
            w = _const(b, self.gm, self.computed)
            if not isinstance(w, torch.Tensor) or w.dim() != 2 or not isinstance(a, fx.Node):
                raise _NotFast("matmul with a computed right operand")
            weight, x = w.detach().t(), a
        elif node.op == "call_module":
            lin = self.modules[node.target]
            if not isinstance(lin, nn.Linear):
                raise _NotFast("not an nn.Linear")
            weight = lin.weight.detach()
            x = node.all_input_nodes[0]
        elif kind == "linear" and "addmm" not in str(node.target):
            w = _const(node.args[1], self.gm, self.computed)
            if not isinstance(w, torch.Tensor):
                raise _NotFast("dense layer with a computed weight")
            weight, x = w.detach(), node.args[0]
        elif kind == "matmul":
            a, b = node.args[0], node.args[1]
            w = _const(b, self.gm, self.computed)
            if not isinstance(w, torch.Tensor) or w.dim() != 2 or not isinstance(a, fx.Node):
                raise _NotFast("matmul with a computed right operand")
            weight, x = w.detach().t(), a
        else:
            raise _NotFast("addmm")
        parents, dag = self._input_dag(x)
        codes = self._codes(parents, dag, x)  # (..., D)
        lead = codes.reshape(-1, codes.shape[-1])
        if not torch.all(lead == lead[:1]):
            raise _NotFast("a dense input feature mixes parent channels")
        n_out = weight.shape[0]
        w = weight * self._scale_vector(scale, n_out).to(weight).reshape(-1, 1)
        in_scale, shifted = self._input_scale(parents, dag, x)
        if in_scale is not None:
            per = in_scale.reshape(-1, in_scale.shape[-1])
            if not torch.all(per == per[:1]):
                raise _NotFast("input scale varies over positions")
            w = w * per[0].to(w).reshape(1, -1)
        return [Term(parent, "linear", w, x.name, perms, chan_of=chan, x_shape=tuple(codes.shape), gxa=not shifted)
                for parent, chan in self._split(parents, lead[0])]

    def _identity_term(self, parent: str, node: fx.Node, scale: torch.Tensor,
                       path: list[fx.Node] | None = None) -> Term:
        """A skip connection: the parent (possibly pooled) is added to the pre-activation as it is."""
        if path is None:
            tap = self.taps[parent]
            if tap.channel_axis != 1:
                raise _NotFast("skip connection of a channels-last tap")
            chan = torch.arange(tap.n_neurons)
            shape = tap.shape
        else:
            full = self._chan_of(parent, path, node)
            if full.dim() < 2:
                raise _NotFast("pooled skip connection is not channel-first")
            per = full.reshape(full.shape[0], -1)
            if not torch.all(per == per[:, :1]):
                raise _NotFast("a skip connection mixes parent channels")
            chan, shape = per[:, 0].clone(), tuple(full.shape)
        return Term(parent, "identity", self._scale_vector(scale, len(chan)).detach().clone(), node.name,
                    chan_of=chan, x_shape=shape)


def plan_fast(gm: fx.GraphModule, plan: TapPlan, env1: Mapping[str, Any]) -> FastPlan:
    """Find the taps whose steps have the closed form; record why the others do not."""
    planner = _Planner(gm, plan, env1)
    out = FastPlan()
    taps = {t.name: t for t in plan.taps}
    for tap in plan.taps:
        if not tap.parents or tap.kind == "input":
            continue
        node = planner.nodes[plan.node_of[tap.name]]
        try:
            if tap.kind == "logits":
                act, z = None, node
            else:
                if plan.kinds.get(node.name) not in ACTIVATIONS or len(node.all_input_nodes) != 1:
                    raise _NotFast("the tap is not a pointwise activation of one tensor")
                act, z = node.name, node.all_input_nodes[0]
                if tuple(env1[z.name].shape) != tuple(env1[node.name].shape):
                    raise _NotFast("activation changes the shape")
            terms = planner.terms(tap.name, z)
            if {t.parent for t in terms} != set(tap.parents):
                raise _NotFast("not every parent is reached through a linear term")
            upper = taps[tap.name]
            for t in terms:
                t.scale = 1.0 / (upper.n_positions * taps[t.parent].n_positions)
                _check_geometry(t, upper, env1, z.name, planner)
                t.wk = _static_weight(t, taps[t.parent].n_neurons)
            out.taps[tap.name] = TapFast(tap.name, act, z.name, terms)
        except _NotFast as exc:
            out.reasons[tap.name] = str(exc)
    return out


def _check_geometry(t: Term, upper, env1, z_name: str, planner: _Planner) -> None:
    zshape = tuple(env1[z_name].shape)
    mshape = zshape
    for perm in reversed(t.out_perms):
        inv = [0] * len(perm)
        for i, p in enumerate(perm):
            inv[p] = i
        mshape = tuple(mshape[i] for i in inv)
    if t.kind == "conv":
        if len(mshape) != 4 or mshape[1] != t.weight.shape[0]:
            raise _NotFast("mask shape does not match the convolution")
        h_out = (t.x_shape[1] + 2 * t.padding[0] - t.dilation[0] * (t.weight.shape[2] - 1) - 1) // t.stride[0] + 1
        w_out = (t.x_shape[2] + 2 * t.padding[1] - t.dilation[1] * (t.weight.shape[3] - 1) - 1) // t.stride[1] + 1
        if (h_out, w_out) != tuple(mshape[2:]):
            raise _NotFast("unexpected convolution geometry")
    elif t.kind == "linear":
        if mshape[-1] != t.weight.shape[0] or mshape[1:-1] != tuple(t.x_shape[:-1]):
            raise _NotFast("mask shape does not match the dense layer")
    else:
        if mshape != (1, *t.x_shape) and mshape[1:] != tuple(t.x_shape):
            raise _NotFast("skip connection changes the shape")
    t.m_shape = mshape[1:]  # type: ignore[attr-defined]


def _static_weight(t: Term, n_parent: int) -> torch.Tensor:
    """W'[n, k, delta] summed over the layer inputs that belong to parent channel k."""
    w = t.weight.double()
    chan = t.chan_of.to(w.device)
    if t.kind == "conv":
        n, cg, kh, kw = w.shape
        g = t.groups
        cx = cg * g
        full = torch.zeros((n, cx, kh * kw), dtype=w.dtype, device=w.device)
        ng = n // g
        for gi in range(g):
            full[gi * ng:(gi + 1) * ng, gi * cg:(gi + 1) * cg] = w[gi * ng:(gi + 1) * ng].reshape(ng, cg, kh * kw)
        mine = chan >= 0
        return torch.zeros((n, n_parent, kh * kw), dtype=w.dtype, device=w.device).index_add_(
            1, chan[mine], full[:, mine])
    if t.kind == "linear":
        mine = chan >= 0
        return torch.zeros((w.shape[0], n_parent), dtype=w.dtype, device=w.device).index_add_(
            1, chan[mine], w[:, mine])
    n = w.shape[0]
    out = torch.zeros((n, n_parent), dtype=w.dtype, device=w.device)
    out[torch.arange(n), chan[:n]] = w
    return out


# ---------------------------------------------------------------------------------------------
# collection


def _mask_to_layer(m: torch.Tensor, perms: Sequence[Sequence[int]]) -> torch.Tensor:
    for perm in reversed(perms):
        inv = [0] * len(perm)
        for i, p in enumerate(perm):
            inv[p] = i
        m = m.permute(*inv)
    return m


def _valid(n_out: int, n_in: int, k: int, stride: int, pad: int, dil: int, device, dtype) -> torch.Tensor:
    p = torch.arange(n_out, device=device).reshape(-1, 1)
    d = torch.arange(k, device=device).reshape(1, -1)
    pos = p * stride - pad + d * dil
    return ((pos >= 0) & (pos < n_in)).to(dtype)


def term_stats(t: Term, m: torch.Tensor, x: torch.Tensor | None, forms: Sequence[str]) -> dict[str, torch.Tensor]:
    """Per-image statistics of one term for a batch: keys "g" (gradient) and "a..." (gradient x activation)."""
    m = _mask_to_layer(m, t.out_perms)
    out: dict[str, torch.Tensor] = {}
    B = m.shape[0]
    if t.kind == "conv":
        n, _, kh, kw = t.weight.shape
        if "gradient" in forms:
            vy = _valid(m.shape[2], t.x_shape[1], kh, t.stride[0], t.padding[0], t.dilation[0], m.device, m.dtype)
            vx = _valid(m.shape[3], t.x_shape[2], kw, t.stride[1], t.padding[1], t.dilation[1], m.device, m.dtype)
            # C[b, n, i, j] = sum_{y, x} m[b, n, y, x] * vy[y, i] * vx[x, j], as two small matmuls
            out["g"] = torch.matmul(vy.t(), torch.matmul(m, vx)).reshape(B, n, kh * kw)
        if "gradient_x_activation" in forms:
            out["a_full"] = _conv_gxa(t, m, x)
    elif t.kind == "linear":
        mm = m.reshape(B, -1, m.shape[-1])  # (B, P, N)
        if "gradient" in forms:
            out["g"] = mm.sum(dim=1)
        if "gradient_x_activation" in forms:
            xx = x.reshape(B, -1, x.shape[-1])  # (B, P, D)
            if mm.shape[1] == 1:
                out["a_m"] = mm[:, 0]
                out["a_x"] = xx[:, 0]
            else:
                a = torch.einsum("bpn,bpj->bnj", mm, xx) * t.weight.unsqueeze(0)
                chan = t.chan_of.to(a.device)
                mine = chan >= 0
                out["a_full"] = torch.zeros((B, a.shape[1], t.wk.shape[1]), dtype=a.dtype, device=a.device
                                            ).index_add_(2, chan[mine], a[:, :, mine])
    else:  # identity
        mm = m.reshape(B, m.shape[1], -1) if m.dim() > 2 else m.reshape(B, -1, 1)
        if "gradient" in forms:
            out["g"] = mm.sum(dim=2)
        if "gradient_x_activation" in forms:
            pp = x.reshape(mm.shape)
            out["a_d"] = (mm * pp).sum(dim=2) * t.weight.to(mm.dtype).unsqueeze(0)
    return out


def _conv_gxa(t: Term, m: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    n, cg, kh, kw = t.weight.shape
    g = t.groups
    B = m.shape[0]
    k_parent = t.wk.shape[1]
    chan = t.chan_of.to(m.device)
    mine = chan >= 0
    w = t.weight.to(m.dtype).reshape(g, n // g, cg * kh * kw)
    out = torch.zeros((B, n, k_parent), dtype=m.dtype, device=m.device)
    for b in range(B):  # one image at a time keeps the unfolded input small
        xu = F.unfold(x[b:b + 1], (kh, kw), dilation=t.dilation, padding=t.padding, stride=t.stride)[0]
        xu = xu.reshape(g, cg * kh * kw, -1)  # (G, Cg*kk, P)
        mb = m[b].reshape(g, n // g, -1)  # (G, Ng, P)
        a = torch.bmm(mb, xu.transpose(1, 2))  # (G, Ng, Cg*kk)
        per_in = (a * w).reshape(g, n // g, cg, kh * kw).sum(-1)  # (G, Ng, Cg)
        full = torch.zeros((n, cg * g), dtype=m.dtype, device=m.device)
        for gi in range(g):
            full[gi * (n // g):(gi + 1) * (n // g), gi * cg:(gi + 1) * cg] = per_in[gi]
        out[b] = torch.zeros((n, k_parent), dtype=m.dtype, device=m.device).index_add_(1, chan[mine], full[:, mine])
    return out


def omega_from_stats(t: Term, stats: Mapping[str, np.ndarray], neurons: Sequence[int], form: str) -> np.ndarray:
    """omega (len(neurons), B, K_parent) of one term from its stored statistics."""
    idx = np.asarray(neurons, dtype=np.int64)
    if form == "gradient":
        g = np.asarray(stats["g"])[:, idx].astype(np.float64)  # (B, n, kk) or (B, n)
        wk = _np_static(t)[idx]
        if t.kind == "conv":  # per upper neuron: (K, kk) @ (kk, B)
            om = np.matmul(wk, g.transpose(1, 2, 0)).transpose(0, 2, 1)
        else:
            om = wk[:, None, :] * g.T[:, :, None]
        return om * t.scale
    if "a_full" in stats:
        return np.asarray(stats["a_full"])[:, idx].astype(np.float64).transpose(1, 0, 2) * t.scale
    if "a_d" in stats:
        d = np.asarray(stats["a_d"])[:, idx].astype(np.float64)  # (B, n)
        om = np.zeros((len(idx), d.shape[0], _np_static(t).shape[1]))
        chan = t.chan_of.cpu().numpy()
        for j, n in enumerate(idx):
            om[j, :, chan[n]] = d[:, j]
        return om * t.scale
    m = np.asarray(stats["a_m"])[:, idx].astype(np.float64)  # (B, n)
    x = np.asarray(stats["a_x"], dtype=np.float64)  # (B, D)
    w = t.weight.double().cpu().numpy()[idx]  # (n, D)
    chan = t.chan_of.cpu().numpy()
    mine = chan >= 0
    contrib = w[:, None, mine] * x[None, :, mine] * m.T[:, :, None]  # (n, B, D of this parent)
    return scatter_sum(contrib, chan[mine], _np_static(t).shape[1]) * t.scale


def scatter_sum(values: np.ndarray, chan: np.ndarray, k: int) -> np.ndarray:
    """Sum the last axis of ``values`` into ``k`` bins given by ``chan``."""
    order = np.argsort(chan, kind="stable")
    sorted_chan = chan[order]
    starts = np.flatnonzero(np.r_[True, sorted_chan[1:] != sorted_chan[:-1]])
    sums = np.add.reduceat(values[..., order], starts, axis=-1)
    out = np.zeros(values.shape[:-1] + (k,), dtype=values.dtype)
    out[..., sorted_chan[starts]] = sums
    return out


def _np_static(t: Term) -> np.ndarray:
    cached = getattr(t, "_wk_np", None)
    if cached is None:
        cached = t.wk.cpu().numpy()
        t._wk_np = cached  # type: ignore[attr-defined]
    return cached
