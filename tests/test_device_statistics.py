"""The statistics kept in memory (``ssa.engines.statistics.DeviceStatistics``) hold each key's rows for the whole
image set in one array: batches written into it by :meth:`add`, or by the network itself into the slots it is handed
(``Network.collect(..., slots=...)``). Every array equals the reference, the key's per-batch pieces (each batch's
statistics collected on its own, without slots) joined, bit for bit."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import ssa
from ssa.engines.statistics import DeviceStatistics, collect, joined
from ssa.testing.models import ALL_CASES

FORMS = ("gradient", "gradient_x_activation")


def _pieces(n: int, batch: int, xp) -> list[dict[str, object]]:
    rng = np.random.default_rng(n * 10 + batch)
    out = []
    for lo in range(0, n, batch):
        b = min(batch, n - lo)
        arrays = {"t/0/a": rng.standard_normal((b, 3, 4)).astype(np.float32), "scalars/t": rng.standard_normal((b, 3))}
        out.append({k: xp(v) for k, v in arrays.items()})
    return out


@pytest.mark.parametrize("xp", [np.asarray, torch.from_numpy], ids=["numpy", "torch"])
@pytest.mark.parametrize("n,batch", [(7, 3), (4, 4), (1, 8)])
def test_added_batches_equal_the_joined_pieces(xp, n, batch):
    pieces = _pieces(n, batch, xp)
    stats = DeviceStatistics(n, ["f"])
    for arrays in pieces:
        stats.add("f", arrays)
    assert stats.keys("f") == ["t/0/a", "scalars/t"]
    idx = np.array([n - 1, 0])
    for k in stats.keys("f"):
        want = joined([p[k] for p in pieces])
        got = stats.rows("f", k)
        assert type(got) is type(want) and got.dtype == want.dtype and got.shape == want.shape
        assert np.array_equal(np.asarray(got), np.asarray(want))
        assert np.array_equal(np.asarray(stats.rows("f", k, idx)), np.asarray(want)[idx])
    assert stats.nbytes == sum(int(v.nbytes) for p in pieces for v in p.values())


def test_a_batch_written_into_its_slot_is_not_copied():
    stats = DeviceStatistics(5, ["f"])
    first = torch.arange(6, dtype=torch.float32).reshape(2, 3)
    slot = stats.slots("f")("k", (2, 3), first)
    slot.copy_(first)
    stats.add("f", {"k": slot})
    # a slot that does not fit (more rows than are left, another row shape) is refused
    assert stats.slots("f")("k", (4, 3), first) is None and stats.slots("f")("k", (3, 2), first) is None
    second = stats.slots("f")("k", (3, 3), first)
    second.fill_(7.0)
    stats.add("f", {"k": second})
    assert torch.equal(stats.rows("f", "k"), torch.cat([first, torch.full((3, 3), 7.0)]))
    assert stats.rows("f", "k")[2:].data_ptr() == second.data_ptr()


@pytest.mark.parametrize("case", ALL_CASES, ids=lambda c: c.name)
def test_collected_statistics_equal_each_batch_joined(case):
    """``collect`` into memory (the conv terms write their batch into the whole set's rows) equals each batch
    collected on its own, without slots, and joined."""
    torch.manual_seed(0)
    net = ssa.load_model(case.build())
    images = case.images(7)
    net.prepare(images)
    handed: list[str] = []
    for form in FORMS:
        stats = DeviceStatistics(len(images), [form])
        original = stats.slots

        def recording(f, original=original):
            slot = original(f)
            return lambda key, shape, like: handed.append(key) or slot(key, shape, like)

        stats.slots = recording  # type: ignore[method-assign]
        got = _collect_into(net, images, form, 3, stats)
        pieces = [net.collect(images[lo:lo + 3], [form]) for lo in range(0, len(images), 3)]
        assert got.keys(form) == list(pieces[0])
        for k in got.keys(form):
            want = joined([p[k] for p in pieces])
            have = got.rows(form, k)
            assert have.dtype == want.dtype and torch.equal(have, want), (form, k)
        plain = collect(net, images, [form], 3)
        for k in plain.keys(form):
            assert torch.equal(plain.rows(form, k), got.rows(form, k)), (form, k)
    if case.name in ("plain", "residual"):
        assert any(k.endswith("/a") for k in handed), "no conv term wrote into its slot: nothing was tested"


def _collect_into(net, images, form, batch_size, stats):
    """What ``collect`` does in memory, into ``stats`` (whose slots the test records)."""
    for lo in range(0, len(images), batch_size):
        stats.add(form, net.collect(images[lo:lo + batch_size], [form], slots=stats.slots(form)))
    return stats
