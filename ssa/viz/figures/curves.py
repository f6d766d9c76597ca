"""Faithfulness over circuit size (``ssa evaluate --curves``, the report's faithfulness section).

:func:`plot_curves` draws the sufficiency curves of :mod:`ssa.analysis.curves`: one panel per rule (rows) and
ablation (columns), one line per selector (solid: its graphs; dashed, same colour: random sets of the same
sizes). A point is the mean over the classes given of a sweep setting's size and sufficiency (one class: its
own points, with the 95 % intervals as error bars). :func:`plot_faithfulness_bars` draws one class's
necessity and sufficiency per selector beside the random sets', with their intervals.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
from matplotlib.figure import Figure

from .common import new_figure

__all__ = ["plot_curves", "plot_faithfulness_bars"]


def _series(points: Sequence[Any], random: bool) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """x (size), y (sufficiency) and the half-widths [low, high] of the mean over classes per sweep setting."""
    groups: dict[tuple[str, float], list[Any]] = {}
    for p in points:
        groups.setdefault((p.parameter, p.value), []).append(p)
    xs, ys, lo, hi = [], [], [], []
    for ps in groups.values():
        iv = [p.sufficiency_random if random else p.sufficiency for p in ps]
        xs.append(np.mean([p.size for p in ps]))
        ys.append(np.mean([i.value for i in iv]))
        lo.append(np.mean([i.low for i in iv]))
        hi.append(np.mean([i.high for i in iv]))
    order = np.argsort(xs, kind="stable")
    x, y = np.asarray(xs)[order], np.asarray(ys)[order]
    err = np.vstack([y - np.asarray(lo)[order], np.asarray(hi)[order] - y])
    return x, y, np.clip(np.nan_to_num(err), 0, None)


def plot_curves(points: Sequence[Any], title: str = "") -> Figure:
    """Sufficiency over circuit size, graphs against random sets (``points``: :class:`CurvePoint` objects)."""
    rules = sorted({p.rule for p in points})
    ablations = [a for a in ("zero", "mean", "resample") if any(p.ablation == a for p in points)]
    selectors = sorted({p.selector for p in points})
    one_class = len({p.target for p in points}) == 1
    fig = new_figure(4.0 * max(len(ablations), 1), 3.2 * max(len(rules), 1) + 0.4)
    axes = fig.subplots(max(len(rules), 1), max(len(ablations), 1), squeeze=False)
    colours = {s: f"C{i}" for i, s in enumerate(selectors)}
    for i, rule in enumerate(rules):
        for j, ablation in enumerate(ablations):
            ax = axes[i][j]
            for sel in selectors:
                ps = [p for p in points if (p.rule, p.ablation, p.selector) == (rule, ablation, sel)]
                if not ps:
                    continue
                for random, style in ((False, "-"), (True, "--")):
                    x, y, err = _series(ps, random)
                    ax.errorbar(x, y, yerr=err if one_class else None, fmt="o" + style, ms=3, lw=1.2,
                                color=colours[sel], alpha=0.5 if random else 1.0, capsize=2,
                                label=None if random else sel)
            ax.axhline(1.0, color="#999999", lw=0.6)
            ax.axhline(0.0, color="#999999", lw=0.6)
            ax.set_xlim(left=0)
            ax.set_title(f"{rule}, {ablation} ablation", fontsize=9)
            ax.set_xlabel("share of neurons kept", fontsize=8)
            ax.set_ylabel("sufficiency (share of class logit)", fontsize=8)
            ax.tick_params(labelsize=7)
    if selectors:
        axes[0][0].legend(fontsize=7, title="solid: graph, dashed: random", title_fontsize=7)
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return fig


def plot_faithfulness_bars(rows: Sequence[Any], title: str = "") -> Figure:
    """Necessity (class-logit drop) and sufficiency of one class's rows, graph beside random, with intervals."""
    labels = [f"{r.rule.replace('gradient_x_activation', 'gxa')}\n{r.selector}\n{r.ablation}" for r in rows]
    fig = new_figure(max(6.0, 0.55 * len(rows) + 2), 5.6)
    axes = fig.subplots(2, 1, squeeze=False)
    x = np.arange(len(rows))
    for ax, (name, ylabel) in zip(axes[:, 0], (("necessity", "class-logit drop, graph ablated"),
                                               ("sufficiency", "share of class logit, only graph kept")),
                                  strict=True):
        for k, (suffix, colour) in enumerate((("", "#4c78a8"), ("_random", "#bbbbbb"))):
            iv = [r.metrics[name + suffix] for r in rows]
            y = np.array([i.value for i in iv])
            err = np.clip(np.nan_to_num(np.vstack([y - [i.low for i in iv], np.array([i.high for i in iv]) - y])), 0,
                          None)
            ax.bar(x + (k - 0.5) * 0.38, y, 0.38, yerr=err, color=colour, capsize=2,
                   label="graph" if not suffix else "random, same size")
        ax.set_ylabel(ylabel, fontsize=8)
        ax.set_xticks(x)
        ax.set_xticklabels(labels, fontsize=6)
        ax.tick_params(axis="y", labelsize=7)
        ax.legend(fontsize=7)
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return fig
