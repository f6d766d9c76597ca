"""The step-wise traversal (method doc, section 3; paper, Algorithm 1).

The traversal is independent of how relevance is computed: a
:class:`RelevanceSource` streams the relevance tensors omega of one step in
batches of images, and the traversal applies the selector to every row,
counts outliers, ranks, keeps the top-b and recurses top-down over the tap DAG.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator, Mapping, Protocol, Sequence

import numpy as np

from .checks import call_selector
from .errors import InvalidInputError
from .interfaces import Rule, Selector, Tap

__all__ = ["RelevanceSource", "StepRecord", "Kept", "rank_neurons", "traverse", "TraversalOutput"]


class RelevanceSource(Protocol):
    """Where the traversal gets relevance from (autograd on the network, or a statistics store)."""

    taps: tuple[Tap, ...]
    n_images: int

    def iter_relevance(self, upper: str, neurons: Sequence[int], rule: Rule) -> Iterator[dict[str, np.ndarray]]:
        """Yield, batch by batch, ``{parent: omega}`` with omega of shape (len(neurons), b, K_parent)."""

    def scalars(self, tap: str) -> np.ndarray:
        """Every image's neuron scalars of ``tap``, shape (n_images, N)."""


@dataclass(frozen=True)
class Kept:
    upper: int
    lower: int
    count: int
    relevance: float
    sign: int


@dataclass(frozen=True)
class StepRecord:
    """Statistics of one step (upper tap -> parent tap) over all images.

    ``counts[j, k]`` is the number of images in which lower neuron k was a
    positive outlier for upper neuron ``neurons[j]``; ``neg_counts`` the same
    for negative outliers; ``mean[j, k]`` the mean relevance over images.
    """

    upper: str
    parent: str
    neurons: tuple[int, ...]
    counts: np.ndarray
    neg_counts: np.ndarray
    mean: np.ndarray
    kept: tuple[Kept, ...]


def rank_neurons(counts: np.ndarray, mean: np.ndarray, b: int, sign: int = 1) -> list[int]:
    """The first ``b`` neurons by count (desc), then mean relevance (desc; asc for sign -1), then index.

    Only neurons with count > 0 qualify (method doc, section 3, STEPs 3-4).
    """
    k = np.arange(counts.shape[0])
    key_mean = -mean if sign > 0 else mean
    order = np.lexsort((k, key_mean, -counts))
    return [int(i) for i in order[:b] if counts[i] > 0]


@dataclass(frozen=True)
class TraversalOutput:
    steps: tuple[StepRecord, ...]
    selected: Mapping[str, tuple[int, ...]]


def traverse(source: RelevanceSource, target: int, branching: int, rule: Rule, selector: Selector,
             *, stop_at: str | None = None, progress=None) -> TraversalOutput:
    """Run the traversal from class ``target`` of the logits down the tap DAG."""
    taps = sorted(source.taps, key=lambda t: t.order)
    by_name = {t.name: t for t in taps}
    if stop_at is not None and stop_at not in by_name:
        raise InvalidInputError(f"stop_at {stop_at!r} is not a tap; taps are: {', '.join(t.name for t in taps)}.")
    floor = by_name[stop_at].order if stop_at else -1
    sets: dict[str, set[int]] = {"logits": {int(target)}}
    steps: list[StepRecord] = []
    for tap in reversed(taps):
        if tap.order <= floor or not sets.get(tap.name) or not tap.parents:
            continue
        neurons = sorted(sets[tap.name])
        n = len(neurons)
        acc: dict[str, list[np.ndarray]] = {}
        for rel in source.iter_relevance(tap.name, neurons, rule):
            for parent, omega in rel.items():
                _, b, K = omega.shape
                rows = np.asarray(omega, dtype=np.float64).reshape(n * b, K)
                sel = call_selector(selector, rows).reshape(n, b, K)  # checked: shape, only -1 / 0 / +1
                finite = np.where(np.isfinite(omega), omega, 0.0)
                if parent not in acc:
                    acc[parent] = [np.zeros((n, K), np.int64), np.zeros((n, K), np.int64), np.zeros((n, K))]
                acc[parent][0] += (sel > 0).sum(axis=1)
                acc[parent][1] += (sel < 0).sum(axis=1)
                acc[parent][2] += finite.sum(axis=1)
            if progress is not None:
                progress.update(1)
        for parent in tap.parents:
            if parent not in acc or by_name[parent].order < floor:
                continue
            pos, neg, total = acc[parent]
            mean = total / max(source.n_images, 1)
            kept: list[Kept] = []
            for j, upper_n in enumerate(neurons):
                for k in rank_neurons(pos[j], mean[j], branching, 1):
                    kept.append(Kept(upper_n, k, int(pos[j, k]), float(mean[j, k]), 1))
                if selector.two_sided:
                    for k in rank_neurons(neg[j], mean[j], branching, -1):
                        kept.append(Kept(upper_n, k, int(neg[j, k]), float(mean[j, k]), -1))
            sets.setdefault(parent, set()).update(kp.lower for kp in kept if kp.sign > 0)
            steps.append(StepRecord(tap.name, parent, tuple(neurons), pos, neg, mean, tuple(kept)))
    return TraversalOutput(tuple(steps), {k: tuple(sorted(v)) for k, v in sets.items()})
