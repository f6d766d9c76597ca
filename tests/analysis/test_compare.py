"""Comparing class graphs (ssa.analysis.compare, `ssa compare`): clustering against scipy, shared sub-graph, tables."""

from __future__ import annotations

import csv
import json

import networkx as nx
import numpy as np
import pytest
from scipy.cluster.hierarchy import fcluster, linkage
from scipy.spatial.distance import pdist, squareform

from ssa.analysis.compare import (
    bag_of_nodes,
    compare,
    cosine_similarity,
    frequency_ranks,
    interconnectedness,
    jaccard,
    jaccard_by_layer,
    shared_subgraph,
    ward_linkage,
)
from ssa.cli import main
from ssa.errors import InvalidInputError
from ssa.io.graphs import read_graph, write_graph

TAPS = {"logits": 3, "fc": 2, "conv2": 1, "conv1": 0}


def make_graph(target: int, edges, *, n_images: int = 10, model: str = "toy", freq=None) -> nx.DiGraph:
    """A hand-made dependency graph. ``edges``: ("tap:n", "tap:m", sign); node frequency from ``freq``."""
    freq = freq or {}
    g = nx.DiGraph(model=model, target=target, n_images=n_images, branching=2, rule="gradient", selector="tukey")

    def node(nid: str) -> None:
        if nid not in g:
            tap, n = nid.rsplit(":", 1)
            g.add_node(nid, tap=tap, tap_order=TAPS[tap], neuron=int(n), frequency=freq.get(nid, n_images),
                       mean_relevance=0.5, active_fraction=1.0, in_degree=0, sign=1)

    node(f"logits:{target}")
    for u, v, *rest in edges:
        node(u)
        node(v)
        sign = rest[0] if rest else 1
        g.add_edge(u, v, frequency=freq.get(v, n_images), relevance=1.0 if sign > 0 else -1.0, sign=sign)
    for n in g.nodes:
        ins = list(g.in_edges(n))
        g.nodes[n]["in_degree"] = len(ins)
        if ins and all(g.edges[e]["sign"] < 0 for e in ins):
            g.nodes[n]["sign"] = -1
    return g


@pytest.fixture
def four():
    """Classes 0 and 1 share most of their neurons; classes 2 and 3 share others."""
    a = make_graph(0, [("logits:0", "fc:1"), ("logits:0", "fc:2"), ("fc:1", "conv2:5"), ("fc:2", "conv2:5"),
                       ("fc:2", "conv2:6"), ("conv2:5", "conv1:0")], freq={"conv2:6": 4})
    b = make_graph(1, [("logits:1", "fc:1"), ("logits:1", "fc:2"), ("fc:1", "conv2:5"), ("fc:2", "conv2:6"),
                       ("conv2:5", "conv1:0"), ("conv2:6", "conv1:1")], freq={"conv2:5": 7})
    c = make_graph(2, [("logits:2", "fc:7"), ("logits:2", "fc:8"), ("fc:7", "conv2:9"), ("fc:8", "conv2:9"),
                       ("conv2:9", "conv1:3"), ("conv2:9", "conv1:0")])
    d = make_graph(3, [("logits:3", "fc:7"), ("logits:3", "fc:9"), ("fc:7", "conv2:9"), ("fc:9", "conv2:10"),
                       ("conv2:9", "conv1:3")])
    return [a, b, c, d]


def test_bag_of_nodes_weights(four):
    nodes, X = bag_of_nodes(four)
    assert not any(n.startswith("logits:") for n in nodes)  # class nodes are left out
    assert nodes[:5] == ["fc:1", "fc:2", "fc:7", "fc:8", "fc:9"]  # top layer first, then by neuron
    assert X.shape == (4, len(nodes))
    assert X[0, nodes.index("conv2:6")] == pytest.approx(0.4)  # frequency 4 of 10 images
    assert X[1, nodes.index("conv2:5")] == pytest.approx(0.7)
    assert X[2, nodes.index("fc:1")] == 0.0
    _, B = bag_of_nodes(four, "binary")
    assert set(np.unique(B)) == {0.0, 1.0}
    assert B.sum() == sum(len(g) - 1 for g in four)
    with pytest.raises(InvalidInputError, match="weight must be"):
        bag_of_nodes(four, "tfidf")


def test_ward_on_normalised_vectors_matches_scipy(four):
    _, X = bag_of_nodes(four)
    Y = X / np.linalg.norm(X, axis=1, keepdims=True)
    expected = linkage(Y, method="ward", metric="euclidean")
    np.testing.assert_allclose(ward_linkage(X), expected)
    # Euclidean distance of L2-normalised rows == sqrt(2 * cosine distance) (method doc, note in section 7)
    np.testing.assert_allclose(pdist(Y), np.sqrt(2 * pdist(X, "cosine")), atol=1e-12)
    cmp = compare(four)
    np.testing.assert_allclose(cmp.linkage, expected)
    np.testing.assert_allclose(cmp.similarity, 1 - squareform(pdist(X, "cosine")), atol=1e-12)
    np.testing.assert_allclose(cosine_similarity(X), cmp.similarity)
    # the two pairs of similar classes form the two clusters
    clusters = fcluster(cmp.linkage, 2, criterion="maxclust")
    assert clusters[0] == clusters[1] != clusters[2] == clusters[3]
    assert cmp.labels == ("class 0", "class 1", "class 2", "class 3")
    assert sorted(cmp.order) == [0, 1, 2, 3]
    assert cmp.closest_pairs(1)[0][:2] in {("class 0", "class 1"), ("class 2", "class 3")}


def test_jaccard_per_layer(four):
    J = jaccard_by_layer(four)
    assert list(J) == ["fc", "conv2", "conv1", "all"]
    # fc: {1,2} vs {1,2} -> 1; {1,2} vs {7,8} -> 0; {7,8} vs {7,9} -> 1/3
    assert J["fc"][0, 1] == 1.0 and J["fc"][0, 2] == 0.0 and J["fc"][2, 3] == pytest.approx(1 / 3)
    # conv1: {0} vs {0,1} -> 1/2; {0} vs {3,0} -> 1/2; {0,1} vs {3} -> 0
    assert J["conv1"][0, 1] == 0.5 and J["conv1"][0, 2] == 0.5 and J["conv1"][1, 3] == 0.0
    np.testing.assert_allclose(J["all"], J["all"].T)
    assert np.all(np.diag(J["all"]) == 1.0)
    assert jaccard([], []) == 1.0  # the one convention (ssa.core.graph.jaccard): two empty sets are identical


def test_shared_subgraph_by_hand():
    a = make_graph(0, [("logits:0", "fc:1"), ("fc:1", "conv2:5"), ("fc:1", "conv2:6"), ("conv2:5", "conv1:0"),
                       ("conv2:6", "conv1:0"), ("fc:1", "conv2:8", -1)], freq={"conv2:5": 6})
    b = make_graph(1, [("logits:1", "fc:1"), ("logits:1", "fc:2"), ("fc:1", "conv2:5"), ("fc:2", "conv2:6"),
                       ("conv2:5", "conv1:0"), ("conv2:6", "conv1:0"), ("fc:1", "conv2:8", -1)],
                   n_images=20, freq={"conv2:5": 20})
    c = make_graph(2, [("logits:2", "fc:1"), ("fc:1", "conv2:5"), ("fc:1", "conv2:6"), ("conv2:5", "conv1:0"),
                       ("fc:1", "conv2:8")])
    h = shared_subgraph([a, b])
    assert set(h.nodes) == {"fc:1", "conv2:5", "conv2:6", "conv2:8", "conv1:0"}
    # fc:1 -> conv2:6 is only in a (b reaches conv2:6 from fc:2): not kept
    assert set(h.edges) == {("fc:1", "conv2:5"), ("conv2:5", "conv1:0"), ("conv2:6", "conv1:0"), ("fc:1", "conv2:8")}
    assert h.edges["fc:1", "conv2:8"]["sign"] == -1
    assert h.nodes["conv2:8"]["sign"] == -1
    assert h.nodes["conv2:5"]["frequency"] == pytest.approx(0.6)  # min(6/10, 20/20)
    assert h.nodes["conv2:5"]["mean_frequency"] == pytest.approx(0.8)
    assert h.nodes["conv1:0"]["in_degree"] == 2
    assert h.graph["model"] == "toy" and h.graph["classes"] == "class 0, class 1"
    h3 = shared_subgraph([a, b, c])
    # c keeps fc:1 -> conv2:8 as excitatory: edges of different signs are not shared
    assert ("fc:1", "conv2:8") not in h3.edges
    assert set(h3.edges) == {("fc:1", "conv2:5"), ("conv2:5", "conv1:0")}
    assert "conv2:6" in h3 and "logits:0" not in h3


def test_tables(four):
    labels = ["A", "B", "C", "D"]
    inter = interconnectedness(four, labels)
    top = inter[0]
    assert top["node"] == "conv1:0" and top["n_graphs"] == 3
    assert top["in_degree[A]"] == 1 and top["in_degree[D]"] == 0
    assert top["total_in_degree"] == 3
    by_node = {r["node"]: r for r in inter}
    assert by_node["conv2:5"]["total_in_degree"] == 3  # two upper neurons in A, one in B
    ranks = frequency_ranks(four, labels)
    a_conv2 = [r for r in ranks if r["graph"] == "A" and r["tap"] == "conv2"]
    assert [(r["neuron"], r["rank"]) for r in a_conv2] == [(5, 1), (6, 2)]  # 10 images beat 4
    assert all(r["tap"] != "logits" for r in ranks)


def test_refusals(four):
    with pytest.raises(InvalidInputError, match="at least 2 graphs"):
        compare(four[:1])
    other = make_graph(5, [("logits:5", "fc:1")], model="resnet")
    with pytest.raises(InvalidInputError, match="different models"):
        compare([four[0], other])
    empty = make_graph(6, [])
    with pytest.raises(InvalidInputError, match="empty graph"):
        compare([four[0], empty])


def _write_all(tmp_path, graphs):
    paths = []
    for g in graphs:
        p = tmp_path / f"class-{g.graph['target']}.json"
        write_graph(g, p)
        paths.append(str(p))
    return paths


def test_cli_compare_writes_everything(tmp_path, four, capsys):
    paths = _write_all(tmp_path, four)
    out = tmp_path / "cmp"
    assert main(["compare", *paths, "--out-dir", str(out), "--shared", "0,1"]) == 0
    text = capsys.readouterr().out
    assert "cluster order" in text and "shared sub-graph of class 0, class 1" in text
    for name in ("clustermap.png", "clustermap-nodes.png", "dendrogram.png", "bag-of-nodes.csv", "jaccard.csv",
                 "cosine-similarity.csv", "linkage.csv", "interconnectedness.csv", "frequency-rank.csv",
                 "shared.json", "shared.png"):
        assert (out / name).stat().st_size > 0, name
    shared = read_graph(out / "shared.json")
    assert set(shared.nodes) == {"fc:1", "fc:2", "conv2:5", "conv2:6", "conv1:0"}
    with open(out / "jaccard.csv") as fh:
        rows = list(csv.DictReader(fh))
    fc01 = [r for r in rows if r["tap"] == "fc" and r["graph_a"] == "class 0" and r["graph_b"] == "class 1"]
    assert fc01 and float(fc01[0]["jaccard"]) == 1.0 and fc01[0]["n_shared"] == "2"
    with open(out / "linkage.csv") as fh:
        assert len(list(csv.reader(fh))) == 1 + 3
    assert main(["compare", *paths, "--weight", "binary"]) == 0


@pytest.mark.parametrize("case,needle", [
    ("models", "different models"),
    ("empty", "empty graph"),
    ("one", "at least 2 graphs"),
])
def test_cli_bad_input_one_line_exit_2(tmp_path, four, capsys, case, needle):
    if case == "models":
        graphs = [four[0], make_graph(5, [("logits:5", "fc:1")], model="resnet")]
    elif case == "empty":
        graphs = [four[0], make_graph(6, [])]
    else:
        graphs = [four[0]]
    paths = _write_all(tmp_path, graphs)
    assert main(["compare", *paths]) == 2
    err = capsys.readouterr().err
    assert needle in err
    assert err.count("\n") == 1 and "Traceback" not in err


def test_compare_real_graphs_of_digits():
    """End to end on the embedded model: three classes, clustering is scipy's on the normalised vectors."""
    import ssa

    res = ssa.analyse_many("digits", "digits", [1, 7, 4], rule="gradient_x_activation", selector="tukey",
                           max_per_class=12)
    cmp = compare([r.graph for r in res.values()])
    np.testing.assert_allclose(cmp.linkage, linkage(cmp.matrix / np.linalg.norm(cmp.matrix, axis=1)[:, None], "ward"))
    assert cmp.labels == ("class 1", "class 7", "class 4")
    assert json.loads(json.dumps(cmp.to_dict()))["model"] == "digits"


@pytest.mark.parametrize("name, content, words", [
    ("list.json", b"[1, 2]", "holds a JSON list, not a node-link graph"),
    ("number.json", b"3", "holds a JSON int"),
    ("broken.graphml", b"<graphml><broken", "is not a graph written by ssa (ParseError"),
    ("nonssa.json", b'{"nodes": [{"id": "a"}], "edges": []}', "node 'a' of"),
    ("notap.json", b'{"graph": {"target": 1}, "nodes": [{"id": "a", "neuron": 1}], "edges": []}',
     "has no 'tap' and 'neuron' attributes"),
    ("binary.json", bytes(range(256)), "UnicodeDecodeError"),
    ("folder.json", None, "is a folder"),
    ("graph.txt", b"{}", "must end in .json or .graphml"),
])
def test_files_that_are_not_ssa_graphs_are_refused_in_one_line(tmp_path, name, content, words):
    p = tmp_path / name
    if content is None:
        p.mkdir()
    else:
        p.write_bytes(content)
    with pytest.raises(InvalidInputError) as info:
        read_graph(p)
    assert words in str(info.value) and len(str(info.value).splitlines()) == 1


def test_one_jaccard_and_pairs_without_neurons_left_out_of_tables_and_means():
    import ssa.core.graph
    from ssa.analysis import compare as compare_module

    assert compare_module.jaccard is ssa.core.graph.jaccard
    a = make_graph(0, [("logits:0", "fc:1"), ("fc:1", "conv2:5"), ("conv2:5", "conv1:0")])
    b = make_graph(1, [("logits:1", "fc:1"), ("fc:1", "conv2:6")])  # stops above conv1
    c = make_graph(2, [("logits:2", "fc:2"), ("fc:2", "conv2:6")])  # stops above conv1
    cmp = compare([a, b, c])
    M = cmp.jaccard["conv1"]
    assert M[1, 2] == 1.0 and M[0, 1] == 0.0  # the function's value: two empty sets are identical
    assert cmp.layer_sizes("conv1").tolist() == [1, 0, 0] and cmp.layer_sizes("all").tolist() == [3, 2, 2]
    rows = {(r["graph_a"], r["graph_b"], r["tap"]): r for r in cmp.jaccard_rows()}
    empty = rows[("class 1", "class 2", "conv1")]
    assert np.isnan(empty["jaccard"]) and (empty["n_a"], empty["n_b"], empty["n_shared"]) == (0, 0, 0)
    assert rows[("class 0", "class 1", "conv1")]["jaccard"] == 0.0
    means = cmp.mean_jaccard()
    assert means["conv1"] == 0.0  # (a, b) and (a, c); (b, c) keep no conv1 neuron and say nothing
    assert means["conv2"] == pytest.approx((0 + 0 + 1) / 3) and means["fc"] == pytest.approx((1 + 0 + 0) / 3)


def test_same_run_reads_the_run_parameters():
    a = make_graph(0, [("logits:0", "fc:1")])
    b = make_graph(1, [("logits:1", "fc:2")])
    a.graph.update(selector_params={"k": 1.5, "two_sided": False}, stop_at=None)
    b.graph.update(selector_params={"k": 3.0, "two_sided": False}, stop_at="null")  # "null": an older writer's None
    with pytest.raises(InvalidInputError, match="different selector parameters: graph 0 .*1.5.*graph 1 .*3.0"):
        compare([a, b])
    assert compare([a, b], allow_mixed=True).labels == ("class 0", "class 1")
    b.graph["selector_params"] = {"k": 1.5, "two_sided": False}
    assert compare([a, b]).labels == ("class 0", "class 1")  # stop_at None == "null"
    a.graph["tap_neurons"] = {"fc": 4, "logits": 4}  # b, from an older ssa, does not record its taps: not compared
    assert compare([a, b]).labels == ("class 0", "class 1")
    b.graph["tap_neurons"] = {"fc": 8, "logits": 4}
    with pytest.raises(InvalidInputError, match="different taps"):
        compare([a, b])
    b.graph["tap_neurons"] = dict(a.graph["tap_neurons"])
    b.graph["stop_at"] = "fc"
    with pytest.raises(InvalidInputError, match="different --stop-at"):
        compare([a, b])
