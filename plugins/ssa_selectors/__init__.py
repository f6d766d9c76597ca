"""Built-in outlier selectors of ssa (method doc, section 3, STEP 2)."""

from __future__ import annotations

from .selectors import (
    MADSelector,
    PercentileSelector,
    TopKSelector,
    TukeySelector,
    ZScoreSelector,
)

__all__ = ["TukeySelector", "ZScoreSelector", "MADSelector", "PercentileSelector", "TopKSelector"]
