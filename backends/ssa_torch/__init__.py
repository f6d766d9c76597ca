"""PyTorch backend of ssa: nn.Module objects, torch.export programs, ``module:attr`` references."""

from __future__ import annotations

from typing import TYPE_CHECKING

from ssa.plugins import lazy_exports

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


__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS, globals())
