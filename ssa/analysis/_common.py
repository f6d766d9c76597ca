"""Helpers shared by the analysis modules: argument checks, graphs in the schema, a class's images."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import networkx as nx
import numpy as np

from ssa.core.graph import DependencyGraph
from ssa.errors import InvalidInputError
from ssa.session import Session

__all__ = ["check_count", "as_graph", "class_images"]


def check_count(name: str, value: Any, minimum: int) -> int:
    """``value`` as an int >= ``minimum`` (bools and floats refused), else one line naming ``name``."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        raise InvalidInputError(f"{name} must be an integer >= {minimum}, got {value!r}.")
    return int(value)


def as_graph(graph: nx.DiGraph) -> DependencyGraph:
    """``graph`` as a :class:`DependencyGraph` (graphs read by :func:`ssa.read_graph` are; others are copied)."""
    return graph if isinstance(graph, DependencyGraph) else DependencyGraph.from_networkx(graph)


def class_images(session: Session, target: int, indices: Sequence[int] | np.ndarray | None = None
                 ) -> tuple[np.ndarray, np.ndarray]:
    """The images :meth:`Session.analyse` uses for class ``target``, and their positions in ``session.images``."""
    chosen = session.class_indices(target, indices)
    images = session.images
    assert images is not None  # class_indices() prepared the session
    if chosen is None:
        chosen = np.arange(images.shape[0], dtype=np.int64)
    return images[chosen], chosen
