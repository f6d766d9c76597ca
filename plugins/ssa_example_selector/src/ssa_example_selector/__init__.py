"""An example third-party ssa plugin: the ``gap`` outlier selector.

The distribution registers this module in the ``ssa`` entry-point group
(see ``pyproject.toml``); ssa's plugin manager imports it and calls the
``ssa_register_selectors`` hook below, which registers :class:`GapSelector`.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import ClassVar

import numpy as np

import ssa

__all__ = ["GapSelector", "ssa_register_selectors"]
__version__ = "0.1.0"


class GapSelector(ssa.Selector):
    """Entries above the largest gap among the top of the sorted row.

    Sort the row in descending order, v1 >= v2 >= ... >= vK, and find the largest gap
    g = v_j - v_(j+1) for j = 1 .. min(max_k, K - 1) (the first one on ties). The entries
    strictly above v_(j+1) (that is, the j largest) are outliers iff g > factor * IQR of the
    row and g > 0, and only the positive ones. With ``two_sided`` the same is done on the
    negated row for negative outliers. A row is classified from its own values only, so ties
    get equal labels, constant and all-zero rows have no outliers, and rows with NaN give 0.
    """

    name = "gap"
    description = "entries above the largest gap in the top max_k of the sorted row, if the gap > factor*IQR"
    parameters: ClassVar[Mapping[str, ssa.Param]] = {
        "max_k": ssa.Param(8, "at most this many entries are kept per row", int, lambda v: v >= 1, ">= 1"),
        "factor": ssa.Param(1.0, "the gap must exceed factor times the row's IQR", float, lambda v: v >= 0, ">= 0"),
        "two_sided": ssa.Param(False, "also keep negative outliers (inhibitory edges, sign -1)", bool),
    }

    def _side(self, rows: np.ndarray) -> np.ndarray:
        R, K = rows.shape
        if K < 2:
            return np.zeros(rows.shape, dtype=bool)
        m = min(self.params["max_k"], K - 1)
        desc = -np.sort(-rows, axis=1)
        gaps = desc[:, :m] - desc[:, 1:m + 1]
        j = np.argmax(gaps, axis=1)
        r = np.arange(R)
        gap = gaps[r, j]
        below = desc[r, j + 1]
        q1, q3 = np.percentile(rows, [25.0, 75.0], axis=1)
        ok = (gap > 0) & (gap > self.params["factor"] * (q3 - q1))
        return (rows > below[:, None]) & ok[:, None] & (rows > 0)

    def loosen_hint(self) -> str | None:
        """What a stop note suggests when this selector keeps nothing at a step: a gap half as large (none at 0)."""
        factor = self.params["factor"]
        return f"--selector-param factor={factor / 2:g}" if factor > 0 else None

    def select(self, rows: np.ndarray) -> np.ndarray:
        rows = np.asarray(rows, dtype=np.float64)
        if rows.ndim != 2:
            raise ssa.InvalidInputError(f"selector rows must be 2-D (R, K), got shape {rows.shape}.")
        finite = np.isfinite(rows).all(axis=1)
        safe = np.where(finite[:, None], rows, 0.0)
        out = self._side(safe).astype(np.int8)
        if self.two_sided:
            out -= self._side(-safe).astype(np.int8)
        out[~finite] = 0
        return out


@ssa.hookimpl
def ssa_register_selectors(register):
    """Register the example selector (called once by ssa's plugin manager)."""
    register(GapSelector)
