"""PyTorch backend of ssa: nn.Module objects, torch.export programs, ``module:attr`` references."""

from __future__ import annotations

from .backend import TorchBackend
from .network import TorchNetwork, spatial_mean, trace_module

__all__ = ["TorchBackend", "TorchNetwork", "spatial_mean", "trace_module"]
