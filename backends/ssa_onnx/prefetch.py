"""A first run's onnxruntime work, started in a background thread while the main thread imports torch.

Loading an ONNX file (:func:`ssa_onnx.backend.load_onnx`) first imports torch (2-3 s of one core, almost all of
it holding the GIL), then reads, checks and converts the file. On a model's first run the parity check then needs
onnxruntime's session of the file (0.4-0.7 s for ResNet-50), and the parity cache needs the file's SHA-256. Neither
needs torch, and both run mostly without the GIL (hashlib and onnxruntime's C++ code release it), so
:class:`Prefetch` computes them in a thread while the main thread imports torch: the second core, idle during the
import, does them.

Where the images are known before the model is loaded (``Session.prepare`` reads an array or a ``.npy`` file first
and hands them to :meth:`ssa_onnx.backend.OnnxBackend.prefetch`), the thread also runs the session on the parity
images, so that onnxruntime's side of the parity check is done by the time the converted module runs (on both
cores alone).

What it computes is exactly what the main thread would: the file's hash by
:func:`~ssa_onnx.parity_cache.file_sha256`, the session by :func:`~ssa_onnx.runtime.make_session` with the CPU
provider from the file's path, and its outputs on the same float32 images. The network takes the session only where
it would have built that one (:meth:`session`: the file itself is what onnxruntime loads, on the CPU), and the
outputs only of that session on exactly the images it asks for (:meth:`reference`); otherwise, or when anything
failed in the thread, it builds and runs its own as before, which reports any error as before. No session is built
where it would not be used: for a device other than the CPU, where onnxruntime could run on CUDA (the "cuda"
provider, or "auto" on a machine with a GPU device file), without the parity check, or when the parity cache
remembers a check of this file (a recalled run does not run onnxruntime).
"""

from __future__ import annotations

import os
import threading
from pathlib import Path
from typing import Any

import numpy as np

from . import parity_cache

__all__ = ["Prefetch", "wanted", "PARITY_IMAGES"]

#: how many of the first images the parity check compares by default (``OnnxNetwork``'s ``parity_images``)
PARITY_IMAGES = 8


def wanted(device: str, provider: str, check_parity: bool) -> bool:
    """Whether a first run of these options builds onnxruntime's CPU session for the parity check."""
    return str(device) == "cpu" and provider in ("auto", "cpu") and bool(check_parity)


#: device files of a GPU that torch may see (NVIDIA's driver, WSL 2's GPU, AMD's ROCm driver)
_GPU_DEVICES = ("/dev/nvidiactl", "/dev/nvidia0", "/dev/dxg", "/dev/kfd")


def _gpu_possible() -> bool:
    """False only where torch cannot see a GPU (no GPU device file): there :func:`~ssa_onnx.runtime.make_session`
    with the "auto" provider builds the CPU session, which the thread may then build without importing torch."""
    return any(os.path.exists(path) for path in _GPU_DEVICES)


def _run(session: Any, images: np.ndarray) -> dict[str, np.ndarray] | None:
    """Every output of ``session`` on ``images`` by name, where the model takes float32 images as they are (then
    :func:`~ssa_onnx.network.run_session` casts nothing either); else None (the network runs it itself)."""
    inputs = session.get_inputs()
    if len(inputs) != 1 or inputs[0].type != "tensor(float)" or images.dtype != np.float32:
        return None
    names = [o.name for o in session.get_outputs()]
    return dict(zip(names, session.run(names, {inputs[0].name: np.ascontiguousarray(images)}), strict=True))


class Prefetch:
    """The file's hash and, where a parity check will need it, onnxruntime's CPU session of ``path``, computed in a
    thread started at construction (see the module doc). The thread is not a daemon: a process that fails before
    using them exits once the thread is done (at most the session's creation), never while onnxruntime runs."""

    def __init__(self, path: str | os.PathLike, *, provider: str = "auto", images: Any = None,
                 parity_images: int = PARITY_IMAGES) -> None:
        self.path = str(Path(os.fspath(path)))  # as read_onnx records it (OnnxInfo.path)
        self.provider = provider
        self.parity_images = parity_images
        # the parity images, when known before loading (OnnxBackend.prefetch): the session is also run on them
        self._images = None if images is None else np.asarray(images)[:max(1, parity_images)]
        self._outputs: dict[str, np.ndarray] | None = None
        self._hash: str | None = None
        self._session: Any = None
        self._given: Any = None  # the session handed out (reference() answers for it only)
        self._hashed = threading.Event()
        self._thread = threading.Thread(target=self._run, name="ssa-onnx-prefetch")
        self._thread.start()

    def _run(self) -> None:
        try:
            self._hash = parity_cache.file_sha256(self.path)
        except Exception:  # noqa: BLE001 - the main thread hashes the file itself and reports what is wrong
            return
        finally:
            self._hashed.set()
        try:
            if parity_cache.enabled() and parity_cache.knows_file(self._hash):
                return  # a check of this file is remembered: the run most likely recalls it (else builds its own)
            from .runtime import make_session

            if self.provider == "auto" and _gpu_possible():
                return  # "auto" may pick CUDA: make_session decides, in the main thread
            self._session = make_session(self.path, "cpu", "cpu")
        except Exception:  # noqa: BLE001 - the network builds its own session, which reports the error
            self._session = None
            return
        try:
            self._outputs = _run(self._session, self._images) if self._images is not None else None
        except Exception:  # noqa: BLE001 - the network runs the session itself, which reports the error
            self._outputs = None

    def file_hash(self, path: str) -> str | None:
        """The SHA-256 of ``path`` (waits for it: the thread's first task), None if it is another file or failed."""
        if path != self.path:
            return None
        self._hashed.wait()
        return self._hash

    def reference(self, session: Any, images: np.ndarray, output: str) -> np.ndarray | None:
        """``session``'s ``output`` on ``images`` as :func:`~ssa_onnx.network.run_session` gives it (float64), where
        the thread ran this session (handed out by :meth:`session`) on exactly these images; else None. Once."""
        self._thread.join()
        done, ran = self._outputs, self._images
        if done is None or ran is None or session is not self._given or output not in done or not (
                images.dtype == ran.dtype and images.shape == ran.shape and np.array_equal(images, ran)):
            return None
        self._outputs = self._images = None
        return np.asarray(done[output], dtype=np.float64)

    def session(self, source: bytes | str) -> Any:
        """The session built from ``source`` (waits for the thread), None where the thread built none or
        ``source`` is not the file it built it from (a proto changed by :func:`~ssa_onnx.model.read_onnx`). The
        session is handed out once."""
        self._thread.join()
        session, self._session = self._session, None
        if not (isinstance(source, str) and source == self.path):
            self._outputs = self._images = None
            return None
        self._given = session
        return session
