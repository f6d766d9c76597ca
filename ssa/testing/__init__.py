"""Shipped for plugin authors: selector and backend conformance checks, rule checks, the slow reference, small
models and an example backend written with numpy only (:mod:`ssa.testing.numpy_backend`).

>>> from ssa.testing import assert_selector_conforms, assert_backend_conforms
>>> assert_selector_conforms(MySelector)
>>> assert_backend_conforms(BackendCase("tiny", MyBackend, source=..., input_shape=(3, 8, 8)))
"""

from __future__ import annotations

from ssa.testing.backends import (
    BACKEND_CHECKS,
    BackendCase,
    TorchReference,
    assert_backend_conforms,
    check_backend,
)
from ssa.testing.conformance import CHECKS, assert_selector_conforms, check_selector
from ssa.testing.rules import assert_rule_engines_agree, check_rule_engines

__all__ = ["check_selector", "assert_selector_conforms", "CHECKS", "check_rule_engines", "assert_rule_engines_agree",
           "BackendCase", "TorchReference", "check_backend", "assert_backend_conforms", "BACKEND_CHECKS"]
