"""Array-API plumbing of the core (numpy, torch, cupy, ... through ``array-api-compat``).

The traversal, the selectors and the statistics work on the backend's own arrays, on the
backend's device (``xp = namespace(x)`` at the entry of a function, ``xp.*`` inside); only
small results come back to the host with :func:`to_numpy`.

Quantiles are computed exactly as :func:`numpy.percentile` does with its default ``linear``
method (Hyndman & Fan's 7th method): the same virtual index, computed on the host in float64,
the same neighbours of a sorted row and the same two-sided interpolation formula, each
operation a separate, correctly rounded elementwise kernel (no fused multiply-add). So a
quantile on a GPU is bit-identical to numpy's, and so are the outlier labels compared to it.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Iterator
from typing import Any, NamedTuple

import numpy as np
from array_api_compat import array_namespace, is_numpy_namespace, is_torch_namespace
from array_api_compat import device as _device

__all__ = ["namespace", "on_host", "host_view", "all_finite", "to_numpy", "device_of", "asarray_like", "is_numpy",
           "quantile_sorted", "median_sorted", "percentile_rows", "take_rows", "device_path",
           "median_rows", "take_along", "finite_or_zero", "count_below_sorted", "count_below_read", "median_of_v_read",
           "FlatReads", "FlatReader", "flat_rows",
           "mean_abs_rows", "unpermute", "step_counts"]

Array = Any


def namespace(*arrays: Array) -> Any:
    """The array-API namespace of ``arrays`` (numpy arrays and Python scalars give numpy's)."""
    arrs = [a for a in arrays if a is not None and not isinstance(a, (int, float, bool))]
    if not arrs:
        return array_namespace(np.zeros(0))
    return array_namespace(*arrs)


def is_numpy(xp: Any) -> bool:
    return bool(is_numpy_namespace(xp))


def device_of(x: Array) -> Any:
    return _device(x)


def to_numpy(x: Array) -> np.ndarray:
    """A host numpy copy (or view) of any array-API array."""
    if isinstance(x, np.ndarray):
        return x
    xp = array_namespace(x)
    if is_torch_namespace(xp):
        host: np.ndarray = (x.detach() if x.requires_grad else x).cpu().numpy()  # a detach is a call per copy
        return host
    return np.asarray(x)


_DEVICE_PATH = [False]


@contextlib.contextmanager
def device_path() -> Iterator[None]:
    """Within: host tensors stay tensors (:func:`host_view` gives no numpy views), so the CPU runs the code
    path a GPU takes. For tests that count what that path does (aten calls, synchronisations)."""
    saved = _DEVICE_PATH[0]
    _DEVICE_PATH[0] = True
    try:
        yield
    finally:
        _DEVICE_PATH[0] = saved


def on_host(device: Any) -> bool:
    """Whether arrays on ``device`` reach the traversal as numpy views (the CPU, outside :func:`device_path`)."""
    return not _DEVICE_PATH[0] and str(device).split(":")[0] == "cpu"


def host_view(x: Array) -> Array:
    """``x`` itself, or a zero-copy numpy view when ``x`` is a torch tensor in host memory.

    On the CPU numpy's kernels (SIMD sorting, reductions) are several times faster than
    torch's for the traversal's work, and a CPU tensor and its numpy view share memory: the
    work stays where the data lives (except within :func:`device_path`).
    """
    if isinstance(x, np.ndarray) or _DEVICE_PATH[0]:
        return x
    xp = array_namespace(x)
    if is_torch_namespace(xp) and x.device.type == "cpu" and not x.requires_grad:
        return x.numpy()
    return x


def all_finite(x: Array) -> bool:
    """Whether every value of ``x`` is finite (numpy's kernel for host tensors: much faster than torch's)."""
    v = host_view(x)
    xp = array_namespace(v)
    return bool(xp.all(xp.isfinite(v)))


def asarray_like(values: Any, like: Array, dtype: Any = None) -> Array:
    """``values`` as an array of ``like``'s namespace, on ``like``'s device."""
    xp = array_namespace(like)
    if is_torch_namespace(xp):
        import torch

        t = torch.as_tensor(np.asarray(values) if isinstance(values, np.ndarray) else values)
        return t.to(device=like.device, dtype=dtype if dtype is not None else t.dtype)
    return xp.asarray(values, dtype=dtype, device=_device(like))


def take_rows(x: Array, index: Any) -> Array:
    """``x[index]`` along the first axis for an integer index: a list or numpy array (copied to ``x``'s device), or
    an array of ``x``'s library already on its device (used as it is: no copy per call)."""
    xp = array_namespace(x)
    if isinstance(index, (list, tuple, np.ndarray)) or is_numpy_namespace(array_namespace(index)):
        index = asarray_like(np.asarray(index, dtype=np.int64), x, dtype=None)
    return xp.take(x, index, axis=0)


def take_along(x: Array, index: Array, axis: int) -> Array:
    """``take_along_axis`` with indices in range (no negative ones): one gather on torch (``array-api-compat``'s
    version normalises the indices in several kernels); on C-contiguous numpy rows (2-D, axis 1), one flat
    ``take`` (numpy's ``take_along_axis`` builds index grids first); the library's own elsewhere."""
    xp = array_namespace(x)
    if is_torch_namespace(xp):
        return x.gather(axis, index)
    if (is_numpy_namespace(xp) and x.ndim == 2 and axis == 1 and x.flags.c_contiguous and index.ndim == 2
            and index.shape[0] == x.shape[0]):
        base = np.arange(x.shape[0], dtype=np.int64)[:, None] * x.shape[1]
        return x.reshape(-1).take(base + index)
    return xp.take_along_axis(x, index, axis=axis)


def unpermute(values: Array, order: Array) -> Array:
    """``out[j, order[j, q]] = values[j, q]`` (n, K): row-wise values in a permuted order put back in place, i.e.
    ``take_along(values, inverse_permutation(order), 1)`` without the inverse: one scatter on numpy and torch."""
    xp = array_namespace(values)
    n, K = int(values.shape[0]), int(values.shape[1])
    if is_numpy_namespace(xp):
        out = np.empty((n, K), dtype=values.dtype)
        base = np.arange(n, dtype=np.int64)[:, None] * K
        out.reshape(-1)[(base + np.asarray(order)).reshape(-1)] = np.asarray(values).reshape(-1)
        return out
    if is_torch_namespace(xp):
        return xp.empty_like(values).scatter_(1, order, values)
    return take_along(values, inverse_permutation(order), 1)


def finite_or_zero(x: Array) -> Array:
    """``x`` with NaN and infinities replaced by 0 (finite values unchanged): one kernel on torch."""
    xp = array_namespace(x)
    if is_torch_namespace(xp):
        return x.nan_to_num(0.0, 0.0, 0.0)
    return xp.where(xp.isfinite(x), x, xp.zeros_like(x))


def _lerp(xp: Any, a: Array, b: Array, t: float) -> Array:
    """numpy's ``_lerp``: ``a + (b - a) * t``, or ``b - (b - a) * (1 - t)`` for ``t >= 0.5``."""
    diff = b - a
    if t >= 0.5:
        return b - diff * (1.0 - t)
    return a + diff * t


def quantile_sorted(sorted_rows: Array, q: float) -> Array:
    """The ``q``-th percentile (0 <= q <= 100) of each row of an ascending-sorted (R, K) array.

    Bit-identical to ``numpy.percentile(rows, q, axis=1, keepdims=True)`` (method "linear"):
    the virtual index ``(K - 1) * (q / 100)`` is computed on the host in float64 as numpy does,
    and the interpolation uses numpy's formula with one rounding per operation.
    """
    K = int(sorted_rows.shape[1])
    return quantile_columns(K, lambda p: sorted_rows[:, p:p + 1], q)


def _row_reader(rows: Array) -> Callable[[Array], Array]:
    """``read(idx)``: the (R,) values ``rows[r, idx[r]]`` of (R, K) rows for (R,) integer positions. A C-contiguous
    numpy array is read by one flat ``take`` (``take_along_axis`` builds index grids per call: most of its time on
    the small reads of the medians' searches); other arrays by ``take_along_axis``."""
    xp = array_namespace(rows)
    R = int(rows.shape[0])
    if is_numpy_namespace(xp) and rows.flags.c_contiguous:
        flat = rows.reshape(-1)
        base = np.arange(R, dtype=np.int64) * int(rows.shape[1])
        return lambda idx: flat.take(base + idx)
    return lambda idx: xp.reshape(xp.take_along_axis(rows, xp.reshape(idx, (R, 1)), axis=1), (R,))


def median_of_v_rows(d: Array, m: Array, center: Array | None = None) -> Array:
    """``median_sorted(sort(d))`` (R, 1) for rows that fall, then rise: ``d[:, :m]`` non-increasing and
    ``d[:, m:]`` non-decreasing (per-row ``m`` (R, 1) int), e.g. ``|s - median|`` of sorted rows ``s``. With
    ``center`` (R, 1), ``d`` is the sorted rows ``s`` themselves and the rows are ``|s - center|``, computed only
    at the few positions the search reads (the same values: one subtraction and one absolute value each).

    The two runs are two sorted lists, and the one or two middle values of their union are found by a
    binary search per row (the k-th smallest of two sorted lists), without sorting: the same values, bit
    for bit, as sorting then taking the median.
    """
    return median_of_v_read(_row_reader(d), int(d.shape[1]), m, center, d.dtype)


def median_of_v_read(read: Callable[[Array], Array], n_columns: int, m: Array, center: Array | None = None,
                     dtype: Any = None, flat: FlatReads | None = None) -> Array:
    """:func:`median_of_v_rows` of rows known only through ``read(idx)``: the (R,) values (of ``dtype``; float64 when
    None) of the rows at (R,) integer positions ``idx`` (one per row), e.g. rows that are never built (a rank-1
    step's). ``flat``: the same rows read at flat offsets (:class:`FlatReads`, float64): with ``center`` (float64)
    the search reads them so (:func:`_kth_flat`: the same reads, fewer passes per halving)."""
    xp = array_namespace(m)
    R, K = int(m.shape[0]), int(n_columns)
    dev = _device(m)
    m = xp.reshape(xp.astype(m, xp.int64), (R,))
    n_right = K - m
    c = None if center is None else xp.reshape(center, (R,))
    inf = xp.full((R,), float("inf"), dtype=xp.float64 if dtype is None else dtype, device=dev)
    fast = flat is not None and c is not None and c.dtype == np.float64

    def at(idx: Array) -> Array:  # (R,) values of the rows at one position per row
        v = read(idx)
        return v if c is None else xp.abs(v - c)

    def left(i: Array) -> Array:  # the i-th smallest of the falling run: d[m - 1 - i]; +inf past its end
        ok = (i >= 0) & (i < m)
        return xp.where(ok, at(xp.where(ok, m - 1 - i, xp.zeros_like(i))), inf)

    def right(t: Array) -> Array:  # the t-th smallest of the rising run: d[m + t]; +inf past its end
        ok = (t >= 0) & (t < n_right)
        return xp.where(ok, at(xp.where(ok, m + t, xp.zeros_like(t))), inf)

    first_col, last_col = xp.zeros_like(m), xp.full_like(m, K - 1)

    def inside(p: Array) -> Array:
        return xp.minimum(xp.maximum(p, first_col), last_col)

    def kth(k: int) -> tuple[Array, Array]:  # the k-th and (k+1)-th smallest (0-based) of the union of the runs
        lo = xp.maximum(xp.zeros_like(m), (k + 1) - n_right)
        hi = xp.minimum(xp.full_like(m, k + 1), m)
        if fast:
            lo = hi = _kth_flat(flat, m, c, k, lo, hi)  # type: ignore[arg-type]  # every row settled
        for _ in range(0 if fast else K.bit_length() + 1):
            active = lo < hi
            i = (lo + hi) // 2
            # an active row reads within both runs (0 <= lo <= i < hi <= min(k + 1, m), so 0 <= k - i < n_right):
            # no guards; the others read anywhere in the row (clipped), and are not updated
            take_more = at(inside(m - 1 - i)) < at(inside(m + (k - i)))  # L[i] < R[j - 1] with j = k + 1 - i
            lo = xp.where(active & take_more, i + 1, lo)
            hi = xp.where(active & ~take_more, i, hi)
        i = lo  # the k + 1 smallest are L[:i] and R[:k + 1 - i]; the next is the smaller of L[i] and R[k + 1 - i]
        neg = -inf
        a = xp.where(i > 0, left(i - 1), neg)
        b = xp.where(k + 1 - i > 0, right(k - i), neg)
        return xp.reshape(xp.maximum(a, b), (R, 1)), xp.reshape(xp.minimum(left(i), right(k + 1 - i)), (R, 1))

    found: dict[int, Array] = {}

    def column(p: int) -> Array:  # the middle two of an even row from one search
        if p not in found:
            found[p], found[p + 1] = kth(p)
        return found[p]

    return median_columns(K, column)


class FlatReads(NamedTuple):
    """Sorted rows (R, K) read at flat offsets: sorted position p of row r is ``fetch(base[r] + step * p)`` (``step``
    1, or (R,) of +1 and -1: a row read backwards), for an (R,) array of offsets, one per row, in float64. An offset
    outside a row's own must read without error (anything: a clipped ``take``), so a search never masks its reads.
    :func:`flat_rows` makes it for C-contiguous numpy rows."""

    fetch: Callable[[np.ndarray], np.ndarray]
    base: np.ndarray
    step: Any


class FlatReader:
    """A ``read(p)`` of :class:`~ssa.core.interfaces.SupportsSearchedCuts` that also has its rows at flat offsets,
    :attr:`flat_reads` (:class:`FlatReads`): a selector's searches may read them so (``flat=`` of
    :func:`count_below_read` and :func:`median_of_v_read`: the same reads, fewer passes)."""

    def __init__(self, read: Callable[[Any], Any], flat_reads: FlatReads) -> None:
        self._read = read
        self.flat_reads = flat_reads

    def __call__(self, p: Any) -> Any:
        return self._read(p)


def flat_rows(rows: np.ndarray) -> FlatReads:
    """:class:`FlatReads` of C-contiguous sorted numpy rows (R, K): one clipped ``take`` per read."""
    flat = rows.reshape(-1)
    return FlatReads(lambda at: flat.take(at, mode="clip"), np.arange(rows.shape[0], dtype=np.int64) * rows.shape[1],
                     1)


def _kth_flat(rows: FlatReads, m: np.ndarray, c: np.ndarray, k: int, lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
    """The search of :func:`median_of_v_read`'s ``kth`` over rows read at flat offsets, with a centre ``c`` (R,): the
    final ``lo`` (R,). The same halvings and the same reads in the rows still searching, in about half the passes:
    offsets made once per search, a read one ``fetch``, and a settled row (``lo == hi``) left as it is without a
    mask, since there ``i = lo`` and ``min(i + 1, hi) = hi``: ``lo`` and ``hi`` keep their values whatever the
    comparison gives (and whatever it read)."""
    step = rows.step
    left_at = rows.base + step * (m - 1)  # L[i] = |s[m - 1 - i] - c|
    right_at = rows.base + step * (m + k)  # R[k - i] = |s[m + k - i] - c|
    # a halving leaves at most half of a row's width hi - lo, so w.bit_length() of them settle a width w
    # (K.bit_length() + 1 in the plain form, whose later rounds change nothing)
    for _ in range(int(np.max(hi - lo)).bit_length() if lo.shape[0] else 0):
        i = (lo + hi) >> 1  # lo, hi >= 0: the floor of the mean, as // 2
        di = i if isinstance(step, int) and step == 1 else step * i
        a = rows.fetch(left_at - di)
        np.subtract(a, c, out=a)
        np.abs(a, out=a)
        b = rows.fetch(right_at - di)
        np.subtract(b, c, out=b)
        np.abs(b, out=b)
        take_more = a < b
        lo = np.where(take_more, np.minimum(i + 1, hi), lo)
        hi = np.where(take_more, hi, i)
    return lo


#: numpy counts by binary search in blocks of rows this long or longer, and this many values or more
SEARCH_MIN_COLUMNS = 512
SEARCH_MIN_VALUES = 1 << 18


def count_below_sorted(sorted_rows: Array, value: Array) -> Array:
    """``sum(sorted_rows < value, axis=1, keepdims=True)`` (R, 1) int64 of ascending-sorted rows (R, K) and values
    (R, 1). numpy, long rows: a binary search per row, vectorised over the rows (about log2 K gathers of R values,
    no pass over the rows); elsewhere the sum (one kernel on a device, no synchronisation)."""
    xp = array_namespace(sorted_rows)
    R, K = int(sorted_rows.shape[0]), int(sorted_rows.shape[1])
    # the search's fixed cost (about 0.2 ms) pays on long rows in large blocks (2-3x faster at 8,608 x 1,024)
    if not is_numpy_namespace(xp) or K < SEARCH_MIN_COLUMNS or R * K < SEARCH_MIN_VALUES:
        return xp.sum(sorted_rows < value, axis=1, keepdims=True, dtype=xp.int64)
    return count_below_read(_row_reader(sorted_rows), K, value)


def count_below_read(read: Callable[[np.ndarray], np.ndarray], n_columns: int, value: np.ndarray,
                     flat: FlatReads | None = None) -> np.ndarray:
    """:func:`count_below_sorted` of ascending-sorted numpy rows known only through ``read(idx)`` (the (R,) values at
    (R,) positions ``idx``): a binary search per row, vectorised over the rows. ``flat``: the same rows read at flat
    offsets (:class:`FlatReads`): the search reads them so (:func:`_count_below_flat`)."""
    K = int(n_columns)
    lo = np.zeros((int(value.shape[0]), 1), dtype=np.int64)
    if K == 0:
        return lo
    if flat is not None:
        return _count_below_flat(flat, K, value)
    hi = np.full(lo.shape, K, dtype=np.int64)
    for _ in range(K.bit_length() + 1):  # K + 1 possible answers: halved each round
        mid = (lo + hi) >> 1
        less = read(np.minimum(mid, K - 1)[:, 0])[:, None] < value
        active = lo < hi
        lo = np.where(active & less, mid + 1, lo)
        hi = np.where(active & ~less, mid, hi)
    return lo


def _count_below_flat(rows: FlatReads, K: int, value: np.ndarray) -> np.ndarray:
    """:func:`count_below_read`'s search over rows (R, K >= 1) read at flat offsets: the same halvings and the same
    reads in the rows still searching, in fewer passes (no mask: a settled row, ``lo == hi``, has ``mid = lo`` and
    ``min(mid + 1, hi) = hi``, so it keeps its bounds)."""
    R = int(value.shape[0])
    v = value.reshape(R)
    lo = np.zeros(R, dtype=np.int64)
    hi = np.full(R, K, dtype=np.int64)
    step = rows.step
    for _ in range(K.bit_length()):  # a halving leaves at most half of the width: K.bit_length() of them settle K
        mid = (lo + hi) >> 1
        less = rows.fetch(rows.base + (mid if isinstance(step, int) and step == 1 else step * mid)) < v
        lo = np.where(less, np.minimum(mid + 1, hi), lo)
        hi = np.where(less, hi, mid)
    return lo.reshape(R, 1)


def quantile_columns(n_columns: int, column: Callable[[int], Array], q: float) -> Array:
    """:func:`quantile_sorted` of rows known only through ``column(p)``, the (R, 1) values at sorted position
    ``p``: it reads at most two positions, so rows that are never built (a rank-1 step's) have quantiles."""
    K = int(n_columns)
    if K == 0:
        raise ValueError("quantile of an empty row")
    frac = float(np.true_divide(np.float64(q), 100))
    vi = float(np.float64(K - 1) * np.float64(frac))
    if vi >= K - 1 or vi < 0:  # numpy takes the last (first) value as it is
        return column(K - 1 if vi >= K - 1 else 0)
    lo = int(math.floor(vi))
    gamma = float(np.float64(vi) - np.float64(lo))
    a = column(lo)
    return _lerp(array_namespace(a), a, column(lo + 1), gamma)


def inverse_permutation(order: Array) -> Array:
    """Per row, the inverse of the permutation ``order`` (n, K): ``out[j, order[j, q]] = q``. A scatter on numpy
    and torch (the array API has none: an argsort elsewhere)."""
    xp = array_namespace(order)
    n, K = int(order.shape[0]), int(order.shape[1])
    if is_numpy_namespace(xp):
        out = np.empty((n, K), dtype=np.int64)
        np.put_along_axis(out, np.asarray(order), np.broadcast_to(np.arange(K, dtype=np.int64), (n, K)), axis=1)
        return out
    if is_torch_namespace(xp):
        import torch  # the arrays are torch tensors already

        src = torch.arange(K, dtype=torch.int64, device=order.device).expand(n, K)
        return torch.empty((n, K), dtype=torch.int64, device=order.device).scatter_(1, order.to(torch.int64), src)
    return xp.argsort(order, axis=1)


def count_at_most(positions: Array, include: Array, n_bins: int) -> Array:
    """``out[j, q] = #{i : include[j, i] and positions[j, i] <= q}`` for q < ``n_bins``, (n, n_bins) int64.

    ``positions`` (n, m) holds integers in [0, n_bins] (``n_bins``: beyond every bin). A histogram per row
    and a cumulative sum: numpy's bincount, torch's scatter_add (the array API has no scatter).
    """
    xp = array_namespace(positions)
    n = int(positions.shape[0])
    width = int(n_bins) + 1
    hist: Any
    if is_torch_namespace(xp):
        import torch  # the arrays are torch tensors already

        hist = torch.zeros((n, width), dtype=torch.int64, device=positions.device)
        hist.scatter_add_(1, positions.to(torch.int64), include.to(torch.int64))
    elif is_numpy_namespace(xp):
        flat = (np.arange(n, dtype=np.int64)[:, None] * width + np.asarray(positions, dtype=np.int64)).ravel()
        hist = np.bincount(flat[np.asarray(include, dtype=bool).ravel()], minlength=n * width).reshape(n, width)
    else:
        raise NotImplementedError(f"count_at_most: no scatter for {xp.__name__}")
    return xp.cumulative_sum(hist, axis=1)[:, :n_bins]


def step_counts(t: Array, up: Array, base: Array, order: Array) -> Array:
    """``out[j, order[j, q]] = base[j] + #{i : up[j, i], t[j, i] <= q} - #{i : not up[j, i], t[j, i] <= q}`` (n, K)
    int64: per row a step function of the sorted position q (K = ``order.shape[1]``; ``t`` (n, m) in [0, K]; ``base``
    (n, 1)) put back in the order of the lower neurons (a rank-1 step's outlier counts).

    The plain form (devices; the reference): two histograms, their cumulative sums and one scatter
    (:func:`count_at_most`, :func:`unpermute`). numpy: the step function's m + 1 pieces per row, and only the
    positions of pieces with a value other than 0 written into zeros (outliers are few: a small share of each row),
    the same integers at the same places."""
    xp = array_namespace(t)
    n, K = int(order.shape[0]), int(order.shape[1])
    if not is_numpy_namespace(xp):
        return unpermute(count_at_most(t, up, K) + (base - count_at_most(t, ~up, K)), order)
    # t and up sorted together as one key 2 t + up: among equal t the order is free, since the pieces between them
    # are empty (dropped below) and the value after the last of them counts them all
    key = np.sort(np.asarray(t, dtype=np.int64) * 2 + np.asarray(up, dtype=np.int64), axis=1)
    edges = np.zeros((n, t.shape[1] + 2), dtype=np.int64)  # 0, the sorted t, K: piece p is [edges[p], edges[p + 1])
    np.right_shift(key, 1, out=edges[:, 1:-1])
    edges[:, -1] = K
    values = np.empty((n, t.shape[1] + 1), dtype=np.int64)
    values[:, :1] = base
    key &= 1
    key *= 2
    key -= 1  # +1 up, -1 not
    np.cumsum(key, axis=1, out=values[:, 1:])
    values[:, 1:] += base
    lengths = np.diff(edges, axis=1)
    keep = (values != 0) & (lengths > 0)
    lengths, values = lengths[keep], values[keep]
    rows = np.nonzero(keep)[0] * K
    ends = np.cumsum(lengths)
    # the positions of the kept pieces, one run per piece: q = start + (index in the run)
    q = np.arange(int(ends[-1]) if ends.shape[0] else 0, dtype=np.int64)
    q += np.repeat(edges[:, :-1][keep] - (ends - lengths), lengths)
    at = np.repeat(rows, lengths)
    out = np.zeros((n, K), dtype=np.int64)
    out.reshape(-1)[at + np.asarray(order).reshape(-1).take(at + q)] = np.repeat(values, lengths)
    return out


def percentile_rows(rows: Array, qs: tuple[float, ...]) -> list[Array]:
    """Several percentiles of every row (one sort), each (R, 1); see :func:`quantile_sorted`."""
    xp = array_namespace(rows)
    s = xp.sort(rows, axis=1, stable=False)  # values only
    return [quantile_sorted(s, q) for q in qs]


def median_sorted(sorted_rows: Array) -> Array:
    """``numpy.median(rows, axis=1, keepdims=True)`` of ascending-sorted rows, bit for bit (torch, even rows: the mean
    of the middle two columns, one kernel: their sum halved, as numpy's)."""
    K = int(sorted_rows.shape[1])
    if K % 2 == 0 and K and is_torch_namespace(array_namespace(sorted_rows)):
        return sorted_rows[:, K // 2 - 1:K // 2 + 1].mean(dim=1, keepdim=True)
    return median_columns(K, lambda p: sorted_rows[:, p:p + 1])


def median_rows(rows: Array) -> Array:
    """``numpy.median(rows, axis=1, keepdims=True)`` (R, 1) of unsorted rows, bit for bit: numpy partitions at the
    middle; torch selects the middle value of odd rows (``kthvalue``) and sorts even ones, taking the mean of the
    middle two (on a device a fixed number of kernels, no synchronisation); other libraries sort. Each gives exactly
    the values a sort puts in the middle."""
    xp = array_namespace(rows)
    K = int(rows.shape[1])
    mid = [K // 2] if K % 2 else [K // 2 - 1, K // 2]
    if is_numpy_namespace(xp):
        part = np.partition(rows, mid, axis=1)
        return median_columns(K, lambda p: part[:, p:p + 1])
    if is_torch_namespace(xp) and K % 2:
        return rows.kthvalue(K // 2 + 1, dim=1, keepdim=True).values
    return median_sorted(xp.sort(rows, axis=1, stable=False))


def median_columns(n_columns: int, column: Callable[[int], Array]) -> Array:
    """:func:`median_sorted` of rows known only through ``column(p)``, the (R, 1) values at sorted position ``p``
    (the middle one, or the mean of the middle two as numpy takes it)."""
    K = int(n_columns)
    if K % 2:
        return column(K // 2)
    return (column(K // 2 - 1) + column(K // 2)) / 2.0


def mean_abs_rows(rows: np.ndarray, center: np.ndarray, which: np.ndarray, chunk_bytes: int = 256 << 10
                  ) -> np.ndarray:
    """``mean(|rows - center|, axis=1, keepdims=True)`` (R, 1) of numpy rows (R, K) for the rows where ``which``
    (R, 1) holds, 0 elsewhere, in chunks of about ``chunk_bytes`` that stay in the cache (gathered into one
    buffer, ``|. - center|`` in place, averaged). A row's mean is numpy's whatever the chunk: numpy reduces each
    contiguous row on its own."""
    out = np.zeros((rows.shape[0], 1), dtype=rows.dtype)
    idx_all = np.nonzero(np.asarray(which)[:, 0])[0]
    if not idx_all.shape[0]:
        return out
    step = max(1, chunk_bytes // max(1, rows.shape[1] * rows.itemsize))
    buf = np.empty((min(step, idx_all.shape[0]), rows.shape[1]), dtype=rows.dtype)
    for i in range(0, idx_all.shape[0], step):
        idx = idx_all[i:i + step]
        part = buf[:idx.shape[0]]
        np.take(rows, idx, axis=0, out=part)
        np.subtract(part, center[idx], out=part)
        out[idx] = np.mean(np.abs(part, out=part), axis=1, keepdims=True)
    return out
