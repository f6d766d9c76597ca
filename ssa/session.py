"""The :class:`Session`: the single owner of model loading, engine choice and statistics.
"""

from __future__ import annotations

import contextlib
import copy
import json
import os
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from ssa.core.arrays import namespace, to_numpy
from ssa.core.capabilities import SupportsDeferredChecks, SupportsPrefetch, SupportsRowsPerClass
from ssa.core.checks import (
    check_closed_form,
    check_env_switches,
    check_int,
    check_label_range,
    check_stop_at,
    env_switch,
)
from ssa.core.defaults import resolve_method
from ssa.core.graph import build_graph
from ssa.core.interfaces import Network, Rule, Selector
from ssa.core.options import ENGINES, ModelSpec, RunOptions  # noqa: F401 (ENGINES: re-exported)
from ssa.core.threads import torch_threads
from ssa.core.traversal import explain_stop, traverse
from ssa.engines.autograd import AutogradSource
from ssa.engines.closed_form import ClosedFormSource
from ssa.engines.statistics import collect
from ssa.engines.store import StatsStore, check_store_root, images_hash
from ssa.errors import InvalidInputError
from ssa.io.classmap import check_class_count
from ssa.io.folders import files_preprocessing, folder_class_map, load_grouped_images
from ssa.io.images import Preprocess, select_class
from ssa.io.loading import load_model
from ssa.io.progress import busy
from ssa.plugins import make_rule, make_selector, registry
from ssa.results import AnalysisResult

__all__ = ['load_model', 'Session', 'ENGINES', 'prepare_network', 'open_store', 'store_meta', 'n_classes',
           'check_target', 'active_fraction', 'run_traversal']


class Session:
    """A model and an image set, prepared once: analyse any class, branching factor or selector again
    from the same per-image statistics without running the network (method doc, section 6).

    Construction stores the options; the model is loaded and the statistics computed on first use.
    The parameters are those of :func:`analyse` (``preset`` fixes the rule here and the selector of every
    :meth:`analyse`). With labels, each class is analysed on its own images.
    ``only_target`` restricts the statistics to that class's images (what :func:`analyse` does).
    """

    def __init__(self, model: Any, images: Any, *, rule: str | Rule | None = None,
                 rule_params: Mapping[str, Any] | None = None, labels: Any = None,
                 preprocess: Preprocess | None = None, taps: Sequence[str] | None = None,
                 include_input: bool = False, channel_axes: Mapping[str, int] | None = None,
                 tokens: str = "all", output_index: int | None = None, device: str = "cpu",
                 batch_size: int | None = None,
                 backend: str | None = None, name: str | None = None, engine: str = "auto", fast_math: bool = False,
                 store: str | os.PathLike | None = None, store_mode: str = "fill", progress: bool = False,
                 only_target: int | None = None, preset: str | None = None) -> None:
        # the keywords are fields of ModelSpec and RunOptions (one definition: names, defaults, checks)
        spec = ModelSpec(model, backend=backend, device=device, taps=taps, include_input=include_input,
                         channel_axes=channel_axes, tokens=tokens, output_index=output_index, name=name)
        options = RunOptions(rule=rule, rule_params=rule_params, preset=preset, engine=engine, fast_math=fast_math,
                             batch_size=batch_size, store=store, store_mode=store_mode, progress=progress)
        self._setup(spec, images, options, labels=labels, preprocess=preprocess, only_target=only_target)

    @classmethod
    def from_options(cls, model: ModelSpec, images: Any, options: RunOptions | None = None, *, labels: Any = None,
                     preprocess: Preprocess | None = None, only_target: int | None = None) -> Session:
        """A session from what to load (:class:`~ssa.core.options.ModelSpec`) and how to analyse
        (:class:`~ssa.core.options.RunOptions`): the objects the CLI builds from its flags.

        The options' method (after its preset) is the session's rule and the default selector of
        :meth:`analyse`; their ``branching`` and ``stop_at`` are its defaults too.
        """
        if not isinstance(model, ModelSpec):
            raise InvalidInputError(f"model must be an ssa.ModelSpec, got {type(model).__name__}; pass "
                                    "ModelSpec(source=...) or use Session(model, images, ...).")
        options = RunOptions() if options is None else options
        if not isinstance(options, RunOptions):
            raise InvalidInputError(f"options must be an ssa.RunOptions, got {type(options).__name__}.")
        session = cls.__new__(cls)
        session._setup(model, images, options, labels=labels, preprocess=preprocess, only_target=only_target)
        return session

    def _setup(self, spec: ModelSpec, images: Any, options: RunOptions, *, labels: Any,
               preprocess: Preprocess | None, only_target: int | None) -> None:
        """The session of ``spec`` and ``options`` (both checked already); nothing is loaded yet, except a model
        with a backend's own load options, which :attr:`options` does not carry."""
        check_env_switches()  # before anything is loaded (each is read only where its code runs)
        self.model = spec.source
        if spec.options:
            self.model = load_model(spec.source, backend=spec.backend, device=spec.device, **spec.load_options())
        self.images_spec = images
        m = options.method
        self.preset = options.preset
        self.rule = make_rule(m.rule, **m.rule_params)
        self._selector, self._selector_params = m.selector, dict(m.selector_params)
        self.labels_spec = labels
        self.preprocess = preprocess
        self.options: dict[str, Any] = {k: v for k, v in spec.load_options().items() if k not in spec.options}
        self.device = spec.device
        self.batch_size = default_batch_size(spec.device) if options.batch_size is None else options.batch_size
        self.backend = spec.backend
        self.engine = options.engine
        #: TF32 on CUDA (no effect on the CPU); its statistics differ from the exact ones, so no store is used
        self.fast_math = options.fast_math and spec.device.startswith("cuda")
        self.store = None if self.fast_math else options.store
        self.store_mode = options.store_mode
        self.progress = options.progress
        self.only_target = only_target
        self._network: Network | None = None
        self.images: np.ndarray | None = None
        self.labels: np.ndarray | None = None
        self._stats: Any = None
        self._subset = False
        self.images_hash: str | None = None
        self.class_map: dict[str, int] | None = None
        self._defaults: dict[str, Any] = {"branching": options.branching, "stop_at": options.stop_at}

    def prepare(self) -> Session:
        """Load the model and the images (once)."""
        if self._network is None:
            if self.store is not None:
                check_store_root(self.store, flag="store")  # a file is refused before any work
            self.class_map = folder_class_map(self.images_spec, self.labels_spec)  # class folders: {folder: class}
            early = _cheap_images(self.images_spec)  # read first: the backend may start work on them (below)
            if early:
                arr, lab = load_grouped_images(self.images_spec, preprocess=self.preprocess, labels=self.labels_spec)
                prefetch(self.model, arr, backend=self.backend, device=self.device, **self.options)
            network = load_model(self.model, backend=self.backend, device=self.device, **self.options)
            if not early:  # image files: decoded once the model is known to load
                arr, lab = load_grouped_images(self.images_spec, preprocess=self.preprocess, labels=self.labels_spec)
            self.images_hash = images_hash(arr)  # the whole set, before a class is chosen (recorded in graphs)
            prepare_network(network, arr, images_spec=self.images_spec, preprocess=self.preprocess)
            check_class_count(self.class_map, n_classes(network))
            check_label_range(lab, n_classes(network))
            form = self.rule.form
            if self.store is not None and self.store_mode == "read":
                if not (form and open_store(network, arr, self.store).is_complete(form)):
                    self.store = None  # the store does not hold this model and image set: work in memory
            elif self.store is not None and form and self.engine != "autograd" and network.fast_taps(form) \
                    and not open_store(network, arr, self.store).is_complete(form):
                check_store_root(self.store, flag="store", write=True)  # it will be filled: writable?
            if self.only_target is not None:
                check_target(network, self.only_target)
                if self.store is None:  # a store is keyed by the whole image set: select per class later
                    arr, lab = select_class(arr, lab, self.only_target)
                    self._subset = True
            self.images, self.labels, self._network = arr, lab, network
        return self

    def restrict(self, indices: np.ndarray) -> None:
        """Keep only ``images[indices]`` (and their labels); only before any statistics exist."""
        if self._stats is not None:
            raise RuntimeError("restrict() must come before the first analyse()")
        self.prepare()
        assert self.images is not None
        self.images = self.images[indices]
        if self.labels is not None:
            self.labels = self.labels[indices]

    @property
    def network(self) -> Network:
        network = self.prepare()._network
        assert network is not None  # prepare() loaded it
        return network

    def class_indices(self, target: int, indices: Sequence[int] | np.ndarray | None = None) -> np.ndarray | None:
        """Positions in :attr:`images` of the images :meth:`analyse` uses for class ``target``; None: all of them.

        ``indices`` : chosen by the caller (:mod:`ssa.analysis.grouping`: predictions, confidence thresholds;
        a bootstrap resample); else the images labelled ``target`` when the session has labels; else all.
        """
        self.prepare()
        if indices is not None:
            chosen = np.asarray(indices, dtype=np.int64)
            if len(chosen) == 0:
                raise InvalidInputError(f"class {target} has no image; choose a target that has images.")
            return chosen
        if self.labels is not None and not self._subset:
            # by label: also when ``only_target`` is set but a store keeps the whole image set (the store is
            # keyed by all the images, so the class is selected here, not in prepare())
            chosen = np.flatnonzero(self.labels == target)
            if len(chosen) == 0:
                raise InvalidInputError(f"no image is labelled {target}; choose a target that has images.")
            return chosen
        return None

    def with_rule(self, rule: str | Rule, rule_params: Mapping[str, Any] | None = None) -> Session:
        """A session of the same loaded model and images with another rule, and statistics of its own.

        The model and images are not loaded or prepared again; the new session computes its statistics
        (for its rule's closed form) on first use. Used to compare rules (:mod:`ssa.analysis.strategies`).
        """
        self.prepare()
        other = copy.copy(self)
        other.rule = make_rule(rule, **dict(rule_params or {}))
        other.preset = None
        other._stats = None
        return other

    def _source(self, indices: np.ndarray | None):
        network, images = self.network, self.images
        assert images is not None
        rule = self.rule
        if self.engine != "autograd":
            check_closed_form(rule)  # a rule must combine as the closed form it declares
        fast = network.fast_taps(rule.form) if self.engine != "autograd" and rule.form else frozenset()
        if self.engine == "fast" and not fast:
            raise InvalidInputError(f"engine 'fast' was asked for, but no step of this model has the closed form "
                                    f"for rule {rule.name!r}; use --engine auto.")
        if not fast:
            return AutogradSource(network, images if indices is None else images[indices], self.batch_size)
        form = rule.form
        assert form is not None  # steps with the closed form were found for it, so the rule has one
        if self._stats is None and self.store is not None:
            st = open_store(network, images, self.store)
            if st.is_complete(form):
                self._stats = (st, int((st.meta() or {}).get("batch_size", self.batch_size)))
            elif self.store_mode == "fill":
                with st.writing(store_meta(network, images, self.batch_size)):  # one writer at a time
                    collect(network, images, [form], self.batch_size, store=st, progress=self.progress)
                self._stats = (st, self.batch_size)
        if self._stats is None and indices is not None and not self._share_statistics(form, len(indices)):
            # the statistics of the whole image set would not fit: this class's only, not kept
            stats = collect(network, images[indices], [form], self.batch_size, progress=self.progress)
            return ClosedFormSource(network, stats, form, images[indices], self.batch_size, None)
        if self._stats is None:
            with self._rows_per_class(form):  # a one-class run: its class makes the rows it reads
                stats = collect(network, images, [form], self.batch_size, progress=self.progress)
            self._stats = (stats, self.batch_size)
        stats, bs = self._stats
        return ClosedFormSource(network, stats, form, images, bs, indices)

    @classmethod
    def of_network(cls, network: Network, images: np.ndarray, *, rule: str | Rule | None = None,
                   rule_params: Mapping[str, Any] | None = None, batch_size: int | None = None,
                   engine: str = "auto") -> Session:
        """A session over a network already prepared on ``images`` (an array): nothing is loaded or prepared again.

        For callers that hold the network themselves and need the Session's relevance sources
        (:meth:`relevance_source`), such as the explorer's reference images.
        """
        session = cls(network, images, rule=rule, rule_params=rule_params, batch_size=batch_size, engine=engine,
                      device=network.device)
        session.images, session._network = np.asarray(images), network
        return session

    def relevance_source(self, indices: Sequence[int] | np.ndarray | None = None):
        """The relevance source :meth:`analyse` uses for ``images[indices]`` (None: every image).

        The session's engine and rule decide: the closed form from the per-image statistics (collected
        once and shared by later calls while they fit the budget, or read from the store) where steps
        have it, autograd elsewhere; a rule whose ``combine`` contradicts its closed form is refused.
        """
        return self._source(None if indices is None else np.asarray(indices, dtype=np.int64))

    def _share_statistics(self, form: str, n_class: int) -> bool:
        """Whether to collect the statistics of every image once and share them among classes.

        Yes when they fit the budget (:func:`statistics_budget`); otherwise each class collects its
        own images' statistics and drops them when done, so memory stays bounded by one class whatever
        the number of classes (``gradient_x_activation`` on VGG16 needs about 9 MB per image).
        """
        assert self.images is not None
        n = int(self.images.shape[0])
        if n_class >= n:
            return True
        per_image = self.network.statistics_bytes(form)
        return per_image * n <= statistics_budget(self.network.device)

    def _rows_per_class(self, form: str) -> contextlib.AbstractContextManager[Any]:
        """The context of this session's statistics pass: the network's ``rows_per_class()``, where the pass keeps
        what one class needs to make its own rows (:class:`~ssa.core.capabilities.SupportsRowsPerClass`): a one-class
        run (``only_target``, in memory), the network able to, not switched off (``SSA_ROWS_PER_CLASS=0``), and the
        kept arrays of every image within the statistics budget (:func:`statistics_budget`); else nothing, and every
        row is computed, as for several classes."""
        network, images = self.network, self.images
        if self.only_target is None or not self._subset or images is None \
                or not isinstance(network, SupportsRowsPerClass) or not rows_per_class_enabled():
            return contextlib.nullcontext()
        with network.rows_per_class():
            per_image = network.statistics_bytes(form)
        if per_image * int(images.shape[0]) > statistics_budget(network.device):
            return contextlib.nullcontext()
        return network.rows_per_class()

    def analyse(self, target: int, branching: int | None = None, *, selector: str | Selector | None = None,
                selector_params: Mapping[str, Any] | None = None, stop_at: str | None = None,
                indices: Sequence[int] | np.ndarray | None = None) -> AnalysisResult:
        """The dependency graph of class ``target`` (see :func:`analyse`).

        ``branching`` : default 3, or the session's :class:`RunOptions` ones (:meth:`from_options`).
        ``selector`` : default the session's preset's or options', else ``mad`` (:mod:`ssa.core.defaults`).
        ``stop_at`` : default None (down to the lowest tap), or the session's options'.
        ``indices`` : positions of the class's images in the session's image set (default: by labels, or all).
        """
        if branching is None:
            branching = self._defaults["branching"]
        if stop_at is None:
            stop_at = self._defaults["stop_at"]
        branching = check_int("branching", branching, 1, "Pass --branching 1 or more.")
        target = check_int("target", target, 0)
        if self.preset is not None:
            _, _, sel, sel_params = resolve_method(self.preset, None, None, selector, selector_params)
        else:
            sel = self._selector if selector is None else selector
            if selector is None and selector_params is None:  # the session's (from_options: the options')
                sel_params = dict(self._selector_params)
            else:
                sel_params = dict(selector_params or {})
        selector_obj = make_selector(sel, **sel_params)
        network = self.network
        check_target(network, target)
        check_stop_at(stop_at, (t.name for t in network.taps))
        chosen = self.class_indices(target, indices)
        with network.arithmetic(self.fast_math):  # once per analysis: the statistics and the traversal
            source = self._source(chosen)
            result = run_traversal(source, network, target, branching, self.rule, selector_obj, stop_at=stop_at,
                                   images_hash=self.images_hash, progress=self.progress)
        if self.fast_math:
            result.graph.graph["fast_math"] = True  # TF32 products: the graph may differ from the exact one
        if self.class_map:
            result.graph.graph["class_map"] = dict(self.class_map)  # the labels the run used
        decoded = files_preprocessing(self.images_spec, self.preprocess)
        if decoded is not None:
            result.graph.graph["preprocess"] = decoded
        return result


def _cheap_images(spec: Any) -> bool:
    """Images that cost next to nothing to read (an array, a ``.npy`` file): read before the model is loaded, so that
    its backend can start work on them (:func:`prefetch`); image files are decoded after it (a model that does not
    load is reported before that)."""
    if isinstance(spec, np.ndarray):
        return True
    return isinstance(spec, (str, os.PathLike)) and os.fspath(spec).lower().endswith(".npy") and os.path.isfile(spec)


def prefetch(model: Any, images: np.ndarray, *, backend: str | None = None, device: str = "cpu",
             **options: Any) -> None:
    """Let the backend that will load ``model`` start work its first preparation on ``images`` needs
    (:class:`~ssa.core.capabilities.SupportsPrefetch`: the ONNX backend's onnxruntime session and parity pass, while
    torch is imported). Best effort: whatever goes wrong here, loading the model reports."""
    if isinstance(model, Network):
        return
    try:
        b = registry().backend_for(model, backend)()
    except Exception:  # noqa: BLE001 - no backend, a bad name: load_model says so
        return
    if isinstance(b, SupportsPrefetch):
        b.prefetch(model, images, device=device, **options)


def default_batch_size(device: str) -> int:
    """Images per forward pass when none is given: 32 on the CPU, 128 on a GPU (fewer, larger launches)."""
    return 128 if str(device).startswith("cuda") else 32


def rows_per_class_enabled() -> bool:
    """Whether a one-class run may keep what its class needs to make its own rows (``SSA_ROWS_PER_CLASS``: ``0``
    switches it off, for A/B runs; default on)."""
    return env_switch("SSA_ROWS_PER_CLASS") is not False


def statistics_budget(device: str) -> int:
    """Bytes of per-image statistics a Session keeps for a whole image set (``SSA_STATS_BYTES``).

    Default: 4 GiB on the CPU; a quarter of the GPU's memory on CUDA.
    """
    env = os.environ.get("SSA_STATS_BYTES")
    if env:
        try:
            return int(float(env))
        except ValueError:
            raise InvalidInputError(f"SSA_STATS_BYTES must be a number of bytes, got {env!r}.") from None
    if str(device).startswith("cuda"):
        import torch  # only for a CUDA device, which only the torch backend gives

        return int(torch.cuda.get_device_properties(torch.device(device)).total_memory // 4)
    return 4 << 30


def prepare_network(network: Network, images: np.ndarray, *, images_spec: Any = None,
                    preprocess: Preprocess | None = None):
    """``network.prepare(images)``; when the model refuses images read from a folder, say how ``--channels`` fits.

    Grayscale files for a 3-channel model (or RGB files for a 1-channel one) are the usual cause. A network that
    :class:`~ssa.core.capabilities.SupportsDeferredChecks` leaves the checks the analysis's first pass can make on
    its own outputs to it (``prepare_deferred``; an ONNX model's parity: one forward pass fewer).
    """
    try:
        with busy("preparing the model (tracing, canonical form, parity)"):
            if isinstance(network, SupportsDeferredChecks):
                return network.prepare_deferred(images)
            return network.prepare(images)
    except InvalidInputError as exc:
        hint = _channels_hint(images, images_spec, preprocess)
        if hint is None:
            raise
        raise InvalidInputError(f"{str(exc).rstrip('.')}; {hint}") from None


def _channels_hint(images: np.ndarray, spec: Any, preprocess: Preprocess | None) -> str | None:
    from pathlib import Path

    if not isinstance(spec, (str, os.PathLike)) or spec == "digits" or not Path(spec).is_dir() or images.ndim != 4:
        return None
    pre = preprocess or Preprocess()
    c = int(images.shape[1] if pre.layout == "nchw" else images.shape[-1])
    if c not in (1, 3):
        return None
    other = 3 if c == 1 else 1
    kind = {1: "grayscale", 3: "RGB"}
    return (f"the image files were read as {kind[c]} ({c} channel{'s' if c > 1 else ''}, --channels {c}); if the "
            f"model expects {kind[other]} input, pass --channels {other}")


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


def active_fraction(scalars) -> np.ndarray:
    """Share of images in which each neuron's scalar is > 0 (on the scalars' device; a numpy result)."""
    xp = namespace(scalars)
    return to_numpy(xp.mean(xp.astype(scalars > 0, xp.float64), axis=0))


def run_traversal(source: AutogradSource | ClosedFormSource, network: Network, target: int, branching: int,
                  rule: Rule, selector: Selector,
                  *, stop_at: str | None = None, progress: bool = False,
                  images_hash: str | None = None) -> AnalysisResult:
    """Traverse with ``source`` and assemble the result (shared by every engine).

    ``images_hash`` : the content hash of the whole image set the class's images were chosen from
    (recorded in the graph, with the model's content hash; see :mod:`ssa.core.identity`).
    """
    logits = to_numpy(source.scalars("logits"))
    bad = ~np.isfinite(logits).all(axis=1)
    if bad.any():
        raise InvalidInputError(
            f"the model's logits are NaN or infinite on {int(bad.sum())} of the {logits.shape[0]} images (first: "
            f"image {int(np.flatnonzero(bad)[0])} of the class's); check the model's weights and the images' scaling.")
    bar = None
    if progress:
        from ssa.io.progress import progress as stage

        bar = stage(None, f"traversal of class {target}", "block")
    try:
        out = traverse(source, target, branching, rule, selector, stop_at=stop_at, progress=bar)
    finally:
        if bar is not None:
            bar.close()
    active = {t: active_fraction(source.scalars(t)) for t in out.selected}
    active.setdefault("logits", active_fraction(source.scalars("logits")))
    attrs = {
        "branching": branching, "rule": rule.name, "rule_params": json.dumps(rule.params, sort_keys=True),
        "selector": selector.name, "selector_params": json.dumps(selector.params, sort_keys=True),
        "model": network.name, "model_hash": network.model_hash(), "images_hash": images_hash,
        "stop_at": stop_at,
        "tap_neurons": json.dumps({t.name: t.n_neurons for t in network.taps}),  # layer sizes, for reports
    }
    threads = torch_threads()
    if threads is not None:  # the CPU kernels' rounding depends on it: the count that reproduces this graph
        attrs["threads"] = threads
    for s in out.steps:  # the upper neurons' active fractions, for saying why a graph stops
        if s.upper not in active:
            active[s.upper] = active_fraction(source.scalars(s.upper))
    notes = tuple(explain_stop(network.taps, out.steps, active, rule, selector, stop_at=stop_at))
    if notes:
        attrs["notes"] = json.dumps(list(notes))
    graph = build_graph(taps=network.taps, steps=out.steps, target=target, n_images=source.n_images,
                        active={t: a for t, a in active.items() if t in out.selected or t == "logits"}, attrs=attrs)
    return AnalysisResult(graph=graph, target=target, branching=branching, rule=rule.name, selector=selector.name,
                          selector_params=dict(selector.params), n_images=source.n_images, model=network.name,
                          taps=tuple(network.taps), steps=out.steps, engines=dict(source.engines),
                          notes=notes)
