"""Outlier selectors: each classifies every entry of every relevance row.

All selectors work row by row on float64 arrays of shape (R, K) and return
int8 arrays: +1 positive outlier, -1 negative outlier (``two_sided`` only), 0.
Rows that contain NaN give all zeros.
"""

from __future__ import annotations

from typing import ClassVar, Mapping

import numpy as np

from ssa.interfaces import Param, Selector

__all__ = ["TukeySelector", "ZScoreSelector", "MADSelector", "PercentileSelector", "TopKSelector"]

_TWO_SIDED = Param(False, "also keep negative outliers (inhibitory edges, sign -1)", bool)


def _positive(x: float) -> bool:
    return x > 0


def _finish(rows: np.ndarray, pos: np.ndarray, neg: np.ndarray, two_sided: bool) -> np.ndarray:
    out = pos.astype(np.int8)
    if two_sided:
        out -= neg.astype(np.int8)
    bad = ~np.isfinite(rows).all(axis=1)
    out[bad] = 0
    return out


def _as_rows(rows: np.ndarray) -> np.ndarray:
    rows = np.asarray(rows, dtype=np.float64)
    if rows.ndim != 2:
        raise ValueError(f"selector rows must be 2-D (R, K), got shape {rows.shape}")
    return rows


class TukeySelector(Selector):
    """Tukey's fences: k is an outlier iff omega > Q3 + k * (Q3 - Q1) (the paper's)."""

    name = "tukey"
    description = "Tukey's fences: omega > Q3 + k*IQR (the paper's; k = 1.5)"
    parameters: ClassVar[Mapping[str, Param]] = {
        "k": Param(1.5, "fence multiplier of the inter-quartile range", float, lambda v: v >= 0, ">= 0"),
        "two_sided": _TWO_SIDED,
    }

    def select(self, rows: np.ndarray) -> np.ndarray:
        rows = _as_rows(rows)
        with np.errstate(invalid="ignore"):
            q1, q3 = np.percentile(rows, [25.0, 75.0], axis=1, keepdims=True)
            iqr = q3 - q1
            k = self.params["k"]
            pos = rows > q3 + k * iqr
            neg = rows < q1 - k * iqr
        return _finish(rows, pos, neg, self.two_sided)


class ZScoreSelector(Selector):
    """Standard score: outlier iff (omega - mean) / std > threshold."""

    name = "zscore"
    description = "z-score: (omega - mean)/std > threshold (default 3)"
    parameters: ClassVar[Mapping[str, Param]] = {
        "threshold": Param(3.0, "number of standard deviations", float, _positive, "> 0"),
        "two_sided": _TWO_SIDED,
    }

    def select(self, rows: np.ndarray) -> np.ndarray:
        rows = _as_rows(rows)
        with np.errstate(invalid="ignore", divide="ignore"):
            mean = rows.mean(axis=1, keepdims=True)
            std = rows.std(axis=1, keepdims=True)
            z = np.where(std > 0, (rows - mean) / np.where(std > 0, std, 1.0), 0.0)
            t = self.params["threshold"]
            pos, neg = z > t, z < -t
        return _finish(rows, pos, neg, self.two_sided)


class MADSelector(Selector):
    """Modified z-score (Iglewicz-Hoaglin / Hampel): 0.6745 (omega - median) / MAD > threshold."""

    name = "mad"
    description = "modified z-score 0.6745*(omega - median)/MAD > threshold (default 3.5)"
    parameters: ClassVar[Mapping[str, Param]] = {
        "threshold": Param(3.5, "modified z-score threshold", float, _positive, "> 0"),
        "two_sided": _TWO_SIDED,
    }

    def select(self, rows: np.ndarray) -> np.ndarray:
        rows = _as_rows(rows)
        with np.errstate(invalid="ignore", divide="ignore"):
            med = np.median(rows, axis=1, keepdims=True)
            mad = np.median(np.abs(rows - med), axis=1, keepdims=True)
            z = np.where(mad > 0, 0.6745 * (rows - med) / np.where(mad > 0, mad, 1.0), 0.0)
            t = self.params["threshold"]
            pos, neg = z > t, z < -t
        return _finish(rows, pos, neg, self.two_sided)


class PercentileSelector(Selector):
    """Outlier iff omega is strictly above the q-th percentile of its row (and positive)."""

    name = "percentile"
    description = "omega > q-th percentile of the row and > 0 (default q = 99)"
    parameters: ClassVar[Mapping[str, Param]] = {
        "q": Param(99.0, "percentile in (0, 100)", float, lambda v: 0 < v < 100, "in (0, 100)"),
        "two_sided": _TWO_SIDED,
    }

    def select(self, rows: np.ndarray) -> np.ndarray:
        rows = _as_rows(rows)
        q = self.params["q"]
        with np.errstate(invalid="ignore"):
            hi, lo = np.percentile(rows, [q, 100.0 - q], axis=1, keepdims=True)
            pos = (rows > hi) & (rows > 0)
            neg = (rows < lo) & (rows < 0)
        return _finish(rows, pos, neg, self.two_sided)


class TopKSelector(Selector):
    """The k largest strictly positive entries of each row (ties broken by lower index)."""

    name = "topk"
    description = "the k largest positive entries of each row (default k = 5)"
    parameters: ClassVar[Mapping[str, Param]] = {
        "k": Param(5, "entries kept per row", int, lambda v: v >= 1, ">= 1"),
        "two_sided": _TWO_SIDED,
    }

    def select(self, rows: np.ndarray) -> np.ndarray:
        rows = _as_rows(rows)
        k = min(self.params["k"], rows.shape[1])
        r = np.arange(rows.shape[0])[:, None]
        # stable sort of -rows: equal values keep index order
        safe = np.nan_to_num(rows, nan=0.0)
        order = np.argsort(-safe, axis=1, kind="stable")[:, :k]
        pos = np.zeros(rows.shape, dtype=bool)
        pos[r, order] = True
        pos &= safe > 0
        neg = np.zeros(rows.shape, dtype=bool)
        if self.two_sided:
            order_n = np.argsort(safe, axis=1, kind="stable")[:, :k]
            neg[r, order_n] = True
            neg &= safe < 0
        return _finish(rows, pos, neg, self.two_sided)
