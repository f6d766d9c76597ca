"""The report's faithfulness section, from the files ``ssa evaluate`` writes (``--out``, ``--curves-out``).

:func:`faithfulness_section` turns the table's rows (:func:`ssa.analysis.strategies.read_table`) and the curves'
points (:func:`ssa.analysis.curves.read_curves`) into plain values for the template: a summary table (the
mean over classes, or the one class), the curves of every rule, selector and ablation (mean over classes), and
per class its curves and its necessity and sufficiency bars, graph beside random sets, with the 95 % intervals.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from ssa.analysis.curves import CurvePoint
from ssa.analysis.strategies import EvaluationRow
from ssa.errors import InvalidInputError
from ssa.viz.figures.curves import plot_curves, plot_faithfulness_bars

__all__ = ["faithfulness_section"]

_SUMMARY = ("target", "rule", "selector", "ablation", "split", "necessity graph", "random", "sufficiency graph",
            "random", "CPR graph", "random", "CMD graph", "random")


def _summary_row(r: EvaluationRow) -> list[str]:
    m = r.metrics
    split = f"{r.n_build:.0f}/{r.n_scored:.0f}" if r.split > 0 else f"all {r.n_scored:.0f}"
    return [r.target, r.rule, r.selector, r.ablation, split,
            *(m[k].text() for k in ("necessity", "necessity_random", "sufficiency", "sufficiency_random", "cpr",
                                    "cpr_random", "cmd", "cmd_random"))]


def faithfulness_section(rows: Sequence[EvaluationRow], points: Sequence[CurvePoint], fmt: str,
                         embed: Any, table: Any) -> dict[str, Any]:
    """The section's values; ``embed(fig, caption, fmt, kind)`` and ``table(header, rows)`` are the report's."""
    if not rows and not points:
        raise InvalidInputError("the faithfulness section needs an `ssa evaluate --out` table or its "
                                "`--curves-out` points; both files are empty.")
    mean = [r for r in rows if r.target == "mean"]
    summary = table(_SUMMARY, [_summary_row(r) for r in (mean or rows)])
    figures = []
    if points:
        figures.append(embed(plot_curves(points, title="sufficiency over circuit size, mean over classes"),
                             "Sufficiency (share of the class logit kept with only the graph's neurons; 1 = the full "
                             "model, 0 = every neuron below the logits ablated) over the share of neurons the graph "
                             "keeps, for every b and selector parameter swept; solid: the graphs, dashed: random "
                             "neuron sets of the same size per tap. Scored on held-out images.", fmt, "curves"))
    classes = []
    targets = sorted({r.target for r in rows if r.target != "mean"} | {str(p.target) for p in points},
                     key=lambda t: (len(t), t))
    for t in targets:
        figs = []
        class_points = [p for p in points if str(p.target) == t]
        if class_points:
            figs.append(embed(plot_curves(class_points, title=f"class {t}: sufficiency over circuit size"),
                              f"Class {t}: sufficiency over circuit size, with 95 % bootstrap intervals.", fmt,
                              "curves"))
        class_rows = [r for r in rows if r.target == t]
        if class_rows:
            figs.append(embed(plot_faithfulness_bars(class_rows, title=f"class {t}: necessity and sufficiency"),
                              f"Class {t}: necessity (class-logit drop with the graph's neurons ablated) and "
                              "sufficiency (share of the class logit with only the graph's neurons kept), graph "
                              "beside random sets of the same size per tap, at the table's b, 95 % intervals.",
                              fmt, "bars"))
        classes.append({"target": t, "figures": figs})
    return {"summary": summary, "figures": figures, "classes": classes,
            "with_means": bool(mean)}
