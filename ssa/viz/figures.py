"""The paper's figures (method doc, section 7), drawn with matplotlib's Agg canvas.

Every ``plot_*`` function writes one figure to ``path`` (``.png`` or ``.svg``, by the
suffix) atomically and returns the path. No pyplot state is touched, so the functions
are safe in notebooks and threads.

==========================  ==============================================================
paper figure                function
==========================  ==============================================================
Fig. 2a outlier frequency   :func:`plot_frequency` (+ :func:`power_law_fit`)
Fig. 2b relevance rows      :func:`plot_relevance_heatmap` (rows from :func:`relevance_rows`)
Fig. 3  dependency graph    :func:`plot_graph`
Fig. 4a clustermap          :func:`plot_clustermap`, :func:`plot_dendrogram`
Fig. 4b,c saliency          :func:`plot_saliency` (maps from :func:`saliency`)
Fig. 5  activation maps     :func:`plot_activation_grid` (maps from :func:`activation_maps`)
==========================  ==============================================================
"""

from __future__ import annotations

import io
import json
import os
from collections.abc import Collection, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import networkx as nx
import numpy as np

from ssa.core.checks import call_selector
from ssa.errors import InvalidInputError, UnsupportedModelError
from ssa.io.atomic import atomic_write_bytes

if TYPE_CHECKING:  # pragma: no cover
    from matplotlib.figure import Figure

    from ssa.analysis.compare import Comparison
    from ssa.core.interfaces import Network
    from ssa.core.traversal import StepRecord

__all__ = ["FORMATS", "figure_bytes", "save_figure", "power_law_fit", "step_counts", "relevance_rows",
           "outlier_counts", "plot_frequency", "plot_relevance_heatmap", "plot_graph", "saliency", "plot_saliency",
           "activation_maps", "plot_activation_grid", "plot_dendrogram", "plot_clustermap", "parse_node",
           "class_figures", "default_map_neuron"]

FORMATS = ("png", "svg")
_DPI = 110
_SHARED = "#e6862e"
_NODE = "#4c78a8"
_CLASS = "#333333"
_INHIB = "#c43c39"


# -- output ------------------------------------------------------------------------------------
def _new_figure(width: float, height: float) -> Figure:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=_DPI)
    FigureCanvasAgg(fig)
    return fig


def _format_of(path: str | os.PathLike) -> str:
    suffix = Path(path).suffix.lower().lstrip(".")
    if suffix not in FORMATS:
        raise InvalidInputError(f"figure file must end in .png or .svg, got {Path(path).name!r}; rename it.")
    return suffix


def figure_bytes(fig: Figure, fmt: str = "png") -> bytes:
    """Render ``fig`` as PNG or SVG bytes."""
    if fmt not in FORMATS:
        raise InvalidInputError(f"figure format must be 'png' or 'svg', got {fmt!r}.")
    buf = io.BytesIO()
    fig.savefig(buf, format=fmt, dpi=_DPI, bbox_inches="tight", metadata={"Date": None} if fmt == "svg" else None)
    return buf.getvalue()


def save_figure(fig: Figure, path: str | os.PathLike) -> Path:
    """Write ``fig`` to ``path`` (format from the suffix), atomically."""
    path = Path(path)
    atomic_write_bytes(path, figure_bytes(fig, _format_of(path)))
    return path


def parse_node(text: str) -> tuple[str, int]:
    """``"features.6:5"`` -> ``("features.6", 5)`` (the graph's node ids)."""
    tap, sep, neuron = str(text).rpartition(":")
    if not sep or not tap or not neuron.strip().isdigit():
        raise InvalidInputError(
            f"a neuron must look like TAP:INDEX (a graph node id, e.g. features.6:5), got {text!r}.")
    return tap, int(neuron)


# -- Fig. 2a: outlier frequency ---------------------------------------------------------------
def step_counts(step: StepRecord, neuron: int) -> np.ndarray:
    """Outlier counts over images of every lower neuron for upper ``neuron`` of a step record."""
    if neuron not in step.neurons:
        raise InvalidInputError(f"neuron {neuron} is not an upper neuron of step {step.upper} -> {step.parent}; "
                                f"its upper neurons are {list(step.neurons)}.")
    return np.asarray(step.counts[step.neurons.index(neuron)])


def power_law_fit(counts: np.ndarray) -> tuple[float, float, float]:
    """Fit ``count = c * rank ** -alpha`` to the non-zero counts sorted descending (least squares in log-log).

    Returns ``(alpha, c, r2)``; NaNs when fewer than 2 neurons are outliers at all.
    """
    y = np.sort(np.asarray(counts, dtype=np.float64).ravel())[::-1]
    y = y[y > 0]
    if y.size < 2:
        return float("nan"), float("nan"), float("nan")
    x = np.log(np.arange(1, y.size + 1))
    ly = np.log(y)
    slope, intercept = np.polyfit(x, ly, 1)
    pred = intercept + slope * x
    ss = float(((ly - ly.mean()) ** 2).sum())
    r2 = 1.0 - float(((ly - pred) ** 2).sum()) / ss if ss > 0 else 1.0
    return float(-slope), float(np.exp(intercept)), r2


def plot_frequency(counts: np.ndarray, path: str | os.PathLike, *, n_images: int | None = None,
                   title: str | None = None, annotate: int = 8) -> Path:
    """Bar plot of the outlier frequency of each lower neuron, most frequent first, with a power-law fit
    (paper, Fig. 2a). Only neurons that are outliers in at least one image are drawn.

    The fit is drawn only where it lies inside the axes; the legend sits above the axes (it never hides
    bars); the dotted line marks the number of images; ranks are whole numbers.
    """
    from matplotlib.ticker import MaxNLocator

    counts = np.asarray(counts).ravel()
    order = np.argsort(-counts, kind="stable")
    order = order[counts[order] > 0]
    fig = _new_figure(7.0, 3.6)
    ax = fig.add_subplot(1, 1, 1)
    ranks = np.arange(1, order.size + 1)
    top = max(float(n_images or 0), float(counts.max()) if counts.size else 0.0, 1.0) * 1.1
    if order.size:
        ax.bar(ranks, counts[order], width=0.85, color=_NODE, label="outlier frequency")
        alpha, c, r2 = power_law_fit(counts)
        if alpha == alpha:
            xs = np.linspace(1, order.size, 200)
            ys = c * xs ** -alpha
            ys = np.where((ys >= 0) & (ys <= top), ys, np.nan)  # only the part inside the axes
            ax.plot(xs, ys, color=_SHARED, lw=2, label=f"power law {c:.3g}·rank^−{alpha:.2f} (R² = {r2:.2f})")
        for r, k in zip(ranks[:annotate], order[:annotate], strict=True):
            ax.annotate(str(int(k)), (r, counts[k]), ha="center", va="bottom", fontsize=7, xytext=(0, 1),
                        textcoords="offset points")
    else:
        ax.text(0.5, 0.5, "no outliers in any image", ha="center", va="center", transform=ax.transAxes)
    if n_images:
        ax.axhline(n_images, color="#777777", lw=1.0, ls=":", label=f"number of images ({int(n_images)})")
    ax.set_xlim(0.4, max(order.size, 1) + 0.6)
    ax.set_ylim(0, top)
    if order.size <= 20:
        ax.set_xticks(np.arange(1, max(order.size, 1) + 1))
    else:
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel(f"lower neurons ranked by frequency ({order.size} of {counts.size} are outliers at least once; "
                  "labels: neuron index)", fontsize=9)
    ax.set_ylabel("images where it is an outlier")
    ax.set_title(title or "outlier frequency", fontsize=10, pad=24)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(loc="lower center", bbox_to_anchor=(0.5, 1.0), ncol=3, fontsize=8, frameon=False,
                  borderaxespad=0.2)
    ax.spines[["top", "right"]].set_visible(False)
    return save_figure(fig, path)


# -- Fig. 2b: relevance rows ------------------------------------------------------------------------
def relevance_rows(network: Network, images: np.ndarray, upper: str, neuron: int, *,
                   rule: Any = "gradient", rule_params: Mapping[str, Any] | None = None,
                   parent: str | None = None, batch_size: int = 32) -> tuple[str, np.ndarray]:
    """omega[n, i, :] of one upper neuron over every image: ``(parent, array (n_images, K_parent))``.

    ``network`` must be prepared; ``parent`` defaults to the upper tap's first parent.
    """
    from ssa.plugins import make_rule

    taps = {t.name: t for t in network.taps}
    if upper not in taps:
        raise InvalidInputError(f"unknown tap {upper!r}; taps are: {', '.join(taps)}.")
    tap = taps[upper]
    if not 0 <= int(neuron) < tap.n_neurons:
        raise InvalidInputError(f"neuron must be in [0, {tap.n_neurons - 1}] for tap {upper!r}, got {neuron}.")
    if not tap.parents:
        raise InvalidInputError(f"tap {upper!r} is the lowest tap: it has no step below it; pick a higher neuron.")
    parent = parent or tap.parents[0]
    if parent not in tap.parents:
        raise InvalidInputError(f"{parent!r} is not a parent of {upper!r}; its parents are {', '.join(tap.parents)}.")
    rule_obj = make_rule(rule, **dict(rule_params or {})) if isinstance(rule, str) else rule
    parts = []
    for i in range(0, images.shape[0], batch_size):
        rel, _ = network.step_relevance(images[i:i + batch_size], upper, [int(neuron)], rule_obj)
        parts.append(np.asarray(rel[parent])[0])
    return parent, np.concatenate(parts, axis=0)


def outlier_counts(omega: np.ndarray, selector: Any = "tukey", selector_params: Mapping[str, Any] | None = None
                   ) -> tuple[np.ndarray, np.ndarray]:
    """Apply the selector to every row of ``omega`` (n_images, K): ``(counts (K,), selected (n_images, K))``."""
    from ssa.plugins import make_selector

    sel_obj = make_selector(selector, **dict(selector_params or {})) if isinstance(selector, str) else selector
    selected = call_selector(sel_obj, np.asarray(omega, dtype=np.float64))
    return (selected > 0).sum(axis=0), selected


def plot_relevance_heatmap(omega: np.ndarray, path: str | os.PathLike, *, selected: np.ndarray | None = None,
                           title: str | None = None, max_columns: int = 128, max_rows: int = 200) -> Path:
    """Heat map of the relevance rows omega[n, i, :] across images (paper, Fig. 2b).

    Rows are images, columns lower neurons (by index; with more than ``max_columns`` neurons the
    most often selected, then most relevant, are shown). Positive outliers (``selected > 0``) are dotted.
    """
    omega = np.asarray(omega, dtype=np.float64)
    if omega.ndim != 2 or omega.size == 0:
        raise InvalidInputError(f"omega must be a non-empty (n_images, K) array, got shape {omega.shape}.")
    cols = np.arange(omega.shape[1])
    if cols.size > max_columns:
        score = (selected > 0).sum(axis=0) if selected is not None else np.zeros(cols.size)
        cols = np.sort(np.lexsort((-omega.mean(axis=0), -score))[:max_columns])
    rows = np.arange(min(omega.shape[0], max_rows))
    data = omega[np.ix_(rows, cols)]
    vmax = float(np.nanmax(np.abs(data))) or 1.0
    fig = _new_figure(min(12.0, 3.0 + 0.09 * cols.size), min(8.0, 2.0 + 0.035 * rows.size))
    ax = fig.add_subplot(1, 1, 1)
    im = ax.imshow(data, aspect="auto", cmap="RdBu_r", vmin=-vmax, vmax=vmax, interpolation="nearest")
    if selected is not None:
        s = np.asarray(selected)[np.ix_(rows, cols)]
        yy, xx = np.nonzero(s > 0)
        ax.scatter(xx, yy, s=4, c="black", marker=".", linewidths=0, label="outlier")
    step = max(1, cols.size // 32)
    ax.set_xticks(np.arange(0, cols.size, step))
    ax.set_xticklabels([str(int(c)) for c in cols[::step]], fontsize=6, rotation=90)
    ax.set_xlabel("lower neuron")
    ax.set_ylabel("image")
    ax.set_title(title or "relevance rows across images", fontsize=10)
    fig.colorbar(im, ax=ax, fraction=0.04, pad=0.02, label="ω (relevance)")
    return save_figure(fig, path)


# -- Fig. 3: the dependency graph ---------------------------------------------------------------------
def _layers(graph: nx.DiGraph) -> list[tuple[str, list[str]]]:
    by_tap: dict[str, list[str]] = {}
    order: dict[str, int] = {}
    for n, d in graph.nodes(data=True):
        by_tap.setdefault(d.get("tap", "?"), []).append(n)
        order[d.get("tap", "?")] = int(d.get("tap_order", 0))
    return [(t, sorted(by_tap[t], key=lambda n: int(graph.nodes[n].get("neuron", 0))))
            for t in sorted(by_tap, key=lambda t: -order[t])]


def plot_graph(graph: nx.DiGraph, path: str | os.PathLike, *, shared: Collection[str] | None = None,
               kept_by: Mapping[str, int] | None = None, n_graphs: int | None = None,
               title: str | None = None, max_per_layer: int = 48) -> Path:
    """Layered drawing of a dependency graph (paper, Fig. 3).

    One row per tap (top tap first, by ``tap_order``); node area grows with frequency / n_images,
    edge width with |relevance| (relative within an upper tap); inhibitory edges (sign -1) are red and
    dashed. Node colour: with ``kept_by`` (``{node: how many class graphs keep it}``, out of ``n_graphs``)
    the number of classes that keep the neuron, light (this class only) to dark (all classes); else the
    share of images in which it is an outlier (frequency / n_images). ``shared`` (older form) is
    ``kept_by`` with 2 for its nodes and 1 for the others. Layers with more than ``max_per_layer`` nodes
    show the most frequent ones.
    """
    from matplotlib import colormaps
    from matplotlib.cm import ScalarMappable
    from matplotlib.colors import BoundaryNorm, ListedColormap, Normalize
    from matplotlib.lines import Line2D

    if kept_by is None and shared is not None:
        shared = set(shared)
        kept_by, n_graphs = {n: 2 if n in shared else 1 for n in graph.nodes}, 2
    layers = _layers(graph)
    if graph.graph.get("kind") == "shared":  # a shared sub-graph's frequencies are already shares of images
        n_img = 1.0
    else:
        n_img = float(graph.graph.get("n_images") or 0) or max(
            (float(d.get("frequency", 1)) for _, d in graph.nodes(data=True)), default=1.0) or 1.0
    pos: dict[str, tuple[float, float]] = {}
    hidden: dict[str, int] = {}
    widest = max((min(len(ns), max_per_layer) for _, ns in layers), default=1)
    for row, (tap, nodes) in enumerate(layers):
        if len(nodes) > max_per_layer:
            keep = sorted(nodes, key=lambda n: -float(graph.nodes[n].get("frequency", 0)))[:max_per_layer]
            hidden[tap] = len(nodes) - max_per_layer
            nodes = sorted(keep, key=lambda n: int(graph.nodes[n].get("neuron", 0)))
        m = len(nodes)
        for j, n in enumerate(nodes):
            pos[n] = ((j + 0.5) / m * widest if m else 0.0, -float(row))
    label_w = 1.25  # inches for the tap names on the left
    width = max(4.5, min(22.0, label_w + 1.0 + 0.5 * widest))
    fig = _new_figure(width, max(2.3, 1.0 * len(layers) + 1.1))
    # the axes fill the figure: tap names in the left margin, the colour bar on the right
    ax = fig.add_axes((label_w / width, 0.10, 1 - (label_w + 0.75) / width, 0.80))
    rmax: dict[str, float] = {}  # relevance scales differ between steps: widths are relative per upper tap
    for u, _v, d in graph.edges(data=True):
        t = graph.nodes[u].get("tap", "?")
        rmax[t] = max(rmax.get(t, 0.0), abs(float(d.get("relevance", 0.0))))
    inhibitory = False
    for u, v, d in graph.edges(data=True):
        if u not in pos or v not in pos:
            continue
        neg = int(d.get("sign", 1)) < 0
        inhibitory |= neg
        (x0, y0), (x1, y1) = pos[u], pos[v]
        ax.plot([x0, x1], [y0, y1], color=_INHIB if neg else "#8c8c8c", ls="--" if neg else "-",
                lw=0.4 + 3.0 * abs(float(d.get("relevance", 0.0))) / (rmax[graph.nodes[u].get("tap", "?")] or 1.0),
                alpha=0.75, zorder=1)
    ramp = colormaps["Blues"]
    if kept_by is not None:
        total = max(int(n_graphs or 0), max(kept_by.values(), default=1), 1)
        steps = [ramp(0.3 + 0.7 * (k - 1) / max(total - 1, 1)) for k in range(1, total + 1)]
        cmap, norm = ListedColormap(steps), BoundaryNorm(np.arange(0.5, total + 1.5), total)
        value = {n: float(kept_by.get(n, 1)) for n in graph.nodes}
        bar_label, ticks = f"kept by how many of the {total} classes", list(range(1, total + 1))
    else:
        cmap = ListedColormap([ramp(t) for t in np.linspace(0.3, 1.0, 64)])
        norm = Normalize(0.0, 1.0)
        value = {n: min(1.0, float(d.get("frequency", 0)) / n_img) for n, d in graph.nodes(data=True)}
        bar_label, ticks = "share of images (frequency / images)", None
    xs, ys, sizes, colors, edges = [], [], [], [], []
    for n, (x, y) in pos.items():
        d = graph.nodes[n]
        xs.append(x)
        ys.append(y)
        sizes.append(40 + 460 * min(1.0, float(d.get("frequency", 0)) / n_img))
        colors.append(_CLASS if d.get("tap") == "logits" else cmap(norm(value[n])))
        edges.append(_INHIB if int(d.get("sign", 1)) < 0 else "white")
    ax.scatter(xs, ys, s=sizes, c=colors, edgecolors=edges, linewidths=1.2, zorder=2)
    if len(pos) <= 160:
        for (n, (x, y)), size, c in zip(pos.items(), sizes, colors, strict=True):
            big = size >= 160
            dark = c == _CLASS or (not isinstance(c, str) and 0.299 * c[0] + 0.587 * c[1] + 0.114 * c[2] < 0.55)
            ax.text(x, y if big else y + 0.13, str(graph.nodes[n].get("neuron", "")), ha="center",
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
    if any(d.get("tap") == "logits" for _, d in graph.nodes(data=True)):
        handles.append(Line2D([], [], marker="o", ls="", color=_CLASS, label="class neuron"))
    if inhibitory:
        handles.append(Line2D([], [], color=_INHIB, ls="--", label="inhibitory edge"))
    ax.legend(handles=handles, loc="upper center", bbox_to_anchor=(0.5, 0.0), fontsize=7, frameon=False,
              ncol=len(handles))
    target = graph.graph.get("target")
    fig.suptitle(title or (f"dependency graph of class {target}" if target is not None else "dependency graph"),
                 fontsize=10)
    return save_figure(fig, path)


# -- Fig. 4b,c: saliency; Fig. 5: activation maps ------------------------------------------------------
def _torch_parts(network: Network, tap: str):
    gm = getattr(network, "graph_module", None)
    plan = getattr(network, "plan", None)
    if gm is None or plan is None:
        raise UnsupportedModelError(f"saliency and activation maps need a PyTorch-backed network, got "
                                    f"{type(network).__name__}; load the model with the torch backend.")
    taps = {t.name: t for t in network.taps}
    if tap not in taps:
        raise InvalidInputError(f"unknown tap {tap!r}; taps are: {', '.join(taps)}.")
    return gm, plan.node_of[tap], taps[tap]


def _run_recording(network: Network, x, node_name: str):
    """The value of one fx node when the network runs on ``x``."""
    return _run_recording_many(network, x, [node_name])[node_name]


def _run_recording_many(network: Network, x, node_names: Collection[str]) -> dict[str, Any]:
    """The values of several fx nodes from one run of the network on ``x`` (one forward pass)."""
    from torch import fx

    gm = network.graph_module  # type: ignore[attr-defined]
    wanted = set(node_names)
    seen: dict[str, Any] = {}

    class _Record(fx.Interpreter):
        def run_node(self, n):
            out = super().run_node(n)
            if n.name in wanted:
                seen[n.name] = out
            return out

    _Record(gm).run(x)
    return seen


def _channel_scalar(value, channel_axis: int, neuron: int):
    """(B,) scalar of one neuron: its value (2-D tap) or spatial mean (4-D tap)."""
    v = value.movedim(channel_axis, 1)[:, int(neuron)]
    return v.reshape(v.shape[0], -1).mean(dim=1)


def _check_neuron(tap, neuron: int) -> int:
    if not 0 <= int(neuron) < tap.n_neurons:
        raise InvalidInputError(f"neuron must be in [0, {tap.n_neurons - 1}] for tap {tap.name!r}, got {neuron}.")
    return int(neuron)


def saliency(network: Network, images: np.ndarray, tap: str, neuron: int) -> np.ndarray:
    """Gradient of one neuron's scalar (its value, or spatial mean) w.r.t. the input image, through the
    whole network (no cuts): the saliency of a feature map (paper, Fig. 4b,c). Same shape as ``images``."""
    import torch

    _, node, t = _torch_parts(network, tap)
    neuron = _check_neuron(t, neuron)
    x = network.to_tensor(images).detach().requires_grad_(True)  # type: ignore[attr-defined]
    with torch.enable_grad():
        value = _run_recording(network, x, node)
        s = _channel_scalar(value, t.channel_axis, neuron).sum()
        (g,) = torch.autograd.grad(s, x, allow_unused=True)
    if g is None:
        return np.zeros(images.shape, np.float32)
    return g.detach().cpu().numpy().astype(np.float32)


def activation_maps(network: Network, images: np.ndarray, tap: str, neuron: int) -> np.ndarray:
    """The activation map of one channel of a conv tap on each image: shape (n_images, H, W)."""
    import torch

    _, node, t = _torch_parts(network, tap)
    neuron = _check_neuron(t, neuron)
    if len(t.shape) < 2:
        raise InvalidInputError(f"tap {tap!r} is a dense layer (one value per neuron, no map); pick a conv tap.")
    with torch.no_grad():
        value = _run_recording(network, network.to_tensor(images), node)  # type: ignore[attr-defined]
    v = value.movedim(t.channel_axis, 1)[:, neuron].detach().cpu().numpy().astype(np.float32)
    if v.ndim == 2:  # a 1-D sequence per channel: show it as one row
        return v[:, None, :]
    return v.reshape(v.shape[0], v.shape[1], -1)


def _display(image: np.ndarray) -> np.ndarray:
    """An image (CHW, HWC or HW) as HxW or HxWx3 in [0, 1] for imshow."""
    a = np.asarray(image, dtype=np.float64)
    if a.ndim == 3 and a.shape[0] in (1, 3) and a.shape[-1] not in (1, 3):
        a = a.transpose(1, 2, 0)
    elif a.ndim == 3 and a.shape[0] in (1, 3) and a.shape[-1] in (1, 3) and a.shape[0] < a.shape[-1]:
        a = a.transpose(1, 2, 0)
    if a.ndim == 3 and a.shape[-1] == 1:
        a = a[..., 0]
    if a.ndim not in (2, 3):
        raise InvalidInputError(
            f"cannot show an image of shape {image.shape}; expected (C, H, W), (H, W, C) or (H, W).")
    lo, hi = float(np.nanmin(a)), float(np.nanmax(a))
    return (a - lo) / (hi - lo) if hi > lo else np.zeros_like(a)


def _saliency_map(grad: np.ndarray, like: np.ndarray) -> np.ndarray:
    """|gradient| reduced over the channel axis to (H, W)."""
    g = np.abs(np.asarray(grad, dtype=np.float64))
    shown = _display(like)
    if g.ndim == 3:
        axis = 0 if g.shape[1:] == shown.shape[:2] else -1
        g = g.max(axis=axis)
    return g


def _rgb(shown: np.ndarray) -> np.ndarray:
    return np.repeat(shown[..., None], 3, axis=-1) if shown.ndim == 2 else shown[..., :3]


def _mosaic(cells: Sequence[np.ndarray], columns: int, fill: float = 1.0) -> np.ndarray:
    """Tile equally sized (H, W[, 3]) cells into one array, one pixel of ``fill`` between them."""
    h, w = cells[0].shape[:2]
    rows = -(-len(cells) // columns)
    shape = (rows * (h + 1) - 1, columns * (w + 1) - 1) + cells[0].shape[2:]
    out = np.full(shape, fill, dtype=np.float64)
    for i, c in enumerate(cells):
        r, k = divmod(i, columns)
        out[r * (h + 1):r * (h + 1) + h, k * (w + 1):k * (w + 1) + w] = c
    return out


def plot_saliency(images: np.ndarray, grads: np.ndarray, path: str | os.PathLike, *, title: str | None = None,
                  columns: int = 8) -> Path:
    """Each image above its saliency map (|gradient|, max over channels) overlaid on it (paper, Fig. 4b,c).

    One colour scale for all the maps (0 to the largest |gradient| shown), with its colour bar.
    """
    from matplotlib import colormaps
    from matplotlib.cm import ScalarMappable
    from matplotlib.colors import Normalize

    images = np.asarray(images)
    grads = np.asarray(grads)
    if images.shape != grads.shape or images.shape[0] == 0:
        raise InvalidInputError(f"images and gradients must have the same non-empty shape, got {images.shape} "
                                f"and {grads.shape}.")
    n = images.shape[0]
    cols = min(columns, n)
    cmap = colormaps["inferno"]
    maps = [_saliency_map(grads[i], images[i]) for i in range(n)]
    vmax = max(float(m.max()) for m in maps) or 1.0
    tops, bottoms = [], []
    for i in range(n):
        base = _rgb(_display(images[i]))
        tops.append(base)
        bottoms.append(0.35 * base + 0.65 * cmap(maps[i] / vmax)[..., :3])
    cells = []
    for r0 in range(0, n, cols):  # image row, then saliency row
        chunk_t, chunk_b = tops[r0:r0 + cols], bottoms[r0:r0 + cols]
        pad = [np.ones_like(tops[0])] * (cols - len(chunk_t))
        cells += chunk_t + pad + chunk_b + pad
    mosaic = _mosaic(cells, cols)
    h, w = mosaic.shape[:2]
    fig_w = min(14.0, 1.4 * cols + 1.2)
    img_w = fig_w - 1.2
    fig = _new_figure(fig_w, img_w * h / w + 0.7)
    ax = fig.add_axes((0.2 / fig_w, 0.1 / (img_w * h / w + 0.7), img_w / fig_w, img_w * h / w / (img_w * h / w + 0.7)))
    ax.imshow(mosaic, interpolation="nearest")
    ax.axis("off")
    cax = fig.add_axes(((img_w + 0.35) / fig_w, 0.15, 0.12 / fig_w, 0.55))
    bar = fig.colorbar(ScalarMappable(norm=Normalize(0.0, vmax), cmap=cmap), cax=cax)
    bar.set_label("|∂ neuron / ∂ input|", fontsize=8)
    bar.ax.tick_params(labelsize=7)
    fig.suptitle(title or "saliency of a neuron w.r.t. the input (top: image, bottom: |gradient|)", fontsize=10)
    return save_figure(fig, path)


def plot_activation_grid(maps: np.ndarray, path: str | os.PathLike, *, images: np.ndarray | None = None,
                         title: str | None = None, columns: int = 8) -> Path:
    """Grid of one neuron's activation maps over several images, on one colour scale (paper, Fig. 5).

    With ``images``, each image is drawn directly above its map (rows of images alternate with rows of
    maps, the maps scaled to the images' size), so there is no gap between the two.
    """
    from matplotlib import colormaps
    from matplotlib.cm import ScalarMappable
    from matplotlib.colors import Normalize

    maps = np.asarray(maps, dtype=np.float64)
    if maps.ndim != 3 or maps.shape[0] == 0:
        raise InvalidInputError(f"maps must be a non-empty (n_images, H, W) array, got shape {maps.shape}.")
    if images is not None and len(images) != maps.shape[0]:
        raise InvalidInputError(f"got {len(images)} images for {maps.shape[0]} maps; they must match.")
    n = maps.shape[0]
    cols = min(columns, n)
    vmax = float(maps.max()) if maps.max() > 0 else 1.0
    vmin = min(0.0, float(maps.min()))
    cmap = colormaps["viridis"]
    norm = Normalize(vmin, vmax)
    if images is not None:
        shown = [_rgb(_display(im)) for im in images]
        h, w = shown[0].shape[:2]
        colored = [cmap(norm(_upsample(m, h, w)))[..., :3] for m in maps]
        cells = []
        for r0 in range(0, n, cols):  # image row, then map row
            pad = [np.ones((h, w, 3))] * (cols - len(shown[r0:r0 + cols]))
            cells += shown[r0:r0 + cols] + pad + colored[r0:r0 + cols] + pad
        mosaic = _mosaic(cells, cols)
    else:
        colored = [cmap(norm(m))[..., :3] for m in maps]
        mosaic = _mosaic(colored, cols)
    mh, mw = mosaic.shape[:2]
    fig_w = min(14.0, 1.4 * cols + 1.2)
    img_w = fig_w - 1.2
    img_h = img_w * mh / mw
    fig = _new_figure(fig_w, img_h + 0.7)
    ax = fig.add_axes((0.2 / fig_w, 0.1 / (img_h + 0.7), img_w / fig_w, img_h / (img_h + 0.7)))
    ax.imshow(mosaic, interpolation="nearest")
    ax.axis("off")
    cax = fig.add_axes(((img_w + 0.35) / fig_w, 0.15, 0.12 / fig_w, 0.55))
    bar = fig.colorbar(ScalarMappable(norm=norm, cmap=cmap), cax=cax)
    bar.set_label("activation", fontsize=8)
    bar.ax.tick_params(labelsize=7)
    fig.suptitle(title or "activation maps", fontsize=10)
    return save_figure(fig, path)


def _upsample(m: np.ndarray, h: int, w: int) -> np.ndarray:
    """A map resized to (h, w) by repeating its cells (nearest neighbour), so it lines up with its image."""
    m = np.asarray(m, dtype=np.float64)
    ys = np.minimum((np.arange(h) * m.shape[0]) // h, m.shape[0] - 1)
    xs = np.minimum((np.arange(w) * m.shape[1]) // w, m.shape[1] - 1)
    return m[np.ix_(ys, xs)]


# -- Fig. 4a: clustermap ----------------------------------------------------------------------------------
def plot_dendrogram(comparison: Comparison, path: str | os.PathLike, *, title: str | None = None) -> Path:
    """Dendrogram of the Ward clustering of the class graphs (cosine distance on bag-of-nodes vectors)."""
    from scipy.cluster.hierarchy import dendrogram

    fig = _new_figure(max(5.0, 0.55 * len(comparison.labels) + 2), 3.6)
    ax = fig.add_subplot(1, 1, 1)
    dendrogram(comparison.linkage, labels=list(comparison.labels), ax=ax, leaf_rotation=90, color_threshold=0,
               above_threshold_color=_NODE)
    ax.set_ylabel("Ward distance (L2-normalised)")
    ax.set_title(title or "Ward clustering of the class graphs", fontsize=10)
    ax.spines[["top", "right"]].set_visible(False)
    return save_figure(fig, path)


def plot_clustermap(comparison: Comparison, path: str | os.PathLike, *, kind: str = "similarity",
                    title: str | None = None) -> Path:
    """Clustermap (paper, Fig. 4a): a heat map with the Ward dendrograms on its sides.

    ``kind="similarity"``: the class x class cosine similarity of the bag-of-nodes vectors, both axes in
    dendrogram order. ``kind="nodes"``: the class x neuron bag-of-nodes matrix, classes in dendrogram
    order (left) and neurons clustered the same way (top).
    """
    from scipy.cluster.hierarchy import dendrogram, linkage

    from ssa.analysis.compare import normalise_rows

    if kind not in ("similarity", "nodes"):
        raise InvalidInputError(f"clustermap kind must be 'similarity' or 'nodes', got {kind!r}.")
    labels = list(comparison.labels)
    G = len(labels)
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
    fig = _new_figure(width, max(4.5, 0.42 * G + 2.2) + (1.2 if kind == "nodes" and labelled else 0.0))
    gs = fig.add_gridspec(2, 4, width_ratios=[1.2, 6, 1.1 if kind == "similarity" else 0.6, 0.25],
                          height_ratios=[1.2, max(3.0, 0.42 * G)],
                          wspace=0.03, hspace=0.03)
    ax_left = fig.add_subplot(gs[1, 0])
    left = dendrogram(comparison.linkage, orientation="left", ax=ax_left, no_labels=True, color_threshold=0,
                      above_threshold_color=_NODE)
    row_order = list(left["leaves"])  # scipy draws the first leaf at the bottom: flip, rows read top-down
    ax_left.invert_yaxis()
    ax_left.axis("off")
    ax_top = fig.add_subplot(gs[0, 1])
    if col_link is not None:
        top = dendrogram(col_link, ax=ax_top, no_labels=True, color_threshold=0, above_threshold_color=_NODE)
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
    return save_figure(fig, path)


# -- all figures of one class graph --------------------------------------------------------------------------
def _safe(name: str) -> str:
    return "".join(c if c.isalnum() or c in "._-" else "_" for c in name)


def _json_attr(graph: nx.DiGraph, key: str) -> dict[str, Any]:
    value = graph.graph.get(key)
    if not value:
        return {}
    if isinstance(value, Mapping):
        return dict(value)
    try:
        out = json.loads(value)
    except (TypeError, ValueError):
        return {}
    return out if isinstance(out, dict) else {}


def _top_node(graph: nx.DiGraph, nodes: Sequence[str]) -> str:
    return sorted(nodes, key=lambda n: (-float(graph.nodes[n].get("frequency", 0)),
                                        -float(graph.nodes[n].get("mean_relevance", 0.0)),
                                        int(graph.nodes[n].get("neuron", 0))))[0]


def default_map_neuron(graph: nx.DiGraph, network: Network) -> tuple[str, int] | None:
    """The neuron whose saliency and activation maps are drawn by default: the most frequent neuron of the
    highest tap in the graph that has spatial maps (a conv tap); None when the graph has none."""
    taps = {t.name: t for t in network.taps}
    by_tap: dict[str, list[str]] = {}
    for n, d in graph.nodes(data=True):
        t = taps.get(d.get("tap"))
        if t is not None and len(t.shape) >= 2 and t.kind != "input":
            by_tap.setdefault(t.name, []).append(n)
    if not by_tap:
        return None
    tap = max(by_tap, key=lambda name: taps[name].order)
    node = _top_node(graph, by_tap[tap])
    return tap, int(graph.nodes[node]["neuron"])


def class_figures(network: Network, graph: nx.DiGraph, images: np.ndarray, out_dir: str | os.PathLike, *,
                  fmt: str = "png", shared: Collection[str] | None = None,
                  kept_by: Mapping[str, int] | None = None, n_graphs: int | None = None, steps: str = "all",
                  neuron: tuple[str, int] | None = None, n_images: int = 8, batch_size: int = 32
                  ) -> list[tuple[str, str, Path]]:
    """Draw every figure of one class graph into ``out_dir``; returns ``(kind, caption, path)`` triples.

    * ``graph``: the layered dependency graph (Fig. 3), coloured by ``kept_by`` (how many of ``n_graphs``
      class graphs keep each neuron; ``shared``: the older set form) or else by frequency;
    * ``frequency`` and ``relevance``: outlier frequency with a power-law fit (Fig. 2a) and the relevance
      rows across images (Fig. 2b) of one upper neuron: the class neuron (``steps="class"``) or the most
      frequent neuron of every tap that has a step below it (``steps="all"``); with ``neuron``, that one;
    * ``saliency`` and ``activations``: of ``neuron``, or of :func:`default_map_neuron`, on the first
      ``n_images`` images (Fig. 4b,c and Fig. 5).

    ``network`` must be prepared; ``images`` are the class's images. Rule and selector come from the
    graph's attributes, so the figures show what the traversal saw.
    """
    if fmt not in FORMATS:
        raise InvalidInputError(f"figure format must be 'png' or 'svg', got {fmt!r}.")
    if steps not in ("class", "all"):
        raise InvalidInputError(f"steps must be 'class' or 'all', got {steps!r}.")
    out = Path(out_dir)
    target = graph.graph.get("target")
    rule = str(graph.graph.get("rule", "gradient"))
    rule_params = _json_attr(graph, "rule_params")
    selector = str(graph.graph.get("selector", "tukey"))
    selector_params = _json_attr(graph, "selector_params")
    taps = {t.name: t for t in network.taps}
    missing = sorted({d.get("tap") for _, d in graph.nodes(data=True)} - set(taps))
    if missing:
        raise InvalidInputError(f"the graph has taps the model does not ({', '.join(map(str, missing))}); "
                                "pass the model (and --taps) the graph was made with.")
    made: list[tuple[str, str, Path]] = []
    made.append(("graph", f"dependency graph of class {target}",
                 plot_graph(graph, out / f"graph.{fmt}", shared=shared, kept_by=kept_by, n_graphs=n_graphs)))
    uppers: list[tuple[str, int]] = []
    if neuron is not None:
        uppers = [neuron]
    else:
        by_tap: dict[str, list[str]] = {}
        for n, d in graph.nodes(data=True):
            if graph.out_degree(n) > 0 or d.get("tap") == "logits":
                by_tap.setdefault(d["tap"], []).append(n)
        for tap in sorted(by_tap, key=lambda t: -taps[t].order):
            node = _top_node(graph, by_tap[tap])
            uppers.append((tap, int(graph.nodes[node]["neuron"])))
            if steps == "class":
                break
    for tap, k in uppers:
        if not taps[tap].parents:
            continue
        parent, omega = relevance_rows(network, images, tap, k, rule=rule, rule_params=rule_params,
                                       batch_size=max(batch_size, 128))  # one neuron: big batches are cheap
        counts, selected = outlier_counts(omega, selector, selector_params)
        stem = f"{_safe(tap)}-{k}"
        label = f"{tap}:{k} -> {parent}"
        made.append(("frequency", f"outlier frequency of {parent} neurons for {tap}:{k} over {len(images)} images",
                     plot_frequency(counts, out / f"frequency-{stem}.{fmt}", n_images=len(images),
                                    title=f"outlier frequency, {label}")))
        made.append(("relevance", f"relevance rows ω of {tap}:{k} over {parent}, one row per image (dots: outliers)",
                     plot_relevance_heatmap(omega, out / f"relevance-{stem}.{fmt}", selected=selected,
                                            title=f"relevance rows, {label}")))
    map_neuron = (neuron if neuron is not None and len(taps[neuron[0]].shape) >= 2
                  else default_map_neuron(graph, network))
    if map_neuron is not None and hasattr(network, "graph_module"):
        tap, k = map_neuron
        few = images[:n_images]
        stem = f"{_safe(tap)}-{k}"
        made.append(("saliency", f"saliency of {tap}:{k} w.r.t. the input image",
                     plot_saliency(few, saliency(network, few, tap, k), out / f"saliency-{stem}.{fmt}",
                                   title=f"saliency of {tap}:{k} (top: image, bottom: |gradient|)")))
        made.append(("activations", f"activation maps of {tap}:{k}",
                     plot_activation_grid(activation_maps(network, few, tap, k), out / f"activations-{stem}.{fmt}",
                                          images=few, title=f"activation maps of {tap}:{k}")))
    return made
