"""Dense blocks whose rows are sorted through their float32 keys (:class:`~ssa.core.interfaces.SortedKeys`): omega is
the terms' own, the keys give exactly the rows sorted, and MAD's counts read through them equal those of the rows
sorted by numpy (the fast path against the plain one)."""

from __future__ import annotations

import numpy as np
import pytest
import ssa_torch.closed_form_steps as cfs
import torch
from ssa_selectors.selectors import MADSelector, TukeySelector

import ssa
from ssa.core.interfaces import DenseBlock, SortedKeys
from ssa.core.searched import dense_counts, keys_reader, keys_rows, sorted_reader

from .test_sorted_rows import _terms_omega, fast_steps, models

FORM = "gradient_x_activation"


def keyed_blocks():
    """``(name, tap, plain omega by parent, the blocks handed to a host traversal that asks for factors)``."""
    for name, net, stats, tap, neurons in fast_steps(FORM):
        blocks = net.relevance_blocks(tap, stats, neurons, FORM, factors=True)
        yield name, tap, _terms_omega(net, stats, tap, neurons, FORM), blocks


def test_keyed_blocks_hold_the_terms_omega_and_their_rows_sorted():
    seen = 0
    for name, tap, plain, blocks in keyed_blocks():
        for block in blocks:
            if not (isinstance(block, DenseBlock) and isinstance(block.sorted, SortedKeys)):
                continue
            seen += 1
            where = f"{name} {tap}->{block.parent}"
            assert torch.equal(block.omega, plain[block.parent]), where  # bit for bit: the same products
            om = block.omega.numpy()
            n, b, K = om.shape
            keys = block.sorted.keys
            assert keys.dtype == np.float32 and keys.shape == om.shape, where
            built = keys_rows(block.sorted)
            assert np.array_equal(built, np.sort(om.reshape(n * b, K), axis=1)), where
            # the reader reads what the built rows hold, at a column and at per-row positions
            read = keys_reader(block.sorted)
            rng = np.random.default_rng(seen)
            p = rng.integers(0, K, (n * b, 1))
            assert np.array_equal(read(K // 2), built[:, K // 2:K // 2 + 1]), where
            assert np.array_equal(read(p), np.take_along_axis(built, p, 1)), where
            flat = read.flat_reads
            assert np.array_equal(flat.fetch(flat.base + p[:, 0]), np.take_along_axis(built, p, 1)[:, 0]), where
    assert seen >= 5


@pytest.mark.parametrize("two_sided", [False, True])
@pytest.mark.parametrize("fed", [None, "some"])
def test_mad_counts_through_keys_equal_the_sorted_rows(two_sided, fed):
    """Heavy-tailed float32 values with ties, zeros and rows that are not fed, scaled as a term scales them."""
    rng = np.random.default_rng(3)
    n, b, K = 7, 5, 600
    keys = rng.standard_t(2, (n, b, K)).astype(np.float32)
    keys[:, :, :200] = 0.0  # silent lower neurons: ties at the median
    keys[1, 2, :] = 1.5  # a row without spread
    keys[2, :, 300:] = np.float32(-0.0)
    scale = 1.0 / 3136.0
    mask = None if fed is None else np.array([True, False, True, True, False, True, True])
    om = keys.astype(np.float64) * scale
    if mask is not None:
        om = om * mask[:, None, None].astype(np.float64)
    keys.sort(axis=-1)
    sk = SortedKeys(keys, scale, mask)
    sel = MADSelector(two_sided=two_sided)
    want = dense_counts(sel, om, None, two_sided, True)
    got = dense_counts(sel, om, sk, two_sided, True)
    for w, g in zip(want, got, strict=True):
        assert (w is None) == (g is None)
        if w is not None:
            assert np.array_equal(w, g)
    # the labels of select() itself, counted
    labels = sel.select(om.reshape(n * b, K)).reshape(n, b, K)
    assert np.array_equal(got[0], (labels > 0).sum(1))
    # and the reader over the keys reads the float64 rows sorted
    rows = np.sort(om.reshape(n * b, K), axis=1)
    assert np.array_equal(keys_rows(sk), rows)
    assert np.array_equal(keys_reader(sk)(K - 1), sorted_reader(rows)(K - 1))


def test_other_selectors_get_the_built_rows():
    """A host traversal with sorted cuts (Tukey) on keyed blocks labels as it does on the plain rows."""
    from ssa.core.traversal import _Acc, _accumulate

    rng = np.random.default_rng(4)
    keys = rng.standard_normal((3, 4, 50)).astype(np.float32)
    om = keys.astype(np.float64) * 0.25
    keys.sort(axis=-1)
    sel = TukeySelector()
    got, want = {}, {}
    _accumulate(got, DenseBlock("p", 0, om, SortedKeys(keys, 0.25)), 3, sel)
    _accumulate(want, DenseBlock("p", 0, om), 3, sel)
    assert isinstance(got["p"], _Acc)
    assert np.array_equal(got["p"].pos, want["p"].pos) and np.array_equal(got["p"].tot, want["p"].tot)


@pytest.mark.parametrize(("selector", "params"), [("mad", {}), ("mad", {"two_sided": True}), ("tukey", {}),
                                                  ("percentile", {}), ("topk", {})])
def test_graphs_with_keyed_blocks_equal_the_plain_rows(monkeypatch, selector, params):
    """A whole analysis (ResNet-18: 3x3 convs, 1x1 convs, skips, a dense layer) with the keyed blocks and without them
    (the rows as the terms make them, sorted by the traversal): every step's counts, means and kept edges the same."""
    name, model, images = next(m for m in models() if m[0] == "resnet18")
    net = ssa.load_model(model)
    net.prepare(images)
    session = ssa.Session(net, images, rule=FORM)

    def steps():
        out = session.analyse(1, 3, selector=selector, selector_params=params)
        return [(s.upper, s.parent, s.counts.tobytes(), s.neg_counts.tobytes(), s.mean.tobytes(),
                 s.kept_lower.tobytes(), s.kept_sign.tobytes()) for s in out.steps]

    keyed = []
    real = cfs._keyed_block

    def spy(*args, **kwargs):
        block = real(*args, **kwargs)
        keyed.append(block is not None)
        return block

    monkeypatch.setattr(cfs, "_keyed_block", spy)
    fast = steps()
    assert any(keyed), name
    monkeypatch.setattr(cfs, "_keyed_block", lambda *a, **k: None)
    assert steps() == fast
