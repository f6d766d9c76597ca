"""The core's row gathers and scatters (``ssa.core.arrays``) against numpy's plain ``take_along_axis`` and the
inverse permutation, on numpy and torch."""

from __future__ import annotations

import numpy as np
import torch

from ssa.core.arrays import inverse_permutation, take_along, unpermute


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
