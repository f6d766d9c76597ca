"""Freed memory kept in glibc's heap during the statistics pass (``ssa.core.heap.kept_memory``): set on entry,
glibc's values set back on exit (also when the pass raises; no malloc_trim: it cost the first class its pages),
entered by
``ssa.engines.statistics.collect`` around the CPU pass and nowhere else, off with ``SSA_KEEP_MEMORY=0`` or where the
user configured glibc's allocator."""

from __future__ import annotations

import ctypes

import numpy as np
import pytest
import torch

import ssa
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
    """The least a statistics pass needs, its pass kept as the torch backend keeps it; records what the heap's
    setting was during each batch."""

    def __init__(self, lib: _Libc, fail_at: int | None = None) -> None:
        self.lib, self.fail_at, self.seen = lib, fail_at, []

    def statistics_pass(self):
        return heap.kept_memory()  # as the torch backend's for VGG16's kind of model

    def collect(self, batch, forms, slots=None):
        self.seen.append(list(self.lib.calls))
        if self.fail_at is not None and len(self.seen) > self.fail_at:
            raise RuntimeError("the model failed")
        return {"scalars/t": np.ones((len(batch), 2), np.float32)}


def test_the_pass_runs_inside_the_networks_context_once(fake):
    net = _Network(fake)
    stats = collect(net, np.zeros((5, 3), np.float32), ["f"], batch_size=2)
    assert net.seen == [KEPT] * 3  # every batch with memory kept, set once
    assert fake.calls == KEPT + RESTORED  # and glibc's values back after the pass
    assert stats.rows("f", "scalars/t").shape == (5, 2)


def test_restored_when_the_pass_raises(fake):
    net = _Network(fake, fail_at=1)
    with pytest.raises(RuntimeError, match="the model failed"):
        collect(net, np.zeros((5, 3), np.float32), ["f"], batch_size=2)
    assert net.seen == [KEPT, KEPT]
    assert fake.calls == KEPT + RESTORED


def _convs(kernel: int) -> torch.nn.Module:
    return torch.nn.Sequential(torch.nn.Conv2d(3, 32, 3, padding=1), torch.nn.ReLU(),
                               torch.nn.Conv2d(32, 32, kernel, padding=kernel // 2), torch.nn.ReLU(),
                               torch.nn.Conv2d(32, 32, kernel, padding=kernel // 2), torch.nn.ReLU(),
                               torch.nn.Flatten(), torch.nn.Linear(32 * 6 * 6, 4)).eval()


@pytest.mark.parametrize("kernel,kept", [(3, True), (1, False)], ids=["wide-3x3", "1x1"])
def test_the_torch_backend_keeps_memory_for_wide_spatial_convolutions_only(fake, kernel, kept):
    """VGG16's kind of model (3x3 convolutions of 32 channels or more) keeps the memory in its CPU pass; ResNet-50's
    (1x1 convolutions dominate) does not, and its graphs' values are the same either way."""
    torch.manual_seed(0)
    images = np.random.default_rng(0).standard_normal((3, 3, 6, 6)).astype(np.float32)
    net = ssa.load_model(_convs(kernel))
    net.prepare(images)
    fake.calls.clear()
    stats = collect(net, images, ["gradient_x_activation"], batch_size=2)
    assert fake.calls == (KEPT + RESTORED if kept else [])
    heap.libc, real = (lambda: None), heap.libc  # the same pass with nothing kept
    try:
        plain = collect(net, images, ["gradient_x_activation"], batch_size=2)
    finally:
        heap.libc = real
    for key in plain.keys("gradient_x_activation"):
        assert torch.equal(stats.rows("gradient_x_activation", key), plain.rows("gradient_x_activation", key)), key


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

    def mapped_while_held(nbytes: int) -> int:
        """Blocks glibc has mmapped while an array of ``nbytes`` is held, less after it is freed."""
        a = np.empty(nbytes, np.uint8)
        held = lib.mallinfo2().hblks
        del a
        return held - lib.mallinfo2().hblks

    def beyond_the_heap() -> int:
        """A block larger than all the free memory glibc's heaps hold (earlier passes in this process may have left
        some there, and a block that fits is served from it whatever the settings): only a mapping can serve it."""
        return int(lib.mallinfo2().fordblks) + (64 << 20)

    assert mapped_while_held(beyond_the_heap()) == 1
    with heap.kept_memory():
        assert mapped_while_held(beyond_the_heap()) == 0  # the heap grows instead
    assert mapped_while_held(beyond_the_heap()) == 1


def test_a_network_keeps_nothing_by_default(fake):
    from ssa.core.interfaces import Network

    with Network.statistics_pass(None):  # type: ignore[arg-type]  # the default ignores the network
        pass
    assert fake.calls == []
