"""Score-threshold labels as cuts: which values of a row have ``(x - center) / scale`` beyond ``+-t``.

MAD and z-score label a value by its score ``z = fl(fl(x - center) / scale)``. Each rounding is monotone, so for
``scale > 0`` the score never decreases as ``x`` grows, and each label is a cut of the row: ``z > t`` iff
``x >= first_above`` and ``z < -t`` iff ``x < first_not_below``, where ``first_*`` are the smallest doubles whose
score passes. On the CPU (numpy), for long rows, the two cuts are found per row by bisection over the doubles in
their order (64 halvings of (R, 1) integer keys), and a row is labelled by two comparisons instead of a
subtraction, a division and two comparisons of every value: the same labels, bit for bit
(``tests/test_selector_forms.py`` checks them against the plain scores on random rows, tied rows and values on
the threshold). On a device, and for short rows or small blocks where the bisection's fixed cost would dominate,
the scores are computed (:func:`plain_beyond`).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ssa.core.arrays import is_numpy

__all__ = ["beyond", "plain_beyond", "score_cuts", "CUT_FORM_MIN_COLUMNS", "CUT_FORM_MIN_VALUES"]

#: numpy blocks of rows this long or longer, and this many values or more, use the cuts: the bisection costs about
#: 2,000 operations on (R, 1) arrays, so it pays where each row is long and the block large (measured on the 2-core
#: CPU: MAD 10-30 % and z-score 5-25 % faster on rows of 1,024-4,096; 2-3x slower on rows of 64)
CUT_FORM_MIN_COLUMNS = 1024
CUT_FORM_MIN_VALUES = 1 << 20
_MAGNITUDE = np.int64(0x7FFF_FFFF_FFFF_FFFF)
_SIGN = np.int64(-0x8000_0000_0000_0000)


def plain_beyond(xp: Any, safe: Any, center: Any, scale: Any, ok: Any, t: float,
                 lower: bool = True) -> tuple[Any, Any]:
    """``(z > t, z < -t)`` of every value, ``z = (safe - center) / scale``, in rows where ``ok`` (R, 1) (none
    elsewhere): the plain form. Without ``lower`` the second is None (a one-sided selector never reads it)."""
    z = (safe - center) / xp.where(ok, scale, xp.ones_like(scale))
    return (z > t) & ok, ((z < -t) & ok if lower else None)


def beyond(xp: Any, safe: Any, center: Any, scale: Any, ok: Any, t: float, lower: bool = True) -> tuple[Any, Any]:
    """:func:`plain_beyond`, by cuts on numpy for large blocks (the same labels)."""
    if not is_numpy(xp) or safe.shape[1] < CUT_FORM_MIN_COLUMNS or safe.size < CUT_FORM_MIN_VALUES:
        return plain_beyond(xp, safe, center, scale, ok, t, lower)
    one = np.where(ok, scale, 1.0)
    every = bool(ok.all())  # every row has a spread: no mask to apply (a pass less over each label array)
    with np.errstate(over="ignore", invalid="ignore"):
        above = _first(lambda x: (x - center) / one > t, safe.shape[0])
        pos = safe >= above if every else (safe >= above) & ok
        if not lower:
            return pos, None
        not_below = _first(lambda x: (x - center) / one >= -t, safe.shape[0])
    return pos, (safe < not_below if every else (safe < not_below) & ok)


def score_cuts(center: np.ndarray, scale: np.ndarray, ok: np.ndarray, t: float, lower: bool = True
               ) -> tuple[np.ndarray, np.ndarray | None]:
    """:func:`plain_beyond`'s labels as two cut values per row, numpy (R, 1) each: ``z > t`` iff ``x > hi`` and
    ``z < -t`` iff ``x < lo`` (``lo`` None without ``lower``), for every double ``x``, in the rows where ``ok``
    holds (the caller decides the others: the values there are meaningless). ``hi`` is the double just below
    the first that passes (:func:`_first`), so ``x > hi`` iff ``x >= first_above``."""
    one = np.where(ok, scale, 1.0)
    rows = int(center.shape[0])
    with np.errstate(over="ignore", invalid="ignore"):
        above = _first(lambda x: (x - center) / one > t, rows, key=True, guess=center + t * one)
        hi = _double(above - 1)  # above the key of -inf: -inf at the lowest
        lo = _first(lambda x: (x - center) / one >= -t, rows, guess=center - t * one) if lower else None
    return hi, lo


def _key(x: np.ndarray) -> np.ndarray:
    """Integers in the order of the doubles ``x`` (-0.0 and 0.0 the same)."""
    bits = x.view(np.int64)
    return np.where(bits >= 0, bits, -(bits & _MAGNITUDE))


def _double(key: np.ndarray) -> np.ndarray:
    return np.where(key >= 0, key, (-key) | _SIGN).view(np.float64)


def _first(passes: Any, rows: int, key: bool = False, guess: np.ndarray | None = None) -> np.ndarray:
    """Per row, the smallest double ``x`` (R, 1) with ``passes(x)`` True, for a ``passes`` that never turns False as
    ``x`` grows, False at -inf and True at +inf (a score of a finite centre over a positive finite scale); with
    ``key``, its integer key (:func:`_key`) instead. ``guess`` (R, 1): where the answer should be within a few
    doubles (the cut computed directly: a rounding or two away); when ``passes`` is False :data:`_NEAR` doubles
    below it and True as many above in every row, the search starts there (7 halvings instead of 64), else from
    the whole range. Either way the search keeps False below and True above, so the answer is the same."""
    lo = np.full((rows, 1), _KEY_NEG_INF)  # passes(lo) is False
    hi = np.full((rows, 1), _KEY_POS_INF)  # passes(hi) is True
    rounds = 64  # the keys span less than 2**64: 64 halvings leave hi = lo + 1
    if guess is not None and rows:
        g = _key(np.where(np.isnan(guess), 0.0, guess))
        found = _first_near(passes, g, _DIRECT) if _DIRECT else None
        if found is not None:
            return found if key else _double(found)
        near_lo = np.maximum(g - _NEAR, _KEY_NEG_INF)
        near_hi = np.minimum(g + _NEAR, _KEY_POS_INF)
        if not passes(_double(near_lo)).any() and passes(_double(near_hi)).all():
            lo, hi, rounds = near_lo, near_hi, int(2 * _NEAR).bit_length()
    for _ in range(rounds):
        mid = (lo >> 1) + (hi >> 1) + (lo & hi & 1)  # the floor of the mean, without overflow
        yes = passes(_double(mid))
        hi = np.where(yes, mid, hi)
        lo = np.where(yes, lo, mid)
    return hi if key else _double(hi)


def _first_near(passes: Any, g: np.ndarray, d: int) -> np.ndarray | None:
    """:func:`_first`'s key where every row's answer lies within ``d`` doubles of its guess key ``g`` (R, 1), else
    None: ``passes`` read at the 2d + 1 doubles around ``g`` (no search); False at the lowest and True at the highest
    in every row brackets the answer, the first double that passes, found as the count of those that pass (they are
    a suffix: ``passes`` never turns False as ``x`` grows). Measured on a ResNet-50 class, MAD's cuts lie -1 to 2
    doubles from the directly computed cut."""
    if g.shape[0] and (g.min() - d < _KEY_NEG_INF or g.max() + d > _KEY_POS_INF):
        return None
    if passes(_double(g - d)).any():
        return None
    top = passes(_double(g + d))
    if not top.all():
        return None
    n_pass = top.astype(np.int64)
    for off in range(-d + 1, d):
        n_pass += passes(_double(g + off))
    return g + (d + 1 - n_pass)


_KEY_NEG_INF = _key(np.array([-np.inf]))[0]
_KEY_POS_INF = _key(np.array([np.inf]))[0]
#: how many doubles either side of a guess the search first tries
_NEAR = 64
#: before any search: the answer read directly among the doubles this close to the guess (0: never)
_DIRECT = 2
