"""Channel codes: which parent channel feeds each element, found by pushing codes forward (method doc, section 6).

Three pushes (ones, channel indices, random values) through the ops of a path tell, per element, the
parent channel it reads, the summed derivative (scale) and whether the channels mix; :func:`decode_channels`
reads them. When every op of the path is pointwise (sums, per-channel affine ops, activations, casts), a max
pooling or a concatenation along the channel axis, every element of a channel holds the same value, so the
codes are pushed with one value per channel (the other axes of size 1: the *reduced* push, a few hundred
numbers instead of a whole feature map; a max pooling passes them on); each op's result is checked to keep
that shape, and any other path is pushed at full size. Both give the same numbers element for element (the
same float64 operations on the same values); :attr:`ChannelCodes.full_push` forces the full push (the
reference the tests compare with).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import fx
from torch.fx.node import map_arg

from ..kinds import ACTIVATIONS, SUMS
from .facts import GraphFacts
from .linear import LinearOp, NotClosedForm

__all__ = ["ChannelCodes", "decode_channels"]

_POINTWISE = ACTIVATIONS | {"identity", "cast"}
#: the max over a window of equal values is that value: in the reduced push, these pass their input on
_MAX_POOLS = {"maxpool", "adaptive_maxpool"}


class _NotReduced(Exception):
    """An op of the path does not keep one value per channel: push at full size instead."""


def decode_channels(ones: torch.Tensor, index: torch.Tensor, rand: torch.Tensor, table: torch.Tensor,
                    why: str) -> tuple[torch.Tensor, torch.Tensor]:
    """``(fed, chan)`` per element from the three pushes: whether a source channel reaches it and which (-1: none).

    ``index`` pushed the codes 1, 2, ... of the source channels, ``rand`` the values ``table`` (one per source
    channel, > 0), ``ones`` ones; an element whose codes are not those of one channel times one scale mixes
    channels, and is refused with ``why``.
    """
    fed = ones != 0
    code = torch.where(fed, index / torch.where(fed, ones, torch.ones_like(ones)), torch.zeros_like(ones))
    chan = torch.round(code).long() - 1
    if not torch.allclose(code, chan.double() + 1, atol=1e-6):
        raise NotClosedForm(why)
    ok = ~fed | torch.isclose(rand, table[chan.clamp_min(0)] * ones, rtol=1e-9, atol=1e-12)
    if not bool(ok.all()):
        raise NotClosedForm(why)
    return fed, torch.where(fed, chan, torch.full_like(chan, -1))


class ChannelCodes(GraphFacts):
    """Pushing values forward through the ops of a path at batch 1 (:meth:`push`) and decoding channel codes."""

    #: push every code at full size (the slow reference of the reduced push; see the module doc)
    full_push = False

    def push(self, sources: Mapping[str, torch.Tensor], nodes: Sequence[fx.Node], target: fx.Node,
             ) -> tuple[torch.Tensor, bool]:
        """Push ``sources`` (node -> float64 value at batch 1) forward through ``nodes`` to ``target``.

        Per-element constant affine ops apply only their scale; every other op is applied as it is.
        Returns the value at ``target`` and whether any affine op on the way had a shift.
        """
        return self._push(sources, nodes, target, None)

    def _push(self, sources: Mapping[str, torch.Tensor], nodes: Sequence[fx.Node], target: fx.Node,
              axis: int | None) -> tuple[torch.Tensor, bool]:
        """:meth:`push`; with ``axis``, every value must keep size 1 on all axes but 0 and ``axis``."""
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
                if axis is not None and self.kind(node) in _MAX_POOLS:
                    env[node.name] = fetch(self.computed_args(node)[0])
                elif aff is not None:
                    data, scale_only, has_shift = aff
                    env[node.name] = scale_only(env[data.name])
                    shifted = shifted or has_shift
                else:
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
                if axis is not None:
                    out = env[node.name]
                    if not isinstance(out, torch.Tensor) or tuple(out.shape) != self.reduced_shape(node, axis):
                        raise _NotReduced
        return env[target.name], shifted

    # -- the reduced push ---------------------------------------------------------------------------
    def reduced_shape(self, node: fx.Node | str, axis: int) -> tuple[int, ...] | None:
        """The batch-1 shape of ``node`` with every axis but 0 and ``axis`` of size 1 (None: not such a tensor)."""
        v = self.value(node)
        if not isinstance(v, torch.Tensor) or not 0 < axis < v.dim():
            return None
        return tuple(s if i in (0, axis) else 1 for i, s in enumerate(v.shape))

    def _reducible(self, axes: Mapping[str, int], nodes: Sequence[fx.Node], target: fx.Node) -> int | None:
        """The common channel axis when codes may take the reduced push from these sources, else None."""
        if self.full_push or len(set(axes.values())) != 1:
            return None
        axis = next(iter(axes.values()))
        ranks = {self.value(n).dim() for n in axes if isinstance(self.value(n), torch.Tensor)}
        if len(ranks) != 1 or len(axes) != sum(isinstance(self.value(n), torch.Tensor) for n in axes):
            return None
        if self.reduced_shape(target, axis) is None or self.value(target).dim() not in ranks:
            return None
        rank = next(iter(ranks))
        for node in nodes:
            kind = self.kind(node)
            if self.affine(node) is not None or kind in _POINTWISE or kind in SUMS:
                continue
            if kind in _MAX_POOLS and axis == 1 and self._pools_after_channels(node, rank):
                continue  # the axes it pools have the same codes
            if kind == "cat":
                dim = node.kwargs.get("dim", node.args[1] if len(node.args) > 1 else 0)
                if isinstance(dim, int) and dim % rank == axis:
                    continue
            return None
        return axis

    def _pools_after_channels(self, node: fx.Node, rank: int) -> bool:
        """A max pooling of its first input alone, over the axes after 1 of a batched input (1-D, 2-D or 3-D)."""
        comp = self.computed_args(node)
        if len(comp) != 1 or not node.args or node.args[0] is not comp[0]:
            return False
        what = type(self.modules[node.target]).__name__ if node.op == "call_module" else \
            getattr(node.target, "__name__", "")
        return any(what.lower().endswith(f"{d}d") and rank == d + 2 for d in (1, 2, 3))

    def push_codes(self, vectors: Sequence[Mapping[str, torch.Tensor]], axes: Mapping[str, int],
                   nodes: Sequence[fx.Node], target: fx.Node, target_axis: int | None = None,
                   ) -> tuple[list[torch.Tensor], bool, bool]:
        """Push each probe of ``vectors`` (source node -> one float64 value per channel along ``axes[node]``, the
        same at every other index) through ``nodes`` to ``target``.

        Returns the values at ``target`` (of its reduced shape when the reduced push was taken), whether an
        affine op on the way had a shift, and whether the push was reduced. ``target_axis``: the reduced push
        only when it keeps this axis of ``target``.
        """
        axis = self._reducible(axes, nodes, target)
        if axis is not None and target_axis in (None, axis):
            try:
                outs, shifted = self._pushes(vectors, axes, nodes, target, axis)
                return outs, shifted, True
            except _NotReduced:
                pass
        outs, shifted = self._pushes(vectors, axes, nodes, target, None)
        return outs, shifted, False

    def _pushes(self, vectors, axes, nodes, target, axis) -> tuple[list[torch.Tensor], bool]:
        outs, shifted = [], False
        for i, vec in enumerate(vectors):
            sources = {}
            for name, v in vec.items():
                full = self.value(name)
                shape = [1] * full.dim()
                shape[axes[name]] = full.shape[axes[name]]
                t = v.to(full.device).reshape(shape)
                sources[name] = t if axis is not None else t.expand(full.shape).contiguous()
            out, sh = self._push(sources, nodes, target, axis)
            outs.append(out)
            shifted = sh if i == 0 else shifted
        return outs, shifted

    def _codes(self, parents: Sequence[str], offsets: Sequence[int]) -> list[dict[str, torch.Tensor]]:
        """The three probes (ones, channel codes, random values) of the parent taps, one value per channel."""
        out: list[dict[str, torch.Tensor]] = [{}, {}, {}]
        for parent, offset in zip(parents, offsets, strict=True):
            node = self.plan.node_of[parent]
            k = self.value(node).shape[self.taps[parent].channel_axis]
            out[0][node] = torch.ones(k, dtype=torch.float64)
            out[1][node] = offset + 1 + torch.arange(k, dtype=torch.float64)
        for parent in parents:
            node = self.plan.node_of[parent]
            k = self.value(node).shape[self.taps[parent].channel_axis]
            out[2][node] = 1 + torch.rand(k, generator=self._gen, dtype=torch.float64)
        return out

    def _decode(self, parents, offsets, dag, x: fx.Node, op: LinearOp) -> tuple[torch.Tensor, torch.Tensor | None,
                                                                                bool]:
        """Per input element of ``op`` (or per channel of a conv input) the parent code, the scale, any shift."""
        probes = self._codes(parents, offsets)
        axes = {self.plan.node_of[p]: self.taps[p].channel_axis for p in parents}
        (ones, index, rand), shifted, reduced = self.push_codes(probes, axes, dag, x)
        table = torch.cat([probes[2][self.plan.node_of[p]] for p in parents])
        ones, index, rand = ones[0].cpu(), index[0].cpu(), rand[0].cpu()
        fed, chan = decode_channels(ones, index, rand, table, "the path mixes parent channels")
        if reduced and op.kind != "conv":  # a conv input's channels are all it needs; a dense layer's, every feature
            full = tuple(self.value(x).shape[1:])
            ones, fed, chan = ones.expand(full), fed.expand(full), chan.expand(full)
        if op.kind == "conv":
            if chan.dim() != op.weight.dim() - 1:
                raise NotClosedForm(f"a convolution input that is not {op.weight.dim()}-D")
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
        if bool(torch.all(ones == 1)):
            return chan, None, shifted
        return chan, ones.expand(tuple(self.value(x).shape[1:])).contiguous() if reduced else ones, shifted
