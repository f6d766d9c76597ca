"""The top-b ranking of a step on the host, over the lower neurons that qualify only.

:func:`ssa.core.traversal.top_b` ranks every row of (n, K) counts and means: by count (desc), then the key (the mean,
desc for positive edges; its negation for negative ones), then the index. Only neurons with count > 0 qualify, and
outliers are few per row, so on the host the qualifying entries are gathered (one pass to find them) and sorted by
(row, -count, -key, index): a few thousand values instead of passes over every row for each of the b ranks.
"""

from __future__ import annotations

import numpy as np

__all__ = ["top_b_qualifying", "SPARSE_SHARE"]

#: the gather and sort pay while at most this share of the entries qualify (else the row passes are used)
SPARSE_SHARE = 0.25


def top_b_qualifying(counts: np.ndarray, key: np.ndarray, b: int) -> tuple[np.ndarray, np.ndarray] | None:
    """``(lower, valid)`` (n, b) as :func:`~ssa.core.traversal.top_b` gives them (b <= K), from the entries with
    count > 0 only; None when more than :data:`SPARSE_SHARE` of them qualify. ``key + 0.0`` makes -0.0 and 0.0 one
    key, as the comparisons of :func:`~ssa.core.traversal.rank_neurons` see them."""
    n, K = counts.shape
    flat = np.flatnonzero(counts > 0)  # by row, then index
    if flat.shape[0] > SPARSE_SHARE * n * K:
        return None
    j, k = np.divmod(flat, K)
    c = counts.reshape(-1).take(flat)
    m = key.reshape(-1).take(flat) + 0.0
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
