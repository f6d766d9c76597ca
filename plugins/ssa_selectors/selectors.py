"""Outlier selectors: each classifies every entry of every relevance row.

The order-statistic selectors (``tukey``, ``mad``, ``percentile``, ``topk``) also implement
``select_sorted(rows, sorted_rows)``: when the relevance source already knows each row's sorted
order (a step whose omega rows are a per-image multiple of one vector per upper neuron, e.g. a 1x1
conv, a dense layer or a skip connection under the gradient rule), the sort, the dominant cost, is
skipped. The labels are the same as :meth:`select`'s, bit for bit.

All selectors work row by row on float64 arrays of shape (R, K) and return
int8 arrays: +1 positive outlier, -1 negative outlier (``two_sided`` only), 0.
Rows that contain NaN (or an infinity) give all zeros. Every selector depends
only on the values of a row, so equal entries always get the same label, and a
constant row (all-zero rows included) has no outliers. ``ssa.conformance``
checks these properties for any selector.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, ClassVar

import numpy as np
from array_api_compat import is_torch_namespace

from ssa.core.arrays import (
    FlatReader,
    count_below_sorted,
    device_of,
    finite_or_zero,
    is_numpy,
    mean_abs_rows,
    median_columns,
    median_of_v_read,
    median_of_v_rows,
    median_rows,
    median_sorted,
    namespace,
    quantile_columns,
)
from ssa.core.interfaces import Selector
from ssa.core.params import Param

from .cuts import beyond, score_cuts

__all__ = ["TukeySelector", "ZScoreSelector", "MADSelector", "PercentileSelector", "TopKSelector"]

_TWO_SIDED = Param(False, "also keep negative outliers (inhibitory edges, sign -1)", bool)


def _positive(x: float) -> bool:
    return x > 0


#: what a stop note suggests besides loosening: a robust threshold and a fixed count per row
_ALTERNATIVES = ("mad", "topk")


def _lower(value: float, usual: float) -> float:
    """A looser threshold than ``value``: ``usual`` when ``value`` is above it, else half of ``value``."""
    return usual if value > usual else value / 2


def _hint(selector: Selector, param: str, value: float) -> str:
    """``"--selector-param <param>=<value>, or --selector ..."``: the loosened parameter (left out when it would
    not change: a threshold of 0 already), then the other selectors to try."""
    parts = [f"--selector-param {param}={value:g}"] if value != selector.params[param] else []
    others = " or ".join(f"--selector {n}" for n in _ALTERNATIVES if n != selector.name)
    return ", or ".join(parts + ([others] if others else []))


def _finish(xp: Any, rows: Any, pos: Any, neg: Any, two_sided: bool, finite: bool = False) -> Any:
    """int8 labels; rows holding a NaN or an infinity get none (``finite``: the caller knows there are none).
    ``neg`` is only read when ``two_sided`` (it may be None otherwise)."""
    if finite:
        if is_numpy(xp):  # numpy's booleans are bytes 0 / 1: the same int8 values without a copy
            out = pos.view(np.int8)
            return out - neg.view(np.int8) if two_sided else out
        out = xp.astype(pos, xp.int8)
        return out - xp.astype(neg, xp.int8) if two_sided else out
    ok = xp.all(xp.isfinite(rows), axis=1, keepdims=True)
    out = xp.astype(pos & ok, xp.int8)
    if two_sided:
        out = out - xp.astype(neg & ok, xp.int8)
    return out


def _as_rows(rows: Any) -> tuple[Any, Any]:
    xp = namespace(rows)
    rows = xp.asarray(rows)
    if rows.ndim != 2:
        raise ValueError(f"selector rows must be 2-D (R, K), got shape {tuple(rows.shape)}")
    if rows.dtype != xp.float64:
        rows = xp.astype(rows, xp.float64)
    return xp, rows


def _empty(xp: Any, rows: Any) -> Any:
    return xp.zeros(rows.shape, dtype=xp.int8, device=device_of(rows))


def _safe(xp: Any, rows: Any) -> Any:
    """Non-finite entries as 0 (their rows get no labels anyway; keeps sums quiet): on numpy only when there are
    any; on a device always (deciding would synchronise)."""
    if is_numpy(xp) and bool(xp.all(xp.isfinite(rows))):
        return rows
    return finite_or_zero(rows)


def _sorted(xp: Any, rows: Any, sorted_rows: Any, safe: bool = False) -> Any:
    """Each row sorted ascending: as given (the relevance source knew the order), or sorted here (``safe``: the
    rows are :func:`_safe`'s already, no second pass to check them).

    Rows with a non-finite value get no labels whatever their order, so they need no care.
    """
    if sorted_rows is None:  # values only: an unstable sort (numpy's SIMD quicksort; the array API's default,
        return xp.sort(rows if safe else _safe(xp, rows), axis=1, stable=False)  # stable, is a much slower merge sort)
    sorted_rows = xp.asarray(sorted_rows)
    return sorted_rows if sorted_rows.dtype == xp.float64 else xp.astype(sorted_rows, xp.float64)


class _CutSelector(Selector):
    """A selector that labels a row against two values found from the row sorted: +1 above ``hi``, -1 below
    ``lo`` (``two_sided``). Subclasses give :meth:`_cuts`; labels, sorted rows and the traversal's sorted cuts
    (:class:`~ssa.core.interfaces.SupportsSortedCuts`) all come from it."""

    def _cuts(self, n: int, column: Callable[[int], Any]) -> tuple[Any, Any]:
        """``(hi, lo)``, each (R, 1), of rows of ``n`` values whose sorted position ``p`` is ``column(p)``."""
        raise NotImplementedError

    def select(self, rows: Any) -> Any:
        return self.select_sorted(rows, None)

    def select_sorted(self, rows: Any, sorted_rows: Any) -> Any:
        """:meth:`select`, given each row's values sorted ascending (or None: sorted here)."""
        xp, rows = _as_rows(rows)
        if rows.shape[1] == 0:
            return _empty(xp, rows)
        s = _sorted(xp, rows, sorted_rows)
        hi, lo = self._cuts(rows.shape[1], lambda p: s[:, p:p + 1])
        return _finish(xp, rows, rows > hi, rows < lo if self.two_sided else None, self.two_sided)

    def sorted_cuts(self, n: int, column: Callable[[int], Any]) -> tuple[Any, Any | None]:
        """See :class:`~ssa.core.interfaces.SupportsSortedCuts`."""
        hi, lo = self._cuts(n, column)
        return hi, (lo if self.two_sided else None)


def _beyond_zero(hi: Any, lo: Any) -> tuple[Any, Any]:
    """Cuts for "above ``hi`` and > 0" / "below ``lo`` and < 0": above max(hi, 0), below min(lo, 0)."""
    xp = namespace(hi)
    return xp.maximum(hi, xp.zeros_like(hi)), xp.minimum(lo, xp.zeros_like(lo))


class TukeySelector(_CutSelector):
    """Tukey's fences: k is an outlier iff omega > Q3 + k * (Q3 - Q1) (the paper's).

    Quartiles by linear interpolation, bit-identical to ``numpy.percentile`` on every array library.
    """

    name = "tukey"
    sweep = ("k", (0.5, 1.0, 3.0, 6.0))  # the values ssa evaluate --curves tries besides the default
    description = "Tukey's fences: omega > Q3 + k*IQR (the paper's; k = 1.5)"
    array_api = True
    parameters: ClassVar[Mapping[str, Param]] = {
        "k": Param(1.5, "fence multiplier of the inter-quartile range", float, lambda v: v >= 0, ">= 0"),
        "two_sided": _TWO_SIDED,
    }

    def loosen_hint(self) -> str:
        """Narrower fences: k = 1 (k / 2 from k <= 1)."""
        return _hint(self, "k", _lower(self.params["k"], 1.0))

    def _cuts(self, n: int, column: Callable[[int], Any]) -> tuple[Any, Any]:
        """The fences Q3 + k * IQR and Q1 - k * IQR."""
        q1, q3 = quantile_columns(n, column, 25.0), quantile_columns(n, column, 75.0)
        iqr = q3 - q1
        k = self.params["k"]
        return q3 + k * iqr, q1 - k * iqr


class ZScoreSelector(Selector):
    """Standard score: outlier iff (omega - mean) / std > threshold (population std).

    Constant rows have no outliers (their std is only rounding error). Note that
    no entry of a row of K values can exceed z = (K - 1) / sqrt(K), so with the
    default threshold 3 rows of 10 or fewer neurons never have outliers. The mean and the
    standard deviation are sums, whose rounding depends on the library's summation order:
    labels agree across libraries except for values within rounding of the threshold.
    """

    name = "zscore"
    sweep = ("threshold", (1.0, 2.0, 4.0, 6.0))  # the values ssa evaluate --curves tries besides the default
    description = "z-score: (omega - mean)/std > threshold (default 3)"
    array_api = True
    parameters: ClassVar[Mapping[str, Param]] = {
        "threshold": Param(3.0, "number of standard deviations", float, _positive, "> 0"),
        "two_sided": _TWO_SIDED,
    }

    def loosen_hint(self) -> str:
        """A lower threshold: 2 (half of it from 2 down)."""
        return _hint(self, "threshold", _lower(self.params["threshold"], 2.0))

    def select(self, rows: Any) -> Any:
        xp, rows = _as_rows(rows)
        if rows.shape[1] == 0:
            return _empty(xp, rows)
        safe = _safe(xp, rows)
        mean = xp.mean(safe, axis=1, keepdims=True)
        std = xp.std(safe, axis=1, keepdims=True)
        spread = xp.max(safe, axis=1, keepdims=True) > xp.min(safe, axis=1, keepdims=True)
        ok = spread & (std > 0)
        pos, neg = beyond(xp, safe, mean, std, ok, self.params["threshold"], self.two_sided)  # cuts on numpy
        return _finish(xp, rows, pos, neg, self.two_sided)


class MADSelector(Selector):
    """Modified z-score (Iglewicz-Hoaglin / Hampel): 0.6745 (omega - median) / MAD > threshold.

    When more than half of a row equals its median (MAD = 0, common in sparse
    relevance rows where most neurons are silent), the scale falls back to the
    mean absolute deviation: (omega - median) / (1.253314 * MeanAD), as
    Iglewicz and Hoaglin recommend; a constant row has no outliers. Medians are bit-identical to
    numpy's on every array library; the mean absolute deviation is a sum (see ``zscore``).
    """

    name = "mad"
    sweep = ("threshold", (1.5, 2.5, 5.0, 8.0))  # the values ssa evaluate --curves tries besides the default
    description = "modified z-score 0.6745*(omega - median)/MAD > threshold (default 3.5)"
    array_api = True
    parameters: ClassVar[Mapping[str, Param]] = {
        "threshold": Param(3.5, "modified z-score threshold", float, _positive, "> 0"),
        "two_sided": _TWO_SIDED,
    }

    def loosen_hint(self) -> str:
        """A lower threshold: 2.5 (half of it from 2.5 down)."""
        return _hint(self, "threshold", _lower(self.params["threshold"], 2.5))

    def select(self, rows: Any) -> Any:
        return self.select_sorted(rows, None)

    def select_sorted(self, rows: Any, sorted_rows: Any) -> Any:
        """:meth:`select`, given each row's values sorted ascending (or None: sorted here)."""
        xp, rows = _as_rows(rows)
        if rows.shape[1] == 0:
            return _empty(xp, rows)
        if _selects(xp):
            return self._select_device(xp, rows, sorted_rows)
        safe = _safe(xp, rows)
        finite = safe is rows  # numpy checked every value
        # sorted rows (given, or sorted here): the first median read off, the second from the two runs
        s = _sorted(xp, safe, sorted_rows, safe=True)
        med = median_sorted(s)
        # |s - med| over a sorted row falls, then rises: its median from the two runs, read only at the
        # positions the search visits (no full |s - med| array)
        below = count_below_sorted(s, med)
        mad = median_of_v_rows(s, below, center=med)
        meanad = _mean_abs_where(xp, safe, med, mad == 0)  # the fallback scale, needed only where MAD is 0
        # scale such that z = (omega - median) / scale; 1/0.6745 = 1.4826 (MAD), 1.253314 (MeanAD fallback)
        scale = xp.where(mad > 0, mad / 0.6745, 1.253314 * meanad)
        pos_scale = scale > 0  # (R, 1); a row without spread has no outliers (the threshold is > 0)
        pos, neg = beyond(xp, safe, med, scale, pos_scale, self.params["threshold"], self.two_sided)  # cuts on numpy
        return _finish(xp, rows, pos, neg, self.two_sided, finite)

    def count_labels(self, rows: Any, groups: int, sorted_rows: Any = None) -> tuple[Any, Any | None]:
        """See :class:`~ssa.core.interfaces.SupportsCounts`: on torch from the outlier masks themselves (no labels);
        elsewhere the labels summed."""
        xp, rows = _as_rows(rows)
        n, K = int(rows.shape[0]) // max(int(groups), 1), int(rows.shape[1])
        if not _selects(xp) or K == 0:
            labels = xp.reshape(self.select_sorted(rows, sorted_rows), (n, groups, K))
            pos = xp.sum(xp.astype(labels > 0, xp.int64), axis=1)
            return pos, (xp.sum(xp.astype(labels < 0, xp.int64), axis=1) if self.two_sided else None)
        above, below = self._device_masks(xp, rows, sorted_rows)
        return above.reshape(n, groups, K).sum(1), (below.reshape(n, groups, K).sum(1) if below is not None else None)

    def _select_device(self, xp: Any, rows: Any, sorted_rows: Any) -> Any:
        """:meth:`select_sorted` on torch: the labels of :meth:`_device_masks`."""
        above, below = self._device_masks(xp, rows, sorted_rows)
        out = xp.astype(above, xp.int8)
        return out - xp.astype(below, xp.int8) if below is not None else out

    def _device_masks(self, xp: Any, rows: Any, sorted_rows: Any) -> tuple[Any, Any | None]:
        """``(z > t, z < -t)`` (the second None when one-sided) on torch, in a fixed number of kernels and no
        synchronisation (issue 20): both medians by one sort (or one selection for odd rows) and the mean of the
        middle values, as numpy takes them; the deviations computed once, for the MAD and its fallback alike; the
        same scores and labels as the host form."""
        safe = finite_or_zero(rows)
        med = median_sorted(sorted_rows) if sorted_rows is not None else median_rows(safe)
        diff = safe - med
        dev = xp.abs(diff)
        mad = median_rows(dev)
        meanad = xp.mean(dev, axis=1, keepdims=True)  # the fallback scale (used where MAD is 0)
        scale = xp.where(mad > 0, mad / 0.6745, 1.253314 * meanad)
        # a row without spread, or holding NaN or an infinity (zeroed in safe), has no outliers
        ok = (scale > 0) & xp.all(safe == rows, axis=1, keepdims=True)
        z = diff / scale  # rows that are not ok divide by 0 here, and are masked
        t = self.params["threshold"]
        return (z > t) & ok, ((z < -t) & ok if self.two_sided else None)


    def searched_cuts(self, n: int, read: Callable[[Any], Any], mean_abs: Callable[[Any, Any], Any]
                      ) -> tuple[Any, Any | None]:
        """The labels of :meth:`select` as cuts (:class:`~ssa.core.interfaces.SupportsSearchedCuts`): the median read
        at the middle, the MAD from the two runs of ``|s - median|`` split at the middle (a binary search), the mean
        absolute deviation asked where the MAD is 0, then the first doubles whose score passes
        (:func:`~ssa_selectors.cuts.score_cuts`). A row without spread gets its own maximum and minimum as cuts:
        nothing beyond them."""
        low = np.asarray(read(0))
        R = int(low.shape[0])

        def flat(idx: np.ndarray) -> np.ndarray:  # (R,) positions -> (R,) values
            return np.asarray(read(idx.reshape(R, 1))).reshape(R)

        med = median_columns(n, read)
        rows = read.flat_reads if isinstance(read, FlatReader) else None  # fewer passes where known, same reads
        # |s - median| falls up to the middle and rises after it: s[n // 2 - 1] <= median <= s[n // 2] (the mean of
        # the middle two lies between them; an odd row's median is s[n // 2]), and a value equal to the median is 0
        # in either run, so the runs split at n // 2 with no count of the values below the median (the same MAD:
        # the search's answer is an order statistic of the same values; select() counts, the reference)
        split = np.full((R, 1), n // 2, dtype=np.int64)
        mad = median_of_v_read(flat, n, split, center=med, flat=rows)
        meanad = mean_abs(med, mad == 0)
        scale = np.where(mad > 0, mad / 0.6745, 1.253314 * meanad)  # as select() scales
        ok = scale > 0
        hi, lo = score_cuts(med, scale, ok, self.params["threshold"], self.two_sided)
        hi = np.where(ok, hi, read(n - 1))
        return hi, (None if lo is None else np.where(ok, lo, low))


def _selects(xp: Any) -> bool:
    """Whether the library selects the k-th value of rows without sorting them (torch: ``kthvalue``)."""
    return bool(is_torch_namespace(xp))


#: bytes of rows the mean absolute deviation works on at a time (within the core's cache)
_CHUNK_BYTES = 256 << 10


def _mean_abs_where(xp: Any, safe: Any, med: Any, rows: Any) -> Any:
    """``mean(|safe - med|, axis=1)`` (R, 1), computed for the rows where ``rows`` (R, 1) holds (0 elsewhere) on
    numpy, for every row on a device (no synchronisation). A row's mean is the same either way: numpy reduces
    each contiguous row on its own."""
    if is_numpy(xp):
        return mean_abs_rows(safe, med, rows, _CHUNK_BYTES)
    return xp.mean(xp.abs(safe - med), axis=1, keepdims=True)


class PercentileSelector(_CutSelector):
    """Outlier iff omega is strictly above the q-th percentile of its row (and positive)."""

    name = "percentile"
    sweep = ("q", (90.0, 95.0, 99.5, 99.9))  # the values ssa evaluate --curves tries besides the default
    description = "omega > q-th percentile of the row and > 0 (default q = 99)"
    array_api = True
    parameters: ClassVar[Mapping[str, Param]] = {
        "q": Param(99.0, "percentile in (0, 100)", float, lambda v: 0 < v < 100, "in (0, 100)"),
        "two_sided": _TWO_SIDED,
    }

    def loosen_hint(self) -> str:
        """A lower percentile: 95, then twice as far from 100, down to the median (below it, values > 0 are
        kept whatever q is, so only other selectors are advised)."""
        q = self.params["q"]
        return _hint(self, "q", 95.0 if q > 95 else max(100 - 2 * (100 - q), min(q, 50.0)))

    def _cuts(self, n: int, column: Callable[[int], Any]) -> tuple[Any, Any]:
        """Above the q-th percentile and > 0; below the (100 - q)-th and < 0."""
        q = self.params["q"]
        return _beyond_zero(quantile_columns(n, column, q), quantile_columns(n, column, 100.0 - q))


class TopKSelector(_CutSelector):
    """The k largest strictly positive entries of each row.

    An entry is kept iff it is > 0 and strictly greater than the (k+1)-th largest
    value of its row (the row minimum when the row has k or fewer entries). Ties
    are never broken by position: when entries tie across the k-th place, none
    of the tied entries is kept (so fewer than k may be kept), and a constant
    row keeps nothing. ``two_sided`` applies the same to the k most negative entries.
    """

    name = "topk"
    sweep = ("k", (1, 2, 10, 20))  # the values ssa evaluate --curves tries besides the default
    description = "the k largest positive entries of each row, ties at the k-th place dropped (default k = 5)"
    array_api = True
    parameters: ClassVar[Mapping[str, Param]] = {
        "k": Param(5, "entries kept per row", int, lambda v: v >= 1, ">= 1"),
        "two_sided": _TWO_SIDED,
    }

    def loosen_hint(self) -> str:
        """Twice as many entries per row."""
        return _hint(self, "k", 2 * self.params["k"])

    def _cuts(self, n: int, column: Callable[[int], Any]) -> tuple[Any, Any]:
        """Above the (k+1)-th largest value (the row minimum when the row has k or fewer entries) and > 0;
        below the (k+1)-th smallest and < 0."""
        at = min(self.params["k"], n - 1)
        return _beyond_zero(column(n - 1 - at), column(at))
