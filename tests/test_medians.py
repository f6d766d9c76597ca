"""Medians by selection (``median_rows``: numpy partitions, torch ``kthvalue``) equal numpy's median bit for bit,
and MAD's labels by selection equal its labels from sorted rows (issue 20: no sort and no synchronisation on a
device)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from ssa.core.arrays import device_path, median_rows
from ssa.plugins import make_selector


@pytest.mark.parametrize("K", [1, 2, 3, 4, 7, 10, 64, 101])
def test_median_rows_is_numpys_median(K):
    rng = np.random.default_rng(K)
    rows = rng.standard_normal((40, K))
    rows[:, ::3] = 0.0  # ties at the middle
    rows[5] = 1.0  # a constant row
    want = np.median(rows, axis=1, keepdims=True)
    assert np.array_equal(median_rows(rows), want)
    assert np.array_equal(median_rows(torch.from_numpy(rows)).numpy(), want)


@pytest.mark.parametrize("two_sided", [False, True])
def test_mad_on_the_device_path_labels_as_numpy_does(two_sided):
    rng = np.random.default_rng(3)
    rows = rng.standard_normal((60, 33)) * rng.lognormal(0, 1, (60, 33))
    rows[:20, :25] = 0.0  # MAD 0: the mean-absolute-deviation fallback
    rows[30, 4] = np.nan  # a row with NaN gets no labels
    sel = make_selector("mad", two_sided=two_sided)
    want = sel.select(rows)
    with device_path():
        got = sel.select(torch.from_numpy(rows))
        got_sorted = sel.select_sorted(torch.from_numpy(rows), torch.from_numpy(np.sort(np.nan_to_num(rows), axis=1)))
    assert np.array_equal(got.numpy(), want)
    assert np.array_equal(got_sorted.numpy(), want)
