"""Models of timm's and torchvision's zoos by name: ``timm:NAME``, ``torchvision:NAME``.

The architecture is built by the library (``timm.create_model(NAME, pretrained=False)``,
``torchvision.models.get_model(NAME, weights=None)``): random weights, never a download. Trained
weights come from a local file (``--weights FILE``, Python ``weights=FILE``): a ``.safetensors`` file or
a ``torch.save``'d state dict (read with ``weights_only=True``; a dict holding it under ``state_dict``
or ``model`` is accepted too).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch.nn as nn

from ssa.errors import ModelLoadError

__all__ = ["ZOO_PREFIXES", "is_zoo_source", "load_zoo"]

ZOO_PREFIXES = ("timm:", "torchvision:")


def is_zoo_source(source: Any) -> bool:
    return isinstance(source, str) and source.startswith(ZOO_PREFIXES)


def _timm(name: str) -> nn.Module:
    try:
        import timm
    except ImportError:
        raise ModelLoadError(f"timm is not installed, so 'timm:{name}' cannot be built; pip install timm.") from None
    if not timm.is_model(name):
        close = timm.list_models(f"*{name[:6]}*")[:5]
        hint = f" (similar: {', '.join(close)})" if close else ""
        raise ModelLoadError(f"timm has no model {name!r}{hint}; list them with timm.list_models().")
    return timm.create_model(name, pretrained=False)


def _torchvision(name: str) -> nn.Module:
    import torchvision

    try:
        builder = torchvision.models.get_model_builder(name)
    except ValueError:
        raise ModelLoadError(f"torchvision has no model {name!r}; list them with torchvision.models.list_models()."
                             ) from None
    return builder(weights=None)


def _state_dict(path: Path) -> dict[str, Any]:
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return dict(load_file(str(path)))
    import torch

    try:
        state = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - pickle errors, truncated files, ...
        text = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:160]
        raise ModelLoadError(f"cannot read weights {str(path)!r} ({text}); pass a state dict saved with "
                             "torch.save(model.state_dict(), path) or a .safetensors file.") from None
    for key in ("state_dict", "model"):
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
    if not isinstance(state, dict):
        raise ModelLoadError(f"weights {str(path)!r} hold {type(state).__name__}, expected a state dict; save them "
                             "with torch.save(model.state_dict(), path).")
    return state


def load_zoo(source: str, weights: str | os.PathLike | None = None) -> tuple[nn.Module, str]:
    """``(module, name)`` for ``timm:NAME`` or ``torchvision:NAME``, with weights from a local file if given."""
    library, name = source.split(":", 1)
    model = _timm(name) if library == "timm" else _torchvision(name)
    if weights is not None:
        path = Path(os.fspath(weights))
        if not path.is_file():
            raise ModelLoadError(f"weights file {str(path)!r} does not exist; check the path given to --weights.")
        try:
            model.load_state_dict(_state_dict(path))
        except RuntimeError as exc:
            text = str(exc).strip().splitlines()[0][:200]
            raise ModelLoadError(f"weights {path.name!r} do not fit {source} ({text}); pass the weights of this "
                                 "architecture.") from None
    return model.eval(), name
