"""The Session owns the statistics: shared by classes when they fit the budget, per class when they do not,
with the same graphs; a prepared network is reused for a new image set of the same shape."""

from __future__ import annotations

import numpy as np
import pytest

import ssa
from ssa.models import digits_data


def _same_graph(a, b) -> None:
    """Nodes and edges with their counts exactly; relevances to float32 precision (the convolutions of a
    batch of one class's images and of a batch of mixed images round differently in the last bits)."""
    ga, gb = a.graph, b.graph
    key = ("frequency", "in_degree", "sign", "tap", "neuron")
    assert sorted((n, *(d[k] for k in key)) for n, d in ga.nodes(data=True)) == \
        sorted((n, *(d[k] for k in key)) for n, d in gb.nodes(data=True))
    assert sorted((u, v, d["frequency"], d["sign"]) for u, v, d in ga.edges(data=True)) == \
        sorted((u, v, d["frequency"], d["sign"]) for u, v, d in gb.edges(data=True))
    for u, v, d in ga.edges(data=True):
        assert d["relevance"] == pytest.approx(gb.edges[u, v]["relevance"], rel=1e-5, abs=1e-9)


@pytest.mark.parametrize("rule", ["gradient", "gradient_x_activation"])
def test_per_class_statistics_give_the_graphs_shared_ones_give(monkeypatch, rule):
    x, y = digits_data()
    keep = np.flatnonzero(y < 4)
    x, y = x[keep], y[keep]
    shared = ssa.Session("digits", x, labels=y, rule=rule)
    want = {c: shared.analyse(c, 3, selector="tukey") for c in range(4)}
    assert shared._stats is not None  # one collection, kept for every class
    monkeypatch.setenv("SSA_STATS_BYTES", "1")  # nothing fits: each class collects its own
    per_class = ssa.Session("digits", x, labels=y, rule=rule)
    for c in range(4):
        got = per_class.analyse(c, 3, selector="tukey")
        assert got.n_images == want[c].n_images == int((y == c).sum())
        _same_graph(got, want[c])
    assert per_class._stats is None  # nothing was kept between classes


def test_a_prepared_network_is_reused_for_images_of_the_same_shape():
    x, y = digits_data()
    net = ssa.load_model("digits")
    net.prepare(x[:8])
    plan = net.plan
    a = ssa.Session(net, x[y == 3], rule="gradient_x_activation").analyse(3, 3)
    assert net.plan is plan  # not traced again
    b = ssa.analyse("digits", x[y == 3], 3, 3, rule="gradient_x_activation")
    _same_graph(a, b)
