"""The core's row gathers and scatters (``ssa.core.arrays``) against numpy's plain ``take_along_axis`` and the
inverse permutation, on numpy and torch."""

from __future__ import annotations

import numpy as np
import torch

from ssa.core.arrays import inverse_permutation, step_counts, take_along, unpermute


def test_take_along_and_unpermute_equal_the_plain_forms():
    rng = np.random.default_rng(0)
    for n, K, m in [(5, 7, 3), (1, 1, 1), (4, 30, 30), (0, 3, 2)]:
        x = rng.standard_normal((n, K))
        idx = rng.integers(0, K, (n, m))
        want = np.take_along_axis(x, idx, axis=1)
        assert np.array_equal(take_along(x, idx, 1), want)
        assert np.array_equal(take_along(np.asfortranarray(x), idx, 1), want)  # not C-contiguous: numpy's own
        assert np.array_equal(take_along(torch.from_numpy(x), torch.from_numpy(idx), 1).numpy(), want)
        order = np.argsort(rng.standard_normal((n, K)), axis=1)
        values = rng.integers(0, 9, (n, K))
        plain = np.take_along_axis(values, inverse_permutation(order), axis=1)
        assert np.array_equal(unpermute(values, order), plain)
        assert np.array_equal(unpermute(torch.from_numpy(values), torch.from_numpy(order)).numpy(), plain)
        for j in range(n):  # the definition itself: out[j, order[j, q]] = values[j, q]
            assert all(unpermute(values, order)[j, order[j, q]] == values[j, q] for q in range(K))


def test_step_counts_equal_the_definition_and_the_plain_form():
    """numpy's pieces written into zeros against the definition (loops) and the plain form (histograms, cumulative
    sums, one scatter: what a device runs): thresholds at 0 and K, ties, all up, all down, counts that cancel."""
    rng = np.random.default_rng(5)
    for n, K, m in [(6, 11, 5), (1, 1, 1), (4, 40, 17), (0, 3, 2), (3, 5, 0), (5, 2, 9)]:
        t = rng.integers(0, K + 1, (n, m))
        if n > 2 and m > 1:
            t[0] = K  # beyond every position: nothing counted
            t[1] = 0  # before every position
            t[2, : m // 2] = t[2, m // 2]  # ties
        up = rng.random((n, m)) < 0.5
        if n > 3:
            up[3] = True
        if n > 4:
            up[4] = False
        base = (~up).sum(axis=1, keepdims=True).astype(np.int64)  # as the traversal's: every count >= 0
        if n > 5:  # negative counts too: the definition holds for any base
            up[5], base[5], t[5, 0] = False, 0, 0
        order = np.argsort(rng.standard_normal((n, K)), axis=1)
        want = np.zeros((n, K), np.int64)
        for j in range(n):
            for q in range(K):
                want[j, order[j, q]] = base[j, 0] + sum((1 if up[j, i] else -1) for i in range(m) if t[j, i] <= q)
        fast = step_counts(t, up, base, order)
        assert fast.dtype == np.int64 and np.array_equal(fast, want), (n, K, m)
        plain = step_counts(torch.from_numpy(t), torch.from_numpy(up), torch.from_numpy(base), torch.from_numpy(order))
        assert np.array_equal(plain.numpy(), want), (n, K, m)
