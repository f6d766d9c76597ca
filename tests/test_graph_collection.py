"""Building a graph pauses the cyclic garbage collector and leaves it as it found it."""

from __future__ import annotations

import gc

import pytest

from ssa.core import graph
from ssa.core.interfaces import Tap


@pytest.mark.parametrize("enabled", [True, False])
def test_the_collector_is_paused_while_filling_and_restored(enabled, monkeypatch):
    seen = []
    real = graph._fill

    def spy(*args):
        seen.append(gc.isenabled())
        return real(*args)

    monkeypatch.setattr(graph, "_fill", spy)
    (gc.enable if enabled else gc.disable)()
    try:
        g = graph.build_graph(taps=[Tap("logits", 1, "logits", (10,), 1)], steps=[], target=3, n_images=2,
                              active={}, attrs={})
        assert seen == [False] and gc.isenabled() is enabled
        assert list(g.nodes) == ["logits:3"]
    finally:
        gc.enable()
