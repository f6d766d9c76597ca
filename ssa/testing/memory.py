"""Peak resident memory of the current process, for memory tests and benchmarks."""

from __future__ import annotations

import resource

__all__ = ["peak_rss_kib"]


def peak_rss_kib() -> int:
    """This process's peak resident set size in KiB: ``VmHWM`` from ``/proc/self/status`` on Linux.

    Not ``getrusage(RUSAGE_SELF).ru_maxrss``: Linux keeps that value across fork and exec, so a small child
    of a large process (a test process that has loaded models) reports its parent's peak.
    """
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)  # elsewhere (macOS: bytes; close enough)
