"""Rules declare their closed form with an enum; a declaration that does not match combine() is caught."""

from __future__ import annotations

import numpy as np
import pytest

import ssa
from ssa.core.checks import check_closed_form
from ssa.errors import PluginError
from ssa.testing import assert_rule_engines_agree, check_rule_engines
from ssa.testing.models import plain_cnn, residual_cnn


@pytest.mark.parametrize("name", ["gradient", "gradient_x_activation"])
def test_builtin_rules_give_the_same_graphs_under_both_engines(name):
    rule = ssa.registry().get("rule", name)
    assert isinstance(rule.closed_form, ssa.ClosedForm) and rule.closed_form.value == name
    assert_rule_engines_agree(rule, cases=[plain_cnn, residual_cnn])


class Lying(ssa.Rule):
    """Declares the gradient's closed form but combines gradient x activation."""

    name = "lying"
    closed_form = ssa.ClosedForm.GRADIENT

    def combine(self, grad, activation):
        return grad * activation


def test_a_rule_whose_combine_differs_from_its_closed_form_is_refused():
    with pytest.raises(PluginError, match="declares closed_form GRADIENT but its combine"):
        check_closed_form(Lying())
    check_closed_form(ssa.make_rule("gradient_x_activation"))  # the built-ins pass
    model, images = plain_cnn.build(), plain_cnn.images(8)
    with pytest.raises(PluginError, match="lying"):
        ssa.analyse(model, images, 0, 3, rule=Lying(), engine="auto")
    ssa.analyse(model, images, 0, 3, rule=Lying(), engine="autograd")  # autograd uses combine() itself: allowed


def test_the_engine_check_names_the_models_where_the_graphs_differ():
    failures = check_rule_engines(Lying, cases=[plain_cnn])
    assert len(failures) == 2 and failures[0].startswith("declaration:") and "lying" in failures[0]
    assert failures[1].startswith("plain: the closed form and autograd give different graphs")
    with pytest.raises(AssertionError, match="Lying: the engines disagree"):
        assert_rule_engines_agree(Lying, cases=[plain_cnn])


def test_the_gradient_closed_form_combines_to_the_gradient():
    assert np.array_equal(ssa.ClosedForm.GRADIENT.combine(np.ones(2), np.zeros(2)), np.ones(2))
