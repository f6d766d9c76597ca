"""The PyTorch backend's plugin module, named in ssa's ``ssa`` entry-point group like any plugin's.

Every ``ssa`` command imports it and registers the backend class, which imports torch only when it loads a model.
"""

from __future__ import annotations

from collections.abc import Callable

import pluggy

from ssa.core.options import ModelOption
from ssa.hookspecs import hookimpl

from . import hookspecs


@hookimpl
def ssa_add_hookspecs(pluginmanager: pluggy.PluginManager) -> None:
    pluginmanager.add_hookspecs(hookspecs)  # ssa_register_closed_forms


@hookimpl
def ssa_register_backends(register: Callable[[type], None]) -> None:
    from .backend import TorchBackend  # light: torch is imported when a model is loaded

    register(TorchBackend)


@hookimpl
def ssa_register_model_options(register: Callable[[ModelOption], None]) -> None:
    register(ModelOption(
        "--weights", "weights", backend="torch", type=str, metavar="FILE", models="timm:NAME and torchvision:NAME",
        help="trained weights for a timm:NAME or torchvision:NAME model: a state dict file (torch.save) or "
             ".safetensors (default: random weights; nothing is downloaded)"))
