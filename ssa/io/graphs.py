"""Reading and writing dependency graphs (node-link JSON and GraphML).
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import networkx as nx
import numpy as np

from ssa.core.graph import SCHEMA_VERSION, DependencyGraph, normalise_attrs
from ssa.errors import InvalidInputError
from ssa.io.atomic import atomic_write_bytes

__all__ = ["graph_to_dict", "graph_from_dict", "write_graph", "read_graph"]


def _jsonable(value: Any) -> Any:
    if isinstance(value, (np.integer,)):
        return int(value)
    if isinstance(value, (np.floating,)):
        value = float(value)
    if isinstance(value, float) and value != value:
        return None
    if isinstance(value, tuple):
        return [_jsonable(v) for v in value]
    if isinstance(value, list):
        return [_jsonable(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    return value


_SCALARS = (str, int, float, bool, type(None))


def dumps_indented(obj: Any) -> str:
    """``json.dumps(obj, indent=1)``, character for character, in a fraction of the time for a large graph.

    json writes an indented document with its pure-Python encoder. Here a list of dicts whose values are all
    scalars (a graph's nodes and edges) is written by one call of the C encoder, with the line break and indent
    of the dicts' items as the item separator, and the breaks between the dicts put in after (JSON strings hold
    no raw line break, so ``},`` + line break + indent + ``{`` is only ever a boundary between two dicts); the
    rest as json writes it.
    """
    out: list[str] = []

    def write(o: Any, level: int) -> None:
        pad, inner = " " * level, " " * (level + 1)
        if isinstance(o, (list, tuple)) and o and all(_flat(d) for d in o):
            deeper = " " * (level + 2)
            text = json.dumps(o, separators=(",\n" + deeper, ": "))
            text = text.replace("},\n" + deeper + "{", "\n" + inner + "},\n" + inner + "{\n" + deeper)
            out.append("[\n" + inner + "{\n" + deeper + text[2:-2] + "\n" + inner + "}\n" + pad + "]")
        elif isinstance(o, dict) and o:
            out.append("{")
            for i, (k, v) in enumerate(o.items()):
                out.append(("," if i else "") + "\n" + inner + json.dumps(_key(k)) + ": ")
                write(v, level + 1)
            out.append("\n" + pad + "}")
        elif isinstance(o, (list, tuple)) and o:
            out.append("[")
            for i, v in enumerate(o):
                out.append(("," if i else "") + "\n" + inner)
                write(v, level + 1)
            out.append("\n" + pad + "]")
        else:
            out.append(json.dumps(o))

    write(obj, 0)
    return "".join(out)


def _flat(d: Any) -> bool:
    """A non-empty dict of string keys and scalar values."""
    return isinstance(d, dict) and bool(d) and all(isinstance(k, str) and isinstance(v, _SCALARS)
                                                   for k, v in d.items())


def _key(k: Any) -> str:
    """A dict key as json writes it (a number, true, false or null as its JSON text)."""
    return k if isinstance(k, str) else next(iter(json.loads(json.dumps({k: 0}))))


#: node attributes that are floats and may be NaN (written as null in JSON, read back as NaN)
_FLOAT_NODE_ATTRS = ("mean_relevance", "active_fraction")
_GRAPHML_JSON_KEYS = "json_attributes"  # GraphML: the graph attributes stored as JSON text


def graph_to_dict(g: nx.DiGraph) -> dict:
    """Node-link data of a graph, JSON-ready (NaN as null, numpy scalars as Python numbers)."""
    data = nx.node_link_data(g, edges="edges")
    for section in ("nodes", "edges"):
        for item in data[section]:
            for k, v in list(item.items()):
                item[k] = _jsonable(v)
    data["graph"] = {k: _jsonable(v) for k, v in normalise_attrs(g.graph).items()}
    return data


def graph_from_dict(data: Mapping[str, Any]) -> DependencyGraph:
    """The inverse of :func:`graph_to_dict` (nulls of float node attributes back to NaN)."""
    g = nx.node_link_graph(dict(data), edges="edges" if "edges" in data else "links", directed=True)
    for _, d in g.nodes(data=True):
        for key in _FLOAT_NODE_ATTRS:
            if key in d and d[key] is None:
                d[key] = float("nan")
    return DependencyGraph.from_networkx(g)


def _graphml_bytes(g: nx.DiGraph) -> bytes:
    h: nx.DiGraph[Any] = nx.DiGraph()
    attrs = normalise_attrs(g.graph)
    encoded = sorted(k for k, v in attrs.items() if isinstance(v, (dict, list, tuple)) or v is None)
    h.graph.update({k: (json.dumps(_jsonable(v)) if k in encoded else _jsonable(v)) for k, v in attrs.items()})
    h.graph[_GRAPHML_JSON_KEYS] = json.dumps(encoded)
    h.add_nodes_from((n, {k: _jsonable(v) if not isinstance(v, float) else v for k, v in d.items()})
                     for n, d in g.nodes(data=True))
    h.add_edges_from((u, v, {k: _jsonable(x) if not isinstance(x, float) else x for k, x in d.items()})
                     for u, v, d in g.edges(data=True))
    return "\n".join(nx.generate_graphml(h)).encode()


def _from_graphml(g: nx.Graph[Any]) -> DependencyGraph:
    for key in ("node_default", "edge_default"):  # added by networkx's reader, not ours
        g.graph.pop(key, None)
    keys = g.graph.pop(_GRAPHML_JSON_KEYS, None)
    for key in (json.loads(keys) if isinstance(keys, str) else []):
        if isinstance(g.graph.get(key), str):
            g.graph[key] = json.loads(g.graph[key])
    return DependencyGraph.from_networkx(g)


def write_graph(g: nx.DiGraph, path: str | os.PathLike) -> Path:
    """Write the graph atomically: ``.json`` (node-link) or ``.graphml``; :func:`read_graph` reads it back exactly."""
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix == ".json":
        data = dumps_indented(graph_to_dict(g)).encode()
    elif suffix in (".graphml", ".xml"):
        data = _graphml_bytes(g)
    else:
        raise InvalidInputError(f"output file must end in .json or .graphml, got {path.name!r}; rename it.")
    atomic_write_bytes(path, data)
    return path


def read_graph(path: str | os.PathLike) -> DependencyGraph:
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
            schema = data["graph"].get("schema") if isinstance(data.get("graph"), dict) else None
            g = graph_from_dict(data)
        else:
            raw = nx.read_graphml(path)
            schema = raw.graph.get("schema")
            g = _from_graphml(raw)
    except InvalidInputError:
        raise
    except OSError as exc:
        raise InvalidInputError(f"cannot read graph file {str(path)!r} ({exc.strerror or exc}); {fix}.") from None
    except Exception as exc:  # noqa: BLE001 - json, XML and networkx parse errors of a file that is not ours
        raise InvalidInputError(
            f"{str(path)!r} is not a graph written by ssa ({type(exc).__name__}: "
            f"{(str(exc).splitlines() or [''])[0][:100]}); {fix}.") from None
    _check_graph(g, path, fix, schema)
    return g


def _check_graph(g: DependencyGraph, path: Path, fix: str, schema: Any = None) -> None:
    """The attributes every reader relies on: a directed graph, per node ``tap`` and ``neuron``, numbers where the
    readers convert them, and a schema (the file's ``schema``) this ssa knows."""
    if not g.is_directed():
        raise InvalidInputError(f"{str(path)!r} holds an undirected graph, not a dependency graph; {fix}.")
    for n, d in g.nodes(data=True):
        if not isinstance(d.get("tap"), str) or not isinstance(d.get("neuron"), (int, np.integer)):
            raise InvalidInputError(f"node {n!r} of {str(path)!r} has no 'tap' and 'neuron' attributes, so the file "
                                    f"was not written by ssa; {fix}.")
    if isinstance(schema, (int, np.integer)) and not isinstance(schema, bool) and schema > SCHEMA_VERSION:
        raise InvalidInputError(f"{str(path)!r} was written by a newer ssa (graph schema {schema}; this ssa reads up "
                                f"to {SCHEMA_VERSION}); upgrade ssa to read it.")
    try:  # every reader converts these (RunInfo, NodeInfo, EdgeInfo): a value that does not convert is refused here
        _ = g.run
        for n in g.nodes:
            g.info(n)
        for u, v in g.edges:
            g.edge_info(u, v)
    except (TypeError, ValueError, OverflowError) as exc:
        raise InvalidInputError(
            f"{str(path)!r} is not a graph written by ssa (an attribute does not hold a number: {type(exc).__name__}: "
            f"{(str(exc).splitlines() or [''])[0][:100]}); {fix}.") from None
