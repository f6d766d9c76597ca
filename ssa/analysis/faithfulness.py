"""Faithfulness of a dependency graph: ablate its neurons and measure how much the class suffers.

The graph's neurons are ablated layer by layer and all at once, against random neuron sets of
the same size per layer, and against keeping only the graph (method doc, sections 3 and 7: the
paper's "pruning" future work). Ablating a neuron sets its channel of the tap tensor to 0
(``"zero"``) or to its mean map over a set of images (``"mean"``). The network does the ablation
itself through the :class:`~ssa.core.capabilities.SupportsAblation` capability (the torch backend
runs its own traced copy: the user's module is never modified).

Conventions (written down here because the paper has none):

* the class's images are those :meth:`ssa.Session.analyse` uses for the class (by label, all the
  session's images without labels, or the ``indices`` given); the **class logit drop** is the mean
  over these images of (logit without ablation - logit with ablation); the **accuracy** is the share
  of them still classified as the class (arg-max of the logits), its drop is base - ablated;
* the graph's layers are its taps below the logits; the graph's neurons in a layer are its nodes
  there with sign +1 (inhibitory-only nodes, from two-sided selectors, are not ablated: removing
  them should help the class) - keep-only keeps every node of the graph;
* "layer by layer": each layer's set is ablated alone (one row per tap), and all layers at once
  (the ``all`` row, which the comparison table of :mod:`ssa.analysis.strategies` reports);
* random sets are drawn uniformly without replacement from all of a layer's neurons (they may
  overlap the graph), with the graph's size in that layer; one draw gives one set per layer;
  ``draws`` draws from ``numpy.random.default_rng(seed)``; mean and (population) std over draws;
* ``"mean"`` ablation: each channel's per-position mean map over ``mean_images`` (default: every
  image of the session, which is what ``ssa evaluate`` loads).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import networkx as nx
import numpy as np

from ssa.analysis._common import as_graph, check_count, class_images
from ssa.core.capabilities import Ablator, SupportsAblation, unsupported
from ssa.errors import InvalidInputError
from ssa.session import Session

__all__ = ["ABLATIONS", "AblationScore", "LayerFaithfulness", "Faithfulness", "faithfulness", "graph_neurons",
           "check_ablation"]

ABLATIONS = ("zero", "mean")


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


def check_ablation(ablation: str) -> str:
    if ablation not in ABLATIONS:
        raise InvalidInputError(f"ablation must be one of {', '.join(ABLATIONS)}, got {ablation!r}.")
    return ablation


def graph_neurons(graph: nx.DiGraph, excitatory_only: bool = True) -> dict[str, np.ndarray]:
    """The graph's neurons per tap below the logits (sign +1 only, unless ``excitatory_only`` is False)."""
    g = as_graph(graph)
    out: dict[str, list[int]] = {}
    for node in g.node_set(sign=1 if excitatory_only else None):
        info = g.info(node)
        out.setdefault(info.tap, []).append(info.neuron)
    return {t: np.array(sorted(v), dtype=np.int64) for t, v in out.items()}


def _score(ablator: Ablator, images: np.ndarray, target: int, ablate: Mapping[str, np.ndarray], mode: str,
           base_logit: np.ndarray, base_hit: np.ndarray) -> tuple[float, float]:
    logits = ablator.logits(images, ablate, mode)
    drop = float(np.mean(base_logit - logits[:, target]))
    acc = float(np.mean(logits.argmax(axis=1) == target))
    return drop, float(np.mean(base_hit)) - acc


def faithfulness(session: Session, graph: nx.DiGraph, *, target: int | None = None,
                 indices: Sequence[int] | np.ndarray | None = None, ablation: str = "zero", draws: int = 5,
                 seed: int = 0, mean_images: np.ndarray | None = None) -> Faithfulness:
    """Ablate the graph's neurons layer by layer and all at once, against random sets and keep-only.

    Parameters
    ----------
    session : the model and images (:class:`ssa.Session`); its network must support ablation.
    graph : the dependency graph (``AnalysisResult.graph`` or a graph read from a file).
    target : the class; defaults to the graph's.
    indices : the class's images, as positions in the session's images (default: those
        :meth:`ssa.Session.analyse` uses: by label, or all).
    ablation : ``"zero"`` or ``"mean"`` (each ablated channel set to its per-position mean map over
        ``mean_images``, default every image of the session).
    draws : random neuron sets per layer; seed : their random generator's seed.

    Returns
    -------
    Faithfulness, with one :class:`LayerFaithfulness` per graph tap (top first) and the total.
    """
    ablation = check_ablation(ablation)
    draws = check_count("draws", draws, 1)
    seed = check_count("seed", seed, 0)
    g = as_graph(graph)
    if target is None:
        target = g.run.target
        if target < 0:
            raise InvalidInputError("the graph has no 'target' attribute; pass target= or a graph written by ssa.")
    if indices is not None and len(indices) == 0:
        raise InvalidInputError("faithfulness needs at least one image of the class.")
    images, _ = class_images(session, target, indices)
    network = session.network
    if not isinstance(network, SupportsAblation):
        raise unsupported(network, SupportsAblation, "ssa evaluate")
    ablator = network.ablator(session.batch_size)
    taps = {t.name: t for t in network.taps}
    kept = graph_neurons(g, excitatory_only=True)
    every = graph_neurons(g, excitatory_only=False)
    unknown = sorted(set(every) - set(taps))
    if unknown:
        raise InvalidInputError(
            f"the graph has nodes in {unknown[0]!r}, which is not a tap of this network; taps are: "
            f"{', '.join(taps)}. Evaluate a graph with the model (and taps) it was built from."
        )
    layers = sorted(set(kept) | set(every), key=lambda t: -taps[t].order)
    if ablation == "mean":
        mean = session.images if mean_images is None else np.asarray(mean_images)
        assert mean is not None  # class_images() prepared the session
        ablator.fit_means(mean, layers)
    base = ablator.logits(images, {}, ablation)
    base_logit, base_hit = base[:, target], base.argmax(axis=1) == target
    rng = np.random.default_rng(seed)
    random_sets = [{t: np.sort(rng.choice(taps[t].n_neurons, size=len(kept.get(t, ())), replace=False))
                    for t in layers} for _ in range(draws)]
    none = np.zeros(0, np.int64)
    complement = {t: np.setdiff1d(np.arange(taps[t].n_neurons), every.get(t, none)) for t in layers}

    def measure(name: str, which: list[str]) -> LayerFaithfulness:
        g_ = _score(ablator, images, target, {t: kept.get(t, none) for t in which}, ablation, base_logit, base_hit)
        r = np.array([_score(ablator, images, target, {t: s[t] for t in which}, ablation, base_logit, base_hit)
                      for s in random_sets])
        k = _score(ablator, images, target, {t: complement[t] for t in which}, ablation, base_logit, base_hit)
        return LayerFaithfulness(
            tap=name, n_neurons=sum(taps[t].n_neurons for t in which),
            n_graph=sum(len(kept.get(t, ())) for t in which),
            graph=AblationScore(*g_),
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
