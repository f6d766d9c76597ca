"""Shared test settings: tiny models run faster on one thread, and repeatable; the ``gpu`` marker.

Markers (registered in pyproject.toml): ``slow`` for end-to-end tests of 10 s or more (run by default;
``make test-quick`` leaves them out) and ``gpu`` for tests that need a CUDA GPU (skipped, with the reason,
where there is none).
"""

from __future__ import annotations

import os

import pytest
import torch

os.environ.setdefault("MPLBACKEND", "Agg")
# every test checks ONNX parity afresh (a test planting a conversion bug must not find an earlier run's result);
# tests/test_parity_cache.py turns the cache on in a folder of its own
os.environ["SSA_PARITY_CACHE"] = "0"
torch.set_num_threads(1)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU: torch.cuda.is_available() is False on this machine")
    for item in items:
        if item.get_closest_marker("gpu") is not None:
            item.add_marker(skip)
