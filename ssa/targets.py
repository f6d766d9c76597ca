"""Which images are each class's: target lists, and grouping by labels or predictions with confidence thresholds.

Below the public API (:func:`ssa.analyse_many` chooses each class's images with :func:`group_images`) and above
the :class:`~ssa.session.Session`; :mod:`ssa.analysis.grouping` re-exports these names and adds
:func:`~ssa.analysis.grouping.images_for_graph` (a graph's images, from its attributes).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import overload

import numpy as np

from ssa.core.capabilities import SupportsClassProbabilities
from ssa.core.checks import check_int
from ssa.core.interfaces import Network
from ssa.errors import InvalidInputError
from ssa.session import check_target, n_classes

__all__ = ['ClassImages', 'parse_targets', 'all_classes', 'class_probabilities', 'group_images']


@dataclass(frozen=True)
class ClassImages:
    """The images chosen for one class.

    target : the class.
    images : float32 array (n, ...) shaped for the model.
    indices : positions of these images in the full image set.
    confidence : the model's softmax probability of ``target`` for each image (None when not computed).
    """

    target: int
    images: np.ndarray
    indices: np.ndarray
    confidence: np.ndarray | None = None


@overload
def parse_targets(text: Sequence[int], n: int | None = None) -> list[int]: ...


@overload
def parse_targets(text: str | Sequence[int] | None, n: int | None = None) -> list[int] | str: ...


def parse_targets(text: str | Sequence[int] | None, n: int | None = None) -> list[int] | str:
    """``"0,3,5"`` -> ``[0, 3, 5]``; ``"all"`` stays ``"all"`` (resolved once the model is known)."""
    if text is None:
        raise InvalidInputError("targets must be 'all' or comma-separated class indices, got None.")
    if isinstance(text, str):
        if text.strip().lower() == "all":
            return "all"
        try:
            vals = [int(v) for v in text.split(",") if v.strip()]
        except ValueError:
            raise InvalidInputError(
                f"--targets must be 'all' or comma-separated class indices like 0,3,5, got {text!r}.") from None
    else:
        vals = [check_int("targets entry", v, 0) for v in text]
    if not vals:
        raise InvalidInputError(f"--targets names no class, got {text!r}; pass e.g. 0,3,5 or all.")
    if len(set(vals)) != len(vals):
        raise InvalidInputError(f"--targets lists a class twice, got {text!r}; list each class once.")
    for v in vals:
        if v < 0:
            raise InvalidInputError(f"--targets must be class indices >= 0, got {v} in {text!r}.")
        if n is not None and v >= n:
            raise InvalidInputError(f"--targets must be in [0, {n - 1}] (the model has {n} logits), got {v}.")
    return vals


def all_classes(n: int, labels: np.ndarray | None, by_prediction: bool = False) -> list[int]:
    """What ``--targets all`` means: the classes present in the images (every class with a labelled image), or
    every logit when the images are grouped by prediction or have no labels."""
    if labels is None or by_prediction:
        return list(range(n))
    return [int(c) for c in np.unique(labels) if 0 <= c < n]


def class_probabilities(network: Network, images: np.ndarray, batch_size: int = 256) -> np.ndarray:
    """Class probabilities of every image, shape (n_images, n_classes).

    A network that computes them itself (:class:`~ssa.core.capabilities.SupportsClassProbabilities`: an ONNX
    model, whose original file onnxruntime runs) does; for any other they are the softmax of the logits.
    """
    if isinstance(network, SupportsClassProbabilities):
        parts = [np.asarray(network.class_probabilities(images[i:i + batch_size]), dtype=np.float64)
                 for i in range(0, images.shape[0], batch_size)]
    else:
        parts = []
        for i in range(0, images.shape[0], batch_size):
            z = np.asarray(network.logits(images[i:i + batch_size]), dtype=np.float64)
            z = z - z.max(axis=1, keepdims=True)
            e = np.exp(z)
            parts.append(e / e.sum(axis=1, keepdims=True))
    probs = np.concatenate(parts) if parts else np.zeros((0, n_classes(network)))
    bad = ~np.isfinite(probs).all(axis=1)
    if bad.any():
        raise InvalidInputError(
            f"the model's outputs are NaN or infinite on {int(bad.sum())} of the {probs.shape[0]} images (first: image "
            f"{int(np.flatnonzero(bad)[0])}), so they cannot be grouped by prediction; check the model's weights and "
            "the images' scaling.")
    return probs


def group_images(network: Network, images: np.ndarray, labels: np.ndarray | None, targets: Iterable[int], *,
                 by_prediction: bool = False, min_confidence: float | None = None,
                 max_per_class: int | None = None, batch_size: int = 256,
                 for_graph: bool = False) -> dict[int, ClassImages]:
    """Choose each class's images (``network`` must be prepared).

    By labels (default) or by the model's argmax prediction (``by_prediction``); with
    ``min_confidence`` only images whose softmax probability of the class is >= it are kept;
    ``max_per_class`` keeps the first that many. A class left without images is an error
    (``for_graph``: the message speaks of the graph's images instead of ``--targets``).
    """
    targets = [check_target(network, int(c)) for c in targets]
    if min_confidence is not None and not 0.0 <= float(min_confidence) <= 1.0:
        raise InvalidInputError(f"min_confidence must be in [0, 1], got {min_confidence}.")
    if max_per_class is not None:
        max_per_class = check_int("max_per_class", max_per_class, 1, "Pass --max-per-class 1 or more.")
    if not by_prediction and labels is None and len(targets) == 1:
        labels = np.full(images.shape[0], targets[0])  # one class, no labels: all the images are that class's
    if not by_prediction and labels is None:
        raise InvalidInputError(
            "the images have no labels, so they cannot be grouped by class; pass --labels labels.npy, "
            "a folder with one sub-folder per class (folder/3/*.png), or --by-prediction.")
    probs = None
    if by_prediction or min_confidence is not None:
        probs = class_probabilities(network, images, batch_size)
    if by_prediction:
        assert probs is not None
        assigned = probs.argmax(axis=1)
    else:
        assigned = np.asarray(labels).reshape(-1)
    out: dict[int, ClassImages] = {}
    for c in targets:
        idx = np.flatnonzero(assigned == c)
        how = "predicted as" if by_prediction else "labelled"
        if idx.size == 0:
            if for_graph:
                raise InvalidInputError(f"no image is {how} class {c}, the graph's class; pass the images (and "
                                        "--labels) the graph was made with.")
            raise InvalidInputError(f"no image is {how} class {c}; drop it from --targets or add images of it.")
        conf = probs[idx, c] if probs is not None else None
        if min_confidence is not None:
            assert conf is not None
            keep = conf >= float(min_confidence)
            if not keep.any():
                drop = "pass the images the graph was made with" if for_graph else f"drop class {c} from --targets"
                raise InvalidInputError(
                    f"class {c} has no image with probability >= {min_confidence:g} (best {conf.max():.3g} of "
                    f"{idx.size} {how} it); lower --min-confidence or {drop}.")
            idx, conf = idx[keep], conf[keep]
        if max_per_class is not None:
            idx = idx[:max_per_class]
            conf = conf[:max_per_class] if conf is not None else None
        out[c] = ClassImages(c, images[idx], idx, conf)
    return out
