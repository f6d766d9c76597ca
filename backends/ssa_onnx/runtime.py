"""onnxruntime sessions: quiet logging and a provider that really works.

onnxruntime-gpu lists ``CUDAExecutionProvider`` as available even on machines where
its CUDA libraries cannot be loaded; it then logs an error and falls back to the CPU.
:func:`make_session` tries CUDA only when a GPU is visible, with the logger silenced
during the try, checks which provider the session really got, and otherwise uses the
CPU. Every session logs at severity 3 (errors only), and the default logger is set
to 3 as well.
"""

from __future__ import annotations

import contextlib
import io
import os
from typing import Any

from ssa.errors import InvalidInputError, ModelLoadError

__all__ = ["make_session", "session_options", "PROVIDERS"]

PROVIDERS = ("auto", "cpu", "cuda")
_CUDA_BROKEN = False  # set once CUDA failed in this process: do not try (and log) again


def _ort():
    import onnxruntime as ort

    ort.set_default_logger_severity(3)
    return ort


def session_options(severity: int = 3):
    """Session options logging at ``severity`` (3: errors only, 4: fatal only)."""
    ort = _ort()
    so = ort.SessionOptions()
    so.log_severity_level = severity
    # idle onnxruntime threads must not spin: torch runs right after them in the same process
    so.add_session_config_entry("session.intra_op.allow_spinning", "0")
    so.add_session_config_entry("session.inter_op.allow_spinning", "0")
    return so


def _gpu_visible() -> bool:
    try:
        import torch

        return bool(torch.cuda.is_available())
    except Exception:  # noqa: BLE001 - no torch, or a broken CUDA install: no GPU for us
        return False


@contextlib.contextmanager
def _quiet_logger(ort):
    ort.set_default_logger_severity(4)
    try:
        yield
    finally:
        ort.set_default_logger_severity(3)


def _cuda_session(ort, model: bytes | str, device_id: int):
    global _CUDA_BROKEN
    if hasattr(ort, "preload_dlls"):  # load CUDA / cuDNN from the nvidia-* wheels torch also uses
        with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
            try:
                ort.preload_dlls(cuda=True, cudnn=True, msvc=False)
            except Exception:  # noqa: BLE001
                pass
    attempts = [{"device_id": device_id, "use_tf32": 0}, {"device_id": device_id}]
    with _quiet_logger(ort):
        for opts in attempts:
            try:
                sess = ort.InferenceSession(model, sess_options=session_options(4),
                                            providers=[("CUDAExecutionProvider", opts), "CPUExecutionProvider"])
            except Exception:  # noqa: BLE001 - bad option or CUDA failure: next attempt, then CPU
                continue
            if sess.get_providers() and sess.get_providers()[0] == "CUDAExecutionProvider":
                return sess
            break
    _CUDA_BROKEN = True
    return None


def make_session(model: bytes | str | os.PathLike, provider: str = "auto", device: str = "cpu") -> Any:
    """An ``onnxruntime.InferenceSession`` for ``model`` (serialized bytes or a path).

    Parameters
    ----------
    provider : "auto" (CUDA when a GPU is visible and a CUDA session really starts, else CPU),
        "cpu", or "cuda" (fails when CUDA does not work).
    device : the torch device of the analysis; "cuda:N" picks the GPU for the CUDA provider.
    """
    if provider not in PROVIDERS:
        raise InvalidInputError(f"provider must be one of {', '.join(PROVIDERS)}, got {provider!r}.")
    ort = _ort()
    source: bytes | str = model if isinstance(model, bytes) else os.fspath(model)
    device_id = 0
    if isinstance(device, str) and device.startswith("cuda:"):
        try:
            device_id = int(device.split(":", 1)[1])
        except ValueError:
            device_id = 0
    if provider in ("auto", "cuda") and not _CUDA_BROKEN and "CUDAExecutionProvider" in ort.get_available_providers() \
            and _gpu_visible():
        sess = _cuda_session(ort, source, device_id)
        if sess is not None:
            return sess
    if provider == "cuda":
        raise InvalidInputError("onnxruntime cannot use CUDA here (no GPU, or its CUDA libraries do not load); "
                                "use provider='cpu' (--provider cpu).")
    try:
        return ort.InferenceSession(source, sess_options=session_options(3), providers=["CPUExecutionProvider"])
    except Exception as exc:  # noqa: BLE001 - onnxruntime raises its own exception types
        msg = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ModelLoadError(f"onnxruntime cannot load the model ({msg[:200]}); check that the file is a valid "
                             "ONNX model for this onnxruntime version.") from None
