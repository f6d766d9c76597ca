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

__all__ = ["RelevanceSource", "StepRecord", "Kept", "rank_neurons", "traverse", "TraversalOutput", "explain_stop"]


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


def explain_stop(taps: Sequence[Tap], steps: Sequence[StepRecord], active: Mapping[str, np.ndarray],
                 rule: Rule, selector: Selector, *, stop_at: str | None = None) -> list[str]:
    """Why a graph stops above the lowest tap it could reach, and what to try (empty when it does not stop).

    For each step out of the graph's taps that kept nothing, one of: the upper neurons never fire on the
    images (their relevance rows are all zero), the relevance is zero on every image, or the selector
    found no outliers (with its parameters). A model without taps below the logits is said as such.
    """
    by_name = {t.name: t for t in taps}
    logits = by_name.get("logits")
    if logits is not None and not logits.parents:
        return ["the model has no taps below the logits (no activation functions were found), so the graph is only "
                "the class node; name taps with --taps, or add the input's channels with --include-input"]
    floor = by_name[stop_at].order if stop_at else None
    lowest_possible = min(t.order for t in taps if floor is None or t.order >= floor)  # stop_at itself is reached
    nodes = {"logits"} | {s.parent for s in steps if any(kp.sign > 0 for kp in s.kept)}
    if min(by_name[n].order for n in nodes) <= lowest_possible:
        return []
    notes = []
    params = ", ".join(f"{k}={v}" for k, v in selector.params.items())
    for s in steps:
        if any(kp.sign > 0 for kp in s.kept) or s.upper not in nodes:
            continue
        frac = active.get(s.upper)
        upper_active = None if frac is None or s.upper == "logits" else np.asarray(frac)[list(s.neurons)]
        where = f"step {s.upper} -> {s.parent}"
        if upper_active is not None and not (upper_active > 0).any():
            tip = ("try --rule gradient_x_activation" if rule.name == "gradient" else
                   "try other images of the class, or --stop-at above this tap")
            notes.append(f"the graph stops at {s.upper}: its {len(s.neurons)} kept neuron(s) never fire on these images, "
                         f"so every relevance row of {where} is zero; {tip}")
        elif not np.any(s.mean):
            notes.append(f"the graph stops at {s.upper}: the relevance of {where} is zero on every image; try "
                         "--rule gradient_x_activation or other images")
        else:
            lower = {"tukey": "--selector-param k=1", "mad": "--selector-param threshold=2.5",
                     "zscore": "--selector-param threshold=2"}.get(selector.name, "a lower selector threshold")
            others = " or ".join(f"--selector {n}" for n in ("mad", "topk") if n != selector.name)
            notes.append(f"the graph stops at {s.upper}: no outliers at {where} with selector {selector.name} "
                         f"({params}); try {lower}, or {others}")
    if not notes:
        notes.append(f"the graph stops at {by_name[min(nodes, key=lambda n: by_name[n].order)].name}, above the "
                     "lowest tap; try a lower selector threshold or --rule gradient_x_activation")
    return notes
