"""Squeeze-excitation gates: the parent tap inside the gate.

In ``conv(data * sigma(W2 x2))`` (MobileNetV3, EfficientNet: x2 is the SE block's inner activation,
a tap under cut semantics) the gate is a per-image, per-channel scale of the conv input: the
conv term of ``data`` carries it (:class:`~ssa_torch.closed_form.conv.ConvTerm`). The gate's own
parent gets this term: with A[n, c] the conv's input relevance of channel c against the
ungated data (sum_p m[n, p] sum_delta W[n, c, delta] data[c, p + delta]) and d[c] = sigma'(u[c]),

    omega[n, k] = 1 / (P_u * P_l) * sum_c A[n, c] d[c] W2'[c, k]                       (gradient)
    omega[n, k] = 1 / (P_u * P_l) * sum_c A[n, c] d[c] sum_{f in k} W2[c, f] x2[f]        (gradient x activation)
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch

from .conv import conv_input_relevance, global_input_channels
from .linear import NotClosedForm
from .planner import Branch, Gate, Planner
from .terms import Term, as_tensor, place_channels, scatter_channels

__all__ = ["GateTerm", "gate_terms", "input_channel_rows", "scatter_input_channels"]


class GateTerm(Term):
    """The parent tap of a squeeze-excitation gate, through the gate into the conv it scales."""

    label = "gate"

    def __init__(self, parent: str, gate: Gate, branch: Branch) -> None:
        self.parent = parent
        self.op = gate.outer
        self.data = gate.data
        self.act = gate.act
        self.x2 = branch.x
        self.w2 = branch.op.weight  # (C, F): the gate's layer (composed with any layers before it)
        self.chan = branch.channels_of(parent).long()
        self.shifted = branch.shifted
        f = self.w2.shape[1]
        scale = branch.scale
        if scale is None:
            self.s2 = torch.ones(f, dtype=torch.float64)
        else:
            per = scale.double().cpu().reshape(1, -1) if branch.op.flat else scale.double().cpu().reshape(-1, f)
            if not torch.allclose(per, per[:1].expand_as(per)):
                raise NotClosedForm("a gate input scaled by factors that vary with position")
            self.s2 = per[0].clone()
        self._static: dict[str, torch.Tensor] = {}

    @property
    def needs(self) -> tuple[str, ...]:
        return (self.data, self.act + ":d", self.x2)

    def place(self, device: torch.device) -> None:
        """The channel map and its column plan on ``device``."""
        self.chan = place_channels(self.chan, self.n_parent, device)

    def _w2k(self, device) -> torch.Tensor:
        key = f"w2k{device}"
        if key not in self._static:
            w = self.w2.to(device=device, dtype=torch.float64) * self.s2.to(device)[None, :]
            self._static[key] = scatter_channels(w, self.chan, self.n_parent)  # (C, K)
        return self._static[key]

    def statistics(self, m: torch.Tensor, values: Mapping[str, torch.Tensor], forms: Sequence[str]):
        B = m.shape[0]
        a = conv_input_relevance(self.op, m, values[self.data])  # (B, N, Cg)
        out = {"ga": input_channel_rows(self.op, a), "gd": values[self.act + ":d"].reshape(B, -1).to(m.dtype)}
        if "gradient_x_activation" in forms:
            out["gx"] = values[self.x2].reshape(B, -1).to(m.dtype)
        return out

    def omega(self, stats: Mapping[str, Any], neurons: Sequence[int], form: str) -> torch.Tensor:
        a = as_tensor(stats["ga"])  # (B, N, C)
        h, fed = self.head_channels(neurons, a.device)
        d = as_tensor(stats["gd"], a.device)  # (B, C)
        mg = a[:, h] * d[:, None, :]  # (B, n, C): d(upper n) / d(gate pre-activation c)
        if form == "gradient":
            om = torch.matmul(mg, self._w2k(a.device)).transpose(0, 1)
        else:
            x2 = as_tensor(stats["gx"], a.device)  # (B, F)
            w2 = self.w2.to(device=a.device, dtype=torch.float64)
            t = scatter_channels(w2[None] * x2[:, None, :], self.chan, self.n_parent)  # (B, C, K)
            om = torch.bmm(mg, t).transpose(0, 1)
        return self.finish(om, fed)


def input_channel_rows(op, a: torch.Tensor) -> torch.Tensor:
    """(B, N, C): the conv's input relevance ``a`` (B, N, C / groups) placed at each row's global input channels
    (zeros elsewhere). With one group the columns are the input channels in order and each value lands once on a
    zero: ``a + 0`` (the same values, -0 made +0 as the sum with the zero does), without zero-filling and
    scattering a (B, N, C) array (MobileNetV3's statistics pass: 0.95 -> 0.87 s of CPU); otherwise
    :func:`scatter_input_channels`, the reference."""
    if op.groups == 1:
        return a + 0.0
    return scatter_input_channels(op, a)


def scatter_input_channels(op, a: torch.Tensor) -> torch.Tensor:
    """:func:`input_channel_rows` by a scatter-add of ``a`` into zeros at :func:`global_input_channels`."""
    cols = global_input_channels(op, a.device).expand(a.shape[0], -1, -1)
    n_in = op.weight.shape[1] * op.groups
    return torch.zeros((a.shape[0], a.shape[1], n_in), dtype=a.dtype, device=a.device).scatter_add_(2, cols, a)


def gate_terms(gate: Gate, ctx: Planner) -> list[Term]:
    """One term per parent of the gate's input."""
    if gate.outer is None or gate.outer.kind != "conv":
        raise NotClosedForm("a gate before a layer that is not a convolution")
    out: list[Term] = []
    for br in gate.branches:
        for p in br.parents:
            out.append(GateTerm(p, gate, br))
    return out
