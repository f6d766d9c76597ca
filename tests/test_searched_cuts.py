"""Selectors with searched cuts (MAD): counts from the cuts, on rank-1 factors (no rows built) and on dense rows (no
label arrays), against the rows built and labelled by the selector itself (the plain path), bit for bit."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

import ssa
from ssa.core.arrays import to_numpy
from ssa.core.interfaces import DenseBlock, Rank1Block, Rank1Factors, SupportsSearchedCuts, SupportsSortedCuts
from ssa.core.traversal import _Acc, _accumulate, rank1_block_rows
from tests.test_rank1_counts import _factors, _NoCuts, graphs_with_and_without_cuts

MADS = [{}, {"threshold": 0.5}, {"threshold": 8.0}]


def _counts(block: DenseBlock | Rank1Block, n: int, selector: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    acc: dict[str, _Acc] = {}
    _accumulate(acc, block, n, selector)
    a = acc[block.parent]
    return np.asarray(to_numpy(a.pos)), np.asarray(to_numpy(a.neg)), np.asarray(to_numpy(a.tot))


def _one_hot(rng: np.random.Generator, n: int, b: int, K: int) -> Rank1Factors:
    """A skip connection's factors: vec one-hot at the head channel, coefficients of both signs and zeros."""
    vec = np.zeros((n, K))
    vec[np.arange(n), rng.integers(0, K, n)] = 1.0
    coeff = rng.standard_normal((n, b))
    coeff[:, :: 3] = 0.0
    fed = np.ones(n, bool)
    fed[0] = False
    return Rank1Factors(coeff, vec, 0.25, fed)


def _sparse(rng: np.random.Generator, n: int, b: int, K: int) -> Rank1Factors:
    """Rows with more than half of their values 0 (MAD 0: the mean absolute deviation is their scale), with one,
    two or many values off the centre."""
    vec = np.zeros((n, K))
    for j in range(n):
        k = rng.choice(K, size=min(K, [1, 2, 3, K // 3][j % 4]), replace=False)
        vec[j, k] = rng.standard_t(2, len(k))
    coeff = rng.standard_normal((n, b)) * 3.0
    return Rank1Factors(coeff, vec, 0.037, np.ones(n, bool))


@pytest.mark.parametrize("params", MADS)
@pytest.mark.parametrize("two_sided", [False, True])
def test_rank1_counts_from_searched_cuts_equal_the_selectors_labels(params, two_sided):
    selector = ssa.make_selector("mad", two_sided=two_sided, **params)
    assert isinstance(selector, SupportsSearchedCuts) and not isinstance(selector, SupportsSortedCuts)
    plain_selector = _NoCuts(selector)
    rng = np.random.default_rng(5)
    found = 0
    for make in (lambda n, b, K: _factors(rng, n, b, K, np), lambda n, b, K: _one_hot(rng, n, b, K),
                 lambda n, b, K: _sparse(rng, n, b, K)):
        for n, b, K in [(5, 9, 31), (3, 1, 2), (4, 17, 200), (2, 6, 1), (8, 5, 3), (8, 4, 64)]:
            f = make(n, b, K)
            fast = _counts(Rank1Block("p", 0, f), n, selector)
            plain = _counts(DenseBlock("p", 0, rank1_block_rows(f)), n, plain_selector)
            assert np.array_equal(fast[0], plain[0]), (n, b, K)
            assert np.array_equal(fast[1], plain[1]), (n, b, K)
            np.testing.assert_allclose(fast[2], plain[2], rtol=1e-12, atol=1e-300)
            found += int(fast[0].sum() + fast[1].sum())
    assert found > 100  # outliers were found, so the comparison says something


def test_rank1_rows_with_many_values_off_a_zero_mad_are_built_for_their_mean(monkeypatch):
    """Rows whose MAD is 0 with more than two values off the median: their mean absolute deviation depends on the
    order of summation, so those rows (and only those) are built."""
    import ssa.core.searched as searched

    built: list[int] = []
    real = searched.mean_abs_rows

    def spy(rows: np.ndarray, center: np.ndarray, which: np.ndarray, *args: Any) -> np.ndarray:
        built.append(int(rows.shape[0]))
        return real(rows, center, which, *args)

    monkeypatch.setattr(searched, "mean_abs_rows", spy)
    selector = ssa.make_selector("mad")
    f = _sparse(np.random.default_rng(2), 8, 6, 40)
    fast = _counts(Rank1Block("p", 0, f), 8, selector)
    plain = _counts(DenseBlock("p", 0, rank1_block_rows(f)), 8, _NoCuts(selector))
    assert np.array_equal(fast[0], plain[0])
    assert built and sum(built) == 4 * 6  # neurons 2, 3, 6, 7: 3 or 13 of 40 values off a zero median, 6 images
    built.clear()
    _counts(Rank1Block("p", 0, _one_hot(np.random.default_rng(2), 8, 6, 40)), 8, selector)
    assert not built  # a skip's one-hot rows: the mean from the one value off the centre


@pytest.mark.parametrize("layout", ["C", "F"])
def test_rank1_image_sums_equal_the_built_rows_sums(layout):
    """The relevance of a rank-1 block summed over the images without its rows (only where ``vec`` is not 0): the
    built rows' numpy sum bit for bit (a zero's sign aside), for factors in either memory layout, float64 and
    float32, tens of images, one-hot and dense ``vec``."""
    from ssa.core.searched import rank1_image_sums

    rng = np.random.default_rng(12)
    order = "C" if layout == "C" else "F"
    checked = 0
    for n, b, K in [(5, 9, 31), (3, 1, 2), (4, 17, 200), (2, 40, 3), (8, 4, 64), (6, 33, 7)]:
        for f in (_factors(rng, n, b, K, np), _one_hot(rng, n, b, K), _sparse(rng, n, b, K)):
            for dtype in (np.float64, np.float32):
                coeff = np.asarray(f.coeff * 10.0 ** rng.integers(-6, 7, (n, b)), dtype=dtype, order=order)
                vec = np.asarray(f.vec, dtype=dtype, order=order)
                g = Rank1Factors(coeff, vec, f.scale, np.asarray(f.fed))
                want = np.sum(np.asarray(rank1_block_rows(g), dtype=np.float64), axis=1) + 0.0
                got = rank1_image_sums(coeff, vec, f.scale, np.asarray(f.fed)) + 0.0
                assert got.tobytes() == want.tobytes(), (n, b, K, dtype)
                checked += int(np.count_nonzero(want))
    assert checked > 1000


def test_rank1_blocks_of_searched_cuts_are_summed_without_their_rows(monkeypatch):
    """On the host a finite rank-1 block is counted and summed without building its rows; a non-finite one falls back
    to the built rows."""
    import ssa.core.traversal as traversal

    built: list[int] = []
    real = traversal.rank1_block_rows

    def spy(f: Rank1Factors) -> Any:
        built.append(1)
        return real(f)

    monkeypatch.setattr(traversal, "rank1_block_rows", spy)
    selector = ssa.make_selector("mad", two_sided=True)
    rng = np.random.default_rng(3)
    for f in (_factors(rng, 5, 9, 31, np), _one_hot(rng, 8, 6, 40), _sparse(rng, 8, 6, 40)):
        _counts(Rank1Block("p", 0, f), f.coeff.shape[0], selector)
    assert not built
    f = _one_hot(rng, 8, 6, 40)
    vec = np.array(f.vec)
    vec[2, 3] = np.inf
    with np.errstate(invalid="ignore"):  # inf times a zero coefficient
        _counts(Rank1Block("p", 0, Rank1Factors(f.coeff, vec, f.scale, f.fed)), 8, selector)
    assert built


def _dense_rows(rng: np.random.Generator, nb: int, b: int, K: int, kind: str) -> np.ndarray:
    om = rng.standard_t(2, (nb, b, K))
    if kind == "sparse":
        om[rng.random((nb, b, K)) < 0.7] = 0.0
    elif kind == "ties":
        om = np.round(om, 1)
    elif kind == "non-finite":
        om.flat[5] = np.nan
        om.flat[0] = np.inf
        om.flat[-1] = -np.inf
    om[-1, 0] = 0.0  # a constant row
    return om


@pytest.mark.parametrize("params", MADS)
@pytest.mark.parametrize("two_sided", [False, True])
@pytest.mark.parametrize("kind", ["random", "sparse", "ties", "non-finite"])
def test_dense_counts_from_searched_cuts_equal_the_selectors_labels(params, two_sided, kind):
    selector = ssa.make_selector("mad", two_sided=two_sided, **params)
    rng = np.random.default_rng(11)
    found = 0
    for nb, b, K in [(4, 6, 50), (3, 2, 1), (2, 5, 2), (3, 4, 1500), (2, 300, 9)]:  # 300 images: counted in int64
        om = _dense_rows(rng, nb, b, K, kind)
        plain = _counts(DenseBlock("p", 0, om), nb, _NoCuts(selector))
        with np.errstate(invalid="ignore"):
            fast = _counts(DenseBlock("p", 0, om), nb, selector)
            srt = np.sort(om.reshape(nb * b, K), axis=1).reshape(om.shape)  # the sorted rows given by the source
            given = _counts(DenseBlock("p", 0, om, srt), nb, selector)
        for got in (fast, given):
            assert np.array_equal(got[0], plain[0]), (nb, b, K)
            assert np.array_equal(got[1], plain[1]), (nb, b, K)
            assert np.array_equal(got[2], plain[2]), (nb, b, K)
        found += int(plain[0].sum())
    assert found > 10


@pytest.mark.parametrize("near", [0, 1, 64, 1 << 40])
def test_score_cuts_label_as_the_scores_do(near, monkeypatch):
    """MAD's cut values: x > hi iff z > t and x < lo iff z < -t, on the values at and around each cut; the search
    from the directly computed cut (``near`` doubles either side; 0: never bracketed, the whole range) or not."""
    from ssa_selectors import cuts
    from ssa_selectors.cuts import plain_beyond, score_cuts

    monkeypatch.setattr(cuts, "_NEAR", near)

    rng = np.random.default_rng(4)
    R = 200
    center = rng.standard_normal((R, 1)) * 10.0 ** rng.integers(-5, 5, (R, 1))
    scale = np.abs(rng.standard_normal((R, 1))) * 10.0 ** rng.integers(-5, 5, (R, 1))
    center[:5] = 0.0
    ok = np.ones((R, 1), bool)
    hi, lo = score_cuts(center, scale, ok, 3.5)
    near = np.concatenate([hi, lo, np.nextafter(hi, np.inf), np.nextafter(lo, -np.inf), np.nextafter(hi, -np.inf),
                           np.nextafter(lo, np.inf), center, np.zeros((R, 1)), -np.zeros((R, 1))], axis=1)
    pos, neg = plain_beyond(np, near, center, scale, ok, 3.5)
    assert np.array_equal(pos, near > hi) and np.array_equal(neg, near < lo)
    assert pos.any() and (~pos).any() and neg.any()


@pytest.mark.parametrize("direct", [1, 2, 5])
def test_score_cuts_read_near_the_guess_equal_the_whole_search(direct, monkeypatch):
    """The cuts read directly among the doubles near the computed cut (``_DIRECT``) equal the bisection over every
    double (``_NEAR`` 0, ``_DIRECT`` 0), on both sides, thresholds of several sizes, rows with and without a spread;
    and some blocks are answered directly, some are not (then searched)."""
    from ssa_selectors import cuts
    from ssa_selectors.cuts import score_cuts

    rng = np.random.default_rng(9)
    R = 300
    center = rng.standard_normal((R, 1)) * 10.0 ** rng.integers(-300, 300, (R, 1))
    scale = np.abs(rng.standard_normal((R, 1))) * 10.0 ** rng.integers(-300, 300, (R, 1))
    center[:5], scale[5:8] = 0.0, 5e-324
    ok = scale > 1e-320
    seen = {"direct": 0, "searched": 0}
    near = cuts._first_near

    def spy(*args: Any) -> Any:
        out = near(*args)
        seen["direct" if out is not None else "searched"] += 1
        return out

    monkeypatch.setattr(cuts, "_first_near", spy)
    for t in (0.5, 3.5, 1e300):
        for rows in (slice(None), slice(0, 20), slice(200, 201)):
            c, sc, k = center[rows], scale[rows], ok[rows]
            monkeypatch.setattr(cuts, "_DIRECT", direct)
            with np.errstate(over="ignore", invalid="ignore"):
                got = score_cuts(c, sc, k, t)
            monkeypatch.setattr(cuts, "_DIRECT", 0)
            monkeypatch.setattr(cuts, "_NEAR", 0)
            with np.errstate(over="ignore", invalid="ignore"):
                want = score_cuts(c, sc, k, t)
            monkeypatch.setattr(cuts, "_NEAR", 64)
            assert got[0].tobytes() == want[0].tobytes() and got[1].tobytes() == want[1].tobytes(), (t, rows)
    assert seen["direct"] and seen["searched"]


@pytest.mark.parametrize("rule", ["gradient", "gradient_x_activation"])
@pytest.mark.parametrize("params", [{}, {"two_sided": True, "threshold": 2.5}])
def test_graphs_with_and_without_searched_cuts_are_the_same(rule, params, monkeypatch):
    compared, blocks = graphs_with_and_without_cuts(rule, ssa.make_selector("mad", **params), monkeypatch)
    assert compared > 25
    assert blocks >= (10 if rule == "gradient" else 2)  # skips, dense layers, 1x1 convs


def test_rank1_mean_absolute_deviation_at_the_threshold():
    """Rows with two values off a zero median (MAD 0): the mean absolute deviation is their scale, and thresholds
    at each value's score (and a double below it) put the value on either side of its cut: the counts from the
    factors follow the built rows' labels exactly there."""
    vec = np.zeros((2, 8))
    vec[0, 5:7] = [1.0, 3.0]
    vec[1, 2] = -2.5
    coeff = np.array([[0.7, -1.3, 2.0], [1.1, 0.3, -0.9]])
    f = Rank1Factors(coeff, vec, 0.125, np.ones(2, bool))
    rows = rank1_block_rows(f).reshape(6, 8)
    scale = 1.253314 * np.mean(np.abs(rows), axis=1, keepdims=True)
    scores = np.abs(rows / scale)[rows != 0]
    checked = 0
    for t in sorted(set(scores.tolist())):
        for threshold in (t, float(np.nextafter(t, 0.0))):
            selector = ssa.make_selector("mad", threshold=threshold, two_sided=True)
            fast = _counts(Rank1Block("p", 0, f), 2, selector)
            plain = _counts(DenseBlock("p", 0, rank1_block_rows(f)), 2, _NoCuts(selector))
            assert np.array_equal(fast[0], plain[0]) and np.array_equal(fast[1], plain[1]), threshold
            checked += int(plain[0].sum() + plain[1].sum())
    assert checked > 0


@pytest.mark.parametrize("backwards", [False, True])
@pytest.mark.parametrize("kind", ["random", "sparse", "ties"])
@pytest.mark.parametrize("K", [1, 2, 3, 8, 61, 512, 1001])
def test_searches_over_the_sorted_rows_equal_the_searches_by_reads(kind, K, backwards, monkeypatch):
    """``flat=`` of count_below_read and median_of_v_read (the searches read the rows at flat offsets, fewer passes)
    give the searches by ``read`` bit for bit: medians, tied centres, centres below and above every value; rows read
    forwards (dense sorted rows) and, ``backwards``, every other row from a reversed copy (a rank-1 step's rows
    where the coefficient is negative)."""
    import ssa.core.arrays as arrays
    from ssa.core.arrays import FlatReads, count_below_read, flat_rows, median_columns, median_of_v_read
    from ssa.core.searched import sorted_reader

    calls = {"kth": 0, "count": 0}
    kth_flat, count_flat = arrays._kth_flat, arrays._count_below_flat

    def spy_kth(*args: Any) -> Any:
        calls["kth"] += 1
        return kth_flat(*args)

    def spy_count(*args: Any) -> Any:
        calls["count"] += 1
        return count_flat(*args)

    monkeypatch.setattr(arrays, "_kth_flat", spy_kth)
    monkeypatch.setattr(arrays, "_count_below_flat", spy_count)
    rng = np.random.default_rng(K)
    s = np.sort(_dense_rows(rng, 7, 5, K, kind).reshape(-1, K), axis=1)
    read = sorted_reader(s)
    R = s.shape[0]

    def by_reads(idx: np.ndarray) -> np.ndarray:  # no rows behind it: the searches by reads
        return np.asarray(read(idx.reshape(R, 1))).reshape(R)

    flat = flat_rows(s)
    if backwards:  # odd rows from a reversed copy, read from their end
        mixed = np.where((np.arange(R) % 2 == 1)[:, None], s[:, ::-1], s).reshape(-1)
        back = np.arange(R) % 2 == 1
        flat = FlatReads(lambda at: mixed.take(at, mode="clip"), np.arange(R) * K + np.where(back, K - 1, 0),
                         np.where(back, -1, 1))

    centres = [median_columns(K, read), s[:, K // 3:K // 3 + 1], s[:, :1] - 1.0, s[:, -1:] + 1.0,
               np.round(median_columns(K, read), 0)]
    for c in centres:
        below = count_below_read(by_reads, K, c)
        assert np.array_equal(count_below_read(by_reads, K, c, flat=flat), below)
        assert np.array_equal(below, np.sum(s < c, axis=1, keepdims=True))
        plain = median_of_v_read(by_reads, K, below, center=c)
        fast = median_of_v_read(by_reads, K, below, center=c, flat=flat)
        assert fast.tobytes() == plain.tobytes()
        assert fast.tobytes() == np.median(np.abs(s - c), axis=1, keepdims=True).tobytes()
    assert calls["kth"] >= len(centres) and calls["count"] == len(centres)
