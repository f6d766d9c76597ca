"""Helpers shared by the analysis modules: argument checks, graphs in the schema, a class's images."""

from __future__ import annotations

import csv
import os
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import networkx as nx
import numpy as np

from ssa.core.graph import DependencyGraph
from ssa.errors import InvalidInputError

if TYPE_CHECKING:  # for the annotation only: the helpers work on any session they are given
    from ssa.session import Session

__all__ = ["as_graph", "class_images", "read_records"]


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


def read_records(path: str | os.PathLike, columns: Sequence[str], flag: str, writer: str) -> list[dict[str, str]]:
    """The records of a CSV file that must have ``columns`` (written by ``writer``); refused in one line else."""
    p = Path(path)
    if not p.is_file():
        raise InvalidInputError(f"{flag} {str(path)!r} does not exist or is not a file; pass a CSV written by "
                                f"`{writer}`.")
    try:
        with open(p, newline="", encoding="utf-8") as fh:
            reader = csv.DictReader(fh)
            missing = [c for c in columns if c not in (reader.fieldnames or [])]
            records = list(reader)
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise InvalidInputError(f"{flag} {str(path)!r} cannot be read as CSV ({exc}); pass a CSV written by "
                                f"`{writer}`.") from None
    if missing:
        raise InvalidInputError(f"{flag} {str(path)!r} has no column {missing[0]!r}; pass a CSV written by "
                                f"`{writer}` (of this version of ssa).")
    return records
