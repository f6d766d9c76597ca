"""One self-contained HTML report of several class graphs (figures embedded; no network access).

Sections: the run's parameters, an overview of the classes, the comparison (clustermap,
dendrogram, Jaccard similarity per layer, shared sub-graphs, per-neuron tables) and one
section per class (dependency graph, table of layers, frequency ranks and, when the model and
images are given, the outlier-frequency plot, relevance heat map, saliency and activation maps).
Figures are PNG embedded as base64 ``data:`` URIs, or inline SVG.
"""

from __future__ import annotations

import base64
import datetime as _dt
import html
import os
import re
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

import networkx as nx
import numpy as np

from ssa.core.graph import normalise_attrs
from ssa.errors import InvalidInputError
from ssa.io.atomic import atomic_write_bytes

__all__ = ["build_report", "write_report"]

_PARAMS = ("model", "model_hash", "images_hash", "branching", "rule", "rule_params", "selector", "selector_params",
           "grouping", "min_confidence", "max_per_class", "stop_at")

_CSS = """
body{font-family:system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;margin:0;color:#222;background:#fafafa}
main{max-width:1180px;margin:0 auto;padding:1.2rem 1.6rem 4rem}
h1{font-size:1.6rem;margin:.4rem 0}h2{border-bottom:2px solid #ddd;padding-bottom:.2rem;margin-top:2.4rem}
h3{margin-top:1.6rem}
table{border-collapse:collapse;margin:.6rem 0;font-size:.85rem;background:#fff}
th,td{border:1px solid #ddd;padding:.25rem .5rem;text-align:left;vertical-align:top}
th{background:#f0f0f0}td.num{text-align:right;font-variant-numeric:tabular-nums}
figure{margin:1rem 0;background:#fff;border:1px solid #e4e4e4;padding:.6rem;display:inline-block;max-width:100%}
/* the caption wraps to the figure's width instead of widening its frame beyond the image */
figure img,figure svg{max-width:100%;height:auto;display:block}
figcaption{font-size:.8rem;color:#555;margin-top:.3rem;width:0;min-width:100%}
figure{vertical-align:top}
nav a{margin-right:.6rem}.note{color:#7a4b00;background:#fff6e0;padding:.4rem .6rem;border-left:3px solid #e6862e}
details{margin:.6rem 0}summary{cursor:pointer;color:#345}
.muted{color:#777}.shared{background:#fde9d6}
"""


def _esc(value: Any) -> str:
    return html.escape(str(value), quote=True)


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        if v != v:
            return "–"
        return f"{v:.3f}" if abs(v) < 1000 else f"{v:.4g}"
    return str(v)


def _table(header: Sequence[str], rows: Iterable[Sequence[Any]], *, cls: str = "") -> str:
    out = [f'<table class="{cls}"><thead><tr>' + "".join(f"<th>{_esc(h)}</th>" for h in header)
           + "</tr></thead><tbody>"]
    for row in rows:
        cells = []
        for v in row:
            num = isinstance(v, (int, float, np.integer, np.floating)) and not isinstance(v, bool)
            cells.append(f'<td class="num">{_esc(_fmt(v))}</td>' if num else f"<td>{_esc(v)}</td>")
        out.append("<tr>" + "".join(cells) + "</tr>")
    out.append("</tbody></table>")
    return "".join(out)


def _embed(fig: Any, caption: str, fmt: str) -> str:
    """A figure rendered in memory: inline ``<svg>`` or a base64 PNG ``<img>``."""
    from ssa.viz.figures import figure_bytes

    data = figure_bytes(fig, fmt)
    if fmt == "svg":
        text = data.decode("utf-8")
        text = re.sub(r"^\s*<\?xml[^>]*\?>\s*", "", text)
        text = re.sub(r"<!DOCTYPE[^>]*>\s*", "", text, flags=re.S)
        body = text
    else:
        b64 = base64.b64encode(data).decode("ascii")
        body = f'<img alt="{_esc(caption)}" src="data:image/png;base64,{b64}">'
    return f"<figure>{body}<figcaption>{_esc(caption)}</figcaption></figure>"


def _tap_sizes(g: nx.DiGraph) -> dict[str, int]:
    sizes = normalise_attrs(g.graph).get("tap_neurons") or {}
    return {str(k): int(v) for k, v in sizes.items()} if isinstance(sizes, dict) else {}


def _layers(g: nx.DiGraph) -> list[tuple[str, list[str]]]:
    by: dict[str, list[str]] = {}
    order: dict[str, int] = {}
    for n, d in g.nodes(data=True):
        by.setdefault(d.get("tap", "?"), []).append(n)
        order[d.get("tap", "?")] = int(d.get("tap_order", 0))
    return [(t, sorted(by[t], key=lambda n: (-g.nodes[n].get("frequency", 0), g.nodes[n].get("neuron", 0))))
            for t in sorted(by, key=lambda t: -order[t])]


def _layer_table(g: nx.DiGraph, shared: set[str]) -> str:
    sizes = _tap_sizes(g)
    n_img = int(g.graph.get("n_images") or 0)
    rows = []
    for tap, nodes in _layers(g):
        shown = ", ".join(
            f"{g.nodes[n].get('neuron')} ({g.nodes[n].get('frequency', 0)}/{n_img})" + ("*" if n in shared else "")
            for n in nodes[:24]) + (f", … {len(nodes) - 24} more" if len(nodes) > 24 else "")
        never = [str(g.nodes[n].get("neuron")) for n in nodes
                 if isinstance(g.nodes[n].get("active_fraction"), float) and g.nodes[n].get("active_fraction") == 0.0]
        rows.append((tap, len(nodes), sizes.get(tap, "?"), shown, ", ".join(never) or "–"))
    return _table(("tap", "kept", "of", "neurons (frequency / images; * shared with another class)",
                   "never fire"), rows)


def _params_table(graphs: Sequence[nx.DiGraph]) -> str:
    rows = []
    for key in _PARAMS:
        vals = [g.graph.get(key) for g in graphs]
        if all(v is None for v in vals):
            continue
        uniq = list(dict.fromkeys("–" if v is None else str(v) for v in vals))
        rows.append((key, uniq[0] if len(uniq) == 1 else "varies: " + " | ".join(uniq)))
    return _table(("parameter", "value"), rows)


def _matrix_table(labels: Sequence[str], M: np.ndarray) -> str:
    return _table(("", *labels), ([lab, *(float(v) for v in row)] for lab, row in zip(labels, M)))


def build_report(graphs: Sequence[nx.DiGraph], names: Sequence[str] | None = None, *, model: Any = None,
                 images: Any = None, labels: Any = None, preprocess: Any = None, fmt: str = "png",
                 title: str | None = None, weight: str = "frequency", n_images: int = 8, batch_size: int = 32,
                 device: str = "cpu", backend: str | None = None, model_options: Mapping[str, Any] | None = None,
                 by_prediction: bool | None = None, min_confidence: float | None = None,
                 max_per_class: int | None = None, explorer_href: str | None = None,
                 allow_mixed: bool = False) -> str:
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
    """
    from ssa import __version__
    from ssa.analysis.compare import compare, graph_labels, identical_graphs_quietly
    from ssa.viz.figures import (
        FORMATS,
        class_figures,
        plot_clustermap,
        plot_dendrogram,
        plot_graph,
    )

    graphs = list(graphs)
    if fmt not in FORMATS:
        raise InvalidInputError(f"figure format must be 'png' or 'svg', got {fmt!r}.")
    if not graphs:
        raise InvalidInputError("a report needs at least 1 graph, got 0; pass graph files from `ssa analyse`.")
    if (model is None) != (images is None):
        raise InvalidInputError("pass both --model and --images (for the per-class figures) or neither.")
    names = list(names) if names is not None else [f"graph {i}" for i in range(len(graphs))]
    cmp = None
    if len(graphs) >= 2:
        cmp = compare(graphs, weight=weight, names=names, allow_mixed=allow_mixed)
        labels_ = list(cmp.labels)
    else:  # one graph: nothing to compare
        labels_ = graph_labels(graphs, names)
    shared_any = cmp.shared_nodes() if cmp is not None else set()
    network = None
    if model is not None:
        from ssa.api import load_model
        from ssa.io.folders import load_grouped_images
        from ssa.session import prepare_network

        network = load_model(model, backend=backend, device=device, **dict(model_options or {}))
        arr, arr_labels = load_grouped_images(images, labels=labels, preprocess=preprocess)  # read once
        prepare_network(network, arr, images_spec=images, preprocess=preprocess)
        from ssa.analysis.compare import check_graph_images, check_graph_network
        from ssa.engines.store import images_hash

        loaded = images_hash(arr)
        for g, name in zip(graphs, names):
            check_graph_network(g, network, name)
            check_graph_images(g, loaded, name, allow_mixed=allow_mixed)
    model_name = str(graphs[0].graph.get("model", "?"))
    title = title or f"SSA report: {model_name}, {len(graphs)} class{'es' if len(graphs) != 1 else ''}"
    anchors = [f"c{i}" for i in range(len(graphs))]
    parts: list[str] = []
    add = parts.append
    with identical_graphs_quietly():
        add(f"<h1>{_esc(title)}</h1>")
        stamp = _dt.datetime.now().strftime("%Y-%m-%d %H:%M")
        add(f'<p class="muted">ssa {_esc(__version__)} · generated {_esc(stamp)} · step-wise sensitivity analysis '
            "(dependency graphs of the neurons each class decision depends on)</p>")
        nav = ['<a href="#params">parameters</a>', '<a href="#overview">classes</a>']
        if cmp is not None:
            nav += ['<a href="#compare">comparison</a>', '<a href="#tables">tables</a>']
        nav += [f'<a href="#{a}">{_esc(lab)}</a>' for a, lab in zip(anchors, labels_)]
        if explorer_href:
            nav.insert(0, f'<a class="explorer" href="{_esc(explorer_href)}">interactive explorer</a>')
        add("<nav>" + " ".join(nav) + "</nav>")
        if explorer_href:
            add(f'<p>Walk these graphs interactively (click a neuron for its reference images, compare two classes, '
                f'follow the paths from the class logit): <a href="{_esc(explorer_href)}">{_esc(explorer_href)}</a> '
                "(written by <code>ssa explore</code>).</p>")

        add('<h2 id="params">Run parameters</h2>')
        add(_params_table(graphs))
        if network is None:
            add('<p class="muted">No model was given, so the figures that need it (outlier frequency, relevance '
                "heat map, saliency, activation maps) are left out; pass --model and --images to add them.</p>")

        add('<h2 id="overview">Classes</h2>')
        taps_all: dict[str, int] = {}
        for g in graphs:
            for _, d in g.nodes(data=True):
                taps_all.setdefault(d.get("tap", "?"), int(d.get("tap_order", 0)))
        tap_cols = [t for t in sorted(taps_all, key=lambda t: -taps_all[t]) if t != "logits"]
        rows = []
        for lab, g, a in zip(labels_, graphs, anchors):
            per = {t: 0 for t in tap_cols}
            for _, d in g.nodes(data=True):
                if d.get("tap", "?") in per:
                    per[d.get("tap", "?")] += 1
            rows.append((lab, g.graph.get("n_images", "?"), g.number_of_nodes(), g.number_of_edges(),
                         *(per[t] for t in tap_cols)))
        add(_table(("class", "images", "nodes", "edges", *(f"kept in {t}" for t in tap_cols)), rows))

        if cmp is not None:
            add('<h2 id="compare">Comparison</h2>')
            add(f"<p>Each class graph is a bag-of-nodes vector over the {len(cmp.nodes)} neurons any graph keeps "
                f"(weight: {'frequency / number of images' if cmp.weight == 'frequency' else '1 if kept'}; class "
                "nodes left out). The vectors are L2-normalised and clustered with Ward's method, so the Euclidean "
                "distance used is sqrt(2 · cosine distance).</p>")
            add(_embed(plot_clustermap(cmp),
                       "Clustermap (paper Fig. 4a): cosine similarity of the class graphs, in dendrogram order.", fmt))
            add(_embed(plot_clustermap(cmp, kind="nodes"),
                       "Bag-of-nodes matrix: classes (rows, dendrogram order) by neurons (columns, clustered).", fmt))
            add(_embed(plot_dendrogram(cmp), "Ward dendrogram of the class graphs.", fmt))
            add("<h3>Most similar classes</h3>")
            add(_table(("class", "class", "cosine similarity", "Jaccard (all neurons)"),
                       ((a, b, s, float(cmp.jaccard["all"][labels_.index(a), labels_.index(b)]))
                        for a, b, s in cmp.closest_pairs(5))))
            add("<h3>Jaccard similarity per layer</h3>")
            mean_rows = []
            for tap, M in cmp.jaccard.items():
                off = M[~np.eye(len(labels_), dtype=bool)]
                off = off[np.isfinite(off)]
                mean_rows.append((tap, float(off.mean()) if off.size else float("nan"),
                                  float(off.min()) if off.size else float("nan"),
                                  float(off.max()) if off.size else float("nan")))
            add(_table(("tap", "mean Jaccard", "min", "max"), mean_rows))
            add("<p>All neurons (pairwise):</p>" + _matrix_table(labels_, cmp.jaccard["all"]))
            for tap, M in cmp.jaccard.items():
                if tap != "all":
                    add(f"<details><summary>Jaccard similarity in {_esc(tap)}</summary>"
                        + _matrix_table(labels_, M) + "</details>")
            add("<h3>Shared sub-graphs</h3>")
            shared_all = cmp.shared()
            add(f"<p>Neurons kept by <b>all</b> {len(graphs)} classes: {shared_all.number_of_nodes()}, with "
                f"{shared_all.number_of_edges()} edges all of them keep.</p>")
            if shared_all.number_of_nodes():
                add(_embed(plot_graph(shared_all, title="shared by all classes"),
                           "Sub-graph shared by all classes (node size: smallest frequency among them).", fmt))
            a, b, s = cmp.closest_pairs(1)[0]
            ia, ib = labels_.index(a), labels_.index(b)
            pair = cmp.shared([ia, ib])
            add(f"<p>The most similar pair, {_esc(a)} and {_esc(b)} (cosine {s:.2f}), shares "
                f"{pair.number_of_nodes()} neurons and {pair.number_of_edges()} edges:</p>")
            if pair.number_of_nodes():
                add(_embed(plot_graph(pair, title=f"shared by {a} and {b}"), f"Sub-graph shared by {a} and {b}.", fmt))
                add(_table(("node", "tap", "neuron", "smallest frequency share", "mean frequency share"),
                           ((n, d["tap"], d["neuron"], d["frequency"], d["mean_frequency"])
                            for n, d in pair.nodes(data=True))))

            add('<h2 id="tables">Tables</h2>')
            add("<h3>Interconnectedness</h3><p>Per neuron: in how many class graphs it is kept, and its in-degree "
                "(how many upper neurons depend on it) summed over the classes and per class.</p>")
            inter = cmp.interconnectedness()
            head = ["node", "classes", "total in-degree", *labels_]
            body = [(r["node"], r["n_graphs"], r["total_in_degree"], *(r[f"in_degree[{lab}]"] for lab in labels_))
                    for r in inter]
            add(_table(head, body[:30]))
            if len(body) > 30:
                add(f"<details><summary>all {len(body)} neurons</summary>" + _table(head, body) + "</details>")

        for i, (lab, g, a) in enumerate(zip(labels_, graphs, anchors)):
            add(f'<h2 id="{a}">{_esc(lab)}</h2>')
            n_img = g.graph.get("n_images", "?")
            add(f"<p>{_esc(n_img)} images · {g.number_of_nodes()} nodes · {g.number_of_edges()} edges · "
                f"file {_esc(names[i])}</p>")
            shared_here = {n for n in g.nodes if n in shared_any}
            kept_by = {n: sum(n in h for h in graphs) for n in g.nodes} if len(graphs) > 1 else None
            if network is not None:
                from ssa.analysis.grouping import images_for_graph

                imgs = images_for_graph(network, g, arr, labels=arr_labels, by_prediction=by_prediction,
                                        min_confidence=min_confidence, max_per_class=max_per_class)
                made = [(f.kind, f.caption, f.figure) for f in
                        class_figures(network, g, imgs, kept_by=kept_by, n_graphs=len(graphs), steps="class",
                                      n_images=n_images, batch_size=batch_size)]
            else:
                made = [("graph", f"dependency graph of {lab}", plot_graph(g, kept_by=kept_by, n_graphs=len(graphs)))]
            captions = {
                "graph": "Dependency graph (paper Fig. 3): one row per layer; node size = frequency, edge width = "
                         "relevance (relative within a layer); node colour = how many classes keep the neuron "
                         "(light: this class only; with one graph: share of images); dashed red = inhibitory.",
                "frequency": "Outlier frequency (Fig. 2a) with a power-law fit: ",
                "relevance": "Relevance rows across images (Fig. 2b): ",
                "saliency": "Saliency (Fig. 4b,c): ",
                "activations": "Activation maps (Fig. 5): ",
            }
            for kind, caption, fig in made:
                text = captions["graph"] if kind == "graph" else captions.get(kind, "") + caption + "."
                add(_embed(fig, text, fmt))
                if kind == "graph":
                    add(_layer_table(g, shared_here))
            ranks = [r for r in (cmp.frequency_ranks() if cmp is not None else []) if r["graph"] == lab]
            if ranks:
                add("<details><summary>frequency ranks</summary>" + _table(
                    ("tap", "neuron", "rank", "frequency", "share", "in-degree", "mean relevance"),
                    ((r["tap"], r["neuron"], r["rank"], r["frequency"], r["frequency_share"], r["in_degree"],
                      r["mean_relevance"]) for r in ranks)) + "</details>")
    body = "\n".join(parts)
    return (f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
            f'<meta name="viewport" content="width=device-width, initial-scale=1">'
            f"<title>{_esc(title)}</title><style>{_CSS}</style></head>\n<body><main>\n{body}\n</main></body></html>\n")


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
