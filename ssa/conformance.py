"""The selector conformance checks, under the name plugins written for ssa 0.1 import.

The checks live in :mod:`ssa.testing` (``from ssa.testing import assert_selector_conforms``).
"""

from __future__ import annotations

from ssa.testing.conformance import CHECKS, assert_selector_conforms, check_selector

__all__ = ["check_selector", "assert_selector_conforms", "CHECKS"]
