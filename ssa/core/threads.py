"""How many CPU threads torch uses in an ``ssa`` process: the one place that decides it.

torch's default is one thread per physical core of the machine, whatever else runs there. On a machine
that other processes keep busy, the threads of one parallel region wait for each other at every
operator (a thread that is not scheduled holds all of them up), and a small model's run becomes many
times slower than on one thread: issue 18 measured 8 min 20 s against 22.6 s on a loaded 2-core
machine. The command line therefore uses, unless told otherwise (``--threads N`` or the
``OMP_NUM_THREADS`` environment variable),

    min(the cores this process may use, torch's default, the cores other processes leave idle)

threads, at least one (:func:`default_threads`). "May use" is the CPU affinity
(``os.sched_getaffinity``) and a container's CPU quota (cgroup ``cpu.max`` / ``cpu.cfs_quota_us``);
torch's default is the number of physical cores among them; "left idle" is the number of CPUs less the
busier of what other processes used since ``ssa`` was imported and the processes running right now,
rounded to the nearest integer (:func:`busy_cpus`). What others used is the machine's busy CPU time
(``/proc/stat``) less this process's own, over the time since the import (the import of ``ssa`` and its
libraries, a few tenths of a second before the count is set); the 1-minute load average stands in where
that time is shorter than :data:`MIN_WINDOW_S` or ``/proc/stat`` cannot be read. The load average lags: it
still counts a run that ended seconds ago (after a minute of back-to-back runs on an idle 2-core machine
it is near 1), and it used to give the next run one thread on an idle machine. Work that runs in parallel
uses one thread per worker: Ray actors set theirs (``ssa.scale.runners``), torch's ``DataLoader`` decoding
processes run on one thread each.

Python callers keep control of their own process: :func:`use_threads` only lowers the count of a
process that has already imported torch, and only when asked by the command line.
"""

from __future__ import annotations

import math
import os
import sys
import time
from collections.abc import MutableMapping
from pathlib import Path

from ssa.errors import InvalidInputError

__all__ = ["available_cores", "busy_cpus", "default_threads", "others_busy", "torch_threads", "use_threads"]

_CGROUP = Path("/sys/fs/cgroup")


def _allowed_cpus() -> set[int]:
    try:
        return set(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # not Linux
        return set(range(os.cpu_count() or 1))


def _quota() -> float | None:
    """The container's CPU quota in CPUs (cgroup v2 ``cpu.max``, v1 ``cpu.cfs_quota_us``), None without one."""
    try:
        quota, period = (_CGROUP / "cpu.max").read_text().split()[:2]
        return None if quota == "max" else int(quota) / int(period)
    except (OSError, ValueError):
        pass
    try:
        q = int((_CGROUP / "cpu" / "cpu.cfs_quota_us").read_text())
        p = int((_CGROUP / "cpu" / "cpu.cfs_period_us").read_text())
        return q / p if q > 0 and p > 0 else None
    except (OSError, ValueError):
        return None


def _physical_cores(cpus: set[int]) -> int:
    """Distinct (package, core) pairs among ``cpus``: hyper-threads share a core (torch counts cores)."""
    seen = set()
    for c in cpus:
        topo = Path(f"/sys/devices/system/cpu/cpu{c}/topology")
        try:
            seen.add((topo.joinpath("physical_package_id").read_text().strip(),
                      topo.joinpath("core_id").read_text().strip()))
        except OSError:
            seen.add(("cpu", str(c)))  # no topology: count the CPU itself
    return len(seen)


def available_cores() -> int:
    """The cores this process may use: its affinity, its container's quota and physical cores (>= 1)."""
    cpus = _allowed_cpus()
    n = float(_physical_cores(cpus))
    quota = _quota()
    if quota is not None:
        n = min(n, max(1.0, math.floor(quota)))
    return max(1, int(n))


#: the shortest time over which :func:`others_busy` measures (seconds; 100 ticks a second on Linux)
MIN_WINDOW_S = 0.2


def _cpu_ticks() -> tuple[int, int] | None:
    """(busy, total) clock ticks of all CPUs since boot (``/proc/stat``'s first line: idle and I/O wait are not
    busy, stolen time is); None where it cannot be read."""
    try:
        with open("/proc/stat") as f:
            fields = f.readline().split()
        if fields[0] != "cpu":
            return None
        ticks = [int(v) for v in fields[1:9]]  # user nice system idle iowait irq softirq steal (guest is in user)
    except (OSError, ValueError, IndexError):
        return None
    total = sum(ticks)
    return total - ticks[3] - ticks[4], total


def _own_cpu_s() -> float:
    """This process's CPU time (user + system), seconds."""
    t = os.times()
    return t.user + t.system


def _snapshot() -> tuple[float, float, tuple[int, int] | None]:
    return time.monotonic(), _own_cpu_s(), _cpu_ticks()


#: the machine's and this process's CPU time when this module was imported (``ssa``'s first import)
_START = _snapshot()


def others_busy(start: tuple[float, float, tuple[int, int] | None] | None = None,
                now: tuple[float, float, tuple[int, int] | None] | None = None) -> float | None:
    """How many CPUs other processes kept busy on average between ``start`` (default: this module's import) and
    ``now`` (default: now): the busy ticks of all CPUs less this process's CPU time, as a share of all CPUs' ticks,
    times the CPUs. None where ``/proc/stat`` cannot be read or less than :data:`MIN_WINDOW_S` passed."""
    start = _START if start is None else start
    now = _snapshot() if now is None else now
    if start[2] is None or now[2] is None or now[0] - start[0] < MIN_WINDOW_S:
        return None
    busy, total = now[2][0] - start[2][0], now[2][1] - start[2][1]
    if total <= 0:
        return None
    hz = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
    own = (now[1] - start[1]) * hz
    cpus = total / (hz * (now[0] - start[0]))  # the CPUs the ticks came from (a little over them by tick rounding)
    cpus = min(cpus, float(os.cpu_count() or cpus))
    return max(0.0, min(1.0, (busy - own) / total)) * cpus


def busy_cpus() -> float:
    """How many CPUs other processes keep busy: the larger of what they used since ``ssa`` was imported
    (:func:`others_busy`; the 1-minute load average where that cannot be measured) and the number of processes
    running now (``/proc/loadavg``, less this one)."""
    recent = others_busy()
    try:
        fields = Path("/proc/loadavg").read_text().split()
        load1, running = float(fields[0]), int(fields[3].split("/")[0]) - 1
    except (OSError, ValueError, IndexError):
        if recent is not None:
            return recent
        try:
            return os.getloadavg()[0]
        except (AttributeError, OSError):
            return 0.0
    return max(load1 if recent is None else recent, float(running))


def default_threads() -> int:
    """torch threads for one ``ssa`` process: min(cores it may use, torch's default, idle cores), >= 1."""
    idle = (os.cpu_count() or 1) - busy_cpus()
    return max(1, min(available_cores(), int(math.floor(idle + 0.5))))


def use_threads(threads: int | None = None, environ: MutableMapping[str, str] | None = None) -> int | None:
    """Set the command line's torch thread count; returns it (None: left as the environment says).

    ``threads`` (``--threads``) wins; else ``OMP_NUM_THREADS`` in the environment is the user's choice and
    is kept; else :func:`default_threads`. Before torch is imported the count goes into
    ``OMP_NUM_THREADS`` (torch and the processes it starts read it); afterwards ``--threads`` is applied
    with ``torch.set_num_threads`` and the default only ever lowers the count.
    """
    env = os.environ if environ is None else environ
    if threads is not None and int(threads) < 1:
        raise InvalidInputError(f"--threads must be >= 1, got {threads}.")
    if threads is None and env.get("OMP_NUM_THREADS", "").strip():
        return None
    n = int(threads) if threads is not None else default_threads()
    torch = sys.modules.get("torch")
    if torch is None:
        env["OMP_NUM_THREADS"] = str(n)
    elif threads is not None or torch.get_num_threads() > n:
        torch.set_num_threads(n)
    return n


def torch_threads() -> int | None:
    """The CPU threads torch computes with in this process (``torch.get_num_threads()``), None where torch is not
    imported. torch's CPU kernels round differently with one thread and with several, so a graph records this count
    (its ``threads`` attribute): ``OMP_NUM_THREADS`` (or ``--threads``) at that count reproduces the run bit for bit."""
    torch = sys.modules.get("torch")
    return int(torch.get_num_threads()) if torch is not None else None
