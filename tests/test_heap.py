"""Freed memory kept in glibc's heap during the statistics pass (``ssa.core.heap.kept_memory``): set on entry,
glibc's values set back on exit (also when the pass raises; no malloc_trim: it cost the first class its pages),
entered by
``ssa.engines.statistics.collect`` around the CPU pass and nowhere else, off with ``SSA_KEEP_MEMORY=0`` or where the
user configured glibc's allocator."""

from __future__ import annotations

import ctypes

import numpy as np
import pytest

from ssa.core import heap
from ssa.engines.statistics import collect


class _Libc:
    """Records the mallopt calls instead of making them (and any malloc_trim: there must be none)."""

    def __init__(self) -> None:
        self.calls: list[tuple] = []

    def mallopt(self, param: int, value: int) -> int:
        self.calls.append(("mallopt", param, value))
        return 1

    def malloc_trim(self, pad: int) -> int:
        self.calls.append(("malloc_trim", pad))
        return 1


KEPT = [("mallopt", p, v) for p, v in heap.KEPT]
RESTORED = [("mallopt", p, v) for p, v in heap.RESTORED]


@pytest.fixture
def fake(monkeypatch):
    lib = _Libc()
    monkeypatch.setattr(heap, "libc", lambda: lib)
    for name in ("SSA_KEEP_MEMORY", "GLIBC_TUNABLES", *heap._USER_MALLOC):
        monkeypatch.delenv(name, raising=False)
    return lib


def test_kept_inside_and_restored_after(fake):
    with heap.kept_memory():
        assert fake.calls == KEPT
    assert fake.calls == KEPT + RESTORED


def test_restored_when_the_block_raises(fake):
    with pytest.raises(KeyError), heap.kept_memory():
        raise KeyError("inside")
    assert fake.calls == KEPT + RESTORED


def test_nested_scopes_set_once_and_restore_at_the_outermost(fake):
    with heap.kept_memory():
        with heap.kept_memory():
            pass
        assert fake.calls == KEPT  # the inner exit leaves the outer scope's setting alone
    assert fake.calls == KEPT + RESTORED


@pytest.mark.parametrize("name,value", [("SSA_KEEP_MEMORY", "0"), ("GLIBC_TUNABLES", "glibc.malloc.mmap_max=0"),
                                        ("MALLOC_TRIM_THRESHOLD_", "1000000")])
def test_off_by_the_switch_or_the_users_own_malloc_settings(fake, monkeypatch, name, value):
    monkeypatch.setenv(name, value)
    with heap.kept_memory():
        pass
    assert fake.calls == []


def test_a_no_op_without_glibc(monkeypatch):
    monkeypatch.setattr(heap, "libc", lambda: None)
    with heap.kept_memory():
        pass  # nothing to call, nothing raised


class _Network:
    """The least a statistics pass needs; records what the heap's setting was during each batch."""

    def __init__(self, device: str, lib: _Libc, fail_at: int | None = None) -> None:
        self.device, self.lib, self.fail_at, self.seen = device, lib, fail_at, []

    def collect(self, batch, forms, slots=None):
        self.seen.append(list(self.lib.calls))
        if self.fail_at is not None and len(self.seen) > self.fail_at:
            raise RuntimeError("the model failed")
        return {"scalars/t": np.ones((len(batch), 2), np.float32)}


def test_the_cpu_pass_runs_inside_it(fake):
    net = _Network("cpu", fake)
    stats = collect(net, np.zeros((5, 3), np.float32), ["f"], batch_size=2)
    assert net.seen == [KEPT] * 3  # every batch with memory kept
    assert fake.calls == KEPT + RESTORED  # and glibc's values back after the pass
    assert stats.rows("f", "scalars/t").shape == (5, 2)


def test_restored_when_the_pass_raises(fake):
    net = _Network("cpu", fake, fail_at=1)
    with pytest.raises(RuntimeError, match="the model failed"):
        collect(net, np.zeros((5, 3), np.float32), ["f"], batch_size=2)
    assert net.seen == [KEPT, KEPT]
    assert fake.calls == KEPT + RESTORED


def test_not_for_a_pass_on_another_device(fake):
    net = _Network("cuda:0", fake)
    collect(net, np.zeros((3, 3), np.float32), ["f"], batch_size=2)
    assert fake.calls == []


class _Mallinfo2(ctypes.Structure):
    _fields_ = [(n, ctypes.c_size_t) for n in
                ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks", "fordblks",
                 "keepcost")]


def test_glibc_itself_serves_large_blocks_from_the_heap_inside_and_by_mmap_after(monkeypatch):
    lib = heap.libc()
    if lib is None or not hasattr(lib, "mallinfo2"):
        pytest.skip("not glibc 2.33 or later")
    monkeypatch.delenv("SSA_KEEP_MEMORY", raising=False)
    monkeypatch.delenv("GLIBC_TUNABLES", raising=False)
    for name in heap._USER_MALLOC:
        monkeypatch.delenv(name, raising=False)
    lib.mallinfo2.restype = _Mallinfo2

    def mapped_while_held(mib: int) -> int:
        """Blocks glibc has mmapped while an array of ``mib`` MiB is held, less after it is freed."""
        a = np.empty(mib << 20, np.uint8)
        held = lib.mallinfo2().hblks
        del a
        return held - lib.mallinfo2().hblks

    assert mapped_while_held(64) == 1
    with heap.kept_memory():
        assert mapped_while_held(64) == 0
    # after it, a block larger than any the heap kept is mmapped again (one the kept memory holds may be reused)
    assert mapped_while_held(256) == 1
