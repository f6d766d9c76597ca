"""A step by autograd through its own segment (ssa_torch.segments) equals the step through the whole network
with every tap cut (the previous path, kept as ``_step_relevance_full``), for every step of CNNs and transformers,
with and without the input as a tap, under both rules; the tap values kept between steps stay in budget, and their
keys are the batches' content hashes, found again by comparing bytes."""

from __future__ import annotations

import numpy as np
import pytest
import ssa_torch.segments as segments
import torch
from ssa_rules.rules import GradientRule, GradientXActivationRule
from ssa_torch.segments import TapValues, batch_key

import ssa
from ssa.testing.models import ALL_CASES

from . import any_models as am

MODELS = {c.name: (c.build, c.images) for c in ALL_CASES}
MODELS.update({f: (lambda f=f: am.build(f), lambda n: am.images(n)) for f in ("deit", "swin")})


@pytest.mark.parametrize("include_input", (False, True))
@pytest.mark.parametrize("name", sorted(MODELS))
def test_segment_step_equals_the_whole_network_step(name, include_input):
    build, images = MODELS[name]
    x = images(5)
    net = ssa.load_model(build(), include_input=include_input)
    taps = net.prepare(x)
    for rule in (GradientRule(), GradientXActivationRule()):
        for tap in taps:
            if not tap.parents:
                continue
            neurons = list(range(min(3, tap.n_neurons)))
            got, got_scalars = net.step_relevance(x, tap.name, neurons, rule)
            want, want_scalars = net._step_relevance_full(x, tap.name, neurons, rule)
            assert set(got) == set(want) == set(tap.parents)
            for p in want:  # the same operations in the same order: equal to float rounding
                torch.testing.assert_close(got[p], want[p], rtol=1e-6, atol=1e-9)
            for t in want_scalars:
                torch.testing.assert_close(got_scalars[t], want_scalars[t], rtol=0, atol=0)


def test_tap_values_stay_within_budget():
    a, b = torch.zeros(10), torch.ones(10)  # 40 bytes each
    cache = TapValues(100)
    cache.put(b"a", {"x": a})
    cache.put(b"b", {"x": b})
    assert cache.get(b"a") is not None  # a is now the most recently used
    cache.put(b"c", {"x": a.clone()})  # 120 bytes > 100: the least recently used (b) goes
    assert cache.get(b"b") is None and cache.get(b"a") is not None and cache.get(b"c") is not None
    cache.put(b"big", {"x": torch.zeros(100)})  # larger than the budget: not kept
    assert cache.get(b"big") is None


def test_the_cache_is_keyed_by_content():
    build, images = MODELS["deit"]
    net = ssa.load_model(build())
    x = images(3)
    net.prepare(x)
    first = net.tap_scalars(x)
    y = np.array(x[::-1])
    rel_x, _ = net.step_relevance(x, "logits", [0], GradientRule())
    rel_y, _ = net.step_relevance(y, "logits", [0], GradientRule())
    for p in rel_x:
        torch.testing.assert_close(rel_y[p], rel_x[p].flip(1))
    assert set(first) == {t.name for t in net.taps}


def test_a_kept_batch_is_found_by_its_bytes_without_hashing_it_again(monkeypatch):
    hashed = []
    monkeypatch.setattr(segments, "batch_key", lambda b: hashed.append(1) or batch_key(b))
    monkeypatch.setattr(segments, "_PROBE", 1)  # the probe samples one byte: batches of a shape look alike to it
    rng = np.random.default_rng(0)
    batches = [rng.standard_normal((2, 3, 8, 8)).astype(np.float32) for _ in range(3)]
    cache = TapValues(1 << 20)
    for b in batches:  # each batch hashed once, then kept with its values and a copy of its bytes
        key = cache.key(b)
        assert key == batch_key(b)
        cache.put(key, {"x": torch.from_numpy(b)})
    assert len(hashed) == 3
    for b in batches:  # a new array with the same bytes (as a class's batches are sliced again each step)
        assert cache.key(np.array(b)) == batch_key(b)
    assert cache.key(torch.from_numpy(batches[1])) == batch_key(batches[1])
    assert len(hashed) == 3
    changed = batches[0].copy()
    changed.reshape(-1)[1] += 1.0  # the sampled byte unchanged: the comparison, not the sample, decides
    assert cache.key(changed) == batch_key(changed) != batch_key(batches[0])
    batches[2][0, 0, 0, 0] = 7.0  # changed in place after it was kept: hashed again, a new key
    assert cache.key(batches[2]) == batch_key(batches[2])
    assert cache.key(batches[0].reshape(2, 3, 64)) == batch_key(batches[0].reshape(2, 3, 64))  # the shape counts
    assert len(hashed) == 6
