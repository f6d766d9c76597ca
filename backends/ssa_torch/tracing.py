"""Tracing a module into an fx graph: symbolic tracing, else ``torch.export`` with a dynamic batch axis.

``forward``'s optional arguments (timm's ``attn_mask=None``, ``is_causal=False``) are fixed at their
defaults, so a model is always called with the image alone.
"""

from __future__ import annotations

import inspect
from typing import Any

import torch
import torch.nn as nn
from torch import fx

from ssa.errors import UnsupportedModelError

__all__ = ["EXPORT_FIX", "trace_module"]

#: how to export a program that runs on any number of images (ssa runs the images in batches)
EXPORT_FIX = ("torch.export.save(torch.export.export(model, (x,), dynamic_shapes=({0: torch.export.Dim('batch', "
              "min=1)},)), 'model.pt2') with x a batch of 2 or more images")


def trace_module(module: nn.Module, example: torch.Tensor) -> fx.GraphModule:
    """An fx graph of ``module``: symbolic tracing, else ``torch.export`` with a dynamic batch axis."""
    if isinstance(module, fx.GraphModule):
        return module
    optional = _optional_args(module)
    try:
        return _drop_fixed_args(fx.symbolic_trace(module, concrete_args=optional))
    except Exception as first:  # noqa: BLE001 - any tracing failure falls back to export
        two = torch.cat([example[:1], example[:1]])  # a batch of 1 would be specialised to a constant
        try:
            return torch.export.export(_ImageOnly(module) if optional else module, (two,),
                                       dynamic_shapes=({0: torch.export.Dim("batch", min=1)},)).module()
        except Exception as second:  # noqa: BLE001
            raise UnsupportedModelError(
                f"cannot trace the model ({type(first).__name__}: {str(first).splitlines()[0][:120]}), nor export it "
                f"with a dynamic batch ({type(second).__name__}); make the model traceable for any batch size and "
                f"pass a .pt2 file made with {EXPORT_FIX}, or name taps by hand."
            ) from second


class _ImageOnly(nn.Module):
    """``module`` called with the image alone (its optional arguments at their defaults), for ``torch.export``."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> Any:
        return self.model(x)


def _drop_fixed_args(gm: fx.GraphModule) -> fx.GraphModule:
    """Remove the placeholders fx keeps for arguments traced at a fixed value, with the checks of that value."""
    placeholders = [n for n in gm.graph.nodes if n.op == "placeholder"]
    changed = False
    for ph in placeholders[1:]:
        below: list[fx.Node] = []  # ph and every node computed from it, in graph order
        stack, seen = [ph], {ph.name}
        while stack:
            n = stack.pop()
            below.append(n)
            for u in n.users:
                if u.name not in seen:
                    seen.add(u.name)
                    stack.append(u)
        sinks = [n for n in below if not n.users]
        if all(n.op == "call_function" and getattr(n.target, "__name__", "").startswith("_assert") for n in sinks):
            order = {n.name: i for i, n in enumerate(gm.graph.nodes)}
            for n in sorted(below, key=lambda n: -order[n.name]):
                gm.graph.erase_node(n)
            changed = True
    if changed:
        gm.recompile()
    return gm


def _optional_args(module: nn.Module) -> dict[str, Any] | None:
    """``forward``'s optional parameters after the image, fixed at their defaults (timm's ``attn_mask=None``)."""
    try:
        params = list(inspect.signature(module.forward).parameters.values())
    except (TypeError, ValueError):
        return None
    optional = {p.name: p.default for p in params[1:]
                if p.default is not inspect.Parameter.empty and p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)}
    return optional or None
