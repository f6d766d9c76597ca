"""The dependency graph (networkx.DiGraph) and its writers.

Nodes are ``"tap:neuron"`` strings; edges go from an upper neuron to the lower
neuron it depends on. Node attributes: ``tap``, ``tap_order``, ``neuron``,
``frequency`` (the largest edge frequency into the node; the number of images
for the class node), ``mean_relevance`` (mean of the relevance of the edges
into the node), ``active_fraction`` (share of images in which the neuron's
scalar is > 0), ``in_degree`` (number of upper neurons that keep it: the
paper's interconnectedness), ``sign`` (+1, or -1 for a node reached only by
inhibitory edges). Edge attributes: ``frequency``, ``relevance``, ``sign``.
Graph attributes: the run's parameters, and ``model``, ``model_hash``, ``images_hash``
(the model and the image set by content; see :mod:`ssa.identity`).
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import networkx as nx
import numpy as np

from .checks import describe_os_error
from .errors import InvalidInputError, OutputError
from .interfaces import Tap
from .traversal import StepRecord

__all__ = ["node_id", "build_graph", "write_graph", "read_graph", "atomic_write_bytes"]


def node_id(tap: str, neuron: int) -> str:
    return f"{tap}:{int(neuron)}"


def build_graph(*, taps: Sequence[Tap], steps: Sequence[StepRecord], target: int, n_images: int,
                active: Mapping[str, np.ndarray], attrs: Mapping[str, Any]) -> nx.DiGraph:
    """Assemble the dependency graph from the traversal's step records.

    Vectorised over the kept edges of all steps: node attributes are group-wise reductions of
    the edges into each node (maximum frequency, mean relevance, in-degree, sign).
    """
    by_name = {t.name: t for t in taps}
    g = nx.DiGraph()
    g.graph.update({k: v for k, v in attrs.items()})
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
            src = dict(zip(pair[first_e].tolist(), last_e.tolist()))
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
    ids = [f"{names[t]}:{int(k)}" for t, k in zip(node_tap, node_n)]
    nodes = []
    for i, (t, k) in enumerate(zip(node_tap, node_n)):
        tap = names[t]
        frac = active.get(tap)
        d = {"tap": tap, "tap_order": int(by_name[tap].order), "neuron": int(k), "frequency": 0,
             "mean_relevance": 0.0, "active_fraction": float(frac[k]) if frac is not None else float("nan"),
             "in_degree": 0, "sign": 1}
        if i == 0:
            d["frequency"] = int(n_images)
        elif indeg[i]:
            d["frequency"] = int(fmax[i])
            d["mean_relevance"] = float(rsum[i])
            d["in_degree"] = int(indeg[i])
            d["sign"] = 1 if anypos[i] else -1
        nodes.append((ids[i], d))
    g.add_nodes_from(nodes)
    g.add_edges_from((ids[a], ids[b], {"frequency": int(f), "relevance": float(r), "sign": int(s)})
                     for a, b, f, r, s in zip(u_node, l_node, e_freq, e_rel, e_sign))
    return g


#: callables told the path of every file :func:`atomic_write_bytes` writes (``ssa.outdir`` records a run's files)
write_listeners: list[Callable[[Path], None]] = []


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Write ``data`` to ``path`` through a temporary file in the same folder and a rename."""
    path = Path(path)
    try:
        _atomic_write(path, data)
    except OSError as exc:
        if isinstance(exc, OutputError):
            raise
        raise OutputError(describe_os_error(exc, f"cannot write {str(path)!r}", show_file=False)) from exc
    for listener in list(write_listeners):
        listener(path)


def _atomic_write(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        umask = os.umask(0)
        os.umask(umask)
        os.fchmod(fd, 0o666 & ~umask)  # mkstemp creates 0600; give the file the usual permissions
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise


def _jsonable(value: Any) -> Any:
    if isinstance(value, (np.integer,)):
        return int(value)
    if isinstance(value, (np.floating,)):
        return float(value)
    if isinstance(value, float) and value != value:
        return None
    return value


def graph_to_dict(g: nx.DiGraph) -> dict:
    data = nx.node_link_data(g, edges="edges")
    for section in ("nodes", "edges"):
        for item in data[section]:
            for k, v in list(item.items()):
                item[k] = _jsonable(v)
    data["graph"] = {k: _jsonable(v) for k, v in data["graph"].items()}
    return data


def write_graph(g: nx.DiGraph, path: str | os.PathLike) -> Path:
    """Write the graph atomically: ``.json`` (node-link) or ``.graphml``."""
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix == ".json":
        data = json.dumps(graph_to_dict(g), indent=1).encode()
    elif suffix in (".graphml", ".xml"):
        h = g.copy()
        for k, v in list(h.graph.items()):
            if isinstance(v, (dict, list, tuple)) or v is None:
                h.graph[k] = json.dumps(v)
        data = "\n".join(nx.generate_graphml(h)).encode()
    else:
        raise InvalidInputError(f"output file must end in .json or .graphml, got {path.name!r}; rename it.")
    atomic_write_bytes(path, data)
    return path


def read_graph(path: str | os.PathLike) -> nx.DiGraph:
    """Read a graph written by :func:`write_graph`; anything else is refused with one line."""
    path = Path(path)
    fix = "pass a graph file (.json or .graphml) written by `ssa analyse`"
    if path.is_dir():
        raise InvalidInputError(f"graph file {str(path)!r} is a folder; {fix}, e.g. {str(path / 'class-3.json')!r}.")
    if not path.exists():
        raise InvalidInputError(f"graph file {str(path)!r} does not exist; check the path.")
    suffix = path.suffix.lower()
    if suffix not in (".json", ".graphml", ".xml"):
        raise InvalidInputError(f"graph file must end in .json or .graphml, got {path.name!r}; {fix}.")
    try:
        if suffix == ".json":
            data = json.loads(path.read_text(encoding="utf-8"))
            if not isinstance(data, dict) or not isinstance(data.get("nodes"), list):
                kind = type(data).__name__ if not isinstance(data, dict) else "object without a 'nodes' list"
                raise InvalidInputError(f"{str(path)!r} holds a JSON {kind}, not a node-link graph; {fix}.")
            g = nx.node_link_graph(data, edges="edges" if "edges" in data else "links", directed=True)
        else:
            g = nx.read_graphml(path)
    except InvalidInputError:
        raise
    except OSError as exc:
        raise InvalidInputError(f"cannot read graph file {str(path)!r} ({exc.strerror or exc}); {fix}.") from None
    except Exception as exc:  # noqa: BLE001 - json, XML and networkx parse errors of a file that is not ours
        raise InvalidInputError(
            f"{str(path)!r} is not a graph written by ssa ({type(exc).__name__}: "
            f"{(str(exc).splitlines() or [''])[0][:100]}); {fix}.") from None
    _check_graph(g, path, fix)
    return g


def _check_graph(g: nx.DiGraph, path: Path, fix: str) -> None:
    """The attributes every reader relies on: a directed graph, and per node ``tap`` and ``neuron``."""
    if not g.is_directed():
        raise InvalidInputError(f"{str(path)!r} holds an undirected graph, not a dependency graph; {fix}.")
    for n, d in g.nodes(data=True):
        if not isinstance(d.get("tap"), str) or not isinstance(d.get("neuron"), (int, np.integer)):
            raise InvalidInputError(f"node {n!r} of {str(path)!r} has no 'tap' and 'neuron' attributes, so the file "
                                    f"was not written by ssa; {fix}.")
