"""The PyTorch backend class.

Light to import: every ``ssa`` command registers it (``ssa_torch.plugin``), and torch is imported when a model is
loaded, so that a backend that imports torch to load its own models can start other work first (the ONNX backend
builds onnxruntime's session in a thread while torch is imported).
"""

from __future__ import annotations

import os
import sys
from typing import TYPE_CHECKING, Any

from ssa.core.interfaces import Backend
from ssa.errors import InvalidInputError

if TYPE_CHECKING:
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
        torch = sys.modules.get("torch")  # an nn.Module exists only once torch is imported
        if torch is not None and isinstance(source, torch.nn.Module):
            return True
        if isinstance(source, (str, os.PathLike)):
            s = os.fspath(source)
            return not s.lower().endswith(".onnx")
        return False

    def load(self, source: Any, *, device: str = "cpu", name: str | None = None, weights: str | None = None,
             **options: Any) -> TorchNetwork:
        from .loading import load_module  # torch: imported when a model is loaded (see the module doc)
        from .loading_zoo import is_zoo_source, load_zoo
        from .network import TorchNetwork

        if is_zoo_source(source):
            module, default_name = load_zoo(source, weights)
        elif weights is not None:
            raise InvalidInputError(f"--weights applies to timm:NAME and torchvision:NAME models, not {source!r}; "
                                    "load the weights in your own model code.")
        else:
            module, default_name = load_module(source)
        return TorchNetwork(module, name=name or default_name, device=device, **options)
