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
    """Assemble the dependency graph from the traversal's step records."""
    by_name = {t.name: t for t in taps}
    g = nx.DiGraph()
    g.graph.update({k: v for k, v in attrs.items()})
    g.graph["target"] = int(target)
    g.graph["n_images"] = int(n_images)

    def add_node(tap: str, neuron: int) -> str:
        nid = node_id(tap, neuron)
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
