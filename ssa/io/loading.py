"""Loading a model with the backend that can read it: what every layer above, and a backend's own reports, use.

It lives below the session layer so that a backend (``ssa_onnx.check_report`` loads any model it is given) can
call it without importing the layers above it (docs/architecture.md, the ``plugins-below`` contract).
"""

from __future__ import annotations

from typing import Any

from ssa.core.checks import check_device
from ssa.core.identity import builtin_name
from ssa.core.interfaces import Network
from ssa.errors import PluginError
from ssa.io.progress import busy
from ssa.plugins import registry

__all__ = ["load_model"]


def load_model(model: Any, *, backend: str | None = None, device: str = "cpu", **options: Any) -> Network:
    """Load ``model`` with the backend that can read it (or the one named).

    ``model`` is an ``nn.Module``, a ``.pt2`` / ``.onnx`` path, ``file.py:attr``,
    ``package.module:attr``, the built-in name ``"digits"``, or a loaded :class:`Network`.
    Options (``taps``, ``include_input``, ``channel_axes``, ``tokens``, ``output_index``, ``name``) go to the
    backend.
    Without ``name``, a model whose weights are a built-in model's gets the built-in name (``digits``)
    whatever it was loaded from (see :mod:`ssa.core.identity` for the naming policy).
    """
    if isinstance(model, Network):
        return model
    device = check_device(device)
    reg = registry()
    if backend is not None:
        cls = reg.get("backend", backend)
    else:
        for cls in reg.backends():
            if cls.can_load(model):
                break
        else:
            raise PluginError(f"no installed backend can load {model!r}; installed backends: "
                              f"{', '.join(reg.names('backend'))}.")
    with busy("loading the model"):
        network = cls().load(model, device=device, **options)
    if not options.get("name"):
        known = builtin_name(network.weight_arrays())
        if known is not None:
            network.name = known
    return network
