"""Linear operators of closed-form terms: a conv or dense layer, or a chain of them composed.

A chain of linear layers with no tap in between (MobileNetV2/V3: a projection conv, a residual
add, the next block's expansion conv) has a constant Jacobian: the composition of the layers'
Jacobians. Composed exactly here when one of two convolutions (2-D or 3-D) is 1x1 (1x1x1) with stride 1 and
no padding (the intermediate zero padding of the other reads no layer output), and for dense
layers. Biases do not enter a derivative and are dropped.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import torch

__all__ = ["LinearOp", "NotClosedForm"]


class NotClosedForm(Exception):
    """The step has a shape no closed form covers (autograd is used); the message says why."""


@dataclass(frozen=True)
class LinearOp:
    """The linear map from a layer input to a layer output.

    kind : "conv" or "dense".
    weight : conv (N, C / groups, kh, kw), or (N, C / groups, kd, kh, kw) for a 3-D conv; dense (N, D).
    groups, stride, dilation : conv geometry (one value per spatial axis).
    pad : zero padding (top, bottom, left, right); 3-D: (front, back, top, bottom, left, right).
    flat : dense only: the input's features are all its per-image elements (a 1x1 conv on a 1x1 map);
        otherwise its last axis.
    layers : how many layers were composed into this operator.
    """

    kind: str
    weight: torch.Tensor
    groups: int = 1
    stride: tuple[int, ...] = (1, 1)
    dilation: tuple[int, ...] = (1, 1)
    pad: tuple[int, ...] = (0, 0, 0, 0)
    flat: bool = False
    layers: int = 1

    @property
    def n_out(self) -> int:
        return int(self.weight.shape[0])

    def full_weight(self) -> torch.Tensor:
        """conv: (N, C, kh, kw) (3-D: (N, C, kd, kh, kw)) with the groups expanded (zeros across groups); dense: the
        weight."""
        if self.kind != "conv" or self.groups == 1:
            return self.weight
        n, cg, *k = self.weight.shape
        g = self.groups
        ng = n // g
        full = torch.zeros((n, cg * g, *k), dtype=self.weight.dtype, device=self.weight.device)
        rows = torch.arange(n, device=self.weight.device)
        cols = (rows // ng)[:, None] * cg + torch.arange(cg, device=self.weight.device)[None, :]
        full[rows[:, None], cols] = self.weight
        return full

    def pointwise(self) -> bool:
        """A 1x1 (3-D: 1x1x1) conv with stride 1 and no padding (a per-position dense layer)."""
        return (self.kind == "conv" and all(k == 1 for k in self.weight.shape[2:])
                and all(s == 1 for s in self.stride) and not any(self.pad))

    def negated(self) -> LinearOp:
        return replace(self, weight=-self.weight)

    def compose(self, inner: LinearOp) -> LinearOp:
        """``self`` applied after ``inner`` (raises :class:`NotClosedForm` when not a conv / dense)."""
        if self.kind == "dense" and inner.kind == "dense" and not self.flat and not inner.flat:
            return replace(self, weight=self.weight @ inner.weight, layers=self.layers + inner.layers)
        if self.kind == "conv" and inner.kind == "conv" and self.weight.dim() != inner.weight.dim():
            raise NotClosedForm("a linear chain of convolutions of different ranks")
        if self.kind == "conv" and inner.kind == "conv":  # 2-D or 3-D alike
            outer_w, inner_w = self.full_weight(), inner.full_weight()
            if inner.pointwise():
                w = torch.einsum("nc...,cd->nd...", outer_w, inner_w.flatten(1))
                return replace(self, weight=w, groups=1, layers=self.layers + inner.layers)
            if self.pointwise():
                w = torch.einsum("nc,cd...->nd...", outer_w.flatten(1), inner_w)
                return replace(inner, weight=w, groups=1, layers=self.layers + inner.layers)
            raise NotClosedForm("a linear chain of two spatial convolutions (neither is 1x1)")
        raise NotClosedForm(f"a linear chain of a {inner.kind} layer into a {self.kind} layer")
