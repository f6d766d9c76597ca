"""Device and host: exact arithmetic on CUDA, and copies of device tensors to pinned host memory.

Both are re-exported by :mod:`ssa_torch.network` (``from ssa_torch.network import exact_arithmetic``).
"""

from __future__ import annotations

import contextlib
from collections.abc import Mapping
from typing import Any

import numpy as np
import torch

__all__ = ["HostCopy", "exact_arithmetic"]


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


@contextlib.contextmanager
def exact_arithmetic(device: str):
    """While analysing on CUDA: no TF32 in matrix products and convolutions, deterministic algorithms.

    TF32 rounds inputs to 10 mantissa bits and would make CUDA graphs differ from CPU graphs; the
    previous settings are restored afterwards. cuDNN benchmarks its algorithms (among the deterministic
    ones): with benchmarking off it picked slow FFT kernels for the float32 statistics pass (issue 20).
    On the CPU this does nothing.
    """
    if torch.device(device).type != "cuda":
        yield
        return
    saved = (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32, torch.backends.cudnn.benchmark,
             torch.are_deterministic_algorithms_enabled(), torch.is_deterministic_algorithms_warn_only_enabled())
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    torch.backends.cudnn.benchmark = True
    torch.use_deterministic_algorithms(True, warn_only=True)
    try:
        yield
    finally:
        (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32,
         torch.backends.cudnn.benchmark) = saved[:3]
        torch.use_deterministic_algorithms(saved[3], warn_only=saved[4])
