"""Built-in relevance rules of ssa (method doc, sections 3 and 5)."""

from __future__ import annotations

from .rules import GradientRule, GradientXActivationRule

__all__ = ["GradientRule", "GradientXActivationRule"]
