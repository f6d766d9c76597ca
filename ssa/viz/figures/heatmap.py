"""Paper, Fig. 2b: the relevance rows omega[n, i, :] of one upper neuron across images, as a heat map."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
from matplotlib.figure import Figure

from ssa.core.checks import call_selector
from ssa.core.interfaces import Network
from ssa.errors import InvalidInputError
from ssa.plugins import make_rule, make_selector

from .common import new_figure

__all__ = ["relevance_rows", "outlier_counts", "plot_relevance_heatmap"]


def relevance_rows(network: Network, images: np.ndarray, upper: str, neuron: int, *,
                   rule: Any = "gradient", rule_params: Mapping[str, Any] | None = None,
                   parent: str | None = None, batch_size: int = 32) -> tuple[str, np.ndarray]:
    """omega[n, i, :] of one upper neuron over every image: ``(parent, array (n_images, K_parent))``.

    ``network`` must be prepared; ``parent`` defaults to the upper tap's first parent. This is the
    traversal's own step (``Network.step_relevance``, by autograd), so the rows are what it saw.
    """
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
    sel_obj = make_selector(selector, **dict(selector_params or {})) if isinstance(selector, str) else selector
    selected = call_selector(sel_obj, np.asarray(omega, dtype=np.float64))
    return (selected > 0).sum(axis=0), selected


def plot_relevance_heatmap(omega: np.ndarray, *, selected: np.ndarray | None = None, title: str | None = None,
                           max_columns: int = 128, max_rows: int = 200) -> Figure:
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
    fig = new_figure(min(12.0, 3.0 + 0.09 * cols.size), min(8.0, 2.0 + 0.035 * rows.size))
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
    return fig
