"""What every figure shares: the canvas, the colours, rendering to bytes, atomic files, image helpers.

Figures are :class:`matplotlib.figure.Figure` objects on matplotlib's Agg canvas, made without
pyplot (no global state: safe in notebooks, threads and servers). :func:`figure_bytes` renders
one in memory (the report embeds those bytes); :func:`save_figure` writes one to a file.
"""

from __future__ import annotations

import io
import os
from collections.abc import Sequence
from pathlib import Path

import networkx as nx
import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from ssa.core.graph import DependencyGraph
from ssa.errors import InvalidInputError
from ssa.io.atomic import atomic_write_bytes

__all__ = ["FORMATS", "DPI", "SHARED", "NODE", "CLASS", "INHIB", "new_figure", "figure_bytes", "figure_format",
           "save_figure", "parse_node", "dependency_graph", "display_image", "rgb", "mosaic", "upsample",
           "saliency_map"]

FORMATS = ("png", "svg")
DPI = 110
SHARED = "#e6862e"  # orange: shared, fits
NODE = "#4c78a8"  # blue: bars, dendrograms
CLASS = "#333333"  # the class neuron
INHIB = "#c43c39"  # inhibitory edges


# -- figures and files ------------------------------------------------------------------------------
def new_figure(width: float, height: float) -> Figure:
    """An empty figure of ``width`` x ``height`` inches on its own Agg canvas (no pyplot)."""
    fig = Figure(figsize=(width, height), dpi=DPI)
    FigureCanvasAgg(fig)
    return fig


def figure_format(path: str | os.PathLike) -> str:
    """``"png"`` or ``"svg"`` from a file name's suffix; anything else is refused."""
    suffix = Path(path).suffix.lower().lstrip(".")
    if suffix not in FORMATS:
        raise InvalidInputError(f"figure file must end in .png or .svg, got {Path(path).name!r}; rename it.")
    return suffix


def figure_bytes(fig: Figure, fmt: str = "png") -> bytes:
    """``fig`` rendered as PNG or SVG bytes, in memory (an SVG carries no date, so it is reproducible)."""
    if fmt not in FORMATS:
        raise InvalidInputError(f"figure format must be 'png' or 'svg', got {fmt!r}.")
    buf = io.BytesIO()
    fig.savefig(buf, format=fmt, dpi=DPI, bbox_inches="tight", metadata={"Date": None} if fmt == "svg" else None)
    return buf.getvalue()


def save_figure(fig: Figure, path: str | os.PathLike) -> Path:
    """Write ``fig`` to ``path`` (PNG or SVG, by the suffix) atomically; returns the path."""
    path = Path(path)
    atomic_write_bytes(path, figure_bytes(fig, figure_format(path)))
    return path


# -- graphs ----------------------------------------------------------------------------------------------
def parse_node(text: str) -> tuple[str, int]:
    """``"features.6:5"`` -> ``("features.6", 5)`` (a graph node id given by a user)."""
    tap, sep, neuron = str(text).rpartition(":")
    if not sep or not tap or not neuron.strip().isdigit():
        raise InvalidInputError(
            f"a neuron must look like TAP:INDEX (a graph node id, e.g. features.6:5), got {text!r}.")
    return tap, int(neuron)


def dependency_graph(graph: nx.DiGraph) -> DependencyGraph:
    """``graph`` itself when it is a :class:`DependencyGraph`, else a converted copy."""
    return graph if isinstance(graph, DependencyGraph) else DependencyGraph.from_networkx(graph)


# -- images ------------------------------------------------------------------------------------------------
def display_image(image: np.ndarray) -> np.ndarray:
    """An image (CHW, HWC or HW) as HxW or HxWx3 in [0, 1] for display (min-max scaled)."""
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


def rgb(shown: np.ndarray) -> np.ndarray:
    """A displayed image (:func:`display_image`) as H x W x 3."""
    return np.repeat(shown[..., None], 3, axis=-1) if shown.ndim == 2 else shown[..., :3]


def saliency_map(grad: np.ndarray, like: np.ndarray) -> np.ndarray:
    """|gradient| of one image reduced over the channel axis (max) to the image's (H, W)."""
    g = np.abs(np.asarray(grad, dtype=np.float64))
    shown = display_image(like)
    if g.ndim == 3:
        axis = 0 if g.shape[1:] == shown.shape[:2] else -1
        g = g.max(axis=axis)
    return g


def mosaic(cells: Sequence[np.ndarray], columns: int, fill: float = 1.0) -> np.ndarray:
    """Tile equally sized (H, W[, 3]) cells into one array, one pixel of ``fill`` between them."""
    h, w = cells[0].shape[:2]
    rows = -(-len(cells) // columns)
    shape = (rows * (h + 1) - 1, columns * (w + 1) - 1) + cells[0].shape[2:]
    out = np.full(shape, fill, dtype=np.float64)
    for i, c in enumerate(cells):
        r, k = divmod(i, columns)
        out[r * (h + 1):r * (h + 1) + h, k * (w + 1):k * (w + 1) + w] = c
    return out


def upsample(m: np.ndarray, h: int, w: int) -> np.ndarray:
    """A map resized to (h, w) by repeating its cells (nearest neighbour), so it lines up with its image."""
    m = np.asarray(m, dtype=np.float64)
    ys = np.minimum((np.arange(h) * m.shape[0]) // h, m.shape[0] - 1)
    xs = np.minimum((np.arange(w) * m.shape[1]) // w, m.shape[1] - 1)
    return m[np.ix_(ys, xs)]
