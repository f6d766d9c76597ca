"""Registers the built-in rules through the ``ssa`` entry-point group."""

from __future__ import annotations

from ssa.hookspecs import hookimpl

from .rules import GradientRule, GradientXActivationRule


@hookimpl
def ssa_register_rules(register):
    register(GradientRule)
    register(GradientXActivationRule)
