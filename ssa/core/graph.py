"""The dependency graph: its schema (:class:`DependencyGraph`) and how it is built from the traversal.

A dependency graph is a :class:`networkx.DiGraph` subclass whose nodes are ``"tap:neuron"`` strings
and whose edges go from an upper neuron to a lower neuron it depends on (method doc, section 3).
Its attributes are typed and versioned (``schema``); :class:`RunInfo` holds the run's parameters.

Node attributes (:class:`NodeInfo`): ``tap``, ``tap_order``, ``neuron``, ``frequency`` (the largest
edge frequency into the node; the number of images for the class node), ``mean_relevance`` (mean
relevance of the edges into the node), ``active_fraction`` (share of images in which the neuron's
scalar is > 0; NaN where unknown), ``in_degree`` (how many upper neurons keep it: the paper's
interconnectedness), ``sign`` (+1, or -1 for a node reached only by inhibitory edges).
Edge attributes (:class:`EdgeInfo`): ``frequency``, ``relevance``, ``sign``.

Graph attributes (:class:`RunInfo`): ``schema``, ``target``, ``n_images``, ``branching``, ``rule``,
``rule_params``, ``selector``, ``selector_params``, ``model`` (display name), ``model_hash``,
``images_hash``, ``stop_at``, ``tap_neurons`` (neurons per tap), ``notes`` (why a graph stops early),
``grouping``, ``min_confidence``, ``max_per_class`` (how the class's images were chosen), ``class_map``
(for class folders: ``{folder: class index}``, the labels the run used; see :mod:`ssa.io.classmap`),
``preprocess`` (for image files: how they were decoded, :func:`ssa.io.preprocess.describe_preprocess`),
``threads`` (the CPU threads torch computed with: its CPU kernels round differently with one thread and with
several, so this count reproduces the graph bit for bit; :func:`ssa.core.threads.torch_threads`). In memory
they are plain Python values (dicts, lists); :mod:`ssa.io.graphs` writes and reads them exactly.

Similarity of two node sets is :func:`jaccard`, with one convention for empty sets everywhere.
"""

from __future__ import annotations

import contextlib
import gc
import json
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import networkx as nx
import numpy as np

from ssa.core import display
from ssa.core.interfaces import Tap
from ssa.core.traversal import StepRecord

__all__ = ["SCHEMA_VERSION", "NodeInfo", "EdgeInfo", "RunInfo", "DependencyGraph", "jaccard", "node_id", "parse_node",
           "build_graph", "RUN_PARAMETERS"]

#: Version of the graph schema written into every graph (``graph["schema"]``). Version 0 is a graph
#: written before the schema existed (parameters as JSON strings); it is read and upgraded.
SCHEMA_VERSION = 1

#: The graph attributes that say how a graph was made; graphs to be compared should agree on them
#: (``ssa compare`` refuses a difference unless ``--allow-mixed``).
RUN_PARAMETERS = ("rule", "rule_params", "selector", "selector_params", "branching", "images_hash", "grouping",
                  "min_confidence", "max_per_class", "stop_at", "preprocess")

_JSON_ATTRS = ("rule_params", "selector_params", "tap_neurons", "notes")


@dataclass(frozen=True)
class NodeInfo:
    """The attributes of one node (see the module docstring)."""

    id: str
    tap: str
    tap_order: int
    neuron: int
    frequency: int
    mean_relevance: float
    active_fraction: float
    in_degree: int
    sign: int


@dataclass(frozen=True)
class EdgeInfo:
    """The attributes of one edge ``upper -> lower``."""

    upper: str
    lower: str
    frequency: int
    relevance: float
    sign: int


@dataclass(frozen=True)
class RunInfo:
    """The graph attributes: the class, the run's parameters and where the graph came from."""

    target: int
    n_images: int
    branching: int | None = None
    rule: str | None = None
    rule_params: Mapping[str, Any] = field(default_factory=dict)
    selector: str | None = None
    selector_params: Mapping[str, Any] = field(default_factory=dict)
    model: str | None = None
    model_hash: str | None = None
    images_hash: str | None = None
    stop_at: str | None = None
    tap_neurons: Mapping[str, int] = field(default_factory=dict)
    notes: tuple[str, ...] = ()
    grouping: str | None = None
    min_confidence: float | None = None
    max_per_class: int | None = None
    class_map: Mapping[str, int] = field(default_factory=dict)
    preprocess: str | None = None
    threads: int | None = None
    schema: int = SCHEMA_VERSION
    extra: Mapping[str, Any] = field(default_factory=dict)

    def parameters(self) -> dict[str, Any]:
        """The run parameters (:data:`RUN_PARAMETERS`) as a dict."""
        return {k: getattr(self, k) for k in RUN_PARAMETERS}


def _parsed(value: Any) -> Any:
    """A graph attribute that an older writer stored as a JSON string, as its value."""
    if isinstance(value, str):
        try:
            return json.loads(value)
        except ValueError:
            return value
    return value


def normalise_attrs(attrs: Mapping[str, Any]) -> dict[str, Any]:
    """Graph attributes in their in-memory form: JSON strings of older writers parsed, the schema set."""
    out = dict(attrs)
    for key in _JSON_ATTRS:
        if key in out:
            out[key] = _parsed(out[key])
    if "notes" in out and out["notes"] is not None:
        out["notes"] = list(out["notes"])
    for key in ("stop_at", "images_hash", "model_hash", "grouping", "min_confidence", "max_per_class", "preprocess"):
        if out.get(key) == "null" or out.get(key) == "":
            out[key] = None
    out["schema"] = SCHEMA_VERSION
    return out


class DependencyGraph(nx.DiGraph):  # type: ignore[type-arg]  # networkx.DiGraph is generic only in its stubs
    """The dependency graph of one class (a :class:`networkx.DiGraph`), with typed accessors.

    Everything networkx offers works as usual; these methods are the one place that knows the
    attribute names (``layers``, ``neurons``, ``node_set``, ``run``).
    """

    def _repr_html_(self) -> str | None:
        """Jupyter's view: a table of the layers and the explorer (:mod:`ssa.viz.notebook`)."""
        return display.html(self)

    @classmethod
    def from_networkx(cls, g: nx.Graph[Any]) -> DependencyGraph:
        """A copy of ``g`` as a :class:`DependencyGraph`, attributes normalised (older files upgraded)."""
        out = cls()
        out.graph.update(normalise_attrs(g.graph))
        out.add_nodes_from(g.nodes(data=True))
        out.add_edges_from(g.edges(data=True))
        return out

    # -- the run ------------------------------------------------------------------------------
    @property
    def run(self) -> RunInfo:
        attrs = normalise_attrs(self.graph)
        known = {f for f in RunInfo.__dataclass_fields__ if f != "extra"}
        kwargs = {k: attrs[k] for k in known if k in attrs}
        kwargs["notes"] = tuple(kwargs.get("notes") or ())
        kwargs["rule_params"] = dict(kwargs.get("rule_params") or {})
        kwargs["selector_params"] = dict(kwargs.get("selector_params") or {})
        kwargs["tap_neurons"] = {str(k): int(v) for k, v in dict(kwargs.get("tap_neurons") or {}).items()}
        kwargs["class_map"] = {str(k): int(v) for k, v in dict(kwargs.get("class_map") or {}).items()}
        kwargs.setdefault("target", int(attrs.get("target", -1)))
        kwargs.setdefault("n_images", int(attrs.get("n_images", 0)))
        return RunInfo(**kwargs, extra={k: v for k, v in attrs.items() if k not in known})

    @property
    def target(self) -> int:
        return int(self.graph.get("target", -1))

    @property
    def class_node(self) -> str:
        """The class node, ``"logits:<target>"``."""
        return node_id("logits", self.target)

    # -- nodes and layers ---------------------------------------------------------------------
    def info(self, node: str) -> NodeInfo:
        d = self.nodes[node]
        return NodeInfo(node, str(d["tap"]), int(d.get("tap_order", 0)), int(d["neuron"]), int(d.get("frequency", 0)),
                        float(d.get("mean_relevance", 0.0)), float(d.get("active_fraction", float("nan"))),
                        int(d.get("in_degree", 0)), int(d.get("sign", 1)))

    def edge_info(self, upper: str, lower: str) -> EdgeInfo:
        d = self.edges[upper, lower]
        return EdgeInfo(upper, lower, int(d.get("frequency", 0)), float(d.get("relevance", 0.0)), int(d.get("sign", 1)))

    def taps(self) -> list[str]:
        """The taps that have nodes, top (logits) first: by ``tap_order`` descending."""
        order: dict[str, int] = {}
        for _, d in self.nodes(data=True):
            order[d["tap"]] = max(order.get(d["tap"], -1), int(d.get("tap_order", 0)))
        return sorted(order, key=lambda t: -order[t])

    def layers(self) -> list[tuple[str, list[str]]]:
        """``[(tap, [node, ...]), ...]`` top first; nodes by frequency (desc), then neuron."""
        by_tap: dict[str, list[str]] = {t: [] for t in self.taps()}
        for n, d in self.nodes(data=True):
            by_tap[d["tap"]].append(n)
        return [(t, sorted(ns, key=lambda n: (-int(self.nodes[n].get("frequency", 0)), int(self.nodes[n]["neuron"]))))
                for t, ns in by_tap.items()]

    def neurons(self, tap: str) -> list[int]:
        """The neurons of ``tap`` in the graph, ascending."""
        return sorted(int(d["neuron"]) for _, d in self.nodes(data=True) if d["tap"] == tap)

    def node_set(self, *, include_class: bool = False, sign: int | None = None) -> frozenset[str]:
        """The graph's nodes (without the class node unless ``include_class``; only one ``sign`` if given)."""
        top = self.class_node
        return frozenset(n for n, d in self.nodes(data=True)
                         if (include_class or n != top) and (sign is None or int(d.get("sign", 1)) == sign))


def jaccard(a: Iterable[Any], b: Iterable[Any]) -> float:
    """|A ∩ B| / |A ∪ B|; two empty sets are identical: 1.0 (the one convention, everywhere in ssa)."""
    sa, sb = set(a), set(b)
    union = sa | sb
    return 1.0 if not union else len(sa & sb) / len(union)


def node_id(tap: str, neuron: int) -> str:
    return f"{tap}:{int(neuron)}"


def parse_node(node: str) -> tuple[str, int]:
    """``"features.3:12"`` -> ``("features.3", 12)`` (tap names may contain colons)."""
    tap, _, neuron = str(node).rpartition(":")
    if not tap:
        raise ValueError(f"node {node!r} is not 'tap:neuron'")
    return tap, int(neuron)


def build_graph(*, taps: Sequence[Tap], steps: Sequence[StepRecord], target: int, n_images: int,
                active: Mapping[str, np.ndarray], attrs: Mapping[str, Any]) -> DependencyGraph:
    """Assemble the dependency graph from the traversal's step records.

    Vectorised over the kept edges of all steps: node attributes are group-wise reductions of
    the edges into each node (maximum frequency, mean relevance, in-degree, sign).
    """
    by_name = {t.name: t for t in taps}
    g = DependencyGraph()
    g.graph.update(normalise_attrs(attrs))
    g.graph["target"] = int(target)
    g.graph["n_images"] = int(n_images)
    names = list(by_name)
    code = {name: i for i, name in enumerate(names)}
    ups, los, ut, lt, freq, rel, sign = [], [], [], [], [], [], []
    for step in steps:
        m = len(step.kept_lower)
        if not m:
            continue
        ups.append(step.kept_upper)
        los.append(step.kept_lower)
        ut.append(np.full(m, code[step.upper], np.int64))
        lt.append(np.full(m, code[step.parent], np.int64))
        freq.append(step.kept_count)
        rel.append(step.kept_relevance)
        sign.append(step.kept_sign)
    top_code = code["logits"]
    if ups:
        u_tap, u_n = np.concatenate(ut), np.concatenate(ups).astype(np.int64)
        l_tap, l_n = np.concatenate(lt), np.concatenate(los).astype(np.int64)
        e_freq, e_rel, e_sign = np.concatenate(freq), np.concatenate(rel), np.concatenate(sign)
    else:
        u_tap = u_n = l_tap = l_n = e_freq = e_sign = np.zeros(0, np.int64)
        e_rel = np.zeros(0, np.float64)
    m = len(u_n)
    # nodes in order of first appearance: the class node, then (upper, lower) of every edge in turn
    seq_tap = np.concatenate([[top_code], np.stack([u_tap, l_tap], 1).reshape(-1)]).astype(np.int64)
    seq_n = np.concatenate([[int(target)], np.stack([u_n, l_n], 1).reshape(-1)]).astype(np.int64)
    width = int(max(seq_n.max(initial=0), 0)) + 1
    keys = seq_tap * width + seq_n
    uniq, first, inverse = np.unique(keys, return_index=True, return_inverse=True)
    order = np.argsort(first, kind="stable")
    node_tap, node_n = seq_tap[first[order]], seq_n[first[order]]
    rank = np.empty(len(uniq), np.int64)
    rank[order] = np.arange(len(uniq))
    node_of = rank[inverse]  # position of every sequence entry among the ordered nodes
    u_node, l_node = node_of[1::2], node_of[2::2]
    nn_ = len(node_tap)
    if m:  # an edge kept twice (positive and inhibitory): networkx keeps the first place, the last attributes
        pair = u_node * nn_ + l_node
        _, first_e = np.unique(pair, return_index=True)
        if len(first_e) < m:
            _, last_rev = np.unique(pair[::-1], return_index=True)
            last_e = m - 1 - last_rev
            keep = np.sort(first_e)
            src = dict(zip(pair[first_e].tolist(), last_e.tolist(), strict=True))
            take = np.array([src[p] for p in pair[keep].tolist()], np.int64)
            u_node, l_node = u_node[keep], l_node[keep]
            e_freq, e_rel, e_sign = e_freq[take], e_rel[take], e_sign[take]
            m = len(u_node)
    indeg = np.bincount(l_node, minlength=nn_)
    fmax = np.zeros(nn_, np.int64)
    np.maximum.at(fmax, l_node, e_freq)
    rsum = np.zeros(nn_, np.float64)
    if m:  # mean of the in-edges' relevance
        by_node = np.argsort(l_node, kind="stable")
        ln = l_node[by_node]
        starts = np.flatnonzero(np.r_[True, ln[1:] != ln[:-1]])
        rsum[ln[starts]] = np.add.reduceat(e_rel[by_node], starts) / np.diff(np.r_[starts, m])
    anypos = np.zeros(nn_, bool)
    np.logical_or.at(anypos, l_node, e_sign > 0)
    # Python values once, in bulk (tolist), then the graph's own dicts filled directly: networkx's
    # add_edges_from checks every edge and costs about 10 us each (0.6 s for a 57,000-edge ResNet-50 graph)
    tap_names = [names[t] for t in node_tap.tolist()]
    neuron = node_n.tolist()
    ids = [f"{t}:{k}" for t, k in zip(tap_names, neuron, strict=False)]
    orders = {t: int(by_name[t].order) for t in set(tap_names)}
    frac = {t: (np.asarray(active[t], dtype=np.float64).tolist() if active.get(t) is not None else None)
            for t in set(tap_names)}
    fmax_l, rsum_l, indeg_l, pos_l = fmax.tolist(), rsum.tolist(), indeg.tolist(), anypos.tolist()
    node_dicts = []
    for i, (tap, k) in enumerate(zip(tap_names, neuron, strict=False)):
        f = frac[tap]
        d = {"tap": tap, "tap_order": orders[tap], "neuron": k, "frequency": 0, "mean_relevance": 0.0,
             "active_fraction": f[k] if f is not None else float("nan"), "in_degree": 0, "sign": 1}
        if i == 0:
            d["frequency"] = int(n_images)
        elif indeg_l[i]:
            d["frequency"] = fmax_l[i]
            d["mean_relevance"] = rsum_l[i]
            d["in_degree"] = indeg_l[i]
            d["sign"] = 1 if pos_l[i] else -1
        node_dicts.append(d)
    with _no_collection():  # tens of thousands of new dicts: the cyclic collector would scan the whole heap
        _fill(g, ids, node_dicts, u_node.tolist(), l_node.tolist(), e_freq.tolist(), e_rel.tolist(), e_sign.tolist())
    return g


@contextlib.contextmanager
def _no_collection() -> Iterator[None]:
    """The cyclic garbage collector paused (as it was afterwards): the graph's dicts hold no cycles, and each of the
    collections their allocation triggers walks every object of the process (a model's too)."""
    was = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was:
            gc.enable()


def _fill(g: nx.DiGraph[str], ids: list[str], nodes: list[dict[str, Any]], us: list[int], vs: list[int],
          freq: list[int], rel: list[float], sign: list[int]) -> None:
    """Nodes and edges straight into an empty DiGraph's adjacency dicts (what add_*_from would build).

    The edge attribute dict is shared by ``_succ[u][v]`` and ``_pred[v][u]``, as networkx does; the
    insertion order is networkx's too (a test compares with the plain construction).
    """
    # networkx's own adjacency dicts (stable across networkx 3.x; untyped in its stubs)
    node_attr, succ, pred = g._node, g._succ, g._pred  # type: ignore[attr-defined]
    node_attr.update(zip(ids, nodes, strict=True))
    succ.update({nid: {} for nid in ids})
    pred.update({nid: {} for nid in ids})
    out_of, into = [succ[nid] for nid in ids], [pred[nid] for nid in ids]  # by node number: no lookup by name
    for a, b, f, r, s in zip(us, vs, freq, rel, sign, strict=False):
        d = {"frequency": f, "relevance": r, "sign": s}
        out_of[a][ids[b]] = d
        into[b][ids[a]] = d
    g.__dict__.get("__networkx_cache__", {}).clear()
