"""Channel codes: which parent channel feeds each element, found by pushing codes forward (method doc, section 6).

Three pushes (ones, channel indices, random values) through the ops of a path tell, per element, the
parent channel it reads, the summed derivative (scale) and whether the channels mix.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import fx
from torch.fx.node import map_arg

from .facts import GraphFacts
from .linear import LinearOp, NotClosedForm

__all__ = ["ChannelCodes"]


class ChannelCodes(GraphFacts):
    """Pushing values forward through the ops of a path at batch 1 (:meth:`push`) and decoding channel codes."""

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
