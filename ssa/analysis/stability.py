"""Stability of a dependency graph under bootstrap resampling of the class's images.

:func:`stability` re-runs the analysis on bootstrap resamples of the class's images and counts
how often each node and edge of the full graph reappears; the graph's Jaccard stability is the
mean Jaccard index (:func:`ssa.core.graph.jaccard`) of the resampled graphs' node sets and the
full graph's.

Conventions:

* the class's images are those :meth:`ssa.Session.analyse` uses for the class; a resample draws as
  many of them with replacement (``numpy.random.default_rng(seed).integers``), and its graph is
  ``session.analyse(target, indices=resample)``: every graph here (full and bootstrap) is built as
  ``ssa analyse`` builds it, from the statistics the session computed once for its images (a
  resample is a multiset of the same images), by autograd where a step has no closed form;
* the node set compared leaves out the class node (it is in every graph); two empty node sets
  are identical (Jaccard 1.0, the convention of :func:`ssa.core.graph.jaccard`);
* with ``resamples == 0`` nothing is compared: the frequencies are empty and the Jaccard numbers NaN;
* the interval of a Jaccard index (:attr:`Stability.node_jaccard`, :attr:`Stability.edge_jaccard`) is the
  95 % percentile interval of the resamples' indices (the bootstrap distribution of the graph's overlap
  with itself; a handful of resamples gives a coarse interval).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import networkx as nx
import numpy as np

from ssa.analysis._common import as_graph, class_images
from ssa.analysis.ablation import Interval, interval
from ssa.core.checks import check_int
from ssa.core.graph import DependencyGraph, jaccard
from ssa.core.interfaces import Selector
from ssa.errors import InvalidInputError
from ssa.session import Session

__all__ = ["Stability", "stability"]


@dataclass(frozen=True)
class Stability:
    """How stable a graph is under bootstrap resampling of the images.

    node_frequency : every full-graph node -> share of resamples whose graph contains it.
    edge_frequency : every full-graph edge ``(upper, lower)`` -> share of resamples containing it.
    new_nodes : nodes of resampled graphs that are not in the full graph -> share of resamples.
    jaccard_mean, jaccard_std : Jaccard index of the node sets (class node left out), over resamples.
    edge_jaccard_mean : the same for edge sets.
    jaccards, edge_jaccards : each resample's node and edge Jaccard index.
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
    jaccards: tuple[float, ...] = ()
    edge_jaccards: tuple[float, ...] = ()

    @property
    def node_jaccard(self) -> Interval:
        """The mean node Jaccard index with the percentile interval (95 %) of the resamples' indices."""
        return interval(self.jaccard_mean, np.asarray(self.jaccards))

    @property
    def edge_jaccard(self) -> Interval:
        """The mean edge Jaccard index with the percentile interval (95 %) of the resamples' indices."""
        return interval(self.edge_jaccard_mean, np.asarray(self.edge_jaccards))


def stability(session: Session, target: int, *, branching: int = 3, selector: str | Selector | None = None,
              selector_params: Mapping[str, Any] | None = None, stop_at: str | None = None,
              indices: Sequence[int] | np.ndarray | None = None, resamples: int = 5, seed: int = 0,
              graph: nx.DiGraph | None = None) -> Stability:
    """Bootstrap the class's images ``resamples`` times and compare each resample's graph with the full graph.

    Parameters
    ----------
    session : the model, images and rule (:class:`ssa.Session`); its statistics are computed once and
        every resample re-uses them.
    target : the class.
    branching, selector, selector_params, stop_at : as for :meth:`ssa.Session.analyse`.
    indices : the class's images, as positions in the session's images (default: those
        :meth:`ssa.Session.analyse` uses: by label, or all).
    resamples : bootstrap resamples (images drawn with replacement, as many as there are images).
    seed : seed of ``numpy.random.default_rng`` drawing the resamples.
    graph : the full graph, if already computed (else it is computed here).

    Returns
    -------
    Stability; with ``resamples == 0`` the frequencies are empty and the Jaccard numbers NaN.
    """
    resamples = check_int("resamples", resamples, 0)
    seed = check_int("seed", seed, 0)
    if indices is not None and len(indices) == 0:
        raise InvalidInputError("stability needs at least one image of the class.")
    _, chosen = class_images(session, target, indices)
    n = len(chosen)

    def analyse(which: Sequence[int] | np.ndarray | None) -> DependencyGraph:
        return as_graph(session.analyse(target, branching, selector=selector, selector_params=selector_params,
                                        stop_at=stop_at, indices=which).graph)

    full = analyse(indices) if graph is None else as_graph(graph)
    full_nodes = full.node_set()
    full_edges = set(full.edges())
    rng = np.random.default_rng(seed)
    node_hits = {v: 0 for v in full_nodes}
    edge_hits = {e: 0 for e in full_edges}
    new: dict[str, int] = {}
    jac, ejac = [], []
    for _ in range(resamples):
        g = analyse(chosen[rng.integers(0, n, size=n)])
        nodes, edges = g.node_set(), set(g.edges())
        for v in nodes:
            if v in node_hits:
                node_hits[v] += 1
            else:
                new[v] = new.get(v, 0) + 1
        for e in edges & full_edges:
            edge_hits[e] += 1
        jac.append(jaccard(nodes, full_nodes))
        ejac.append(jaccard(edges, full_edges))
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
        jaccards=tuple(float(j) for j in jac), edge_jaccards=tuple(float(j) for j in ejac),
    )
