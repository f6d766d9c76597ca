"""Loading PyTorch models from objects, ``.pt2`` files and ``module:attr`` references."""

from __future__ import annotations

import importlib
import importlib.util
import logging
import os
import sys
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn

from ssa.errors import ModelLoadError

__all__ = ["load_module", "BUILTIN_MODELS"]

BUILTIN_MODELS = {"digits": "ssa.models:digits_cnn"}


def _resolve_attr(obj: Any, attr: str, where: str) -> Any:
    for part in attr.split("."):
        if not hasattr(obj, part):
            raise ModelLoadError(f"{where} has no attribute {attr!r}; check the name after the colon.")
        obj = getattr(obj, part)
    return obj


def _finish(obj: Any, where: str) -> nn.Module:
    if isinstance(obj, nn.Module):
        return obj
    if callable(obj):
        try:
            obj = obj()
        except TypeError as exc:
            raise ModelLoadError(
                f"{where} must be an nn.Module or a zero-argument callable returning one ({exc}).") from None
        except KeyboardInterrupt:
            raise
        except BaseException as exc:  # noqa: BLE001 - the user's code (SystemExit, GeneratorExit too)
            raise ModelLoadError(f"calling {where}() to build the model raised {_describe(exc)}; "
                                 f"{_fix(exc, 'fix the model code.')}") from None
        if isinstance(obj, nn.Module):
            return obj
    raise ModelLoadError(f"{where} is {type(obj).__name__}, expected an nn.Module or a zero-argument callable "
                         "returning one.")


def _describe(exc: BaseException) -> str:
    """``SystemExit(0)``, ``ValueError: text``: the exception in a few words."""
    if isinstance(exc, SystemExit):
        return f"SystemExit({exc.code!r})"
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}{': ' + text[0][:160] if text else ''}"


def _fix(exc: BaseException, otherwise: str) -> str:
    if isinstance(exc, Exception):
        return otherwise
    return ("model code must not end the process (sys.exit, exit, SystemExit, GeneratorExit): remove that call, "
            "or put a script's own code under `if __name__ == \"__main__\":`.")


def load_module(source: Any) -> tuple[nn.Module, str]:
    """Return ``(module, name)`` for an nn.Module, a .pt2 file, ``file.py:attr`` or ``pkg.mod:attr``.

    The name is the module's class name for Python models (an object, ``file.py:attr``, ``pkg.mod:attr``)
    and the file stem for a ``.pt2`` file (see :mod:`ssa.core.identity`).
    """
    if isinstance(source, nn.Module):
        return source, type(source).__name__
    if isinstance(source, os.PathLike):
        source = os.fspath(source)
    if not isinstance(source, str):
        raise ModelLoadError(f"model must be an nn.Module or a path/reference string, got {type(source).__name__}.")
    source = BUILTIN_MODELS.get(source, source)
    if source.endswith((".pt2",)):
        path = Path(source)
        if not path.is_file():
            raise ModelLoadError(f"model file {source!r} does not exist; check the path.")
        logger = logging.getLogger("torch.export")
        level = logger.level
        logger.setLevel(logging.CRITICAL)  # torch logs a traceback for unreadable files; we say it in one line
        try:
            program = torch.export.load(str(path))
        except Exception as exc:  # noqa: BLE001
            raise ModelLoadError(
                f"cannot read {source!r} as a torch.export program ({type(exc).__name__}); save it with "
                "torch.export.save(torch.export.export(model, (x,), dynamic_shapes=({0: torch.export.Dim('batch', "
                "min=1)},)), path)."
            ) from None
        finally:
            logger.setLevel(level)
        return program.module(), path.stem
    if ":" not in source:
        raise ModelLoadError(
            f"cannot tell what model {source!r} is; expected a .pt2 or .onnx file, 'path/to/file.py:attr', "
            "'package.module:attr' or a built-in name (digits)."
        )
    left, attr = source.rsplit(":", 1)
    if left.endswith(".py"):
        path = Path(left)
        if not path.is_file():
            raise ModelLoadError(f"model file {left!r} does not exist; check the path before the colon.")
        modname = f"_ssa_user_{abs(hash(str(path.resolve())))}"
        spec = importlib.util.spec_from_file_location(modname, path)
        if spec is None or spec.loader is None:
            raise ModelLoadError(f"cannot import {left!r} as Python source.")
        module = importlib.util.module_from_spec(spec)
        sys.modules[modname] = module
        sys.path.insert(0, str(path.parent.resolve()))
        try:
            spec.loader.exec_module(module)
        except KeyboardInterrupt:
            raise
        except BaseException as exc:  # noqa: BLE001 - the user's code (SystemExit, GeneratorExit too)
            if isinstance(exc, Exception):
                raise ModelLoadError(f"importing {left!r} failed: {type(exc).__name__}: "
                                     f"{str(exc).splitlines()[0] if str(exc) else ''}") from None
            raise ModelLoadError(f"importing {left!r} raised {_describe(exc)}; {_fix(exc, '')}") from None
        finally:
            sys.path.pop(0)
        where = f"{left}"
    else:
        try:
            module = importlib.import_module(left)
        except ImportError as exc:
            raise ModelLoadError(f"cannot import module {left!r} ({exc}); check the name before the colon.") from None
        except KeyboardInterrupt:
            raise
        except BaseException as exc:  # noqa: BLE001 - the module's own code ran and failed
            raise ModelLoadError(f"importing module {left!r} raised {_describe(exc)}; "
                                 f"{_fix(exc, 'fix that module.')}") from None
        where = f"module {left!r}"
    obj = _resolve_attr(module, attr, where)
    built = _finish(obj, f"{left}:{attr}")
    return built, type(built).__name__  # the class name, as for a module passed from Python
