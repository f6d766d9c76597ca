"""Class jobs: one class of one model, its images chosen by streaming, one graph per configuration.

A :class:`ClassJob` is everything a worker needs to produce the graphs of one class, in any process on
any machine that sees the same files: the model (spec and content hash), the class's candidate images (an
:class:`~ssa.io.datasets.ImageSource` holding only them), how to choose among them (:class:`Selection`) and
the outputs, one per :class:`Method` (rule, selector, their parameters, branching factor), each with its
path and **key**: a hash of everything the graph depends on.

:func:`run_class_job` is the only function that turns a job into graphs (so the engine underneath can
change). It is idempotent: an output whose file already holds a graph with its key is not computed again
(a retried or resumed job writes nothing twice), and every graph is written atomically. With a write log
(``SSA_WRITE_LOG=/path/writes.log``, any file every worker can append to) each graph that lands is logged as one
JSON line (file, key, worker, time): what the tests count to show each graph lands exactly once.
"""

from __future__ import annotations

import hashlib
import json
import os
import socket
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ssa.analysis.grouping import class_probabilities
from ssa.core.interfaces import Network
from ssa.core.options import ModelSpec, RunOptions
from ssa.errors import InvalidInputError, SSAError
from ssa.io.datasets import DecodeStats, ImageSource, iter_batches
from ssa.io.graphs import read_graph
from ssa.plugins import make_rule, make_selector
from ssa.session import Session, load_model, prepare_network

__all__ = ["Method", "Selection", "JobModel", "Output", "ClassJob", "JobResult", "Worker", "run_class_job",
           "select_images", "job_key", "WRITE_LOG_ENV", "read_write_log", "KEY_ATTR", "landed_attrs"]

#: environment variable naming the write log (read by the driver when it plans the jobs)
WRITE_LOG_ENV = "SSA_WRITE_LOG"
#: the graph attribute that holds the output's key (how a retried job knows its graph already landed)
KEY_ATTR = "job_key"


@dataclass(frozen=True)
class Method:
    """One configuration: rule and selector with their parameters (resolved, defaults filled), branching, stop.

    The names and checks are those of :class:`~ssa.core.options.RunOptions` (:meth:`of`); this is its
    resolved, hashable form (plugin names and parsed parameters), which keys and labels outputs.
    """

    rule: str
    rule_params: Mapping[str, Any]
    selector: str
    selector_params: Mapping[str, Any]
    branching: int = 3
    stop_at: str | None = None

    @classmethod
    def resolved(cls, rule: str, rule_params: Mapping[str, Any] | None, selector: str,
                 selector_params: Mapping[str, Any] | None, branching: int = 3,
                 stop_at: str | None = None) -> Method:
        """The method with parameters as the plugins parse them (``{"k": "1.5"}`` and ``{"k": 1.5}`` agree)."""
        return cls.of(RunOptions(rule=rule, rule_params=rule_params, selector=selector,
                                 selector_params=selector_params, branching=branching, stop_at=stop_at))

    @classmethod
    def of(cls, options: RunOptions) -> Method:
        """The configuration of ``options`` (checked there; the preset resolved)."""
        m = options.method
        r = make_rule(m.rule, **m.rule_params)
        s = make_selector(m.selector, **m.selector_params)
        return cls(r.name, dict(r.params), s.name, dict(s.params), options.branching, options.stop_at)

    def as_dict(self) -> dict[str, Any]:
        return {"rule": self.rule, "rule_params": dict(self.rule_params), "selector": self.selector,
                "selector_params": dict(self.selector_params), "branching": self.branching, "stop_at": self.stop_at}

    def label(self) -> str:
        """A folder name: ``rule-selector-bB``, plus a short hash when parameters differ from the defaults."""
        base = f"{self.rule}-{self.selector}-b{self.branching}"
        defaults = Method.resolved(self.rule, None, self.selector, None, self.branching)
        if (dict(self.rule_params) != dict(defaults.rule_params)
                or dict(self.selector_params) != dict(defaults.selector_params) or self.stop_at):
            extra = {"rule_params": self.rule_params, "selector_params": self.selector_params, "stop_at": self.stop_at}
            base += "-" + hashlib.blake2b(json.dumps(extra, sort_keys=True, default=str).encode(),
                                          digest_size=4).hexdigest()
        return base


@dataclass(frozen=True)
class Selection:
    """How a class's images are chosen (paper, section 4): by label or prediction, confidence, how many."""

    grouping: str = "labels"
    min_confidence: float | None = None
    max_images: int | None = None

    def as_dict(self) -> dict[str, Any]:
        return {"grouping": self.grouping, "min_confidence": self.min_confidence, "max_images": self.max_images}


@dataclass(frozen=True)
class JobModel:
    """What a worker loads (a :class:`~ssa.core.options.ModelSpec`), and the model's content hash (its cache key)."""

    spec: ModelSpec
    model_hash: str

    @property
    def key_options(self) -> dict[str, Any]:
        """The load options a graph depends on (those given), for its key."""
        return {k: v for k, v in self.spec.load_options().items() if v is not None}

    def load(self) -> Network:
        spec = self.spec
        return load_model(spec.source, backend=spec.backend, device=spec.device, **spec.load_options())


@dataclass(frozen=True)
class Output:
    """One graph a job writes: its method, path and key."""

    method: Method
    path: Path
    key: str


@dataclass(frozen=True)
class ClassJob:
    """The graphs of one class (see the module docstring).

    images : the class's candidate images, in order (only them). ``preselected``: they are already chosen
        (by prediction, by the planner), so no confidence filter runs here.
    images_hash : the content hash of the whole image set the class's images come from (recorded in graphs).
    """

    model: JobModel
    target: int
    images: ImageSource
    selection: Selection
    outputs: tuple[Output, ...]
    images_hash: str
    preselected: bool = False
    batch_size: int = 32
    engine: str = "auto"
    store: str | None = None
    store_mode: str = "fill"
    decode_workers: int = 0
    write_log: str | None = None
    fast_math: bool = False

    @property
    def name(self) -> str:
        return f"class {self.target}"


def job_key(*, model_hash: str, model_options: Mapping[str, Any], images_hash: str, target: int,
            selection: Selection, method: Method, candidates: str, engine: str) -> str:
    """The key of one output: a hash of everything its graph depends on."""
    payload = {"model_hash": model_hash, "model_options": {k: v for k, v in sorted(model_options.items())},
               "images_hash": images_hash, "target": int(target), "selection": selection.as_dict(),
               "method": method.as_dict(), "candidates": candidates, "engine": engine}
    return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()


@dataclass(frozen=True)
class JobResult:
    """What a job did: outputs written and skipped (already there), image counts and seconds per phase."""

    target: int
    model_hash: str
    written: tuple[str, ...]
    skipped: tuple[str, ...]
    keys: Mapping[str, str]
    n_candidates: int = 0
    n_decoded: int = 0
    decode_s: float = 0.0
    n_scored: int = 0
    select_s: float = 0.0
    n_images: int = 0
    analyse_s: float = 0.0
    summaries: tuple[str, ...] = ()
    notes: tuple[str, ...] = ()
    worker: str = ""
    loads: int = 0
    error: str | None = None


class Worker:
    """A worker's state: the loaded model (one at a time, loaded once per worker, not once per job)."""

    def __init__(self) -> None:
        self._model: tuple[str, Network] | None = None
        self._prepared: tuple | None = None
        self.loads = 0

    def has(self, model_hash: str) -> bool:
        """Whether the model with this content hash is the one loaded."""
        return self._model is not None and self._model[0] == model_hash

    def adopt(self, model: JobModel, network: Network) -> None:
        """Use ``network``, already loaded (by the driver, for a local run), for ``model``'s jobs."""
        self._model = (model.model_hash, network)
        self._prepared = None

    def network(self, model: JobModel, example: np.ndarray) -> Network:
        """The loaded, prepared network of ``model`` (loaded on first use; prepared for ``example``'s shape)."""
        if self._model is None or self._model[0] != model.model_hash:
            self._model = None  # free the previous model first
            self._model = (model.model_hash, model.load())
            self._prepared = None
            self.loads += 1
        net = self._model[1]
        if self._prepared != example.shape[1:]:
            prepare_network(net, example[:1])
            self._prepared = example.shape[1:]
        return net

    @property
    def name(self) -> str:
        return f"{socket.gethostname()}:{os.getpid()}"


def landed_attrs(path: Path) -> dict:
    """The graph attributes of the graph file at ``path`` (``.json`` or ``.graphml``), ``{}`` when there is none or
    it is not a whole graph that :func:`~ssa.io.graphs.read_graph` accepts.

    How a graph that landed is recognised, by the worker (its :data:`KEY_ATTR` is the output's key: not computed
    again) and by the driver (:func:`ssa.scale.manifest.execute`: a graph that landed but was not recorded, by a run
    killed in between, counts as kept).
    """
    if not path.is_file():
        return {}
    try:
        return dict(read_graph(path).graph)
    except (SSAError, OSError, ValueError):
        return {}


def select_images(job: ClassJob, worker: Worker, decode: DecodeStats) -> tuple[np.ndarray, Network, float, int]:
    """The class's images as the selection says, streamed batch by batch; returns (images, network, seconds, scored).

    Without ``min_confidence`` only the first ``max_images`` candidates are decoded. With it, candidates are
    decoded and scored batch by batch and decoding stops as soon as ``max_images`` passed; at most
    ``max_images`` (plus one batch) images are held.
    """
    sel = job.selection
    n = len(job.images)
    limit = n if sel.max_images is None else min(n, int(sel.max_images))
    threshold = None if job.preselected else sel.min_confidence
    positions = np.arange(n if threshold is not None else limit)
    kept: list[np.ndarray] = []
    count, scored, select_s, best = 0, 0, 0.0, -1.0
    network: Network | None = None
    for _, batch in iter_batches(job.images, positions, batch_size=job.batch_size, workers=job.decode_workers,
                                 stats=decode):
        if network is None:
            network = worker.network(job.model, batch)
        if threshold is not None:
            t0 = time.perf_counter()
            conf = class_probabilities(network, batch, job.batch_size)[:, job.target]
            select_s += time.perf_counter() - t0
            scored += len(batch)
            best = max(best, float(conf.max()))
            batch = batch[conf >= float(threshold)]
        take = batch[:limit - count]
        if len(take):
            kept.append(take)
            count += len(take)
        if count >= limit:
            break
    if network is None:
        raise InvalidInputError(f"no image is labelled {job.target}; drop it from --targets or add images of it.")
    if count == 0:
        raise InvalidInputError(
            f"class {job.target} has no image with probability >= {threshold:g} (best {best:.3g} of {n} labelled it); "
            f"lower --min-confidence or drop class {job.target} from --targets.")
    return np.concatenate(kept), network, select_s, scored


def _log_write(log: str, path: Path, key: str, worker: Worker) -> None:
    line = json.dumps({"file": str(path), "key": key[:16], "worker": worker.name, "loads": worker.loads,
                       "time": round(time.time(), 3)})
    fd = os.open(log, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, (line + "\n").encode())  # one write of one short line: appended whole
    finally:
        os.close(fd)


def read_write_log(log: str | os.PathLike) -> list[dict]:
    """A write log (one dict per graph file that landed), oldest first."""
    f = Path(log)
    if not f.is_file():
        return []
    return [json.loads(ln) for ln in f.read_text(encoding="utf-8").splitlines() if ln.strip()]


def run_class_job(job: ClassJob, worker: Worker) -> JobResult:
    """Compute and write the job's graphs that are not there yet (see the module docstring).

    Bad input (a class without a confident image, an unreadable file, ...) comes back as ``error`` (one line);
    other exceptions propagate.
    """
    skipped = tuple(str(o.path) for o in job.outputs if landed_attrs(o.path).get(KEY_ATTR) == o.key)
    todo = [o for o in job.outputs if str(o.path) not in skipped]
    keys = {str(o.path): o.key for o in job.outputs}
    if not todo:
        return JobResult(job.target, job.model.model_hash, (), skipped, keys, worker=worker.name, loads=worker.loads)
    decode = DecodeStats()
    try:
        images, network, select_s, scored = select_images(job, worker, decode)
    except SSAError as exc:
        return JobResult(job.target, job.model.model_hash, (), skipped, keys, error=str(exc), worker=worker.name,
                         loads=worker.loads)
    written: list[str] = []
    summaries: list[str] = []
    notes: list[str] = []
    t0 = time.perf_counter()
    by_rule: dict[tuple, list[Output]] = {}
    for o in todo:
        by_rule.setdefault((o.method.rule, json.dumps(o.method.rule_params, sort_keys=True)), []).append(o)
    try:
        for outs in by_rule.values():
            m0 = outs[0].method
            session = Session(network, images, rule=m0.rule, rule_params=m0.rule_params, device=job.model.spec.device,
                              batch_size=job.batch_size, engine=job.engine, fast_math=job.fast_math, store=job.store,
                              store_mode=job.store_mode)
            for o in outs:
                m = o.method
                res = session.analyse(job.target, m.branching, selector=m.selector, selector_params=m.selector_params,
                                      stop_at=m.stop_at)
                attrs = res.graph.graph
                attrs["images_hash"] = job.images_hash  # the whole set's, as `ssa analyse --targets` records it
                attrs["grouping"] = job.selection.grouping
                if job.images.class_map:
                    attrs["class_map"] = dict(job.images.class_map)  # the labels the run used (class folders)
                if job.images.preprocessing() is not None:
                    attrs["preprocess"] = job.images.preprocessing()
                if job.selection.min_confidence is not None:
                    attrs["min_confidence"] = float(job.selection.min_confidence)
                if job.selection.max_images is not None:
                    attrs["max_per_class"] = int(job.selection.max_images)
                attrs[KEY_ATTR] = o.key
                res.write(o.path)
                if job.write_log:
                    _log_write(job.write_log, o.path, o.key, worker)
                written.append(str(o.path))
                summaries.append(res.summary())
                notes.extend(f"class {job.target}: {n}" for n in res.notes)
    except SSAError as exc:
        return JobResult(job.target, job.model.model_hash, tuple(written), skipped, keys, error=str(exc),
                         worker=worker.name, loads=worker.loads)
    analyse_s = time.perf_counter() - t0
    return JobResult(job.target, job.model.model_hash, tuple(written), skipped, keys, n_candidates=len(job.images),
                     n_decoded=decode.images, decode_s=decode.seconds, n_scored=scored, select_s=select_s,
                     n_images=len(images), analyse_s=analyse_s, summaries=tuple(summaries), notes=tuple(notes),
                     worker=worker.name, loads=worker.loads)
