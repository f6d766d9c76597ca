"""The Python API: :func:`load_model` and :func:`analyse`."""

from __future__ import annotations

import json
from typing import Any, Mapping, Sequence

import numpy as np

from .errors import InvalidInputError, PluginError
from .graph import build_graph
from .images import Preprocess, load_images, select_class
from .interfaces import Network, Rule, Selector
from .plugins import make_rule, make_selector, registry
from .results import AnalysisResult
from .sources import AutogradSource
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
    arr, _ = select_class(arr, lab, target)
    if stop_at is not None and stop_at not in {t.name for t in network.taps}:
        raise InvalidInputError(f"stop_at {stop_at!r} is not a tap; taps are: {', '.join(t.name for t in network.taps)}.")
    source = AutogradSource(network, arr, batch_size)
    return run_traversal(source, network, target, branching, rule_obj, selector_obj, stop_at=stop_at, progress=progress)


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
                  *, stop_at: str | None = None, progress: bool = False, engines: Mapping[str, str] | None = None
                  ) -> AnalysisResult:
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
                          taps=tuple(network.taps), steps=out.steps, engines=dict(engines or {}))
