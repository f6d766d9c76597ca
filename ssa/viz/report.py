"""One self-contained HTML report of several class graphs (figures embedded; no network access).

Sections: the run's parameters, an overview of the classes, the comparison (clustermap,
dendrogram, Jaccard similarity per layer, shared sub-graphs, per-neuron tables) and one
section per class (dependency graph, table of layers, frequency ranks and, when the model and
images are given, the outlier-frequency plot, relevance heat map, saliency and activation maps).

How it is built: small functions turn the graphs (read through :class:`DependencyGraph`), the
comparison (:mod:`ssa.analysis.compare`) and the figures (:mod:`ssa.viz.figures`, rendered in
memory as PNG or SVG) into plain values (:class:`Table`, :class:`EmbeddedFigure`, dicts), and the
Jinja2 template ``ssa/viz/templates/report.html`` (autoescaping on) lays them out. See docs/viz.md.
"""

from __future__ import annotations

import base64
import datetime as _dt
import os
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jinja2
import networkx as nx
import numpy as np
from markupsafe import Markup

from ssa import __version__
from ssa.analysis.compare import (
    Comparison,
    check_graph_images,
    check_graph_network,
    compare,
    graph_labels,
    identical_graphs_quietly,
)
from ssa.analysis.curves import read_curves
from ssa.analysis.grouping import images_for_graph
from ssa.analysis.strategies import read_table
from ssa.api import load_model
from ssa.core.graph import DependencyGraph
from ssa.core.interfaces import Network
from ssa.engines.store import images_hash
from ssa.errors import InvalidInputError
from ssa.io.atomic import atomic_write_bytes
from ssa.io.folders import load_grouped_images
from ssa.session import prepare_network
from ssa.viz.faithfulness import faithfulness_section
from ssa.viz.figures import FORMATS, class_figures, figure_bytes, plot_clustermap, plot_dendrogram, plot_graph
from ssa.viz.figures.common import dependency_graph

__all__ = ["build_report", "write_report", "render_report", "Table", "Cell", "EmbeddedFigure"]

_PARAMS = ("model", "model_hash", "images_hash", "branching", "rule", "rule_params", "selector", "selector_params",
           "grouping", "min_confidence", "max_per_class", "stop_at")

_CAPTIONS = {
    "graph": "Dependency graph (paper Fig. 3): one row per layer; node size = frequency, edge width = relevance "
             "(relative within a layer); node colour = how many classes keep the neuron (light: this class only; "
             "with one graph: share of images); dashed red = inhibitory.",
    "frequency": "Outlier frequency (Fig. 2a) with a power-law fit, counts on a log axis: ",
    "relevance": "Relevance rows across images (Fig. 2b): ",
    "saliency": "Saliency (Fig. 4b,c): ",
    "activations": "Activation maps (Fig. 5): ",
}

_ENV = jinja2.Environment(loader=jinja2.PackageLoader("ssa.viz", "templates"),
                          autoescape=jinja2.select_autoescape(["html"]), undefined=jinja2.StrictUndefined,
                          keep_trailing_newline=True)


# -- values the template lays out --------------------------------------------------------------------
@dataclass(frozen=True)
class Cell:
    """One table cell: its text and whether it is a number (right-aligned)."""

    text: str
    numeric: bool


@dataclass(frozen=True)
class Table:
    """A table: header and rows of :class:`Cell`."""

    header: tuple[str, ...]
    rows: tuple[tuple[Cell, ...], ...]
    cls: str = ""


@dataclass(frozen=True)
class EmbeddedFigure:
    """A figure rendered in memory: ``body`` is an inline ``<svg>`` or a base64 PNG ``<img>`` (markup)."""

    body: Markup
    caption: str
    kind: str = ""


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        if v != v:
            return "–"
        return f"{v:.3f}" if abs(v) < 1000 else f"{v:.4g}"
    return str(v)


def table(header: Sequence[str], rows: Iterable[Sequence[Any]], *, cls: str = "") -> Table:
    """A :class:`Table`; numbers (not booleans) are formatted with 3 decimals and right-aligned."""
    out = []
    for row in rows:
        cells = []
        for v in row:
            num = isinstance(v, (int, float, np.integer, np.floating)) and not isinstance(v, bool)
            cells.append(Cell(_fmt(v) if num else str(v), num))
        out.append(tuple(cells))
    return Table(tuple(str(h) for h in header), tuple(out), cls)


def embed(fig: Any, caption: str, fmt: str, kind: str = "") -> EmbeddedFigure:
    """Render a matplotlib figure in memory and wrap it for the page (``fmt``: ``png`` or ``svg``)."""
    data = figure_bytes(fig, fmt)
    if fmt == "svg":
        text = data.decode("utf-8")
        text = re.sub(r"^\s*<\?xml[^>]*\?>\s*", "", text)
        text = re.sub(r"<!DOCTYPE[^>]*>\s*", "", text, flags=re.S)
        body = Markup(text)  # matplotlib's own SVG: trusted markup
    else:
        b64 = base64.b64encode(data).decode("ascii")
        body = Markup('<img alt="{}" src="data:image/png;base64,{}">').format(caption, b64)
    return EmbeddedFigure(body, caption, kind)


def render_report(context: Mapping[str, Any]) -> str:
    """Fill the template ``templates/report.html`` with ``context`` (see :func:`build_report`)."""
    return _ENV.get_template("report.html").render(**context)


# -- sections --------------------------------------------------------------------------------------------
def _params_table(graphs: Sequence[DependencyGraph]) -> Table:
    runs = [{**r.parameters(), "model": r.model, "model_hash": r.model_hash} for r in (g.run for g in graphs)]
    rows = []
    for key in _PARAMS:
        vals = [r[key] for r in runs]
        if all(v is None for v in vals):
            continue
        uniq = list(dict.fromkeys("–" if v is None else str(v) for v in vals))
        rows.append((key, uniq[0] if len(uniq) == 1 else "varies: " + " | ".join(uniq)))
    return table(("parameter", "value"), rows)


def _overview_table(graphs: Sequence[DependencyGraph], labels: Sequence[str]) -> Table:
    order: dict[str, int] = {}
    for g in graphs:
        for tap, nodes in g.layers():
            order.setdefault(tap, g.info(nodes[0]).tap_order)
    tap_cols = [t for t in sorted(order, key=lambda t: -order[t]) if t != "logits"]
    rows = []
    for lab, g in zip(labels, graphs, strict=False):
        per = {tap: len(nodes) for tap, nodes in g.layers()}
        rows.append((lab, g.run.n_images, g.number_of_nodes(), g.number_of_edges(),
                     *(per.get(t, 0) for t in tap_cols)))
    return table(("class", "images", "nodes", "edges", *(f"kept in {t}" for t in tap_cols)), rows)


def _layer_table(g: DependencyGraph, shared: set[str]) -> Table:
    sizes = g.run.tap_neurons
    n_img = g.run.n_images
    rows = []
    for tap, nodes in g.layers():
        infos = [g.info(n) for n in nodes]
        shown = ", ".join(f"{i.neuron} ({i.frequency}/{n_img})" + ("*" if i.id in shared else "")
                          for i in infos[:24]) + (f", … {len(nodes) - 24} more" if len(nodes) > 24 else "")
        never = [str(i.neuron) for i in infos if i.active_fraction == 0.0]
        rows.append((tap, len(nodes), sizes.get(tap, "?"), shown, ", ".join(never) or "–"))
    return table(("tap", "kept", "of", "neurons (frequency / images; * shared with another class)", "never fire"), rows)


def _matrix_table(labels: Sequence[str], M: np.ndarray) -> Table:
    return table(("", *labels), ([lab, *(float(v) for v in row)] for lab, row in zip(labels, M, strict=False)))


def _off_diagonal(M: np.ndarray) -> np.ndarray:
    off = M[~np.eye(M.shape[0], dtype=bool)]
    return off[np.isfinite(off)]


def _comparison(cmp: Comparison, fmt: str) -> dict[str, Any]:
    """The comparison section: clustermaps, dendrogram, similar pairs, Jaccard, shared sub-graphs, tables."""
    labels = list(cmp.labels)
    nan = float("nan")
    summary = []
    for tap, M in cmp.jaccard.items():
        off = _off_diagonal(M)
        summary.append((tap, float(off.mean()) if off.size else nan, float(off.min()) if off.size else nan,
                        float(off.max()) if off.size else nan))
    shared_all = cmp.shared()
    a, b, s = cmp.closest_pairs(1)[0]
    pair = cmp.shared([labels.index(a), labels.index(b)])
    inter = cmp.interconnectedness()
    head = ["node", "classes", "total in-degree", *labels]
    body = [(r["node"], r["n_graphs"], r["total_in_degree"], *(r[f"in_degree[{lab}]"] for lab in labels))
            for r in inter]
    return {
        "n_nodes": len(cmp.nodes), "n_graphs": len(labels),
        "weight": "frequency / number of images" if cmp.weight == "frequency" else "1 if kept",
        "figures": [
            embed(plot_clustermap(cmp),
                  "Clustermap (paper Fig. 4a): cosine similarity of the class graphs, in dendrogram order.", fmt),
            embed(plot_clustermap(cmp, kind="nodes"),
                  "Bag-of-nodes matrix: classes (rows, dendrogram order) by neurons (columns, clustered).", fmt),
            embed(plot_dendrogram(cmp), "Ward dendrogram of the class graphs.", fmt),
        ],
        "closest": table(("class", "class", "cosine similarity", "Jaccard (all neurons)"),
                         ((x, y, sim, float(cmp.jaccard["all"][labels.index(x), labels.index(y)]))
                          for x, y, sim in cmp.closest_pairs(5))),
        "jaccard_summary": table(("tap", "mean Jaccard", "min", "max"), summary),
        "jaccard_all": _matrix_table(labels, cmp.jaccard["all"]),
        "jaccard_taps": [(tap, _matrix_table(labels, M)) for tap, M in cmp.jaccard.items() if tap != "all"],
        "shared_all": {
            "nodes": shared_all.number_of_nodes(), "edges": shared_all.number_of_edges(),
            "figure": embed(plot_graph(shared_all, title="shared by all classes"),
                            "Sub-graph shared by all classes (node size: smallest frequency among them).", fmt)
            if shared_all.number_of_nodes() else None,
        },
        "pair": {
            "a": a, "b": b, "similarity": s, "nodes": pair.number_of_nodes(), "edges": pair.number_of_edges(),
            "figure": embed(plot_graph(pair, title=f"shared by {a} and {b}"), f"Sub-graph shared by {a} and {b}.",
                            fmt) if pair.number_of_nodes() else None,
            "table": table(("node", "tap", "neuron", "smallest frequency share", "mean frequency share"),
                           ((n, d["tap"], d["neuron"], d["frequency"], d["mean_frequency"])
                            for n, d in pair.nodes(data=True))),
        },
        "interconnectedness": table(head, body[:30]),
        "interconnectedness_all": table(head, body) if len(body) > 30 else None,
    }


@dataclass(frozen=True)
class _Model:
    """The prepared network and the images (read once) for the per-class figures."""

    network: Network
    images: np.ndarray
    labels: np.ndarray | None


def _load_model(graphs: Sequence[DependencyGraph], names: Sequence[str], *, model: Any, images: Any, labels: Any,
                preprocess: Any, device: str, backend: str | None, model_options: Mapping[str, Any] | None,
                allow_mixed: bool) -> _Model:
    """Load and prepare the model, read the images once, and check the graphs were made with both."""
    network = load_model(model, backend=backend, device=device, **dict(model_options or {}))
    arr, arr_labels = load_grouped_images(images, labels=labels, preprocess=preprocess)
    prepare_network(network, arr, images_spec=images, preprocess=preprocess)
    loaded = images_hash(arr)
    for g, name in zip(graphs, names, strict=False):
        check_graph_network(g, network, name)
        check_graph_images(g, loaded, name, allow_mixed=allow_mixed)
    return _Model(network, arr, arr_labels)


def _class_section(i: int, label: str, name: str, g: DependencyGraph, graphs: Sequence[DependencyGraph],
                   shared_any: set[str], ranks_all: Sequence[Mapping[str, Any]], loaded: _Model | None, fmt: str, *,
                   n_images: int, batch_size: int, by_prediction: bool | None, min_confidence: float | None,
                   max_per_class: int | None) -> dict[str, Any]:
    """One class: its figures (the graph; with the model, Fig. 2a,b of the class neuron and Fig. 4b,c, 5),
    its layer table and its frequency ranks (``ranks_all``: :meth:`Comparison.frequency_ranks`)."""
    kept_by = {n: sum(n in h for h in graphs) for n in g.nodes} if len(graphs) > 1 else None
    if loaded is not None:
        imgs = images_for_graph(loaded.network, g, loaded.images, labels=loaded.labels, by_prediction=by_prediction,
                                min_confidence=min_confidence, max_per_class=max_per_class)
        made = [(f.kind, f.caption, f.figure) for f in
                class_figures(loaded.network, g, imgs, kept_by=kept_by, n_graphs=len(graphs), steps="class",
                              n_images=n_images, batch_size=batch_size)]
    else:
        made = [("graph", f"dependency graph of {label}", plot_graph(g, kept_by=kept_by, n_graphs=len(graphs)))]
    figures = [embed(fig, _CAPTIONS["graph"] if kind == "graph" else _CAPTIONS.get(kind, "") + caption + ".",
                     fmt, kind) for kind, caption, fig in made]
    ranks = [r for r in ranks_all if r["graph"] == label]
    return {
        "anchor": f"c{i}", "label": label, "name": name, "n_images": g.run.n_images,
        "n_nodes": g.number_of_nodes(), "n_edges": g.number_of_edges(), "figures": figures,
        "layers": _layer_table(g, {n for n in g.nodes if n in shared_any}),
        "ranks": table(("tap", "neuron", "rank", "frequency", "share", "in-degree", "mean relevance"),
                       ((r["tap"], r["neuron"], r["rank"], r["frequency"], r["frequency_share"], r["in_degree"],
                         r["mean_relevance"]) for r in ranks)) if ranks else None,
    }


# -- the report ------------------------------------------------------------------------------------------
def build_report(graphs: Sequence[nx.DiGraph], names: Sequence[str] | None = None, *, model: Any = None,
                 images: Any = None, labels: Any = None, preprocess: Any = None, fmt: str = "png",
                 title: str | None = None, weight: str = "frequency", n_images: int = 8, batch_size: int = 32,
                 device: str = "cpu", backend: str | None = None, model_options: Mapping[str, Any] | None = None,
                 by_prediction: bool | None = None, min_confidence: float | None = None,
                 max_per_class: int | None = None, explorer_href: str | None = None,
                 allow_mixed: bool = False, evaluation: str | os.PathLike | None = None,
                 curves: str | os.PathLike | None = None) -> str:
    """The report as one HTML string.

    Parameters
    ----------
    graphs : one or more class graphs of the same model (a comparison needs two or more).
    names : their file names (for messages).
    model, images : optional; with both, each class also gets the outlier-frequency plot and relevance heat
        map of its class neuron (Fig. 2a,b) and the saliency and activation maps of its most frequent
        neuron in the highest conv layer (Fig. 4b,c, Fig. 5). ``labels``/``preprocess`` as for ``ssa analyse``;
        the class's images are chosen as the graph records (``grouping``, ``min_confidence``, ...).
    fmt : "png" (base64 ``<img>``) or "svg" (inline ``<svg>``).
    explorer_href : a relative link to the interactive explorer of the same graphs (``ssa explore``),
        shown at the top of the report.
    allow_mixed : accept graphs made with different rules, selectors, parameters, branching factors or image
        sets, and images other than the graphs' (graphs of different models are always refused).
    evaluation, curves : the table (``ssa evaluate --out``) and the curves' points (``--curves-out``); with
        either, the report gains a faithfulness section (:mod:`ssa.viz.faithfulness`).
    """
    dgraphs = [dependency_graph(g) for g in graphs]
    if fmt not in FORMATS:
        raise InvalidInputError(f"figure format must be 'png' or 'svg', got {fmt!r}.")
    if not dgraphs:
        raise InvalidInputError("a report needs at least 1 graph, got 0; pass graph files from `ssa analyse`.")
    if (model is None) != (images is None):
        raise InvalidInputError("pass both --model and --images (for the per-class figures) or neither.")
    names = list(names) if names is not None else [f"graph {i}" for i in range(len(dgraphs))]
    eval_rows = read_table(evaluation, "--evaluation") if evaluation is not None else []
    curve_points = read_curves(curves, "--curves") if curves is not None else []
    cmp = compare(dgraphs, weight=weight, names=names, allow_mixed=allow_mixed) if len(dgraphs) >= 2 else None
    labels_ = list(cmp.labels) if cmp is not None else graph_labels(dgraphs, names)  # one graph: nothing to compare
    loaded = None
    if model is not None:
        loaded = _load_model(dgraphs, names, model=model, images=images, labels=labels, preprocess=preprocess,
                             device=device, backend=backend, model_options=model_options, allow_mixed=allow_mixed)
    n = len(dgraphs)
    shared_any = cmp.shared_nodes() if cmp is not None else set()
    with identical_graphs_quietly():
        ranks_all = cmp.frequency_ranks() if cmp is not None else []
        context = {
            "title": title or f"SSA report: {dgraphs[0].run.model or '?'}, {n} class{'es' if n != 1 else ''}",
            "version": __version__, "stamp": _dt.datetime.now().strftime("%Y-%m-%d %H:%M"),
            "explorer_href": explorer_href, "with_model": loaded is not None,
            "params": _params_table(dgraphs), "overview": _overview_table(dgraphs, labels_),
            "comparison": _comparison(cmp, fmt) if cmp is not None else None,
            "faithfulness": faithfulness_section(eval_rows, curve_points, fmt, embed, table)
            if evaluation is not None or curves is not None else None,
            "classes": [_class_section(i, lab, name, g, dgraphs, shared_any, ranks_all, loaded, fmt, n_images=n_images,
                                       batch_size=batch_size, by_prediction=by_prediction,
                                       min_confidence=min_confidence, max_per_class=max_per_class)
                        for i, (lab, name, g) in enumerate(zip(labels_, names, dgraphs, strict=False))],
        }
    return render_report(context)


def write_report(path: str | os.PathLike, graphs: Sequence[nx.DiGraph], names: Sequence[str] | None = None,
                 *, explorer: str | os.PathLike | None = None, **options: Any) -> Path:
    """Build the report (see :func:`build_report`) and write it atomically to ``path`` (``.html``).

    ``explorer``: the explorer page (``ssa explore --out``) to link to, relative to the report.
    """
    path = Path(path)
    if path.suffix.lower() not in (".html", ".htm"):
        raise InvalidInputError(f"the report file must end in .html, got {path.name!r}; rename it.")
    if explorer is not None:
        target = Path(explorer)
        if target.is_dir() or str(explorer).endswith(("/", os.sep)):
            target = target / "index.html"
        options["explorer_href"] = Path(os.path.relpath(target.resolve(), path.resolve().parent)).as_posix()
    atomic_write_bytes(path, build_report(graphs, names, **options).encode("utf-8"))
    return path
