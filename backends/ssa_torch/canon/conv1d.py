"""Pass: 1-D convolutions and poolings run as their 2-D forms on a height-1 image.

``Conv1d(x)`` becomes ``Conv2d(x.unsqueeze(2)).squeeze(2)`` with kernel ``(1, k)`` (stride, padding,
dilation and groups likewise), and ``MaxPool1d`` / ``AvgPool1d`` the same with their 2-D modules; the
values are unchanged and the taps keep their shape ``(C, L)``. The closed form of method doc section 6,
written for 2-D convolutions, then covers 1-D networks.
"""

from __future__ import annotations

import torch
import torch.nn as nn
from torch import fx

from ..kinds import NAME_KEY, display_name
from .base import ModuleSwapPass, fresh_module_path

__all__ = ["Conv1dAs2d"]


def _as_2d(mod: nn.Module) -> nn.Module | None:
    if type(mod) is nn.Conv1d and mod.padding_mode == "zeros" and not isinstance(mod.padding, str):
        conv = nn.Conv2d(mod.in_channels, mod.out_channels, (1, mod.kernel_size[0]), (1, mod.stride[0]),
                         (0, mod.padding[0]), (1, mod.dilation[0]), mod.groups, mod.bias is not None)
        conv = conv.to(device=mod.weight.device, dtype=mod.weight.dtype)
        with torch.no_grad():
            conv.weight.copy_(mod.weight.unsqueeze(2))
            if mod.bias is not None:
                conv.bias.copy_(mod.bias)
        conv.requires_grad_(False)
        return conv
    if type(mod) is nn.MaxPool1d and not mod.return_indices:
        k, s, p, d = (int(v if isinstance(v, int) else v[0]) for v in (mod.kernel_size, mod.stride, mod.padding,
                                                                         mod.dilation))
        return nn.MaxPool2d((1, k), (1, s), (0, p), (1, d), ceil_mode=mod.ceil_mode)
    if type(mod) is nn.AvgPool1d:
        k, s, p = (int(v if isinstance(v, int) else v[0]) for v in (mod.kernel_size, mod.stride, mod.padding))
        return nn.AvgPool2d((1, k), (1, s), (0, p), ceil_mode=mod.ceil_mode, count_include_pad=mod.count_include_pad)
    return None


class Conv1dAs2d(ModuleSwapPass):
    """Conv1d / MaxPool1d / AvgPool1d on (N, C, L) -> their 2-D modules on (N, C, 1, L)."""

    name = "conv1d-as-2d"
    description = "1-D convolutions and poolings as 2-D ones on a height-1 image (unsqueeze, op, squeeze)"

    def swap(self, module: nn.Module) -> nn.Module | None:
        return _as_2d(module)

    def wire(self, gm: fx.GraphModule, x: fx.Node, new: nn.Module, old: fx.Node) -> fx.Node:
        path = fresh_module_path(gm, type(new).__name__.lower())
        gm.add_submodule(path, new)
        up = gm.graph.call_function(torch.unsqueeze, (x, 2))
        op = gm.graph.call_module(path, (up,))
        op.meta[NAME_KEY] = display_name(old)
        return gm.graph.call_function(torch.squeeze, (op, 2))
