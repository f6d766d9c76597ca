"""onnx2torch's convolutions and dense layers constructed without drawing random weights (issue 19, item 6): its
converters replace every weight and bias with the file's, so the converted module is bit-equal to the one built
with the initialisation, which still runs everywhere else; a conversion that keeps a constructed parameter is made
again with it."""

from __future__ import annotations

import contextlib
import threading

import numpy as np
import pytest
import torch
import torch.nn as nn
from ssa_onnx import convert
from ssa_onnx.model import read_onnx
from torch import fx
from torch.utils._python_dispatch import TorchDispatchMode

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


def _gemm_model(path, *, trans_b: int, alpha: float, beta: float, bias: str):
    """image (N, 6) -> Gemm (an initializer weight; ``bias``: "1d", "2d" or "none") -> logits (N, 4)."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(3)
    w = rng.standard_normal((4, 6) if trans_b else (6, 4)).astype(np.float32)
    inits = [numpy_helper.from_array(w, "w")]
    inputs = ["image", "w"]
    if bias != "none":
        inits.append(numpy_helper.from_array(rng.standard_normal(4 if bias == "1d" else (1, 4)).astype(np.float32),
                                             "b"))
        inputs.append("b")
    node = helper.make_node("Gemm", inputs, ["logits"], transB=trans_b, alpha=alpha, beta=beta, name="fc")
    graph = helper.make_graph([node], "g", [helper.make_tensor_value_info("image", TensorProto.FLOAT, ["N", 6])],
                              [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", 4])],
                              initializer=inits)
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    proto.ir_version = 8
    onnx.save(proto, str(path))
    return path


class _Multiplications(TorchDispatchMode):
    def __init__(self) -> None:
        super().__init__()
        self.calls = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.calls += func in (torch.ops.aten.mul.Tensor, torch.ops.aten.mul.Scalar)
        return func(*args, **(kwargs or {}))


@pytest.mark.parametrize("case", ["vgg", "transB=0", "no bias", "alpha", "beta", "2-d bias"])
def test_dense_layers_are_converted_without_multiplying_their_weights_by_one(case, tmp_path, monkeypatch):
    """A Gemm with alpha = beta = 1 becomes onnx2torch's nn.Linear without its ``weights * alpha`` copy: the module is
    bit-equal to onnx2torch's own conversion (weights, their layout, outputs); other Gemms are onnx2torch's."""
    if case == "vgg":
        x = om.images((3, 8, 8), 2, seed=1)
        path = om.export(om.vgg_style(), x, tmp_path / "m.onnx")
    else:
        x = np.random.default_rng(4).standard_normal((3, 6)).astype(np.float32)
        path = _gemm_model(tmp_path / "m.onnx", trans_b=0 if case == "transB=0" else 1,
                           alpha=0.5 if case == "alpha" else 1.0, beta=2.0 if case == "beta" else 1.0,
                           bias={"no bias": "none", "2-d bias": "2d"}.get(case, "1d"))
    model = read_onnx(path)
    with _Multiplications() as ours:
        fast = convert.convert_model(model)
    monkeypatch.setattr(convert, "_unscaled_dense_layers", _initialised)  # the reference: onnx2torch's Gemm
    with _Multiplications() as theirs:
        reference = convert.convert_model(model)
    a, b = fast.state_dict(), reference.state_dict()
    assert a.keys() == b.keys() and len(a) > 0
    assert all(torch.equal(a[k], b[k]) and a[k].stride() == b[k].stride() and a[k].dtype == b[k].dtype for k in a)
    t = torch.from_numpy(x)
    assert torch.equal(fast(t), reference(t))
    assert [type(m).__name__ for m in fast.modules()] == [type(m).__name__ for m in reference.modules()]
    if case in ("vgg", "transB=0", "no bias"):  # converted here: no multiplication at all
        assert ours.calls == 0 and theirs.calls > 0
    else:  # onnx2torch's converter
        assert ours.calls == theirs.calls
