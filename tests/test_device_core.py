"""The core on the array API: exact quantiles, vectorised ranking and graph building, against plain references."""

from __future__ import annotations

import networkx as nx
import numpy as np
import pytest
import torch

import ssa
from ssa.core.arrays import median_sorted, percentile_rows
from ssa.core.graph import build_graph, normalise_attrs
from ssa.core.traversal import StepRecord, rank_neurons, top_b

DEVICES = ["cpu", pytest.param("cuda", marks=pytest.mark.gpu)]


def _rows(seed: int, R: int, K: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    x = rng.standard_t(3, (R, K)) * rng.lognormal(0, 2, (R, 1))
    x[::3] = np.round(x[::3], 1)  # ties
    x[1::5, : K // 2] = 0.0  # silent neurons
    return x


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("K", [1, 2, 3, 4, 7, 10, 64, 513])
def test_percentiles_and_medians_are_numpys_bit_for_bit(device: str, K: int) -> None:
    x = _rows(K, 40, K)
    qs = (25.0, 75.0, 99.0, 1.0, 50.0, 12.345, 0.0, 100.0)
    want = [np.percentile(x, q, axis=1, keepdims=True) for q in qs]
    got_np = percentile_rows(x, qs)
    got_t = percentile_rows(torch.tensor(x, device=device), qs)
    for q, w, a, b in zip(qs, want, got_np, got_t, strict=True):
        assert np.array_equal(w, a), f"numpy path, q={q}"
        assert np.array_equal(w, b.cpu().numpy()), f"torch on {device}, q={q}"
    s = torch.sort(torch.tensor(x, device=device), dim=1).values
    assert np.array_equal(np.median(x, axis=1, keepdims=True), median_sorted(s).cpu().numpy())


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("sign", [1, -1])
@pytest.mark.parametrize("b", [1, 3, 7, 40])
def test_top_b_ranks_every_row_like_the_plain_definition(device: str, sign: int, b: int) -> None:
    rng = np.random.default_rng(b + 10 * (sign > 0))
    n, K = 60, 30
    counts = rng.integers(0, 4, (n, K))  # many ties in count
    counts[::7] = 0  # rows without any outlier
    mean = np.round(rng.standard_normal((n, K)), 1)  # ties in mean, then by index
    mean[::5, :4] = 0.0
    mean[2, 3] = -0.0
    for lib in ("numpy", "torch"):
        if lib == "numpy":
            low, valid = top_b(counts, mean, b, sign)
        else:
            low, valid = top_b(torch.tensor(counts, device=device), torch.tensor(mean, device=device), b, sign)
            low, valid = low.cpu().numpy(), valid.cpu().numpy()
        for j in range(n):
            want = rank_neurons(counts[j], mean[j], b, sign)
            got = [int(k) for k, ok in zip(low[j], valid[j], strict=True) if ok]
            assert got == want, f"{lib} row {j}"
            assert valid[j].tolist() == sorted(valid[j].tolist(), reverse=True)  # qualifying ones first


def _plain_graph(taps, steps, target, n_images, active, attrs) -> nx.DiGraph:
    """The graph built the plain way, node by node and edge by edge (the first version's code)."""
    by_name = {t.name: t for t in taps}
    g = nx.DiGraph()
    g.graph.update(attrs)
    g.graph["target"] = int(target)
    g.graph["n_images"] = int(n_images)

    def add_node(tap, neuron):
        nid = f"{tap}:{int(neuron)}"
        if nid not in g:
            frac = active.get(tap)
            g.add_node(nid, tap=tap, tap_order=int(by_name[tap].order), neuron=int(neuron), frequency=0,
                       mean_relevance=0.0, active_fraction=float(frac[neuron]) if frac is not None else float("nan"),
                       in_degree=0, sign=1)
        return nid

    top = add_node("logits", target)
    g.nodes[top]["frequency"] = int(n_images)
    for step in steps:
        for kp in step.kept:
            u = add_node(step.upper, kp.upper)
            v = add_node(step.parent, kp.lower)
            g.add_edge(u, v, frequency=int(kp.count), relevance=float(kp.relevance), sign=int(kp.sign))
    for nid in g.nodes:
        if nid == top:
            continue
        ins = list(g.in_edges(nid, data=True))
        if ins:
            g.nodes[nid]["frequency"] = int(max(d["frequency"] for _, _, d in ins))
            g.nodes[nid]["mean_relevance"] = float(np.mean([d["relevance"] for _, _, d in ins]))
            g.nodes[nid]["in_degree"] = len(ins)
            g.nodes[nid]["sign"] = 1 if any(d["sign"] > 0 for _, _, d in ins) else -1
    return g


def test_vectorised_graph_equals_the_plain_construction() -> None:
    rng = np.random.default_rng(3)
    taps = (ssa.Tap("a", 0, "activation", (12, 3, 3), 1, ()), ssa.Tap("b", 1, "activation", (9,), 1, ("a",)),
            ssa.Tap("c", 2, "activation", (8,), 1, ("b", "a")), ssa.Tap("logits", 3, "logits", (4,), 1, ("c",)))
    sizes = {"a": 12, "b": 9, "c": 8, "logits": 4}

    def step(upper, parent, neurons, m):
        ups = rng.choice(neurons, m)
        lows = rng.integers(0, sizes[parent], m)
        signs = rng.choice([1, -1], m, p=[0.8, 0.2])
        if m > 3:  # the same edge kept as positive and as inhibitory: networkx keeps one edge
            ups[1], lows[1], signs[0], signs[1] = ups[0], lows[0], 1, -1
        z = np.zeros((len(neurons), sizes[parent]))
        return StepRecord(upper, parent, tuple(neurons), z, z, z, ups.astype(np.int64), lows.astype(np.int64),
                          rng.integers(1, 20, m), rng.standard_normal(m), signs.astype(np.int64))

    steps = [step("logits", "c", [2], 3), step("c", "b", [0, 3, 5], 9), step("c", "a", [0, 3, 5], 8),
             step("b", "a", [1, 2, 4, 7, 8], 30)]
    active = {t: rng.random(n) for t, n in sizes.items()}
    attrs = {"rule": "gradient", "branching": 3}
    got = build_graph(taps=taps, steps=steps, target=2, n_images=20, active=active, attrs=attrs)
    want = _plain_graph(taps, steps, 2, 20, active, attrs)
    assert list(got.nodes) == list(want.nodes)
    assert list(got.edges) == list(want.edges)
    assert [list(got.pred[n]) for n in got] == [list(want.pred[n]) for n in want]  # in-edges in networkx's order too
    assert got.graph == normalise_attrs(want.graph)  # plus the schema version
    for nid in want.nodes:
        w, h = want.nodes[nid], got.nodes[nid]
        assert set(w) == set(h)
        for key in w:
            assert h[key] == (w[key] if isinstance(w[key], str) else pytest.approx(w[key], rel=1e-12,
                                                                                   abs=1e-15)), (nid, key)
    for u, v, w in want.edges(data=True):
        assert got.edges[u, v] == w
