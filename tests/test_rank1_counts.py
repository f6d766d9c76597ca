"""Rank-1 steps labelled and counted from their factors (no rows built) against the rows built and labelled
by the selector itself (the plain path): the same counts bit for bit, the same graphs."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar

import numpy as np
import pytest
import torch

import ssa
from ssa.core.interfaces import DenseBlock, Rank1Block, Rank1Factors, Selector, SupportsSortedCuts
from ssa.core.traversal import _Acc, _accumulate, rank1_block_rows
from ssa.session import Session
from tests.test_sorted_rows import fast_steps, models

CUT_SELECTORS = [("tukey", {}), ("tukey", {"k": 0.0}), ("percentile", {"q": 90.0}), ("topk", {"k": 3}),
                 ("topk", {"k": 40})]


def _factors(rng: np.random.Generator, n: int, b: int, K: int, lib: Any) -> Rank1Factors:
    vec = rng.standard_t(3, (n, K))
    vec[:, : K // 4] = 0.0  # ties: silent lower neurons
    vec[0, : K // 2] = 1.25  # more ties
    coeff = rng.standard_normal((n, b)) * np.exp(rng.standard_normal((n, 1)))
    if b >= 3:  # images where the coefficient is zero (both signs)
        coeff[:, 0] = 0.0
        coeff[:, 1] = -0.0
    coeff[-1, :] = -np.abs(coeff[-1, :])  # a neuron negative on every image
    fed = np.ones(n, bool)
    fed[1] = False  # an upper neuron this term does not feed
    to = (lambda a: torch.from_numpy(np.ascontiguousarray(a))) if lib is torch else np.ascontiguousarray
    return Rank1Factors(to(coeff.T.copy().T), to(vec), 0.037, to(fed))


def _counts(block: DenseBlock | Rank1Block, n: int, K: int, selector: Selector
            ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    acc: dict[str, _Acc] = {}
    _accumulate(acc, block, n, selector)
    a = acc[block.parent]
    return (np.asarray(ssa.core.arrays.to_numpy(a.pos)), np.asarray(ssa.core.arrays.to_numpy(a.neg)),
            np.asarray(ssa.core.arrays.to_numpy(a.tot)))


@pytest.mark.parametrize(("name", "params"), CUT_SELECTORS)
@pytest.mark.parametrize("two_sided", [False, True])
@pytest.mark.parametrize("lib", [np, torch, "torch-device"], ids=["numpy", "torch", "torch-device"])
def test_counts_from_factors_equal_counts_from_the_rows(name, params, two_sided, lib, monkeypatch):
    if lib == "torch-device":  # the arrays stay torch tensors, as on a GPU (on the CPU they are viewed as numpy)
        import ssa.core.traversal as traversal

        monkeypatch.setattr(traversal, "host_view", lambda x: x)
        lib = torch
    selector = ssa.make_selector(name, two_sided=two_sided, **params)
    assert isinstance(selector, SupportsSortedCuts)
    rng = np.random.default_rng(7)
    for n, b, K in [(5, 9, 31), (3, 1, 2), (4, 17, 200), (2, 6, 1)]:
        f = _factors(rng, n, b, K, lib)
        rows = rank1_block_rows(f)
        fast = _counts(Rank1Block("p", 0, f), n, K, selector)
        plain = _counts(DenseBlock("p", 0, rows), n, K, selector)
        assert np.array_equal(fast[0], plain[0]), (n, b, K)
        assert np.array_equal(fast[1], plain[1]), (n, b, K)
        np.testing.assert_allclose(fast[2], plain[2], rtol=1e-12, atol=1e-300)
        if K > 2:
            assert fast[0].sum() > 0  # outliers were found, so the comparison says something


def test_non_finite_factors_fall_back_to_the_rows():
    selector = ssa.make_selector("tukey")
    f = _factors(np.random.default_rng(1), 4, 5, 20, np)
    f.coeff[2, 3] = np.inf
    with np.errstate(invalid="ignore"):  # inf * 0 in the rows the fallback builds
        fast = _counts(Rank1Block("p", 0, f), 4, 20, selector)
        plain = _counts(DenseBlock("p", 0, rank1_block_rows(f)), 4, 20, selector)
    assert np.array_equal(fast[0], plain[0])


class _NoCuts(Selector):
    """The same selector without sorted cuts: the traversal then builds and labels every row."""

    name = "nocuts"
    parameters: ClassVar[Mapping[str, Any]] = {}

    def __init__(self, inner: Selector) -> None:
        self.inner = inner
        self.params = inner.params
        self.name = inner.name
        self.array_api = True

    def select(self, rows: Any) -> Any:
        return self.inner.select(rows)

    def select_sorted(self, rows: Any, sorted_rows: Any) -> Any:
        return self.inner.select_sorted(rows, sorted_rows)


def graphs_with_and_without_cuts(rule: str, selector: Any, monkeypatch: Any) -> tuple[int, int]:
    """Classes 0 and 1 of every test model analysed with ``selector`` and with it stripped of its cuts
    (:class:`_NoCuts`): the same graphs, counts and means (edge relevance too). Returns the nodes compared and the
    rank-1 blocks the traversal labelled from their factors."""
    import ssa.core.traversal as traversal

    compact_blocks: list[Any] = []
    real = traversal._accumulate_rank1

    def spy(*args: Any, **kwargs: Any) -> None:
        compact_blocks.append(args[1])
        real(*args, **kwargs)

    monkeypatch.setattr(traversal, "_accumulate_rank1", spy)
    compared = 0
    for label, model, images in models(12):
        session = Session(model, images, rule=rule)
        for target in (0, 1):
            fast = session.analyse(target, 3, selector=selector)
            plain = session.analyse(target, 3, selector=_NoCuts(selector))
            assert set(fast.graph.nodes) == set(plain.graph.nodes), (label, target)
            assert set(fast.graph.edges) == set(plain.graph.edges), (label, target)
            for a, b in zip(fast.steps, plain.steps, strict=True):
                assert (a.upper, a.parent) == (b.upper, b.parent)
                assert np.array_equal(a.counts, b.counts) and np.array_equal(a.neg_counts, b.neg_counts), label
                np.testing.assert_allclose(a.mean, b.mean, rtol=1e-9, atol=1e-300)
            for u, v, d in fast.graph.edges(data=True):
                assert d["relevance"] == pytest.approx(plain.graph.edges[u, v]["relevance"], rel=1e-9, abs=1e-300)
            compared += fast.graph.number_of_nodes()
    return compared, len(compact_blocks)


@pytest.mark.parametrize("rule", ["gradient", "gradient_x_activation"])
@pytest.mark.parametrize(("name", "params"), [("tukey", {"two_sided": True}), ("percentile", {"q": 95.0})])
def test_graphs_with_and_without_rows_are_the_same(rule, name, params, monkeypatch):
    compared, blocks = graphs_with_and_without_cuts(rule, ssa.make_selector(name, **params), monkeypatch)
    assert compared > 50
    assert blocks >= (10 if rule == "gradient" else 2)  # skips, dense layers, 1x1 convs


@pytest.mark.parametrize("form", ["gradient", "gradient_x_activation"])
def test_the_orders_the_backend_keeps_sort_each_vec(form):
    """A term's kept order (weights sorted once, one-hot skips) sorts the vector it hands over, row by row."""
    checked = 0
    for label, net, stats, tap, neurons in fast_steps(form, picks=7):
        for block in net.relevance_blocks(tap, stats, neurons, form, factors=True):
            parent, f = block.parent, block.factors if isinstance(block, Rank1Block) else None
            if f is None or f.order is None:
                continue
            ordered = torch.take_along_dim(f.vec, f.order, dim=1)
            assert bool((ordered[:, 1:] >= ordered[:, :-1]).all()), (label, tap, parent)
            assert torch.equal(torch.sort(f.order, dim=1).values,
                               torch.arange(f.vec.shape[1]).expand_as(f.order)), (label, tap, parent)
            checked += 1
    assert checked >= (10 if form == "gradient" else 2)


@pytest.mark.parametrize(("name", "params"), CUT_SELECTORS)
@pytest.mark.parametrize("two_sided", [False, True])
def test_labels_by_partition_equal_select(name, params, two_sided):
    """Blocks that are not rank-1 (numpy rows): a partition at the cut positions labels as select() does."""
    from ssa.core.traversal import labels_by_partition

    selector = ssa.make_selector(name, two_sided=two_sided, **params)
    rng = np.random.default_rng(3)
    for R, K in [(40, 64), (7, 1), (9, 2), (30, 513)]:
        rows = rng.standard_t(2, (R, K))
        rows[rng.random((R, K)) < 0.3] = 0.0
        rows[: R // 3] = np.round(rows[: R // 3], 1)  # ties
        if R > 5:
            rows[4, 0] = np.nan
            rows[5, -1] = np.inf
            rows[6, K // 2] = -np.inf
        assert np.array_equal(labels_by_partition(selector, rows), selector.select(rows)), (R, K)


@pytest.mark.parametrize("all_fed", [True, False])
def test_summed_relevance_from_factors_is_the_plain_product_bit_for_bit(all_fed):
    """numpy's sum of a rank-1 block (one buffer, no product by a mask of ones) is ((vec * total) * scale) * mask,
    -0.0 read as 0.0, bit for bit."""
    f = _factors(np.random.default_rng(2), 6, 7, 50, np)
    f.vec[2, :5] = -0.0
    f.vec[3, :5] = -1e-300  # products that round to -0.0
    if all_fed:
        f = f._replace(fed=np.ones_like(f.fed))
    mask = f.fed.astype(np.float64).reshape(-1, 1)
    want = ((f.vec * f.coeff.sum(axis=1, keepdims=True)) * f.scale) * mask + 0.0
    got = _counts(Rank1Block("p", 0, f), 6, 50, ssa.make_selector("tukey"))[2]
    assert np.array_equal(got.view(np.int64), want.view(np.int64))
    assert not np.signbit(got[got == 0]).any()
