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

A resumed run keeps the thread count of the outputs it keeps. Graphs record the count torch computed with
(``threads``), and torch's CPU kernels round differently with one thread and with several, so a killed
``ssa study`` (or an ``ssa analyse --out-dir`` re-run) resumed under another load would otherwise finish with
another count than it started with. While a command runs, :func:`command_threads` records its count and who
chose it (``--threads``, the user's ``OMP_NUM_THREADS``, or the default above; :func:`use_threads` itself
writes ``OMP_NUM_THREADS`` before torch loads, so the variable alone does not say); :func:`resume_threads`,
called by :func:`ssa.scale.manifest.execute` with the counts of the graphs it keeps, computes the rest with
the kept graphs' count when the count was the default and they agree (one line says so), and otherwise warns
that the outputs mix thread counts. In a caller's process (no command running) it changes nothing.
"""

from __future__ import annotations

import math
import os
import sys
import time
import warnings
from collections.abc import Iterable, Iterator, MutableMapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ssa.errors import InvalidInputError, SSAWarning

__all__ = ["available_cores", "busy_cpus", "default_threads", "others_busy", "torch_threads", "use_threads",
           "ThreadChoice", "RunThreads", "command_threads", "command_choice", "resume_threads"]

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


@dataclass(frozen=True)
class ThreadChoice:
    """The thread count of the command that runs, and who chose it: ``"--threads"``, ``"OMP_NUM_THREADS"`` (the
    user's environment) or ``"default"`` (:func:`default_threads`)."""

    by: str

    @property
    def users(self) -> bool:
        """Whether the user chose the count (``--threads`` or ``OMP_NUM_THREADS``)."""
        return self.by != "default"


#: the command line's choice while one of its commands runs (:func:`command_threads`); None otherwise
_CHOICE: ThreadChoice | None = None


@contextmanager
def command_threads(threads: int | None = None, environ: MutableMapping[str, str] | None = None
                    ) -> Iterator[ThreadChoice]:
    """Around a command of the command line: :func:`use_threads`, and who chose the count (for
    :func:`resume_threads`) until the command ends."""
    global _CHOICE
    env = os.environ if environ is None else environ
    by = "--threads" if threads is not None else "OMP_NUM_THREADS" if env.get("OMP_NUM_THREADS", "").strip() \
        else "default"
    use_threads(threads, env)  # refuses --threads 0 before anything is recorded
    _CHOICE = ThreadChoice(by)
    try:
        yield _CHOICE
    finally:
        _CHOICE = None


def command_choice() -> ThreadChoice | None:
    """The running command's :class:`ThreadChoice`; None in a caller's process (no command running)."""
    return _CHOICE


@dataclass(frozen=True)
class RunThreads:
    """The thread counts of a resumable run's outputs: those of the graphs it kept (distinct counts, ascending;
    graphs of older versions record none), the one it computed the rest with (None: it computed nothing, or
    torch is not loaded) and how that count was chosen: ``"kept graphs"`` (the resume took theirs), or the
    :class:`ThreadChoice` (``"--threads"``, ``"OMP_NUM_THREADS"``, ``"default"``), ``"ray workers"``, or
    ``"caller"`` (a caller's process: its own count)."""

    kept: tuple[int, ...] = ()
    computed: int | None = None
    by: str = "caller"

    @property
    def mixed(self) -> bool:
        """Whether the run's outputs hold graphs computed with different thread counts."""
        counts = set(self.kept) | ({self.computed} if self.computed is not None else set())
        return len(counts) > 1

    def as_dict(self) -> dict[str, Any]:
        return {"kept": list(self.kept), "computed": self.computed, "by": self.by, "mixed": self.mixed}


def _count(n: int) -> str:
    return f"{n} thread{'s' if n != 1 else ''}"


def _counts(counts: Iterable[int]) -> str:
    c = sorted(counts)
    return _count(c[0]) if len(c) == 1 else ", ".join(map(str, c[:-1])) + f" and {c[-1]} threads"


def resume_threads(kept: Iterable[int | None], *, computing: int, workers: int | None = None,
                   say: Any = None) -> RunThreads:
    """Choose the thread count of a resumed run that keeps graphs computed with ``kept`` counts (their
    ``threads`` attributes; None for a graph that records none) and computes ``computing`` more.

    Only while a command of the command line runs (:func:`command_choice`): when its count is the default and
    the kept graphs agree on another, torch computes the rest with theirs (``torch.set_num_threads``, raising
    too: the command line asks) and ``say`` gets one line saying so; when they disagree among themselves, or the
    user chose another count, the count stays and one :class:`~ssa.errors.SSAWarning` names the counts. ``workers``:
    the threads of each Ray worker (they compute there, with that count), None for this process.
    """
    counts = tuple(sorted({int(k) for k in kept if k is not None}))
    choice = _CHOICE
    now = workers if workers is not None else torch_threads()
    by = "caller" if choice is None else "ray workers" if workers is not None else choice.by
    if computing == 0 or now is None:
        return RunThreads(counts, None, by)
    if choice is None or not counts or counts == (now,):
        return RunThreads(counts, now, by)
    if len(counts) == 1 and not choice.users and workers is None:
        torch = sys.modules["torch"]  # loaded: torch_threads() gave a count
        torch.set_num_threads(counts[0])
        if say is not None:
            say(f"computing the other {computing} graph(s) with {_count(counts[0])}, as the kept graphs were "
                f"(the default here is {now}; --threads N overrides)")
        return RunThreads(counts, counts[0], "kept graphs")
    why = {"--threads": f" (--threads {now})", "OMP_NUM_THREADS": " (OMP_NUM_THREADS)",
           "ray workers": " (each Ray worker's)"}.get(by, "")
    fix = ("remove the folder to compute them all again" if len(counts) > 1
           else f"finish without Ray, with --threads {counts[0]}," if workers is not None
           else f"run with --threads {counts[0]}")
    warnings.warn(f"the outputs mix thread counts: the kept graphs were computed with {_counts(counts)}, the other "
                  f"{computing} are computed with {_count(now)}{why}; torch's CPU kernels round differently with "
                  f"another count, so they may differ in the last bits from an uninterrupted run's ({fix} for one "
                  "count).", SSAWarning, stacklevel=2)
    return RunThreads(counts, now, by)
