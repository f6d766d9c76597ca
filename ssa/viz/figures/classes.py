"""Every figure of one class graph (``ssa figures``, and the report's class sections).

:func:`class_figures` draws them as :class:`ClassFigure` objects (matplotlib figures with their
kind, file stem and caption); :func:`write_class_figures` draws and writes them one at a time.
"""

from __future__ import annotations

import os
from collections.abc import Collection, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import networkx as nx
import numpy as np
from matplotlib.figure import Figure

from ssa.core.capabilities import SupportsInputMaps
from ssa.core.graph import DependencyGraph
from ssa.core.interfaces import Network
from ssa.errors import InvalidInputError

from .activations import activation_maps, plot_activation_grid
from .common import FORMATS, dependency_graph, save_figure
from .frequency import plot_frequency
from .graph import plot_graph
from .heatmap import outlier_counts, plot_relevance_heatmap, relevance_rows
from .saliency import plot_saliency, saliency

__all__ = ["ClassFigure", "default_map_neuron", "class_figures", "iter_class_figures", "write_class_figures"]

_CLASS_TAP = "logits"


@dataclass(frozen=True)
class ClassFigure:
    """One figure of a class graph.

    kind : ``graph``, ``frequency``, ``relevance``, ``saliency`` or ``activations``.
    stem : its file name without the suffix (``graph``, ``frequency-features.6-30``, ...).
    caption : what it shows, in one line.
    figure : the matplotlib figure.
    """

    kind: str
    stem: str
    caption: str
    figure: Figure


def _safe(name: str) -> str:
    return "".join(c if c.isalnum() or c in "._-" else "_" for c in name)


def _top_node(graph: DependencyGraph, nodes: Sequence[str]) -> str:
    """The most frequent node, then the most relevant, then the lowest neuron index."""
    def key(n: str) -> tuple[int, float, int]:
        info = graph.info(n)
        return -info.frequency, -info.mean_relevance, info.neuron
    return sorted(nodes, key=key)[0]


def default_map_neuron(graph: nx.DiGraph, network: Network) -> tuple[str, int] | None:
    """The neuron whose saliency and activation maps are drawn by default: the most frequent neuron of the
    highest tap in the graph that has spatial maps (a conv tap); None when the graph has none."""
    g = dependency_graph(graph)
    taps = {t.name: t for t in network.taps}
    spatial = [(tap, nodes) for tap, nodes in g.layers()
               if tap in taps and len(taps[tap].shape) >= 2 and taps[tap].kind != "input"]
    if not spatial:
        return None
    tap, nodes = max(spatial, key=lambda tn: taps[tn[0]].order)
    return tap, g.info(_top_node(g, nodes)).neuron


def iter_class_figures(network: Network, graph: nx.DiGraph, images: np.ndarray, *,
                       shared: Collection[str] | None = None, kept_by: Mapping[str, int] | None = None,
                       n_graphs: int | None = None, steps: str = "all", neuron: tuple[str, int] | None = None,
                       n_images: int = 8, batch_size: int = 32) -> Iterator[ClassFigure]:
    """The figures of one class graph, drawn one at a time (see :func:`class_figures`)."""
    if steps not in ("class", "all"):
        raise InvalidInputError(f"steps must be 'class' or 'all', got {steps!r}.")
    g = dependency_graph(graph)
    run = g.run
    taps = {t.name: t for t in network.taps}
    missing = sorted(set(g.taps()) - set(taps))
    if missing:
        raise InvalidInputError(f"the graph has taps the model does not ({', '.join(map(str, missing))}); "
                                "pass the model (and --taps) the graph was made with.")
    yield ClassFigure("graph", "graph", f"dependency graph of class {run.target}",
                      plot_graph(g, shared=shared, kept_by=kept_by, n_graphs=n_graphs))
    uppers: list[tuple[str, int]] = []
    if neuron is not None:
        uppers = [neuron]
    else:
        for tap, nodes in g.layers():  # top tap first
            above = [n for n in nodes if g.out_degree(n) > 0 or tap == _CLASS_TAP]
            if not above:
                continue
            uppers.append((tap, g.info(_top_node(g, above)).neuron))
            if steps == "class":
                break
    rule, selector = run.rule or "gradient", run.selector or "tukey"
    for tap, k in uppers:
        if not taps[tap].parents:
            continue
        parent, omega = relevance_rows(network, images, tap, k, rule=rule, rule_params=run.rule_params,
                                       batch_size=max(batch_size, 128))  # one neuron: big batches are cheap
        counts, selected = outlier_counts(omega, selector, run.selector_params)
        stem = f"{_safe(tap)}-{k}"
        label = f"{tap}:{k} -> {parent}"
        yield ClassFigure("frequency", f"frequency-{stem}",
                          f"outlier frequency of {parent} neurons for {tap}:{k} over {len(images)} images",
                          plot_frequency(counts, n_images=len(images), title=f"outlier frequency, {label}"))
        yield ClassFigure("relevance", f"relevance-{stem}",
                          f"relevance rows ω of {tap}:{k} over {parent}, one row per image (dots: outliers)",
                          plot_relevance_heatmap(omega, selected=selected, title=f"relevance rows, {label}"))
    if not isinstance(network, SupportsInputMaps):  # a backend without input maps: no saliency, no activations
        return
    map_neuron = (neuron if neuron is not None and len(taps[neuron[0]].shape) >= 2
                  else default_map_neuron(g, network))
    if map_neuron is not None:
        tap, k = map_neuron
        few = images[:n_images]
        stem = f"{_safe(tap)}-{k}"
        yield ClassFigure("saliency", f"saliency-{stem}", f"saliency of {tap}:{k} w.r.t. the input image",
                          plot_saliency(few, saliency(network, few, tap, k),
                                        title=f"saliency of {tap}:{k} (top: image, bottom: |gradient|)"))
        yield ClassFigure("activations", f"activations-{stem}", f"activation maps of {tap}:{k}",
                          plot_activation_grid(activation_maps(network, few, tap, k), images=few,
                                               title=f"activation maps of {tap}:{k}"))


def class_figures(network: Network, graph: nx.DiGraph, images: np.ndarray, *,
                  shared: Collection[str] | None = None, kept_by: Mapping[str, int] | None = None,
                  n_graphs: int | None = None, steps: str = "all", neuron: tuple[str, int] | None = None,
                  n_images: int = 8, batch_size: int = 32) -> list[ClassFigure]:
    """Every figure of one class graph, as :class:`ClassFigure` objects:

    * ``graph``: the layered dependency graph (Fig. 3), coloured by ``kept_by`` (how many of ``n_graphs``
      class graphs keep each neuron; ``shared``: the older set form) or else by frequency;
    * ``frequency`` and ``relevance``: outlier frequency with a power-law fit (Fig. 2a) and the relevance
      rows across images (Fig. 2b) of one upper neuron: the class neuron (``steps="class"``) or the most
      frequent neuron of every tap that has a step below it (``steps="all"``); with ``neuron``, that one;
    * ``saliency`` and ``activations``: of ``neuron``, or of :func:`default_map_neuron`, on the first
      ``n_images`` images (Fig. 4b,c and Fig. 5), when the network supports
      :class:`~ssa.core.capabilities.SupportsInputMaps`.

    ``network`` must be prepared; ``images`` are the class's images. Rule and selector come from the
    graph's run parameters, so the figures show what the traversal saw.
    """
    return list(iter_class_figures(network, graph, images, shared=shared, kept_by=kept_by, n_graphs=n_graphs,
                                   steps=steps, neuron=neuron, n_images=n_images, batch_size=batch_size))


def write_class_figures(network: Network, graph: nx.DiGraph, images: np.ndarray, out_dir: str | os.PathLike, *,
                        fmt: str = "png", **options: object) -> list[tuple[str, str, Path]]:
    """``ssa figures``: draw every figure of one class graph (:func:`class_figures`; ``options`` go there) and
    write each to ``out_dir/<stem>.<fmt>`` atomically as soon as it is drawn. Returns ``(kind, caption, path)``."""
    if fmt not in FORMATS:
        raise InvalidInputError(f"figure format must be 'png' or 'svg', got {fmt!r}.")
    out = Path(out_dir)
    written = []
    for f in iter_class_figures(network, graph, images, **options):  # type: ignore[arg-type]
        written.append((f.kind, f.caption, save_figure(f.figure, out / f"{f.stem}.{fmt}")))
    return written
