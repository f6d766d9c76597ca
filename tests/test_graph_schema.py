"""The graph schema (ssa.core.graph.DependencyGraph): typed accessors, exact round trips, one Jaccard."""

from __future__ import annotations

import json
import math

import networkx as nx
import pytest

import ssa
from ssa.core.graph import SCHEMA_VERSION, DependencyGraph, jaccard, parse_node
from ssa.io.graphs import dumps_indented, graph_to_dict, read_graph, write_graph


@pytest.fixture(scope="module")
def result():
    return ssa.analyse("digits", "digits", target=3, branching=3)


def _same(a: nx.DiGraph, b: nx.DiGraph) -> None:
    assert list(a.nodes) == list(b.nodes) and list(a.edges) == list(b.edges)
    assert a.graph == b.graph
    for n in a.nodes:
        for k, v in a.nodes[n].items():
            w = b.nodes[n][k]
            assert (math.isnan(v) and math.isnan(w)) if isinstance(v, float) and math.isnan(v) else v == w, (n, k)
            assert type(v) is type(w), (n, k, type(v), type(w))
    for u, v in a.edges:
        assert a.edges[u, v] == b.edges[u, v]


@pytest.mark.parametrize("suffix", [".json", ".graphml"])
def test_round_trip_is_exact(result, tmp_path, suffix):
    g = result.graph
    g.nodes[next(iter(g.nodes))]["active_fraction"] = float("nan")  # NaN survives both formats
    path = write_graph(g, tmp_path / f"g{suffix}")
    back = read_graph(path)
    assert isinstance(back, DependencyGraph)
    _same(g, back)
    again = read_graph(write_graph(back, tmp_path / f"again{suffix}"))
    _same(back, again)


def test_typed_accessors(result):
    g = result.graph
    assert isinstance(g, DependencyGraph) and g.graph["schema"] == SCHEMA_VERSION
    run = g.run
    assert (run.target, run.n_images, run.branching, run.rule, run.selector) == (3, 183, 3, result.rule,
                                                                                 result.selector)
    assert run.selector_params == dict(result.selector_params) and isinstance(run.rule_params, dict)
    assert run.tap_neurons["logits"] == 10 and run.model == "digits" and len(run.model_hash) == 32
    layers = g.layers()
    assert layers[0] == ("logits", ["logits:3"]) and g.class_node == "logits:3"
    assert [t for t, _ in layers] == g.taps()
    for tap, nodes in layers:
        freqs = [g.nodes[n]["frequency"] for n in nodes]
        assert freqs == sorted(freqs, reverse=True)
        assert g.neurons(tap) == sorted(parse_node(n)[1] for n in nodes)
    assert g.node_set() == frozenset(g.nodes) - {"logits:3"}
    assert g.node_set(include_class=True) == frozenset(g.nodes)
    info = g.info(layers[1][1][0])
    assert info.tap == layers[1][0] and info.in_degree >= 1


def test_graphs_written_before_the_schema_are_upgraded(result, tmp_path):
    data = json.loads((write_graph(result.graph, tmp_path / "g.json")).read_text())
    old = dict(data)
    old["graph"] = {k: (json.dumps(v) if k in ("rule_params", "selector_params", "tap_neurons", "notes") else v)
                    for k, v in data["graph"].items() if k != "schema"}
    (tmp_path / "old.json").write_text(json.dumps(old))
    g = read_graph(tmp_path / "old.json")
    assert g.graph["schema"] == SCHEMA_VERSION
    assert g.run.selector_params == result.graph.run.selector_params
    assert g.run.tap_neurons == result.graph.run.tap_neurons


def test_one_jaccard_convention():
    assert jaccard(set(), set()) == 1.0  # two empty sets are identical
    assert jaccard({"a"}, set()) == 0.0
    assert jaccard({"a", "b"}, {"b", "c"}) == pytest.approx(1 / 3)
    assert parse_node("a:b:7") == ("a:b", 7)


@pytest.mark.parametrize("obj", [
    {}, [], (), {"a": {}}, {"a": []}, {"x": ()}, [1, [2, []], {}], 1.0, "s", None, True,
    {2: 2, 1.5: "x", True: None, None: [1.0, math.nan, math.inf, -math.inf]},
    {"\u00e9": "\u00fc\u2028\x00", "k": {"z": (1, 2), "y": {"q": True}}},
    [{"a": 1}], [{"a": 1}, {}], [{"a": 1}, {"b": {"c": 1e-300}}],
    [{"a": "},\n  {"}, {"b": "x}, {", "c": 2**70}], {"n": [{"t": "a", "v": math.nan}, {"t": "b\n}", "w": None}]},
])
def test_indented_json_is_json_dumps_indent_1(obj):
    assert dumps_indented(obj) == json.dumps(obj, indent=1)


def test_a_written_graph_is_json_dumps_indent_1(result, tmp_path):
    path = write_graph(result.graph, tmp_path / "g.json")
    assert path.read_text(encoding="utf-8") == json.dumps(graph_to_dict(result.graph), indent=1)
