"""Comparing graphs the way floating point allows (issue 18, item 12).

Two computations of the same graph that differ only in how the work is batched, which engine computes a
step, or which device runs it, give float32 relevances that agree to a few units in the last place
(``ssa analyse`` of one class's images and of a mixed batch differ by up to 2.8e-5 relative on an AMD
EPYC). Their graphs are then identical unless a relevance value lies so close to its selector's cut
that this noise moves it across (a label flip: one count more or less, perhaps another kept neuron).

So a test that compares graphs across batchings, engines or devices

1. asserts its **fixture's margin** (:func:`fixture_margin`): it finds every value of the steps the graph
   was built from that flips its label when it or another value of its row moves by ``CUT_EPS`` of itself
   ("on the cut"), and fails loudly, naming the neurons, when such flips could change which neurons are
   kept (instead of flaking on another CPU);
2. then requires the same nodes and edges, counts equal up to the number of their values on the cut
   (a flip moves a count by one), and the relevances to ``REL`` relative (:func:`assert_graphs_close`);
3. where it compares labels themselves (:func:`assert_labels_close`), allows a flip only for a value
   within ``CUT_EPS`` of its cut.

Exactness stays where the mathematics is exact (counts from rank-1 factors against built rows, float64
references): those tests do not use this module.
"""

from __future__ import annotations

import builtins
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import networkx as nx
import numpy as np

__all__ = ["CUT_EPS", "REL", "ABS", "Margin", "assert_graphs_close", "assert_labels_close", "fixture_margin",
           "near_cut"]

#: relative agreement of float32 relevances computed with another batching, engine or device
REL = 1e-4
#: absolute floor for relevances that are (nearly) zero
ABS = 1e-9
#: a value that flips its label when it (or one value of its row) moves by this much of itself is on the cut
CUT_EPS = 1e-4


def _labels(selector: Any, rows: np.ndarray) -> np.ndarray:
    from ssa.core.traversal import apply_selector

    return np.asarray(apply_selector(selector, np.ascontiguousarray(rows, dtype=np.float64)))


def near_cut(selector: Any, rows: np.ndarray, eps: float = CUT_EPS) -> np.ndarray:
    """Boolean (R, K): the values of ``rows`` whose label changes when any one value of the row moves by
    ``eps`` of its own magnitude, up or down (the cut moves with the row, as the selector computes it; an
    exact zero, such as a ReLU's, stays exact). Selector-agnostic: it asks the selector for the labels, it does
    not re-implement its cut."""
    rows = np.asarray(rows, dtype=np.float64)
    R, K = rows.shape
    if R == 0 or K == 0:
        return np.zeros((R, K), bool)
    base = _labels(selector, rows)
    step = eps * np.abs(np.where(np.isfinite(rows), rows, 0.0))  # float rounding is relative; an exact 0 stays 0
    out = np.zeros((R, K), bool)
    eye = np.eye(K)
    for sign in (1.0, -1.0):
        # (R, K, K): copy j of row r has value j moved; labels of all K values of every copy
        moved = rows[:, None, :] + sign * step[:, None, :] * eye[None]
        lab = _labels(selector, moved.reshape(R * K, K)).reshape(R, K, K)
        out |= (lab != base[:, None, :]).any(axis=1)
    return out


def assert_labels_close(selector: Any, rows_a: np.ndarray, rows_b: np.ndarray, eps: float = CUT_EPS) -> None:
    """The labels of two computations of the same rows agree, except for values within ``eps`` of the cut."""
    la, lb = _labels(selector, rows_a), _labels(selector, rows_b)
    diff = la != lb
    if not diff.any():
        return
    allowed = near_cut(selector, rows_a, eps) | near_cut(selector, rows_b, eps)
    bad = np.argwhere(diff & ~allowed)
    assert bad.size == 0, (f"{len(bad)} label(s) differ for values not within {eps:g} of their cut, first at "
                           f"row {bad[0][0]}, column {bad[0][1]}: {rows_a[tuple(bad[0])]!r} vs "
                           f"{rows_b[tuple(bad[0])]!r}")


@dataclass
class Margin:
    """What :func:`fixture_margin` found.

    ``slack[(upper node, lower node)]``: how many of that pair's values (one per image) are on a cut, so
    how far its outlier count may move. ``fragile``: places where such moves could change which neurons
    are kept (a bad fixture). ``values``: how many values were looked at.
    """

    eps: float
    values: int = 0
    slack: dict[tuple[str, str], int] = field(default_factory=dict)
    fragile: list[str] = field(default_factory=list)

    def check(self) -> Margin:
        """Fail loudly when label flips on a cut could change the kept neurons: the fixture cannot give the
        same graph on every CPU, batching or engine."""
        assert not self.fragile, (f"bad fixture: label flips within {self.eps:g} of a selector's cut could change "
                                  f"the kept neurons ({'; '.join(self.fragile[:3])}); float32 noise decides them "
                                  "on another CPU or batching. Pick other images, another seed or class.")
        return self


def _graph(g: Any) -> nx.DiGraph:
    return g.graph if not isinstance(g, nx.DiGraph) and hasattr(g, "graph") else g


def fixture_margin(network: Any, images: np.ndarray, graph: Any, rule: Any, selector: Any,
                   eps: float = CUT_EPS, batch_size: int = 32) -> Margin:
    """Recompute (by autograd, float32, on the prepared ``network``) every step ``graph`` was built from and find
    the values on a cut
    (:func:`near_cut`): their pairs' count slack, and whether flipping them could change a kept set (the
    ranking's boundary: a kept neuron's count less its slack must stay above every other's count plus its
    slack, and above 0). Call ``.check()`` on the result (:func:`assert_graphs_close` does)."""
    from ssa.core.traversal import step_omega
    from ssa.engines.autograd import AutogradSource
    from ssa.plugins import make_rule, make_selector

    g = _graph(graph)
    rule = make_rule(rule) if isinstance(rule, str) else rule
    selector = make_selector(selector) if isinstance(selector, str) else selector
    source = AutogradSource(network, np.asarray(images), batch_size)
    parents = {t.name: t.parents for t in network.taps}
    expanded: dict[str, list[int]] = {}
    for _, d in g.nodes(data=True):
        if d.get("sign", 1) > 0 and parents.get(d["tap"]):
            expanded.setdefault(d["tap"], []).append(int(d["neuron"]))
    m = Margin(eps)
    for tap, neurons in expanded.items():
        neurons = sorted(neurons)
        for parent, omega in step_omega(source, tap, neurons, rule).items():
            n, n_img, K = omega.shape
            rows = omega.reshape(-1, K)
            m.values += rows.size
            on_cut = near_cut(selector, rows, eps).reshape(n, n_img, K).sum(axis=1)
            counts = (_labels(selector, rows).reshape(n, n_img, K) > 0).sum(axis=1)
            for j, neuron in enumerate(neurons):
                upper = f"{tap}:{neuron}"
                for col in np.flatnonzero(on_cut[j]):
                    m.slack[(upper, f"{parent}:{col}")] = int(on_cut[j, col])
                kept = [int(str(v).rsplit(":", 1)[1]) for v in g.successors(upper)
                        if g.nodes[v]["tap"] == parent and g.edges[upper, v].get("sign", 1) > 0]
                c, sl = counts[j], on_cut[j]
                others = np.setdiff1d(np.arange(K), kept)
                for k in kept:
                    if c[k] - sl[k] <= 0:
                        m.fragile.append(f"{upper} -> {parent}:{k} has count {c[k]} with {sl[k]} on the cut")
                    loose = others[(sl[others] > 0) | (sl[k] > 0)]
                    if loose.size and c[k] - sl[k] <= (c[loose] + sl[loose]).max():
                        m.fragile.append(f"{upper}: kept {parent}:{k} (count {c[k]} +- {sl[k]}) against "
                                         f"{parent}:{loose[np.argmax(c[loose] + sl[loose])]}")
    return m


def _structure(g: nx.DiGraph) -> tuple[dict, dict]:
    key = ("tap", "neuron", "in_degree", "sign")
    nodes = {str(n): tuple(d.get(k) for k in key) for n, d in g.nodes(data=True)}
    edges = {(str(u), str(v)): d.get("sign") for u, v, d in g.edges(data=True)}
    return nodes, edges


def assert_graphs_close(a: Any, b: Any, *, rel: float = REL, abs: float = ABS,  # noqa: A002 - pytest's name
                        margin: Margin | None = None) -> None:
    """Two computations of one graph agree as floating point allows: the same nodes and edges (with tap,
    neuron, in-degree and sign), counts equal (or, with ``margin``, apart by at most the pair's values on a
    cut), relevances (edge ``relevance``, node ``mean_relevance``) to ``rel`` relative. With ``margin``
    (:func:`fixture_margin`), the fixture's margin is asserted first."""
    slack: Mapping[tuple[str, str], int] = {}
    if margin is not None:
        slack = margin.check().slack
    ga, gb = _graph(a), _graph(b)
    na, ea = _structure(ga)
    nb, eb = _structure(gb)
    assert na == nb, f"the graphs' nodes differ: {sorted(set(na.items()) ^ set(nb.items()))[:6]}"
    assert ea == eb, f"the graphs' edges differ: {sorted(set(ea.items()) ^ set(eb.items()))[:6]}"

    def close(x: Any, y: Any) -> bool:
        if x is None or y is None:
            return x is y
        x, y = float(x), float(y)
        return (np.isnan(x) and np.isnan(y)) or bool(np.isclose(x, y, rtol=rel, atol=abs))

    for u, v, d in ga.edges(data=True):
        other: Mapping[str, Any] = gb.edges[u, v]
        allowed = slack.get((str(u), str(v)), 0)
        assert abs_(int(d.get("frequency", 0)) - int(other.get("frequency", 0))) <= allowed, \
            f"count of {u} -> {v}: {d.get('frequency')} vs {other.get('frequency')} ({allowed} values on the cut)"
        assert close(d.get("relevance"), other.get("relevance")), \
            f"relevance of {u} -> {v}: {d.get('relevance')!r} vs {other.get('relevance')!r} (rel {rel:g})"
    for n, d in ga.nodes(data=True):
        allowed = max((slack.get((str(u), str(n)), 0) for u in ga.predecessors(n)), default=0)
        assert abs_(int(d.get("frequency", 0)) - int(gb.nodes[n].get("frequency", 0))) <= allowed, \
            f"count of {n}: {d.get('frequency')} vs {gb.nodes[n].get('frequency')} ({allowed} values on the cut)"
        assert close(d.get("mean_relevance"), gb.nodes[n].get("mean_relevance")), \
            f"mean_relevance of {n}: {d.get('mean_relevance')!r} vs {gb.nodes[n].get('mean_relevance')!r}"


abs_ = builtins.abs
