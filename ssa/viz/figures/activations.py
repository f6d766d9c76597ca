"""Paper, Fig. 5: one neuron's activation maps over several images, each below its image."""

from __future__ import annotations

import numpy as np
from matplotlib import colormaps
from matplotlib.cm import ScalarMappable
from matplotlib.colors import Normalize
from matplotlib.figure import Figure

from ssa.core.capabilities import SupportsInputMaps, unsupported
from ssa.core.interfaces import Network
from ssa.errors import InvalidInputError

from .common import display_image, mosaic, new_figure, rgb, upsample

__all__ = ["activation_maps", "plot_activation_grid"]


def activation_maps(network: Network, images: np.ndarray, tap: str, neuron: int) -> np.ndarray:
    """The activation map of one channel of a conv tap on each image: shape (n_images, H, W) (a 1-D map is
    one row, (n_images, 1, L); a token tap's map is its (g, g) patch grid, see ``docs/viz.md``).

    ``network`` must be prepared and support :class:`~ssa.core.capabilities.SupportsInputMaps`.
    """
    if not isinstance(network, SupportsInputMaps):
        raise unsupported(network, SupportsInputMaps, "the activation-map figure")
    v = network.activation_maps(images, tap, [int(neuron)])[:, 0]
    if v.ndim == 2:  # a 1-D sequence per channel: show it as one row
        return v[:, None, :]
    return v.reshape(v.shape[0], v.shape[1], -1)


def plot_activation_grid(maps: np.ndarray, *, images: np.ndarray | None = None, title: str | None = None,
                         columns: int = 8) -> Figure:
    """Grid of one neuron's activation maps over several images, on one colour scale (paper, Fig. 5).

    With ``images``, each image is drawn directly above its map (rows of images alternate with rows of
    maps, the maps scaled to the images' size), so there is no gap between the two.
    """
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
        shown = [rgb(display_image(im)) for im in images]
        h, w = shown[0].shape[:2]
        colored = [cmap(norm(upsample(m, h, w)))[..., :3] for m in maps]
        cells = []
        for r0 in range(0, n, cols):  # image row, then map row
            pad = [np.ones((h, w, 3))] * (cols - len(shown[r0:r0 + cols]))
            cells += shown[r0:r0 + cols] + pad + colored[r0:r0 + cols] + pad
        tiled = mosaic(cells, cols)
    else:
        colored = [cmap(norm(m))[..., :3] for m in maps]
        tiled = mosaic(colored, cols)
    mh, mw = tiled.shape[:2]
    fig_w = min(14.0, 1.4 * cols + 1.2)
    img_w = fig_w - 1.2
    img_h = img_w * mh / mw
    fig = new_figure(fig_w, img_h + 0.7)
    ax = fig.add_axes((0.2 / fig_w, 0.1 / (img_h + 0.7), img_w / fig_w, img_h / (img_h + 0.7)))
    ax.imshow(tiled, interpolation="nearest")
    ax.axis("off")
    cax = fig.add_axes(((img_w + 0.35) / fig_w, 0.15, 0.12 / fig_w, 0.55))
    bar = fig.colorbar(ScalarMappable(norm=norm, cmap=cmap), cax=cax)
    bar.set_label("activation", fontsize=8)
    bar.ax.tick_params(labelsize=7)
    fig.suptitle(title or "activation maps", fontsize=10)
    return fig
