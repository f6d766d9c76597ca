"""Grouping images by class: labels, predictions, confidence thresholds (paper, section 4).

The grouping itself is in :mod:`ssa.targets` (the public API uses it, below the analysis layer); this module
re-exports it and adds :func:`images_for_graph`.
"""

from __future__ import annotations

from typing import Any

import networkx as nx
import numpy as np

from ssa.analysis._common import as_graph
from ssa.core.interfaces import Network
from ssa.errors import InvalidInputError
from ssa.io.folders import load_grouped_images
from ssa.io.images import Preprocess
from ssa.targets import ClassImages, all_classes, class_probabilities, group_images, parse_targets

__all__ = ['ClassImages', 'parse_targets', 'all_classes', 'class_probabilities', 'group_images', 'images_for_graph']


def images_for_graph(network: Network, graph: nx.DiGraph, images: Any, *, labels: Any = None,
                     preprocess: Preprocess | None = None, by_prediction: bool | None = None,
                     min_confidence: float | None = None, max_per_class: int | None = None) -> np.ndarray:
    """The images of a graph's class, chosen the way :func:`analyse_many` chose them.

    The graph's attributes (``target``, ``grouping``, ``min_confidence``, ``max_per_class``) give the
    defaults; arguments that are not None override them. Without labels or predictions every image is
    taken to belong to the class (as :func:`ssa.analyse` does). ``network`` must be prepared.
    """
    arr, lab = load_grouped_images(images, labels=labels, preprocess=preprocess)
    run = as_graph(graph).run
    target = run.target
    if target < 0:
        raise InvalidInputError("the graph has no 'target' attribute; pass a graph written by `ssa analyse`.")
    if by_prediction is None:
        by_prediction = run.grouping == "prediction"
    if min_confidence is None:
        min_confidence = run.min_confidence
    if max_per_class is None:
        max_per_class = run.max_per_class
    if lab is None and not by_prediction:
        return arr[:max_per_class] if max_per_class else arr
    return group_images(network, arr, lab, [int(target)], by_prediction=bool(by_prediction),
                        min_confidence=min_confidence, max_per_class=max_per_class,
                        for_graph=True)[int(target)].images
