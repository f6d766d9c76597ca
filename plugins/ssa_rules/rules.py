"""Relevance rules: omega[n, i, k] = spatial mean over parent positions of combine(grad, activation)."""

from __future__ import annotations

from ssa.core.interfaces import Rule

__all__ = ["GradientRule", "GradientXActivationRule"]


class GradientRule(Rule):
    """The paper's rule: the derivative of the upper neuron's scalar (method doc, section 3)."""

    name = "gradient"
    description = "d(upper scalar)/d(parent), spatially averaged (the paper's rule)"
    fast_form = "gradient"

    def combine(self, grad, activation):
        return grad


class GradientXActivationRule(Rule):
    """First-order Taylor contribution: gradient times the parent activation (method doc, section 5)."""

    name = "gradient_x_activation"
    description = "gradient x parent activation, spatially averaged (neurons that never fire get 0)"
    fast_form = "gradient_x_activation"

    def combine(self, grad, activation):
        return grad * activation
