"""The memory budget of one block of intermediate arrays, in one place (``SSA_WORK_BYTES``).

The engines (a block of omega in :mod:`ssa.engines.closed_form`), the torch backend (chunks of batched
gradients and of closed-form terms) and the explorer's saliency maps size their chunks by it.
"""

from __future__ import annotations

import os

from ssa.errors import InvalidInputError

__all__ = ["WORK_BYTES", "GPU_WORK_BYTES", "work_bytes"]

#: bytes of one chunk of intermediate arrays on the CPU (256 MiB)
WORK_BYTES = 256 << 20
#: the same on a GPU (1 GiB)
GPU_WORK_BYTES = 1 << 30


def work_bytes(device: str) -> int:
    """Memory budget of one block on ``device``: ``SSA_WORK_BYTES`` (at least 1 MiB), else :data:`WORK_BYTES`
    on the CPU and :data:`GPU_WORK_BYTES` on a GPU."""
    env = os.environ.get("SSA_WORK_BYTES")
    if env:
        try:
            return max(1 << 20, int(float(env)))
        except ValueError:
            raise InvalidInputError(f"SSA_WORK_BYTES must be a number of bytes, got {env!r}.") from None
    return GPU_WORK_BYTES if str(device).startswith("cuda") else WORK_BYTES
