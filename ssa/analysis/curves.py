"""Faithfulness over circuit size: sweep the branching factor (and the selector's main parameter), score each
graph's sufficiency beside random sets of the same size, and integrate (``ssa evaluate --curves``).

MIB (Mueller et al., ICML 2025) scores a method by the area under its faithfulness curve over circuit size, so
that no single threshold decides. Here:

* a curve belongs to one class, rule, selector and ablation; its points are the graphs built (on the build
  images) with every branching factor of :data:`BRANCHINGS` (the selector's parameters as given), and with
  every value of the main parameter the selector declares (:attr:`ssa.core.interfaces.Selector.sweep`) at
  the table's branching factor;
* a point's **size** is the share of the neurons in scope that the graph keeps (all its nodes, every tap
  below the logits down to ``stop_at``); its **sufficiency** is the ``recovered`` share of the class logit
  with only the graph's neurons kept (:mod:`ssa.analysis.ablation`: 1 = the full model, 0 = every neuron in
  scope ablated), beside random sets of the same size per tap (the random-set curve);
* **CPR-like area**: the trapezoid area under sufficiency over size in [0, 1], the curve closed by the
  empty circuit (0, 0) and the full model (1, 1) (higher is better); **CMD-like area**: the area under
  |1 - sufficiency|, the distance to the full model (lower is better); each with the 95 % percentile
  interval of the areas over the bootstrap replicates of the images (the same replicates at every point);
* everything re-uses the session's one-pass statistics (a graph of any b or parameter is a traversal of
  the same statistics) and one :class:`~ssa.analysis.ablation.Scorer` per class and ablation (its effects
  are cached: graphs that repeat across sizes are scored once).
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from ssa.analysis._common import as_graph, read_records
from ssa.analysis.ablation import Interval, Scorer, interval
from ssa.analysis.faithfulness import measure
from ssa.core.interfaces import Selector
from ssa.errors import InvalidInputError
from ssa.plugins import make_selector
from ssa.session import Session

__all__ = ["BRANCHINGS", "CurvePoint", "Areas", "sweep", "areas", "CURVE_COLUMNS",
           "curve_records", "read_curves"]

BRANCHINGS = (1, 2, 3, 4, 6, 8)
@dataclass(frozen=True)
class CurvePoint:
    """One graph of a curve: how it was built, its size and its sufficiency (with the random sets')."""

    target: int
    rule: str
    selector: str
    ablation: str
    parameter: str
    value: float
    n_kept: int
    n_neurons: int
    sufficiency: Interval
    sufficiency_random: Interval
    accuracy: Interval
    replicates: np.ndarray
    random_replicates: np.ndarray

    @property
    def size(self) -> float:
        return self.n_kept / self.n_neurons if self.n_neurons else 0.0


@dataclass(frozen=True)
class Areas:
    """The CPR-like and CMD-like areas of a curve and of its random-set curve (see the module docstring)."""

    cpr: Interval
    cpr_random: Interval
    cmd: Interval
    cmd_random: Interval


CURVE_COLUMNS = ("target", "rule", "selector", "ablation", "parameter", "value", "n_kept", "n_neurons", "size",
                 "sufficiency", "sufficiency_low", "sufficiency_high", "sufficiency_random", "sufficiency_random_low",
                 "sufficiency_random_high", "accuracy", "accuracy_low", "accuracy_high")


def _settings(selector: str | Selector | None, params: Mapping[str, Any] | None, branching: int
              ) -> list[tuple[str, float, int, dict[str, Any]]]:
    """(parameter, value, b, selector parameters) of every point."""
    base = dict(params or {})
    out = [("b", float(b), b, base) for b in BRANCHINGS]
    declared = None if selector is None else make_selector(selector, **base).sweep  # the selector's own
    if declared is not None:
        pname, values = declared
        if pname not in base:  # a parameter the caller fixed is not swept
            out += [(pname, float(v), branching, {**base, pname: v}) for v in values]
    return out


def sweep(session: Session, target: int, scorers: Mapping[str, Scorer], scope: Sequence[str], *,
          selector: str | Selector | None, selector_params: Mapping[str, Any] | None, branching: int,
          stop_at: str | None, build: np.ndarray, draws: int, seed: int) -> list[CurvePoint]:
    """The points of the curves of class ``target`` with the session's rule and ``selector``, one curve per
    ablation (``scorers``: ablation -> the class's scorer), each point's graph built on ``build``."""
    points = []
    n_neurons = sum(scorers[next(iter(scorers))].n_neurons[t] for t in scope)
    for pname, value, b, params in _settings(selector, selector_params, branching):
        result = session.analyse(target, b, selector=selector, selector_params=params, stop_at=stop_at,
                                 indices=build)
        graph = as_graph(result.graph)
        for ablation, scorer in scorers.items():
            _, total = measure(scorer, graph, scope, draws=draws, seed=seed, per_tap=False, necessity=False)
            points.append(CurvePoint(
                target=int(target), rule=session.rule.name, selector=result.selector, ablation=ablation,
                parameter=pname, value=value, n_kept=total.n_kept, n_neurons=n_neurons,
                sufficiency=total.keep_only.recovered, sufficiency_random=total.keep_random.recovered,
                accuracy=total.keep_only.accuracy, replicates=total.keep_only.recovered_replicates,
                random_replicates=total.keep_random.recovered_replicates))
    return points


def _area(sizes: np.ndarray, values: np.ndarray) -> np.ndarray:
    """Trapezoid areas over [0, 1] of curves ``values`` (points x replicates) at ``sizes``, closed by (0, 0)
    and (1, 1); returns (cpr, cmd) per column."""
    order = np.argsort(sizes, kind="stable")
    x = np.concatenate([[0.0], sizes[order], [1.0]])
    cols = values.shape[1]
    y = np.concatenate([np.zeros((1, cols)), values[order], np.ones((1, cols))])
    dx = np.diff(x)[:, None]
    cpr = (dx * (y[1:] + y[:-1]) / 2).sum(axis=0)
    d = np.abs(1.0 - y)
    cmd = (dx * (d[1:] + d[:-1]) / 2).sum(axis=0)
    return np.stack([cpr, cmd])


def areas(points: Sequence[CurvePoint]) -> Areas:
    """The areas of one curve (points of one class, rule, selector and ablation)."""
    sizes = np.array([p.size for p in points])
    out = []
    for value_of, reps_of in ((lambda p: p.sufficiency.value, lambda p: p.replicates),
                              (lambda p: p.sufficiency_random.value, lambda p: p.random_replicates)):
        point = _area(sizes, np.array([[value_of(p)] for p in points]))[:, 0]
        reps = [reps_of(p) for p in points]
        n = min((len(r) for r in reps), default=0)
        rep = _area(sizes, np.array([r[:n] for r in reps])) if n else np.full((2, 1), math.nan)
        out.append((interval(float(point[0]), rep[0]), interval(float(point[1]), rep[1])))
    (cpr, cmd), (cpr_r, cmd_r) = out
    return Areas(cpr=cpr, cpr_random=cpr_r, cmd=cmd, cmd_random=cmd_r)


def curve_records(points: Sequence[CurvePoint]) -> list[dict[str, Any]]:
    """One CSV record per point (:data:`CURVE_COLUMNS`)."""
    records = []
    for p in points:
        rec: dict[str, Any] = {"target": p.target, "rule": p.rule, "selector": p.selector, "ablation": p.ablation,
                               "parameter": p.parameter, "value": p.value, "n_kept": p.n_kept,
                               "n_neurons": p.n_neurons, "size": p.size}
        for name, iv in (("sufficiency", p.sufficiency), ("sufficiency_random", p.sufficiency_random),
                         ("accuracy", p.accuracy)):
            rec.update({name: iv.value, f"{name}_low": iv.low, f"{name}_high": iv.high})
        records.append(rec)
    return records


def read_curves(path: str | os.PathLike, flag: str = "--curves") -> list[CurvePoint]:
    """The points of a CSV written by ``ssa evaluate --curves-out`` (no bootstrap replicates: areas from them
    have NaN intervals)."""
    points = []
    def iv(rec: Mapping[str, str], name: str) -> Interval:
        return Interval(float(rec[name]), float(rec[f"{name}_low"]), float(rec[f"{name}_high"]))

    for rec in read_records(path, CURVE_COLUMNS, flag, "ssa evaluate --curves-out"):
        try:
            points.append(CurvePoint(
                target=int(rec["target"]), rule=rec["rule"], selector=rec["selector"], ablation=rec["ablation"],
                parameter=rec["parameter"], value=float(rec["value"]), n_kept=int(rec["n_kept"]),
                n_neurons=int(rec["n_neurons"]), sufficiency=iv(rec, "sufficiency"),
                sufficiency_random=iv(rec, "sufficiency_random"), accuracy=iv(rec, "accuracy"), replicates=np.zeros(0),
                random_replicates=np.zeros(0)))
        except ValueError as exc:
            raise InvalidInputError(f"{flag} {str(path)!r} has a value that is not a number ({exc}); pass a CSV "
                                    "written by `ssa evaluate --curves-out`.") from None
    return points
