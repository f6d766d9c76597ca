"""Planning class jobs: the model's identity, the image set's content hash, each class's candidate images.

All of it runs in the driver before any job, and refuses bad input there (a target the model does not
have, a class without images, an unreadable or non-finite image, a preprocessing that gives images of
different sizes), so a long run does not fail half-way for a reason that was visible at the start.

* The model is loaded once in the driver (its content hash keys the outputs; a local run hands the same
  loaded network to its worker).
* The image set's content hash (the ``images_hash`` every graph records; equal to what ``ssa analyse``
  records for the same images) is computed by streaming every image once, with decoding workers, and
  remembered in the output folder's manifest, so a re-run does not read the images again.
* By labels (class folders, a labels file) each class's candidates are its own images; the confidence
  filter runs inside the class's job. By prediction (``grouping="prediction"``) one streaming pass predicts
  every image and keeps, per class, the positions of at most ``max_images`` images (never the images).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ssa.analysis.grouping import all_classes, class_probabilities, parse_targets
from ssa.core.checks import check_int, check_label_range, check_stop_at
from ssa.core.interfaces import Network
from ssa.core.options import ModelSpec
from ssa.errors import InvalidInputError
from ssa.io.classmap import check_class_count
from ssa.io.datasets import ImageSource, StreamHash, content_hash, iter_batches
from ssa.io.outdir import OutputDir
from ssa.io.progress import progress
from ssa.scale.jobs import WRITE_LOG_ENV, ClassJob, JobModel, Method, Output, Selection, job_key
from ssa.session import check_target, load_model, n_classes, prepare_network

__all__ = ["absolute_spec", "load_driver_model", "release_device_memory", "resolve_classes", "check_selection",
           "images_hash_of", "class_candidates", "build_jobs", "Candidates"]


def absolute_spec(spec: Any) -> Any:
    """A model spec that names a file (``model.onnx``, ``dir/file.py:attr``) with an absolute path, so that a
    worker in another folder or on another machine (with the same shared files) finds it."""
    if not isinstance(spec, (str, os.PathLike)):
        return spec
    s = os.fspath(spec)
    path, sep, attr = s.rpartition(":") if ".py:" in s else (s, "", "")
    if Path(path).exists():
        return str(Path(path).resolve()) + (sep + attr if sep else "")
    return s


def load_driver_model(spec: ModelSpec, source: ImageSource, *, images_spec: Any = None, preprocess: Any = None
                      ) -> tuple[JobModel, Network]:
    """Load and prepare the model here (refusing a bad model or image shape before any job); returns what
    workers load and the network."""
    network = load_model(spec.source, backend=spec.backend, device=spec.device, **spec.load_options())
    prepare_network(network, source.read_many([0]), images_spec=images_spec, preprocess=preprocess)
    return JobModel(dataclasses.replace(spec, source=absolute_spec(spec.source)), network.model_hash()), network


def release_device_memory(device: str) -> None:
    """After the driver dropped its network: give its cached CUDA memory back (the workers need the GPU)."""
    if str(device).startswith("cuda"):
        import gc

        import torch  # only for a CUDA run

        gc.collect()
        torch.cuda.empty_cache()


def resolve_classes(network: Network, targets: str | Sequence[int], stop_at: str | None = None,
                    source: ImageSource | None = None, selection: Selection | None = None) -> list[int]:
    """The classes ``targets`` names (``"all"``: the classes present in ``source``'s labels, or every logit when
    grouping by prediction or without labels), checked against the model's logits and taps; class folders whose
    class is not a logit are refused."""
    n = n_classes(network)
    if source is not None:
        check_class_count(source.class_map, n)
    wanted = parse_targets(targets) if isinstance(targets, str) else parse_targets(list(targets))
    by_prediction = selection is not None and selection.grouping == "prediction"
    labels = None if source is None else source.labels
    if not by_prediction:  # grouped by prediction, the labels are not used
        check_label_range(labels, n)
    chosen = all_classes(n, labels, by_prediction) if isinstance(wanted, str) else parse_targets(wanted, n)
    assert not isinstance(chosen, str)  # only the text "all" stays a string
    classes = list(chosen)
    for c in classes:
        check_target(network, c)
    check_stop_at(stop_at, (t.name for t in network.taps))
    return classes


def check_selection(selection: Selection) -> Selection:
    if selection.grouping not in ("labels", "prediction"):
        raise InvalidInputError(f"grouping must be 'labels' or 'prediction', got {selection.grouping!r}.")
    conf = selection.min_confidence
    if conf is not None and (isinstance(conf, (bool, str)) or not isinstance(conf, (int, float, np.number))):
        raise InvalidInputError(f"min_confidence must be a number in [0, 1], got {conf!r}.")
    if conf is not None and not 0.0 <= float(conf) <= 1.0:
        raise InvalidInputError(f"min_confidence must be in [0, 1], got {conf}.")
    if selection.max_images is not None:
        check_int("max_per_class", selection.max_images, 1, "Pass --max-per-class 1 or more.")
    return selection


def _memo_key(kind: str, payload: Any) -> str:
    return kind + ":" + hashlib.blake2b(json.dumps(payload, sort_keys=True, default=str).encode(),
                                        digest_size=16).hexdigest()


def _bar(total: int, show: bool, desc: str):
    return progress(total, desc, "img", show=show)


def images_hash_of(source: ImageSource, memo: OutputDir | None = None, *, batch_size: int = 64, workers: int = 0,
                   progress: bool = False) -> str:
    """The content hash of the whole source (streamed; remembered in ``memo``'s manifest, keyed by the listing)."""
    key = _memo_key("images_hash", source.identity())
    if memo is not None and isinstance(memo.memo(key), str):
        return memo.memo(key)  # type: ignore[return-value]
    bar = _bar(len(source), progress, "hashing images")
    try:
        h = content_hash(source, batch_size=batch_size, workers=workers, on_batch=bar.update)
    finally:
        bar.close()
    if memo is not None:
        memo.remember(key, h)
    return h


#: ``{class: (candidate images, preselected, id of the candidates)}``
Candidates = dict[int, tuple[ImageSource, bool, str]]


def _ids(pos: np.ndarray) -> str:
    return hashlib.blake2b(np.ascontiguousarray(pos, dtype=np.int64).tobytes(), digest_size=16).hexdigest()


def class_candidates(network: Network, source: ImageSource, classes: Sequence[int], selection: Selection, *,
                     memo: OutputDir | None = None, model_hash: str = "", batch_size: int = 32, workers: int = 0,
                     progress: bool = False) -> tuple[Candidates, str | None]:
    """Each class's candidate images (see the module docstring); with prediction grouping also the whole set's
    content hash (computed in the same pass), else None."""
    if selection.grouping == "labels":
        labels = source.labels
        if labels is None:
            if len(classes) != 1:
                raise InvalidInputError(
                    "the images have no labels, so they cannot be grouped by class; pass --labels labels.npy, "
                    "a folder with one sub-folder per class (folder/3/*.png), or --by-prediction.")
            pos = np.arange(len(source))
            return {classes[0]: (source, False, _ids(pos))}, None
        out: Candidates = {}
        for c in classes:
            pos = np.flatnonzero(labels == c)
            if pos.size == 0:
                raise InvalidInputError(f"no image is labelled {c}; drop it from --targets or add images of it.")
            out[c] = (source.subset(pos), False, _ids(pos))
        return out, None
    key = _memo_key("prediction", [source.identity(), model_hash, selection.as_dict(), list(classes)])
    remembered = memo.memo(key) if memo is not None else None
    if isinstance(remembered, dict) and "hash" in remembered and "classes" in remembered:
        chosen = {int(c): np.asarray(p, dtype=np.int64) for c, p in remembered["classes"].items()}
        images_hash = str(remembered["hash"])
    else:
        chosen, images_hash = _predict_pass(network, source, classes, selection, batch_size, workers, progress)
        if memo is not None:
            memo.remember(key, {"hash": images_hash, "classes": {str(c): p.tolist() for c, p in chosen.items()}})
    return {c: (source.subset(p), True, _ids(p)) for c, p in chosen.items()}, images_hash


def _predict_pass(network: Network, source: ImageSource, classes: Sequence[int], selection: Selection,
                  batch_size: int, workers: int, progress: bool) -> tuple[dict[int, np.ndarray], str]:
    """One streaming pass: per class, the positions of the first ``max_images`` images predicted as it (with
    probability >= ``min_confidence``); and the set's content hash. Holds positions, never images."""
    want = set(int(c) for c in classes)
    limit = selection.max_images
    kept: dict[int, list[int]] = {c: [] for c in want}
    seen = {c: 0 for c in want}
    best = {c: -1.0 for c in want}
    h = StreamHash(len(source))
    bar = _bar(len(source), progress, "predicting")
    try:
        for idx, batch in iter_batches(source, batch_size=batch_size, workers=workers):
            if not np.isfinite(batch).all():
                raise InvalidInputError("an image holds NaN or infinite values after preprocessing; fix it or the "
                                        "preprocessing (std 0?).")
            h.update(batch)
            probs = class_probabilities(network, batch, batch_size)
            pred = probs.argmax(axis=1)
            for i, p, row in zip(idx, pred, probs, strict=False):
                c = int(p)
                if c not in want:
                    continue
                seen[c] += 1
                best[c] = max(best[c], float(row[c]))
                if selection.min_confidence is not None and row[c] < float(selection.min_confidence):
                    continue
                if limit is None or len(kept[c]) < limit:
                    kept[c].append(int(i))
            bar.update(len(idx))
    finally:
        bar.close()
    for c in classes:
        if seen[c] == 0:
            raise InvalidInputError(f"no image is predicted as class {c}; drop it from --targets or add images of it.")
        if not kept[c]:
            raise InvalidInputError(
                f"class {c} has no image with probability >= {selection.min_confidence:g} (best {best[c]:.3g} of "
                f"{seen[c]} predicted as it); lower --min-confidence or drop class {c} from --targets.")
    return {c: np.asarray(kept[c], dtype=np.int64) for c in classes}, h.hexdigest()


def build_jobs(model: JobModel, candidates: Candidates, methods: Sequence[tuple[Method, Path]], selection: Selection,
               images_hash: str, *, batch_size: int = 32, engine: str = "auto", store: str | None = None,
               store_mode: str = "fill", decode_workers: int = 0, fast_math: bool = False) -> list[ClassJob]:
    """One job per class, with one output per (method, folder): ``folder/class-<c>.json``.

    ``SSA_WRITE_LOG`` (environment), when set, names the write log the jobs append to (see :mod:`ssa.scale.jobs`).
    """
    log = os.environ.get(WRITE_LOG_ENV) or None
    jobs = []
    for c, (images, preselected, ids) in candidates.items():
        outputs = tuple(
            Output(m, (folder / f"class-{c}.json").resolve(),
                   job_key(model_hash=model.model_hash, model_options=model.key_options, images_hash=images_hash,
                           target=c, selection=selection, method=m, candidates=ids,
                           engine=engine + ("+fast-math" if fast_math else "")))
            for m, folder in methods)
        jobs.append(ClassJob(model, c, images, selection, outputs, images_hash, preselected, batch_size, engine, store,
                             store_mode, decode_workers, str(Path(log).resolve()) if log else None, fast_math))
    return jobs
