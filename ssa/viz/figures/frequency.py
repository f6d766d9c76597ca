"""Paper, Fig. 2a: how often each lower neuron is an outlier for one upper neuron, with a power-law fit."""

from __future__ import annotations

import numpy as np
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from ssa.core.traversal import StepRecord
from ssa.errors import InvalidInputError

from .common import NODE, SHARED, new_figure

__all__ = ["step_counts", "power_law_fit", "plot_frequency"]


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


def plot_frequency(counts: np.ndarray, *, n_images: int | None = None, title: str | None = None,
                   annotate: int = 8) -> Figure:
    """Bar plot of the outlier frequency of each lower neuron, most frequent first, with a power-law fit
    (paper, Fig. 2a). Only neurons that are outliers in at least one image are drawn.

    The count axis is logarithmic and spans the bars, the number of images and the whole fit: a power law
    fitted in log-log space starts far above the largest count when the top ranks are tied (every image),
    so on a linear axis it would leave the axes or squash the bars. The legend sits above the axes (it never
    hides bars); the dotted line marks the number of images; ranks are whole numbers.
    """
    counts = np.asarray(counts).ravel()
    order = np.argsort(-counts, kind="stable")
    order = order[counts[order] > 0]
    fig = new_figure(7.0, 3.6)
    ax = fig.add_subplot(1, 1, 1)
    ranks = np.arange(1, order.size + 1)
    xs = ys = np.empty(0)
    alpha = c = r2 = float("nan")
    if order.size:
        alpha, c, r2 = power_law_fit(counts)
        if alpha == alpha:
            xs = np.linspace(1, order.size, 200)
            ys = c * xs ** -alpha
    top = max(float(n_images or 0), float(counts.max()) if counts.size else 0.0, float(ys.max(initial=0.0)), 1.0)
    bottom = min(0.7, float(ys.min(initial=1.0)) * 0.8)
    ax.set_yscale("log")
    ax.set_ylim(bottom, top * 1.5)  # room above the tallest bar for its label
    if order.size:
        ax.bar(ranks, counts[order], width=0.85, color=NODE, label="outlier frequency")
        if ys.size:
            ax.plot(xs, ys, color=SHARED, lw=2, label=f"power law {c:.3g}·rank^−{alpha:.2f} (R² = {r2:.2f})")
        for r, k in zip(ranks[:annotate], order[:annotate], strict=False):
            ax.annotate(str(int(k)), (r, counts[k]), ha="center", va="bottom", fontsize=7, xytext=(0, 1),
                        textcoords="offset points")
    else:
        ax.text(0.5, 0.5, "no outliers in any image", ha="center", va="center", transform=ax.transAxes)
    if n_images:
        ax.axhline(n_images, color="#777777", lw=1.0, ls=":", label=f"number of images ({int(n_images)})")
    ax.set_xlim(0.4, max(order.size, 1) + 0.6)
    if order.size <= 20:
        ax.set_xticks(np.arange(1, max(order.size, 1) + 1))
    else:
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel(f"lower neurons ranked by frequency ({order.size} of {counts.size} are outliers at least once; "
                  "labels: neuron index)", fontsize=9)
    ax.set_ylabel("images where it is an outlier (log)")
    ax.set_title(title or "outlier frequency", fontsize=10, pad=24)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(loc="lower center", bbox_to_anchor=(0.5, 1.0), ncol=3, fontsize=8, frameon=False,
                  borderaxespad=0.2)
    ax.spines[["top", "right"]].set_visible(False)
    return fig
