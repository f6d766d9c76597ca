"""Device and host: exact arithmetic on CUDA, and copies of device tensors to pinned host memory.

Both are re-exported by :mod:`ssa_torch.network` (``from ssa_torch.network import exact_arithmetic``).
"""

from __future__ import annotations

import contextlib
import os
import threading
from collections.abc import Mapping
from typing import Any

import numpy as np
import torch
import torch.utils.deterministic as _deterministic

from ssa.core.checks import env_switch

__all__ = ["HostCopy", "channels_last", "exact_arithmetic", "exact_entries", "statistics_input", "tf32_allowed",
           "wide_convolutions"]


class HostCopy:
    """Device tensors being copied to pinned host memory (see :meth:`TorchNetwork.to_host_async`)."""

    def __init__(self, arrays: Mapping[str, Any], device: str) -> None:
        self._event = None
        if torch.device(device).type == "cuda":
            self._host = {}
            for k, v in arrays.items():
                buf = torch.empty(v.shape, dtype=v.dtype, pin_memory=True)
                buf.copy_(v, non_blocking=True)
                self._host[k] = buf
            self._event = torch.cuda.Event()
            self._event.record()
        else:
            self._host = {k: (v.detach() if isinstance(v, torch.Tensor) else torch.as_tensor(v))
                          for k, v in arrays.items()}

    def result(self) -> dict[str, np.ndarray]:
        if self._event is not None:
            self._event.synchronize()
        return {k: v.numpy() for k, v in self._host.items()}


#: cuBLAS gives the same sums on every run only with a fixed workspace; PyTorch asks for this setting when
#: deterministic algorithms are on (it is read when cuBLAS first runs, so it is set on import, unless set already)
os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")


class _Entries:
    """How deep :func:`exact_arithmetic` is entered, and how often its outermost entry set the flags."""

    lock = threading.Lock()
    depth = 0
    count = 0  # outermost entries: the times the process-wide flags were set (tests count them)


def exact_entries() -> int:
    """How many times :func:`exact_arithmetic` set the process-wide flags (its outermost entries on CUDA)."""
    return _Entries.count


def _on_cuda(device: str) -> bool:
    return torch.device(device).type == "cuda"


_NEW_API = hasattr(torch.backends.cuda.matmul, "fp32_precision") and hasattr(torch.backends.cudnn, "conv")


def tf32_allowed() -> tuple[bool, bool]:
    """Whether CUDA matrix products and cuDNN convolutions may round float32 inputs to TF32 now."""
    if _NEW_API:
        return (torch.backends.cuda.matmul.fp32_precision == "tf32",
                torch.backends.cudnn.conv.fp32_precision == "tf32")
    return torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32  # torch < 2.9


def _precision() -> tuple[Any, Any]:
    if _NEW_API:
        return torch.backends.cuda.matmul.fp32_precision, torch.backends.cudnn.conv.fp32_precision
    return torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32


def _set_precision(matmul: Any, conv: Any) -> None:
    if _NEW_API:  # the legacy allow_tf32 flags beside these raise (PyTorch >= 2.9 refuses a mix of the two)
        torch.backends.cuda.matmul.fp32_precision, torch.backends.cudnn.conv.fp32_precision = matmul, conv
    else:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = matmul, conv


def _tf32(on: bool) -> Any:
    return ("tf32" if on else "ieee") if _NEW_API else on


@contextlib.contextmanager
def exact_arithmetic(device: str, *, fast_math: bool = False):
    """While analysing on CUDA: no TF32 in matrix products and convolutions, deterministic algorithms.

    TF32 rounds inputs to 10 mantissa bits and would make CUDA graphs differ from CPU graphs; ``fast_math``
    allows it (``--fast-math``). cuDNN benchmarks its algorithms among the deterministic ones
    (``cudnn.benchmark`` on, ``cudnn.deterministic`` and ``torch.use_deterministic_algorithms`` on, warning
    only where an operation has no deterministic form): with benchmarking off cuDNN's heuristics picked slow
    FFT kernels for the float32 statistics pass (issue 20), with it on it times the candidates once per shape.

    Re-entrant: the outermost entry sets the process-wide flags and restores the caller's afterwards; an entry
    inside it (a network method called during a session's analysis) changes nothing. The session enters it once
    per analysis (:meth:`ssa.core.interfaces.Network.arithmetic`). On the CPU this does nothing.
    """
    if not _on_cuda(device):
        yield
        return
    with _Entries.lock:
        outer = _Entries.depth == 0
        _Entries.depth += 1
        if outer:
            _Entries.count += 1
            saved = (_precision(), torch.backends.cudnn.benchmark, torch.backends.cudnn.deterministic,
                     torch.are_deterministic_algorithms_enabled(),
                     torch.is_deterministic_algorithms_warn_only_enabled(), _deterministic.fill_uninitialized_memory)
            _set_precision(_tf32(fast_math), _tf32(fast_math))
            torch.backends.cudnn.benchmark = True
            torch.backends.cudnn.deterministic = True
            torch.use_deterministic_algorithms(True, warn_only=True)
            # deterministic mode would also fill every torch.empty with NaN (the pinned host buffers of the
            # statistics included): ssa writes every buffer it allocates, so that pass over memory is skipped
            _deterministic.fill_uninitialized_memory = False
    try:
        yield
    finally:
        with _Entries.lock:
            _Entries.depth -= 1
            if outer:
                _set_precision(*saved[0])
                torch.backends.cudnn.benchmark, torch.backends.cudnn.deterministic = saved[1], saved[2]
                torch.use_deterministic_algorithms(saved[3], warn_only=saved[4])
                _deterministic.fill_uninitialized_memory = saved[5]


def channels_last(device: str) -> bool:
    """Whether the statistics forward may run channels-last (NHWC) on ``device`` (:func:`statistics_input` decides).

    On the CPU by default (``SSA_CHANNELS_LAST=0`` turns it off), for models of mostly wide spatial convolutions
    (:func:`wide_convolutions`): oneDNN's convolutions and max-pooling run faster on NHWC activations there, and the
    per-image correlation kernels read them as they lie (:mod:`ssa_torch.closed_form.conv_nhwc`; docs/device.md has
    the numbers). On CUDA only with ``SSA_CHANNELS_LAST=1``, until a GPU run shows it helps (``bash
    benchmarks/gpu_run.sh bench`` times both layouts). Only the input is converted: the convolutions then run
    channels-last, and so do the operations after them.
    """
    flag = env_switch("SSA_CHANNELS_LAST")
    if _on_cuda(device):
        return flag is True
    return flag is not False and torch.device(device).type == "cpu"


#: on the CPU, a model runs channels-last when most of its one-group 2-D convolutions with this many input channels
#: have kernels larger than 1x1: there oneDNN's NHWC forward is faster and the NHWC kernels cost what the NCHW ones do
#: (VGG16: the statistics pass about 10 % faster); where 1x1 convolutions dominate (ResNet-50's bottlenecks) the NHWC
#: per-image products are slower and the defaults' statistics measured 5-7 % slower; elsewhere (a transformer's one
#: patch embedding, small convolutions) the layout saves nothing and would only sum in another order than before
WIDE_CONV_CHANNELS = 32


def wide_convolutions(module: torch.nn.Module) -> bool:
    """Whether most of ``module``'s ``nn.Conv2d`` with one group and :data:`WIDE_CONV_CHANNELS` inputs or more have a
    kernel larger than 1x1 (and there is one): where the channels-last statistics pass measured faster."""
    wide = [m for m in module.modules()
            if isinstance(m, torch.nn.Conv2d) and m.groups == 1 and m.in_channels >= WIDE_CONV_CHANNELS]
    return 2 * sum(m.kernel_size != (1, 1) for m in wide) > len(wide)


def statistics_input(x: torch.Tensor, device: str, module: torch.nn.Module | None = None) -> torch.Tensor:
    """The analysis forward's input (the statistics pass, the autograd steps, the ONNX parity forward) in the layout
    :func:`channels_last` chooses for ``device`` and, on the CPU, for ``module`` (:func:`wide_convolutions`; ``None``:
    by the device alone). Values unchanged."""
    if x.dim() == 4 and channels_last(device) and (module is None or _on_cuda(device) or wide_convolutions(module)):
        return x.contiguous(memory_format=torch.channels_last)
    return x
