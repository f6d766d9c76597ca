"""A slow, plainly written reference of the whole SSA traversal (method doc, sections 3 and 4).

Independent of ssa's code: the taps and their parents are given by hand
(:class:`ssa.testing.models.RefTap`), cut semantics are done with forward hooks that
replace each tap module's output by a detached leaf that requires grad (and, for the
residual streams of section 4b, a torch function mode that does the same to the k-th
tensor addition of the forward pass, and to the k-th ReLU called as a function), and the
relevance is computed with one ``torch.autograd.grad`` call per upper neuron
and image. Outliers, ranking and selection are written out row by row, as the
method doc states them.
"""

from __future__ import annotations

import contextlib
import copy
from collections import defaultdict
from collections.abc import Callable, Sequence

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.overrides import TorchFunctionMode

from ssa.testing.models import RefTap

__all__ = ["op_kind", "run_cut", "tap_scalar", "reference_relevance", "tukey_row", "reference_ssa"]


def _fresh(model: nn.Module) -> nn.Module:
    model = copy.deepcopy(model).eval()
    for m in model.modules():
        if getattr(m, "inplace", False) is True:
            m.inplace = False  # type: ignore[assignment]  # nn.Module types attributes as Tensor | Module
    for p in model.parameters():
        p.requires_grad_(False)
    return model


def run_cut(model: nn.Module, x: torch.Tensor, taps: Sequence[RefTap]
            ) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """Run ``model`` on ``x`` with every tap cut.

    Returns ``(raw, leaf)``: ``raw[t]`` is the tap's value as computed from its parents' leaves
    (differentiable with respect to them), ``leaf[t]`` the detached copy the rest of the network reads.
    """
    raw: dict[str, torch.Tensor] = {}
    leaf: dict[str, torch.Tensor] = {}
    modules = dict(model.named_modules())
    by_module: dict[str, dict[int, str]] = defaultdict(dict)
    for t in taps:
        if t.module is not None:
            by_module[t.module][t.call] = t.name
    calls: dict[str, int] = defaultdict(int)
    handles = []

    def make_hook(path: str):
        def hook(module, inputs, output):
            k = calls[path]
            calls[path] += 1
            name = by_module[path].get(k)
            if name is None:
                return None
            raw[name] = output
            cut = output.detach().clone().requires_grad_(True)
            leaf[name] = cut
            return cut.clone()  # the network reads a copy, which it may modify in place (x += skip)

        return hook

    for path in by_module:
        handles.append(modules[path].register_forward_hook(make_hook(path)))
    ops = {(t.op, t.call): t.name for t in taps if t.op is not None}
    try:
        inp = x.detach().clone()
        for t in taps:
            if t.module is None and t.op is None:
                inp.requires_grad_(True)
                raw[t.name] = inp
                leaf[t.name] = inp
        with torch.enable_grad(), _CutOps(ops, raw, leaf):
            model(inp)
    finally:
        for h in handles:
            h.remove()
    return raw, leaf


_ADDITIONS = (torch.add, torch.Tensor.add, torch.Tensor.__add__, torch.Tensor.__radd__, torch.Tensor.__iadd__,
              torch.Tensor.add_)
_RELUS = (F.relu, F.relu_, torch.relu, torch.relu_, torch.Tensor.relu, torch.Tensor.relu_)


def op_kind(func, args) -> str | None:
    """``"add"`` for an addition of two tensors, ``"relu"`` for a ReLU called as a function (``F.relu``,
    ``torch.relu``, ``Tensor.relu``; an ``nn.ReLU`` module calls ``F.relu`` too), else None."""
    if func in _ADDITIONS and len(args) >= 2 and all(isinstance(a, torch.Tensor) for a in args[:2]):
        return "add"
    if func in _RELUS and args and isinstance(args[0], torch.Tensor):
        return "relu"
    return None


class _CutOps(TorchFunctionMode):
    """Cut the outputs of chosen calls of an op: the k-th addition of two tensors (``("add", k)``) or the
    k-th ReLU called as a function (``("relu", k)``) in the forward pass."""

    def __init__(self, taps: dict[tuple[str, int], str], raw: dict[str, torch.Tensor],
                 leaf: dict[str, torch.Tensor]) -> None:
        super().__init__()
        self.taps, self.raw, self.leaf = taps, raw, leaf
        self.count: dict[str, int] = defaultdict(int)

    def __torch_function__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        kind = op_kind(func, args)
        if kind is not None:
            name = self.taps.get((kind, self.count[kind]))
            self.count[kind] += 1
            if name is not None:
                self.raw[name] = out
                out = out.detach().clone().requires_grad_(True)
                self.leaf[name] = out
                out = out.clone()  # the network reads a copy, which it may modify in place
        return out


def tap_scalar(value: torch.Tensor, channel_axis: int, neuron: int, cls: bool = False) -> torch.Tensor:
    """The neuron's scalar on a batch of one image: its value (2-D tap) or its spatial mean (``cls``: its value
    at the class token, position 0 of axis 1)."""
    if cls:
        value = value[:, :1]
    channel = value.select(channel_axis, neuron)[0]
    return channel.mean() if channel.dim() > 0 else channel


def _per_channel_mean(t: torch.Tensor, channel_axis: int, cls: bool = False) -> np.ndarray:
    """Spatial mean of every channel of a batch-of-one tensor, shape (K,) (``cls``: at position 0 of axis 1)."""
    if cls:
        t = t[:, :1]
    t = t[0]  # drop the batch axis
    t = t.movedim(channel_axis - 1, 0)
    return t.reshape(t.shape[0], -1).mean(dim=1).double().numpy()


def reference_relevance(model: nn.Module, images: np.ndarray, taps: Sequence[RefTap], upper: str,
                        neurons: Sequence[int], rule: str,
                        context: Callable[[nn.Module], contextlib.AbstractContextManager] | None = None,
                        ) -> dict[str, np.ndarray]:
    """omega[parent][j, i, k] for upper neurons ``neurons[j]``, image i, parent neuron k.

    ``context``, if given, is entered with the model copy the reference runs (to add hooks to it).
    """
    model = _fresh(model)
    with context(model) if context is not None else contextlib.nullcontext():
        return _relevance(model, images, taps, upper, neurons, rule)


def _relevance(model: nn.Module, images: np.ndarray, taps: Sequence[RefTap], upper: str,
               neurons: Sequence[int], rule: str) -> dict[str, np.ndarray]:
    by_name = {t.name: t for t in taps}
    up = by_name[upper]
    parents = [by_name[p] for p in up.parents]
    out: dict[str, list[np.ndarray]] = {p.name: [] for p in parents}
    for n in neurons:
        rows: dict[str, list[np.ndarray]] = {p.name: [] for p in parents}
        for i in range(images.shape[0]):
            x = torch.from_numpy(images[i:i + 1]).float()
            raw, leaf = run_cut(model, x, taps)
            s = tap_scalar(raw[upper], up.channel_axis, n, up.cls)
            inputs = [leaf[p.name] for p in parents]
            grads = torch.autograd.grad(s, inputs, allow_unused=True)
            for p, a, g in zip(parents, inputs, grads, strict=True):
                if g is None:
                    g = torch.zeros_like(a)
                if rule == "gradient":
                    c = g
                elif rule == "gradient_x_activation":
                    c = g * a.detach()
                else:
                    raise ValueError(rule)
                rows[p.name].append(_per_channel_mean(c, p.channel_axis, p.cls))
        for p in parents:
            out[p.name].append(np.stack(rows[p.name]))
    return {k: np.stack(v) for k, v in out.items()}


def tukey_row(row: np.ndarray, k: float = 1.5) -> list[bool]:
    """Tukey's upper fence on one row, written out: strictly above Q3 + k * (Q3 - Q1)."""
    if not np.all(np.isfinite(row)):
        return [False] * len(row)
    q1 = np.percentile(row, 25)
    q3 = np.percentile(row, 75)
    fence = q3 + k * (q3 - q1)
    return [bool(v > fence) for v in row]


def reference_ssa(model: nn.Module, images: np.ndarray, taps: Sequence[RefTap], target: int, branching: int,
                  rule: str = "gradient") -> dict[tuple[str, int, str, int], tuple[int, float]]:
    """The whole traversal, top-down from the logits.

    Returns ``{(upper_tap, n, lower_tap, k): (frequency, relevance)}`` for every kept edge.
    """
    edges: dict[tuple[str, int, str, int], tuple[int, float]] = {}
    sets: dict[str, set[int]] = {"logits": {target}}
    n_images = images.shape[0]
    for tap in reversed(list(taps)):  # reverse execution order: every child before its parents
        chosen = sorted(sets.get(tap.name, set()))
        if not chosen or not tap.parents:
            continue
        omega = reference_relevance(model, images, taps, tap.name, chosen, rule)
        for parent in tap.parents:
            for j, n in enumerate(chosen):
                w = omega[parent][j]  # (images, K)
                K = w.shape[1]
                count = [0] * K
                for i in range(n_images):
                    for kk, is_out in enumerate(tukey_row(w[i])):
                        if is_out:
                            count[kk] += 1
                mean = [float(np.mean(w[:, kk])) for kk in range(K)]
                ranking = sorted(range(K), key=lambda kk: (-count[kk], -mean[kk], kk))
                kept = [kk for kk in ranking if count[kk] > 0][:branching]
                for kk in kept:
                    edges[(tap.name, n, parent, kk)] = (count[kk], mean[kk])
                sets.setdefault(parent, set()).update(kept)
    return edges
