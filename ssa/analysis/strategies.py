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

from ssa.analysis._common import as_graph, check_count
from ssa.analysis.faithfulness import Faithfulness, check_ablation, faithfulness
from ssa.analysis.grouping import all_classes, parse_targets
from ssa.analysis.stability import Stability, stability
from ssa.core.checks import check_int
from ssa.core.graph import DependencyGraph
from ssa.core.interfaces import Selector
from ssa.errors import InvalidInputError
from ssa.io.atomic import atomic_write_bytes
from ssa.plugins import make_selector, registry
from ssa.session import Session, check_target, n_classes

__all__ = ["EvaluationRow", "TABLE_COLUMNS", "LAYER_COLUMNS", "evaluate", "compare_strategies", "summarise",
           "format_table", "write_csv", "write_layers_csv"]


@dataclass(frozen=True)
class EvaluationRow:
    """One line of the comparison table (one class, rule and selector; or their mean over classes).

    The numbers are those of :data:`TABLE_COLUMNS`; ``faithfulness``, ``stability`` and ``graph`` are the
    detailed results of a class's row (None in ``"mean"`` rows).
    """

    target: str
    rule: str
    selector: str
    nodes: int | float
    edges: int | float
    ablated: int | float
    base_logit: float
    base_accuracy: float
    graph_logit_drop: float
    random_logit_drop: float
    random_logit_drop_std: float
    keep_only_logit_drop: float
    graph_accuracy_drop: float
    random_accuracy_drop: float
    random_accuracy_drop_std: float
    keep_only_accuracy_drop: float
    node_jaccard: float
    node_jaccard_std: float
    edge_jaccard: float
    seconds: float
    faithfulness: Faithfulness | None = field(default=None, repr=False, compare=False)
    stability: Stability | None = field(default=None, repr=False, compare=False)
    graph: DependencyGraph | None = field(default=None, repr=False, compare=False)


TABLE_COLUMNS = (
    "target", "rule", "selector", "nodes", "edges", "ablated", "base_logit", "base_accuracy",
    "graph_logit_drop", "random_logit_drop", "random_logit_drop_std", "keep_only_logit_drop",
    "graph_accuracy_drop", "random_accuracy_drop", "random_accuracy_drop_std", "keep_only_accuracy_drop",
    "node_jaccard", "node_jaccard_std", "edge_jaccard", "seconds",
)

LAYER_COLUMNS = ("target", "rule", "selector", "tap", "n_neurons", "n_graph", "graph_logit_drop",
                 "random_logit_drop", "random_logit_drop_std", "keep_only_logit_drop", "graph_accuracy_drop",
                 "random_accuracy_drop", "random_accuracy_drop_std", "keep_only_accuracy_drop")


def evaluate(session: Session, target: int, *, selector: str | Selector | None = None,
             selector_params: Mapping[str, Any] | None = None, branching: int = 3, stop_at: str | None = None,
             indices: Sequence[int] | np.ndarray | None = None, ablation: str = "zero", draws: int = 5,
             resamples: int = 5, seed: int = 0, mean_images: np.ndarray | None = None) -> EvaluationRow:
    """Analyse class ``target`` with the session's rule and ``selector``, then measure faithfulness and stability.

    The parameters are those of :meth:`ssa.Session.analyse`, :func:`~ssa.analysis.faithfulness.faithfulness`
    and :func:`~ssa.analysis.stability.stability`. Returns one row of the comparison table, with both
    detailed results and the graph attached.
    """
    ablation = check_ablation(ablation)
    check_count("draws", draws, 1)
    check_count("resamples", resamples, 0)
    check_count("seed", seed, 0)
    t0 = time.perf_counter()
    result = session.analyse(target, branching, selector=selector, selector_params=selector_params, stop_at=stop_at,
                             indices=indices)
    graph = as_graph(result.graph)
    faith = faithfulness(session, graph, target=target, indices=indices, ablation=ablation, draws=draws, seed=seed,
                         mean_images=mean_images)
    stab = stability(session, target, branching=branching, selector=selector, selector_params=selector_params,
                     stop_at=stop_at, indices=indices, resamples=resamples, seed=seed, graph=graph)
    tot = faith.total
    return EvaluationRow(
        target=str(target), rule=session.rule.name, selector=result.selector,
        nodes=graph.number_of_nodes(), edges=graph.number_of_edges(), ablated=tot.n_graph,
        base_logit=faith.base_logit, base_accuracy=faith.base_accuracy,
        graph_logit_drop=tot.graph.logit_drop, random_logit_drop=tot.random.logit_drop,
        random_logit_drop_std=tot.random.logit_drop_std, keep_only_logit_drop=tot.keep_only.logit_drop,
        graph_accuracy_drop=tot.graph.accuracy_drop, random_accuracy_drop=tot.random.accuracy_drop,
        random_accuracy_drop_std=tot.random.accuracy_drop_std, keep_only_accuracy_drop=tot.keep_only.accuracy_drop,
        node_jaccard=stab.jaccard_mean, node_jaccard_std=stab.jaccard_std, edge_jaccard=stab.edge_jaccard_mean,
        seconds=time.perf_counter() - t0, faithfulness=faith, stability=stab, graph=graph,
    )


def summarise(rows: Sequence[EvaluationRow]) -> list[EvaluationRow]:
    """Mean over classes of every number, per (rule, selector): rows with ``target == "mean"``."""
    groups: dict[tuple[str, str], list[EvaluationRow]] = {}
    for r in rows:
        if r.target != "mean":
            groups.setdefault((r.rule, r.selector), []).append(r)
    out = []
    numeric = [c for c in TABLE_COLUMNS if c not in ("target", "rule", "selector")]
    for (rule, sel), rs in groups.items():
        vals = {c: float(np.mean([getattr(r, c) for r in rs])) for c in numeric}
        vals["seconds"] = float(np.sum([r.seconds for r in rs]))
        out.append(EvaluationRow(target="mean", rule=rule, selector=sel, **vals))  # type: ignore[arg-type]
    return out


def compare_strategies(sessions: Session | Sequence[Session], targets: Sequence[int] | str, *,
                       selectors: Sequence[str] | None = None,
                       selector_params: Mapping[str, Mapping[str, Any]] | None = None, branching: int = 3,
                       stop_at: str | None = None, ablation: str = "zero", draws: int = 5, resamples: int = 5,
                       seed: int = 0, mean_images: np.ndarray | None = None,
                       progress: Callable[[EvaluationRow], Any] | None = None) -> list[EvaluationRow]:
    """Evaluate every rule x selector on every class: the rows of the comparison table.

    Parameters
    ----------
    sessions : one :class:`ssa.Session` per rule, of one model and image set (``session.with_rule(...)``
        makes the others from the first). With several targets the sessions need labels.
    targets : the classes (each once), ``"0,3"``, or ``"all"`` (every class the labels name).
    selectors : registered names; default: every installed selector.
    selector_params : per selector name, e.g. ``{"tukey": {"k": 3}}``.
    branching, stop_at, ablation, draws, resamples, seed, mean_images : see :func:`evaluate`; the
        ``"mean"`` ablation uses ``mean_images``, default every image of the first session.
    progress : optional callable receiving each finished row (the CLI prints a line).

    Returns
    -------
    One row per (target, rule, selector) in that order, then one ``target="mean"`` row per
    (rule, selector) when there are several targets.
    """
    sessions = [sessions] if isinstance(sessions, Session) else list(sessions)
    if not sessions:
        raise InvalidInputError("compare_strategies needs at least one session (one per rule), got none.")
    names = [s.rule.name for s in sessions]
    twice = sorted({n for n in names if names.count(n) > 1})
    if twice:
        raise InvalidInputError(f"two sessions have rule {twice[0]!r}; pass one session per rule.")
    branching = check_int("branching", branching, 1, "Pass --branching 1 or more.")
    check_ablation(ablation)
    check_count("draws", draws, 1)
    check_count("resamples", resamples, 0)
    check_count("seed", seed, 0)
    wanted = parse_targets(targets) if isinstance(targets, str) else parse_targets(list(targets))
    selectors = list(selectors) if selectors else registry().names("selector")
    for s in selectors:  # unknown names and bad parameters are refused before any work
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
    classes: list[int] = checked
    if stop_at is not None and stop_at not in {t.name for t in network.taps}:
        raise InvalidInputError(
            f"stop_at {stop_at!r} is not a tap; taps are: {', '.join(t.name for t in network.taps)}.")
    mean = first.images if mean_images is None else np.asarray(mean_images)
    rows: list[EvaluationRow] = []
    for target in classes:
        check_target(network, target)
        for session in sessions:
            for s in selectors:
                row = evaluate(session, target, selector=s, selector_params=(selector_params or {}).get(s),
                               branching=branching, stop_at=stop_at, ablation=ablation, draws=draws,
                               resamples=resamples, seed=seed, mean_images=mean)
                rows.append(row)
                if progress is not None:
                    progress(row)
    if len(classes) > 1:
        rows.extend(summarise(rows))
    return rows


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


def write_csv(rows: Sequence[EvaluationRow], path: str | os.PathLike) -> Path:
    """Write the comparison table (every column of :data:`TABLE_COLUMNS`) as CSV, atomically."""
    records = [{c: getattr(r, c) for c in TABLE_COLUMNS} for r in rows]
    return _write(path, _csv_text(records, TABLE_COLUMNS))


def write_layers_csv(rows: Sequence[EvaluationRow], path: str | os.PathLike) -> Path:
    """Write the per-layer ablation numbers (one line per class, rule, selector and tap) as CSV, atomically."""
    records = []
    for r in rows:
        if r.faithfulness is None:
            continue
        for lf in (*r.faithfulness.layers, r.faithfulness.total):
            records.append({
                "target": r.target, "rule": r.rule, "selector": r.selector, "tap": lf.tap,
                "n_neurons": lf.n_neurons, "n_graph": lf.n_graph,
                "graph_logit_drop": lf.graph.logit_drop, "random_logit_drop": lf.random.logit_drop,
                "random_logit_drop_std": lf.random.logit_drop_std, "keep_only_logit_drop": lf.keep_only.logit_drop,
                "graph_accuracy_drop": lf.graph.accuracy_drop, "random_accuracy_drop": lf.random.accuracy_drop,
                "random_accuracy_drop_std": lf.random.accuracy_drop_std,
                "keep_only_accuracy_drop": lf.keep_only.accuracy_drop,
            })
    return _write(path, _csv_text(records, LAYER_COLUMNS))


def format_table(rows: Sequence[EvaluationRow]) -> str:
    """The comparison table as aligned text (logit drops in logit units, accuracy drops as shares)."""
    head = ["target", "rule", "selector", "nodes", "ablated", "logit drop graph", "random (mean±std)", "keep-only",
            "acc drop graph", "random (mean±std)", "keep-only", "jaccard"]
    body = []
    for r in rows:
        body.append([
            r.target, r.rule, r.selector, _fmt(r.nodes, 1) if isinstance(r.nodes, float) else str(r.nodes),
            _fmt(r.ablated, 1) if isinstance(r.ablated, float) else str(r.ablated),
            _fmt(r.graph_logit_drop, 2), f"{_fmt(r.random_logit_drop, 2)}±{_fmt(r.random_logit_drop_std, 2)}",
            _fmt(r.keep_only_logit_drop, 2),
            _fmt(r.graph_accuracy_drop, 2), f"{_fmt(r.random_accuracy_drop, 2)}±{_fmt(r.random_accuracy_drop_std, 2)}",
            _fmt(r.keep_only_accuracy_drop, 2),
            f"{_fmt(r.node_jaccard, 2)}",
        ])
    widths = [max(len(h), *(len(b[i]) for b in body)) if body else len(h) for i, h in enumerate(head)]
    lines = ["  ".join(h.ljust(w) if i < 3 else h.rjust(w) for i, (h, w) in enumerate(zip(head, widths, strict=False)))]
    for b in body:
        cells = enumerate(zip(b, widths, strict=False))
        lines.append("  ".join(c.ljust(w) if i < 3 else c.rjust(w) for i, (c, w) in cells))
    return "\n".join(lines)
