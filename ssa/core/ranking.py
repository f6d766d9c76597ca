"""Ranking a step's lower neurons (method doc, section 3, STEPs 3-4) and bringing the winners to the host.

:func:`rank_neurons` is the plainly written definition for one row; :func:`top_b` does every row at once on the
arrays' device; :func:`step_winners` gives a step's winners per sign on the host in one copy (on a device the
step's one synchronisation). On a device the ranking is a fixed number of kernels whatever ``b``: one stable sort
by mean relevance, then the b largest of one integer key per neuron, ``count * K + (K - 1 - position in that
order)``, which orders by count, then mean, then index, with no ties (so ``topk`` is exact); the count comes back
inside the key (``key // K``). On the host, where outliers are few per row, :func:`top_b_qualifying` gathers the
entries with count > 0 (one pass to find them) and sorts them by (row, -count, -key, index): a few thousand values
instead of passes over every row for each of the b ranks.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from array_api_compat import is_torch_namespace

from ssa.core.arrays import device_of, is_numpy, namespace, take_along, to_numpy

__all__ = ["rank_neurons", "top_b", "top_b_qualifying", "step_winners", "Winners", "SPARSE_SHARE", "ROUNDS_MAX_B"]

#: per sign: (row j, rank r, lower neuron, count, mean relevance), each (m,) on the host, ordered by (j, r)
Winners = tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]


def rank_neurons(counts: np.ndarray, mean: np.ndarray, b: int, sign: int = 1) -> list[int]:
    """The first ``b`` neurons by count (desc), then mean relevance (desc; asc for sign -1), then index.

    Only neurons with count > 0 qualify (method doc, section 3, STEPs 3-4). This is the
    plainly written definition for one row; :func:`top_b` does every row at once.
    """
    k = np.arange(counts.shape[0])
    key_mean = -mean if sign > 0 else mean
    order = np.lexsort((k, key_mean, -counts))
    return [int(i) for i in order[:b] if counts[i] > 0]


def top_b(counts: Any, mean: Any, b: int, sign: int = 1) -> tuple[Any, Any]:
    """:func:`rank_neurons` for every row of (n, K) arrays at once, on their device.

    Returns ``(lower, valid)``, both (n, b'): the r-th ranked lower neuron of each row, and
    whether it qualifies (count > 0). b' = min(b, K).
    """
    xp = namespace(counts, mean)
    K = int(counts.shape[1])
    if not is_numpy(xp):
        lower, key = _ranked(xp, counts, mean, min(int(b), K), sign)
        return lower, key >= K
    return _top_b_host(counts, mean, b, sign)


def _top_b_host(counts: np.ndarray, mean: np.ndarray, b: int, sign: int) -> tuple[np.ndarray, np.ndarray]:
    """numpy: the qualifying entries sorted while they are few (:func:`top_b_qualifying`), else b passes of row maxima
    (faster than sorting the rows on the host for the small b of a traversal)."""
    n, K = counts.shape
    b = min(int(b), int(K))
    key = mean if sign > 0 else -mean
    few = top_b_qualifying(counts, key, b) if b > 0 else None  # the qualifying entries only, when they are few
    if few is not None:
        return few
    cols = np.arange(K).reshape(1, K)
    cnt = np.where(counts > 0, counts, -1)
    lows, valids = [], []
    for _ in range(b):
        cmax = np.max(cnt, axis=1, keepdims=True)
        m1 = (cnt == cmax) & (cnt > 0)
        kmax = np.max(np.where(m1, key, -np.inf), axis=1, keepdims=True)
        m2 = m1 & (key == kmax)
        # the smallest index among the remaining ties: the first True
        first = np.min(np.where(m2, cols, K), axis=1, keepdims=True)
        valid = first < K
        lows.append(np.where(valid, first, 0))
        valids.append(valid)
        cnt = np.where(cols == first, -1, cnt)
    if not lows:
        return np.zeros((n, 0), np.int64), np.zeros((n, 0), bool)
    return np.concatenate(lows, axis=1), np.concatenate(valids, axis=1)


#: the gather and sort pay while at most this share of the entries qualify (else the row passes are used)
SPARSE_SHARE = 0.25


def top_b_qualifying(counts: np.ndarray, key: np.ndarray, b: int) -> tuple[np.ndarray, np.ndarray] | None:
    """``(lower, valid)`` (n, b) as :func:`top_b` gives them (b <= K), from the entries with
    count > 0 only; None when more than :data:`SPARSE_SHARE` of them qualify. ``key + 0.0`` makes -0.0 and 0.0 one
    key, as the comparisons of :func:`rank_neurons` sees them."""
    n, K = counts.shape
    flat = np.flatnonzero(counts > 0)  # by row, then index
    if flat.shape[0] > SPARSE_SHARE * n * K:
        return None
    j, k = np.divmod(flat, K)
    c = counts.reshape(-1).take(flat)
    m = key.reshape(-1).take(flat) + 0.0
    if b <= ROUNDS_MAX_B and not np.isnan(m).any():  # NaN keys: the sort's order (last), not a maximum's
        return _top_b_rounds(j, k, c, m, n, K, b)
    return _top_b_sorted(j, k, c, m, n, b)


#: up to this b, the qualifying entries are ranked by b rounds of per-row maxima (a few passes over them each),
#: beyond it by one sort
ROUNDS_MAX_B = 8


def _top_b_sorted(j: np.ndarray, k: np.ndarray, c: np.ndarray, m: np.ndarray, n: int, b: int
                  ) -> tuple[np.ndarray, np.ndarray]:
    """:func:`top_b_qualifying` of the entries (row j, index k, count c, key m), by row then index, by one sort (the
    plain form)."""
    # the last key sorts first: row, then count desc (one integer key), then key desc; the sort is stable, so ties
    # keep the index order
    order = np.lexsort((-m, j * (int(c.max(initial=0)) + 1) - c))
    per_row = np.bincount(j, minlength=n)
    start = np.cumsum(per_row) - per_row
    js, ks = j[order], k[order]
    rank = np.arange(js.shape[0]) - start[js]
    keep = rank < b
    lower = np.zeros((n, b), dtype=np.int64)
    valid = np.zeros((n, b), dtype=bool)
    lower[js[keep], rank[keep]] = ks[keep]
    valid[js[keep], rank[keep]] = True
    return lower, valid


def _top_b_rounds(j: np.ndarray, k: np.ndarray, c: np.ndarray, m: np.ndarray, n: int, K: int, b: int
                  ) -> tuple[np.ndarray, np.ndarray]:
    """:func:`_top_b_sorted`'s result (keys without NaN) in b rounds: per row, the entries of the largest count, of
    those the largest key, of those the smallest index, which then leaves the race. Entries come by row, so a row's
    entries are one run and each maximum one ``reduceat``."""
    lower = np.zeros((n, b), dtype=np.int64)
    valid = np.zeros((n, b), dtype=bool)
    if not j.shape[0]:
        return lower, valid
    new_row = np.empty(j.shape[0], dtype=bool)
    new_row[0] = True
    np.not_equal(j[1:], j[:-1], out=new_row[1:])
    starts = np.flatnonzero(new_row)
    run = np.cumsum(new_row) - 1  # each entry's run
    rows = j[starts]
    c = c.copy()  # a winner's count becomes 0: out of the later rounds
    for r in range(b):
        most = np.maximum.reduceat(c, starts)
        live = most > 0
        if not live.any():
            break
        best = c == most[run]  # in live rows (most > 0): never a winner of an earlier round
        best &= m == np.maximum.reduceat(np.where(best, m, -np.inf), starts)[run]
        first = np.minimum.reduceat(np.where(best, k, K), starts)
        lower[rows[live], r] = first[live]
        valid[rows[live], r] = True
        c[best & (k == first[run])] = 0
    return lower, valid


_REVERSED: dict[tuple[int, str], Any] = {}


def _reversed_positions(xp: Any, K: int, like: Any) -> Any:
    """``[K - 1, ..., 1, 0]`` int64 on ``like``'s device, made once per width and device."""
    key = (K, str(device_of(like)))
    out = _REVERSED.get(key)
    if out is None:
        if len(_REVERSED) > 256:
            _REVERSED.clear()
        out = _REVERSED[key] = xp.arange(K - 1, -1, -1, dtype=xp.int64, device=device_of(like))
    return out


def _ranked(xp: Any, counts: Any, mean: Any, b: int, sign: int) -> tuple[Any, Any]:
    """``(lower, key)`` (n, b) of device arrays: the ranked lower neurons and their keys ``count * K + (K - 1 - q)``,
    q the neuron's position in the stable order by mean (descending for sign +1). ``0.0 - mean`` and ``mean + 0.0``
    make -0.0 and 0.0 one key, as the comparisons of :func:`rank_neurons` see them (a radix sort would not), and
    leave NaN last, as numpy's sort does."""
    K = int(counts.shape[1])
    keyed = (0.0 - mean) if sign > 0 else (mean + 0.0)
    rev = _reversed_positions(xp, K, counts)
    if is_torch_namespace(xp):  # tensors: one sort, one fused multiply-add, the b largest keys (they never tie)
        by_mean = keyed.sort(dim=1, stable=True).indices
        key = rev.add(counts.gather(1, by_mean), alpha=K)
        top = key.topk(b, dim=1)
        return by_mean.gather(1, top.indices), top.values
    by_mean = xp.argsort(keyed, axis=1, stable=True)  # other libraries: a second stable sort instead
    key = take_along(counts, by_mean, 1) * K + rev
    by_key = xp.argsort(-key, axis=1, stable=True)[:, :b]
    return take_along(by_mean, by_key, 1), take_along(key, by_key, 1)


def step_winners(pos: Any, neg: Any, mean: Any, b: int, two_sided: bool, flag: Any = None
                 ) -> tuple[list[Winners], int]:
    """The kept edges of a step, per sign (+1, then -1 when ``two_sided``), on the host, and the value of ``flag``
    (a 0-d integer array on the device: a count of bad labels; 0 when None), brought back together in one copy."""
    xp = namespace(mean)
    K = int(mean.shape[1])
    b = min(int(b), K)
    signs = [(1, pos)] + ([(-1, neg)] if two_sided else [])
    if is_numpy(xp):
        out = []
        for sign, counts in signs:
            low, valid = _top_b_host(counts, mean, b, sign)
            j, r = np.nonzero(valid)
            lw = low[j, r]
            out.append((j, r, lw, counts[j, lw].astype(np.int64), mean[j, lw].astype(np.float64)))
        return out, 0 if flag is None else int(flag)
    ints, floats = [], []
    for sign, counts in signs:
        lower, key = _ranked(xp, counts, mean, b, sign)
        ints += [lower, key]
        floats.append(take_along(mean, lower, 1))
    n = int(mean.shape[0])
    # one float64 array (indices and keys are exact there): torch's concatenation converts them itself
    cols = ints if is_torch_namespace(xp) else [xp.astype(c, xp.float64) for c in ints]
    cols = cols + floats
    if flag is not None:
        cols.append(flag.expand(n, 1) if is_torch_namespace(xp) else
                    xp.zeros((n, 1), dtype=xp.float64, device=device_of(mean)) + xp.astype(flag, xp.float64))
    host = np.asarray(to_numpy(xp.concat(cols, axis=1)), dtype=np.float64)
    values = host[:, len(ints) * b:(len(ints) + len(floats)) * b]
    bad = int(host[0, -1]) if flag is not None and n else 0
    out = []
    for i in range(len(signs)):
        lower_h = host[:, 2 * i * b:(2 * i + 1) * b].astype(np.int64)
        key_h = host[:, (2 * i + 1) * b:(2 * i + 2) * b].astype(np.int64)
        cnt = key_h // K if K else key_h
        j, r = np.nonzero(cnt > 0)
        out.append((j, r, lower_h[j, r], cnt[j, r], values[:, i * b:(i + 1) * b][j, r]))
    return out, bad
