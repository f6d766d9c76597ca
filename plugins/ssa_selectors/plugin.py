"""Registers the built-in selectors through the ``ssa`` entry-point group."""

from __future__ import annotations

from ssa.hookspecs import hookimpl

from .selectors import (
    MADSelector,
    PercentileSelector,
    TopKSelector,
    TukeySelector,
    ZScoreSelector,
)


@hookimpl
def ssa_register_selectors(register):
    for cls in (TukeySelector, ZScoreSelector, MADSelector, PercentileSelector, TopKSelector):
        register(cls)
