"""Linear operators of closed-form terms: a conv or dense layer, or a chain of them composed.

A chain of linear layers with no tap in between (MobileNetV2/V3: a projection conv, a residual
add, the next block's expansion conv) has a constant Jacobian: the composition of the layers'
Jacobians. Composed exactly here when one of two convolutions is 1x1 with stride 1 and no
padding (the intermediate zero padding of the other reads no layer output), and for dense
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
        """conv: (N, C, kh, kw) with the groups expanded (zeros across groups); dense: the weight."""
        if self.kind != "conv" or self.groups == 1:
            return self.weight
        n, cg, kh, kw = self.weight.shape
        g = self.groups
        ng = n // g
        full = torch.zeros((n, cg * g, kh, kw), dtype=self.weight.dtype, device=self.weight.device)
        rows = torch.arange(n, device=self.weight.device)
        cols = (rows // ng)[:, None] * cg + torch.arange(cg, device=self.weight.device)[None, :]
        full[rows[:, None], cols] = self.weight
        return full

    def pointwise(self) -> bool:
        """A 1x1 conv with stride 1 and no padding (a per-position dense layer)."""
        return (self.kind == "conv" and tuple(self.weight.shape[2:]) == (1, 1) and self.stride == (1, 1)
                and self.pad == (0, 0, 0, 0))

    def negated(self) -> LinearOp:
        return replace(self, weight=-self.weight)

    def compose(self, inner: LinearOp) -> LinearOp:
        """``self`` applied after ``inner`` (raises :class:`NotClosedForm` when not a conv / dense)."""
        if self.kind == "dense" and inner.kind == "dense" and not self.flat and not inner.flat:
            return replace(self, weight=self.weight @ inner.weight, layers=self.layers + inner.layers)
        if self.kind == "conv" and inner.kind == "conv" and 5 in (self.weight.dim(), inner.weight.dim()):
            raise NotClosedForm("a linear chain of 3-D convolutions")
        if self.kind == "conv" and inner.kind == "conv":
            outer_w, inner_w = self.full_weight(), inner.full_weight()
            if inner.pointwise():
                w = torch.einsum("ncij,cd->ndij", outer_w, inner_w[:, :, 0, 0])
                return replace(self, weight=w, groups=1, layers=self.layers + inner.layers)
            if self.pointwise():
                w = torch.einsum("nc,cdij->ndij", outer_w[:, :, 0, 0], inner_w)
                return replace(inner, weight=w, groups=1, layers=self.layers + inner.layers)
            raise NotClosedForm("a linear chain of two spatial convolutions (neither is 1x1)")
        raise NotClosedForm(f"a linear chain of a {inner.kind} layer into a {self.kind} layer")
