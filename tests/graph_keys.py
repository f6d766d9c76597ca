"""Graphs and taps keyed by tap order, not tap name: the same network through ONNX and as a module (or against
the slow reference) names its taps differently but orders them alike."""

from __future__ import annotations

from typing import Any


def edges_by_order(result: Any) -> dict[tuple[int, int, int, int], tuple[int, float]]:
    """``(upper order, upper neuron, lower order, lower neuron) -> (frequency, relevance)`` of every edge."""
    g = result.graph
    order = {t.name: t.order for t in result.taps}
    out = {}
    for u, v, d in g.edges(data=True):
        nu, nv = g.nodes[u], g.nodes[v]
        out[(order[nu["tap"]], nu["neuron"], order[nv["tap"]], nv["neuron"])] = (d["frequency"], d["relevance"])
    return out


def parents_by_order(taps: Any) -> list[tuple[int, int, tuple[int, ...]]]:
    """``(order, channel axis, parents' orders)`` of every tap."""
    order = {t.name: t.order for t in taps}
    return [(t.order, t.channel_axis, tuple(sorted(order[p] for p in t.parents))) for t in taps]


def predicted_class(model: Any, x: Any) -> int:
    """The class a torch module predicts for the first of the images ``x`` (a numpy batch)."""
    import torch

    with torch.no_grad():
        return int(model(torch.from_numpy(x)).argmax(1)[0])


def assert_same_edges(got: dict, want: dict) -> None:
    """Edge maps of :func:`edges_by_order`: the same edges, frequencies exactly, relevances to 1e-4."""
    import pytest

    assert set(got) == set(want), f"only in ssa: {sorted(set(got) - set(want))[:5]}; only in the other: " \
                                  f"{sorted(set(want) - set(got))[:5]}"
    for key, (freq, rel) in want.items():
        assert got[key][0] == freq, key
        assert got[key][1] == pytest.approx(rel, rel=1e-4, abs=1e-7), key
