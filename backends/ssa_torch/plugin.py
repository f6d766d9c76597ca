"""Registers the PyTorch backend through the ``ssa`` entry-point group."""

from __future__ import annotations

from ssa.hookspecs import hookimpl

from .backend import TorchBackend


@hookimpl
def ssa_register_backends(register):
    register(TorchBackend)
