"""The Python API: :func:`load_model` and :func:`analyse`."""

from __future__ import annotations

import json
import os
from typing import Any, Mapping, Sequence

import numpy as np

from .errors import InvalidInputError, PluginError
from .graph import build_graph
from .images import Preprocess, load_images, select_class
from .interfaces import Network, Rule, Selector
from .plugins import make_rule, make_selector, registry
from .results import AnalysisResult
from .sources import AutogradSource, FastSource, collect
from .store import StatsStore, images_hash
from .traversal import traverse

__all__ = ["load_model", "analyse", "check_device", "check_int", "check_target", "n_classes", "run_traversal"]


def check_int(name: str, value: Any, minimum: int, fix: str = "") -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise InvalidInputError(f"{name} must be an integer >= {minimum}, got {value!r}.{(' ' + fix) if fix else ''}")
    if value < minimum:
        raise InvalidInputError(f"{name} must be >= {minimum}, got {value}.{(' ' + fix) if fix else ''}")
    return int(value)


def check_device(device: str) -> str:
    import torch

    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError):
        raise InvalidInputError(f"device must be 'cpu', 'cuda' or 'cuda:N', got {device!r}.") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise InvalidInputError(f"device {device!r} was asked for but no CUDA GPU is available; use --device cpu.")
    if dev.type not in ("cpu", "cuda"):
        raise InvalidInputError(f"device must be 'cpu' or 'cuda', got {device!r}.")
    return str(dev)


def load_model(model: Any, *, backend: str | None = None, device: str = "cpu", **options: Any) -> Network:
    """Load ``model`` with the backend that can read it (or the one named).

    ``model`` is an ``nn.Module``, a ``.pt2`` / ``.onnx`` path, ``file.py:attr``,
    ``package.module:attr``, the built-in name ``"digits"``, or a loaded :class:`Network`.
    Options (``taps``, ``include_input``, ``channel_axes``, ``output_index``, ``name``) go to the backend.
    """
    if isinstance(model, Network):
        return model
    device = check_device(device)
    reg = registry()
    if backend is not None:
        cls = reg.get("backend", backend)
    else:
        for cls in reg.backends():
            if cls.can_load(model):
                break
        else:
            raise PluginError(f"no installed backend can load {model!r}; installed backends: {', '.join(reg.names('backend'))}.")
    return cls().load(model, device=device, **options)


def analyse(
    model: Any,
    images: Any,
    target: int,
    branching: int = 3,
    *,
    rule: str | Rule = "gradient",
    rule_params: Mapping[str, Any] | None = None,
    selector: str | Selector = "tukey",
    selector_params: Mapping[str, Any] | None = None,
    taps: Sequence[str] | None = None,
    stop_at: str | None = None,
    include_input: bool = False,
    channel_axes: Mapping[str, int] | None = None,
    output_index: int | None = None,
    labels: Any = None,
    preprocess: Preprocess | None = None,
    device: str = "cpu",
    batch_size: int = 32,
    backend: str | None = None,
    name: str | None = None,
    engine: str = "auto",
    store: str | os.PathLike | None = None,
    progress: bool = False,
) -> AnalysisResult:
    """Step-wise sensitivity analysis of class ``target`` (paper, Algorithm 1; method doc, section 3).

    Parameters
    ----------
    model : what :func:`load_model` accepts.
    images : images of the class: an array shaped for the model, a ``.npy`` file, a folder of
        PNG/JPEG files (with ``preprocess``), or ``"digits"``. With labels, only the target's images are used.
    target : the class (index into the logits).
    branching : b, how many lower neurons are kept per upper neuron and parent tap.
    rule, selector : registered names (see ``ssa plugins``) or configured instances.
    taps : tap names chosen by hand; ``stop_at`` : the lowest tap to expand down to.
    include_input : add the input image's channels as the lowest tap.
    engine : "auto" (the exact closed form where a step has one, autograd elsewhere), "fast"
        (the same, but refuse when no step has the closed form) or "autograd" (every step by autograd).
    store : a statistics store folder (see ``ssa collect``): used when it holds this model and image
        set; None computes the statistics in memory.

    Returns
    -------
    AnalysisResult with the dependency graph.
    """
    branching = check_int("branching", branching, 1, "Pass --branching 1 or more.")
    batch_size = check_int("batch_size", batch_size, 1)
    target = check_int("target", target, 0)
    rule_obj = make_rule(rule, **dict(rule_params or {}))
    selector_obj = make_selector(selector, **dict(selector_params or {}))
    options: dict[str, Any] = {"taps": taps, "include_input": include_input, "channel_axes": channel_axes,
                               "output_index": output_index}
    if name is not None:
        options["name"] = name
    network = load_model(model, backend=backend, device=device, **options)
    arr, lab = load_images(images, preprocess=preprocess, labels=labels)
    network.prepare(arr)
    check_target(network, target)
    if stop_at is not None and stop_at not in {t.name for t in network.taps}:
        raise InvalidInputError(f"stop_at {stop_at!r} is not a tap; taps are: {', '.join(t.name for t in network.taps)}.")
    indices = None if lab is None else np.flatnonzero(lab == target)
    if indices is not None and len(indices) == 0:
        select_class(arr, lab, target)  # raises the "no image is labelled" error
    source = make_source(network, arr, indices, rule_obj, engine=engine, store=store, batch_size=batch_size,
                         progress=progress)
    return run_traversal(source, network, target, branching, rule_obj, selector_obj, stop_at=stop_at,
                         progress=progress)


ENGINES = ("auto", "fast", "autograd")


def make_source(network: Network, images: np.ndarray, indices: np.ndarray | None, rule: Rule, *, engine: str = "auto",
                store: str | os.PathLike | None = None, batch_size: int = 32, progress: bool = False):
    """The relevance source for ``rule``: statistics (store or memory) with autograd fallback, or autograd."""
    if engine not in ENGINES:
        raise InvalidInputError(f"engine must be one of {', '.join(ENGINES)}, got {engine!r}.")
    fast = network.fast_taps() if engine != "autograd" and rule.fast_form else frozenset()
    if engine == "fast" and not fast:
        raise InvalidInputError(f"engine 'fast' was asked for, but no step of this model has the closed form for rule "
                                f"{rule.name!r}; use --engine auto.")
    if not fast:
        sub = images if indices is None else images[indices]
        return AutogradSource(network, sub, batch_size)
    form = rule.fast_form
    if store is not None:
        st = open_store(network, images, store)
        if st.is_complete(form):
            meta = st.meta() or {}
            return FastSource(network, st, form, images, int(meta.get("batch_size", batch_size)), indices)
        st.init(store_meta(network, images, batch_size))
        collect(network, images, [form], batch_size, store=st, progress=progress)
        return FastSource(network, st, form, images, batch_size, indices)
    sub = images if indices is None else images[indices]
    stats = collect(network, sub, [form], batch_size, progress=progress)
    return FastSource(network, stats, form, sub, batch_size)


def open_store(network: Network, images: np.ndarray, root: str | os.PathLike) -> StatsStore:
    return StatsStore(root, network.name, network.fingerprint(), images_hash(images))


def store_meta(network: Network, images: np.ndarray, batch_size: int) -> dict:
    return {"model": network.name, "n_images": int(images.shape[0]), "batch_size": int(batch_size),
            "image_shape": list(images.shape[1:]),
            "taps": [[t.name, list(t.shape), t.channel_axis, list(t.parents)] for t in network.taps]}


def n_classes(network: Network) -> int:
    """Number of logits of a prepared network."""
    for t in network.taps:
        if t.name == "logits":
            return int(t.shape[0])
    raise RuntimeError("the network has no logits tap")


def check_target(network: Network, target: int) -> int:
    n = n_classes(network)
    if not 0 <= target < n:
        raise InvalidInputError(f"target must be in [0, {n - 1}] (the model has {n} logits), got {target}.")
    return target


def run_traversal(source, network: Network, target: int, branching: int, rule: Rule, selector: Selector,
                  *, stop_at: str | None = None, progress: bool = False) -> AnalysisResult:
    """Traverse with ``source`` and assemble the result (shared by every engine)."""
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(desc=f"class {target}", unit="batch", leave=False)
    try:
        out = traverse(source, target, branching, rule, selector, stop_at=stop_at, progress=bar)
    finally:
        if bar is not None:
            bar.close()
    active = {t: (source.scalars(t) > 0).mean(axis=0) for t in out.selected}
    active.setdefault("logits", (source.scalars("logits") > 0).mean(axis=0))
    attrs = {
        "branching": branching, "rule": rule.name, "rule_params": json.dumps(rule.params, sort_keys=True),
        "selector": selector.name, "selector_params": json.dumps(selector.params, sort_keys=True),
        "model": network.name,
        "tap_neurons": json.dumps({t.name: t.n_neurons for t in network.taps}),  # layer sizes, for reports
    }
    graph = build_graph(taps=network.taps, steps=out.steps, target=target, n_images=source.n_images,
                        active=active, attrs=attrs)
    return AnalysisResult(graph=graph, target=target, branching=branching, rule=rule.name, selector=selector.name,
                          selector_params=dict(selector.params), n_images=source.n_images, model=network.name,
                          taps=tuple(network.taps), steps=out.steps, engines=dict(getattr(source, "engines", {})))
