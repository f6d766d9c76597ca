"""Result types of an analysis (frozen dataclasses): a graph and how it was obtained, with its writers.

Above the core (it writes through :mod:`ssa.io.graphs`); :mod:`ssa.core` never imports it.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import networkx as nx

from ssa.core import display
from ssa.core.defaults import DEFAULT_RULE
from ssa.core.interfaces import Tap
from ssa.core.traversal import StepRecord
from ssa.io.graphs import graph_to_dict, write_graph

__all__ = ["AnalysisResult", "LayerSummary"]


@dataclass(frozen=True)
class LayerSummary:
    """The kept neurons of one tap.

    tap, order : the tap and its position in execution order.
    n_neurons : neurons in the tap.
    kept : ``(neuron, frequency, active_fraction)`` of each kept neuron, most frequent first.
    never_fire : kept neurons whose scalar is never > 0 on the images.
    """

    tap: str
    order: int
    n_neurons: int
    kept: tuple[tuple[int, int, float], ...]
    never_fire: tuple[int, ...]


@dataclass(frozen=True)
class AnalysisResult:
    """The dependency graph of one class and how it was obtained.

    graph : the dependency graph (see :mod:`ssa.core.graph` for its attributes).
    target, branching, rule, selector, selector_params, n_images, model : the run's parameters.
    taps : every tap of the model (execution order).
    steps : per-step statistics (outlier counts and mean relevance of every lower neuron).
    engines : which computation each visited step used ("fast", "autograd", "store").
    notes : why the graph stops above the lowest tap it could reach, and what to try (empty when it does not).
    """

    graph: nx.DiGraph[Any]
    target: int
    branching: int
    rule: str
    selector: str
    selector_params: Mapping[str, Any]
    n_images: int
    model: str
    taps: tuple[Tap, ...]
    steps: tuple[StepRecord, ...] = ()
    engines: Mapping[str, str] = field(default_factory=dict)
    notes: tuple[str, ...] = ()

    def layers(self) -> list[LayerSummary]:
        """Per-tap summary, top (logits) first."""
        out = []
        for tap in sorted(self.taps, key=lambda t: -t.order):
            nodes = [d for _, d in self.graph.nodes(data=True) if d["tap"] == tap.name]
            if not nodes:
                continue
            nodes.sort(key=lambda d: (-d["frequency"], d["neuron"]))
            kept = tuple((d["neuron"], d["frequency"], d["active_fraction"]) for d in nodes)
            never = () if tap.kind == "logits" else tuple(d["neuron"] for d in nodes if d["active_fraction"] == 0.0)
            out.append(LayerSummary(tap.name, tap.order, tap.n_neurons, kept, never))
        return out

    def summary(self) -> str:
        """A readable per-layer summary (what the CLI prints)."""
        lines = [
            f"class {self.target} of {self.model}: {self.n_images} images, b={self.branching}, "
            f"rule={self.rule}, selector={self.selector} {dict(self.selector_params)}",
        ]
        never_total = 0
        layers = self.layers()
        w = max([24] + [len(layer.tap) for layer in layers])
        for layer in layers:
            shown = ", ".join(f"{n} ({f}/{self.n_images})" for n, f, _ in layer.kept[:12])
            more = f", ... {len(layer.kept) - 12} more" if len(layer.kept) > 12 else ""
            lines.append(f"  {layer.tap:<{w}} {len(layer.kept):>4} of {layer.n_neurons:<5} {shown}{more}")
            if layer.never_fire:
                never_total += len(layer.never_fire)
                lines.append(f"  {'':<{w}} never fire on these images: {', '.join(map(str, layer.never_fire))}")
        lines.append(f"  graph: {self.graph.number_of_nodes()} nodes, {self.graph.number_of_edges()} edges")
        if self.engines:
            fast = sum(v == "fast" for v in self.engines.values())
            slow = [k for k, v in self.engines.items() if v != "fast"]
            lines.append(f"  steps: {fast} of {len(self.engines)} by the exact one-pass form"
                         + (f"; autograd for {', '.join(slow[:4])}{' ...' if len(slow) > 4 else ''}" if slow else ""))
        for note in self.notes:
            lines.append(f"  note: {note}")
        if never_total:
            tip = ("try other images of the class" if self.rule == DEFAULT_RULE else
                   f"the gradient rule can select them through a dense layer; try --rule {DEFAULT_RULE}")
            lines.append(f"  note: {never_total} kept neuron(s) never fire on the class's images ({tip})")
        return "\n".join(lines)

    def _repr_html_(self) -> str | None:
        """Jupyter's view: the summary and the explorer of the graph (:mod:`ssa.viz.notebook`)."""
        return display.html(self)

    def to_dict(self) -> dict[str, Any]:
        """The graph as node-link data (JSON-ready)."""
        return graph_to_dict(self.graph)

    def write(self, path: str | os.PathLike[str]) -> Path:
        """Write the graph atomically (``.json`` or ``.graphml``)."""
        return write_graph(self.graph, path)
