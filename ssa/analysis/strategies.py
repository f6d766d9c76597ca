"""Which rule and selector? The comparison table of ``ssa evaluate``: faithfulness and stability of the
graphs of every rule x selector and class, and its CSV and text output.

Each row analyses one class with one rule (the :class:`ssa.Session`'s) and one selector, then
measures the graph's faithfulness (:mod:`ssa.analysis.faithfulness`) and stability
(:mod:`ssa.analysis.stability`). Rules are compared with one session per rule
(:meth:`ssa.Session.with_rule`: the model and images are loaded once, each rule computes its own
statistics once and every class, selector and bootstrap resample re-uses them).
"""

from __future__ import annotations

import csv
import io
import math
import os
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ssa.analysis._common import as_graph, class_images, read_records
from ssa.analysis.ablation import Interval, Scorer, check_ablation, draw_donors, interval
from ssa.analysis.curves import CURVE_COLUMNS, Areas, CurvePoint, areas, curve_records, sweep
from ssa.analysis.faithfulness import Faithfulness, faithfulness, make_scorer, scope_taps
from ssa.analysis.grouping import all_classes, parse_targets
from ssa.analysis.split import check_split, split_images
from ssa.analysis.stability import Stability, stability
from ssa.core.checks import check_int
from ssa.core.graph import DependencyGraph
from ssa.core.interfaces import Selector
from ssa.errors import InvalidInputError
from ssa.io.atomic import atomic_write_bytes
from ssa.plugins import make_selector, registry
from ssa.session import Session, check_target, n_classes

__all__ = ["EvaluationRow", "METRICS", "TABLE_COLUMNS", "LAYER_COLUMNS", "evaluate", "compare_strategies",
           "check_strategies", "class_split", "summarise", "format_table", "format_areas", "write_csv",
           "write_layers_csv", "write_curves_csv", "read_table"]


METRICS = (
    "necessity", "necessity_random", "necessity_accuracy", "necessity_random_accuracy", "necessity_kl",
    "necessity_random_kl", "sufficiency", "sufficiency_random", "sufficiency_accuracy",
    "sufficiency_random_accuracy", "sufficiency_kl", "sufficiency_random_kl", "node_jaccard", "edge_jaccard",
    "cpr", "cpr_random", "cmd", "cmd_random",
)
"""The scores of a row, each an :class:`~ssa.analysis.ablation.Interval` (all taps in scope at once):
``necessity`` is the class-logit drop with the graph's neurons ablated, ``sufficiency`` the recovered share
of the class logit with only the graph's neurons kept (see :mod:`ssa.analysis.ablation`); ``_random`` the same
for random sets of the same size per tap; ``_accuracy`` the share of images still classified as the class;
``_kl`` the KL divergence of the class distribution; the Jaccard indices are the stability's; ``cpr`` and
``cmd`` the areas of the curve over circuit size (:mod:`ssa.analysis.curves`; NaN without curves)."""


@dataclass(frozen=True)
class EvaluationRow:
    """One line of the comparison table (one class, rule, selector and ablation; or their mean over classes).

    n_build, n_scored : images that built the graph and images scored (the same images when not split).
    split : the share of the class's images that built the graph when the others were scored; 0: not split.
    nodes, edges : of the graph; ablated, kept : graph neurons ablated (necessity), kept (sufficiency).
    metrics : :data:`METRICS` -> Interval. ``faithfulness``, ``stability`` and ``graph`` are the detailed
    results of a class's row (None in ``"mean"`` rows).
    """

    target: str
    rule: str
    selector: str
    ablation: str
    split: float
    n_build: int | float
    n_scored: int | float
    nodes: int | float
    edges: int | float
    ablated: int | float
    kept: int | float
    base_logit: float
    base_accuracy: float
    metrics: Mapping[str, Interval]
    seconds: float
    faithfulness: Faithfulness | None = field(default=None, repr=False, compare=False)
    stability: Stability | None = field(default=None, repr=False, compare=False)
    graph: DependencyGraph | None = field(default=None, repr=False, compare=False)
    curve: tuple[CurvePoint, ...] = field(default=(), repr=False, compare=False)

    def __getattr__(self, name: str) -> Interval:  # row.sufficiency, row.node_jaccard, ...
        metrics = self.__dict__.get("metrics", {})
        if name in metrics:
            return metrics[name]
        raise AttributeError(name)


SCALARS = ("target", "rule", "selector", "ablation", "split", "n_build", "n_scored", "nodes", "edges", "ablated",
           "kept", "base_logit", "base_accuracy")
TABLE_COLUMNS = (*SCALARS, *(f"{m}{s}" for m in METRICS for s in ("", "_low", "_high")), "seconds")

LAYER_COLUMNS = ("target", "rule", "selector", "ablation", "tap", "n_neurons", "n_graph", "n_kept",
                 *(f"{m}{s}" for m in ("necessity", "necessity_random", "sufficiency", "sufficiency_random")
                   for s in ("", "_low", "_high")))


def _metrics(faith: Faithfulness, stab: Stability | None, area: Areas | None) -> dict[str, Interval]:
    t = faith.total
    nan = Interval(float("nan"), float("nan"), float("nan"))
    return {
        "cpr": area.cpr if area else nan, "cpr_random": area.cpr_random if area else nan,
        "cmd": area.cmd if area else nan, "cmd_random": area.cmd_random if area else nan,
        "necessity": t.graph.logit_drop, "necessity_random": t.random.logit_drop,
        "necessity_accuracy": t.graph.accuracy, "necessity_random_accuracy": t.random.accuracy,
        "necessity_kl": t.graph.kl, "necessity_random_kl": t.random.kl,
        "sufficiency": t.keep_only.recovered, "sufficiency_random": t.keep_random.recovered,
        "sufficiency_accuracy": t.keep_only.accuracy, "sufficiency_random_accuracy": t.keep_random.accuracy,
        "sufficiency_kl": t.keep_only.kl, "sufficiency_random_kl": t.keep_random.kl,
        "node_jaccard": stab.node_jaccard if stab is not None else nan,
        "edge_jaccard": stab.edge_jaccard if stab is not None else nan,
    }


def evaluate(session: Session, target: int, *, selector: str | Selector | None = None,
             selector_params: Mapping[str, Any] | None = None, branching: int = 3, stop_at: str | None = None,
             indices: Sequence[int] | np.ndarray | None = None, ablation: str = "zero", draws: int = 5,
             resamples: int = 5, seed: int = 0, split: float | str = "auto", mean_images: np.ndarray | None = None,
             pool_images: np.ndarray | None = None, pool_classes: np.ndarray | None = None, n_boot: int = 1000,
             per_tap: bool = True, curves: bool = False,
             scorers: dict[tuple[int, str], Scorer] | None = None) -> EvaluationRow:
    """Analyse class ``target`` with the session's rule and ``selector`` on the build part of its images, then
    measure faithfulness on the scored part (:mod:`ssa.analysis.split`) and stability on the build part.

    The parameters are those of :meth:`ssa.Session.analyse`, :func:`~ssa.analysis.faithfulness.faithfulness`,
    :func:`~ssa.analysis.stability.stability` and :func:`~ssa.analysis.split.split_images`; ``per_tap``: also
    each tap alone (``faithfulness.layers``); ``curves``: also the curve over circuit size
    (:func:`ssa.analysis.curves.sweep`: ``row.curve`` and the ``cpr``/``cmd`` areas); ``scorers`` caches
    one :class:`~ssa.analysis.ablation.Scorer` per (class, ablation) across rows (the same images, donors and
    bootstrap replicates for every rule and selector). Returns one row, with the detailed results attached.
    """
    return _evaluate(session, target, selector=selector, selector_params=selector_params, branching=branching,
                     stop_at=stop_at, indices=indices, ablations=[check_ablation(ablation)], draws=draws,
                     resamples=resamples, seed=seed, split=split, mean_images=mean_images, pool_images=pool_images,
                     pool_classes=pool_classes, n_boot=n_boot, per_tap=per_tap, curves=curves, scorers=scorers)[0]


def class_split(session: Session, target: int, indices: Sequence[int] | np.ndarray | None, split: float | str,
                seed: int) -> tuple[np.ndarray, np.ndarray]:
    """The positions (in the session's images) that build class ``target``'s graph, and those scored."""
    _, chosen = class_images(session, target, indices)
    return split_images(chosen, split, seed=seed, target=target)


def _evaluate(session: Session, target: int, *, selector: str | Selector | None,
              selector_params: Mapping[str, Any] | None, branching: int, stop_at: str | None,
              indices: Sequence[int] | np.ndarray | None, ablations: Sequence[str], draws: int, resamples: int,
              seed: int, split: float | str, mean_images: np.ndarray | None, pool_images: np.ndarray | None,
              pool_classes: np.ndarray | None, n_boot: int, per_tap: bool, curves: bool,
              scorers: dict[tuple[int, str], Scorer] | None) -> list[EvaluationRow]:
    check_int("draws", draws, 1)
    check_int("resamples", resamples, 0)
    check_int("seed", seed, 0)
    check_int("n_boot", n_boot, 0)
    scorers = {} if scorers is None else scorers
    t0 = time.perf_counter()
    build, score = class_split(session, target, indices, split, seed)
    result = session.analyse(target, branching, selector=selector, selector_params=selector_params, stop_at=stop_at,
                             indices=build)
    graph = as_graph(result.graph)
    stab = stability(session, target, branching=branching, selector=selector, selector_params=selector_params,
                     stop_at=stop_at, indices=build, resamples=resamples, seed=seed, graph=graph)
    scope = scope_taps(session.network, stop_at)
    for ablation in ablations:
        if (target, ablation) not in scorers:
            images, _ = class_images(session, target, score)
            scorers[(target, ablation)] = make_scorer(
                session, images, target, ablation, scope, mean_images=mean_images, pool_images=pool_images,
                pool_classes=pool_classes, seed=seed, n_boot=n_boot)
    points: list[CurvePoint] = []
    if curves:
        points = sweep(session, target, {a: scorers[(target, a)] for a in ablations}, scope, selector=selector,
                       selector_params=selector_params, branching=branching, stop_at=stop_at, build=build,
                       draws=draws, seed=seed)
    t_graph = time.perf_counter() - t0
    rows = []
    for ablation in ablations:
        t1 = time.perf_counter()
        faith = faithfulness(session, graph, target=target, indices=score, ablation=ablation, draws=draws, seed=seed,
                             stop_at=stop_at, per_tap=per_tap, scorer=scorers[(target, ablation)])
        curve = tuple(p for p in points if p.ablation == ablation)
        rows.append(EvaluationRow(
            target=str(target), rule=session.rule.name, selector=result.selector, ablation=ablation,
            split=0.0 if np.intersect1d(build, score).size else len(build) / (len(build) + len(score)),
            n_build=len(build), n_scored=len(score), nodes=graph.number_of_nodes(), edges=graph.number_of_edges(),
            ablated=faith.total.n_graph, kept=faith.total.n_kept, base_logit=faith.base_logit,
            base_accuracy=faith.base_accuracy,
            metrics=_metrics(faith, stab if resamples else None, areas(curve) if curve else None),
            seconds=t_graph / len(ablations) + time.perf_counter() - t1, faithfulness=faith, stability=stab,
            graph=graph, curve=curve,
        ))
    return rows


def summarise(rows: Sequence[EvaluationRow], n_boot: int = 1000, seed: int = 0) -> list[EvaluationRow]:
    """Mean over classes per (rule, selector, ablation): rows with ``target == "mean"``; each metric's interval is
    the percentile bootstrap (95 %) of the mean over classes drawn with replacement (``default_rng([seed, 5])``)."""
    groups: dict[tuple[str, str, str], list[EvaluationRow]] = {}
    for r in rows:
        if r.target != "mean":
            groups.setdefault((r.rule, r.selector, r.ablation), []).append(r)
    out = []
    numeric = [c for c in SCALARS if c not in ("target", "rule", "selector", "ablation")]
    for (rule, sel, abl), rs in groups.items():
        vals: dict[str, Any] = {c: float(np.mean([getattr(r, c) for r in rs])) for c in numeric}
        k = len(rs)
        picks = np.random.default_rng([seed, 5]).integers(0, k, size=(n_boot, k))
        metrics = {}
        for m in METRICS:
            per_class = np.array([r.metrics[m].value for r in rs])
            with np.errstate(invalid="ignore"):
                metrics[m] = interval(float(np.mean(per_class)), per_class[picks].mean(axis=1))
        out.append(EvaluationRow(target="mean", rule=rule, selector=sel, ablation=abl, metrics=metrics,
                                 seconds=float(np.sum([r.seconds for r in rs])), **vals))
    return out


def compare_strategies(sessions: Session | Sequence[Session], targets: Sequence[int] | str, *,
                       selectors: Sequence[str] | None = None,
                       selector_params: Mapping[str, Mapping[str, Any]] | None = None, branching: int = 3,
                       stop_at: str | None = None, ablation: str | Sequence[str] = "zero", draws: int = 5,
                       resamples: int = 5, seed: int = 0, split: float | str = "auto",
                       mean_images: np.ndarray | None = None, pool_images: np.ndarray | None = None,
                       pool_classes: np.ndarray | None = None, n_boot: int = 1000, per_tap: bool = True,
                       curves: bool = False,
                       progress: Callable[[EvaluationRow], Any] | None = None) -> list[EvaluationRow]:
    """Evaluate every rule x selector x ablation on every class: the rows of the comparison table.

    Parameters
    ----------
    sessions : one :class:`ssa.Session` per rule, of one model and image set (``session.with_rule(...)``
        makes the others from the first). With several targets the sessions need labels.
    targets : the classes (each once), ``"0,3"``, or ``"all"`` (every class the labels name).
    selectors : registered names; default: every installed selector.
    selector_params : per selector name, e.g. ``{"tukey": {"k": 3}}``.
    ablation : one ablation or several (each class's graphs are scored under each).
    branching, stop_at, draws, resamples, seed, split, mean_images, pool_images, pool_classes, n_boot, per_tap,
        curves : see
        :func:`evaluate`; the ``"mean"`` ablation averages ``mean_images`` (default every image of the first
        session) and ``"resample"`` draws donors from ``pool_images`` (default the first session's images, by
        their labels).
    progress : optional callable receiving each finished row (the CLI prints a line).

    Returns
    -------
    One row per (target, rule, selector, ablation) in that order, then one ``target="mean"`` row per
    (rule, selector, ablation) when there are several targets.
    """
    ablations = [check_ablation(a) for a in ([ablation] if isinstance(ablation, str) else ablation)]
    if not ablations or len(set(ablations)) != len(ablations):
        raise InvalidInputError(f"ablations must be listed once each, got {', '.join(ablations) or 'none'}.")
    sessions, classes = check_strategies(sessions, targets, selectors=selectors, selector_params=selector_params,
                                         branching=branching, stop_at=stop_at, draws=draws, resamples=resamples,
                                         seed=seed)
    split = check_split(split)
    first = sessions[0]
    mean = first.images if mean_images is None else np.asarray(mean_images)
    if "resample" in ablations:  # refused before any work when the donors' classes are known
        known = first.labels if pool_images is None else pool_classes
        for target in classes if known is not None else ():
            draw_donors(target, np.asarray(known), 0, {}, np.random.default_rng(0))
    names = list(selectors) if selectors else registry().names("selector")
    rows: list[EvaluationRow] = []
    for target in classes:
        scorers: dict[tuple[int, str], Scorer] = {}  # one per ablation, shared by every rule and selector
        for session in sessions:
            for s in names:
                for row in _evaluate(session, target, selector=s, selector_params=(selector_params or {}).get(s),
                                     branching=branching, stop_at=stop_at, indices=None, ablations=ablations,
                                     draws=draws, resamples=resamples, seed=seed, split=split, mean_images=mean,
                                     pool_images=pool_images, pool_classes=pool_classes, n_boot=n_boot,
                                     per_tap=per_tap, curves=curves, scorers=scorers):
                    rows.append(row)
                    if progress is not None:
                        progress(row)
    if len(classes) > 1:
        rows.extend(summarise(rows, n_boot=n_boot, seed=seed))
    return rows


def check_strategies(sessions: Session | Sequence[Session], targets: Sequence[int] | str, *,
                     selectors: Sequence[str] | None, selector_params: Mapping[str, Mapping[str, Any]] | None,
                     branching: int, stop_at: str | None, draws: int, resamples: int, seed: int
                     ) -> tuple[list[Session], list[int]]:
    """Refuse bad arguments before any work; the sessions as a list and the classes to evaluate."""
    sessions = [sessions] if isinstance(sessions, Session) else list(sessions)
    if not sessions:
        raise InvalidInputError("compare_strategies needs at least one session (one per rule), got none.")
    names = [s.rule.name for s in sessions]
    twice = sorted({n for n in names if names.count(n) > 1})
    if twice:
        raise InvalidInputError(f"two sessions have rule {twice[0]!r}; pass one session per rule.")
    check_int("branching", branching, 1, "Pass --branching 1 or more.")
    check_int("draws", draws, 1)
    check_int("resamples", resamples, 0)
    check_int("seed", seed, 0)
    wanted = parse_targets(targets) if isinstance(targets, str) else parse_targets(list(targets))
    for s in list(selectors) if selectors else registry().names("selector"):  # unknown names, bad parameters
        make_selector(s, **dict((selector_params or {}).get(s) or {}))
    first = sessions[0]
    network = first.network  # loads and prepares the model (once: the other sessions share it)
    if first.labels is None and (wanted == "all" or len(wanted) > 1):
        raise InvalidInputError(
            f"several targets ({wanted if isinstance(wanted, str) else ', '.join(map(str, wanted))}) need labels to "
            "pick each class's images; pass --labels labels.npy or evaluate one target.")
    n = n_classes(network)
    checked = all_classes(n, first.labels) if isinstance(wanted, str) else parse_targets(wanted, n)  # str: "all"
    assert not isinstance(checked, str)
    scope_taps(network, stop_at)  # an unknown stop_at is refused here
    for target in checked:
        check_target(network, target)
    return sessions, checked


# ----------------------------------------------------------------------------------- output
def _fmt(value: Any, digits: int = 3) -> str:
    if isinstance(value, float):
        if math.isnan(value):
            return "nan"
        return f"{value:.{digits}f}"
    return str(value)


def _csv_text(records: Iterable[Mapping[str, Any]], columns: Sequence[str]) -> str:
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(columns)
    for rec in records:
        w.writerow([_fmt(rec[c], 6) if isinstance(rec[c], float) else rec[c] for c in columns])
    return buf.getvalue()


def _write(path: str | os.PathLike, text: str) -> Path:
    p = Path(path)
    atomic_write_bytes(p, text.encode("utf-8"))
    return p


def _flat(name: str, iv: Interval) -> dict[str, float]:
    return {name: iv.value, f"{name}_low": iv.low, f"{name}_high": iv.high}


def write_csv(rows: Sequence[EvaluationRow], path: str | os.PathLike) -> Path:
    """Write the comparison table (every column of :data:`TABLE_COLUMNS`) as CSV, atomically."""
    records = []
    for r in rows:
        rec: dict[str, Any] = {c: getattr(r, c) for c in SCALARS}
        for m in METRICS:
            rec.update(_flat(m, r.metrics[m]))
        rec["seconds"] = r.seconds
        records.append(rec)
    return _write(path, _csv_text(records, TABLE_COLUMNS))


def write_layers_csv(rows: Sequence[EvaluationRow], path: str | os.PathLike) -> Path:
    """Write the per-tap necessity and sufficiency (one line per class, rule, selector, ablation and tap) as CSV,
    atomically."""
    records = []
    for r in rows:
        if r.faithfulness is None:
            continue
        for lf in (*r.faithfulness.layers, r.faithfulness.total):
            rec: dict[str, Any] = {"target": r.target, "rule": r.rule, "selector": r.selector,
                                   "ablation": r.ablation, "tap": lf.tap, "n_neurons": lf.n_neurons,
                                   "n_graph": lf.n_graph, "n_kept": lf.n_kept}
            rec.update(_flat("necessity", lf.graph.logit_drop))
            rec.update(_flat("necessity_random", lf.random.logit_drop))
            rec.update(_flat("sufficiency", lf.keep_only.recovered))
            rec.update(_flat("sufficiency_random", lf.keep_random.recovered))
            records.append(rec)
    return _write(path, _csv_text(records, LAYER_COLUMNS))


def format_table(rows: Sequence[EvaluationRow]) -> str:
    """The comparison table as aligned text: each score with its 95 % interval in brackets."""
    head = ["target", "rule", "selector", "ablation", "split", "nodes", "necessity graph", "random",
            "sufficiency graph", "random", "still class (keep)", "KL (keep)", "jaccard"]
    body = []
    for r in rows:
        m = r.metrics
        body.append([
            r.target, r.rule, r.selector, r.ablation,
            f"{_fmt(r.n_build, 0)}/{_fmt(r.n_scored, 0)}" if r.split > 0 else f"all {_fmt(r.n_scored, 0)}",
            _fmt(r.nodes, 1) if isinstance(r.nodes, float) else str(r.nodes),
            m["necessity"].text(), m["necessity_random"].text(), m["sufficiency"].text(),
            m["sufficiency_random"].text(), m["sufficiency_accuracy"].text(), m["sufficiency_kl"].text(),
            m["node_jaccard"].text(),
        ])
    widths = [max(len(h), *(len(b[i]) for b in body)) if body else len(h) for i, h in enumerate(head)]
    lines = ["  ".join(h.ljust(w) if i < 4 else h.rjust(w) for i, (h, w) in enumerate(zip(head, widths, strict=False)))]
    for b in body:
        cells = enumerate(zip(b, widths, strict=False))
        lines.append("  ".join(c.ljust(w) if i < 4 else c.rjust(w) for i, (c, w) in cells))
    return "\n".join(lines)


def format_areas(rows: Sequence[EvaluationRow]) -> str:
    """The areas of the curves over circuit size (rows evaluated with curves), as aligned text."""
    head = ["target", "rule", "selector", "ablation", "CPR graph", "CPR random", "CMD graph", "CMD random"]
    body = [[r.target, r.rule, r.selector, r.ablation, *(r.metrics[m].text() for m in ("cpr", "cpr_random", "cmd",
                                                                                         "cmd_random"))]
            for r in rows if not math.isnan(r.metrics["cpr"].value)]
    widths = [max(len(h), *(len(b[i]) for b in body)) if body else len(h) for i, h in enumerate(head)]
    return "\n".join("  ".join(c.ljust(w) if i < 4 else c.rjust(w) for i, (c, w) in enumerate(zip(line, widths,
                                                                                                 strict=True)))
                     for line in [head, *body])


def write_curves_csv(rows: Sequence[EvaluationRow], path: str | os.PathLike) -> Path:
    """Write every curve point of ``rows`` (:data:`~ssa.analysis.curves.CURVE_COLUMNS`) as CSV, atomically."""
    return _write(path, _csv_text(curve_records([p for r in rows for p in r.curve]), CURVE_COLUMNS))


def read_table(path: str | os.PathLike, flag: str = "--evaluation") -> list[EvaluationRow]:
    """The rows of a table written by :func:`write_csv` (``ssa evaluate --out``), without the detailed results."""
    records = read_records(path, TABLE_COLUMNS, flag, "ssa evaluate --out")
    rows = []
    def num(rec: Mapping[str, str], c: str) -> float:
        try:
            return float(rec[c]) if rec[c] not in ("", "nan") else float("nan")
        except ValueError:
            raise InvalidInputError(f"{flag} {str(path)!r}: column {c!r} holds {rec[c]!r}, not a number; pass a CSV "
                                    "written by `ssa evaluate --out`.") from None

    for rec in records:
        rows.append(EvaluationRow(
            target=rec["target"], rule=rec["rule"], selector=rec["selector"], ablation=rec["ablation"],
            split=num(rec, "split"), n_build=num(rec, "n_build"), n_scored=num(rec, "n_scored"),
            nodes=num(rec, "nodes"), edges=num(rec, "edges"), ablated=num(rec, "ablated"), kept=num(rec, "kept"),
            base_logit=num(rec, "base_logit"), base_accuracy=num(rec, "base_accuracy"),
            metrics={m: Interval(num(rec, m), num(rec, f"{m}_low"), num(rec, f"{m}_high")) for m in METRICS},
            seconds=num(rec, "seconds")))
    return rows
