"""MAD's and z-score's fast forms label as the plain textbook formulas do, bit for bit, on random and on tied rows
(issue 20, item 5). Ties are where order-statistic shortcuts break: ties at the median, more than half of a row
equal (MAD = 0, the mean-absolute-deviation fallback), constant rows, integer-valued rows, values exactly on
the threshold.

The fast forms: numpy sorts each row once and reads both medians off the sorted row (the second from its two
monotone runs, ``median_of_v_rows``); torch selects the middle values (``kthvalue``); either may be given the
sorted rows (``select_sorted``). Both MAD and z-score label large numpy blocks by exact cuts on the values
(``ssa_selectors.cuts``) instead of computing every score: forced here on small rows ("cuts"), and off ("plain").
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from ssa_selectors import cuts

from ssa.core.arrays import device_path
from ssa.plugins import make_selector


@pytest.fixture(params=["plain", "cuts"])
def label_form(request, monkeypatch):
    """The numpy labels by scores ("plain") or by cuts ("cuts", whatever the block's size)."""
    if request.param == "cuts":
        monkeypatch.setattr(cuts, "CUT_FORM_MIN_COLUMNS", 0)
        monkeypatch.setattr(cuts, "CUT_FORM_MIN_VALUES", 0)
    else:
        monkeypatch.setattr(cuts, "CUT_FORM_MIN_COLUMNS", 1 << 62)
    return request.param


def plain_mad(rows: np.ndarray, threshold: float, two_sided: bool) -> np.ndarray:
    """The modified z-score as written in MADSelector's docstring, with numpy's median and mean, row by row."""
    out = np.zeros(rows.shape, np.int8)
    for i, x in enumerate(rows):
        if not np.isfinite(x).all():
            continue
        med = np.median(x)
        d = x - med
        mad = np.median(np.abs(d))
        scale = mad / 0.6745 if mad > 0 else 1.253314 * np.mean(np.abs(d))
        if not scale > 0:
            continue
        z = d / scale
        out[i] = (z > threshold).astype(np.int8)
        if two_sided:
            out[i] -= (z < -threshold).astype(np.int8)
    return out


def plain_zscore(rows: np.ndarray, threshold: float, two_sided: bool) -> np.ndarray:
    out = np.zeros(rows.shape, np.int8)
    for i, x in enumerate(rows):
        if not np.isfinite(x).all():
            continue
        std = np.std(x)
        if not (x.max() > x.min() and std > 0):
            continue
        z = (x - np.mean(x)) / std
        out[i] = (z > threshold).astype(np.int8)
        if two_sided:
            out[i] -= (z < -threshold).astype(np.int8)
    return out


def _rows(kind: str, K: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    R = 48
    if kind == "random":
        rows = rng.standard_normal((R, K)) * rng.lognormal(0, 1.5, (R, K))
    elif kind == "integers":  # many ties everywhere, at the median and around the fences
        rows = rng.integers(-3, 4, (R, K)).astype(np.float64) * rng.integers(1, 3, (R, 1))
    else:  # sparse: most of a row 0 (MAD 0 and the fallback), a few heavy values, some repeated
        rows = rng.standard_t(2, (R, K)) * (rng.random((R, K)) < 0.3)
        rows[:, : K // 3] = 0.0
        if K >= 3:
            rows[::5, -2:] = rows[::5, -3:-2]  # repeated values
    rows[0] = 2.5  # a constant row
    if K > 2:
        rows[1, 0] = np.nan  # a row with NaN gets no labels
        rows[2, 1] = np.inf
    return rows


FORMS = ("numpy", "numpy sorted", "torch", "torch sorted")


def _labels(sel, rows: np.ndarray, form: str) -> np.ndarray:
    srt = np.sort(np.nan_to_num(rows, nan=0.0, posinf=0.0, neginf=0.0), axis=1)
    if form == "numpy":
        return sel.select(rows)
    if form == "numpy sorted":
        return sel.select_sorted(rows, srt)
    with device_path():
        if form == "torch":
            return sel.select(torch.from_numpy(rows)).numpy()
        return sel.select_sorted(torch.from_numpy(rows), torch.from_numpy(srt)).numpy()


@pytest.mark.parametrize("kind", ["random", "integers", "sparse"])
@pytest.mark.parametrize("K", [1, 2, 3, 8, 33, 64, 257])
@pytest.mark.parametrize("two_sided", [False, True])
def test_mad_fast_forms_equal_the_plain_formula(kind, K, two_sided, label_form):
    rows = _rows(kind, K, seed=K)
    for threshold in (3.5, 1.0, 0.6745):  # 0.6745: integer rows land exactly on the threshold
        sel = make_selector("mad", threshold=threshold, two_sided=two_sided)
        want = plain_mad(rows, threshold, two_sided)
        for form in FORMS:
            got = _labels(sel, rows, form)
            assert got.dtype == np.int8
            assert np.array_equal(got, want), (form, threshold, np.argwhere(got != want)[:5])
    assert (want != 0).any() or kind == "integers" or K < 8  # the data has outliers to find


@pytest.mark.parametrize("kind", ["random", "integers", "sparse"])
@pytest.mark.parametrize("K", [1, 2, 3, 8, 33, 64, 257])
@pytest.mark.parametrize("two_sided", [False, True])
def test_zscore_equals_the_plain_formula(kind, K, two_sided, label_form):
    """z-score uses no order statistic (a mean and a standard deviation): nothing to sort or select; its cut form
    and its scores are checked against the formula. numpy and torch sum in other orders, so torch's labels are
    compared where no value lies within rounding of the threshold (not on integer rows)."""
    rows = _rows(kind, K, seed=100 + K)
    for threshold in (3.0, 1.5):
        sel = make_selector("zscore", threshold=threshold, two_sided=two_sided)
        want = plain_zscore(rows, threshold, two_sided)
        assert np.array_equal(sel.select(rows), want)
        with device_path():
            got = sel.select(torch.from_numpy(rows)).numpy()
        assert np.array_equal(got, want) or kind == "integers"


def test_cuts_on_values_at_the_threshold_and_far_from_the_centre(monkeypatch):
    """Values within a few ulps of ``center +- t * scale``, centres far from 0 (the subtraction rounds many values
    to one), tiny and huge scales: the cuts give the scores' labels."""
    monkeypatch.setattr(cuts, "CUT_FORM_MIN_COLUMNS", 0)
    monkeypatch.setattr(cuts, "CUT_FORM_MIN_VALUES", 0)
    rng = np.random.default_rng(7)
    R, t = 64, 3.5
    center = rng.choice([0.0, 1.0, -1e6, 1e12, -3e-9], (R, 1))
    scale = rng.choice([1.0, 1e-300, 2.5e-7, 1e200, 0.6745], (R, 1))
    edge = center + t * scale
    steps = np.arange(-20, 21)
    rows = np.nextafter(edge, np.inf) + steps * np.spacing(np.abs(edge) + np.abs(center))
    rows[:, ::7] = center - t * scale  # and the lower edge
    ok = rng.random((R, 1)) < 0.9
    xp = np
    with np.errstate(over="ignore", invalid="ignore"):
        want = cuts.plain_beyond(xp, rows, center, scale, ok, t)
    got = cuts.beyond(xp, rows, center, scale, ok, t)
    assert np.array_equal(got[0], want[0]) and np.array_equal(got[1], want[1])
    assert want[0].any() and (~want[0] & ok).any()  # both sides of the edge are there


@pytest.mark.parametrize("chunk_rows", [1, 3, 1000])
def test_mad_fallback_in_chunks_equals_the_plain_formula(chunk_rows, monkeypatch):
    """The mean absolute deviation (MAD = 0 rows) is computed in chunks of rows that stay in the cache: whatever
    the chunk, every row's mean is the plain one (rows with and without the fallback interleaved)."""
    from ssa_selectors import selectors

    K = 257
    rows = np.concatenate([_rows("sparse", K, seed=5), _rows("random", K, seed=6)])[np.random.default_rng(1).
                                                                                     permutation(96)]
    from ssa.core import arrays

    monkeypatch.setattr(selectors, "_CHUNK_BYTES", chunk_rows * K * 8)
    monkeypatch.setattr(arrays, "SEARCH_MIN_COLUMNS", 0)  # the sorted rows split by binary search
    monkeypatch.setattr(arrays, "SEARCH_MIN_VALUES", 0)
    for two_sided in (False, True):
        sel = make_selector("mad", two_sided=two_sided)
        want = plain_mad(rows, 3.5, two_sided)
        for form in ("numpy", "numpy sorted"):
            assert np.array_equal(_labels(sel, rows, form), want), (form, chunk_rows)
    assert (want != 0).any()


@pytest.mark.parametrize("K", [0, 1, 2, 7, 64, 1000])
def test_count_below_sorted_equals_the_sum(K, monkeypatch):
    """MAD's split of a sorted row into its two runs: a binary search per row on numpy, the count elsewhere."""
    from ssa.core import arrays
    from ssa.core.arrays import count_below_sorted

    monkeypatch.setattr(arrays, "SEARCH_MIN_COLUMNS", 0)  # numpy's binary search whatever the size
    monkeypatch.setattr(arrays, "SEARCH_MIN_VALUES", 0)
    rng = np.random.default_rng(K)
    rows = np.sort(rng.integers(-3, 4, (40, K)).astype(np.float64), axis=1)
    rows[::3] = -0.0 * rows[::3]  # -0.0 and 0.0 are one value
    rows = np.sort(rows, axis=1)
    values = np.concatenate([rng.integers(-4, 5, (20, 1)).astype(np.float64), np.full((20, 1), -0.0)])
    if K:
        values[::4] = rows[::4, K // 2:K // 2 + 1]  # values that are in the row
    want = np.sum(rows < values, axis=1, keepdims=True)
    assert np.array_equal(count_below_sorted(rows, values), want)
    got = count_below_sorted(torch.from_numpy(rows), torch.from_numpy(values)).numpy()
    assert np.array_equal(got, want)
