"""Notebook views: a dependency graph, an analysis and a comparison in Jupyter.

Each is a short summary and the explorer's page (:mod:`ssa.viz.explorer`, the same bundle as ``ssa explore``)
in an ``<iframe srcdoc>``: the bundle, the style sheet and the data are inline, so the view works offline, in a
notebook saved with its outputs and in its HTML export. The frame is sandboxed (scripts and downloads only), so
the page cannot reach the notebook. Importing this module registers the views with :mod:`ssa.core.display`
(by class name: nothing is imported until an object is shown); ``import ssa`` imports it.
"""

from __future__ import annotations

import html
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import networkx as nx

from ssa.core.display import register_html
from ssa.core.graph import DependencyGraph

if TYPE_CHECKING:
    from ssa.analysis.compare import Comparison
    from ssa.results import AnalysisResult

__all__ = ["explorer_frame", "graph_html", "result_html", "comparison_html", "FRAME_HEIGHT"]

FRAME_HEIGHT = 560  # px: the explorer fills its frame (classes | graph | neuron panel)
_SHOWN = 12  # neurons listed per tap in a summary, most frequent first
_STYLE = ("<style>.ssa-summary table{border-collapse:collapse;font-size:12px}"
          ".ssa-summary th,.ssa-summary td{text-align:left;padding:1px 8px 1px 0;vertical-align:top}"
          ".ssa-summary td.num{text-align:right}.ssa-summary p{margin:.2em 0}</style>")


def explorer_frame(graphs: Sequence[nx.DiGraph], names: Sequence[str] | None = None, *, title: str | None = None
                   ) -> str:
    """The explorer of ``graphs`` as an ``<iframe>`` whose ``srcdoc`` is the whole one-file page."""
    from ssa.viz.explorer import explorer_files, page_html

    files = explorer_files(graphs, names, title=title)
    page = page_html(files["index.json"]["title"], files)
    return (f'<iframe class="ssa-explorer" title="{html.escape(files["index.json"]["title"])}" '
            f'sandbox="allow-scripts allow-downloads" style="width:100%;height:{FRAME_HEIGHT}px;'
            f'border:1px solid #ddd" srcdoc="{html.escape(page, quote=True)}"></iframe>')


def _graph_table(g: DependencyGraph) -> str:
    run = g.run
    rows = []
    for tap, nodes in g.layers():
        infos = [g.info(n) for n in nodes]
        shown = ", ".join(f"{i.neuron} ({i.frequency}/{run.n_images})" for i in infos[:_SHOWN])
        more = f", … {len(infos) - _SHOWN} more" if len(infos) > _SHOWN else ""
        of = run.tap_neurons.get(tap)
        rows.append(f"<tr><td>{html.escape(tap)}</td><td class=num>{len(infos)}</td>"
                    f"<td class=num>{'' if of is None else of}</td><td>{html.escape(shown + more)}</td></tr>")
    return ("<table><thead><tr><th>tap</th><th>kept</th><th>of</th><th>neurons (frequency / images)</th></tr>"
            f"</thead><tbody>{''.join(rows)}</tbody></table>")


def graph_html(graph: nx.DiGraph) -> str:
    """A dependency graph: its run, a table of its layers and the explorer."""
    g = graph if isinstance(graph, DependencyGraph) else DependencyGraph.from_networkx(graph)
    run = g.run
    params = ", ".join(f"{k}={v}" for k, v in (("b", run.branching), ("rule", run.rule), ("selector", run.selector))
                       if v is not None)
    head = (f"<p><b>class {run.target} of {html.escape(str(run.model or '?'))}</b>: {run.n_images} images, "
            f"{html.escape(params)} · {g.number_of_nodes()} nodes, {g.number_of_edges()} edges</p>")
    notes = "".join(f"<p>note: {html.escape(n)}</p>" for n in run.notes)
    return (f'{_STYLE}<div class="ssa-summary">{head}{_graph_table(g)}{notes}</div>'
            + explorer_frame([g], [f"class {run.target}"]))


def result_html(result: AnalysisResult) -> str:
    """An analysis: its summary (as ``ssa analyse`` prints it) and the explorer of its graph."""
    return (f'<div class="ssa-summary"><pre>{html.escape(result.summary())}</pre></div>'
            + explorer_frame([result.graph], [f"class {result.target}"]))


def comparison_html(cmp: Comparison) -> str:
    """A comparison: the cosine similarity in dendrogram order, the mean Jaccard per tap and the explorer of every
    graph (the class list sorted and coloured by similarity to the class shown)."""
    order = list(cmp.order)
    head = "".join(f"<th>{html.escape(cmp.labels[j])}</th>" for j in order)
    body = "".join(f"<tr><th>{html.escape(cmp.labels[i])}</th>"
                   + "".join(f"<td class=num>{cmp.similarity[i, j]:.2f}</td>" for j in order) + "</tr>"
                   for i in order)
    jac = ", ".join(f"{html.escape(t)} {v:.2f}" for t, v in cmp.mean_jaccard().items() if v == v)
    return (f'{_STYLE}<div class="ssa-summary"><p><b>{len(cmp.labels)} graphs of {html.escape(cmp.model)}</b> '
            f"(bag-of-nodes weight: {html.escape(cmp.weight)}); cosine similarity, dendrogram order:</p>"
            f"<table><thead><tr><th></th>{head}</tr></thead><tbody>{body}</tbody></table>"
            f"<p>mean Jaccard per tap: {jac}</p></div>"
            + explorer_frame(list(cmp.graphs), list(cmp.labels)))


def _register() -> None:
    views: dict[str, Any] = {"ssa.core.graph.DependencyGraph": graph_html, "ssa.results.AnalysisResult": result_html,
                             "ssa.analysis.compare.Comparison": comparison_html}
    for name, view in views.items():
        register_html(name, view)


_register()
