"""The ONNX backend class: .onnx files, converted with onnx2torch and checked against onnxruntime."""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

from ssa.core.interfaces import Backend
from ssa.errors import InvalidInputError

from .model import input_shape_of, read_onnx  # light: onnx is imported when a file is read
from .prefetch import PARITY_IMAGES, Prefetch, wanted  # light: onnxruntime is imported in its thread

__all__ = ["OnnxBackend", "load_onnx"]

_OPTIONS = ("name", "taps", "include_input", "channel_axes", "tokens", "output_index", "provider",
            "parity_tolerance", "parity_images", "check_parity")


def load_onnx(source: str | os.PathLike, *, device: str = "cpu", name: str | None = None,
              output_index: int | None = None, **options: Any):
    """Read, validate and convert an ONNX file; returns an :class:`~ssa_onnx.network.OnnxNetwork`.

    The parity check against onnxruntime runs in ``prepare`` (on the first batch).
    Options: ``taps``, ``include_input``, ``channel_axes``, ``tokens`` (as the PyTorch backend), ``output_index``
    (which output holds the class scores when there are several), ``provider`` ("auto", "cpu",
    "cuda"), ``parity_tolerance``, ``parity_images``, ``check_parity``.
    """
    unknown = sorted(set(options) - set(_OPTIONS))
    if unknown:
        raise InvalidInputError(f"unknown ONNX backend option {unknown[0]!r}; known options: {', '.join(_OPTIONS)}.")
    prefetch = _prefetched(source, device, options)  # its thread runs beside torch's import, just below
    from .convert import convert_model  # torch and onnx2torch: imported when a model is loaded
    from .network import OnnxNetwork

    start = time.perf_counter()
    model = read_onnx(source, output_index=output_index)
    read = time.perf_counter()
    gm = convert_model(model)
    network = OnnxNetwork(gm, model, name=name or Path(os.fspath(source)).stem, device=device, **options)
    network.prefetch = prefetch
    network.stages.add("loading", read - start)
    network.stages.add("conversion", time.perf_counter() - read)
    return network


#: path -> the Prefetch that OnnxBackend.prefetch started for it (with the images), taken by load_onnx
_STARTED: dict[str, Prefetch] = {}


def _prefetched(source: str | os.PathLike, device: str, options: dict[str, Any]) -> Prefetch | None:
    """The :class:`~ssa_onnx.prefetch.Prefetch` of ``source`` for these options: the one started with the images
    (:meth:`OnnxBackend.prefetch`), else a new one without them; None where a run would not use it."""
    path = str(Path(os.fspath(source)))
    started = _STARTED.pop(path, None)
    provider = options.get("provider", "auto")
    if not (Path(path).is_file() and wanted(device, provider, options.get("check_parity", True))):
        return None
    if started is not None and started.provider == provider and \
            started.parity_images == options.get("parity_images", PARITY_IMAGES):
        return started
    return Prefetch(path, provider=provider)


class OnnxBackend(Backend):
    """ONNX files (.onnx), converted with onnx2torch and checked against onnxruntime."""

    name = "onnx"
    description = "ONNX file (.onnx), converted with onnx2torch and checked against onnxruntime"
    priority = 10

    @classmethod
    def can_load(cls, source: Any) -> bool:
        return isinstance(source, (str, os.PathLike)) and os.fspath(source).lower().endswith(".onnx")

    def load(self, source: Any, *, device: str = "cpu", **options: Any):
        return load_onnx(source, device=device, **options)

    def prefetch(self, source: Any, images: Any, *, device: str = "cpu", **options: Any) -> None:
        """Start hashing ``source``, building onnxruntime's session of it and running it on the parity images (the
        first ``parity_images`` of ``images``) in a thread, before the file is loaded
        (:class:`~ssa.core.capabilities.SupportsPrefetch`; :mod:`ssa_onnx.prefetch`); :func:`load_onnx` takes it."""
        if not (self.can_load(source) and Path(os.fspath(source)).is_file()):
            return
        provider = options.get("provider", "auto")
        if not wanted(device, provider, options.get("check_parity", True)):
            return
        n = options.get("parity_images", PARITY_IMAGES)
        if isinstance(n, bool) or not isinstance(n, int) or n < 1:
            return  # refused when the network is made
        path = str(Path(os.fspath(source)))
        _STARTED[path] = Prefetch(path, provider=provider, images=images, parity_images=n)

    def declared_input_shape(self, source: Any) -> tuple[int | None, ...] | None:
        """The input shape the file declares (``ssa.core.capabilities.SupportsDeclaredInputShape``); None when
        the file cannot be read (loading it reports why)."""
        try:
            shape = input_shape_of(source)
        except Exception:  # noqa: BLE001 - loading reports a bad file with its own message
            return None
        return None if shape is None else tuple(shape)
