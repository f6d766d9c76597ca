"""Image selection as in the paper: the images of the class the model is sure about.

The paper analysed, per class, 100 training images whose predicted probability for the
correct class exceeds 0.99 (paper, section 4; method doc, section 7). :func:`select_confident`
does that selection: ONNX models run in onnxruntime (their own output, so nothing depends on
the conversion), any other model through its logits and a softmax.
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np

from ssa.api import load_model
from ssa.core.checks import check_int
from ssa.core.interfaces import Network
from ssa.errors import InvalidInputError
from ssa.io.images import load_images
from ssa.io.preprocess import resolve_preprocess

from .model import input_shape_of, read_onnx
from .network import (
    OnnxNetwork,
    check_input_shape,
    output_to_probabilities,
    run_session,
    softmax,
)
from .runtime import make_session

__all__ = ["select_confident", "class_probabilities"]


def _probability_fn(model: Any, device: str, output_index: int | None, provider: str):
    """A function batch -> (B, n_classes) probabilities, and the network when one was loaded."""
    if isinstance(model, OnnxNetwork):
        return model.class_probabilities
    if isinstance(model, (str, os.PathLike)) and os.fspath(model).lower().endswith(".onnx"):
        onnx_model = read_onnx(model, output_index=output_index)
        info = onnx_model.info
        session = make_session(onnx_model.session_source(), provider, device)
        final = ""
        for node in onnx_model.proto.graph.node:
            if info.output.name in node.output:
                final = {"Softmax": "softmax", "LogSoftmax": "log_softmax"}.get(node.op_type, "")

        def run(batch: np.ndarray) -> np.ndarray:
            check_input_shape(info, batch)
            return output_to_probabilities(run_session(session, info, batch), None, final)

        return run
    network = model if isinstance(model, Network) else load_model(model, device=device, output_index=output_index)
    state = {"prepared": False}

    def run_torch(batch: np.ndarray) -> np.ndarray:
        if not state["prepared"]:
            try:
                network.taps  # noqa: B018 - raises when prepare() has not run
            except RuntimeError:
                network.prepare(batch)
            state["prepared"] = True
        return softmax(np.asarray(network.logits(batch), dtype=np.float64))

    return run_torch


def class_probabilities(model: Any, images: np.ndarray, *, batch_size: int = 32, device: str = "cpu",
                        output_index: int | None = None, provider: str = "auto") -> np.ndarray:
    """Class probabilities of every image, shape (N, n_classes) (onnxruntime for ONNX models)."""
    fn = _probability_fn(model, device, output_index, provider)
    parts = [fn(images[i:i + batch_size]) for i in range(0, images.shape[0], batch_size)]
    return np.concatenate(parts, axis=0)


def select_confident(network_or_path: Any, images: Any, target: int, min_confidence: float = 0.99,
                     max_images: int | None = 100, batch_size: int = 32, *, preprocess: Any = None,
                     labels: Any = None, device: str = "cpu", output_index: int | None = None,
                     provider: str = "auto", return_indices: bool = False):
    """The images of class ``target`` the model is sure about (paper: p > 0.99, 100 images per class).

    Parameters
    ----------
    network_or_path : an ``.onnx`` path or :class:`OnnxNetwork` (run by onnxruntime), or anything
        :func:`ssa.load_model` accepts (probabilities = softmax of its logits).
    images : what :func:`ssa.io.images.load_images` accepts (array, ``.npy``, folder with ``preprocess``).
        With ``labels``, only images labelled ``target`` are considered.
    target : the class. min_confidence : keep images whose probability of ``target`` is >= this.
    max_images : keep at most this many (the first ones in the given order); None keeps all.
    batch_size : images per inference call.

    Returns
    -------
    ``(images, probabilities)``: the kept images (float32, in input order) and their probability of
    ``target``; with ``return_indices`` also their indices into the (label-filtered) input.
    Raises :class:`ssa.errors.InvalidInputError` when no image qualifies.
    """
    target = check_int("target", target, 0)
    batch_size = check_int("batch_size", batch_size, 1)
    if max_images is not None:
        max_images = check_int("max_images", max_images, 1, "Pass --max-images 1 or more.")
    if isinstance(min_confidence, bool) or not isinstance(min_confidence, (int, float)) or not 0 <= min_confidence <= 1:
        raise InvalidInputError(f"min_confidence must be a number in [0, 1], got {min_confidence!r}.")
    pre = preprocess
    if pre is not None and not hasattr(pre, "layout"):
        shape = None
        if isinstance(network_or_path, OnnxNetwork):
            shape = network_or_path.onnx.info.input.shape
        elif isinstance(network_or_path, (str, os.PathLike)) and os.fspath(network_or_path).lower().endswith(".onnx"):
            shape = input_shape_of(network_or_path)
        pre = resolve_preprocess(pre, input_shape=shape)
    arr, lab = load_images(images, preprocess=pre, labels=labels)
    if lab is not None:
        keep = np.asarray(lab).reshape(-1) == target
        if not keep.any():
            raise InvalidInputError(f"no image is labelled {target}; choose a target that has images.")
        arr = arr[keep]
    fn = _probability_fn(network_or_path, device, output_index, provider)
    kept: list[int] = []
    probs: list[float] = []
    best = 0.0
    for start in range(0, arr.shape[0], batch_size):
        p = fn(arr[start:start + batch_size])
        if target >= p.shape[1]:
            raise InvalidInputError(f"target must be in [0, {p.shape[1] - 1}] (the model has {p.shape[1]} classes), "
                                    f"got {target}.")
        pt = p[:, target]
        best = max(best, float(pt.max()))
        for j in np.flatnonzero(pt >= min_confidence):
            kept.append(start + int(j))
            probs.append(float(pt[j]))
        if max_images is not None and len(kept) >= max_images:
            break
    if max_images is not None:
        kept, probs = kept[:max_images], probs[:max_images]
    if not kept:
        raise InvalidInputError(
            f"no image reaches probability {min_confidence:g} for class {target} (best {best:.3g} over "
            f"{arr.shape[0]} image(s)); lower --min-confidence or check the images and --preprocess."
        )
    idx = np.asarray(kept, dtype=np.int64)
    out = (np.ascontiguousarray(arr[idx]), np.asarray(probs, dtype=np.float64))
    return (*out, idx) if return_indices else out
