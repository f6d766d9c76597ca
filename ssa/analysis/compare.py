"""Comparing the dependency graphs of several classes (paper, section 4; method doc, section 7).

* **Bag-of-nodes vectors**: one row per graph, one column per neuron (``"tap:neuron"``) that
  any graph keeps; the entry is the neuron's frequency divided by the graph's number of
  images (``weight="frequency"``) or 1 (``weight="binary"``). The class nodes are left out:
  every class has its own, so they carry no similarity.
* **Ward clustering with cosine distance**: Ward's criterion needs Euclidean distances, and on
  L2-normalised rows the Euclidean distance is ``sqrt(2 * cosine distance)``; so the rows are
  normalised and clustered with ``scipy.cluster.hierarchy.linkage(..., "ward")``.
* **Jaccard similarity per layer**: :func:`ssa.core.graph.jaccard` (``|A ∩ B| / |A ∪ B|``; two empty
  sets: 1.0) of two graphs' kept neurons of one tap. Tables leave a pair blank where neither graph
  keeps a neuron of the tap, and the printed means leave such pairs out.
* **Shared sub-graph**: the neurons every graph keeps, with the edges every graph keeps.
* **Tables**: per-neuron interconnectedness (in-degree, per class and summed) and frequency rank.

Graphs are read through :class:`ssa.core.graph.DependencyGraph` (any ``networkx.DiGraph`` with the
schema's attributes is accepted and converted).
"""

from __future__ import annotations

import csv
import io
import json
import os
import warnings
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import networkx as nx
import numpy as np

from ssa.analysis._common import as_graph
from ssa.core import display
from ssa.core.defaults import other_rule_advice
from ssa.core.graph import RUN_PARAMETERS, DependencyGraph, RunInfo, jaccard
from ssa.core.interfaces import Network
from ssa.errors import InvalidInputError
from ssa.io.atomic import atomic_write_bytes
from ssa.io.graphs import read_graph

__all__ = ["Comparison", "compare", "check_graphs", "same_model", "same_run", "distinct_graphs",
           "check_graph_network", "check_graph_images", "load_graphs", "graph_labels", "bag_of_nodes", "normalise_rows",
           "ward_linkage", "cosine_similarity", "jaccard", "jaccard_by_layer", "shared_subgraph", "interconnectedness",
           "frequency_ranks", "write_csv", "identical_graphs_quietly"]

WEIGHTS = ("frequency", "binary")


def _graphs(graphs: Sequence[nx.DiGraph]) -> list[DependencyGraph]:
    return [as_graph(g) for g in graphs]


def _neuron_nodes(g: DependencyGraph) -> list[str]:
    """The graph's nodes other than the class node, top layer first (:meth:`DependencyGraph.layers`)."""
    top = g.class_node
    return [n for _, nodes in g.layers() for n in nodes if n != top]


def _sort_key(g: DependencyGraph) -> Callable[[str], tuple[int, str, int]]:
    def key(n: str) -> tuple[int, str, int]:
        info = g.info(n)
        return (-info.tap_order, info.tap, info.neuron)
    return key


def _target(g: DependencyGraph) -> int | None:
    t = g.run.target
    return t if t >= 0 else None


def graph_labels(graphs: Sequence[nx.DiGraph], names: Sequence[str] | None = None) -> list[str]:
    """``"class 3"`` per graph when the targets are distinct, else the given names (file stems)."""
    targets = [_target(g) for g in _graphs(graphs)]
    if None not in targets and len(set(targets)) == len(targets):
        return [f"class {t}" for t in targets]
    if names is not None:
        if len(set(names)) == len(names):
            return list(names)
        return [f"{n} ({i})" for i, n in enumerate(names)]
    return [f"graph {i}" for i in range(len(graphs))]


#: what each run parameter (:data:`ssa.core.graph.RUN_PARAMETERS`, and the taps) is called in messages
_WORDS = {"rule": "rule", "rule_params": "rule parameters", "selector": "selector",
          "selector_params": "selector parameters", "branching": "branching factor", "images_hash": "image set",
          "grouping": "image grouping", "min_confidence": "--min-confidence", "max_per_class": "--max-per-class",
          "stop_at": "--stop-at", "tap_neurons": "taps", "preprocess": "preprocessing"}
#: run parameters whose None is a value ("not set"), compared like any other
_NONE_IS_A_VALUE = ("stop_at", "min_confidence", "max_per_class")


def _recorded(key: str, value: Any) -> bool:
    """False for a parameter a graph does not record (written by an older ssa): None, or an empty mapping (a
    rule's, selector's or network's parameters always list every entry, so empty means not written)."""
    if key in _NONE_IS_A_VALUE:
        return True
    return value is not None and not (isinstance(value, Mapping) and not value)


def _short(value: Any) -> str:
    if isinstance(value, Mapping):
        value = dict(value)
    text = json.dumps(value, sort_keys=True) if isinstance(value, (dict, list)) else str(value)
    return text[:12] if len(text) == 32 and all(c in "0123456789abcdef" for c in text) else text


def _model_of(run: RunInfo) -> str:
    return f"{run.model!r}" + (f" (content hash {str(run.model_hash)[:12]})" if run.model_hash else "")


def same_model(graphs: Sequence[nx.DiGraph], names: Sequence[str]) -> None:
    """Refuse graphs of different models: by content hash (``model_hash``), or by name for graphs that have none."""
    runs = [g.run for g in _graphs(graphs)]
    ref = runs[0]
    for name, run in zip(names[1:], runs[1:], strict=False):
        differ = (ref.model_hash != run.model_hash) if (ref.model_hash and run.model_hash) else (ref.model != run.model)
        if differ:
            same_name = ref.model == run.model
            raise InvalidInputError(
                f"the graphs come from different models: {names[0]} from {_model_of(ref)}, {name} from "
                f"{_model_of(run)}{' (same name, other weights or graph)' if same_name else ''}; compare graphs of one "
                "model only.")


def same_run(graphs: Sequence[nx.DiGraph], names: Sequence[str], flag: str = "--allow-mixed") -> None:
    """Refuse graphs made with different run parameters (:data:`ssa.core.graph.RUN_PARAMETERS`: rules, selectors,
    their parameters, branching factors, image sets, ...) or taps.

    A parameter a graph does not record (written by an older ssa) is not compared. The image set is compared
    only between graphs of one class: graphs of different classes may come from one image file per class (the
    paper's set-up), so their image sets are expected to differ.
    """
    runs = [g.run for g in _graphs(graphs)]
    for key in (*RUN_PARAMETERS, "tap_neurons"):
        values = [getattr(run, key) for run in runs]
        if not all(_recorded(key, v) for v in values):
            continue
        for i, (name, v) in enumerate(zip(names, values, strict=True)):
            # the first graph before it that must agree: the first graph, or (image set) the first of its class
            j = next(j for j in range(i + 1) if key != "images_hash" or runs[j].target == runs[i].target)
            if v != values[j]:
                raise InvalidInputError(
                    f"the graphs were made with different {_WORDS.get(key, key)}: {names[j]} {_short(values[j])}, "
                    f"{name} {_short(v)}; compare graphs of one run (ssa analyse --targets ...), or pass {flag} to "
                    "compare them anyway.")


def distinct_graphs(graphs: Sequence[nx.DiGraph], names: Sequence[str]) -> None:
    """Refuse one class given twice from one run: the same graph file twice, or copies of it (the same class, run
    parameters, taps and image set of one model), which the comparison would count as two classes (the
    clustering, the similarities and the shared sub-graph would all be skewed towards it). Graphs of one class
    from different runs (``--allow-mixed``) or without a recorded image set are compared as before."""
    seen: dict[str, int] = {}
    for i, g in enumerate(_graphs(graphs)):
        run = g.run
        if run.target < 0 or not run.images_hash:
            continue
        key = json.dumps([run.model_hash, run.target, [getattr(run, k) for k in (*RUN_PARAMETERS, "tap_neurons")]],
                         sort_keys=True, default=str)
        if key in seen:
            j = seen[key]
            raise InvalidInputError(
                f"{names[j]} and {names[i]} are the same class {run.target} from one run (same model, parameters "
                "and image set), so it would be compared with itself and counted twice; pass each class once.")
        seen[key] = i


def check_graphs(graphs: Sequence[nx.DiGraph], names: Sequence[str] | None = None, *,
                 allow_mixed: bool = False) -> None:
    """Refuse fewer than two graphs, graphs of different models (by content hash), graphs of different runs
    (rule, selector, their parameters, branching factor, image set, ...; unless ``allow_mixed``), one class of one
    run twice (:func:`distinct_graphs`) and empty graphs (one line each)."""
    names = list(names) if names is not None else [f"graph {i}" for i in range(len(graphs))]
    if len(graphs) < 2:
        raise InvalidInputError(f"comparing needs at least 2 graphs, got {len(graphs)}; pass two or more graph files.")
    graphs = _graphs(graphs)
    same_model(graphs, names)
    if not allow_mixed:
        same_run(graphs, names)
    for name, g in zip(names, graphs, strict=False):
        if not g.node_set():
            who = ", ".join(str(n) for n in g.nodes) or "no node at all"
            raise InvalidInputError(
                f"{name} is an empty graph (only the class node: {who}); nothing to compare. Re-run `ssa analyse` "
                f"with more images, {other_rule_advice(g.run.rule)}a lower selector threshold, or leave it out.")
    distinct_graphs(graphs, names)


def check_graph_network(graph: nx.DiGraph, network: Network, name: str) -> None:
    """Refuse a graph made with another model than ``network`` (a prepared network), by content hash."""
    run = as_graph(graph).run
    if run.model_hash:
        if run.model_hash != network.model_hash():
            raise InvalidInputError(
                f"{name} was made with model {_model_of(run)}, not with this {network.name!r} (content hash "
                f"{network.model_hash()[:12]}); pass the model the graph was made with.")
    elif run.model not in (None, network.name):
        raise InvalidInputError(f"{name} was made with model {run.model!r}, not {network.name!r}; "
                                "pass the model the graph was made with.")


def check_graph_images(graph: nx.DiGraph, images_hash: str, name: str, *, allow_mixed: bool = False) -> None:
    """Refuse (unless ``allow_mixed``) a graph made from another image set than the one loaded."""
    h = as_graph(graph).run.images_hash
    if h and h != images_hash and not allow_mixed:
        raise InvalidInputError(
            f"{name} was made from another image set (content hash {str(h)[:12]}, these images {images_hash[:12]}); "
            "pass the images (and --labels) the graph was made with, or --allow-mixed to use these images anyway.")


def load_graphs(paths: Sequence[str | os.PathLike]) -> tuple[list[DependencyGraph], list[str]]:
    """Read graph files; returns the graphs and their file names (for messages and labels)."""
    graphs = [read_graph(p) for p in paths]
    return graphs, [Path(p).stem for p in paths]


def bag_of_nodes(graphs: Sequence[nx.DiGraph], weight: str = "frequency") -> tuple[list[str], np.ndarray]:
    """Bag-of-nodes vectors: ``(nodes, matrix)`` with ``matrix[g, j]`` the weight of ``nodes[j]`` in graph g.

    ``weight="frequency"``: the node's frequency / the graph's n_images (0..1); ``"binary"``: 1.
    Columns are ordered top layer first, then by neuron; class nodes are left out.
    """
    if weight not in WEIGHTS:
        raise InvalidInputError(f"weight must be 'frequency' or 'binary', got {weight!r}.")
    graphs = _graphs(graphs)
    key: dict[str, tuple[int, str, int]] = {}
    for g in graphs:
        sort_key = _sort_key(g)
        for n in _neuron_nodes(g):
            key.setdefault(n, sort_key(n))
    nodes = sorted(key, key=key.__getitem__)
    col = {n: j for j, n in enumerate(nodes)}
    X = np.zeros((len(graphs), len(nodes)))
    for i, g in enumerate(graphs):
        n_img = float(g.run.n_images or 0) or max((g.info(n).frequency for n in g.nodes), default=1) or 1.0
        for n in _neuron_nodes(g):
            X[i, col[n]] = 1.0 if weight == "binary" else g.info(n).frequency / n_img
    return nodes, X


def normalise_rows(X: np.ndarray) -> np.ndarray:
    """Each row divided by its L2 norm (zero rows stay zero)."""
    X = np.asarray(X, dtype=np.float64)
    norm = np.linalg.norm(X, axis=1, keepdims=True)
    return np.divide(X, norm, out=np.zeros_like(X), where=norm > 0)


def ward_linkage(X: np.ndarray) -> np.ndarray:
    """Ward linkage of the L2-normalised rows (Euclidean there = sqrt(2 * cosine distance))."""
    from scipy.cluster.hierarchy import linkage  # scipy: imported by the comparison, not by every `ssa` command

    return linkage(normalise_rows(X), method="ward", metric="euclidean")


def cosine_similarity(X: np.ndarray) -> np.ndarray:
    """Cosine similarity between rows."""
    Y = normalise_rows(X)
    return np.clip(Y @ Y.T, -1.0, 1.0)


def _tap_sets(g: DependencyGraph) -> dict[str, set[str]]:
    """The graph's neurons per tap (class node left out; taps without neurons left out)."""
    top = g.class_node
    sets = {tap: set(nodes) - {top} for tap, nodes in g.layers()}
    return {tap: s for tap, s in sets.items() if s}


def _tap_orders(graphs: Sequence[DependencyGraph]) -> dict[str, int]:
    orders: dict[str, int] = {}
    for g in graphs:
        for n in _neuron_nodes(g):
            info = g.info(n)
            orders.setdefault(info.tap, info.tap_order)
    return orders


def _pair_sets(sets: Sequence[Mapping[str, set[str]]], tap: str, i: int) -> set[str]:
    return set().union(*sets[i].values()) if tap == "all" else sets[i].get(tap, set())


def jaccard_by_layer(graphs: Sequence[nx.DiGraph]) -> dict[str, np.ndarray]:
    """``{tap: (G, G) matrix}`` of pairwise :func:`jaccard` similarities per tap (top tap first), plus ``"all"``.

    A pair of graphs that both keep no neuron of a tap has similarity 1.0 there (the convention of
    :func:`ssa.core.graph.jaccard`); :meth:`Comparison.mean_jaccard` and the tables leave such pairs out.
    """
    graphs = _graphs(graphs)
    orders = _tap_orders(graphs)
    taps = sorted(orders, key=lambda t: -orders[t])
    sets = [_tap_sets(g) for g in graphs]
    out: dict[str, np.ndarray] = {}
    for tap in taps + ["all"]:
        M = np.zeros((len(graphs), len(graphs)))
        for i in range(len(graphs)):
            for j in range(len(graphs)):
                M[i, j] = jaccard(_pair_sets(sets, tap, i), _pair_sets(sets, tap, j))
        out[tap] = M
    return out


def shared_subgraph(graphs: Sequence[nx.DiGraph], labels: Sequence[str] | None = None) -> nx.DiGraph:
    """The sub-graph every graph shares: nodes kept by all, with the edges (of the same sign) all keep.

    Node attributes: ``tap``, ``tap_order``, ``neuron``, ``frequency`` (the smallest frequency / n_images
    over the graphs), ``mean_frequency``, ``in_degree`` (in the shared graph), ``sign``. Edge attributes:
    ``frequency`` (smallest share of images), ``relevance`` (mean over graphs), ``sign``.
    Graph attributes: ``model``, ``kind="shared"``, ``classes`` (the labels, comma-joined).
    """
    if len(graphs) < 1:
        raise InvalidInputError("shared_subgraph needs at least 1 graph, got 0.")
    graphs = _graphs(graphs)
    labels = list(labels) if labels is not None else graph_labels(graphs)
    shares = [float(g.run.n_images or 1) for g in graphs]
    common = set(graphs[0].nodes)
    for g in graphs[1:]:
        common &= set(g.nodes)
    h: nx.DiGraph = nx.DiGraph()
    h.graph.update({"model": graphs[0].run.model, "kind": "shared", "classes": ", ".join(labels),
                    "n_graphs": len(graphs)})
    targets = {_target(g) for g in graphs}
    if len(targets) == 1 and None not in targets:
        h.graph["target"] = targets.pop()
    for n in sorted(common, key=_sort_key(graphs[0])):
        d0 = graphs[0].info(n)
        fr = [g.info(n).frequency / s for g, s in zip(graphs, shares, strict=False)]
        signs = {g.info(n).sign for g in graphs}
        h.add_node(n, tap=d0.tap, tap_order=d0.tap_order, neuron=d0.neuron, frequency=float(min(fr)),
                   mean_frequency=float(np.mean(fr)), in_degree=0, sign=1 if 1 in signs else -1)
    for u, v in graphs[0].edges:
        if u not in h or v not in h:
            continue
        es = [g.edge_info(u, v) for g in graphs if g.has_edge(u, v)]
        if len(es) != len(graphs) or len({e.sign for e in es}) != 1:
            continue
        h.add_edge(u, v, frequency=float(min(e.frequency / s for e, s in zip(es, shares, strict=False))),
                   relevance=float(np.mean([e.relevance for e in es])), sign=es[0].sign)
    for n in h.nodes:
        h.nodes[n]["in_degree"] = int(h.in_degree(n))
    return h


def interconnectedness(graphs: Sequence[nx.DiGraph], labels: Sequence[str]) -> list[dict[str, Any]]:
    """Per neuron: in how many graphs it is kept and its in-degree (interconnectedness) in each and in total.

    Sorted by number of graphs, then total in-degree (both descending), then top layer first.
    """
    rows: dict[str, dict[str, Any]] = {}
    for g, label in zip(_graphs(graphs), labels, strict=False):
        for n in _neuron_nodes(g):
            info = g.info(n)
            r = rows.setdefault(n, {"node": n, "tap": info.tap, "tap_order": info.tap_order, "neuron": info.neuron,
                                    "n_graphs": 0, "total_in_degree": 0, **{f"in_degree[{lab}]": 0 for lab in labels}})
            r["n_graphs"] += 1
            r["total_in_degree"] += info.in_degree
            r[f"in_degree[{label}]"] = info.in_degree
    return sorted(rows.values(), key=lambda r: (-r["n_graphs"], -r["total_in_degree"], -r["tap_order"], r["neuron"]))


def frequency_ranks(graphs: Sequence[nx.DiGraph], labels: Sequence[str]) -> list[dict[str, Any]]:
    """Per graph and neuron: its frequency, share of images, rank within its tap (1 = most frequent),
    in-degree and mean relevance. Ties in frequency are broken by mean relevance, then neuron index."""
    out = []
    for g, label in zip(_graphs(graphs), labels, strict=False):
        n_img = float(g.run.n_images or 1)
        target = _target(g)
        top = g.class_node
        for tap, nodes in g.layers():  # top layer first
            infos = sorted((g.info(n) for n in nodes if n != top),
                           key=lambda i: (-i.frequency, -i.mean_relevance, i.neuron))
            for rank, info in enumerate(infos, 1):
                out.append({"graph": label, "target": target, "tap": tap, "neuron": info.neuron, "node": info.id,
                            "rank": rank, "frequency": info.frequency,
                            "frequency_share": round(info.frequency / n_img, 6), "in_degree": info.in_degree,
                            "mean_relevance": info.mean_relevance})
    return out


def _csv_bytes(rows: Sequence[Mapping[str, Any]] | Sequence[Sequence[Any]], header: Sequence[str] | None = None
               ) -> bytes:
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    if rows and isinstance(rows[0], Mapping):
        header = list(header or rows[0].keys())
        w.writerow(header)
        for r in rows:
            assert isinstance(r, Mapping)  # all mappings (the first is one) or all sequences
            w.writerow(["" if _isnan(r.get(k)) else r.get(k) for k in header])
    else:
        if header is not None:
            w.writerow(header)
        for r in rows:
            w.writerow(["" if _isnan(v) else v for v in r])
    return buf.getvalue().encode()


def _isnan(v: Any) -> bool:
    return isinstance(v, float) and v != v


def write_csv(rows: Sequence[Mapping[str, Any]] | Sequence[Sequence[Any]], path: str | os.PathLike,
              header: Sequence[str] | None = None) -> Path:
    """Write rows (dicts, or lists with ``header``) as CSV, atomically."""
    path = Path(path)
    atomic_write_bytes(path, _csv_bytes(rows, header))
    return path


@dataclass(frozen=True)
class Comparison:
    """The comparison of several class graphs.

    labels : one per graph ("class 3", or file names).
    model : the model all graphs come from.
    weight : "frequency" or "binary" (bag-of-nodes weights).
    nodes : the bag-of-nodes columns (``"tap:neuron"``), top layer first.
    matrix : (G, len(nodes)) bag-of-nodes vectors.
    linkage : scipy linkage matrix of Ward clustering on the L2-normalised rows.
    order : the dendrogram's leaf order (indices into labels).
    similarity : (G, G) cosine similarity of the vectors.
    jaccard : ``{tap: (G, G)}`` pairwise Jaccard similarity per tap, and ``"all"`` (:func:`jaccard_by_layer`).
    graphs : the graphs compared.
    """

    labels: tuple[str, ...]
    model: str
    weight: str
    nodes: tuple[str, ...]
    matrix: np.ndarray
    linkage: np.ndarray
    order: tuple[int, ...]
    similarity: np.ndarray
    jaccard: Mapping[str, np.ndarray]
    graphs: tuple[DependencyGraph, ...] = field(repr=False, default=())

    def _repr_html_(self) -> str | None:
        """Jupyter's view: the similarity table and the explorer of every graph (:mod:`ssa.viz.notebook`)."""
        return display.html(self)

    def shared(self, which: Sequence[int] | None = None) -> nx.DiGraph:
        """Shared sub-graph of the graphs at positions ``which`` (all by default)."""
        idx = list(range(len(self.graphs))) if which is None else list(which)
        return shared_subgraph([self.graphs[i] for i in idx], [self.labels[i] for i in idx])

    def shared_nodes(self) -> set[str]:
        """Neurons kept by at least two of the graphs (highlighted in the graph drawings)."""
        counts: dict[str, int] = {}
        for g in self.graphs:
            for n in g.node_set():
                counts[n] = counts.get(n, 0) + 1
        return {n for n, c in counts.items() if c >= 2}

    def interconnectedness(self) -> list[dict[str, Any]]:
        return interconnectedness(self.graphs, self.labels)

    def frequency_ranks(self) -> list[dict[str, Any]]:
        return frequency_ranks(self.graphs, self.labels)

    def layer_sizes(self, tap: str) -> np.ndarray:
        """How many neurons of ``tap`` (``"all"``: of every tap) each graph keeps, shape (G,)."""
        sets = [_tap_sets(g) for g in self.graphs]
        return np.array([len(_pair_sets(sets, tap, i)) for i in range(len(self.graphs))], dtype=np.int64)

    def _pairs(self) -> Iterator[tuple[int, int]]:
        for i in range(len(self.labels)):
            for j in range(i + 1, len(self.labels)):
                yield i, j

    def mean_jaccard(self) -> dict[str, float]:
        """Per tap (and ``"all"``): the mean Jaccard similarity over pairs of graphs of which at least one keeps a
        neuron of the tap (pairs where neither does say nothing about similarity); NaN when there is none."""
        out = {}
        for tap, M in self.jaccard.items():
            sizes = self.layer_sizes(tap)
            vals = [M[i, j] for i, j in self._pairs() if sizes[i] or sizes[j]]
            out[tap] = float(np.mean(vals)) if vals else float("nan")
        return out

    def jaccard_rows(self) -> list[dict[str, Any]]:
        """Long table: one row per pair of graphs and tap; ``jaccard`` is blank (NaN) where neither graph keeps a
        neuron of the tap."""
        rows = []
        sets = [_tap_sets(g) for g in self.graphs]
        for tap, M in self.jaccard.items():
            for i, j in self._pairs():
                a, b = _pair_sets(sets, tap, i), _pair_sets(sets, tap, j)
                rows.append({"graph_a": self.labels[i], "graph_b": self.labels[j], "tap": tap,
                             "jaccard": round(float(M[i, j]), 6) if a or b else float("nan"),
                             "n_a": len(a), "n_b": len(b), "n_shared": len(a & b)})
        return rows

    def closest_pairs(self, k: int = 5) -> list[tuple[str, str, float]]:
        """The ``k`` most similar pairs by cosine similarity."""
        pairs = [(self.labels[i], self.labels[j], float(self.similarity[i, j]))
                 for i in range(len(self.labels)) for j in range(i + 1, len(self.labels))]
        return sorted(pairs, key=lambda p: -p[2])[:k]

    def write_tables(self, out_dir: str | os.PathLike) -> list[Path]:
        """Write the CSV tables into ``out_dir``; returns the paths."""
        d = Path(out_dir)
        labels = list(self.labels)
        written = [
            write_csv([[lab, *(round(float(v), 6) for v in row)] for lab, row in zip(labels, self.matrix, strict=True)],
                      d / "bag-of-nodes.csv", ["graph", *self.nodes]),
            write_csv([[lab, *(round(float(v), 6) for v in row)] for lab, row in zip(labels, self.similarity,
                                                                                     strict=True)],
                      d / "cosine-similarity.csv", ["graph", *labels]),
            write_csv(self.jaccard_rows(), d / "jaccard.csv",
                      ["graph_a", "graph_b", "tap", "jaccard", "n_a", "n_b", "n_shared"]),
            write_csv([[int(a), int(b), round(float(dist), 6), int(n)] for a, b, dist, n in self.linkage],
                      d / "linkage.csv", ["cluster_a", "cluster_b", "distance", "size"]),
            write_csv([{k: v for k, v in r.items() if k != "tap_order"} for r in self.interconnectedness()],
                      d / "interconnectedness.csv"),
            write_csv(self.frequency_ranks(), d / "frequency-rank.csv"),
        ]
        return written

    def to_dict(self) -> dict[str, Any]:
        return {"labels": list(self.labels), "model": self.model, "weight": self.weight,
                "order": [self.labels[i] for i in self.order],
                "similarity": np.round(self.similarity, 6).tolist(),
                "linkage": np.round(self.linkage, 6).tolist()}


@contextmanager
def identical_graphs_quietly():
    """Silence matplotlib's "identical low and high xlims" warnings, which scipy's dendrogram raises when every
    merge is at distance 0 (identical graphs): the figures are still right."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Attempting to set identical", category=UserWarning)
        yield


def compare(graphs: Sequence[nx.DiGraph], labels: Sequence[str] | None = None, *, weight: str = "frequency",
            names: Sequence[str] | None = None, allow_mixed: bool = False) -> Comparison:
    """Compare class graphs: bag-of-nodes, Ward clustering, cosine similarity, Jaccard per layer.

    Parameters
    ----------
    graphs : two or more dependency graphs of the same model.
    labels : names shown in figures and tables (default ``"class <target>"``, else ``names``).
    weight : "frequency" (frequency / n_images) or "binary".
    names : what to call each graph in error messages (file names).
    allow_mixed : compare graphs made with different rules, selectors, parameters, branching factors or
        image sets (graphs of different models are always refused).
    """
    graphs = _graphs(graphs)
    check_graphs(graphs, names or labels, allow_mixed=allow_mixed)
    labels = list(labels) if labels is not None else graph_labels(graphs, names)
    if len(labels) != len(graphs):
        raise InvalidInputError(f"labels has {len(labels)} entries for {len(graphs)} graphs; they must match.")
    nodes, X = bag_of_nodes(graphs, weight)
    from scipy.cluster.hierarchy import leaves_list

    Z = ward_linkage(X)
    return Comparison(labels=tuple(labels), model=str(graphs[0].run.model), weight=weight,
                      nodes=tuple(nodes), matrix=X, linkage=Z, order=tuple(int(i) for i in leaves_list(Z)),
                      similarity=cosine_similarity(X), jaccard=jaccard_by_layer(graphs), graphs=tuple(graphs))
