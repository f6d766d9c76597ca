"""``ssa analyse --targets ... --out-dir DIR`` as a function: per-class jobs into a resumable folder."""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from ssa.core.checks import check_int
from ssa.core.defaults import resolve_method
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

__all__ = ["analyse_to_folder"]


def analyse_to_folder(model: Any, images: Any, targets: str | Sequence[int], out_dir: str | os.PathLike, *,
                      branching: int = 3, labels: Any = None, by_prediction: bool = False,
                      min_confidence: float | None = None, max_per_class: int | None = None,
                      rule: Any = None, rule_params: Mapping[str, Any] | None = None, selector: Any = None,
                      selector_params: Mapping[str, Any] | None = None, preset: str | None = None,
                      stop_at: str | None = None, preprocess: Preprocess | None = None, device: str = "cpu",
                      batch_size: int = 32, backend: str | None = None, engine: str = "auto",
                      store: str | None = None, store_mode: str = "fill", runner: LocalRunner | RayRunner | None = None,
                      decode_workers: int = 0, progress: bool = False, **model_options: Any) -> RunReport:
    """The graph of each class in ``targets`` as ``out_dir/class-<c>.json``, each written as soon as it is done.

    Parameters are those of :func:`ssa.analyse_many` (``model_options``: ``taps``, ``include_input``,
    ``channel_axes``, ``output_index``, ``name``, ...). A class whose graph the folder's manifest records with the
    same key (model, image set, class, selection, method) is kept, not computed again; see
    :mod:`ssa.scale.manifest`. ``runner``: :class:`LocalRunner` (default) or :class:`RayRunner`.
    ``decode_workers``: image-decoding processes (folders of image files).

    Returns the :class:`RunReport` (the results of the jobs that ran, and the rates per phase).
    """
    branching = check_int("branching", branching, 1, "Pass --branching 1 or more.")
    batch_size = check_int("batch_size", batch_size, 1, "Pass --batch-size 1 or more.")
    rule, rule_params, selector, selector_params = resolve_method(preset, rule, rule_params, selector, selector_params)
    method = Method.resolved(rule, rule_params, selector, selector_params, branching, stop_at)  # refuses bad ones now
    selection = check_selection(Selection("prediction" if by_prediction else "labels", min_confidence, max_per_class))
    options = {k: v for k, v in model_options.items() if v is not None}
    runner = runner or LocalRunner()
    with GraphFolders([Path(out_dir)]) as folders:
        memo = folders.of(Path(out_dir) / "x")
        source = open_source(images, labels=labels, preprocess=preprocess)
        spec, network = load_driver_model(model, source, backend=backend, device=device, options=options,
                                          images_spec=images, preprocess=preprocess)
        classes = resolve_classes(network, targets, stop_at, source, selection)
        if source.class_map:
            memo.remember("class_map", dict(source.class_map))  # the labels the run used, in the folder's manifest
        candidates, images_hash = class_candidates(network, source, classes, selection, memo=memo,
                                                   model_hash=spec.model_hash, batch_size=batch_size,
                                                   workers=decode_workers, progress=progress)
        if images_hash is None:
            images_hash = images_hash_of(source, memo, workers=decode_workers, progress=progress)
        jobs = build_jobs(spec, candidates, [(method, Path(out_dir))], selection, images_hash, batch_size=batch_size,
                          engine=engine, store=str(Path(store).resolve()) if store else None, store_mode=store_mode,
                          decode_workers=decode_workers)
        if isinstance(runner, LocalRunner):
            runner.worker.adopt(spec, network)  # the driver's network: loaded once in this process
        else:
            del network  # workers load their own
            release_device_memory(device)
        try:
            return execute(jobs, runner, folders, progress=progress)
        finally:
            runner.close()
