"""Pass: a transposed convolution runs as the convolution it equals.

``ConvTranspose{1,2,3}d`` with stride 1 (no output padding, zero padding ``p <= dilation * (k - 1)``) is the
convolution ``Conv{1,2,3}d`` with the kernel flipped, its two channel axes swapped within each group and padding
``dilation * (k - 1) - p``: the same values (up to rounding), and the closed form of method doc section 6 covers
it. With a stride ``s`` above 1 (or an output padding) it is that convolution, without padding, of its input
spread out: ``s - 1`` zeros inserted between neighbouring positions, ``dilation * (k - 1) - p`` zeros before and
that plus the output padding after (:class:`ZeroInsert`, an op of kind ``zero_insert`` that the closed form's
input paths pass, its zeros reading no parent); a padding beyond ``dilation * (k - 1)`` makes those borders
negative: a crop. The closed form then does ``s**d`` times the work of the input's
own size (zeros included), which is what it costs for an upsampling layer.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..kinds import register_kind
from .base import ModuleSwapPass

__all__ = ["ConvTransposeAsConv", "ZeroInsert", "as_conv"]


class ZeroInsert(nn.Module):
    """Spread the spatial positions of ``x`` (N, C, *size) apart: ``stride[i] - 1`` zeros between neighbours along
    spatial axis ``i``, ``before[i]`` zeros before the first and ``after[i]`` after the last (a negative number:
    that many positions cropped; out of place, so it runs under autograd and vmap)."""

    def __init__(self, stride: tuple[int, ...], before: tuple[int, ...], after: tuple[int, ...]) -> None:
        super().__init__()
        self.stride, self.before, self.after = tuple(stride), tuple(before), tuple(after)

    def extra_repr(self) -> str:
        return f"stride={self.stride}, before={self.before}, after={self.after}"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for i, s in enumerate(self.stride):
            if s == 1:
                continue
            axis = 2 + i
            length = x.shape[axis]
            y = F.pad(x.movedim(axis, -1).unsqueeze(-1), (0, s - 1)).flatten(-2)
            x = y[..., :(length - 1) * s + 1].movedim(-1, axis)
        pads = [v for i in reversed(range(len(self.stride))) for v in (self.before[i], self.after[i])]
        return F.pad(x, pads) if any(pads) else x


register_kind(ZeroInsert, "zero_insert")

_CONV = {nn.ConvTranspose1d: nn.Conv1d, nn.ConvTranspose2d: nn.Conv2d, nn.ConvTranspose3d: nn.Conv3d}


def _flipped(mod: nn.modules.conv._ConvTransposeNd, kind: type, pad: tuple[int, ...]) -> nn.Module:
    """The convolution with ``mod``'s kernel flipped, its channel axes swapped within each group, and ``pad``."""
    k, d, g = mod.kernel_size, mod.dilation, mod.groups
    c_in, c_out = mod.in_channels, mod.out_channels
    conv = kind(c_in, c_out, k, 1, pad, d, g, mod.bias is not None)
    conv = conv.to(device=mod.weight.device, dtype=mod.weight.dtype)
    w = mod.weight.detach()  # (C_in, C_out / g, *k)
    w = w.reshape(g, c_in // g, c_out // g, *k).transpose(1, 2).reshape(c_out, c_in // g, *k)
    with torch.no_grad():
        conv.weight.copy_(w.flip(tuple(range(2, w.dim()))))
        if mod.bias is not None:
            conv.bias.copy_(mod.bias)
    conv.requires_grad_(False)
    return conv


def as_conv(mod: nn.Module) -> nn.Module | None:
    """The convolution equal to a stride-1 transposed convolution ``mod``; for a stride above 1, an output
    padding or a padding beyond the kernel's reach (``p > dilation * (k - 1)``: negative borders, a crop),
    ``Sequential(ZeroInsert, conv)``; None for other modules."""
    kind = _CONV.get(type(mod))
    if kind is None or not isinstance(mod, nn.modules.conv._ConvTransposeNd) or mod.padding_mode != "zeros":
        return None
    k, s, d, op = mod.kernel_size, mod.stride, mod.dilation, mod.output_padding
    if isinstance(mod.padding, str):
        return None
    pad = tuple(di * (ki - 1) - pi for ki, di, pi in zip(k, d, mod.padding, strict=True))
    if all(v == 1 for v in s) and not any(op) and min(pad) >= 0:
        return _flipped(mod, kind, pad)
    spread = ZeroInsert(tuple(s), pad, tuple(p + o for p, o in zip(pad, op, strict=True)))
    return nn.Sequential(spread, _flipped(mod, kind, (0,) * len(k)))


class ConvTransposeAsConv(ModuleSwapPass):
    """ConvTranspose1d / 2d / 3d -> the Conv1d / 2d / 3d with the flipped, transposed kernel (of the input spread
    out by :class:`ZeroInsert` where the stride is above 1)."""

    name = "conv-transpose-as-conv"
    description = ("transposed convolutions as convolutions (kernel flipped, channel axes swapped; a strided one of "
                   "its input with zeros inserted)")

    def swap(self, module: nn.Module) -> nn.Module | None:
        return as_conv(module)
