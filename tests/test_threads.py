"""Default CPU threads (issue 18, item 13): min(cores the process may use, torch's default, idle cores) per
process, ``--threads`` and ``OMP_NUM_THREADS`` win, one thread per decoding worker.

The timing that motivated it (``ssa evaluate`` on a loaded 2-core machine) is in the README; here the
rule itself is checked, with the machine's numbers replaced, and in real processes.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch

import ssa.core.threads as T
from ssa.io.datasets import ImageSource, iter_batches


@pytest.fixture
def machine(monkeypatch):
    """Set the machine's numbers: CPUs, affinity, physical cores among them, quota and busy CPUs."""

    def set_(cpus=2, allowed=None, physical=None, quota=None, busy=0.0):
        allowed = set(range(cpus)) if allowed is None else set(allowed)
        monkeypatch.setattr(T.os, "cpu_count", lambda: cpus)
        monkeypatch.setattr(T, "_allowed_cpus", lambda: allowed)
        monkeypatch.setattr(T, "_physical_cores", lambda c: len(c) if physical is None else min(physical, len(c)))
        monkeypatch.setattr(T, "_quota", lambda: quota)
        monkeypatch.setattr(T, "busy_cpus", lambda: busy)

    return set_


@pytest.mark.parametrize("numbers,expected", [
    (dict(cpus=2), 2),                               # an idle 2-core machine: both cores
    (dict(cpus=2, busy=1.0), 1),                     # one other busy process: one thread
    (dict(cpus=2, busy=0.4), 2),                     # a little background noise: rounded away
    (dict(cpus=2, busy=11.2), 1),                    # the shared machine of the issue: never below 1
    (dict(cpus=64, busy=60.0), 4),                   # a big busy host: what the others leave
    (dict(cpus=8, allowed={0, 1, 2}), 3),            # taskset / a cpuset: only the CPUs we may use
    (dict(cpus=8, physical=4), 4),                   # hyper-threads: torch's default, one per core
    (dict(cpus=16, quota=2.5), 2),                   # a container's CPU quota (docker --cpus 2.5)
    (dict(cpus=16, quota=0.5), 1),
])
def test_default_threads(machine, numbers, expected):
    machine(**numbers)
    assert T.default_threads() == expected


def test_others_busy_is_the_machines_busy_time_less_this_processs():
    """2 CPUs at 100 ticks a second for 1 s: 200 ticks; this process used 1 s of CPU (100 ticks)."""
    hz = os.sysconf("SC_CLK_TCK")
    start = (10.0, 5.0, (1000 * hz // 100, 4000 * hz // 100))

    def now(busy_ticks, own_s=1.0, wall=1.0):
        return (10.0 + wall, 5.0 + own_s, (start[2][0] + busy_ticks * hz // 100,
                                           start[2][1] + int(200 * wall) * hz // 100))

    assert T.others_busy(start, now(100)) == pytest.approx(0.0)  # only this process ran: both CPUs left to it
    assert T.others_busy(start, now(200)) == pytest.approx(1.0)  # another process kept one CPU busy
    assert T.others_busy(start, now(150, own_s=0.5)) == pytest.approx(1.0)
    assert T.others_busy(start, now(90)) == 0.0  # tick rounding never gives less than nothing
    assert T.others_busy(start, now(40, own_s=0.1, wall=0.1)) is None  # too short to tell: the load average
    assert T.others_busy((10.0, 5.0, None), now(100)) is None  # no /proc/stat


def test_others_busy_never_exceeds_the_machines_cpus(monkeypatch):
    """A 2-CPU machine kept fully busy by others, its ticks a little ahead of the wall clock (201 ticks a second
    per 100 Hz): 2 CPUs busy, not 2.01 (seen on a loaded host)."""
    monkeypatch.setattr(T.os, "cpu_count", lambda: 2)
    hz = os.sysconf("SC_CLK_TCK")
    start = (10.0, 5.0, (1000 * hz // 100, 4000 * hz // 100))
    full = (11.0, 5.0, (start[2][0] + 201 * hz // 100, start[2][1] + 201 * hz // 100))
    assert T.others_busy(start, full) == 2.0


def test_busy_cpus_prefers_the_recent_window_to_the_lagging_load_average(monkeypatch):
    class _Loadavg:
        text = "1.00 0.80 0.50 1/100 123"  # the load average of a run that just ended; only this process runs

        def __init__(self, *_):
            pass

        def read_text(self):
            return self.text

    monkeypatch.setattr(T, "Path", _Loadavg)
    monkeypatch.setattr(T, "others_busy", lambda: 0.0)
    assert T.busy_cpus() == 0.0
    monkeypatch.setattr(T, "others_busy", lambda: 0.7)
    assert T.busy_cpus() == 0.7
    _Loadavg.text = "1.00 0.80 0.50 3/100 123"  # two others running right now
    assert T.busy_cpus() == 2.0
    monkeypatch.setattr(T, "others_busy", lambda: None)  # no window: the load average, as before
    _Loadavg.text = "1.00 0.80 0.50 1/100 123"
    assert T.busy_cpus() == 1.0


@pytest.mark.skipif(not os.path.exists("/proc/stat"), reason="needs Linux /proc/stat")
def test_others_busy_sees_a_busy_process_beside_this_one():
    start = T._snapshot()
    spin = subprocess.Popen([sys.executable, "-c", "import time\nt = time.time()\nwhile time.time() - t < 0.8: pass"])
    spin.wait(timeout=60)
    ticks = T._cpu_ticks()
    assert ticks is not None and 0 <= ticks[0] <= ticks[1]
    busy = T.others_busy(start)
    assert busy is not None and 0.5 <= busy <= (os.cpu_count() or 1)


def test_use_threads_keeps_the_users_choice_and_refuses_zero(machine):
    machine(cpus=2, busy=5.0)
    env = {"OMP_NUM_THREADS": "2"}
    assert T.use_threads(None, env) is None and env == {"OMP_NUM_THREADS": "2"}
    with pytest.raises(ValueError, match="--threads must be >= 1, got 0"):
        T.use_threads(0, {})
    before = torch.get_num_threads()
    try:  # torch is loaded here: the default only lowers, --threads sets
        torch.set_num_threads(1)
        assert T.use_threads(None, {}) == 1 and torch.get_num_threads() == 1
        machine(cpus=2)
        assert T.use_threads(None, {}) == 2 and torch.get_num_threads() == 1  # not raised in a caller's process
        assert T.use_threads(2, {}) == 2 and torch.get_num_threads() == 2
        machine(cpus=2, busy=5.0)
        assert T.use_threads(None, {}) == 1 and torch.get_num_threads() == 1  # lowered
    finally:
        torch.set_num_threads(before)


CHILD = """
import json, os, sys
os.sched_setaffinity(0, set(json.loads(sys.argv[1])))
import ssa.core.threads as T
if sys.argv[2] == "idle":
    T.busy_cpus = lambda: 0.0
from ssa.cli import main
assert main(["plugins"]) == 0
import torch
print(json.dumps([torch.get_num_threads(), os.environ.get("OMP_NUM_THREADS"), T.available_cores()]))
"""


def _child(cpus, load="idle", **env):
    e = {k: v for k, v in os.environ.items() if k not in ("OMP_NUM_THREADS", "MKL_NUM_THREADS")}
    e.update(env)
    out = subprocess.run([sys.executable, "-c", CHILD, json.dumps(sorted(cpus)), load], env=e, capture_output=True,
                         text=True, timeout=120, check=True).stdout
    return json.loads(out.strip().splitlines()[-1])


@pytest.mark.skipif(not hasattr(os, "sched_setaffinity"), reason="needs Linux CPU affinity")
def test_the_command_line_sets_torchs_threads_in_a_real_process():
    """``ssa`` sets the count before torch loads: torch in that process uses it, and the environment passes
    it on to the processes it starts."""
    cpus = sorted(os.sched_getaffinity(0))
    assert _child(cpus[:1]) == [1, "1", 1]  # one allowed CPU: one thread
    threads, env, available = _child(cpus)
    assert threads == available == int(env) >= 1  # an idle machine: every core this process may use
    threads, env, _ = _child(cpus[:1], OMP_NUM_THREADS="3")  # the user's OMP_NUM_THREADS is kept (torch caps
    assert env == "3" and threads > 1                         # it at the machine's CPUs), not lowered to 1
    threads, env, _ = _child(cpus, load="real")  # the machine as it is now: never more than it may use
    assert 1 <= threads <= available and env == str(threads)


class _ThreadsSeen(ImageSource):
    """Each 'image' is the torch thread count of the process that decodes it."""

    def __len__(self) -> int:
        return 8

    def read(self, i: int) -> np.ndarray:
        return np.array([torch.get_num_threads(), os.getpid()], dtype=np.float32)


def test_decoding_workers_run_one_thread_each():
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(2)  # the main process may use more: its decoding workers must not
        rows = np.concatenate([b for _, b in iter_batches(_ThreadsSeen(), np.arange(8), batch_size=2, workers=2)])
    finally:
        torch.set_num_threads(before)
    assert set(rows[:, 1].astype(int)) - {os.getpid()}  # decoded in other processes
    assert set(rows[:, 0]) == {1.0}


def test_a_graph_records_the_threads_torch_computed_with(tmp_path):
    """The graph's ``threads`` is the count torch ran with (its CPU kernels round differently with one thread and
    with several): in memory, written and read back, and from a whole ``ssa analyse`` process given the count."""
    import ssa

    x = ssa.load_images("digits")[0][:20]
    before = torch.get_num_threads()
    try:
        for n in (2, 1):
            torch.set_num_threads(n)
            result = ssa.analyse("digits", x, 3, 2)
            assert result.graph.graph["threads"] == n == result.graph.run.threads
            assert ssa.read_graph(result.write(tmp_path / f"g{n}.json")).run.threads == n
    finally:
        torch.set_num_threads(before)
    np.save(tmp_path / "x.npy", x)
    out = tmp_path / "cli.json"
    env = {**os.environ, "OMP_NUM_THREADS": "2", "SSA_PARITY_CACHE": "0"}
    env.pop("MKL_NUM_THREADS", None)  # MKL_NUM_THREADS=1 caps torch at one thread, whatever OMP_NUM_THREADS says
    subprocess.run([sys.executable, "-m", "ssa", "analyse", "digits", "--images", str(tmp_path / "x.npy"), "--target",
                    "3", "--branching", "2", "--out", str(out), "-q"], env=env, check=True, timeout=300)
    assert ssa.read_graph(out).run.threads == 2
