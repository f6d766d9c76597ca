"""Counting what the device path does, on the CPU (issue 20): aten calls (kernel launches on a GPU), calls that
synchronise the host with a device, and tensor -> numpy conversions.

:func:`ssa.core.arrays.device_path` keeps host tensors as tensors, so the traversal, the selectors and the
closed form take the code a GPU takes; a ``TorchDispatchMode`` sees every aten call. A synchronising call is
one whose result the host must wait for: ``.item()``, ``bool()``, ``int()``, ``float()`` of a tensor (all
``aten._local_scalar_dense``) and the ops whose output size depends on the values (``nonzero``, boolean
indexing, ``masked_select``, ``unique``).
"""

from __future__ import annotations

import contextlib
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field

import torch
from torch.utils._python_dispatch import TorchDispatchMode

from ssa.core.arrays import device_path

SYNCING = ("_local_scalar_dense", "nonzero", "masked_select", "_unique", "unique_dim", "unique_consecutive")


@dataclass
class Counts:
    aten: int = 0
    syncs: int = 0
    numpy: int = 0
    ops: Counter = field(default_factory=Counter)

    def top(self, n: int = 12) -> str:
        return ", ".join(f"{k} {v}" for k, v in self.ops.most_common(n))


class _Mode(TorchDispatchMode):
    def __init__(self, counts: Counts) -> None:
        super().__init__()
        self.counts = counts

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        name = func.overloadpacket.__name__
        self.counts.aten += 1
        self.counts.ops[name] += 1
        if name in SYNCING:
            self.counts.syncs += 1
        return func(*args, **(kwargs or {}))


@contextlib.contextmanager
def counting() -> Iterator[Counts]:
    """Count, within, on the device path: aten calls, synchronising calls and ``Tensor.numpy()`` calls."""
    counts = Counts()
    original = torch.Tensor.numpy

    def numpy(self, *args, **kwargs):
        counts.numpy += 1
        return original(self, *args, **kwargs)

    torch.Tensor.numpy = numpy  # type: ignore[method-assign]
    try:
        with device_path(), _Mode(counts):
            yield counts
    finally:
        torch.Tensor.numpy = original  # type: ignore[method-assign]
