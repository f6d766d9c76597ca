"""Faithfulness of a dependency graph: necessity and sufficiency, beside random neuron sets of the same size.

For every tap in scope and for all of them at once (the ``all`` row), four ablations
(:mod:`ssa.analysis.ablation` runs them and gives each metric with its bootstrap interval):

* **necessity** (``graph``): the graph's neurons ablated; beside it ``random``: random neuron sets of the
  same size per tap ablated;
* **sufficiency** (``keep_only``): only the graph's neurons kept, every other neuron of the tap(s) ablated;
  beside it ``keep_random``: only random sets of the graph's size per tap kept.

The network ablates through the :class:`~ssa.core.capabilities.SupportsAblation` capability (the torch
backend runs its own traced copy: the user's module is never modified).

Conventions (written down here because the paper has none):

* the class's images are those :meth:`ssa.Session.analyse` uses for the class (by label, all the
  session's images without labels, or the ``indices`` given: ``ssa evaluate`` passes the held-out half);
* the taps in scope are every tap below the logits, down to ``stop_at`` when given (top first); a tap
  without graph neurons is in scope too (keeping "only the graph" there ablates the whole tap);
* the graph's neurons ablated for necessity are its nodes with sign +1 (inhibitory-only nodes, from
  two-sided selectors, are not ablated: removing them should help the class); sufficiency keeps every
  node of the graph;
* random sets are drawn uniformly without replacement from all of a tap's neurons (they may overlap the
  graph), with the graph's size in that tap (its +1 nodes for necessity, all its nodes for sufficiency);
  one draw gives one set per tap; ``draws`` draws from ``numpy.random.default_rng(seed)`` (necessity) and
  ``default_rng([seed, 6])`` (sufficiency): the same sizes give the same sets.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import networkx as nx
import numpy as np

from ssa.analysis._common import as_graph, class_images
from ssa.analysis.ablation import ABLATIONS, Effect, Interval, Scorer, check_ablation
from ssa.core.capabilities import SupportsAblation, unsupported
from ssa.core.checks import check_int, check_stop_at
from ssa.core.interfaces import Network
from ssa.errors import InvalidInputError
from ssa.session import Session

__all__ = ["ABLATIONS", "LayerFaithfulness", "Faithfulness", "faithfulness", "graph_neurons", "check_ablation",
           "scope_taps", "random_sets", "measure"]


@dataclass(frozen=True)
class LayerFaithfulness:
    """The four ablations of one tap (or of every tap in scope at once: ``tap == "all"``).

    n_neurons : neurons in the tap(s); n_graph : graph neurons ablated for necessity (sign +1);
    n_kept : graph neurons kept for sufficiency (every node).
    graph, random : necessity of the graph, of random sets of the same size (over the draws);
    keep_only, keep_random : sufficiency of the graph, of random sets of the same size.
    """

    tap: str
    n_neurons: int
    n_graph: int
    n_kept: int
    graph: Effect
    random: Effect
    keep_only: Effect
    keep_random: Effect


@dataclass(frozen=True)
class Faithfulness:
    """Faithfulness of one graph (see the module docstring for the conventions).

    target, ablation, n_images, draws, seed : how it was measured (n_images: the scored images).
    base_logit : mean class logit without ablation; base_accuracy : share classified as the class;
    empty_logit : mean class logit with every neuron of every tap in scope ablated.
    layers : one entry per tap in scope, top first (empty when measured without ``per_tap``); total : all of
    them at once.
    """

    target: int
    ablation: str
    n_images: int
    draws: int
    seed: int
    base_logit: float
    base_accuracy: float
    empty_logit: float
    layers: tuple[LayerFaithfulness, ...]
    total: LayerFaithfulness


_NAN = Interval(float("nan"), float("nan"), float("nan"))
NOT_MEASURED = Effect(_NAN, _NAN, _NAN, _NAN)
"""The effect of an ablation that was not run (NaN everywhere)."""


def graph_neurons(graph: nx.DiGraph, excitatory_only: bool = True) -> dict[str, np.ndarray]:
    """The graph's neurons per tap below the logits (sign +1 only, unless ``excitatory_only`` is False)."""
    g = as_graph(graph)
    out: dict[str, list[int]] = {}
    for node in g.node_set(sign=1 if excitatory_only else None):
        info = g.info(node)
        out.setdefault(info.tap, []).append(info.neuron)
    return {t: np.array(sorted(v), dtype=np.int64) for t, v in out.items()}


def scope_taps(network: Network, stop_at: str | None = None) -> list[str]:
    """Every tap below the logits, down to ``stop_at`` (inclusive) when given, top first."""
    taps = {t.name: t for t in network.taps}
    check_stop_at(stop_at, taps)
    low = taps[stop_at].order if stop_at is not None else -1
    return [t.name for t in sorted(network.taps, key=lambda t: -t.order) if t.name != "logits" and t.order >= low]


def random_sets(sizes: dict[str, int], n_neurons: dict[str, int], draws: int, rng: np.random.Generator
                ) -> list[dict[str, np.ndarray]]:
    """``draws`` random neuron sets: per tap ``sizes[tap]`` neurons, uniform without replacement."""
    return [{t: np.sort(rng.choice(n_neurons[t], size=k, replace=False)) for t, k in sizes.items()}
            for _ in range(draws)]


def measure(scorer: Scorer, graph: nx.DiGraph, scope: Sequence[str], *, draws: int, seed: int, per_tap: bool = True,
            necessity: bool = True) -> tuple[tuple[LayerFaithfulness, ...], LayerFaithfulness]:
    """The four ablations of ``graph`` per tap of ``scope`` (when ``per_tap``) and over all of ``scope``; without
    ``necessity`` only the sufficiency (``graph`` and ``random`` are :data:`NOT_MEASURED`)."""
    g = as_graph(graph)
    n_neurons = scorer.n_neurons
    kept = graph_neurons(g, excitatory_only=True)
    every = graph_neurons(g, excitatory_only=False)
    unknown = sorted(set(every) - set(n_neurons))
    if unknown:
        raise InvalidInputError(
            f"the graph has nodes in {unknown[0]!r}, which is not a tap of this network; taps are: "
            f"{', '.join(n_neurons)}. Evaluate a graph with the model (and taps) it was built from."
        )
    outside = sorted(set(every) - set(scope))
    if outside:
        raise InvalidInputError(f"the graph has nodes in {outside[0]!r}, below stop_at; evaluate it with the "
                                "stop_at it was built with.")
    none = np.zeros(0, np.int64)
    ablate_random = random_sets({t: len(kept.get(t, none)) for t in scope}, n_neurons, draws,
                                np.random.default_rng(seed))
    keep_random = random_sets({t: len(every.get(t, none)) for t in scope}, n_neurons, draws,
                              np.random.default_rng([seed, 6]))

    def complement(t: str, keep: np.ndarray) -> np.ndarray:
        return np.setdiff1d(np.arange(n_neurons[t]), keep)

    def one(name: str, which: Sequence[str]) -> LayerFaithfulness:
        return LayerFaithfulness(
            tap=name, n_neurons=sum(n_neurons[t] for t in which), n_graph=sum(len(kept.get(t, none)) for t in which),
            n_kept=sum(len(every.get(t, none)) for t in which),
            graph=scorer.effect([{t: kept.get(t, none) for t in which}], which) if necessity else NOT_MEASURED,
            random=scorer.effect([{t: s[t] for t in which} for s in ablate_random], which) if necessity
            else NOT_MEASURED,
            keep_only=scorer.effect([{t: complement(t, every.get(t, none)) for t in which}], which),
            keep_random=scorer.effect([{t: complement(t, s[t]) for t in which} for s in keep_random], which),
        )

    layers = tuple(one(t, [t]) for t in scope) if per_tap else ()
    return layers, one("all", list(scope))


def faithfulness(session: Session, graph: nx.DiGraph, *, target: int | None = None,
                 indices: Sequence[int] | np.ndarray | None = None, ablation: str = "zero", draws: int = 5,
                 seed: int = 0, mean_images: np.ndarray | None = None, pool_images: np.ndarray | None = None,
                 pool_classes: np.ndarray | None = None, stop_at: str | None = None, n_boot: int = 1000,
                 per_tap: bool = True, scorer: Scorer | None = None) -> Faithfulness:
    """Necessity and sufficiency of the graph per tap and over all taps, beside random sets of the same size.

    Parameters
    ----------
    session : the model and images (:class:`ssa.Session`); its network must support ablation.
    graph : the dependency graph (``AnalysisResult.graph`` or a graph read from a file).
    target : the class; defaults to the graph's.
    indices : the scored images, as positions in the session's images (default: those
        :meth:`ssa.Session.analyse` uses for the class: by label, or all).
    ablation : ``"zero"``, ``"mean"`` (mean map over ``mean_images``, default every image of the session)
        or ``"resample"`` (donors from ``pool_images`` whose ``pool_classes`` differ from the class; default
        the session's images and labels): see :mod:`ssa.analysis.ablation`.
    draws : random neuron sets per tap; seed : seeds the random sets, the donors and the bootstrap.
    stop_at : the lowest tap in scope (default: every tap below the logits).
    n_boot : bootstrap replicates of the intervals.
    per_tap : also each tap alone (``layers``; else only the total, and ``layers`` is empty).
    scorer : a :class:`~ssa.analysis.ablation.Scorer` of these images to re-use (curves over sizes).

    Returns
    -------
    Faithfulness, with one :class:`LayerFaithfulness` per tap in scope (top first) and the total.
    """
    ablation = check_ablation(ablation)
    draws = check_int("draws", draws, 1)
    seed = check_int("seed", seed, 0)
    n_boot = check_int("n_boot", n_boot, 0)
    g = as_graph(graph)
    if target is None:
        target = g.run.target
        if target < 0:
            raise InvalidInputError("the graph has no 'target' attribute; pass target= or a graph written by ssa.")
    if indices is not None and len(indices) == 0:
        raise InvalidInputError("faithfulness needs at least one image of the class.")
    images, _ = class_images(session, target, indices)
    scope = scope_taps(session.network, stop_at)
    if scorer is None:
        scorer = make_scorer(session, images, target, ablation, scope, mean_images=mean_images,
                             pool_images=pool_images, pool_classes=pool_classes, seed=seed, n_boot=n_boot)
    layers, total = measure(scorer, g, scope, draws=draws, seed=seed, per_tap=per_tap)
    return Faithfulness(target=int(target), ablation=ablation, n_images=int(images.shape[0]), draws=draws,
                        seed=seed, base_logit=float(scorer.base_logit.mean()),
                        base_accuracy=float(np.mean(scorer.base.argmax(axis=1) == target)),
                        empty_logit=float(scorer.empty_logit(scope).mean()), layers=layers, total=total)


def make_scorer(session: Session, images: np.ndarray, target: int, ablation: str, scope: Sequence[str], *,
                mean_images: np.ndarray | None = None, pool_images: np.ndarray | None = None,
                pool_classes: np.ndarray | None = None, seed: int = 0, n_boot: int = 1000) -> Scorer:
    """A :class:`Scorer` of ``images`` with the session's defaults: the mean over (and the donors from) every
    image of the session, the donors' classes by label (or the model's prediction without labels)."""
    every = session.images
    assert every is not None  # the caller prepared the session
    if ablation == "resample" and pool_images is None:
        pool_images, pool_classes = every, session.labels
    if ablation == "resample" and pool_classes is None:
        network = session.network
        if not isinstance(network, SupportsAblation):
            raise unsupported(network, SupportsAblation, "ssa evaluate")
        pool = every if pool_images is None else pool_images
        pool_classes = network.ablator(session.batch_size).logits(pool, {}).argmax(axis=1)
    return Scorer(session.network, images, target, ablation, scope,
                  mean_images=every if mean_images is None else np.asarray(mean_images), pool_images=pool_images,
                  pool_classes=pool_classes, seed=seed, n_boot=n_boot, batch_size=session.batch_size)
