"""Scoring ablations of a network on one class's images: the three ablations, the three metrics, bootstrap intervals.

A :class:`Scorer` holds what every ablation of one class shares: the network's
:class:`~ssa.core.capabilities.Ablator`, the images scored, their unablated logits, the donors of the
resample ablation and the bootstrap weights. :meth:`Scorer.effect` runs one ablation (or one per random
draw) and returns an :class:`Effect`: three metrics, each an :class:`Interval`.

Conventions (the field's, written down because the paper has none):

* **ablations** (:data:`ABLATIONS`; Miller et al., COLM 2024, show they can rank circuits differently):
  ``"zero"`` sets an ablated neuron's channel to 0; ``"mean"`` to its per-position mean map over the
  ``mean_images`` (``ssa evaluate``: **every loaded image, i.e. the data set**, not the class's images);
  ``"resample"``: each ablated neuron of each image takes its value on a donor image drawn, independently
  per image, tap and neuron, uniformly from the pool images of **another class** than the scored class
  (``numpy.random.default_rng([seed, 2])``; the pool is ``ssa evaluate``'s loaded images with their labels,
  or the model's predicted classes without labels). The donors are drawn once per class and shared by every
  ablation of that class (the graph's, the random sets', every size of a curve): common random numbers.
* **metrics** over the scored images, class ``t``: ``logit_drop`` = mean(base logit_t - ablated logit_t);
  ``accuracy`` = share of images still classified as ``t`` (arg-max); ``kl`` = mean KL(softmax(base) ||
  softmax(ablated)) in nats; ``recovered`` = (m(ablated) - m(empty)) / (m(full) - m(empty)) with m the mean
  class logit and "empty" every neuron of the taps in scope ablated (the normalised faithfulness of MIB's
  CPR / CMD; 1: the full model's logit, 0: nothing left; NaN when m(full) = m(empty)).
* **intervals**: percentile bootstrap, 95 %, ``n_boot`` replicates drawing the images with replacement
  (``numpy.random.default_rng([seed, 1])``; one set of replicates per class, shared by every ablation: paired);
  random sets draw their draws with replacement too (images and draws resampled jointly,
  ``default_rng([seed, 3, draws])``). ``value`` is the
  estimate on all images (and all draws).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

from ssa.core.capabilities import SupportsAblation, unsupported
from ssa.core.interfaces import Network
from ssa.errors import InvalidInputError

__all__ = ["ABLATIONS", "CONFIDENCE", "Interval", "Effect", "Scorer", "check_ablation", "draw_donors",
           "interval", "kl_divergence"]

ABLATIONS = ("zero", "mean", "resample")
CONFIDENCE = 0.95


def check_ablation(ablation: str) -> str:
    if ablation not in ABLATIONS:
        raise InvalidInputError(f"ablation must be one of {', '.join(ABLATIONS)}, got {ablation!r}.")
    return ablation


@dataclass(frozen=True)
class Interval:
    """An estimate and its bootstrap confidence interval (:data:`CONFIDENCE`)."""

    value: float
    low: float
    high: float

    def overlaps(self, other: Interval) -> bool:
        return bool(self.low <= other.high and other.low <= self.high)

    def text(self, digits: int = 2) -> str:
        return f"{self.value:.{digits}f} [{self.low:.{digits}f}, {self.high:.{digits}f}]"


def interval(value: float, replicates: np.ndarray) -> Interval:
    """``value`` with the percentile interval of its bootstrap ``replicates`` (NaN replicates left out)."""
    reps = np.asarray(replicates, dtype=np.float64)
    reps = reps[np.isfinite(reps)]
    if reps.size == 0:
        return Interval(float(value), float("nan"), float("nan"))
    tail = 100 * (1 - CONFIDENCE) / 2
    low, high = np.percentile(reps, [tail, 100 - tail])
    return Interval(float(value), float(low), float(high))


@dataclass(frozen=True)
class Effect:
    """What one ablation (or the random sets' ablations) does to the class: see the module docstring."""

    logit_drop: Interval
    accuracy: Interval
    kl: Interval
    recovered: Interval
    recovered_replicates: np.ndarray = field(default_factory=lambda: np.zeros(0), repr=False, compare=False)


def kl_divergence(base: np.ndarray, ablated: np.ndarray) -> np.ndarray:
    """Per row: KL(softmax(base) || softmax(ablated)) in nats."""
    def log_softmax(x: np.ndarray) -> np.ndarray:
        z = x - x.max(axis=1, keepdims=True)
        return z - np.log(np.exp(z).sum(axis=1, keepdims=True))

    lp, lq = log_softmax(base), log_softmax(ablated)
    return np.asarray((np.exp(lp) * (lp - lq)).sum(axis=1))


def draw_donors(target: int, pool_classes: np.ndarray, n_images: int, n_neurons: Mapping[str, int],
                rng: np.random.Generator) -> dict[str, np.ndarray]:
    """Per tap, ``(n_images, n_neurons)`` positions in the pool, each of an image whose class is not ``target``."""
    others = np.flatnonzero(np.asarray(pool_classes) != target)
    if others.size == 0:
        raise InvalidInputError(
            f"the resample ablation needs images of another class than {target} to take activations from; the "
            "loaded images are all of that class. Load images of other classes too, or use --ablation zero or mean.")
    return {t: others[rng.integers(0, others.size, size=(n_images, n))] for t, n in n_neurons.items()}


class Scorer:
    """Everything the ablations of one class share (see the module docstring).

    Parameters
    ----------
    network : a prepared network with :class:`~ssa.core.capabilities.SupportsAblation`.
    images : the scored images (all of class ``target``).
    target : the class.
    ablation : one of :data:`ABLATIONS`.
    taps : the taps that may be ablated (their mean maps or donor values are prepared).
    mean_images : the images of the ``"mean"`` ablation's mean maps.
    pool_images, pool_classes : the donor pool of ``"resample"`` and the class of each pool image.
    seed : seeds the donors (``[seed, 2]``) and the bootstrap (``[seed, 1]``).
    n_boot : bootstrap replicates (0: intervals are NaN).
    batch_size : images per forward pass.
    """

    def __init__(self, network: Network, images: np.ndarray, target: int, ablation: str, taps: Sequence[str], *,
                 mean_images: np.ndarray | None = None, pool_images: np.ndarray | None = None,
                 pool_classes: np.ndarray | None = None, seed: int = 0, n_boot: int = 1000,
                 batch_size: int = 256, what: str = "ssa evaluate") -> None:
        if not isinstance(network, SupportsAblation):
            raise unsupported(network, SupportsAblation, what)
        self.ablation = check_ablation(ablation)
        self.ablator = network.ablator(batch_size)
        self.images = images
        self.target = int(target)
        self.n_neurons = {t.name: t.n_neurons for t in network.taps}
        self.donors: dict[str, np.ndarray] | None = None
        if ablation == "mean":
            self.ablator.fit_means(images if mean_images is None else mean_images, list(taps))
        elif ablation == "resample":
            if pool_images is None or pool_classes is None:
                raise InvalidInputError("the resample ablation needs a donor pool: images of other classes and "
                                        "their classes.")
            self.ablator.fit_pool(pool_images, list(taps))
            self.donors = draw_donors(self.target, pool_classes, images.shape[0],
                                      {t: self.n_neurons[t] for t in taps}, np.random.default_rng([seed, 2]))
        self.base = self.ablator.logits(images, {}, ablation)
        n = images.shape[0]
        self.seed = seed
        rng = np.random.default_rng([seed, 1])
        self.weights = rng.multinomial(n, np.full(n, 1.0 / n), size=n_boot).astype(np.float64) / n
        self._empty: dict[tuple[str, ...], np.ndarray] = {}
        self._effects: dict[tuple, Effect] = {}

    @property
    def base_logit(self) -> np.ndarray:
        return self.base[:, self.target]

    def logits(self, ablate: Mapping[str, np.ndarray]) -> np.ndarray:
        return self.ablator.logits(self.images, ablate, self.ablation, self.donors)

    def empty_logit(self, scope: Sequence[str]) -> np.ndarray:
        """Per image: the class logit with every neuron of the taps in ``scope`` ablated (cached)."""
        key = tuple(sorted(scope))
        if key not in self._empty:
            self._empty[key] = self.logits({t: np.arange(self.n_neurons[t]) for t in key})[:, self.target]
        return self._empty[key]

    def _replicates(self, values: np.ndarray) -> np.ndarray:
        """Bootstrap means of ``values`` (draws, images): images and draws resampled jointly."""
        per_draw = values @ self.weights.T  # (draws, replicates)
        d = values.shape[0]
        if d == 1:
            return per_draw[0]
        # the same resampled draws for every effect with d draws (no state: a row never depends on the rows before)
        draw_w = np.random.default_rng([self.seed, 3, d]).multinomial(d, np.full(d, 1.0 / d),
                                                                      size=self.weights.shape[0]) / d
        return np.asarray((draw_w * per_draw.T).sum(axis=1))

    def effect(self, sets: Sequence[Mapping[str, np.ndarray]], scope: Sequence[str]) -> Effect:
        """The :class:`Effect` of ablating each of ``sets`` (one: a fixed set; several: random draws, averaged).

        ``scope`` : the taps whose "everything ablated" is the 0 of ``recovered``. Effects are cached by their
        sets and scope (graphs of several sizes or selectors often share a set, random sets their sizes).
        """
        key = (tuple(sorted(scope)),
               tuple(tuple((t, np.asarray(v, np.int64).tobytes()) for t, v in sorted(s.items())) for s in sets))
        if key not in self._effects:
            self._effects[key] = self._effect(sets, scope)
        return self._effects[key]

    def _effect(self, sets: Sequence[Mapping[str, np.ndarray]], scope: Sequence[str]) -> Effect:
        ablated = np.stack([self.logits(s) for s in sets])  # (draws, images, classes)
        t = self.target
        logit = ablated[:, :, t]
        hits = (ablated.argmax(axis=2) == t).astype(np.float64)
        kls = np.stack([kl_divergence(self.base, a) for a in ablated])
        base, empty = self.base_logit, self.empty_logit(scope)
        w = self.weights
        reps = {name: self._replicates(values)
                for name, values in (("drop", base[None, :] - logit), ("acc", hits), ("kl", kls), ("logit", logit))}
        with np.errstate(divide="ignore", invalid="ignore"):
            full_r, empty_r = base @ w.T, empty @ w.T
            rec_r = (reps["logit"] - empty_r) / (full_r - empty_r)
            den = base.mean() - empty.mean()
            rec = float((logit.mean() - empty.mean()) / den) if den != 0 else float("nan")
        return Effect(
            logit_drop=interval(float((base[None, :] - logit).mean()), reps["drop"]),
            accuracy=interval(float(hits.mean()), reps["acc"]),
            kl=interval(float(kls.mean()), reps["kl"]),
            recovered=interval(rec, rec_r), recovered_replicates=rec_r,
        )
