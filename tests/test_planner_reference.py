"""The closed-form planner's reduced channel codes against the full push (issue 19, item 6).

:func:`ssa_torch.closed_form.plan_closed_form` pushes its channel codes with one value per channel where a path
keeps channels apart pointwise (:mod:`ssa_torch.closed_form.codes`); ``full_push=True`` pushes every code at
full size, as the planner always did. Both plans must be the same, term for term and tensor for tensor (the
same float64 operations on the same values), with the same reasons for the steps left to autograd: checked
on every torchvision family of ``tests/zoo_models.py`` as a module and through ONNX, and on ResNet-50 and
MobileNetV3 (large), the models of ``benchmarks/test_first_graph.py``. The reduced push must actually be
taken (most of the pushes on the CNNs), or the test would compare the reference with itself.
"""

from __future__ import annotations

import dataclasses
import warnings
from typing import Any

import numpy as np
import pytest
import torch
import torchvision
from ssa_torch.canon import PassContext
from ssa_torch.closed_form import codes, plan_closed_form

import ssa

from . import onnx_models as om
from . import zoo_models as zm
from .test_torchvision_zoo import _export

QUICK = ("resnet", "mobilenet_v3", "shufflenet_v2", "densenet")


def _param(family: str):
    return pytest.param(family, marks=[] if family in QUICK else [pytest.mark.slow], id=family)


def _same(a: Any, b: Any, where: str) -> None:
    """Exact equality, tensors included (dtype, shape and every value), with where they differ."""
    assert type(a) is type(b), f"{where}: {type(a).__name__} != {type(b).__name__}"
    if isinstance(a, torch.Tensor):
        assert a.dtype == b.dtype and a.shape == b.shape, f"{where}: {a.dtype}{tuple(a.shape)} != {b.dtype}" \
                                                          f"{tuple(b.shape)}"
        assert torch.equal(a, b), f"{where}: values differ"
    elif dataclasses.is_dataclass(a):
        for f in dataclasses.fields(a):
            _same(getattr(a, f.name), getattr(b, f.name), f"{where}.{f.name}")
    elif isinstance(a, dict):
        assert a.keys() == b.keys(), f"{where}: keys {sorted(a)} != {sorted(b)}"
        for k in a:
            _same(a[k], b[k], f"{where}[{k!r}]")
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), f"{where}: {len(a)} != {len(b)} items"
        for i, (u, v) in enumerate(zip(a, b, strict=True)):
            _same(u, v, f"{where}[{i}]")
    elif hasattr(a, "__dict__") and not callable(a):
        _same(vars(a), vars(b), where)
    else:
        assert a == b, f"{where}: {a!r} != {b!r}"


def assert_plans_agree(net, monkeypatch) -> tuple[int, int]:
    """The default plan equals the full push's; returns (reduced pushes, all pushes) of the default plan."""
    counts = {"reduced": 0, "all": 0}
    pushes = codes.ChannelCodes._pushes

    def counting(self, vectors, axes, nodes, target, axis):
        out = pushes(self, vectors, axes, nodes, target, axis)  # counted when it returns (not when it falls back)
        counts["all"] += 1
        counts["reduced"] += axis is not None
        return out

    gm, plan = net.graph_module, net.plan
    env1 = PassContext(gm, net._example).values(1)  # every node's value at batch 1, as the planner gets them
    with monkeypatch.context() as m:
        m.setattr(codes.ChannelCodes, "_pushes", counting)
        fast = plan_closed_form(gm, plan, env1)
    slow = plan_closed_form(gm, plan, env1, full_push=True)
    _same(fast.reasons, slow.reasons, "reasons")
    assert fast.taps.keys() == slow.taps.keys()
    for tap in fast.taps:
        _same(fast.taps[tap], slow.taps[tap], tap)
    return counts["reduced"], counts["all"]


def _module(family: str):
    net = ssa.load_model(zm.build(family))
    net.prepare(zm.images(family, 2))
    return net


def _onnx(family: str, tmp_path):
    x = zm.images(family, 2)
    path = _export(family, zm.build(family), x, tmp_path)
    net = ssa.load_model(str(path))
    net.prepare(x)
    return net


@pytest.mark.parametrize("family", [_param(f) for f in zm.FAMILIES])
def test_zoo_module_plans_equal_the_full_push(family, monkeypatch):
    reduced, pushes = assert_plans_agree(_module(family), monkeypatch)
    if family in zm.CLASSIC:
        assert pushes and reduced >= pushes // 2, (reduced, pushes)


@pytest.mark.parametrize("family", [_param(f) for f in zm.FAMILIES])
def test_zoo_onnx_plans_equal_the_full_push(family, tmp_path, monkeypatch):
    reduced, pushes = assert_plans_agree(_onnx(family, tmp_path), monkeypatch)
    if family in zm.CLASSIC:
        assert pushes and reduced >= pushes // 2, (reduced, pushes)


@pytest.mark.slow
@pytest.mark.parametrize("name", ["resnet50", "mobilenet_v3_large"])
def test_benchmark_models_plans_equal_the_full_push(name, tmp_path, monkeypatch):
    """The first-graph benchmark's models, at 64 px (the plan does not depend on the image size)."""
    torch.manual_seed(0)
    model = om.heavy_tail_(getattr(torchvision.models, name)(weights=None), 1).eval()
    x = np.random.default_rng(0).uniform(0.0, 1.0, (2, 3, 64, 64)).astype(np.float32)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        path = om.export(model, x, tmp_path / f"{name}.onnx")
    net = ssa.load_model(str(path))
    net.prepare(x)
    reduced, pushes = assert_plans_agree(net, monkeypatch)
    assert reduced >= 0.9 * pushes, (reduced, pushes)
