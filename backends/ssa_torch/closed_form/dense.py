"""Dense layers (``nn.Linear``, also on several positions, and chains of them): the 1x1 case of section 6.

    omega[n, k] = 1 / (P_u * P_l) * sum_p m[n, p] * sum_{f in k} W'[n, f]                (gradient)
    omega[n, k] = 1 / (P_u * P_l) * sum_p m[n, p] * sum_{f in k} W[n, f] x[p, f]          (gradient x activation)

where f runs over the input features that belong to parent channel k (found through flatten /
permute / pooling by the path's channel codes) and W' includes the path's per-feature scale.
For a dense layer on one position the statistics are just m and x; omega is formed for the
selected upper neurons only, in chunks.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import fx

from .linear import NotClosedForm
from .planner import Branch, Planner
from .registry import ClosedForm, register_builtin
from .terms import Term, as_float64, as_tensor, chunks, place_channels, scatter_channels

__all__ = ["DenseTerm", "DenseForm"]


class DenseTerm(Term):
    """A dense layer (possibly a composed chain) reaching one parent tap."""

    label = "linear"

    def __init__(self, parent: str, branch: Branch, chan: torch.Tensor) -> None:
        self.parent = parent
        self.weight = branch.op.weight
        self.x = branch.x
        self.x_shape = branch.x_shape
        self.chan = chan.long()
        self.shifted = branch.shifted
        d = self.weight.shape[1]
        if branch.scale is None:
            self.s = torch.ones(d, dtype=torch.float64)
        else:
            per = branch.scale.double().cpu().reshape(-1, d)
            if not torch.allclose(per, per[:1].expand_as(per)):
                raise NotClosedForm("the path scales a dense input by factors that vary with position")
            self.s = per[0].clone()
        if branch.op.layers > 1:
            self.label = "linear chain"
        self._static: dict[str, torch.Tensor] = {}

    @property
    def needs(self) -> tuple[str, ...]:
        return (self.x,)

    def place(self, device: torch.device) -> None:
        """The channel map and its column plan on ``device``."""
        self.chan = place_channels(self.chan, self.n_parent, device)

    def _w(self, device) -> torch.Tensor:
        key = f"w{device}"
        if key not in self._static:
            self._static[key] = self.weight.to(device=device, dtype=torch.float64)
        return self._static[key]

    def _wk(self, device) -> torch.Tensor:
        """(N, K): W' summed over the features of each parent channel."""
        key = f"wk{device}"
        if key not in self._static:
            n, d = self.weight.shape
            s = self.s.to(device)
            parts = [scatter_channels(self.weight[lo:hi].to(device=device, dtype=torch.float64) * s[None, :], self.chan,
                                      self.n_parent) for lo, hi in chunks(n, d * 8)]
            self._static[key] = torch.cat(parts)
        return self._static[key]

    def statistics(self, m: torch.Tensor, values: Mapping[str, torch.Tensor], forms: Sequence[str]):
        B = m.shape[0]
        mm = m.reshape(B, -1, m.shape[-1])  # (B, P, N)
        out: dict[str, torch.Tensor] = {}
        if "gradient" in forms:
            out["g"] = mm.sum(dim=1)
        if "gradient_x_activation" in forms:
            xx = values[self.x].reshape(B, -1, self.weight.shape[1]).to(m.dtype)  # (B, P, D)
            if mm.shape[1] == 1:
                out["a_m"], out["a_x"] = mm[:, 0], xx[:, 0]
            else:
                w = self.weight.to(device=m.device, dtype=m.dtype)
                a = torch.einsum("bpn,bpd->bnd", mm, xx) * w.unsqueeze(0)
                out["a"] = scatter_channels(a, self.chan, self.n_parent)
        return out

    def rank1(self, stats: Mapping[str, Any], neurons: Sequence[int], form: str):
        if form != "gradient":
            return None
        g = as_tensor(stats["g"])  # (B, N)
        h, fed = self.head_channels(neurons, g.device)
        return g[:, h].t(), self._wk(g.device)[h], fed

    def own_rows(self, stats: Mapping[str, Any], neurons: Sequence[int], form: str
                 ) -> tuple[torch.Tensor, torch.Tensor] | None:
        """The input relevance ``a`` (B, N, K) picked for the upper neurons, where it was collected."""
        if form == "gradient" or "a" not in stats:
            return None
        return self.picked_relevance(stats, neurons)

    def rank1_order(self, neurons: Sequence[int], device: Any) -> torch.Tensor | None:
        """The weights' rows sorted once per device (stable), picked for ``neurons``."""
        key = f"wk-order{device}"
        if key not in self._static:
            self._static[key] = torch.argsort(self._wk(device), dim=1, stable=True)
        h, _ = self.head_channels(neurons, device)
        return self._static[key][h]

    def omega(self, stats: Mapping[str, Any], neurons: Sequence[int], form: str) -> torch.Tensor:
        if form == "gradient":
            g = as_tensor(stats["g"])  # (B, N)
            h, fed = self.head_channels(neurons, g.device)
            om = self._wk(g.device)[h][:, None, :] * g[:, h].t()[:, :, None]
        elif "a" in stats:
            rows, fed = self.own_rows(stats, neurons, form)  # type: ignore[misc]  # always, with "a"
            return self.finish(as_float64(rows), fed, inplace=True)  # (n, B, K), rows contiguous
        else:
            mm = as_tensor(stats["a_m"])  # (B, N)
            x = as_tensor(stats["a_x"], mm.device)  # (B, D)
            h, fed = self.head_channels(neurons, mm.device)
            w = self._w(mm.device)
            parts = []
            for lo, hi in chunks(len(h), x.numel() * 8):  # (chunk, B, D) at a time
                contrib = w[h[lo:hi]][:, None, :] * x[None]
                parts.append(scatter_channels(contrib, self.chan, self.n_parent) * mm[:, h[lo:hi]].t()[:, :, None])
            om = torch.cat(parts) if parts else torch.zeros((0, x.shape[0], self.n_parent), dtype=x.dtype,
                                                            device=x.device)
        return self.finish(om, fed)


@register_builtin
class DenseForm(ClosedForm):
    """``nn.Linear`` (canonicalisation turns ``x @ W`` and ``F.linear`` with constant weights into it)."""

    name = "dense"
    kinds = ("linear", "matmul")

    def channel_axis(self, node: fx.Node, ctx: Planner) -> int:
        return ctx.value(node).dim() - 1

    def terms(self, node: fx.Node, ctx: Planner) -> list[Term]:
        op, x = ctx.layer_op(node)
        out_shape = tuple(ctx.value(node).shape)
        terms: list[Term] = []
        for br in ctx.resolve(x, op):
            if br.gate is not None:
                raise NotClosedForm("a gate before a dense layer")
            if br.x_shape[-1] != op.weight.shape[1] or tuple(br.x_shape[:-1]) != out_shape[1:-1]:
                raise NotClosedForm("unexpected dense layer shapes")
            terms.extend(DenseTerm(p, br, br.channels_of(p)) for p in br.parents)
        return terms
