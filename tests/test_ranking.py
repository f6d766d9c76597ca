"""The host's top-b over the qualifying entries only (``ssa.core.ranking``) against the plain definition."""

from __future__ import annotations

import numpy as np
import pytest

from ssa.core import ranking
from ssa.core.traversal import rank_neurons, top_b


@pytest.mark.parametrize("sign", [1, -1])
@pytest.mark.parametrize("b", [1, 3, 7, 40])
@pytest.mark.parametrize("share", [0.05, 0.6])
def test_top_b_of_the_qualifying_entries_ranks_like_the_plain_definition(sign, b, share, monkeypatch):
    monkeypatch.setattr(ranking, "SPARSE_SHARE", 1.0)  # the gather and sort whatever the share
    rng = np.random.default_rng(b + 10 * (sign > 0))
    n, K = 60, 30
    counts = rng.integers(1, 4, (n, K)) * (rng.random((n, K)) < share)  # many ties in count
    counts[::7] = 0  # rows without any outlier
    mean = np.round(rng.standard_normal((n, K)), 1)  # ties in mean, then by index
    mean[::5, :4] = 0.0
    mean[2, 3] = -0.0
    mean[3, ::2] = -0.0
    got = ranking.top_b_qualifying(counts, mean if sign > 0 else -mean, min(b, K))
    assert got is not None
    assert np.array_equal(got[0], top_b(counts, mean, b, sign)[0])
    for j in range(n):
        want = rank_neurons(counts[j], mean[j], b, sign)
        assert [int(k) for k, ok in zip(got[0][j], got[1][j], strict=True) if ok] == want, j
        assert got[1][j].tolist() == sorted(got[1][j].tolist(), reverse=True)  # qualifying ones first


def test_many_qualifying_entries_take_the_row_passes():
    counts = np.ones((4, 10), dtype=np.int64)
    assert ranking.top_b_qualifying(counts, np.zeros((4, 10)), 3) is None
    low, valid = top_b(counts, np.zeros((4, 10)), 3)
    assert valid.all() and low.tolist() == [[0, 1, 2]] * 4


@pytest.mark.parametrize("sign", [1, -1])
@pytest.mark.parametrize("b", [2, 5, 40])
def test_top_b_with_non_finite_means_ranks_like_the_plain_definition(sign, b, monkeypatch):
    """NaN means rank last within their count (the plain definition's sort puts them last), infinities as numbers; by
    passes of row maxima (b <= ROUNDS_MAX_B) and by the sort alike."""
    monkeypatch.setattr(ranking, "SPARSE_SHARE", 1.0)
    rng = np.random.default_rng(3 + b)
    n, K = 40, 12
    counts = rng.integers(1, 3, (n, K)) * (rng.random((n, K)) < 0.5)
    mean = np.round(rng.standard_normal((n, K)), 1)
    mean[rng.random((n, K)) < 0.15] = np.nan
    mean[rng.random((n, K)) < 0.1] = np.inf
    mean[rng.random((n, K)) < 0.1] = -np.inf
    mean[1] = np.nan  # a row of NaN only: by index
    assert b <= ranking.ROUNDS_MAX_B or b > K  # both ways are checked
    got = ranking.top_b_qualifying(counts, mean if sign > 0 else -mean, min(b, K))
    assert got is not None
    for j in range(n):
        want = rank_neurons(counts[j], mean[j], b, sign)
        assert [int(k) for k, ok in zip(got[0][j], got[1][j], strict=True) if ok] == want, j


@pytest.mark.parametrize("rounds_max", [0, 1000], ids=["sort", "rounds"])
@pytest.mark.parametrize("b", [1, 2, 3, 8])
def test_rounds_of_row_maxima_and_the_sort_rank_alike(rounds_max, b, monkeypatch):
    """Both forms of :func:`top_b_qualifying` (b rounds of per-row maxima; one sort) against the plain definition:
    ties in count and key, -0.0, infinite keys, rows with fewer than b entries or none, and NaN keys (the rounds
    leave those to the sort)."""
    monkeypatch.setattr(ranking, "SPARSE_SHARE", 1.0)
    monkeypatch.setattr(ranking, "ROUNDS_MAX_B", rounds_max)
    rng = np.random.default_rng(b)
    n, K = 50, 40
    for with_nan in (False, True):
        counts = rng.integers(1, 3, (n, K)) * (rng.random((n, K)) < 0.2)
        counts[::6] = 0
        counts[1, :] = 0
        counts[1, 5] = 2  # one entry
        mean = np.round(rng.standard_normal((n, K)), 1)
        mean[2, :] = 0.0
        mean[2, ::3] = -0.0
        mean[3, :5] = np.inf
        mean[4, :5] = -np.inf
        counts[3:5, :5] = 1
        if with_nan:
            mean[5, :4] = np.nan
        for sign in (1, -1):
            got = ranking.top_b_qualifying(counts, mean if sign > 0 else -mean, b)
            assert got is not None
            for j in range(n):
                want = rank_neurons(counts[j], mean[j], b, sign)
                assert [int(k) for k, ok in zip(got[0][j], got[1][j], strict=True) if ok] == want, (j, sign)
                assert not got[0][j][~got[1][j]].any()  # no winner: 0
