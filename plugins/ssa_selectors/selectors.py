"""Outlier selectors: each classifies every entry of every relevance row.

All selectors work row by row on float64 arrays of shape (R, K) and return
int8 arrays: +1 positive outlier, -1 negative outlier (``two_sided`` only), 0.
Rows that contain NaN (or an infinity) give all zeros. Every selector depends
only on the values of a row, so equal entries always get the same label, and a
constant row (all-zero rows included) has no outliers. ``ssa.conformance``
checks these properties for any selector.
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
    """Standard score: outlier iff (omega - mean) / std > threshold (population std).

    Constant rows have no outliers (their std is only rounding error). Note that
    no entry of a row of K values can exceed z = (K - 1) / sqrt(K), so with the
    default threshold 3 rows of 10 or fewer neurons never have outliers.
    """

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
            spread = rows.max(axis=1, keepdims=True, initial=-np.inf) > rows.min(axis=1, keepdims=True, initial=np.inf)
            ok = spread & (std > 0)
            z = np.where(ok, (rows - mean) / np.where(ok, std, 1.0), 0.0)
            t = self.params["threshold"]
            pos, neg = z > t, z < -t
        return _finish(rows, pos, neg, self.two_sided)


class MADSelector(Selector):
    """Modified z-score (Iglewicz-Hoaglin / Hampel): 0.6745 (omega - median) / MAD > threshold.

    When more than half of a row equals its median (MAD = 0, common in sparse
    relevance rows where most neurons are silent), the scale falls back to the
    mean absolute deviation: (omega - median) / (1.253314 * MeanAD), as
    Iglewicz and Hoaglin recommend; a constant row has no outliers.
    """

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
            dev = np.abs(rows - med)
            mad = np.median(dev, axis=1, keepdims=True)
            meanad = dev.mean(axis=1, keepdims=True)
            # scale such that z = (omega - median) / scale; 1/0.6745 = 1.4826 (MAD), 1.253314 (MeanAD fallback)
            scale = np.where(mad > 0, mad / 0.6745, 1.253314 * meanad)
            z = np.where(scale > 0, (rows - med) / np.where(scale > 0, scale, 1.0), 0.0)
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
    """The k largest strictly positive entries of each row.

    An entry is kept iff it is > 0 and strictly greater than the (k+1)-th largest
    value of its row (the row minimum when the row has k or fewer entries). Ties
    are never broken by position: when entries tie across the k-th place, none
    of the tied entries is kept (so fewer than k may be kept), and a constant
    row keeps nothing. ``two_sided`` applies the same to the k most negative entries.
    """

    name = "topk"
    description = "the k largest positive entries of each row, ties at the k-th place dropped (default k = 5)"
    parameters: ClassVar[Mapping[str, Param]] = {
        "k": Param(5, "entries kept per row", int, lambda v: v >= 1, ">= 1"),
        "two_sided": _TWO_SIDED,
    }

    def select(self, rows: np.ndarray) -> np.ndarray:
        rows = _as_rows(rows)
        K = rows.shape[1]
        if K == 0:
            return np.zeros(rows.shape, dtype=np.int8)
        at = min(self.params["k"], K - 1)  # index of the (k+1)-th largest value, or of the row minimum
        safe = np.nan_to_num(rows, nan=0.0, posinf=0.0, neginf=0.0)  # such rows are zeroed by _finish
        cut_hi = -np.sort(-safe, axis=1)[:, at:at + 1]
        cut_lo = np.sort(safe, axis=1)[:, at:at + 1]
        pos = (safe > cut_hi) & (safe > 0)
        neg = (safe < cut_lo) & (safe < 0)
        return _finish(rows, pos, neg, self.two_sided)
