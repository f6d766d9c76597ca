"""Freed memory kept in the C heap while the statistics pass runs (glibc on Linux; elsewhere nothing).

A forward pass allocates and frees activations of tens to hundreds of MB per layer and batch. glibc serves
blocks above its mmap threshold (at most 32 MiB) with a fresh ``mmap`` and returns them to the kernel on ``free``,
so every batch faults the same activations in again, page by page (system time the CPU clock counts: VGG16's
pass of 64 images took 1.4 million page faults, measured on branch ``vggort``). :func:`kept_memory` makes glibc
serve such blocks from its heap (``mallopt(M_MMAP_MAX, 0)``) and keep what is freed there (a high
``M_TRIM_THRESHOLD``), so the next batch reuses pages already mapped in. On exit it sets glibc's values back.
It does not return the heap's free pages to the kernel (``malloc_trim(0)``): the class that follows the pass reuses
them, and measured with the trim, ResNet-50's first class took 0.2-0.5 s more of CPU (32 images, 34,000-52,000 page
faults against 2,000-4,500; up to 0.15x its forward pass). glibc trims the heap's top itself above the restored
trim threshold, as after any other free.

It is scoped to the statistics pass (:func:`ssa.engines.statistics.collect` enters the network's
``statistics_pass()`` once; the torch backend's is this on the CPU for models of mostly wide spatial convolutions)
and not to the whole analysis: kept for the per-class path too (branch ``vggort``), ResNet-50's next class measured
0.25x -> 0.38x the forward pass (likely, not measured: large zeroed arrays served from reused heap memory must be
cleared, where a fresh mapping comes zeroed).

Values and graphs are unchanged: only where the memory comes from. ``SSA_KEEP_MEMORY=0`` turns it off; it also
does nothing where the user configured glibc's allocator (``GLIBC_TUNABLES`` naming ``glibc.malloc``, or a
``MALLOC_*_`` threshold variable), on a libc that is not glibc, and without ``ctypes``.
"""

from __future__ import annotations

import contextlib
import os
import sys
import threading
from collections.abc import Iterator
from typing import Any

from ssa.core.checks import env_switch

__all__ = ["RESTORED", "KEPT", "kept_memory", "libc"]

# glibc's mallopt parameters (malloc.h)
M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3
M_MMAP_MAX = -4

#: while the pass runs: no block is served by mmap, and freed memory is trimmed only above 2 GiB at the heap's top
KEPT = ((M_MMAP_MAX, 0), (M_TRIM_THRESHOLD, 2**31 - 1))
#: afterwards. glibc's defaults are a 128 KiB mmap threshold that grows, as mmapped blocks of up to 32 MiB are
#: freed, to their size (and the trim threshold to twice it); any mallopt of these parameters stops that growth for
#: good, and the grown value cannot be read. A process that ran a forward pass has freed such blocks, so its
#: thresholds are at or near the growth's ceiling: these are set (32 MiB, 64 MiB, glibc's 65,536 mmapped blocks).
RESTORED = ((M_MMAP_THRESHOLD, 32 << 20), (M_TRIM_THRESHOLD, 64 << 20), (M_MMAP_MAX, 65536))

#: environment variables by which a user configures glibc's allocator; any of them set: :func:`kept_memory` does
#: nothing
_USER_MALLOC = ("MALLOC_MMAP_MAX_", "MALLOC_TRIM_THRESHOLD_", "MALLOC_MMAP_THRESHOLD_", "MALLOC_TOP_PAD_")

_lock = threading.Lock()
_depth = 0  # kept_memory scopes open in this process (threads included): the settings change at 0 <-> 1
_libc: Any = None
_looked = False


def libc() -> Any:
    """glibc's ``mallopt`` through ctypes, or None (not Linux, not glibc, no ctypes)."""
    global _libc, _looked
    if _looked:
        return _libc
    _looked = True
    if not sys.platform.startswith("linux"):
        return None
    try:
        import ctypes

        lib = ctypes.CDLL(None)
        lib.gnu_get_libc_version.restype = ctypes.c_char_p  # glibc only (musl has mallopt as a stub)
        lib.gnu_get_libc_version()
        lib.mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
        lib.mallopt.restype = ctypes.c_int
    except (ImportError, OSError, AttributeError):
        return None
    _libc = lib
    return lib


def wanted() -> bool:
    """Whether :func:`kept_memory` changes anything: not turned off (``SSA_KEEP_MEMORY=0``) and glibc's allocator
    not configured by the user."""
    if env_switch("SSA_KEEP_MEMORY") is False:
        return False
    if any(name in os.environ for name in _USER_MALLOC) or "glibc.malloc" in os.environ.get("GLIBC_TUNABLES", ""):
        return False
    return True


@contextlib.contextmanager
def kept_memory() -> Iterator[None]:
    """Keep freed memory in glibc's heap while the block runs (module docstring); restore glibc's values when the
    last open scope exits, also when the block raises. Nested and concurrent scopes share one setting. Nothing
    happens where :func:`wanted` is false or :func:`libc` is None."""
    global _depth
    lib = libc() if wanted() else None
    if lib is None:
        yield
        return
    with _lock:
        if _depth == 0:
            for param, value in KEPT:
                lib.mallopt(param, value)
        _depth += 1
    try:
        yield
    finally:
        with _lock:
            _depth -= 1
            if _depth == 0:
                for param, value in RESTORED:
                    lib.mallopt(param, value)
