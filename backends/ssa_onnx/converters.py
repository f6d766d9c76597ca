"""onnx2torch imported with only the converters a model needs.

``import onnx2torch`` imports every converter module of ``onnx2torch.node_converters``, and two of
them (``nms``: NonMaxSuppression, ``roialign``: RoiAlign) import torchvision, whose detection ops
import ``torch._dynamo``: seconds of a classifier's first graph spent on ops it does not have.
:func:`import_onnx2torch` imports onnx2torch with those modules **deferred** (an empty stand-in in
``sys.modules`` that registers nothing, so onnx2torch's ``from ... import *`` of it does nothing);
:func:`require_converters` imports a deferred module for real, registering its converters with
onnx2torch's own ``add_converter``, as soon as a model has one of its ops (which ops each module
registers is read from its source, so a new onnx2torch version needs no table here). A model
without them never imports torchvision. When onnx2torch was imported in full before (by the user),
nothing is deferred and nothing changes.
"""

from __future__ import annotations

import importlib
import importlib.util
import re
import sys
import types
from collections.abc import Iterable
from pathlib import Path

__all__ = ["DEFERRED_MODULES", "import_onnx2torch", "require_converters", "deferred_operators"]

#: converter modules of ``onnx2torch.node_converters`` deferred until a model has one of their ops
DEFERRED_MODULES = ("nms", "roialign")
_PACKAGE = "onnx2torch.node_converters"
_REGISTERS = re.compile(r"add_converter\(\s*operation_type\s*=\s*['\"](\w+)['\"]")
_operators: dict[str, frozenset[str]] | None = None


def _converters_dir() -> Path | None:
    spec = importlib.util.find_spec("onnx2torch")
    if spec is None or spec.origin is None:
        return None
    return Path(spec.origin).parent / "node_converters"


def deferred_operators() -> dict[str, frozenset[str]]:
    """Deferred module name -> the ONNX operators it registers (read from its source, once)."""
    global _operators
    if _operators is None:
        where = _converters_dir()
        found: dict[str, frozenset[str]] = {}
        for name in DEFERRED_MODULES:
            path = None if where is None else where / f"{name}.py"
            if path is not None and path.is_file():
                found[name] = frozenset(_REGISTERS.findall(path.read_text(encoding="utf-8")))
        _operators = found
    return _operators


def _is_stand_in(module: types.ModuleType | None) -> bool:
    return module is not None and getattr(module, "__ssa_deferred__", False)


def import_onnx2torch() -> types.ModuleType:
    """``onnx2torch``, imported (once) with the modules of :data:`DEFERRED_MODULES` deferred."""
    if "onnx2torch" not in sys.modules:
        for name in deferred_operators():
            full = f"{_PACKAGE}.{name}"
            if full not in sys.modules:
                stand_in = types.ModuleType(full, "deferred by ssa_onnx.converters: imported when a model needs it")
                stand_in.__all__ = []  # type: ignore[attr-defined]
                stand_in.__ssa_deferred__ = True  # type: ignore[attr-defined]
                sys.modules[full] = stand_in
    import onnx2torch

    return onnx2torch


def require_converters(op_types: Iterable[str]) -> frozenset[str]:
    """Import the deferred converter modules that register one of ``op_types``; returns the operators they
    registered (empty when none was needed or all were imported before).

    Their converters are registered with onnx2torch's ``add_converter`` as the module is imported;
    :func:`ssa_onnx.compat.install` then adds the versions onnx2torch lacks.
    """
    import_onnx2torch()
    wanted = set(op_types)
    registered: set[str] = set()
    for name, ops in deferred_operators().items():
        full = f"{_PACKAGE}.{name}"
        if ops & wanted and _is_stand_in(sys.modules.get(full)):
            del sys.modules[full]
            package = sys.modules[_PACKAGE]
            if _is_stand_in(getattr(package, name, None)):
                delattr(package, name)
            importlib.import_module(full)
            registered |= ops
    return frozenset(registered)
