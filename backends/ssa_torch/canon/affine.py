"""Pass: constant per-channel affine chains are folded into the neighbouring conv or dense layer.

Batch-norm in any form (``nn.BatchNorm2d``, ``F.batch_norm``, aten's no-training batch-norm, or
written out as ``Sub`` / ``Mul`` / ``Add`` / ``Div`` by per-channel constants as Caffe and Keras
exports do) is an affine map per channel, y = s * x + t:

* **after** a layer (conv or dense output, possibly through permutations, as in channels-last
  exports: ``Conv -> Transpose -> Sub -> Mul -> Add``), it folds into the layer's weight and bias:
  W'[n] = s[n] W[n], b' = s b + t;
* **before** a layer (``ReLU -> Mul -> Add -> MatMul``, a Keras dense batch-norm), the scale folds
  into the weight's input channels, and the shift into the bias when the layer reads no zero
  padding (dense layers, convs without padding): b' = b + W t.

Only chains whose intermediate values have no other consumer are folded, and nothing the user
named as a tap. The layer gets a new module (a shared module stays as it is for its other calls).
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import fx

from ..kinds import PERMUTATIONS, perm_of
from .base import CanonPass, PassContext, first_tensor_arg, fresh_module_path
from .layers import set_module

__all__ = ["FoldAffine", "affine_of", "Affine"]


@dataclass(frozen=True)
class Affine:
    """y = scale * x + shift along one axis (``scale`` / ``shift``: float64 vectors, or None)."""

    data: fx.Node
    scale: torch.Tensor | None
    shift: torch.Tensor | None

    def then(self, other: Affine) -> Affine:
        """This map followed by ``other`` (applied to this one's output)."""
        s1, t1, s2, t2 = self.scale, self.shift, other.scale, other.shift
        scale = s1 if s2 is None else (s2 if s1 is None else s1 * s2)
        shift = t1 if (t1 is None or s2 is None) else t1 * s2
        shift = t2 if shift is None else (shift if t2 is None else shift + t2)
        return Affine(self.data, scale, shift)


def _per_channel(c: torch.Tensor | float, axis: int, ndim: int, n: int) -> torch.Tensor | None:
    """``c`` as a float64 vector of length ``n`` when it broadcasts along ``axis`` only, else None."""
    if isinstance(c, float):
        return torch.full((n,), c, dtype=torch.float64)
    if c.dim() > ndim:
        return None
    shape = (1,) * (ndim - c.dim()) + tuple(c.shape)
    for i, d in enumerate(shape):
        if i != axis and d != 1:
            return None
    if shape[axis] not in (1, n):
        return None
    return c.detach().to(torch.float64).reshape(-1).expand(n).clone().cpu()


def _bn(ctx: PassContext, node: fx.Node, n: int) -> tuple[fx.Node, torch.Tensor, torch.Tensor] | None:
    """(input, scale, shift) of an inference-mode batch-norm node."""
    if node.op == "call_module":
        bn = ctx.gm.get_submodule(str(node.target))
        if not isinstance(bn, nn.modules.batchnorm._BatchNorm) or bn.training or bn.running_var is None:
            return None
        var, mean, w, b, eps = bn.running_var, bn.running_mean, bn.weight, bn.bias, bn.eps
        x = node.args[0]
    else:
        name = getattr(node.target, "__name__", str(node.target))
        args = list(node.args)
        if node.target is F.batch_norm:
            get = dict(zip(("input", "running_mean", "running_var", "weight", "bias", "training", "momentum", "eps"),
                           args, strict=False))  # positional arguments: often fewer than the names
            get.update(node.kwargs)
            if get.get("training", False):
                return None
            x, mean, var = get["input"], ctx.const(get.get("running_mean")), ctx.const(get.get("running_var"))
            w = ctx.const(get["weight"]) if get.get("weight") is not None else None
            b = ctx.const(get["bias"]) if get.get("bias") is not None else None
            eps = get.get("eps", 1e-5)
        elif "_native_batch_norm_legit_no_training" in name and len(args) >= 7:
            x, w, b, mean, var, eps = args[0], ctx.const(args[1]), ctx.const(args[2]), ctx.const(args[3]), \
                ctx.const(args[4]), args[6]
        elif name.startswith("batch_norm") and len(args) >= 8:  # aten.batch_norm(x, w, b, mean, var, training, m, eps)
            if args[5] is not False:
                return None
            x, w, b, mean, var, eps = args[0], ctx.const(args[1]), ctx.const(args[2]), ctx.const(args[3]), \
                ctx.const(args[4]), args[7]
        else:
            return None
        if not isinstance(var, torch.Tensor) or not isinstance(mean, torch.Tensor) or not isinstance(eps, float):
            return None
    if not isinstance(x, fx.Node) or var.numel() != n:
        return None
    s = torch.rsqrt(var.detach().double().cpu() + float(eps))
    if isinstance(w, torch.Tensor):
        s = s * w.detach().double().cpu()
    t = -mean.detach().double().cpu() * s
    if isinstance(b, torch.Tensor):
        t = t + b.detach().double().cpu()
    return x, s, t


def affine_of(ctx: PassContext, node: fx.Node, axis: int, ndim: int, n: int, computed: set[str]) -> Affine | None:
    """The affine map ``node`` applies along ``axis`` (``n`` channels), or None when it is not one."""
    kind = ctx.kind(node)
    if kind == "batchnorm":
        if axis != 1:
            return None
        found = _bn(ctx, node, n)
        if found is None:
            return None
        x, s, t = found
        return Affine(x, s, t)
    if node.op == "call_function" and "getitem" in getattr(node.target, "__name__", "") and node.args[1] == 0:
        src = node.args[0]  # aten's no-training batch-norm returns (out, mean, rstd)
        if isinstance(src, fx.Node) and ctx.kind(src) == "batchnorm" and len(src.users) == 1 and axis == 1:
            found = _bn(ctx, src, n)
            if found is not None:
                return Affine(found[0], found[1], found[2])
        return None
    if kind not in ("add", "sub", "mul", "div"):
        return None
    args = list(node.args[:2])
    if len(args) != 2:
        return None
    alpha = node.kwargs.get("alpha", 1)
    if set(node.kwargs) - {"alpha"} or not isinstance(alpha, (int, float)):
        return None
    comp = [i for i, a in enumerate(args) if isinstance(a, fx.Node) and a.name in computed]
    if len(comp) != 1:
        return None
    i = comp[0]
    c = ctx.const(args[1 - i])
    if c is None:
        return None
    vec = _per_channel(c, axis, ndim, n)
    if vec is None:
        return None
    x = args[i]
    if kind == "add":
        return Affine(x, None, vec * alpha if i == 0 else vec) if (i == 0 or alpha == 1) else \
            Affine(x, torch.full((n,), float(alpha), dtype=torch.float64), vec)
    if kind == "sub":
        if i == 0:
            return Affine(x, None, -vec * alpha)
        return Affine(x, torch.full((n,), -float(alpha), dtype=torch.float64), vec)
    if kind == "mul":
        return Affine(x, vec, None)
    if i == 0 and torch.all(vec != 0):  # x / c
        return Affine(x, 1.0 / vec, None)
    return None


def _buffer(gm: fx.GraphModule, value: torch.Tensor) -> fx.Node:
    path = fresh_module_path(gm, "const")
    holder, name = path.split(".")
    gm.get_submodule(holder).register_buffer(name, value)
    return gm.graph.get_attr(path)


def _layer(ctx: PassContext, node: fx.Node) -> nn.Module | None:
    if node.op != "call_module" or len(node.args) != 1 or node.kwargs:
        return None
    mod = ctx.gm.get_submodule(str(node.target))
    if isinstance(mod, nn.Conv2d) and mod.padding_mode == "zeros":
        return mod
    if isinstance(mod, nn.Linear):
        return mod
    return None


def _folded_copy(mod: nn.Module) -> nn.Module:
    new = copy.deepcopy(mod)
    if new.bias is None:
        new.bias = nn.Parameter(torch.zeros(new.weight.shape[0], dtype=new.weight.dtype, device=new.weight.device),
                                requires_grad=False)
    return new


class FoldAffine(CanonPass):
    """Per-channel affine chains (batch-norm, Sub/Mul/Add/Div by constants) into the adjacent conv / dense layer."""

    name = "fold-affine"
    description = "fold batch-norm and per-channel Sub/Mul/Add/Div constants into the neighbouring conv / dense layer"

    def run(self, gm: fx.GraphModule, ctx: PassContext) -> int:
        count = 0
        for node in list(gm.graph.nodes):
            if node.graph is not gm.graph or node.op != "call_module":
                continue
            if _layer(ctx, node) is not None:
                count += self._after(gm, ctx, node)
        for node in list(gm.graph.nodes):
            if node.op == "call_module" and _layer(ctx, node) is not None:
                count += self._before(gm, ctx, node)
        return count

    # -- after the layer ---------------------------------------------------------------------------
    def _after(self, gm: fx.GraphModule, ctx: PassContext, layer: fx.Node) -> int:
        if ctx.protected(layer):
            return 0
        mod = _layer(ctx, layer)
        values = ctx.values(1)
        computed = ctx.computed()
        out = values.get(layer.name)
        if not isinstance(out, torch.Tensor):
            return 0
        n = mod.weight.shape[0]
        axis = 1 if isinstance(mod, nn.Conv2d) else out.dim() - 1
        cur, total, chain = layer, None, []
        modules = ctx.modules
        while len(cur.users) == 1:
            user = next(iter(cur.users))
            value = values.get(user.name)
            if ctx.protected(user) or not isinstance(value, torch.Tensor):
                break
            kind = ctx.kind(user)
            if kind in PERMUTATIONS and first_tensor_arg(user) is cur:
                perm = perm_of(user, kind, modules, value.dim())
                if perm is None:
                    break
                axis = perm.index(axis)
                cur = user
                continue
            aff = affine_of(ctx, user, axis, value.dim(), n, computed)
            if aff is None or aff.data is not cur:
                break
            total = aff if total is None else total.then(aff)
            chain.append((user, aff.data))
            cur = user
        if not chain:
            return 0
        new = _folded_copy(mod)
        s = total.scale if total.scale is not None else torch.ones(n, dtype=torch.float64)
        t = total.shift if total.shift is not None else torch.zeros(n, dtype=torch.float64)
        with torch.no_grad():
            w = new.weight.double().cpu()
            new.weight.copy_((w * s.reshape((-1,) + (1,) * (w.dim() - 1))).to(new.weight))
            new.bias.copy_((new.bias.double().cpu() * s + t).to(new.bias))
        set_module(gm, layer, new, "conv" if isinstance(mod, nn.Conv2d) else "linear", (layer.args[0],))
        for a, src in reversed(chain):  # the dead chain is removed by dead-code elimination
            a.replace_all_uses_with(src)
        return len(chain)

    # -- before the layer --------------------------------------------------------------------------
    def _before(self, gm: fx.GraphModule, ctx: PassContext, layer: fx.Node) -> int:
        mod = _layer(ctx, layer)
        x = layer.args[0]
        values = ctx.values(1)
        computed = ctx.computed()
        xv = values.get(x.name) if isinstance(x, fx.Node) else None
        if not isinstance(xv, torch.Tensor):
            return 0
        conv = isinstance(mod, nn.Conv2d)
        axis = 1 if conv else xv.dim() - 1
        n = xv.shape[axis]
        shift_ok = not conv or (mod.padding in ((0, 0), "valid"))
        chain: list[tuple[fx.Node, fx.Node]] = []
        total: Affine | None = None  # the map from the chain's input to the layer input
        cur = x
        while isinstance(cur, fx.Node) and len(cur.users) == 1 and not ctx.protected(cur):
            value = values.get(cur.name)
            if not isinstance(value, torch.Tensor):
                break
            aff = affine_of(ctx, cur, axis, value.dim(), n, computed)
            if aff is None:
                break
            total = aff if total is None else aff.then(total)
            chain.append((cur, aff.data))
            cur = aff.data
        if not chain:
            return 0
        s = total.scale if total.scale is not None else torch.ones(n, dtype=torch.float64)
        t = total.shift if total.shift is not None else torch.zeros(n, dtype=torch.float64)
        if not shift_ok and bool(torch.any(t != 0)):
            if len(chain) == 1 and total.scale is None:
                return 0  # a lone shift before a padded conv: nothing to fold
            if bool(torch.any(s == 0)):
                return 0
            # the chain is s * (x + t / s): one shift stays before the (zero-padded) conv, the scale folds
            with gm.graph.inserting_before(layer):
                shape = [1] * xv.dim()
                shape[axis] = n
                const = _buffer(gm, (t / s).reshape(shape).to(xv))
                cur = gm.graph.call_function(torch.add, (cur, const))
            t = torch.zeros(n, dtype=torch.float64)
        new = _folded_copy(mod)
        with torch.no_grad():
            w = new.weight.double().cpu()
            if conv:
                g = new.groups
                cg = w.shape[1]
                out_group = torch.arange(w.shape[0]) // (w.shape[0] // g)
                idx = out_group[:, None] * cg + torch.arange(cg)[None, :]  # global input channel of W[n, c]
                sw = s[idx][:, :, None, None]
                tw = t[idx][:, :, None, None]
                bias_add = (w * tw).sum(dim=(1, 2, 3))
                w = w * sw
            else:
                bias_add = w @ t
                w = w * s[None, :]
            new.weight.copy_(w.to(new.weight))
            new.bias.copy_((new.bias.double().cpu() + bias_add).to(new.bias))
        set_module(gm, layer, new, "conv" if conv else "linear", (cur,))
        return len(chain)  # the layer reads the chain's input; the dead chain is removed by dead-code elimination
