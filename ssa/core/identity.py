"""Model identity by content, and the display name a model gets.

A graph records three things about where it came from (``docs/method.md``, "Model identity"):

* ``model_hash``: :meth:`ssa.Network.model_hash`, a content hash of the traced graph and every weight;
  two graphs are "of the same model" exactly when their hashes agree, whatever the files were called;
* ``images_hash``: :func:`ssa.engines.store.images_hash` of the whole image set loaded (before a class is chosen);
* ``model``: a display name, for people. Naming policy, first that applies:

  1. the name given (``name=`` in Python, ``--name`` on the command line);
  2. the built-in name when the weights are a built-in model's, whatever it was loaded from
     (``digits`` for the CLI's ``digits``, ``ssa.models:digits_cnn``, ``ssa.models.digits_cnn()``,
     a ``.pt2`` or an ``.onnx`` export of it): recognised by :func:`weights_signature`, which does not
     depend on tensor names, order or layout, so a converted ONNX model is recognised too;
  3. a Python model (an ``nn.Module``, ``file.py:attr``, ``package.module:attr``): its class name, so the
     command line and the Python API agree; a file (``.pt2``, ``.onnx``): its file stem.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from functools import cache

import numpy as np

__all__ = ["weights_signature", "builtin_name", "BUILTIN_NAMES"]

#: built-in models: display name -> "module:callable" returning the model
BUILTIN_NAMES = {"digits": "ssa.models:digits_cnn"}


def _arrays(arrays: Iterable[np.ndarray]) -> list[np.ndarray]:
    return [np.asarray(a, dtype=np.float32).reshape(-1) for a in arrays if np.asarray(a).size > 1]


def weights_signature(arrays: Iterable[np.ndarray]) -> str:
    """A hash of a model's weights that ignores names, order and layout (each tensor's values, sorted).

    A transposed or reshaped copy of a weight (an ONNX ``Gemm`` with ``transB``, a converted module)
    gives the same signature; tensors of a single value (shape constants) are left out.
    """
    digests = sorted(hashlib.blake2b(np.sort(a).tobytes(), digest_size=16).hexdigest() for a in _arrays(arrays))
    return hashlib.blake2b("".join(digests).encode(), digest_size=16).hexdigest()


@cache
def _builtin_reference(name: str) -> tuple[tuple[int, ...], str]:
    import importlib

    module, attr = BUILTIN_NAMES[name].split(":")
    model = getattr(importlib.import_module(module), attr)()
    arrays = [v.detach().float().numpy() for v in model.state_dict().values() if v.is_floating_point()]
    return tuple(sorted(a.size for a in _arrays(arrays))), weights_signature(arrays)


def builtin_name(arrays: Iterable[np.ndarray]) -> str | None:
    """The built-in name of a model with these weights, or None (cheap unless the tensor sizes match)."""
    arrays = _arrays(arrays)
    if not arrays:
        return None
    sizes = tuple(sorted(a.size for a in arrays))
    for name in BUILTIN_NAMES:
        try:
            ref_sizes, ref_sig = _builtin_reference(name)
        except ImportError:  # the built-in models need torch; without it (a numpy backend) none was loaded
            continue
        if sizes == ref_sizes and weights_signature(arrays) == ref_sig:
            return name
    return None
