"""Skip connections: the parent tap itself (possibly pooled, permuted, flattened) is a term.

ResNet's identity skip, a pooled skip, and the logits of SqueezeNet (``flatten(pool(relu))``):
the head is the parent tap, whose channel k feeds upper channel n = k (or the channel the
output-side ops move it to). With m the derivative of the upper tap's summed activation with
respect to the parent,

    omega[n, k] = 1 / (P_u * P_l) * sum_p m[k, p]              (gradient)
    omega[n, k] = 1 / (P_u * P_l) * sum_p m[k, p] * parent[k, p] (gradient x activation)

and 0 for every other parent neuron.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import fx

from .conv_nhwc import is_nhwc
from .masks import ImageMasks, relu_mask
from .registry import ClosedForm, register_builtin
from .terms import Term, as_tensor

__all__ = ["IdentityTerm", "IdentityForm"]


class IdentityTerm(Term):
    """A parent tap that reaches the upper tap's pre-activation without a layer."""

    label = "identity"

    def __init__(self, parent: str, head: str, channel_axis: int) -> None:
        self.parent = parent
        self.head = head
        self.channel_axis = channel_axis

    @property
    def needs(self) -> tuple[str, ...]:
        return (self.head,)

    def _per_channel(self, t: torch.Tensor) -> torch.Tensor:
        if self.channel_axis == 1 and is_nhwc(t):  # a channels-last pass: the positions summed as they lie
            return t.permute(0, 2, 3, 1).reshape(t.shape[0], -1, t.shape[1]).sum(1)
        t = t.movedim(self.channel_axis, 1)
        return t.reshape(t.shape[0], t.shape[1], -1).sum(-1)

    takes_relu_output = True

    def statistics(self, m, values, forms, *, relu_of: bool = False):
        """See :meth:`Term.statistics`; ``relu_of``: ``m`` is a ReLU's output, the derivative its mask (for
        ``gradient_x_activation`` alone, made one image at a time: :meth:`_masked_sums`)."""
        x = values[self.head].to(m.dtype) if "gradient_x_activation" in forms else None
        if relu_of and ("gradient" in forms or x is None or self.channel_axis != 1 or m.dim() < 3
                        or x.shape != m.shape or not (_dense(m) and _dense(x) and is_nhwc(m) == is_nhwc(x))):
            m, relu_of = relu_mask(m), False
        out = {}
        if "gradient" in forms:
            out["g"] = self._per_channel(m)
        if x is not None:
            out["a"] = self._masked_sums(m, x) if relu_of else self._per_channel(m * x)
        return out

    @staticmethod
    def _masked_sums(act: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """``_per_channel(relu_mask(act) * x)`` one image at a time, in one buffer of an image (no (B, C, H, W)
        temporaries): each image's products and row sums are the whole batch's, laid out as there (the same offset
        from a 64-byte boundary)."""
        B, C = act.shape[:2]
        mask = ImageMasks(act)
        out = torch.empty((B, C), dtype=act.dtype, device=act.device)
        nhwc = is_nhwc(act)
        for b in range(B):
            buf = mask(b).mul_(x[b])  # laid out as act[b]
            if nhwc:
                torch.sum(buf.permute(1, 2, 0).reshape(-1, C), dim=0, out=out[b])
            else:
                torch.sum(buf.view(C, -1), dim=-1, out=out[b])
        return out

    def rank1(self, stats: Mapping[str, Any], neurons: Sequence[int], form: str):
        d = as_tensor(stats["g" if form == "gradient" else "a"])  # (B, N)
        h, fed = self.head_channels(neurons, d.device)
        vec = torch.zeros((len(h), self.n_parent), dtype=d.dtype, device=d.device)
        vec[torch.arange(len(h), device=d.device), h] = 1.0
        return d[:, h].t(), vec, fed

    def rank1_order(self, neurons: Sequence[int], device: Any) -> torch.Tensor | None:
        """``vec`` is one-hot at the head channel h: ascending, every other channel (zeros, in index order), then h."""
        h, _ = self.head_channels(neurons, device)
        K = self.n_parent
        q = torch.arange(K, device=h.device)[None, :].expand(len(h), K)
        out = q + (q >= h[:, None])  # q + 1 from h on: every channel but h, in order (the last column is K)
        out[:, K - 1] = h
        return out

    def omega(self, stats: Mapping[str, Any], neurons: Sequence[int], form: str) -> torch.Tensor:
        d = as_tensor(stats["g" if form == "gradient" else "a"])  # (B, N)
        h, fed = self.head_channels(neurons, d.device)
        om = torch.zeros((len(h), d.shape[0], self.n_parent), dtype=d.dtype, device=d.device)
        j = torch.arange(len(h), device=d.device)
        om[j, :, h] = d[:, h].t()
        return self.finish(om, fed)


def _dense(t: torch.Tensor) -> bool:
    """Contiguous, or channels-last (the statistics pass's two layouts)."""
    return t.is_contiguous() or is_nhwc(t)


@register_builtin
class IdentityForm(ClosedForm):
    """A parent tap met on the output side (the planner's pseudo op kind "tap")."""

    name = "identity"
    kinds = ("tap",)

    def channel_axis(self, node: fx.Node, ctx) -> int:
        return ctx.taps[ctx.tap_of_node[node.name]].channel_axis

    def terms(self, node: fx.Node, ctx) -> list[Term]:
        tap = ctx.taps[ctx.tap_of_node[node.name]]
        return [IdentityTerm(tap.name, node.name, tap.channel_axis)]
