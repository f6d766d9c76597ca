"""Shipped for plugin authors: selector conformance checks, rule checks, the slow reference and small models.

>>> from ssa.testing import assert_selector_conforms
>>> assert_selector_conforms(MySelector)
"""

from __future__ import annotations

from ssa.testing.conformance import CHECKS, assert_selector_conforms, check_selector
from ssa.testing.rules import assert_rule_engines_agree, check_rule_engines

__all__ = ["check_selector", "assert_selector_conforms", "CHECKS", "check_rule_engines", "assert_rule_engines_agree"]
