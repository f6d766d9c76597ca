"""A rank-1 step's rows read on the host without being built (numpy; :func:`ssa.core.traversal._accumulate_rank1`).

Row (j, i) of a rank-1 step is ``g(vec[j])`` with ``g(v) = ((v * coeff[j, i]) * scale) * fed[j]``, monotone in v, so
in the order of ``vec[j]`` sorted its values are monotone too (non-decreasing where ``coeff[j, i] >= 0``,
non-increasing below). :class:`HostRank1` reads them there:

* a sorted column (every row's value at one sorted position, what a selector's sorted cuts read) from 2 n values of
  ``vec`` (the position and its mirror, for the rows whose coefficient is negative), not n * B gathers;
* the boundary where a row's values cross a cut (the first position of vec's sorted order where a monotone
  comparison holds) without a bisection of every row. Within a row only ``coeff[j, i]`` differs between the images:
  the values are vec's scaled by it, and a selector's cuts (order statistics, their differences and multiples) scale
  with them, so the images of a row whose coefficients have one sign cross their cuts at the same position up to
  rounding. One image per row and sign is searched, every other image of the row checks that position with two
  reads (its own values, compared exactly as the rows hold them), and only the images where it is not theirs are
  searched. :meth:`HostRank1.first_plain` bisects every row, the reference (``tests/test_rank1_counts.py``).
"""

from __future__ import annotations

from typing import Any

import numpy as np

__all__ = ["HostRank1"]


class HostRank1:
    """The rows ``((vec[j, order[j, q]] * coeff[j, i]) * scale) * mask[j]`` of a rank-1 step (n, B), read by their
    position q in the order of ``vec[j]`` sorted (``order`` (n, K) sorts each row ascending), numpy arrays.

    ``sv`` (optional): vec's rows sorted (``vec[j, order[j]]``), when the caller has them (one read instead of two);
    ``ones``: every mask is 1, so no product by it (x * 1.0 is x).
    """

    def __init__(self, coeff: np.ndarray, vec: np.ndarray, order: np.ndarray, scale: float, mask: np.ndarray,
                 ones: bool, sv: np.ndarray | None = None) -> None:
        self.coeff, self.scale, self.mask, self.ones = coeff, scale, mask, ones
        self.n, self.b = coeff.shape
        self.K = int(vec.shape[1])
        self.down = coeff < 0  # rows whose values fall along vec's sorted order
        self._sv = None if sv is None else np.ascontiguousarray(sv).reshape(-1)
        self._vec = np.ascontiguousarray(vec).reshape(-1)
        self._order = np.ascontiguousarray(order).reshape(-1)
        self._rows = np.arange(self.n, dtype=np.int64) * self.K  # each row's start in the flat arrays

    def _vec_at(self, start: Any, q: Any) -> Any:
        """vec's values at positions ``q`` of their rows' sorted order (``start``: the rows' flat starts)."""
        if self._sv is not None:
            return self._sv.take(start + q)
        return self._vec.take(self._order.take(start + q) + start)

    def _values(self, v: Any, coeff: Any, mask: Any) -> Any:
        out = (v * coeff) * self.scale
        return out if self.ones else out * mask

    def at(self, q: Any) -> Any:
        """(n, B) positions of vec's sorted order -> the rows' values there."""
        return self._values(self._vec_at(self._rows[:, None], q), self.coeff, self.mask)

    def at_position(self, q: int) -> Any:
        """The rows' values (n, B) at one position q of vec's sorted order (n reads of vec)."""
        return self._values(self._vec_at(self._rows, q)[:, None], self.coeff, self.mask)

    def sorted_column(self, p: int) -> Any:
        """The rows' values (n, B) at position p of each row sorted ascending: position p of vec's sorted order where
        the coefficient is >= 0, K - 1 - p where it is negative."""
        a = self._vec_at(self._rows, p)[:, None]
        v = a if p == self.K - 1 - p else np.where(self.down, self._vec_at(self._rows, self.K - 1 - p)[:, None], a)
        return self._values(v, self.coeff, self.mask)

    def first(self, cut: np.ndarray, above: bool, invert: np.ndarray, ends: tuple[np.ndarray, np.ndarray]
              ) -> np.ndarray:
        """Per (row, image), the first position t in [0, K] of vec's sorted order where ``flips`` holds, (n, B) int64:
        ``flips(q) = (value(q) > cut if above else value(q) < cut) != invert``, False before t and True from t on
        (monotone: the caller's predicate follows the row's direction). ``ends``: the values at positions 0 and
        K - 1. The same t as :meth:`first_plain`."""
        K = self.K
        f0, fk = _flips(ends[0], cut, above, invert), _flips(ends[1], cut, above, invert)
        t = np.where(f0, 0, K)
        active = fk & ~f0  # the rest: t = 0 (flips everywhere) or K (nowhere)
        if K < 2 or not active.any():
            return t
        # one image per row and sign of its coefficient searched (the first active one), in one search
        picks = [active & ~self.down, active & self.down]
        rows = [np.flatnonzero(p.any(axis=1)) for p in picks]
        reps = np.concatenate([r * self.b + p[r].argmax(axis=1) for r, p in zip(rows, picks, strict=True)])
        found = self._search(reps, cut, above, invert)
        per_row = np.ones((2, self.n), dtype=np.int64)  # in [1, K - 1]: read below at guess - 1 and guess
        per_row[0, rows[0]] = found[:rows[0].shape[0]]
        per_row[1, rows[1]] = found[rows[0].shape[0]:]
        guess = np.where(self.down, per_row[1][:, None], per_row[0][:, None])
        ok = _flips(self.at(guess), cut, above, invert)
        ok &= ~_flips(self.at(guess - 1), cut, above, invert)
        t = np.where(active, guess, t)
        wrong = np.flatnonzero(active & ~ok)
        if wrong.shape[0]:
            t.reshape(-1)[wrong] = self._search(wrong, cut, above, invert)
        return t

    def _search(self, idx: np.ndarray, cut: np.ndarray, above: bool, invert: np.ndarray) -> np.ndarray:
        """:meth:`first` of the flat entries ``idx`` of (n, B), each with ``flips`` False at 0 and True at K - 1: t
        counts the positions where it is False, found by adding the powers of two below K that keep it False at
        ``t + s - 1`` (largest first), one read per power."""
        K, b = self.K, self.b
        j = idx // b
        start = self._rows.take(j)
        coeff, c, inv = self.coeff.reshape(-1).take(idx), cut.reshape(-1).take(idx), invert.reshape(-1).take(idx)
        mask = None if self.ones else self.mask.reshape(-1).take(j)
        t = np.zeros(idx.shape[0], dtype=np.int64)
        steps = (K - 1).bit_length()  # 2 ** steps >= K: the sum of the powers covers every t in [1, K - 1]
        clamp = (1 << steps) - 2 > K - 1  # positions past K - 1 are read there (flips holds: t does not move)
        for e in range(steps - 1, -1, -1):
            s = 1 << e
            q = t + (s - 1)
            if clamp:
                np.minimum(q, K - 1, out=q)
            np.add(t, s, out=t, where=~_flips(self._values(self._vec_at(start, q), coeff, mask), c, above, inv))
        return t

    def first_plain(self, cut: np.ndarray, above: bool, invert: np.ndarray) -> np.ndarray:
        """:meth:`first` by a bisection of [0, K] on every row (the reference)."""
        K = self.K
        low, high = np.zeros((self.n, self.b), dtype=np.int64), np.full((self.n, self.b), K, dtype=np.int64)
        for _ in range(K.bit_length()):
            mid = (low + high) // 2
            c = _flips(self.at(np.minimum(mid, K - 1)), cut, above, invert)
            low = np.where(c, low, np.minimum(mid + 1, high))
            high = np.where(c, mid, high)
        return low


def _flips(v: Any, cut: Any, above: bool, invert: Any) -> Any:
    return (v > cut if above else v < cut) != invert
