"""Counts of a selector with searched cuts (:class:`~ssa.core.interfaces.SupportsSearchedCuts`, MAD) on the host.

Such a selector finds two cut values per row from the row sorted (reading positions a search picks) and, where it
needs one, a mean absolute deviation; a value is an outlier iff it lies beyond its row's cut. So the traversal

* counts the rows of a dense block against the cuts (:func:`dense_counts`): one sort, then a comparison summed
  over the images, with no int8 label arrays and no pass to check them;
* labels a rank-1 step from its factors (:func:`rank1_searched_cuts`): row (j, i) is a monotone function of
  ``vec[j]`` sorted, so a read at a sorted position is one product, and a row's mean absolute deviation is exact
  from the one or two values off the centre where there are no more (the skip connections' one-hot rows); only
  rows with more values off the centre, where the deviation is 0, are built;
* sums a rank-1 step over the images without its rows (:func:`rank1_image_sums`): the built rows' sum, bit for bit,
  from the values where ``vec`` is not 0 (a skip connection's one per row).

Both give the cuts of :meth:`~ssa.core.interfaces.Selector.select` on the same values, so the counts are those of the
plain path bit for bit (``tests/test_searched_cuts.py``).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ssa.core.arrays import FlatReader, FlatReads, count_below_read, flat_rows, mean_abs_rows
from ssa.core.interfaces import SortedKeys, SupportsSearchedCuts, SupportsSortedCuts

__all__ = ["searched_only", "sorted_reader", "keys_reader", "keys_rows", "searched_sums", "dense_counts",
           "rank1_searched_cuts", "rank1_image_sums"]


def searched_only(selector: Any) -> bool:
    """Whether a selector is counted by its searched cuts: it has them, and no sorted cuts (those come first)."""
    return isinstance(selector, SupportsSearchedCuts) and not isinstance(selector, SupportsSortedCuts)


def sorted_reader(sorted_rows: np.ndarray) -> FlatReader:
    """``read(p)`` of :class:`~ssa.core.interfaces.SupportsSearchedCuts` over C-contiguous sorted numpy rows (R, K): a
    column for an int ``p``, one flat ``take`` for (R, 1) positions; with the same rows at flat offsets."""
    flat_reads = flat_rows(sorted_rows)
    flat, base = sorted_rows.reshape(-1), flat_reads.base[:, None]

    def read(p: Any) -> Any:
        if isinstance(p, (int, np.integer)):
            return sorted_rows[:, int(p):int(p) + 1]
        return flat.take(base + p)

    return FlatReader(read, flat_reads)


def _keys_parts(sk: SortedKeys) -> tuple[np.ndarray, float, np.ndarray | None]:
    """The keys as C-contiguous rows (R, K) and each row's fed flag (R,) in float64 (None: every row fed)."""
    keys = np.ascontiguousarray(sk.keys)
    n, b, K = keys.shape
    m = None if sk.fed is None else np.repeat(np.asarray(sk.fed).reshape(n).astype(np.float64), b)
    return keys.reshape(n * b, K), float(sk.scale), m


def keys_rows(sk: SortedKeys) -> np.ndarray:
    """The rows :class:`~ssa.core.interfaces.SortedKeys` stands for, sorted, built (R, K) float64: the reference of
    :func:`keys_reader`, and what a selector other than searched cuts is given."""
    keys, scale, m = _keys_parts(sk)
    out = keys.astype(np.float64)
    out *= scale
    return out if m is None else out * m[:, None]


def keys_reader(sk: SortedKeys) -> FlatReader:
    """:func:`sorted_reader` of the rows :func:`keys_rows` builds, without building them: a read takes the keys at
    the positions asked and rounds each value as the rows hold it (float64, times the scale, times the fed flag)."""
    keys, scale, m = _keys_parts(sk)
    R, K = keys.shape
    flat = keys.reshape(-1)
    base = np.arange(R, dtype=np.int64) * K
    col = None if m is None else m[:, None]

    def values(v: np.ndarray, fed: np.ndarray | None) -> np.ndarray:
        out = v.astype(np.float64)
        out *= scale
        return out if fed is None else out * fed

    def read(p: Any) -> Any:
        if isinstance(p, (int, np.integer)):
            return values(keys[:, int(p):int(p) + 1], col)
        return values(flat.take(base[:, None] + p), col)

    return FlatReader(read, FlatReads(lambda at: values(flat.take(at, mode="clip"), m), base, 1))


def searched_sums(selector: Any, omega: np.ndarray, sorted_rows: np.ndarray | SortedKeys | None
                  ) -> tuple[Any, Any, Any]:
    """A dense block's sums for the traversal, (nb, K) each: the positive and (two-sided) negative counts of
    :func:`dense_counts`, and the relevance summed over the images, non-finite values as 0. The sum comes first:
    a finite sum has only finite terms (NaN and infinities stay non-finite in a sum), so then no pass checks the
    rows."""
    tot = np.sum(omega, axis=1)
    finite = bool(np.isfinite(tot).all())
    pos, neg = dense_counts(selector, omega, sorted_rows, bool(selector.two_sided), finite)
    if not finite:
        tot = np.sum(np.where(np.isfinite(omega), omega, 0.0), axis=1)
    return pos, neg, tot


def dense_counts(selector: SupportsSearchedCuts, omega: np.ndarray, sorted_rows: np.ndarray | SortedKeys | None,
                 lower: bool, finite: bool) -> tuple[Any, Any]:
    """Per upper neuron and lower neuron, the images where the value is above its row's cut (and, with ``lower``,
    below the other): (nb, K) int64 each, from float64 numpy ``omega`` (nb, b, K) and, when known, its rows sorted
    (nb * b, K) or as :class:`~ssa.core.interfaces.SortedKeys`. ``finite``: the caller knows every value is finite;
    else rows with a NaN or an infinity count nothing, as :meth:`~ssa.core.interfaces.Selector.select` labels them."""
    nb, b, K = omega.shape
    rows = omega.reshape(nb * b, K)
    ok = None
    if not finite:
        ok = np.isfinite(rows).all(axis=1, keepdims=True)
        rows = np.where(np.isfinite(rows), rows, 0.0)
    if sorted_rows is None or ok is not None:  # the given order holds the non-finite values: sorted here
        read = sorted_reader(np.sort(rows, axis=1))
    elif isinstance(sorted_rows, SortedKeys):
        read = keys_reader(sorted_rows)
    else:
        read = sorted_reader(np.ascontiguousarray(sorted_rows.reshape(nb * b, K)))

    def mean_abs(center: np.ndarray, where: np.ndarray) -> np.ndarray:
        return mean_abs_rows(rows, center, where)

    with np.errstate(invalid="ignore", over="ignore"):
        hi, lo = selector.searched_cuts(K, read, mean_abs)
    hi = np.asarray(hi, dtype=np.float64)
    if ok is not None:  # nothing beyond the cuts in a row that holds a non-finite value
        hi = np.where(ok, hi, np.inf)
    grid = rows.reshape(nb, b, K)
    pos = _count_images(grid > hi.reshape(nb, b, 1))
    if not lower or lo is None:
        return pos, None
    lo = np.asarray(lo, dtype=np.float64)
    if ok is not None:
        lo = np.where(ok, lo, -np.inf)
    return pos, _count_images(grid < lo.reshape(nb, b, 1))


def _count_images(beyond: np.ndarray) -> Any:
    """``beyond`` (nb, b, K) bool summed over the images, (nb, K) int64: counted in bytes where they cannot overflow
    (b < 256; twice as fast as counting in int64 on the 2-core CPU), the same counts."""
    if beyond.shape[1] < 256:
        return np.sum(beyond, axis=1, dtype=np.uint8).astype(np.int64)
    return np.sum(beyond, axis=1, dtype=np.int64)


def rank1_searched_cuts(selector: SupportsSearchedCuts, sv: np.ndarray, coeff: np.ndarray, scale: float,
                        mask: np.ndarray, vec: np.ndarray) -> tuple[Any, Any]:
    """``selector.searched_cuts`` of the rows ``((vec[j] * coeff[j, i]) * scale) * mask[j]`` of a rank-1 block, (nb * b,
    1) each, from ``sv`` (nb, K), each row of ``vec`` sorted ascending, without building the rows.

    A row's sorted position p is ``sv`` at p (coeff >= 0) or at K - 1 - p (coeff < 0): one read, one product each.
    The mean absolute deviation from a centre c: the values equal to c are one run of the sorted row (two binary
    searches); with at most two values off it the sum over the row is those one or two deviations, whatever the
    order of summation (every other term is an exact 0), then divided by K as ``numpy.mean`` does; other rows are
    built (their order of summation matters) and averaged by :func:`~ssa.core.arrays.mean_abs_rows`.
    """
    nb, b = coeff.shape
    K = int(sv.shape[1])
    R = nb * b
    flat_sv = np.ascontiguousarray(sv).reshape(-1)
    base = np.repeat(np.arange(nb, dtype=np.int64) * K, b)[:, None]  # row r = j * b + i -> start of sv[j]
    down = (coeff < 0).reshape(R, 1)
    c = coeff.reshape(R, 1)
    m = np.repeat(mask.reshape(nb), b)[:, None]

    def values(p: Any) -> Any:
        q = np.where(down, (K - 1) - p, p)
        return ((flat_sv.take(base + q) * c) * scale) * m

    # the same values at flat offsets into sv (row r's position p at start[r] + step[r] * p), for the searches
    c1, m1 = c.reshape(R), m.reshape(R)
    rows = FlatReads(lambda at: ((flat_sv.take(at, mode="clip") * c1) * scale) * m1,
                     (base + np.where(down, K - 1, 0)).reshape(R), np.where(down, -1, 1).reshape(R))
    read = FlatReader(values, rows)

    def flat(idx: np.ndarray) -> Any:
        return read(idx.reshape(R, 1)).reshape(R)

    def mean_abs(center: np.ndarray, where: np.ndarray) -> np.ndarray:
        below = count_below_read(flat, K, center, flat=rows)
        upto = count_below_read(flat, K, np.nextafter(center, np.inf), flat=rows)  # <= center: < the next double
        off = K - (upto - below)  # values not equal to the centre
        first = read(np.where(below >= 1, 0, np.minimum(K - off, K - 1)))
        second = read(np.where(below >= 2, 1, K - 1))
        a = np.where(off >= 1, np.abs(first - center), 0.0)
        total = np.where(off >= 2, a + np.abs(second - center), a)
        out = total / K
        hard = np.nonzero((np.asarray(where) & (off > 2)).reshape(R))[0]
        if hard.shape[0]:
            j, i = hard // b, hard % b
            built = ((vec[j] * coeff[j, i][:, None]) * scale) * mask.reshape(nb)[j][:, None]
            out[hard] = mean_abs_rows(built, center[hard], np.ones((hard.shape[0], 1), bool))
        return out

    return selector.searched_cuts(K, read, mean_abs)


def rank1_image_sums(coeff: np.ndarray, vec: np.ndarray, scale: float, fed: np.ndarray) -> np.ndarray:
    """``numpy.sum(rows, axis=1)`` in float64 of a rank-1 block's finite rows ``((vec[j, k] * coeff[j, i]) * scale) *
    fed[j]`` (:func:`~ssa.core.traversal.rank1_block_rows`: numpy ``coeff`` (n, B), ``vec`` (n, K), ``fed`` (n,), in
    the factors' own dtype), bit for bit, without building the (n, B, K) rows.

    numpy sums rows of K >= 2 values over their middle axis image by image (``((x_0 + x_1) + x_2) + ...``, the lower
    neurons side by side), and so does this, only at the values where ``vec`` is not 0: elsewhere every term is a
    zero, and so is the sum (its sign aside, which the traversal's sums drop: they add 0.0). A device sums the same
    rows (a step's own) in the same order, so both agree bit for bit. For K < 2 numpy sums differently: build them.
    """
    n, K = vec.shape
    assert K >= 2, "rows of one value are summed pairwise by numpy: build them"
    out = np.zeros((n, K), dtype=np.float64)
    j, k = np.nonzero(vec)
    if not j.shape[0]:
        return out
    v, c = vec[j, k], coeff[j]
    m = fed.astype(v.dtype)[j]

    def term(i: int) -> np.ndarray:  # image i's values, rounded as the rows hold them
        values: np.ndarray = ((v * c[:, i]) * scale) * m
        return values.astype(np.float64, copy=False)

    acc = term(0)
    for i in range(1, coeff.shape[1]):
        acc = acc + term(i)
    out[j, k] = acc
    return out
