"""Pass: a transposed convolution with stride 1 runs as the convolution it equals.

``ConvTranspose{1,2,3}d`` with stride 1 (no output padding, zero padding ``p <= dilation * (k - 1)``) is the
convolution ``Conv{1,2,3}d`` with the kernel flipped, its two channel axes swapped within each group and padding
``dilation * (k - 1) - p``: the same values (up to rounding), and the closed form of method doc section 6 covers
it. A stride above 1 reads an input with zeros inserted between its positions: left as it is (autograd).
"""

from __future__ import annotations

import torch
import torch.nn as nn
from torch import fx

from .base import CanonPass, PassContext, fresh_module_path, replace_node

__all__ = ["ConvTransposeAsConv"]

_CONV = {nn.ConvTranspose1d: nn.Conv1d, nn.ConvTranspose2d: nn.Conv2d, nn.ConvTranspose3d: nn.Conv3d}


def as_conv(mod: nn.Module) -> nn.Module | None:
    """The convolution equal to a stride-1 transposed convolution ``mod``, else None."""
    kind = _CONV.get(type(mod))
    if kind is None or not isinstance(mod, nn.modules.conv._ConvTransposeNd) or mod.padding_mode != "zeros":
        return None
    k, s, d, op = mod.kernel_size, mod.stride, mod.dilation, mod.output_padding
    if isinstance(mod.padding, str) or any(v != 1 for v in s) or any(op):
        return None
    pad = tuple(di * (ki - 1) - pi for ki, di, pi in zip(k, d, mod.padding, strict=True))
    if min(pad) < 0:
        return None
    g = mod.groups
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


class ConvTransposeAsConv(CanonPass):
    """ConvTranspose1d / 2d / 3d with stride 1 -> the Conv1d / 2d / 3d with the flipped, transposed kernel."""

    name = "conv-transpose-as-conv"
    description = "stride-1 transposed convolutions as convolutions (kernel flipped, channel axes swapped)"

    def run(self, gm: fx.GraphModule, ctx: PassContext) -> int:
        modules = ctx.modules
        count = 0
        for node in list(gm.graph.nodes):
            if node.op != "call_module" or ctx.protected(node) or len(node.args) != 1 or node.kwargs:
                continue
            new = as_conv(modules[str(node.target)])
            if new is None or not isinstance(node.args[0], fx.Node):
                continue
            path = fresh_module_path(gm, type(new).__name__.lower())
            gm.add_submodule(path, new)
            with gm.graph.inserting_before(node):
                op = gm.graph.call_module(path, (node.args[0],))
            replace_node(node, op)
            count += 1
        return count
