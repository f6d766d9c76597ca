"""Real-world export patterns (tests/export_patterns.py) take the exact one-pass form.

For each pattern: parity with onnxruntime (of onnx2torch's conversion and of the canonical module),
every step by the closed form for both rules, omega of every step equal to autograd's, and the
dependency graph equal to the slow reference (tests/reference.py, on the torch model the file
computes) for both rules.
"""

from __future__ import annotations

import pytest
from ssa_onnx import OnnxNetwork

import ssa
from ssa.testing.reference import reference_ssa

from .export_patterns import PATTERNS, build_pattern
from .graph_keys import edges_by_order
from .test_fast import _omega_close

NAMES = list(PATTERNS)
RULES = ("gradient", "gradient_x_activation")
N_REF = 10  # images for the slow reference


@pytest.fixture(scope="module")
def patterns(tmp_path_factory):
    root = tmp_path_factory.mktemp("patterns")
    return {name: build_pattern(name, root) for name in NAMES}


def _net(pattern, n=None):
    net = ssa.load_model(str(pattern.path))
    assert isinstance(net, OnnxNetwork)
    net.prepare(pattern.images if n is None else pattern.images[:n])
    return net


@pytest.mark.parametrize("name", NAMES)
def test_parity_taps_and_every_step_by_the_closed_form(patterns, name):
    p = patterns[name]
    net = _net(p)
    assert net.parity_converted.ok and net.parity.ok and net.parity.relative < 1e-5
    assert net.parity.top1_agreement == 1.0
    order = {t.name: i for i, t in enumerate(p.taps)}
    assert [(t.channel_axis, sorted(t.parents and [net.tap(q).order for q in t.parents])) for t in net.taps] == \
        [(t.channel_axis, sorted(order[q] for q in t.parents)) for t in p.taps]
    with_parents = {t.name for t in net.taps if t.parents}
    assert net.fast_taps("gradient") == net.fast_taps("gradient_x_activation") == with_parents, net.describe_steps()
    steps = net.describe_steps()
    assert all(v.startswith("fast (") and "gradient rule only" not in v for v in steps.values()), steps
    assert net.closed_form_summary() == f"{len(steps)} of {len(steps)} steps by the closed form"
    from ssa_onnx import check_report

    text = check_report(str(p.path), p.images[:4]).render()
    assert "parity ok" in text and f"{len(steps)} of {len(steps)} steps by the closed form" in text


@pytest.mark.parametrize("form", RULES)
@pytest.mark.parametrize("name", NAMES)
def test_omega_equals_autograd_step_by_step(patterns, name, form):
    p = patterns[name]
    x = p.images[:6]
    net = _net(p, 6)
    assert _omega_close(net, x, form) >= sum(len(t.parents) for t in net.taps) // 2


def _relabel_reference(edges, taps):
    order = {t.name: i for i, t in enumerate(taps)}
    return {(order[u], n, order[lo], k): v for (u, n, lo, k), v in edges.items()}


@pytest.mark.parametrize("rule", RULES)
@pytest.mark.parametrize("name", NAMES)
def test_graph_equals_the_slow_reference(patterns, name, rule):
    p = patterns[name]
    x = p.images[:N_REF]
    got = ssa.analyse(str(p.path), x, p.target, 2, rule=rule, selector="tukey")
    assert got.engines and all(v == "fast" for v in got.engines.values()), got.engines
    want = _relabel_reference(reference_ssa(p.model, x, p.taps, p.target, 2, rule), p.taps)
    have = edges_by_order(got)
    assert len(want) >= 3 and len({key[0] for key in want}) >= 2, "the reference graph should not be trivial"
    assert set(have) == set(want), (sorted(set(have) - set(want)), sorted(set(want) - set(have)))
    for key, (freq, rel) in want.items():
        assert have[key][0] == freq, key
        assert have[key][1] == pytest.approx(rel, rel=1e-4, abs=1e-6), key
