"""Paper, Fig. 4b,c: the saliency of a neuron w.r.t. the input image (through the whole network)."""

from __future__ import annotations

import numpy as np
from matplotlib import colormaps
from matplotlib.cm import ScalarMappable
from matplotlib.colors import Normalize
from matplotlib.figure import Figure

from ssa.core.capabilities import SupportsInputMaps, unsupported
from ssa.core.interfaces import Network
from ssa.errors import InvalidInputError

from .common import display_image, mosaic, new_figure, rgb, saliency_map

__all__ = ["saliency", "plot_saliency"]


def saliency(network: Network, images: np.ndarray, tap: str, neuron: int) -> np.ndarray:
    """Gradient of one neuron's scalar (its value, or spatial mean) w.r.t. each input image, through the whole
    network (no cuts): the saliency of a feature map (paper, Fig. 4b,c). Same shape as ``images``.

    ``network`` must be prepared and support :class:`~ssa.core.capabilities.SupportsInputMaps`.
    """
    if not isinstance(network, SupportsInputMaps):
        raise unsupported(network, SupportsInputMaps, "the saliency figure")
    return network.saliency(images, tap, [int(neuron)])[:, 0]


def plot_saliency(images: np.ndarray, grads: np.ndarray, *, title: str | None = None, columns: int = 8) -> Figure:
    """Each image above its saliency map (|gradient|, max over channels) overlaid on it (paper, Fig. 4b,c).

    One colour scale for all the maps (0 to the largest |gradient| shown), with its colour bar.
    """
    images = np.asarray(images)
    grads = np.asarray(grads)
    if images.shape != grads.shape or images.shape[0] == 0:
        raise InvalidInputError(f"images and gradients must have the same non-empty shape, got {images.shape} "
                                f"and {grads.shape}.")
    n = images.shape[0]
    cols = min(columns, n)
    cmap = colormaps["inferno"]
    maps = [saliency_map(grads[i], images[i]) for i in range(n)]
    vmax = max(float(m.max()) for m in maps) or 1.0
    tops, bottoms = [], []
    for i in range(n):
        base = rgb(display_image(images[i]))
        tops.append(base)
        bottoms.append(0.35 * base + 0.65 * cmap(maps[i] / vmax)[..., :3])
    cells = []
    for r0 in range(0, n, cols):  # image row, then saliency row
        chunk_t, chunk_b = tops[r0:r0 + cols], bottoms[r0:r0 + cols]
        pad = [np.ones_like(tops[0])] * (cols - len(chunk_t))
        cells += chunk_t + pad + chunk_b + pad
    tiled = mosaic(cells, cols)
    h, w = tiled.shape[:2]
    fig_w = min(14.0, 1.4 * cols + 1.2)
    img_w = fig_w - 1.2
    fig = new_figure(fig_w, img_w * h / w + 0.7)
    ax = fig.add_axes((0.2 / fig_w, 0.1 / (img_w * h / w + 0.7), img_w / fig_w, img_w * h / w / (img_w * h / w + 0.7)))
    ax.imshow(tiled, interpolation="nearest")
    ax.axis("off")
    cax = fig.add_axes(((img_w + 0.35) / fig_w, 0.15, 0.12 / fig_w, 0.55))
    bar = fig.colorbar(ScalarMappable(norm=Normalize(0.0, vmax), cmap=cmap), cax=cax)
    bar.set_label("|∂ neuron / ∂ input|", fontsize=8)
    bar.ax.tick_params(labelsize=7)
    fig.suptitle(title or "saliency of a neuron w.r.t. the input (top: image, bottom: |gradient|)", fontsize=10)
    return fig
