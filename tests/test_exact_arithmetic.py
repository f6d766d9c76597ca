"""Exact arithmetic on CUDA is entered once per analysis, and the caller's flags come back (issue 20, item 2).

``exact_arithmetic`` does nothing on the CPU; these tests make it take its CUDA branch on the CPU
(``ssa_torch.host._on_cuda`` patched) so the flags it sets, restores and counts are checked without a GPU:
the flags are process-wide settings that exist in every torch build. tests/test_gpu.py checks the same on CUDA.
"""

from __future__ import annotations

import pytest
import torch
from ssa_torch import host
from ssa_torch.network import TorchNetwork

import ssa
from ssa.testing.models import ALL_CASES


def _flags() -> tuple:
    return (host.tf32_allowed(), torch.backends.cudnn.benchmark, torch.backends.cudnn.deterministic,
            torch.are_deterministic_algorithms_enabled(), torch.utils.deterministic.fill_uninitialized_memory)


@pytest.fixture
def as_if_cuda(monkeypatch):
    """The CUDA branch of exact_arithmetic on the CPU, the caller's flags set to what it must change and restore."""
    monkeypatch.setattr(host, "_on_cuda", lambda device: True)
    before = (host._precision(), torch.backends.cudnn.benchmark, torch.backends.cudnn.deterministic,
              torch.are_deterministic_algorithms_enabled(), torch.is_deterministic_algorithms_warn_only_enabled())
    host._set_precision(host._tf32(True), host._tf32(True))  # PyTorch's own default for convolutions
    torch.backends.cudnn.benchmark = False
    torch.backends.cudnn.deterministic = False
    torch.use_deterministic_algorithms(False)
    fill = torch.utils.deterministic.fill_uninitialized_memory
    torch.utils.deterministic.fill_uninitialized_memory = True
    yield
    torch.utils.deterministic.fill_uninitialized_memory = fill
    host._set_precision(*before[0])
    torch.backends.cudnn.benchmark, torch.backends.cudnn.deterministic = before[1], before[2]
    torch.use_deterministic_algorithms(before[3], warn_only=before[4])


CALLER = ((True, True), False, False, False, True)
EXACT = ((False, False), True, True, True, False)
FAST = ((True, True), True, True, True, False)


def test_the_flags_inside_and_the_callers_flags_after(as_if_cuda):
    assert _flags() == CALLER
    with host.exact_arithmetic("cuda"):
        assert _flags() == EXACT
        with host.exact_arithmetic("cuda", fast_math=True):  # nested: the outer entry decides, nothing changes
            assert _flags() == EXACT
        assert _flags() == EXACT
    assert _flags() == CALLER
    with host.exact_arithmetic("cuda", fast_math=True):
        assert _flags() == FAST
    assert _flags() == CALLER


def test_restored_after_an_error(as_if_cuda):
    with pytest.raises(ValueError), host.exact_arithmetic("cuda"):
        assert _flags() == EXACT
        raise ValueError("inside")
    assert _flags() == CALLER


def test_nothing_on_the_cpu():
    n = host.exact_entries()
    before = _flags()
    with host.exact_arithmetic("cpu", fast_math=True):
        assert _flags() == before
    assert host.exact_entries() == n


@pytest.mark.parametrize("rule", ["gradient", "gradient_x_activation"])
@pytest.mark.parametrize("engine", ["auto", "autograd"])
def test_entered_once_per_analysis(as_if_cuda, monkeypatch, rule, engine):
    """The session sets the flags once around each analysis (statistics and traversal), not per block or batch;
    the network's own entries inside it change nothing; the caller's flags are back after each analysis."""
    case = ALL_CASES[1]  # a residual CNN: closed-form and autograd steps
    images = case.images(12)
    seen: list[tuple] = []
    collect, step, traverse = TorchNetwork.collect, TorchNetwork.step_relevance, ssa.session.traverse

    def spy_collect(self, *a, **k):
        seen.append(_flags())
        return collect(self, *a, **k)

    def spy_step(self, *a, **k):
        seen.append(_flags())
        return step(self, *a, **k)

    def spy_traverse(*a, **k):  # every step's blocks run inside the traversal
        seen.append(_flags())
        return traverse(*a, **k)

    monkeypatch.setattr(TorchNetwork, "collect", spy_collect)
    monkeypatch.setattr(TorchNetwork, "step_relevance", spy_step)
    monkeypatch.setattr(ssa.session, "traverse", spy_traverse)
    session = ssa.Session(case.build(), images, rule=rule, engine=engine, batch_size=4)  # 3 batches
    session.prepare()
    for target in (0, 1):
        n = host.exact_entries()
        seen.clear()
        session.analyse(target, 2)
        assert host.exact_entries() == n + 1
        assert len(seen) >= 2 - target and all(s == EXACT for s in seen), seen  # statistics (first class) + traversal
        assert _flags() == CALLER


def test_the_network_enters_it_when_called_directly(as_if_cuda):
    """Outside a session (an explorer's reference images, a user's own call) each network call is still exact."""
    case = ALL_CASES[1]
    net = ssa.load_model(case.build())
    images = case.images(4)
    net.prepare(images)
    n = host.exact_entries()
    net.logits(images)
    net.collect(images, ["gradient"])
    assert host.exact_entries() == n + 2
    with net.arithmetic(fast_math=True):
        assert _flags() == FAST
        net.logits(images)
    assert host.exact_entries() == n + 3
    assert _flags() == CALLER


def test_fast_math_does_nothing_on_the_cpu():
    case = ALL_CASES[0]
    images = case.images(12)
    exact = ssa.analyse(case.build(), images, 0, 3)
    fast = ssa.analyse(case.build(), images, 0, 3, fast_math=True)
    assert "fast_math" not in fast.graph.graph
    assert sorted(fast.graph.edges(data=True)) == sorted(exact.graph.edges(data=True))


@pytest.mark.parametrize("case", ALL_CASES, ids=lambda c: c.name)
def test_channels_last_statistics_equal_the_contiguous_ones(monkeypatch, case):
    """The channels-last statistics forward (CUDA with SSA_CHANNELS_LAST=1, the CPU's default) against the contiguous
    one (the CPU with SSA_CHANNELS_LAST=0): same keys, shapes and values (float32 sums in another order: close, not
    bit-equal), and the layout is really channels-last."""
    net = ssa.load_model(case.build())
    images = case.images(6)
    net.prepare(images)
    forms = ("gradient", "gradient_x_activation")
    monkeypatch.setenv("SSA_CHANNELS_LAST", "0")
    assert not host.channels_last("cpu")
    plain = {f: net.collect(images, [f]) for f in forms}
    monkeypatch.setattr(host, "_on_cuda", lambda device: True)
    monkeypatch.setenv("SSA_CHANNELS_LAST", "1")
    x = host.statistics_input(torch.zeros(2, 3, 8, 8), "cpu")
    assert x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous()
    monkeypatch.setattr(torch.backends.cudnn, "benchmark", torch.backends.cudnn.benchmark)  # restored by both
    for f in forms:
        nhwc = net.collect(images, [f])
        assert nhwc.keys() == plain[f].keys()
        for k, v in plain[f].items():
            assert nhwc[k].shape == v.shape, k
            torch.testing.assert_close(nhwc[k], v, rtol=1e-4, atol=1e-5, msg=k)


def test_channels_last_by_default_on_the_cpu_only(monkeypatch):
    """The CPU's statistics pass (and its autograd steps) run channels-last unless SSA_CHANNELS_LAST=0; CUDA only with
    SSA_CHANNELS_LAST=1; a 4-D input is converted, other inputs are left as they are."""
    monkeypatch.delenv("SSA_CHANNELS_LAST", raising=False)
    assert host.channels_last("cpu") and not host.channels_last("meta")
    x = host.statistics_input(torch.zeros(2, 3, 8, 8), "cpu")
    assert x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous()
    assert host.statistics_input(torch.zeros(2, 3, 8), "cpu").is_contiguous()
    monkeypatch.setenv("SSA_CHANNELS_LAST", "0")
    assert not host.channels_last("cpu") and host.statistics_input(torch.zeros(2, 3, 8, 8), "cpu").is_contiguous()
    monkeypatch.setattr(host, "_on_cuda", lambda device: True)
    monkeypatch.delenv("SSA_CHANNELS_LAST")
    assert not host.channels_last("cuda")
    monkeypatch.setenv("SSA_CHANNELS_LAST", "1")
    assert host.channels_last("cuda")


def test_channels_last_only_for_models_with_wide_convolutions(monkeypatch):
    """On the CPU the layout is chosen per model: channels-last where most one-group 2-D convolutions reading at least
    32 channels have kernels larger than 1x1 (VGG16: where it measured faster), else contiguous (ResNet-50's 1x1
    bottlenecks, a transformer's patch embedding, small convolutions)."""
    monkeypatch.delenv("SSA_CHANNELS_LAST", raising=False)
    x = torch.zeros(2, 3, 8, 8)
    wide = torch.nn.Sequential(torch.nn.Conv2d(3, 32, 3), torch.nn.ReLU(), torch.nn.Conv2d(32, 8, 3))
    conv = torch.nn.Conv2d
    bottlenecks = torch.nn.Sequential(conv(64, 64, 1), conv(64, 64, 3), conv(64, 256, 1))
    narrow = [torch.nn.Sequential(torch.nn.Conv2d(3, 96, 4, stride=4)), torch.nn.Conv2d(3, 16, 3),
              torch.nn.Conv2d(64, 64, 3, groups=64), torch.nn.Linear(8, 8), bottlenecks]
    assert host.wide_convolutions(wide) and not any(host.wide_convolutions(m) for m in narrow)
    assert not host.statistics_input(x, "cpu", wide).is_contiguous()
    assert all(host.statistics_input(x, "cpu", m).is_contiguous() for m in narrow)
    monkeypatch.setenv("SSA_CHANNELS_LAST", "0")
    assert host.statistics_input(x, "cpu", wide).is_contiguous()
