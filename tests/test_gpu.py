"""CUDA gives the graphs the CPU gives (issue: device-resident analysis), on every small test model, a
torchvision ResNet and both rules; run where a GPU is present, skipped with a reason elsewhere."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torchvision

import ssa
from ssa.testing.models import ALL_CASES

pytestmark = [pytest.mark.gpu,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA GPU on this machine")]
RULES = ("gradient", "gradient_x_activation")


def _graph(result):
    g = result.graph
    return ({n: (d["frequency"], d["sign"]) for n, d in g.nodes(data=True)},
            {(u, v): (d["frequency"], d["sign"], d["relevance"]) for u, v, d in g.edges(data=True)})


def _same(cpu, gpu) -> None:
    nc, ec = _graph(cpu)
    ng, eg = _graph(gpu)
    assert nc == ng
    assert set(ec) == set(eg)
    for k in ec:
        assert ec[k][:2] == eg[k][:2], k
        assert ec[k][2] == pytest.approx(eg[k][2], rel=1e-4, abs=1e-7), k


def _cases():
    for case in ALL_CASES:
        yield case.name, case.build, case.images(24)
    torch.manual_seed(0)
    yield "resnet18", (lambda: torchvision.models.resnet18(weights=None, num_classes=10).eval()), \
        np.random.default_rng(0).standard_normal((12, 3, 64, 64)).astype(np.float32)


@pytest.mark.parametrize("rule", RULES)
@pytest.mark.parametrize("engine", ["auto", "autograd"])
@pytest.mark.parametrize("selector", ["tukey", "mad"])  # rank-1 steps counted from their factors; rows built
def test_cuda_gives_the_cpu_graphs(rule, engine, selector):
    for _name, build, images in _cases():
        model = build()
        cpu = ssa.analyse(model, images, 0, 3, rule=rule, selector=selector, engine=engine, device="cpu")
        gpu = ssa.analyse(model, images, 0, 3, rule=rule, selector=selector, engine=engine, device="cuda")
        _same(cpu, gpu)


def test_tf32_is_off_while_analysing_and_restored_after():
    from ssa_torch.host import _set_precision, _tf32, exact_arithmetic, tf32_allowed

    _set_precision(_tf32(True), _tf32(True))  # the API exact_arithmetic uses (PyTorch >= 2.9 refuses a mix)
    with exact_arithmetic("cuda"):
        inside = tf32_allowed()
    assert inside == (False, False)
    assert tf32_allowed() == (True, True)
    with exact_arithmetic("cuda", fast_math=True):
        assert tf32_allowed() == (True, True)
        assert torch.backends.cudnn.benchmark and torch.are_deterministic_algorithms_enabled()


def test_fast_math_analyses_and_says_so():
    case = ALL_CASES[1]
    images = case.images(16)
    exact = ssa.analyse(case.build(), images, 0, 3, device="cuda")
    fast = ssa.analyse(case.build(), images, 0, 3, device="cuda", fast_math=True)
    assert fast.graph.graph.get("fast_math") is True and "fast_math" not in exact.graph.graph
    assert fast.graph.number_of_nodes() > 1


def test_statistics_and_relevance_stay_on_the_gpu():
    case = ALL_CASES[1]
    net = ssa.load_model(case.build(), device="cuda")
    images = case.images(8)
    net.prepare(images)
    for form in ("gradient", "gradient_x_activation"):
        stats = net.collect(images, [form])
        assert all(v.device.type == "cuda" for v in stats.values())
        tap = sorted(net.fast_taps(form))[-1]
        rel = {b.parent: b.omega for b in net.relevance_blocks(tap, stats, [0, 1], form)}
        assert all(v.device.type == "cuda" for v in rel.values())
