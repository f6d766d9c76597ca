"""scatter_channels' fast routes (identity, permutation, blocks, 0/1 product) against a plain loop."""

from __future__ import annotations

import pytest
import torch
from ssa_torch.closed_form.terms import _column_plan, scatter_channels


def _plain(values: torch.Tensor, chan: torch.Tensor, k: int) -> torch.Tensor:
    out = torch.zeros(values.shape[:-1] + (k,), dtype=values.dtype)
    for col, b in enumerate(chan.tolist()):
        if b >= 0:
            out[..., b] += values[..., col]
    return out


CASES = {
    "identity": (torch.arange(6), 6, "identity"),
    "permutation": (torch.tensor([2, 0, 5, 1, 4, 3]), 6, "permutation"),
    "blocks": (torch.arange(12) // 4, 3, "blocks"),
    "many-to-one with others' columns": (torch.tensor([0, -1, 2, 2, 1, -1, 0]), 3, "sum"),
    "not contiguous": (torch.tensor([0, 1, 0, 1]), 2, "sum"),
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_each_route_sums_like_the_plain_loop(name):
    chan, k, route = CASES[name]
    assert _column_plan(chan, k)[0] == route
    values = torch.randn(3, 4, len(chan), dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    torch.testing.assert_close(scatter_channels(values, chan, k), _plain(values, chan, k), rtol=1e-12, atol=1e-12)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA GPU on this machine")
def test_the_gpu_product_route_sums_like_the_plain_loop():
    chan, k, _ = CASES["many-to-one with others' columns"]
    values = torch.randn(3, 4, len(chan), dtype=torch.float64)
    got = scatter_channels(values.cuda(), chan.cuda(), k).cpu()
    torch.testing.assert_close(got, _plain(values, chan, k), rtol=1e-12, atol=1e-12)
