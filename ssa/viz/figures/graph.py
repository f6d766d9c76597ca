"""Paper, Fig. 3: the layered dependency graph of a class (or a shared sub-graph)."""

from __future__ import annotations

from collections.abc import Collection, Mapping

import networkx as nx
import numpy as np
from matplotlib import colormaps
from matplotlib.cm import ScalarMappable
from matplotlib.colors import BoundaryNorm, ListedColormap, Normalize
from matplotlib.figure import Figure
from matplotlib.lines import Line2D

from .common import CLASS, INHIB, dependency_graph, new_figure

__all__ = ["plot_graph"]

_CLASS_TAP = "logits"


def plot_graph(graph: nx.DiGraph, *, shared: Collection[str] | None = None,
               kept_by: Mapping[str, int] | None = None, n_graphs: int | None = None,
               title: str | None = None, max_per_layer: int = 48) -> Figure:
    """Layered drawing of a dependency graph (paper, Fig. 3).

    One row per tap (top tap first, :meth:`DependencyGraph.layers`); node area grows with frequency /
    n_images, edge width with |relevance| (relative within an upper tap); inhibitory edges (sign -1) are
    red and dashed. Node colour: with ``kept_by`` (``{node: how many class graphs keep it}``, out of
    ``n_graphs``) the number of classes that keep the neuron, light (this class only) to dark (all
    classes); else the share of images in which it is an outlier (frequency / n_images). ``shared``
    (older form) is ``kept_by`` with 2 for its nodes and 1 for the others. Layers with more than
    ``max_per_layer`` nodes show the most frequent ones. A shared sub-graph (``kind="shared"``, from
    :meth:`ssa.analysis.compare.Comparison.shared`) has frequencies that are already shares of images.
    """
    g = dependency_graph(graph)
    run = g.run
    if kept_by is None and shared is not None:
        shared = set(shared)
        kept_by, n_graphs = {n: 2 if n in shared else 1 for n in g.nodes}, 2
    freq = {n: float(d.get("frequency", 0)) for n, d in g.nodes(data=True)}  # float: shares in a shared graph
    neuron = {n: int(d["neuron"]) for n, d in g.nodes(data=True)}
    layers = g.layers()
    tap_of = {n: tap for tap, nodes in layers for n in nodes}
    if run.extra.get("kind") == "shared":  # a shared sub-graph's frequencies are already shares of images
        n_img = 1.0
    else:
        n_img = float(run.n_images or 0) or max(freq.values(), default=1.0) or 1.0
    pos: dict[str, tuple[float, float]] = {}
    hidden: dict[str, int] = {}
    widest = max((min(len(ns), max_per_layer) for _, ns in layers), default=1)
    for row, (tap, nodes) in enumerate(layers):
        if len(nodes) > max_per_layer:
            keep = sorted(nodes, key=lambda n: (-freq[n], neuron[n]))[:max_per_layer]
            hidden[tap] = len(nodes) - max_per_layer
            nodes = keep
        nodes = sorted(nodes, key=lambda n: neuron[n])
        m = len(nodes)
        for j, n in enumerate(nodes):
            pos[n] = ((j + 0.5) / m * widest if m else 0.0, -float(row))
    label_w = 1.25  # inches for the tap names on the left
    width = max(4.5, min(22.0, label_w + 1.0 + 0.5 * widest))
    fig = new_figure(width, max(2.3, 1.0 * len(layers) + 1.1))
    # the axes fill the figure: tap names in the left margin, the colour bar on the right
    ax = fig.add_axes((label_w / width, 0.10, 1 - (label_w + 0.75) / width, 0.80))
    edge = {(u, v): g.edge_info(u, v) for u, v in g.edges}
    rmax: dict[str, float] = {}  # relevance scales differ between steps: widths are relative per upper tap
    for (u, _), e in edge.items():
        rmax[tap_of[u]] = max(rmax.get(tap_of[u], 0.0), abs(e.relevance))
    inhibitory = False
    for (u, v), e in edge.items():
        if u not in pos or v not in pos:
            continue
        neg = e.sign < 0
        inhibitory |= neg
        (x0, y0), (x1, y1) = pos[u], pos[v]
        ax.plot([x0, x1], [y0, y1], color=INHIB if neg else "#8c8c8c", ls="--" if neg else "-",
                lw=0.4 + 3.0 * abs(e.relevance) / (rmax[tap_of[u]] or 1.0), alpha=0.75, zorder=1)
    ramp = colormaps["Blues"]
    norm: Normalize  # classes kept by: one colour per count (a BoundaryNorm); else a continuous share
    if kept_by is not None:
        total = max(int(n_graphs or 0), max(kept_by.values(), default=1), 1)
        steps = [ramp(0.3 + 0.7 * (k - 1) / max(total - 1, 1)) for k in range(1, total + 1)]
        cmap, norm = ListedColormap(steps), BoundaryNorm(np.arange(0.5, total + 1.5), total)
        value = {n: float(kept_by.get(n, 1)) for n in g.nodes}
        bar_label, ticks = f"kept by how many of the {total} classes", list(range(1, total + 1))
    else:
        cmap = ListedColormap([ramp(t) for t in np.linspace(0.3, 1.0, 64)])
        norm = Normalize(0.0, 1.0)
        value = {n: min(1.0, freq[n] / n_img) for n in g.nodes}
        bar_label, ticks = "share of images (frequency / images)", None
    xs, ys, sizes, colors, edges = [], [], [], [], []
    for n, (x, y) in pos.items():
        xs.append(x)
        ys.append(y)
        sizes.append(40 + 460 * min(1.0, freq[n] / n_img))
        colors.append(CLASS if tap_of[n] == _CLASS_TAP else cmap(norm(value[n])))
        edges.append(INHIB if g.info(n).sign < 0 else "white")
    ax.scatter(xs, ys, s=sizes, c=colors, edgecolors=edges, linewidths=1.2, zorder=2)
    if len(pos) <= 160:
        for (n, (x, y)), size, c in zip(pos.items(), sizes, colors, strict=False):
            big = size >= 160
            dark = c == CLASS or (not isinstance(c, str) and 0.299 * c[0] + 0.587 * c[1] + 0.114 * c[2] < 0.55)
            ax.text(x, y if big else y + 0.13, str(neuron[n]), ha="center",
                    va="center" if big else "bottom", fontsize=6, color="white" if big and dark else "black", zorder=3)
    for row, (tap, nodes) in enumerate(layers):
        extra = f"\n(+{hidden[tap]} more)" if tap in hidden else ""
        ax.annotate(f"{tap}\n{len(nodes)} kept{extra}", xy=(0, -row), xycoords=("axes fraction", "data"),
                    xytext=(-8, 0), textcoords="offset points", ha="right", va="center", fontsize=8)
    ax.set_xlim(-0.1, widest + 0.1)
    ax.set_ylim(-len(layers) + 0.55, 0.45)
    ax.axis("off")
    cax = fig.add_axes((1 - 0.55 / width, 0.18, 0.12 / width, 0.64))
    bar = fig.colorbar(ScalarMappable(norm=norm, cmap=cmap), cax=cax, ticks=ticks)
    bar.set_label(bar_label, fontsize=7)
    bar.ax.tick_params(labelsize=7)
    handles = [Line2D([], [], marker="o", ls="", color="#8c8c8c", label="node size: frequency")]
    if any(tap == _CLASS_TAP for tap, _ in layers):
        handles.append(Line2D([], [], marker="o", ls="", color=CLASS, label="class neuron"))
    if inhibitory:
        handles.append(Line2D([], [], color=INHIB, ls="--", label="inhibitory edge"))
    ax.legend(handles=handles, loc="upper center", bbox_to_anchor=(0.5, 0.0), fontsize=7, frameon=False,
              ncol=len(handles))
    fig.suptitle(title or (f"dependency graph of class {run.target}" if run.target >= 0 else "dependency graph"),
                 fontsize=10)
    return fig
