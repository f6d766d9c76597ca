"""PyTorch backend of ssa: nn.Module objects, torch.export programs, ``module:attr`` references."""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .backend import TorchBackend as TorchBackend
    from .network import TorchNetwork as TorchNetwork
    from .network import spatial_mean as spatial_mean
    from .network import trace_module as trace_module

#: public name -> the module that defines it; imported on first use (PEP 562), so that importing the
#: plugin module (``ssa_torch.plugin``, which every ``ssa`` command does) does not import torch
_EXPORTS = {"TorchBackend": "backend", "TorchNetwork": "network", "spatial_mean": "network",
            "trace_module": "network"}

__all__ = list(_EXPORTS)


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{module}", __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_EXPORTS})
