"""Paper, Fig. 4a: the clustermap of the class graphs, and the Ward dendrogram alone."""

from __future__ import annotations

import numpy as np
from matplotlib.figure import Figure
from scipy.cluster.hierarchy import dendrogram, linkage

from ssa.analysis.compare import Comparison, normalise_rows
from ssa.errors import InvalidInputError

from .common import NODE, new_figure

__all__ = ["plot_dendrogram", "plot_clustermap"]


def plot_dendrogram(comparison: Comparison, *, title: str | None = None) -> Figure:
    """Dendrogram of the Ward clustering of the class graphs (cosine distance on bag-of-nodes vectors)."""
    fig = new_figure(max(5.0, 0.55 * len(comparison.labels) + 2), 3.6)
    ax = fig.add_subplot(1, 1, 1)
    dendrogram(comparison.linkage, labels=list(comparison.labels), ax=ax, leaf_rotation=90, color_threshold=0,
               above_threshold_color=NODE)
    ax.set_ylabel("Ward distance (L2-normalised)")
    ax.set_title(title or "Ward clustering of the class graphs", fontsize=10)
    ax.spines[["top", "right"]].set_visible(False)
    return fig


def plot_clustermap(comparison: Comparison, *, kind: str = "similarity", title: str | None = None) -> Figure:
    """Clustermap (paper, Fig. 4a): a heat map with the Ward dendrograms on its sides.

    ``kind="similarity"``: the class x class cosine similarity of the bag-of-nodes vectors, both axes in
    dendrogram order. ``kind="nodes"``: the class x neuron bag-of-nodes matrix, classes in dendrogram
    order (left) and neurons clustered the same way (top). Rows read top-down in dendrogram order.
    """
    if kind not in ("similarity", "nodes"):
        raise InvalidInputError(f"clustermap kind must be 'similarity' or 'nodes', got {kind!r}.")
    labels = list(comparison.labels)
    G = len(labels)
    col_link: np.ndarray | None  # no column dendrogram for fewer than two neurons
    if kind == "similarity":
        M, col_link, n_cols = comparison.similarity, comparison.linkage, G
        col_labels = labels
    else:
        M = comparison.matrix
        n_cols = M.shape[1]
        col_link = linkage(normalise_rows(M.T), method="ward") if n_cols >= 2 else None
        col_labels = list(comparison.nodes)
    labelled = n_cols <= 120
    width = 7.5 if kind == "similarity" else min(30.0, 5.0 + (0.15 if labelled else 0.06) * n_cols)
    # a little room under the heat map for the rotated column labels
    fig = new_figure(width, max(4.5, 0.42 * G + 2.2) + (1.2 if kind == "nodes" and labelled else 0.0))
    gs = fig.add_gridspec(2, 4, width_ratios=[1.2, 6, 1.1 if kind == "similarity" else 0.6, 0.25],
                          height_ratios=[1.2, max(3.0, 0.42 * G)],
                          wspace=0.03, hspace=0.03)
    ax_left = fig.add_subplot(gs[1, 0])
    left = dendrogram(comparison.linkage, orientation="left", ax=ax_left, no_labels=True, color_threshold=0,
                      above_threshold_color=NODE)
    row_order = list(left["leaves"])  # scipy draws the first leaf at the bottom: flip, rows read top-down
    ax_left.invert_yaxis()
    ax_left.axis("off")
    ax_top = fig.add_subplot(gs[0, 1])
    if col_link is not None:
        top = dendrogram(col_link, ax=ax_top, no_labels=True, color_threshold=0, above_threshold_color=NODE)
        col_order = list(top["leaves"])
    else:
        col_order = list(range(n_cols))
    ax_top.axis("off")
    ax = fig.add_subplot(gs[1, 1])
    data = M[np.ix_(row_order, col_order)]
    vmin = 0.0 if kind == "nodes" else min(0.0, float(data.min()))
    im = ax.imshow(data, origin="upper", aspect="auto", cmap="magma" if kind == "nodes" else "viridis",
                   vmin=vmin, vmax=max(1e-12, float(data.max()) if kind == "nodes" else 1.0),
                   extent=(0, n_cols, G, 0), interpolation="nearest")
    ax.set_yticks(np.arange(G) + 0.5)
    ax.set_yticklabels([labels[i] for i in row_order], fontsize=9)
    ax.yaxis.tick_right()
    if labelled:
        ax.set_xticks(np.arange(n_cols) + 0.5)
        ax.set_xticklabels([col_labels[i] for i in col_order], fontsize=8 if kind == "similarity" else 7.5,
                           rotation=90)
    else:
        ax.set_xticks([])
        ax.set_xlabel(f"{n_cols} neurons (clustered)")
    ax.tick_params(length=0)
    cax = fig.add_subplot(gs[1, 3])  # column 2 leaves room for the row labels
    fig.colorbar(im, cax=cax, label="cosine similarity" if kind == "similarity" else f"weight ({comparison.weight})")
    fig.suptitle(title or ("cosine similarity of the class graphs, Ward clustering" if kind == "similarity"
                           else "bag-of-nodes vectors, Ward clustering"), fontsize=10)
    return fig
