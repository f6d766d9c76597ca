"""How good is a dependency graph? Faithfulness (ablation) and stability (bootstrap).

* **Faithfulness** (:func:`faithfulness`): ablate the graph's neurons and measure how much
  the class suffers, against random neuron sets of the same size per layer, and against
  keeping only the graph (method doc, sections 3 and 7: the paper's "pruning" future work).
  Ablating a neuron sets its channel of the tap tensor to 0 (``"zero"``) or to its mean map
  over a set of images (``"mean"``), while an fx interpreter runs the network's own traced
  copy: the user's module is never modified.
* **Stability** (:func:`stability`): re-run the analysis on bootstrap resamples of the images
  and count how often each node and edge reappears; the graph's Jaccard stability is the mean
  Jaccard index of the resampled graphs' node sets and the full graph's.
* **Comparison** (:func:`compare`): both for every rule x selector and class, as a table
  (:func:`format_table`, :func:`write_csv`); ``ssa evaluate`` on the command line.

Conventions (written down here because the paper has none):

* the class's images are those used for the analysis; the **class logit drop** is the mean over
  these images of (logit without ablation - logit with ablation); the **accuracy** is the share
  of them still classified as the class (arg-max of the logits), its drop is base - ablated;
* the graph's layers are its taps below the logits; the graph's neurons in a layer are its nodes
  there with sign +1 (inhibitory-only nodes, from two-sided selectors, are not ablated: removing
  them should help the class) - keep-only keeps every node of the graph;
* "layer by layer": each layer's set is ablated alone (one row per tap), and all layers at once
  (the ``all`` row, which the comparison table reports);
* random sets are drawn uniformly without replacement from all of a layer's neurons (they may
  overlap the graph), with the graph's size in that layer; one draw gives one set per layer;
  ``draws`` draws from ``numpy.random.default_rng(seed)``; mean and (population) std over draws;
* the node set compared by the Jaccard index leaves out the class node (it is in every graph);
* every graph here (full and bootstrap) is built as ``ssa analyse`` builds it: the exact one-pass
  form where a step has it, autograd elsewhere; the images' statistics are collected once and
  every bootstrap resample re-uses them (a resample is a multiset of the same images).
"""

from __future__ import annotations

import csv
import io
import math
import os
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import networkx as nx
import numpy as np

from ssa.core.defaults import DEFAULT_RULE, DEFAULT_SELECTOR
from ssa.core.interfaces import Network, Rule, Selector
from ssa.errors import InvalidInputError, UnsupportedModelError

__all__ = [
    "AblationScore", "LayerFaithfulness", "Faithfulness", "Stability", "EvaluationRow",
    "faithfulness", "stability", "evaluate", "compare", "graph_neurons", "format_table", "write_csv",
    "write_layers_csv", "summarise", "rows_as_dicts", "ABLATIONS", "TABLE_COLUMNS", "LAYER_COLUMNS",
]

ABLATIONS = ("zero", "mean")


# ----------------------------------------------------------------------------------- results
@dataclass(frozen=True)
class AblationScore:
    """Effect of one ablation on the class.

    logit_drop : mean over the images of (base - ablated) class logit.
    accuracy_drop : base share - ablated share of images classified as the class.
    logit_drop_std, accuracy_drop_std : std over random draws (0 for a fixed set).
    """

    logit_drop: float
    accuracy_drop: float
    logit_drop_std: float = 0.0
    accuracy_drop_std: float = 0.0


@dataclass(frozen=True)
class LayerFaithfulness:
    """Ablations of one tap (or of every graph tap at once: ``tap == "all"``).

    n_neurons : neurons in the tap(s); n_graph : graph neurons ablated there.
    graph : the graph's neurons ablated; random : random sets of the same size (mean, std over draws);
    keep_only : every other neuron of the tap(s) ablated.
    """

    tap: str
    n_neurons: int
    n_graph: int
    graph: AblationScore
    random: AblationScore
    keep_only: AblationScore


@dataclass(frozen=True)
class Faithfulness:
    """Faithfulness of one graph (see the module docstring for the conventions).

    target, ablation, n_images, draws, seed : how it was measured.
    base_logit : mean class logit without ablation; base_accuracy : share classified as the class.
    layers : one entry per graph tap, top first; total : all graph taps at once.
    """

    target: int
    ablation: str
    n_images: int
    draws: int
    seed: int
    base_logit: float
    base_accuracy: float
    layers: tuple[LayerFaithfulness, ...]
    total: LayerFaithfulness


@dataclass(frozen=True)
class Stability:
    """How stable a graph is under bootstrap resampling of the images.

    node_frequency : every full-graph node -> share of resamples whose graph contains it.
    edge_frequency : every full-graph edge ``(upper, lower)`` -> share of resamples containing it.
    new_nodes : nodes of resampled graphs that are not in the full graph -> share of resamples.
    jaccard_mean, jaccard_std : Jaccard index of the node sets (class node left out), over resamples.
    edge_jaccard_mean : the same for edge sets.
    """

    target: int
    n_resamples: int
    seed: int
    node_frequency: Mapping[str, float]
    edge_frequency: Mapping[tuple[str, str], float]
    new_nodes: Mapping[str, float]
    jaccard_mean: float
    jaccard_std: float
    edge_jaccard_mean: float


@dataclass(frozen=True)
class EvaluationRow:
    """One line of the comparison table (one class, rule and selector; or their mean over classes)."""

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


TABLE_COLUMNS = (
    "target", "rule", "selector", "nodes", "edges", "ablated", "base_logit", "base_accuracy",
    "graph_logit_drop", "random_logit_drop", "random_logit_drop_std", "keep_only_logit_drop",
    "graph_accuracy_drop", "random_accuracy_drop", "random_accuracy_drop_std", "keep_only_accuracy_drop",
    "node_jaccard", "node_jaccard_std", "edge_jaccard", "seconds",
)


# ----------------------------------------------------------------------------------- checks
def _check_count(name: str, value: Any, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        raise InvalidInputError(f"{name} must be an integer >= {minimum}, got {value!r}.")
    return int(value)


def _check_ablation(ablation: str) -> str:
    if ablation not in ABLATIONS:
        raise InvalidInputError(f"ablation must be one of {', '.join(ABLATIONS)}, got {ablation!r}.")
    return ablation


def _ablator(network: Network, batch_size: int):
    if not hasattr(network, "graph_module") or not hasattr(network, "plan"):
        raise UnsupportedModelError(
            f"evaluating needs a network that can ablate taps (the torch backend); got {type(network).__name__}."
        )
    from ssa_torch.ablation import TorchAblator

    return TorchAblator(network, batch_size=batch_size)  # type: ignore[arg-type]


# ----------------------------------------------------------------------------------- faithfulness
def graph_neurons(graph: nx.DiGraph, excitatory_only: bool = True) -> dict[str, np.ndarray]:
    """The graph's neurons per tap below the logits (sign +1 only, unless ``excitatory_only`` is False)."""
    out: dict[str, list[int]] = {}
    for _, d in graph.nodes(data=True):
        if d["tap"] == "logits":
            continue
        if excitatory_only and int(d.get("sign", 1)) < 0:
            continue
        out.setdefault(d["tap"], []).append(int(d["neuron"]))
    return {t: np.array(sorted(v), dtype=np.int64) for t, v in out.items()}


def _score(ablator, images: np.ndarray, target: int, ablate: Mapping[str, np.ndarray], mode: str,
           base_logit: np.ndarray, base_hit: np.ndarray) -> tuple[float, float]:
    logits = ablator.logits(images, ablate, mode)
    drop = float(np.mean(base_logit - logits[:, target]))
    acc = float(np.mean(logits.argmax(axis=1) == target))
    return drop, float(np.mean(base_hit)) - acc


def faithfulness(network: Network, images: np.ndarray, graph: nx.DiGraph, *, target: int | None = None,
                 ablation: str = "zero", draws: int = 5, seed: int = 0, mean_images: np.ndarray | None = None,
                 batch_size: int = 256) -> Faithfulness:
    """Ablate the graph's neurons layer by layer and all at once, against random sets and keep-only.

    Parameters
    ----------
    network : a prepared network of the torch backend (``ssa.load_model(...)`` then ``prepare``).
    images : the class's images (those the graph was built from), shaped for the model.
    graph : the dependency graph (``AnalysisResult.graph``).
    target : the class; defaults to the graph's ``target`` attribute.
    ablation : ``"zero"`` or ``"mean"`` (each ablated channel set to its per-position mean map over
        ``mean_images``, default ``images``; ``ssa evaluate`` passes all loaded images).
    draws : random neuron sets per layer; seed : their random generator's seed.

    Returns
    -------
    Faithfulness, with one :class:`LayerFaithfulness` per graph tap (top first) and the total.
    """
    ablation = _check_ablation(ablation)
    draws = _check_count("draws", draws, 1)
    seed = _check_count("seed", seed, 0)
    if target is None:
        target = int(graph.graph["target"])
    images = np.asarray(images)
    if images.shape[0] == 0:
        raise InvalidInputError("faithfulness needs at least one image of the class.")
    ablator = _ablator(network, batch_size)
    taps = {t.name: t for t in network.taps}
    kept = graph_neurons(graph, excitatory_only=True)
    every = graph_neurons(graph, excitatory_only=False)
    unknown = sorted(set(every) - set(taps))
    if unknown:
        raise InvalidInputError(
            f"the graph has nodes in {unknown[0]!r}, which is not a tap of this network; taps are: "
            f"{', '.join(taps)}. Evaluate a graph with the model (and taps) it was built from."
        )
    layers = sorted(set(kept) | set(every), key=lambda t: -taps[t].order)
    if ablation == "mean":
        ablator.fit_means(np.asarray(mean_images) if mean_images is not None else images, layers)
    base = ablator.logits(images, {}, ablation)
    base_logit, base_hit = base[:, target], base.argmax(axis=1) == target
    rng = np.random.default_rng(seed)
    random_sets = [{t: np.sort(rng.choice(taps[t].n_neurons, size=len(kept.get(t, ())), replace=False))
                    for t in layers} for _ in range(draws)]
    complement = {t: np.setdiff1d(np.arange(taps[t].n_neurons), every.get(t, np.zeros(0, np.int64)))
                  for t in layers}

    def measure(name: str, which: list[str]) -> LayerFaithfulness:
        g = _score(ablator, images, target, {t: kept.get(t, np.zeros(0, np.int64)) for t in which}, ablation,
                   base_logit, base_hit)
        r = np.array([_score(ablator, images, target, {t: s[t] for t in which}, ablation, base_logit, base_hit)
                      for s in random_sets])
        k = _score(ablator, images, target, {t: complement[t] for t in which}, ablation, base_logit, base_hit)
        return LayerFaithfulness(
            tap=name, n_neurons=sum(taps[t].n_neurons for t in which),
            n_graph=sum(len(kept.get(t, ())) for t in which),
            graph=AblationScore(*g),
            random=AblationScore(float(r[:, 0].mean()), float(r[:, 1].mean()), float(r[:, 0].std()),
                                 float(r[:, 1].std())),
            keep_only=AblationScore(*k),
        )

    per_layer = tuple(measure(t, [t]) for t in layers)
    total = measure("all", layers) if layers else LayerFaithfulness(
        "all", 0, 0, AblationScore(0.0, 0.0), AblationScore(0.0, 0.0), AblationScore(0.0, 0.0))
    return Faithfulness(target=int(target), ablation=ablation, n_images=int(images.shape[0]), draws=draws,
                        seed=seed, base_logit=float(base_logit.mean()), base_accuracy=float(base_hit.mean()),
                        layers=per_layer, total=total)


# ----------------------------------------------------------------------------------- stability
def _node_set(graph: nx.DiGraph) -> set[str]:
    return {n for n, d in graph.nodes(data=True) if d["tap"] != "logits"}


def _jaccard(a: set, b: set) -> float:
    union = a | b
    return 1.0 if not union else len(a & b) / len(union)


_STATS_CACHE: dict[tuple, Any] = {}


def _analyse(network: Network, images: np.ndarray, target: int, branching: int, rule: Rule, selector: Selector,
             batch_size: int, stop_at: str | None = None, indices: np.ndarray | None = None):
    """The graph of ``images[indices]`` (all images when None), with the engine ``ssa analyse`` uses.

    The one-pass statistics of ``images`` are collected once per network, image set and rule form,
    so every bootstrap resample (``indices`` drawn with replacement) re-uses them.
    """
    from ssa.engines.autograd import AutogradSource
    from ssa.engines.closed_form import FastSource
    from ssa.engines.statistics import collect
    from ssa.engines.store import images_hash
    from ssa.session import run_traversal

    form = rule.form
    if form and network.fast_taps(form):
        key = (id(network), images_hash(images), form, int(batch_size))
        if key not in _STATS_CACHE:
            if len(_STATS_CACHE) >= 4:
                _STATS_CACHE.pop(next(iter(_STATS_CACHE)))
            _STATS_CACHE[key] = collect(network, images, [form], batch_size)
        source = FastSource(network, _STATS_CACHE[key], form, images, batch_size, indices)
    else:
        source = AutogradSource(network, images if indices is None else images[indices], batch_size)
    return run_traversal(source, network, target, branching, rule, selector, stop_at=stop_at)


def stability(network: Network, images: np.ndarray, target: int, *, branching: int = 3,
              rule: str | Rule = DEFAULT_RULE, selector: str | Selector = DEFAULT_SELECTOR,
              rule_params: Mapping[str, Any] | None = None, selector_params: Mapping[str, Any] | None = None,
              resamples: int = 5, seed: int = 0, graph: nx.DiGraph | None = None, batch_size: int = 256,
              stop_at: str | None = None) -> Stability:
    """Bootstrap the images ``resamples`` times and compare each resample's graph with the full graph.

    Parameters
    ----------
    network : a prepared network; images : the class's images; target : the class.
    branching, rule, selector, rule_params, selector_params, stop_at : as for :func:`ssa.analyse`.
    resamples : bootstrap resamples (images drawn with replacement, as many as there are images).
    seed : seed of ``numpy.random.default_rng`` drawing the resamples.
    graph : the full graph, if already computed (else it is computed here).

    Returns
    -------
    Stability; with ``resamples == 0`` the frequencies are empty and the Jaccard numbers NaN.
    """
    from ssa.plugins import make_rule, make_selector

    resamples = _check_count("resamples", resamples, 0)
    seed = _check_count("seed", seed, 0)
    rule_obj = make_rule(rule, **dict(rule_params or {}))
    sel_obj = make_selector(selector, **dict(selector_params or {}))
    images = np.asarray(images)
    n = images.shape[0]
    if n == 0:
        raise InvalidInputError("stability needs at least one image of the class.")
    if graph is None:
        graph = _analyse(network, images, target, branching, rule_obj, sel_obj, batch_size, stop_at).graph
    full_nodes = _node_set(graph)
    full_edges = set(graph.edges())
    rng = np.random.default_rng(seed)
    node_hits = {v: 0 for v in full_nodes}
    edge_hits = {e: 0 for e in full_edges}
    new: dict[str, int] = {}
    jac, ejac = [], []
    for _ in range(resamples):
        idx = rng.integers(0, n, size=n)
        g = _analyse(network, images, target, branching, rule_obj, sel_obj, batch_size, stop_at, indices=idx).graph
        nodes, edges = _node_set(g), set(g.edges())
        for v in nodes:
            if v in node_hits:
                node_hits[v] += 1
            else:
                new[v] = new.get(v, 0) + 1
        for e in edges & full_edges:
            edge_hits[e] += 1
        jac.append(_jaccard(nodes, full_nodes))
        ejac.append(_jaccard(edges, full_edges))
    div = max(resamples, 1)
    nan = float("nan")
    return Stability(
        target=int(target), n_resamples=resamples, seed=seed,
        node_frequency={v: c / div for v, c in sorted(node_hits.items())} if resamples else {},
        edge_frequency={e: c / div for e, c in sorted(edge_hits.items())} if resamples else {},
        new_nodes={v: c / div for v, c in sorted(new.items())},
        jaccard_mean=float(np.mean(jac)) if jac else nan,
        jaccard_std=float(np.std(jac)) if jac else nan,
        edge_jaccard_mean=float(np.mean(ejac)) if ejac else nan,
    )


# ----------------------------------------------------------------------------------- comparison
def evaluate(network: Network, images: np.ndarray, target: int, *, branching: int = 3,
             rule: str | Rule = DEFAULT_RULE, selector: str | Selector = DEFAULT_SELECTOR,
             rule_params: Mapping[str, Any] | None = None, selector_params: Mapping[str, Any] | None = None,
             ablation: str = "zero", draws: int = 5, resamples: int = 5, seed: int = 0,
             mean_images: np.ndarray | None = None, batch_size: int = 256, stop_at: str | None = None
             ) -> EvaluationRow:
    """Analyse one class with one rule and selector, then measure faithfulness and stability.

    ``images`` are the class's images; the other parameters are those of :func:`faithfulness`
    and :func:`stability`. Returns one row of the comparison table (with both results attached).
    """
    from ssa.plugins import make_rule, make_selector

    t0 = time.perf_counter()
    rule_obj = make_rule(rule, **dict(rule_params or {}))
    sel_obj = make_selector(selector, **dict(selector_params or {}))
    result = _analyse(network, images, target, branching, rule_obj, sel_obj, batch_size, stop_at)
    faith = faithfulness(network, images, result.graph, target=target, ablation=ablation, draws=draws, seed=seed,
                         mean_images=mean_images, batch_size=batch_size)
    stab = stability(network, images, target, branching=branching, rule=rule_obj, selector=sel_obj,
                     resamples=resamples, seed=seed, graph=result.graph, batch_size=batch_size, stop_at=stop_at)
    tot = faith.total
    return EvaluationRow(
        target=str(target), rule=rule_obj.name, selector=sel_obj.name,
        nodes=result.graph.number_of_nodes(), edges=result.graph.number_of_edges(), ablated=tot.n_graph,
        base_logit=faith.base_logit, base_accuracy=faith.base_accuracy,
        graph_logit_drop=tot.graph.logit_drop, random_logit_drop=tot.random.logit_drop,
        random_logit_drop_std=tot.random.logit_drop_std, keep_only_logit_drop=tot.keep_only.logit_drop,
        graph_accuracy_drop=tot.graph.accuracy_drop, random_accuracy_drop=tot.random.accuracy_drop,
        random_accuracy_drop_std=tot.random.accuracy_drop_std, keep_only_accuracy_drop=tot.keep_only.accuracy_drop,
        node_jaccard=stab.jaccard_mean, node_jaccard_std=stab.jaccard_std, edge_jaccard=stab.edge_jaccard_mean,
        seconds=time.perf_counter() - t0, faithfulness=faith, stability=stab,
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


def compare(model: Any, images: Any, targets: Sequence[int] | str, *, rules: Sequence[str] | None = None,
            selectors: Sequence[str] | None = None, rule_params: Mapping[str, Mapping[str, Any]] | None = None,
            selector_params: Mapping[str, Mapping[str, Any]] | None = None, branching: int = 3,
            ablation: str = "zero", draws: int = 5, resamples: int = 5, seed: int = 0, labels: Any = None,
            preprocess: Any = None, device: str = "cpu", batch_size: int = 256, backend: str | None = None,
            stop_at: str | None = None, model_options: Mapping[str, Any] | None = None,
            progress: Any = None) -> list[EvaluationRow]:
    """Evaluate every rule x selector on every class: the rows of the comparison table.

    Parameters
    ----------
    model, images, labels, preprocess, device, backend : as for :func:`ssa.analyse`. With several
        targets the images need labels (``"digits"`` has them).
    targets : the classes (each once), or ``"all"`` (every logit).
    rules, selectors : registered names; default: every installed rule and selector.
    rule_params, selector_params : per name, e.g. ``{"tukey": {"k": 3}}``.
    branching, ablation, draws, resamples, seed, stop_at : see :func:`evaluate`.
    progress : optional callable receiving each finished row (the CLI prints a line).

    Returns
    -------
    One row per (target, rule, selector), then one ``target="mean"`` row per (rule, selector)
    when there are several targets. The ``"mean"`` ablation uses the mean over all loaded images.
    """
    from ssa.api import load_model
    from ssa.core.checks import check_int
    from ssa.io.images import load_images, select_class
    from ssa.plugins import registry
    from ssa.session import check_target, n_classes, prepare_network

    branching = check_int("branching", branching, 1, "Pass --branching 1 or more.")
    batch_size = check_int("batch_size", batch_size, 1)
    ablation = _check_ablation(ablation)
    _check_count("draws", draws, 1)
    _check_count("resamples", resamples, 0)
    _check_count("seed", seed, 0)
    from ssa.analysis.grouping import parse_targets

    wanted = parse_targets(targets) if isinstance(targets, str) else parse_targets(list(targets))
    reg = registry()
    rules = list(rules) if rules else reg.names("rule")
    selectors = list(selectors) if selectors else reg.names("selector")
    for r in rules:
        reg.get("rule", r)
    for s in selectors:
        reg.get("selector", s)
    network = load_model(model, backend=backend, device=device, **dict(model_options or {}))
    arr, lab = load_images(images, preprocess=preprocess, labels=labels)
    if lab is None and (wanted == "all" or len(wanted) > 1):
        raise InvalidInputError(
            f"several targets ({wanted if isinstance(wanted, str) else ', '.join(map(str, wanted))}) need labels to "
            "pick each class's images; "
            "pass --labels labels.npy or evaluate one target."
        )
    prepare_network(network, arr, images_spec=images, preprocess=preprocess)
    n = n_classes(network)
    targets = list(range(n)) if wanted == "all" else parse_targets(list(wanted), n)
    if stop_at is not None and stop_at not in {t.name for t in network.taps}:
        raise InvalidInputError(
            f"stop_at {stop_at!r} is not a tap; taps are: {', '.join(t.name for t in network.taps)}.")
    rows: list[EvaluationRow] = []
    for target in targets:
        check_target(network, target)
        cls_images, _ = select_class(arr, lab, target)
        for r in rules:
            for s in selectors:
                row = evaluate(network, cls_images, target, branching=branching, rule=r, selector=s,
                               rule_params=(rule_params or {}).get(r), selector_params=(selector_params or {}).get(s),
                               ablation=ablation, draws=draws, resamples=resamples, seed=seed, mean_images=arr,
                               batch_size=batch_size, stop_at=stop_at)
                rows.append(row)
                if progress is not None:
                    progress(row)
    if len(targets) > 1:
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


def _atomic_write(path: str | os.PathLike, text: str) -> Path:
    from ssa.io.atomic import atomic_write_bytes

    p = Path(path)
    atomic_write_bytes(p, text.encode("utf-8"))
    return p


def write_csv(rows: Sequence[EvaluationRow], path: str | os.PathLike) -> Path:
    """Write the comparison table (every column of :data:`TABLE_COLUMNS`) as CSV, atomically."""
    records = [{c: getattr(r, c) for c in TABLE_COLUMNS} for r in rows]
    return _atomic_write(path, _csv_text(records, TABLE_COLUMNS))


LAYER_COLUMNS = ("target", "rule", "selector", "tap", "n_neurons", "n_graph", "graph_logit_drop",
                 "random_logit_drop", "random_logit_drop_std", "keep_only_logit_drop", "graph_accuracy_drop",
                 "random_accuracy_drop", "random_accuracy_drop_std", "keep_only_accuracy_drop")


def write_layers_csv(rows: Sequence[EvaluationRow], path: str | os.PathLike) -> Path:
    """Write the per-layer ablation numbers (one line per class, rule, selector and tap) as CSV."""
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
    return _atomic_write(path, _csv_text(records, LAYER_COLUMNS))


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
    lines = ["  ".join(h.ljust(w) if i < 3 else h.rjust(w) for i, (h, w) in enumerate(zip(head, widths, strict=True)))]
    for b in body:
        lines.append("  ".join(c.ljust(w) if i < 3 else c.rjust(w) for i, (c, w) in enumerate(zip(b, widths,
                                                                                                  strict=True))))
    return "\n".join(lines)


def rows_as_dicts(rows: Sequence[EvaluationRow]) -> list[dict[str, Any]]:
    """The table's rows as plain dicts (without the attached detailed results)."""
    out = []
    for r in rows:
        d = asdict(r)
        d.pop("faithfulness", None)
        d.pop("stability", None)
        out.append(d)
    return out
