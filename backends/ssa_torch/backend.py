"""The PyTorch backend class."""

from __future__ import annotations

import os
from typing import Any

import torch.nn as nn

from ssa.core.interfaces import Backend
from ssa.errors import InvalidInputError

from .loading import load_module
from .loading_zoo import is_zoo_source, load_zoo
from .network import TorchNetwork

__all__ = ["TorchBackend"]


class TorchBackend(Backend):
    """nn.Module objects, ``.pt2`` torch.export files, ``file.py:attr`` and ``pkg.module:attr``."""

    name = "torch"
    description = ("PyTorch nn.Module, torch.export .pt2 file, 'file.py:attr' / 'package.module:attr', or "
                   "'timm:NAME' / 'torchvision:NAME' (random weights, or --weights FILE)")
    priority = 0

    @classmethod
    def can_load(cls, source: Any) -> bool:
        if isinstance(source, nn.Module):
            return True
        if isinstance(source, (str, os.PathLike)):
            s = os.fspath(source)
            return not s.lower().endswith(".onnx")
        return False

    def load(self, source: Any, *, device: str = "cpu", name: str | None = None, weights: str | None = None,
             **options: Any) -> TorchNetwork:
        if is_zoo_source(source):
            module, default_name = load_zoo(source, weights)
        elif weights is not None:
            raise InvalidInputError(f"--weights applies to timm:NAME and torchvision:NAME models, not {source!r}; "
                                    "load the weights in your own model code.")
        else:
            module, default_name = load_module(source)
        return TorchNetwork(module, name=name or default_name, device=device, **options)
