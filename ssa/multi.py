"""Several classes at once: :func:`analyse_many` (paper, section 4: one graph per class).

The model is loaded and prepared **once**; the images are grouped by class, from
labels (a labels array or file, the built-in digits' labels, or sub-folders named by
class: ``folder/3/*.png``) or from the model's own predictions, optionally keeping
only the images whose predicted probability for the class reaches a threshold (the
paper used training images with probability > 0.99 for the correct class). Each class
is then traversed exactly as :func:`ssa.analyse` does.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

import numpy as np

from .api import check_int, n_classes
from .errors import InvalidInputError
from .images import IMAGE_SUFFIXES, Preprocess, load_images, validate_images
from .interfaces import Network, Rule, Selector
from .plugins import make_selector
from .results import AnalysisResult

__all__ = ["analyse_many", "ClassImages", "group_images", "images_for_graph", "load_grouped_images", "parse_targets",
           "class_folders", "class_probabilities"]


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


def class_folders(path: str | os.PathLike) -> dict[int, Path] | None:
    """``{class: folder}`` when ``path`` is a folder of sub-folders named by integer class, else None."""
    p = Path(path)
    if not p.is_dir():
        return None
    if any(f.is_file() and f.suffix.lower() in IMAGE_SUFFIXES for f in p.iterdir()):
        return None
    subs = {}
    for d in p.iterdir():
        if d.is_dir() and d.name.isdigit():
            subs[int(d.name)] = d
    return dict(sorted(subs.items())) or None


def load_grouped_images(spec: Any, *, labels: Any = None, preprocess: Preprocess | None = None
                        ) -> tuple[np.ndarray, np.ndarray | None]:
    """Images and labels; a folder of class sub-folders (``folder/3/*.png``) gives labels from the folder names."""
    if isinstance(spec, (str, os.PathLike)) and spec != "digits":
        folders = class_folders(spec)
        if folders is not None:
            from .images import _read_folder

            parts, labs = [], []
            for c, folder in folders.items():
                arr, _ = _read_folder(folder, preprocess or Preprocess())
                if parts and arr.shape[1:] != parts[0].shape[1:]:
                    raise InvalidInputError(
                        f"images in {str(folder)!r} have shape {arr.shape[1:]}, others {parts[0].shape[1:]}; "
                        "pass --resize H,W.")
                parts.append(arr)
                labs.append(np.full(arr.shape[0], c, np.int64))
            lab = np.concatenate(labs)
            if labels is not None:
                raise InvalidInputError("--labels cannot be combined with class sub-folders; the folder names are "
                                        "the labels. Drop --labels.")
            return validate_images(np.concatenate(parts)), lab
    return load_images(spec, preprocess=preprocess, labels=labels)


def class_probabilities(network: Network, images: np.ndarray, batch_size: int = 256) -> np.ndarray:
    """Class probabilities of every image, shape (n_images, n_classes).

    A network that can say them itself (an ONNX model: onnxruntime runs the original file) does;
    otherwise they are the softmax of the logits.
    """
    own = getattr(network, "class_probabilities", None)
    if callable(own):
        parts = [np.asarray(own(images[i:i + batch_size]), dtype=np.float64)
                 for i in range(0, images.shape[0], batch_size)]
        probs = np.concatenate(parts) if parts else np.zeros((0, n_classes(network)))
    else:
        out = []
        for i in range(0, images.shape[0], batch_size):
            z = np.asarray(network.logits(images[i:i + batch_size]), dtype=np.float64)
            z = z - z.max(axis=1, keepdims=True)
            e = np.exp(z)
            out.append(e / e.sum(axis=1, keepdims=True))
        probs = np.concatenate(out) if out else np.zeros((0, n_classes(network)))
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
    targets = list(targets)
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


def analyse_many(
    model: Any,
    images: Any,
    targets: str | Sequence[int] = "all",
    branching: int = 3,
    *,
    labels: Any = None,
    by_prediction: bool = False,
    min_confidence: float | None = None,
    max_per_class: int | None = None,
    rule: str | Rule | None = None,
    rule_params: Mapping[str, Any] | None = None,
    selector: str | Selector | None = None,
    selector_params: Mapping[str, Any] | None = None,
    preset: str | None = None,
    taps: Sequence[str] | None = None,
    stop_at: str | None = None,
    include_input: bool = False,
    channel_axes: Mapping[str, int] | None = None,
    output_index: int | None = None,
    preprocess: Preprocess | None = None,
    device: str = "cpu",
    batch_size: int = 32,
    backend: str | None = None,
    name: str | None = None,
    engine: str = "auto",
    store: str | os.PathLike | None = None,
    store_mode: str = "fill",
    progress: bool = False,
) -> dict[int, AnalysisResult]:
    """Dependency graphs of several classes (paper, section 4), the model loaded and prepared once.

    Parameters
    ----------
    model, images, branching, rule, selector, preset, engine, store, ... : as for :func:`ssa.analyse`. ``images``
        may also be a folder with one sub-folder per class named by its index (``folder/3/*.png``).
    targets : ``"all"`` (every logit), a list of class indices, or ``"0,3,5"``.
    labels : integer labels (array or ``.npy``), one per image; not needed for ``"digits"`` or class folders.
    by_prediction : group the images by the model's argmax prediction instead of by labels.
    min_confidence : keep only images whose softmax probability of the class is >= this.
    max_per_class : keep at most this many images per class (the first ones).

    Returns
    -------
    ``{class: AnalysisResult}`` in class order. Each graph records how its images were chosen in
    its attributes ``grouping`` ("labels" or "prediction"), ``min_confidence`` and ``max_per_class``.
    With the fast engine the per-image statistics are computed once for the whole image set
    (or read from ``store``) and shared by every class.
    """
    from .api import Session

    from .defaults import resolve_method

    branching = check_int("branching", branching, 1, "Pass --branching 1 or more.")
    wanted = parse_targets(targets) if isinstance(targets, str) else parse_targets(list(targets))
    rule, rule_params, selector, selector_params = resolve_method(preset, rule, rule_params, selector, selector_params)
    make_selector(selector, **dict(selector_params or {}))  # refuse a bad selector before any work
    arr, lab = load_grouped_images(images, labels=labels, preprocess=preprocess)
    session = Session(model, arr, rule=rule, rule_params=rule_params, taps=taps, include_input=include_input,
                      channel_axes=channel_axes, output_index=output_index, device=device, batch_size=batch_size,
                      backend=backend, name=name, engine=engine, store=store, store_mode=store_mode, progress=progress)
    network = session.network  # loads and prepares the model once
    n = n_classes(network)
    classes = list(range(n)) if wanted == "all" else parse_targets(list(wanted), n)
    if stop_at is not None and stop_at not in {t.name for t in network.taps}:
        raise InvalidInputError(
            f"stop_at {stop_at!r} is not a tap; taps are: {', '.join(t.name for t in network.taps)}.")
    groups = group_images(network, session.images, lab, classes, by_prediction=by_prediction,  # type: ignore[arg-type]
                          min_confidence=min_confidence, max_per_class=max_per_class)
    chosen = {c: groups[c].indices for c in classes}
    union = np.unique(np.concatenate(list(chosen.values())))
    if session.store is None and union.size < session.images.shape[0]:  # type: ignore[union-attr]
        # statistics only for the images some class uses (nothing is computed before the first analyse);
        # with a store, the whole set is kept so that it matches `ssa collect` on the same images
        session.restrict(union)
        chosen = {c: np.searchsorted(union, idx) for c, idx in chosen.items()}
    results: dict[int, AnalysisResult] = {}
    for c in classes:
        res = session.analyse(c, branching, selector=selector, selector_params=selector_params, stop_at=stop_at,
                              indices=chosen[c])
        res.graph.graph["grouping"] = "prediction" if by_prediction else "labels"
        if min_confidence is not None:
            res.graph.graph["min_confidence"] = float(min_confidence)
        if max_per_class is not None:
            res.graph.graph["max_per_class"] = int(max_per_class)
        results[c] = res
    return results


def images_for_graph(network: Network, graph: Any, images: Any, *, labels: Any = None,
                     preprocess: Preprocess | None = None, by_prediction: bool | None = None,
                     min_confidence: float | None = None, max_per_class: int | None = None) -> np.ndarray:
    """The images of a graph's class, chosen the way :func:`analyse_many` chose them.

    The graph's attributes (``target``, ``grouping``, ``min_confidence``, ``max_per_class``) give the
    defaults; arguments that are not None override them. Without labels or predictions every image is
    taken to belong to the class (as :func:`ssa.analyse` does). ``network`` must be prepared.
    """
    arr, lab = load_grouped_images(images, labels=labels, preprocess=preprocess)
    attrs = graph.graph
    target = attrs.get("target")
    if target is None:
        raise InvalidInputError("the graph has no 'target' attribute; pass a graph written by `ssa analyse`.")
    if by_prediction is None:
        by_prediction = attrs.get("grouping") == "prediction"
    if min_confidence is None:
        min_confidence = attrs.get("min_confidence")
    if max_per_class is None:
        max_per_class = attrs.get("max_per_class")
    if lab is None and not by_prediction:
        return arr[:max_per_class] if max_per_class else arr
    return group_images(network, arr, lab, [int(target)], by_prediction=bool(by_prediction),
                        min_confidence=min_confidence, max_per_class=max_per_class,
                        for_graph=True)[int(target)].images
