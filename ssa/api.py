"""The Python API: :func:`load_model` and :func:`analyse`.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from ssa.core.checks import check_int, check_label_range, check_stop_at
from ssa.core.interfaces import Rule, Selector
from ssa.core.options import ModelSpec, RunOptions, option_fields
from ssa.io.classmap import check_class_count
from ssa.io.folders import files_preprocessing, folder_class_map, load_grouped_images
from ssa.io.images import Preprocess
from ssa.plugins import make_selector
from ssa.results import AnalysisResult
from ssa.session import Session, load_model, n_classes
from ssa.targets import all_classes, group_images, parse_targets

__all__ = ["analyse", "analyse_many", "load_model"]

def _options(given: Mapping[str, Any]) -> tuple[ModelSpec, RunOptions]:
    """The :class:`ModelSpec` and :class:`RunOptions` of an API function's keywords (its ``locals()``), checked
    there: the keywords are their fields, with the same names and defaults."""
    model = {k: given[k] for k in option_fields(ModelSpec) if k in given and k not in ("source", "options")}
    run = {k: given[k] for k in option_fields(RunOptions) if k in given}
    return ModelSpec(given["model"], **model), RunOptions(**run)


def analyse(
    model: Any,
    images: Any,
    target: int,
    branching: int = 3,
    *,
    rule: str | Rule | None = None,
    rule_params: Mapping[str, Any] | None = None,
    selector: str | Selector | None = None,
    selector_params: Mapping[str, Any] | None = None,
    preset: str | None = None,
    taps: Sequence[str] | None = None,
    stop_at: str | None = None,
    include_input: bool = False,
    channel_axes: Mapping[str, int] | None = None,
    tokens: str = "all",
    output_index: int | None = None,
    labels: Any = None,
    preprocess: Preprocess | None = None,
    device: str = "cpu",
    batch_size: int | None = None,
    backend: str | None = None,
    name: str | None = None,
    engine: str = "auto",
    fast_math: bool = False,
    store: str | os.PathLike | None = None,
    store_mode: str = "fill",
    progress: bool = False,
) -> AnalysisResult:
    """Step-wise sensitivity analysis of class ``target`` (paper, Algorithm 1; method doc, section 3).

    Parameters
    ----------
    model : what :func:`load_model` accepts.
    images : images of the class: an array shaped for the model, a ``.npy`` file, a folder of
        PNG/JPEG files (with ``preprocess``; with one sub-folder per class: the class's folder is used), or
        ``"digits"``. With labels, only the target's images are used.
    labels : integer labels (array or ``.npy``), one per image, or for class folders a
        :class:`~ssa.io.classmap.ClassMap` (``ssa.class_map("imagenet")``: which folder is which class).
    target : the class (index into the logits).
    branching : b, how many lower neurons are kept per upper neuron and parent tap.
    rule, selector : registered names (see ``ssa plugins``) or configured instances; default
        ``gradient_x_activation`` and ``mad`` (chosen by ``ssa evaluate``: see :mod:`ssa.core.defaults`).
    preset : ``"paper"``: the paper's exact configuration (rule ``gradient``, Tukey k = 1.5, positive
        outliers only); then ``rule``, ``selector`` and their parameters must not be given.
    taps : tap names chosen by hand; ``stop_at`` : the lowest tap to expand down to.
    include_input : add the input image's channels as the lowest tap.
    tokens : ``"all"`` (a token tap's tokens aggregated as positions) or ``"cls"`` (the class token alone, ViT
        and DeiT; refused for a model without one).
    engine : "auto" (the exact closed form where a step has one, autograd elsewhere), "fast"
        (the same, but refuse when no step has the closed form) or "autograd" (every step by autograd).
    fast_math : on CUDA, allow TF32 in matrix products and convolutions (faster; graphs may differ from the
        exact run's; no statistics store is used); no effect on the CPU.
    store : a statistics store folder (see ``ssa collect``): used when it holds this model and image
        set; None computes the statistics in memory.
    store_mode : "fill" (default) collects into the store what it lacks; "read" uses the store only
        when it already holds this model and image set, and computes in memory otherwise.

    Returns
    -------
    AnalysisResult with the dependency graph.
    """
    spec, options = _options(locals())
    target = check_int("target", target, 0)
    session = Session.from_options(spec, images, options, labels=labels, preprocess=preprocess, only_target=target)
    return session.analyse(target)


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
    tokens: str = "all",
    output_index: int | None = None,
    preprocess: Preprocess | None = None,
    device: str = "cpu",
    batch_size: int | None = None,
    backend: str | None = None,
    name: str | None = None,
    engine: str = "auto",
    fast_math: bool = False,
    store: str | os.PathLike | None = None,
    store_mode: str = "fill",
    progress: bool = False,
) -> dict[int, AnalysisResult]:
    """Dependency graphs of several classes (paper, section 4), the model loaded and prepared once.

    Parameters
    ----------
    model, images, branching, rule, selector, preset, engine, store, ... : as for :func:`ssa.analyse`. ``images``
        may also be a folder with one sub-folder per class named by its index (``folder/3/*.png``).
    targets : ``"all"`` (the classes present in the images: every labelled class; every logit when grouping by
        prediction or without labels), a list of class indices, or ``"0,3,5"``.
    labels : integer labels (array or ``.npy``), one per image; not needed for ``"digits"`` or class folders,
        whose folder names say the class (numbers), or a :class:`~ssa.io.classmap.ClassMap` does
        (``ssa.class_map("imagenet")``, a ``.json``/``.csv`` file: ``--class-map``).
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
    spec, options = _options(locals())
    wanted = parse_targets(targets) if isinstance(targets, str) else parse_targets(list(targets))
    method = options.method
    make_selector(method.selector, **method.selector_params)  # refuse a bad selector before any work
    folders = folder_class_map(images, labels)  # class folders: {folder: class}, recorded in every graph
    arr, lab = load_grouped_images(images, labels=labels, preprocess=preprocess)
    session = Session.from_options(spec, arr, options)
    network = session.network  # loads and prepares the model once
    n = n_classes(network)
    check_class_count(folders, n)
    if not by_prediction:  # grouped by prediction, the labels are not used
        check_label_range(lab, n)
    classes = all_classes(n, lab, by_prediction) if isinstance(wanted, str) else parse_targets(wanted, n)  # "all"
    check_stop_at(stop_at, (t.name for t in network.taps))
    all_images = session.images
    assert all_images is not None  # loaded with the network
    groups = group_images(network, all_images, lab, classes, by_prediction=by_prediction,
                          min_confidence=min_confidence, max_per_class=max_per_class)
    chosen = {c: groups[c].indices for c in classes}
    union = np.unique(np.concatenate(list(chosen.values())))
    if session.store is None and union.size < all_images.shape[0]:
        # statistics only for the images some class uses (nothing is computed before the first analyse);
        # with a store, the whole set is kept so that it matches `ssa collect` on the same images
        session.restrict(union)
        chosen = {c: np.searchsorted(union, idx) for c, idx in chosen.items()}
    results: dict[int, AnalysisResult] = {}
    for c in classes:
        res = session.analyse(c, indices=chosen[c])  # the options' branching, selector and stop_at
        res.graph.graph["grouping"] = "prediction" if by_prediction else "labels"
        if min_confidence is not None:
            res.graph.graph["min_confidence"] = float(min_confidence)
        if max_per_class is not None:
            res.graph.graph["max_per_class"] = int(max_per_class)
        if folders:
            res.graph.graph["class_map"] = dict(folders)
        if files_preprocessing(images, preprocess) is not None:
            res.graph.graph["preprocess"] = files_preprocessing(images, preprocess)
        results[c] = res
    return results
