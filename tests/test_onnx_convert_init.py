"""onnx2torch's convolutions and dense layers constructed without drawing random weights (issue 19, item 6): its
converters replace every weight and bias with the file's, so the converted module is bit-equal to the one built
with the initialisation, which still runs everywhere else; a conversion that keeps a constructed parameter is made
again with it."""

from __future__ import annotations

import contextlib
import threading

import pytest
import torch
import torch.nn as nn
from ssa_onnx import convert
from ssa_onnx.model import read_onnx
from torch import fx

from . import onnx_models as om


@contextlib.contextmanager
def _initialised():
    yield []


@pytest.mark.parametrize("build, shape", [(om.vgg_style, (3, 8, 8)), (om.resnet_style, (3, 16, 16)),
                                          (om.mobilenet_style, (3, 16, 16))])
def test_the_converted_module_equals_the_one_built_with_the_initialisation(build, shape, tmp_path, monkeypatch):
    x = om.images(shape, 2, seed=1)
    model = read_onnx(om.export(build(), x, tmp_path / "m.onnx"))
    fast = convert.convert_model(model)
    monkeypatch.setattr(convert, "_uninitialised", _initialised)  # the reference: onnx2torch as it is
    reference = convert.convert_model(model)
    a, b = fast.state_dict(), reference.state_dict()
    assert a.keys() == b.keys() and len(a) > 0
    assert all(torch.equal(a[k], b[k]) for k in a)
    t = torch.from_numpy(x)
    assert torch.equal(fast(t), reference(t))


def test_layers_elsewhere_are_initialised_as_always():
    """Outside a conversion (and in another thread during one) a layer draws its weights as torch does."""
    convert._skippable(nn.modules.conv._ConvNd)
    torch.manual_seed(7)
    ours = nn.Conv2d(3, 4, 3)
    torch.manual_seed(7)
    reference = nn.Conv2d(3, 4, 3, device="meta").to_empty(device="cpu")
    nn.modules.conv._ConvNd.reset_parameters.__wrapped__(reference)
    assert torch.equal(ours.weight, reference.weight) and torch.equal(ours.bias, reference.bias)
    made: list[nn.Linear] = []
    with convert._uninitialised() as constructed:
        other = threading.Thread(target=lambda: made.append(nn.Linear(64, 64)))
        other.start()
        other.join()
        assert constructed == []  # the other thread's layer is not this conversion's
    w = made[0].weight  # drawn: within kaiming_uniform_'s bound 1/8, spread as uniform(-1/8, 1/8) (std 0.072)
    assert w.abs().max() <= 1 / 8 and w.std() > 0.05


def test_a_parameter_kept_as_constructed_is_found():
    with convert._uninitialised() as constructed:
        kept, replaced = nn.Linear(4, 3), nn.Linear(4, 3)
        with torch.no_grad():
            replaced.weight.data = torch.ones(3, 4)
            replaced.bias.data = torch.zeros(3)
    assert len(constructed) == 4
    assert not convert._keeps_any(fx.symbolic_trace(nn.Sequential(replaced)), constructed)
    assert convert._keeps_any(fx.symbolic_trace(nn.Sequential(replaced, kept)), constructed)


def test_a_conversion_that_keeps_one_is_made_again_with_the_initialisation(tmp_path, monkeypatch):
    """A (hypothetical) converter that leaves a layer's weights as constructed: the module is converted again,
    with torch's initialisation, rather than with memory never written."""
    import onnx2torch

    x = om.images((3, 8, 8), 2, seed=1)
    model = read_onnx(om.export(om.vgg_style(), x, tmp_path / "m.onnx"))
    calls: list[bool] = []

    def keeping(proto):
        calls.append(getattr(convert._CONVERTING, "parameters", None) is not None)
        return fx.symbolic_trace(nn.Sequential(nn.Flatten(), nn.Linear(192, 2)))

    monkeypatch.setattr(onnx2torch, "convert", keeping)
    torch.manual_seed(5)
    gm = convert.convert_model(model)
    assert calls == [True, False]  # without, then with the initialisation
    torch.manual_seed(5)
    expected = nn.Linear(192, 2)  # the first conversion drew nothing: the second drew this
    assert torch.equal(gm.get_submodule("1").weight, expected.weight)
