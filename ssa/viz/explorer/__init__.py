"""The interactive explorer (``ssa explore``): the class graphs in a browser page.

The page is one HTML file with everything embedded (the JavaScript bundle, the style sheet
and the data) that opens offline in any browser, or, for a whole study, a folder with the
page and one data file per class and per neuron, loaded lazily and served by ``ssa serve``.
The front-end (``frontend/explorer/``, sigma.js + graphology) is bundled into ``static/``;
see ``docs/explorer.md`` for the views and the data format.

Data files (JSON; the same in both forms: embedded as ``{"index": ..., "files": {...}}`` or
written under ``data/``):

* ``index.json``: title, model, the classes (label, target, images, nodes, edges, file), their
  dendrogram order and cosine similarity (Ward / cosine clustering of :mod:`ssa.analysis.compare`),
  whether reference images exist;
* ``class-<i>.json``: one class graph: its attributes, its taps (layers) and nodes with their
  attributes, layered positions, display size and the classes that keep them, and its edges;
* ``neurons/<node>.json``: a neuron's reference images and its saliency on its classes' images (see
  :mod:`ssa.viz.explorer.references`);
* ``images.json``: the analysed images at the grid of those saliency maps (and the colour map).
"""

from __future__ import annotations

import html
import json
import math
import os
from collections.abc import Mapping, Sequence
from importlib import resources
from pathlib import Path
from typing import Any

import networkx as nx
import numpy as np

from ssa.analysis.compare import check_graphs, compare, graph_labels
from ssa.core.graph import DependencyGraph
from ssa.errors import InvalidInputError
from ssa.io.atomic import atomic_write_bytes
from ssa.viz.explorer.folder import check_explorer_folder, write_folder
from ssa.viz.figures.common import dependency_graph
from ssa.viz.html import json_script

__all__ = ["FORMAT", "SINGLE_FILE_CLASSES", "explorer_files", "layered_positions", "page_html", "write_explorer",
           "static_text", "node_file"]

FORMAT = "ssa-explorer/1"
SINGLE_FILE_CLASSES = 50  # above this, a folder (lazy loading) is the better form
_CLASS_TAP = "logits"


def static_text(name: str) -> str:
    """A file of the committed front-end bundle (``explorer.min.js``, ``explorer.min.css``, ...)."""
    return resources.files("ssa.viz.explorer").joinpath("static").joinpath(name).read_text(encoding="utf-8")


def _jsonable(value: Any) -> Any:
    """Graph attribute values as JSON: numpy scalars to Python, NaN to None, anything else unknown to str."""
    if isinstance(value, (np.integer,)):
        return int(value)
    if isinstance(value, (np.floating, float)):
        v = float(value)
        return v if math.isfinite(v) else None
    if isinstance(value, (str, int, bool)) or value is None:
        return value
    if isinstance(value, Mapping):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    return str(value)


def _num(value: Any, default: float = 0.0) -> float:
    try:
        v = float(value)
    except (TypeError, ValueError):
        return default
    return v if math.isfinite(v) else default


def node_file(node: str) -> str:
    """The data file of a neuron's reference images: ``neurons/<safe name>.json``."""
    safe = "".join(c if c.isalnum() or c in "._-" else "_" for c in node)
    return f"neurons/{safe}.json"


def layered_positions(graph: nx.DiGraph) -> dict[str, tuple[float, float]]:
    """Positions of a layered drawing: one row per tap in network order (the logits on top).

    networkx's ``multipartite_layout`` places the rows; within a row the neurons are ordered by the
    mean position of the upper neurons that keep them (one barycentre sweep from the top, ties by
    neuron index), which removes most edge crossings of these near-tree graphs. Neighbours in a row
    are equally spaced and every row is centred; the widest row spans ``w`` (growing with its size,
    between 1.6 and 8 times the height); rows are 1 apart (y = 0 for the lowest tap).
    """
    g = dependency_graph(graph)
    if g.number_of_nodes() == 0:
        return {}
    rows = [list(nodes) for _, nodes in g.layers()]  # one row per tap, top (logits) first
    neuron = {n: int(g.nodes[n]["neuron"]) for n in g.nodes}
    slot: dict[str, float] = {}
    for _r, nodes in enumerate(rows):
        def key(n: str) -> tuple[float, int, str]:
            ups = [slot[u] for u in g.predecessors(n) if u in slot]
            return (float(np.mean(ups)) if ups else 0.5, neuron[n], n)
        nodes.sort(key=key)
        m = len(nodes)
        for j, n in enumerate(nodes):
            slot[n] = (j + 0.5) / m
    layers = {r: nodes for r, nodes in enumerate(rows)}
    pos = nx.multipartite_layout(g, subset_key=layers, align="horizontal")  # rows evenly spaced, centred
    widest = max(len(r) for r in rows)
    n_rows = len(rows)
    width = min(max(1.6 * max(n_rows - 1, 1), 0.12 * widest), 8.0 * max(n_rows - 1, 1))
    xs = np.array([p[0] for p in pos.values()])
    span = float(xs.max() - xs.min()) or 1.0
    return {n: (float(pos[n][0]) / span * width, float(n_rows - 1 - r)) for r, nodes in enumerate(rows) for n in nodes}


def _edge_widths(graph: DependencyGraph, big: bool) -> dict[tuple[str, str], float]:
    """Edge width from |relevance|, relative within the upper tap (relevance scales differ between steps)."""
    tap = {n: t for t, nodes in graph.layers() for n in nodes}
    rel = {(u, v): abs(_num(graph.edge_info(u, v).relevance)) for u, v in graph.edges}
    rmax: dict[str, float] = {}
    for (u, _), r in rel.items():
        rmax[tap[u]] = max(rmax.get(tap[u], 0.0), r)
    lo, hi = (0.3, 1.5) if big else (0.8, 4.0)
    return {(u, v): lo + (hi - lo) * r / (rmax[tap[u]] or 1.0) for (u, v), r in rel.items()}


def _class_file(i: int, graph: DependencyGraph, kept_by: Mapping[str, list[list[int]]],
                refs: Mapping[str, Any] | None) -> dict[str, Any]:
    """One class's data file. Every node, edge and graph attribute is carried through as it is (known or not)."""
    pos = layered_positions(graph)
    big = graph.number_of_nodes() > 2000
    n_img = float(graph.run.n_images) or max((_num(graph.info(n).frequency, 1) for n in graph.nodes),
                                              default=1.0) or 1.0
    lo, hi = (1.5, 5.0) if big else (4.0, 14.0)
    nodes = []
    for n, d in graph.nodes(data=True):
        share = min(1.0, _num(d.get("frequency")) / n_img)
        x, y = pos[n]
        item = {"id": n}
        item.update({str(k): _jsonable(v) for k, v in d.items()})  # every attribute, known or not
        item.update({"x": round(x, 5), "y": round(y, 5), "size": round(lo + (hi - lo) * share, 3),
                     "shared_by": kept_by.get(n, []), "ref": node_file(n) if refs is not None and n in refs else None})
        nodes.append(item)
    widths = _edge_widths(graph, big)
    edges = []
    for u, v, d in graph.edges(data=True):
        item = {"source": u, "target": v}
        item.update({str(k): _jsonable(val) for k, val in d.items()})
        item["sign"] = int(_num(d.get("sign"), 1)) or 1
        item["width"] = round(widths[(u, v)], 3)
        edges.append(item)
    taps = [{"tap": tap, "order": graph.info(ns[0]).tap_order, "y": pos[ns[0]][1], "n": len(ns)}
            for tap, ns in graph.layers()]  # top tap first
    return {"index": i, "graph": {str(k): _jsonable(v) for k, v in graph.graph.items()},
            "taps": taps,
            "x_min": min((p[0] for p in pos.values()), default=0.0), "nodes": nodes, "edges": edges}


def explorer_files(graphs: Sequence[nx.DiGraph], names: Sequence[str] | None = None, *,
                   references: Mapping[str, Any] | None = None, references_note: str | None = None,
                   saliency_images: Mapping[str, Any] | None = None, saliency_note: str | None = None,
                   title: str | None = None, weight: str = "frequency") -> dict[str, Any]:
    """Every data file of the explorer, ``{relative path: JSON-ready object}`` (``index.json`` first).

    Parameters
    ----------
    graphs : class graphs of one model (as written by ``ssa analyse``; extra attributes are kept).
    names : their file names (labels when targets repeat, and error messages).
    references : ``{node id: reference data}`` from :func:`ssa.viz.explorer.references.reference_images`,
        or None (the page then says how to add them).
    saliency_images, saliency_note : the images behind "saliency on a chosen image" and what it offers
        (:attr:`References.images` and :attr:`References.note`); written as ``images.json``.
    weight : bag-of-nodes weight of the clustering (:func:`ssa.analysis.compare.compare`).
    """
    dgraphs = [dependency_graph(g) for g in graphs]
    if not dgraphs:
        raise InvalidInputError("the explorer needs at least 1 graph, got 0; pass graph files from `ssa analyse`.")
    names = list(names) if names is not None else [f"graph {i}" for i in range(len(dgraphs))]
    if len(dgraphs) >= 2:
        check_graphs(dgraphs, names)
        cmp = compare(dgraphs, weight=weight, names=names)
        labels, order, similarity = list(cmp.labels), list(cmp.order), np.asarray(cmp.similarity)
    else:
        labels, order, similarity = graph_labels(dgraphs, names), [0], np.ones((1, 1))
    kept_by: dict[str, list[list[int]]] = {}
    for i, g in enumerate(dgraphs):
        for n, d in g.nodes(data=True):
            kept_by.setdefault(n, []).append([i, int(_num(d.get("frequency")))])
    files: dict[str, Any] = {}
    classes = []
    for i, (g, label, name) in enumerate(zip(dgraphs, labels, names, strict=False)):
        run = g.run
        classes.append({"label": label, "target": run.target, "file": f"class-{i}.json", "name": name,
                        "n_images": run.n_images, "n_nodes": g.number_of_nodes(),
                        "n_edges": g.number_of_edges()})
    run0 = dgraphs[0].run
    model = str(run0.model or "?")
    given = run0.parameters()
    params = ", ".join(f"{k}={given[k]}" for k in ("branching", "rule", "selector") if given[k] is not None)
    index = {
        "format": FORMAT, "title": title or f"SSA explorer: {model}, {len(dgraphs)} "
                                            f"class{'es' if len(dgraphs) != 1 else ''}",
        "model": model, "params": params, "classes": classes, "order": order,
        "similarity": np.round(similarity, 4).tolist(), "weight": weight, "initial": order[0],
        "references": references is not None,
        "references_note": references_note or ("Reference images need the model and the images: run `ssa explore "
                                               "GRAPHS... --model M --images X`."),
        "saliency_images": "images.json" if saliency_images is not None else None,
        "saliency_note": saliency_note or "",
    }
    files["index.json"] = index
    for i, g in enumerate(dgraphs):
        files[f"class-{i}.json"] = _class_file(i, g, kept_by, references)
    if references is not None:
        for node, data in references.items():
            if node in kept_by:
                files[node_file(node)] = data
    if saliency_images is not None:
        files["images.json"] = saliency_images
    return files


def page_html(title: str, files: Mapping[str, Any] | None = None) -> str:
    """The explorer's page: the bundle and style sheet inline; with ``files``, the data too (one file).

    Without ``files`` the page fetches ``data/*.json`` beside it (a folder served by ``ssa serve``).
    """
    js = static_text("explorer.min.js")
    if "</script" in js.lower():  # esbuild escapes it in strings; refuse a bundle that would end the element
        raise RuntimeError("the explorer bundle contains '</script'; rebuild it with `make explorer-assets`")
    css = static_text("explorer.min.css")
    data = ""
    if files is not None:
        data = json_script({"index": files["index.json"], "files": dict(files)}, "ssa-data") + "\n"
    return ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            "<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">"
            f"<title>{html.escape(title)}</title><style>{css}</style></head>\n"
            f"<body><div id=\"app\"></div>\n{data}<script>{js}</script></body></html>\n")


def write_explorer(out: str | os.PathLike, graphs: Sequence[nx.DiGraph], names: Sequence[str] | None = None, *,
                   folder: bool | None = None, **options: Any) -> Path:
    """Write the explorer: one HTML file (``out`` ends in ``.html``) or a folder (``out`` ends in ``/`` or
    names a folder, or ``folder=True``) with ``index.html`` and ``data/``. Returns the page's path.

    The folder is written to a temporary sibling and renamed into place, so an interrupted run
    leaves the previous explorer (or nothing); it lists its files in a manifest, replaces only an explorer
    folder's own files and refuses a folder holding anything else (:mod:`ssa.viz.explorer.folder`); the
    single file is written atomically.
    ``options`` go to :func:`explorer_files`.
    """
    text = str(out)
    path = Path(out)
    if folder is None:
        folder = text.endswith(("/", os.sep)) or path.is_dir() or path.suffix == ""
    if not folder and path.suffix.lower() not in (".html", ".htm"):
        raise InvalidInputError(f"--out must end in .html (one file) or / (a folder), got {path.name!r}.")
    if folder:
        check_explorer_folder(path)  # before computing
    files = explorer_files(graphs, names, **options)
    title = files["index.json"]["title"]
    if not folder:
        atomic_write_bytes(path, page_html(title, files).encode("utf-8"))
        return path

    def fill(tmp: Path) -> None:
        (tmp / "data" / "neurons").mkdir(parents=True)
        for rel, obj in files.items():
            (tmp / "data" / rel).write_text(json.dumps(obj, separators=(",", ":"), allow_nan=False), encoding="utf-8")
        (tmp / "index.html").write_text(page_html(title), encoding="utf-8")

    write_folder(path, fill)  # only into a folder that holds nothing but an explorer's files
    return path / "index.html"
