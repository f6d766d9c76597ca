"""Where class jobs run: in this process (:class:`LocalRunner`) or on a Ray cluster (:class:`RayRunner`).

A runner takes :class:`~ssa.scale.jobs.ClassJob` objects and yields their
:class:`~ssa.scale.jobs.JobResult` as each finishes (any order). Both call
:func:`~ssa.scale.jobs.run_class_job` with a :class:`~ssa.scale.jobs.Worker` that keeps the model loaded
between jobs, so the graphs are the same wherever they were computed.

On Ray, each worker is an actor that declares its needs (``num_cpus``, and ``num_gpus`` when the model runs on
CUDA) and holds the loaded network: the model is loaded once per actor, not once per job. An actor whose
process dies is restarted and its unfinished calls are retried (``max_restarts``, ``max_task_retries``); the
jobs are idempotent (an output already written with its key is not written again), so every graph lands
exactly once on the shared folder.
"""

from __future__ import annotations

import collections
import dataclasses
import logging
import os
from collections.abc import Iterable, Iterator
from typing import Any

from ssa.errors import InvalidInputError
from ssa.scale.jobs import ClassJob, JobResult, Worker, run_class_job

__all__ = ["LocalRunner", "RayRunner", "make_runner"]


class LocalRunner:
    """Jobs one after the other in this process, with one :class:`Worker` (the model loaded once)."""

    name = "local"
    threads = None  # the jobs compute with this process's torch threads

    def __init__(self) -> None:
        self.worker = Worker()

    def run(self, jobs: Iterable[ClassJob]) -> Iterator[JobResult]:
        for job in jobs:
            yield run_class_job(job, self.worker)

    def close(self) -> None:
        self.worker = Worker()


def _import_ray() -> Any:
    try:
        import ray  # optional extra: pip install 'stepwise-sa[ray]'
    except ImportError:
        raise InvalidInputError("--ray / --ray-address need Ray, which is not installed; pip install "
                                "'stepwise-sa[ray]' (or run without --ray).") from None
    return ray


def _with_source(job: ClassJob, source: Any) -> ClassJob:
    """``job`` with its model's source replaced (an object-store reference, or what it refers to)."""
    spec = dataclasses.replace(job.model.spec, source=source)
    return dataclasses.replace(job, model=dataclasses.replace(job.model, spec=spec))


def _is_ref(value: Any) -> bool:
    return type(value).__name__ == "ObjectRef"


class _ActorBody:
    """The state of one Ray actor: a :class:`Worker` (the loaded model) and its thread count."""

    def __init__(self, threads: int) -> None:
        import torch  # in the actor's process only

        torch.set_num_threads(max(1, int(threads)))
        self.worker = Worker()

    def run(self, job: ClassJob) -> JobResult:
        source = job.model.spec.source
        if _is_ref(source) and not self.worker.has(job.model.model_hash):
            # a model object sent once through the object store: fetched when first needed
            import ray

            job = _with_source(job, ray.get(source))
        return run_class_job(job, self.worker)

    def pid(self) -> int:
        return os.getpid()


class RayRunner:
    """Jobs on a Ray cluster: a local one started here (``address=None``) or an existing one (``address``).

    Parameters
    ----------
    address : ``"auto"``, ``"ray://host:10001"``, ``"host:6379"``, ... (``ray.init(address=...)``); None starts a
        local cluster with ``num_cpus`` CPUs (default: all) and stops it at the end.
    workers : number of actors (default: as many as the cluster's CPUs / ``cpus_per_worker``, or GPUs /
        ``gpus_per_worker`` when the jobs run on CUDA).
    cpus_per_worker, gpus_per_worker : what each actor declares (``gpus_per_worker`` default 1 when the device is
        CUDA, else 0; fractions share a GPU between actors).
    """

    name = "ray"

    def __init__(self, address: str | None = None, *, workers: int | None = None, num_cpus: int | None = None,
                 cpus_per_worker: float = 1.0, gpus_per_worker: float | None = None, device: str = "cpu") -> None:
        if workers is not None and workers < 1:
            raise InvalidInputError(f"--workers must be 1 or more, got {workers}.")
        self.address = address
        self.workers = workers
        self.num_cpus = num_cpus
        self.cpus_per_worker = float(cpus_per_worker)
        self.gpus_per_worker = (1.0 if device.startswith("cuda") else 0.0) if gpus_per_worker is None \
            else float(gpus_per_worker)
        self._ray: Any = None
        self._started = False
        self.actors: list[Any] = []
        self.pids: list[int] = []

    @property
    def threads(self) -> int:
        """The torch threads of each actor (one per CPU it declares): the count its graphs record."""
        return max(1, int(self.cpus_per_worker))

    def start(self) -> RayRunner:
        ray = self._ray = _import_ray()
        if not ray.is_initialized():
            kwargs: dict[str, Any] = {"include_dashboard": False, "log_to_driver": False,
                                      "logging_level": logging.ERROR, "configure_logging": True}
            if self.address is None:
                cpus = self.num_cpus or self.workers and int(self.workers * self.cpus_per_worker + 0.999)
                if cpus:
                    kwargs["num_cpus"] = int(cpus)
                self._started = True
            else:
                kwargs["address"] = self.address
            try:
                ray.init(**kwargs)
            except (ConnectionError, ValueError, RuntimeError) as exc:
                where = f"the Ray cluster at {self.address!r}" if self.address else "a local Ray cluster"
                raise InvalidInputError(f"cannot start or join {where} ({str(exc).splitlines()[0]}); check "
                                        "--ray-address (e.g. auto, or host:6379 of `ray start --head`).") from None
        res = ray.cluster_resources()
        if self.workers is None:
            if self.gpus_per_worker > 0:
                self.workers = max(1, int(res.get("GPU", 0) // self.gpus_per_worker))
            else:
                self.workers = max(1, int(res.get("CPU", 1) // max(self.cpus_per_worker, 1e-9)))
        if self.gpus_per_worker > 0 and res.get("GPU", 0) < self.gpus_per_worker:
            raise InvalidInputError(f"the jobs run on CUDA but the Ray cluster has {res.get('GPU', 0):g} GPU(s); "
                                    "start Ray on GPU machines, or use --device cpu.")
        actor = ray.remote(max_restarts=-1, max_task_retries=-1)(_ActorBody)
        self.actors = [actor.options(num_cpus=self.cpus_per_worker, num_gpus=self.gpus_per_worker)
                       .remote(self.threads) for _ in range(self.workers)]
        self.pids = ray.get([a.pid.remote() for a in self.actors])
        return self

    def run(self, jobs: Iterable[ClassJob]) -> Iterator[JobResult]:
        if self._ray is None:
            self.start()
        ray = self._ray
        refs: dict[str, Any] = {}

        def shipped(job: ClassJob) -> ClassJob:
            # a model given as an object (an nn.Module) goes to the object store once, not with every job
            source = job.model.spec.source
            if isinstance(source, (str, os.PathLike)) or _is_ref(source):
                return job
            if job.model.model_hash not in refs:
                refs[job.model.model_hash] = ray.put(source)
            return _with_source(job, refs[job.model.model_hash])

        queue = collections.deque(shipped(j) for j in jobs)
        pending: dict[Any, tuple[int, ClassJob]] = {}
        load = [0] * len(self.actors)
        alive = list(range(len(self.actors)))
        while queue or pending:
            while queue and alive:
                k = min(alive, key=lambda a: load[a])
                if load[k] >= 2:  # two calls per actor: one running, one waiting, so none idles
                    break
                job = queue.popleft()
                pending[self.actors[k].run.remote(job)] = (k, job)
                load[k] += 1
            if not pending:
                raise InvalidInputError("every Ray worker died and could not be restarted; check the cluster "
                                        "(`ray status`) and run again: finished classes are kept.")
            ready, _ = ray.wait(list(pending), num_returns=1)
            for ref in ready:
                k, job = pending.pop(ref)
                load[k] -= 1
                try:
                    result = ray.get(ref)
                except ray.exceptions.RayActorError:  # the actor is gone for good: run its job elsewhere
                    if k in alive:
                        alive.remove(k)
                    queue.appendleft(job)
                    continue
                except ray.exceptions.RayTaskError as exc:  # a bug inside the job: re-raise it here
                    raise exc.as_instanceof_cause() from None
                yield result

    def close(self) -> None:
        ray = self._ray
        if ray is None:
            return
        for a in self.actors:
            try:
                ray.kill(a)
            except Exception:  # noqa: BLE001 - already gone
                pass
        self.actors = []
        if self._started:
            ray.shutdown()
        self._ray = None


def make_runner(ray: bool = False, address: str | None = None, *, workers: int | None = None,
                device: str = "cpu") -> LocalRunner | RayRunner:
    """A :class:`RayRunner` when ``ray`` or ``address`` is given, else a :class:`LocalRunner`."""
    if ray or address:
        return RayRunner(address, workers=workers, device=device)
    if workers is not None and workers != 1:
        raise InvalidInputError("--workers applies to --ray / --ray-address runs; add --ray, or drop --workers.")
    return LocalRunner()
