"""Registers the ONNX backend through the ``ssa`` entry-point group."""

from __future__ import annotations

from ssa.hookspecs import hookimpl


@hookimpl
def ssa_register_backends(register):
    from .backend import OnnxBackend

    register(OnnxBackend)
