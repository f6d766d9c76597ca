"""Relevance rules: omega[n, i, k] = spatial mean over parent positions of combine(grad, activation)."""

from __future__ import annotations

from ssa.core.interfaces import ClosedForm, Rule

__all__ = ["GradientRule", "GradientXActivationRule"]


class GradientRule(Rule):
    """The paper's rule: the derivative of the upper neuron's scalar (method doc, section 3)."""

    name = "gradient"
    description = "d(upper scalar)/d(parent), spatially averaged (the paper's rule)"
    closed_form = ClosedForm.GRADIENT

    def combine(self, grad, activation):
        return grad

    def stop_hint(self) -> str:
        """Gradient x activation: its dense steps do not keep neurons that never fire (this rule's can)."""
        return f"--rule {GradientXActivationRule.name}"


class GradientXActivationRule(Rule):
    """First-order Taylor contribution: gradient times the parent activation (method doc, section 5)."""

    name = "gradient_x_activation"
    description = "gradient x parent activation, spatially averaged (neurons that never fire get 0)"
    closed_form = ClosedForm.GRADIENT_X_ACTIVATION

    def combine(self, grad, activation):
        return grad * activation
