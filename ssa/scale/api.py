"""``ssa analyse --targets ... --out-dir DIR`` as a function: per-class jobs into a resumable folder."""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from ssa.core.options import ModelSpec, RunOptions
from ssa.io.datasets import open_source
from ssa.io.images import Preprocess
from ssa.scale.jobs import Method, Selection
from ssa.scale.manifest import GraphFolders, RunReport, execute
from ssa.scale.plan import (
    build_jobs,
    check_selection,
    class_candidates,
    images_hash_of,
    load_driver_model,
    release_device_memory,
    resolve_classes,
)
from ssa.scale.runners import LocalRunner, RayRunner
from ssa.session import default_batch_size

__all__ = ["analyse_to_folder"]


def analyse_to_folder(model: Any, images: Any, targets: str | Sequence[int], out_dir: str | os.PathLike, *,
                      branching: int = 3, labels: Any = None, by_prediction: bool = False,
                      min_confidence: float | None = None, max_per_class: int | None = None,
                      rule: Any = None, rule_params: Mapping[str, Any] | None = None, selector: Any = None,
                      selector_params: Mapping[str, Any] | None = None, preset: str | None = None,
                      stop_at: str | None = None, preprocess: Preprocess | None = None, device: str = "cpu",
                      batch_size: int | None = None, backend: str | None = None, engine: str = "auto",
                      fast_math: bool = False, store: str | None = None, store_mode: str = "fill",
                      runner: LocalRunner | RayRunner | None = None,
                      decode_workers: int = 0, progress: bool = False, **model_options: Any) -> RunReport:
    """The graph of each class in ``targets`` as ``out_dir/class-<c>.json``, each written as soon as it is done.

    Parameters are those of :func:`ssa.analyse_many` (``model_options``: ``taps``, ``include_input``,
    ``channel_axes``, ``output_index``, ``name``, ...). A class whose graph the folder's manifest records with the
    same key (model, image set, class, selection, method) is kept, not computed again; see
    :mod:`ssa.scale.manifest`. ``runner``: :class:`LocalRunner` (default) or :class:`RayRunner`.
    ``decode_workers``: image-decoding processes (folders of image files).

    Returns the :class:`RunReport` (the results of the jobs that ran, and the rates per phase).
    """
    run = RunOptions(rule=rule, rule_params=rule_params, selector=selector, selector_params=selector_params,
                     preset=preset, branching=branching, stop_at=stop_at, engine=engine, fast_math=fast_math,
                     batch_size=batch_size, store=store, store_mode=store_mode, progress=progress)
    method = Method.of(run)  # refuses bad ones now
    batch_size = default_batch_size(device) if run.batch_size is None else run.batch_size
    selection = check_selection(Selection("prediction" if by_prediction else "labels", min_confidence, max_per_class))
    spec = ModelSpec.from_keywords(model, backend=backend, device=device,
                                   **{k: v for k, v in model_options.items() if v is not None})
    runner = runner or LocalRunner()
    with GraphFolders([Path(out_dir)]) as folders:
        memo = folders.of(Path(out_dir) / "x")
        source = open_source(images, labels=labels, preprocess=preprocess)
        job_model, network = load_driver_model(spec, source, images_spec=images, preprocess=preprocess)
        classes = resolve_classes(network, targets, stop_at, source, selection)
        if source.class_map:
            memo.remember("class_map", dict(source.class_map))  # the labels the run used, in the folder's manifest
        candidates, images_hash = class_candidates(network, source, classes, selection, memo=memo,
                                                   model_hash=job_model.model_hash, batch_size=batch_size,
                                                   workers=decode_workers, progress=progress)
        if images_hash is None:
            images_hash = images_hash_of(source, memo, workers=decode_workers, progress=progress)
        jobs = build_jobs(job_model, candidates, [(method, Path(out_dir))], selection, images_hash,
                          batch_size=batch_size, engine=engine, store=str(Path(store).resolve()) if store else None,
                          store_mode=store_mode, decode_workers=decode_workers,
                          fast_math=run.fast_math and device.startswith("cuda"))  # no effect on the CPU
        if isinstance(runner, LocalRunner):
            runner.worker.adopt(job_model, network)  # the driver's network: loaded once in this process
        else:
            del network  # workers load their own
            release_device_memory(device)
        try:
            return execute(jobs, runner, folders, progress=progress, say=print if progress else None)
        finally:
            runner.close()
