"""ONNX ``auto_pad=SAME_UPPER | SAME_LOWER`` (Keras through tf2onnx, PaddlePaddle) written out as explicit pads.

A graph built with onnx.helper pads a conv, a strided conv, a max pooling, a grouped conv with a rectangular kernel
and an average pooling with ``auto_pad`` (both rules, asymmetric pads where the sizes ask for them). It must
convert, agree with onnxruntime on the file as written, compute what a torch module with the same pads written
out by hand computes, take every step by the closed form, and give the slow reference's graph (both rules).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from onnx import TensorProto, helper, numpy_helper
from ssa_onnx.pads import same_pads

import ssa
from ssa.errors import UnsupportedModelError
from ssa.testing.models import RefTap
from ssa.testing.reference import reference_ssa

from . import onnx_models as om
from .closed_form_checks import assert_closed_form_equals_reference
from .graph_keys import assert_same_edges, edges_by_order, predicted_class
from .test_fast import _omega_close

SIZE = 10  # 10 x 10 images: the stride-2 conv and pooling pad one side only


def _torch_pads(pads: list[int]) -> tuple[int, ...]:
    """ONNX pads of a 2-D op (top, left, bottom, right) in F.pad's order (left, right, top, bottom)."""
    return (pads[1], pads[3], pads[0], pads[2])


class SamePadTorch(nn.Module):
    """What the SAME-padded ONNX graph computes, its pads written out (``same_pads``) as F.pad calls."""

    def __init__(self, mode: str, avg: bool = True) -> None:
        super().__init__()
        self.mode, self.with_avg = mode, avg
        self.conv1 = nn.Conv2d(3, 8, 3)
        self.relu1 = nn.ReLU()
        self.conv2 = nn.Conv2d(8, 8, 3, stride=2)
        self.relu2 = nn.ReLU()
        self.pool = nn.MaxPool2d(2, 2)
        self.conv3 = nn.Conv2d(8, 12, (2, 3), groups=2)
        self.relu3 = nn.ReLU()
        self.avg = nn.AvgPool2d(3, 1, padding=1, count_include_pad=False)
        self.fc = nn.Linear(12, 5)
        # a 2x2, stride 2 average of a 3 x 3 map over the positions each window reads (a SAME pad of one)
        self.register_buffer("read", F.avg_pool2d(F.pad(torch.ones(1, 1, 3, 3), self._pads(3, (2, 2), 2)), 2, 2))

    def _avg_of_what_is_read(self, x: torch.Tensor) -> torch.Tensor:
        return F.avg_pool2d(F.pad(x, self._pads(3, (2, 2), 2)), 2, 2) / self.read

    def _pads(self, size: int, kernel: tuple[int, int], stride: int) -> tuple[int, ...]:
        return _torch_pads(same_pads(self.mode, [size, size], list(kernel), [stride, stride], [1, 1]))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.relu1(self.conv1(F.pad(x, self._pads(SIZE, (3, 3), 1))))
        x = self.relu2(self.conv2(F.pad(x, self._pads(SIZE, (3, 3), 2))))
        x = self.pool(F.pad(x, self._pads(5, (2, 2), 2), value=float("-inf")))
        x = self.relu3(self.conv3(F.pad(x, self._pads(3, (2, 3), 1))))
        if self.with_avg:
            x = self._avg_of_what_is_read(self.avg(x))
        return self.fc(x.mean((2, 3)))


def same_pad_torch(mode: str, avg: bool = True) -> SamePadTorch:
    torch.manual_seed(0)
    return om.heavy_tail_(SamePadTorch(mode, avg), 9, sigma=1.5)


def same_pad_onnx(model: SamePadTorch, path: Path, *, size: int | str = SIZE) -> Path:
    """``model`` as an ONNX graph whose convs and poolings pad with ``auto_pad=model.mode`` (no ``pads``)."""
    w = {k: v.detach().numpy().astype(np.float32) for k, v in model.state_dict().items()}
    inits = [numpy_helper.from_array(np.ascontiguousarray(v), k.replace(".", "/")) for k, v in w.items()]
    same = {"auto_pad": model.mode}
    nodes = [
        helper.make_node("Conv", ["image", "conv1/weight", "conv1/bias"], ["c1"], name="conv1/Conv2D", **same),
        helper.make_node("Relu", ["c1"], ["r1"], name="conv1/Relu"),
        helper.make_node("Conv", ["r1", "conv2/weight", "conv2/bias"], ["c2"], strides=[2, 2], name="conv2/Conv2D",
                         **same),
        helper.make_node("Relu", ["c2"], ["r2"], name="conv2/Relu"),
        helper.make_node("MaxPool", ["r2"], ["p"], kernel_shape=[2, 2], strides=[2, 2], name="pool/MaxPool", **same),
        helper.make_node("Conv", ["p", "conv3/weight", "conv3/bias"], ["c3"], kernel_shape=[2, 3], group=2,
                         name="conv3/Conv2D", **same),
        helper.make_node("Relu", ["c3"], ["r3"], name="conv3/Relu"),
        helper.make_node("AveragePool", ["r3"], ["a"], kernel_shape=[3, 3], name="avg/AvgPool", **same),
        helper.make_node("AveragePool", ["a"], ["a2"], kernel_shape=[2, 2], strides=[2, 2], name="avg2/AvgPool",
                         **same),
        helper.make_node("GlobalAveragePool", ["a2" if model.with_avg else "r3"], ["g"], name="gap"),
        helper.make_node("Flatten", ["g"], ["f"], name="flatten"),
        helper.make_node("Gemm", ["f", "fc/weight", "fc/bias"], ["logits"], transB=1, name="fc"),
    ]
    if not model.with_avg:
        nodes = [n for n in nodes if n.op_type != "AveragePool"]
    graph = helper.make_graph(
        nodes, "same_pad", [helper.make_tensor_value_info("image", TensorProto.FLOAT, ["N", 3, size, size])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", 5])], initializer=inits)
    proto = helper.make_model(graph, producer_name="tf2onnx-style test", opset_imports=[helper.make_opsetid("", 17)])
    proto.ir_version = 8
    onnx.checker.check_model(proto)
    onnx.save(proto, str(path))
    return path


def _images(n: int, seed: int = 3) -> np.ndarray:
    return np.random.default_rng(seed).uniform(0, 1, (n, 3, SIZE, SIZE)).astype(np.float32)


MODES = ["SAME_UPPER", "SAME_LOWER"]


def test_same_pads_follow_the_onnx_definition():
    """The pads of the ONNX operator definitions (and onnx's reference evaluator): the odd one at the end for UPPER,
    at the start for LOWER; a transposed conv makes size * stride outputs."""
    assert same_pads("SAME_UPPER", [10, 10], [3, 3], [2, 2], [1, 1]) == [0, 0, 1, 1]
    assert same_pads("SAME_LOWER", [10, 10], [3, 3], [2, 2], [1, 1]) == [1, 1, 0, 0]
    assert same_pads("SAME_UPPER", [7, 8], [3, 3], [1, 1], [2, 1]) == [2, 1, 2, 1]  # dilation 2: extent 5
    assert same_pads("SAME_UPPER", [7, 8], [2, 4], [3, 1], [1, 1]) == [0, 1, 1, 2]
    assert same_pads("SAME_UPPER", [5], [1], [3], [1]) == [0, 0]  # the stride skips past the end: no padding
    assert same_pads("SAME_UPPER", [4], [3], [2], [1], transposed=True) == [0, 1]  # 2 * 3 + 3 - 8 = 1
    assert same_pads("SAME_LOWER", [4], [4], [2], [1], transposed=True) == [1, 1]
    assert same_pads("SAME_UPPER", [4], [1], [3], [1], transposed=True) is None  # would need a negative pad


@pytest.mark.parametrize("mode", MODES)
def test_parity_with_onnxruntime_and_the_torch_module(mode, tmp_path):
    import onnxruntime as ort

    model = same_pad_torch(mode)
    path = same_pad_onnx(model, tmp_path / "same.onnx")
    x = _images(8)
    direct = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, {"image": x})[0]
    with torch.no_grad():
        np.testing.assert_allclose(model(torch.from_numpy(x)).numpy(), direct, rtol=1e-4, atol=1e-4 * abs(direct).max())
    net = ssa.load_model(str(path))
    net.prepare(x)
    assert net.parity is not None and net.parity.ok
    np.testing.assert_allclose(net.logits(x), direct, rtol=1e-4, atol=1e-4 * abs(direct).max())
    assert [t.op for t in net.taps if t.kind == "activation"] == ["ReLU"] * 3


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("rule", ["gradient", "gradient_x_activation"])
def test_every_step_by_the_closed_form_equals_the_reference(mode, rule, tmp_path):
    model = same_pad_torch(mode)
    x = _images(12)
    ref_taps = (RefTap("relu1", "relu1"), RefTap("relu2", "relu2", 0, 1, ("relu1",)),
                RefTap("relu3", "relu3", 0, 1, ("relu2",)), RefTap("logits", "fc", 0, 1, ("relu3",)))
    path = same_pad_onnx(model, tmp_path / "same.onnx")
    want = assert_closed_form_equals_reference(model, x, ref_taps, rule, (str(path), model), 3)
    assert len(want) >= 4


def test_a_same_pad_on_a_size_that_is_not_fixed_is_named(tmp_path):
    """Convs and max poolings take pads computed at run time; an average pooling (whose count of the positions
    read would change with the size) is refused, by name, with the command that fixes the size."""
    path = same_pad_onnx(same_pad_torch("SAME_UPPER"), tmp_path / "dynamic.onnx", size="H")
    with pytest.raises(UnsupportedModelError) as exc:
        ssa.load_model(str(path))
    msg = str(exc.value)
    assert "\n" not in msg
    assert "operator AveragePool (node 'avg/AvgPool')" in msg and "auto_pad=SAME_UPPER" in msg
    assert "not fixed" in msg and "make_dynamic_shape_fixed --input_name image" in msg


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("rule", ["gradient", "gradient_x_activation"])
def test_same_pads_on_a_size_that_is_not_fixed_run_by_the_closed_form(mode, rule, tmp_path):
    """tf2onnx writes SAME for a Keras model whose input size is None: the convs' and max pooling's pads computed
    at run time (Shape, arithmetic, Pad), folded by the canonical form at the images' size."""
    import onnxruntime as ort

    model = same_pad_torch(mode, avg=False)
    path = same_pad_onnx(model, tmp_path / "dynamic.onnx", size="H")
    x = _images(12)
    direct = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, {"image": x})[0]
    with torch.no_grad():
        np.testing.assert_allclose(model(torch.from_numpy(x)).numpy(), direct, rtol=1e-4,
                                   atol=1e-4 * abs(direct).max())
    net = ssa.load_model(str(path))
    net.prepare(x)
    np.testing.assert_allclose(net.logits(x), direct, rtol=1e-4, atol=1e-4 * abs(direct).max())
    steps = net.describe_steps()
    assert len(steps) == 3 and all(v.startswith("fast") for v in steps.values()), steps
    assert _omega_close(net, x, rule) == 3
    target = predicted_class(model, x)
    ref_taps = (RefTap("relu1", "relu1"), RefTap("relu2", "relu2", 0, 1, ("relu1",)),
                RefTap("relu3", "relu3", 0, 1, ("relu2",)), RefTap("logits", "fc", 0, 1, ("relu3",)))
    order = {t.name: i for i, t in enumerate(ref_taps)}
    want = reference_ssa(model, x, ref_taps, target, 3, rule)
    res = ssa.analyse(str(path), x, target, 3, rule=rule, selector="tukey", engine="auto")
    assert_same_edges(edges_by_order(res), {(order[u], n, order[v], k): val for (u, n, v, k), val in want.items()})
    assert len(want) >= 2


def test_the_advice_for_a_size_that_is_not_fixed_works(tmp_path):
    """onnxruntime's make_dynamic_shape_fixed (what the refusal advises) fixes the size; the file then analyses."""
    from onnxruntime.tools.onnx_model_utils import make_input_shape_fixed

    model = same_pad_torch("SAME_UPPER")
    proto = onnx.load(str(same_pad_onnx(model, tmp_path / "dynamic.onnx", size="H")))
    make_input_shape_fixed(proto.graph, "image", [1, 3, SIZE, SIZE])
    onnx.save(proto, str(tmp_path / "fixed.onnx"))
    x = _images(4)
    net = ssa.load_model(str(tmp_path / "fixed.onnx"))
    net.prepare(x)
    with torch.no_grad():
        want = model(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(net.logits(x), want, rtol=1e-4, atol=1e-4 * abs(want).max())


# one op at a time against onnxruntime: dilations, 1-D and 3-D, rectangular strides, transposed convs
SINGLE = {
    "conv strided": ("Conv", (3, 9, 8), (4, 3, 3, 3), {"strides": [2, 3]}),
    "conv 1-D": ("Conv", (3, 11), (4, 3, 4), {"strides": [2]}),
    "conv 3-D": ("Conv", (3, 5, 6, 7), (4, 3, 2, 3, 2), {"strides": [1, 2, 2]}),
    "depthwise": ("Conv", (4, 7, 7), (4, 1, 3, 3), {"group": 4, "strides": [2, 2]}),
    "max pool": ("MaxPool", (3, 9, 8), None, {"kernel_shape": [3, 2], "strides": [2, 3]}),
    "average pool": ("AveragePool", (3, 9, 9), None, {"kernel_shape": [3, 3], "strides": [1, 1]}),
    "average pool, one side": ("AveragePool", (3, 9, 8), None, {"kernel_shape": [2, 3], "strides": [2, 2]}),
    "average pool counting pads": ("AveragePool", (3, 8, 8), None, {"kernel_shape": [3, 3], "strides": [2, 2],
                                                                     "count_include_pad": 1}),
    "average pool 1-D": ("AveragePool", (3, 10), None, {"kernel_shape": [3], "strides": [2]}),
    "transposed, even padding": ("ConvTranspose", (3, 5, 5), (3, 4, 4, 4), {"strides": [2, 2]}),
    "transposed, stride 1": ("ConvTranspose", (3, 6, 6), (3, 4, 3, 3), {}),
    "transposed, one side": ("ConvTranspose", (3, 5, 4), (3, 4, 3, 3), {"strides": [2, 2]}),  # total padding 1
    "transposed 1-D, groups": ("ConvTranspose", (4, 6), (4, 2, 3), {"strides": [2], "group": 2}),
}


def _single(op: str, shape, weight, attrs: dict, mode: str, path: Path) -> Path:
    rng = np.random.default_rng(1)
    inits, inputs = [], ["image"]
    if weight is not None:
        inits.append(numpy_helper.from_array(rng.standard_normal(weight).astype(np.float32), "w"))
        inputs.append("w")
    node = helper.make_node(op, inputs, ["y"], name="the_op", auto_pad=mode, **attrs)
    probe = helper.make_graph([node], "probe", [helper.make_tensor_value_info("image", TensorProto.FLOAT, [1, *shape])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], initializer=inits)
    inferred = onnx.shape_inference.infer_shapes(helper.make_model(probe, opset_imports=[helper.make_opsetid("", 17)]))
    dims = [d.dim_value for d in inferred.graph.output[0].type.tensor_type.shape.dim]
    features = int(np.prod(dims[1:]))
    inits += [numpy_helper.from_array(rng.standard_normal((3, features)).astype(np.float32), "fc_w"),
              numpy_helper.from_array(np.zeros(3, np.float32), "fc_b")]
    nodes = [node, helper.make_node("Flatten", ["y"], ["f"], name="flatten"),
             helper.make_node("Gemm", ["f", "fc_w", "fc_b"], ["logits"], transB=1, name="fc")]
    graph = helper.make_graph(nodes, "single", [helper.make_tensor_value_info("image", TensorProto.FLOAT,
                                                                             ["N", *shape])],
                              [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", 3])], initializer=inits)
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    proto.ir_version = 8
    onnx.checker.check_model(proto)
    onnx.save(proto, str(path))
    return path


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("name", sorted(SINGLE))
def test_one_op_agrees_with_onnxruntime(name, mode, tmp_path):
    import onnxruntime as ort

    op, shape, weight, attrs = SINGLE[name]
    path = _single(op, shape, weight, attrs, mode, tmp_path / "one.onnx")
    x = np.random.default_rng(2).standard_normal((4, *shape)).astype(np.float32)
    direct = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, {"image": x})[0]
    net = ssa.load_model(str(path), include_input=True)
    net.prepare(x)
    np.testing.assert_allclose(net.logits(x), direct, rtol=1e-4, atol=1e-4 * abs(direct).max())


def test_a_dilated_same_pad_is_named(tmp_path):
    """ONNX's definition (ceil(size / stride) outputs) and onnxruntime's (it refuses dilated SAME convs, and pads a
    dilated SAME max pooling as if undilated, one output fewer) disagree: refused, by name, rather than guessed."""
    path = _single("Conv", (3, 9, 8), (4, 3, 3, 3), {"dilations": [2, 1]}, "SAME_LOWER", tmp_path / "d.onnx")
    with pytest.raises(UnsupportedModelError) as exc:
        ssa.load_model(str(path))
    msg = str(exc.value)
    assert "\n" not in msg and "operator Conv (node 'the_op')" in msg and "dilations [2, 1]" in msg


@pytest.mark.parametrize("counted", [0, 1])
def test_explicit_asymmetric_average_pool_pads_agree_with_onnxruntime(counted, tmp_path):
    """An AveragePool written with asymmetric ``pads`` (no auto_pad), which onnx2torch refuses, split into Pad,
    AveragePool and (padding not counted) a Mul by each window's share of positions read."""
    import onnxruntime as ort

    attrs = {"kernel_shape": [3, 2], "strides": [2, 2], "pads": [0, 1, 2, 0], "count_include_pad": counted}
    path = _single("AveragePool", (3, 9, 8), None, attrs, "NOTSET", tmp_path / "avg.onnx")
    x = np.random.default_rng(4).standard_normal((4, 3, 9, 8)).astype(np.float32)
    direct = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, {"image": x})[0]
    net = ssa.load_model(str(path), include_input=True)
    net.prepare(x)
    np.testing.assert_allclose(net.logits(x), direct, rtol=1e-4, atol=1e-4 * abs(direct).max())


def test_explicit_asymmetric_transposed_pads_agree_with_onnxruntime(tmp_path):
    """A ConvTranspose written with asymmetric ``pads``, which onnx2torch refuses: the symmetric part in the layer,
    the rest cropped by a Slice."""
    import onnxruntime as ort

    attrs = {"strides": [2, 3], "pads": [0, 2, 1, 0], "output_padding": [1, 0]}
    path = _single("ConvTranspose", (3, 5, 4), (3, 4, 3, 3), attrs, "NOTSET", tmp_path / "t.onnx")
    x = np.random.default_rng(5).standard_normal((4, 3, 5, 4)).astype(np.float32)
    direct = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, {"image": x})[0]
    net = ssa.load_model(str(path), include_input=True)
    net.prepare(x)
    np.testing.assert_allclose(net.logits(x), direct, rtol=1e-4, atol=1e-4 * abs(direct).max())


class SameTransposedTorch(nn.Module):
    """A conv, then a SAME-padded stride-2 transposed conv (kernel 3: its one pad crops the output's end for
    SAME_UPPER, its start for SAME_LOWER), written out by hand."""

    def __init__(self, mode: str) -> None:
        super().__init__()
        self.mode = mode
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.relu1 = nn.ReLU()
        self.up = nn.ConvTranspose2d(8, 12, 3, stride=2)
        self.relu2 = nn.ReLU()
        self.fc = nn.Linear(12, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.up(self.relu1(self.conv(x)))  # 2 * 6 + 1 = 13 positions per axis, SAME keeps 12
        y = y[:, :, :-1, :-1] if self.mode == "SAME_UPPER" else y[:, :, 1:, 1:]
        return self.fc(self.relu2(y).mean((2, 3)))


def _same_transposed_onnx(model: SameTransposedTorch, path: Path) -> Path:
    w = {k: v.detach().numpy().astype(np.float32) for k, v in model.state_dict().items()}
    inits = [numpy_helper.from_array(np.ascontiguousarray(v), k) for k, v in w.items()]
    nodes = [helper.make_node("Conv", ["image", "conv.weight", "conv.bias"], ["c"], pads=[1, 1, 1, 1], name="conv"),
             helper.make_node("Relu", ["c"], ["r1"], name="relu1"),
             helper.make_node("ConvTranspose", ["r1", "up.weight", "up.bias"], ["u"], strides=[2, 2],
                              auto_pad=model.mode, name="up"),
             helper.make_node("Relu", ["u"], ["r2"], name="relu2"),
             helper.make_node("GlobalAveragePool", ["r2"], ["g"], name="gap"),
             helper.make_node("Flatten", ["g"], ["f"], name="flatten"),
             helper.make_node("Gemm", ["f", "fc.weight", "fc.bias"], ["logits"], transB=1, name="fc")]
    graph = helper.make_graph(nodes, "same_transposed",
                              [helper.make_tensor_value_info("image", TensorProto.FLOAT, ["N", 3, 6, 6])],
                              [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", 5])],
                              initializer=inits)
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    proto.ir_version = 8
    onnx.checker.check_model(proto)
    onnx.save(proto, str(path))
    return path


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("rule", ["gradient", "gradient_x_activation"])
def test_a_same_padded_transposed_conv_by_the_closed_form_equals_the_reference(mode, rule, tmp_path):
    import onnxruntime as ort

    torch.manual_seed(0)
    model = om.heavy_tail_(SameTransposedTorch(mode), 11, sigma=1.5)
    x = np.random.default_rng(6).uniform(0, 1, (12, 3, 6, 6)).astype(np.float32)
    path = _same_transposed_onnx(model, tmp_path / "up.onnx")
    direct = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, {"image": x})[0]
    with torch.no_grad():
        np.testing.assert_allclose(model(torch.from_numpy(x)).numpy(), direct, rtol=1e-4,
                                   atol=1e-4 * abs(direct).max())
    ref_taps = (RefTap("relu1", "relu1"), RefTap("relu2", "relu2", 0, 1, ("relu1",)),
                RefTap("logits", "fc", 0, 1, ("relu2",)))
    want = assert_closed_form_equals_reference(model, x, ref_taps, rule, (str(path), model), 2)
    # the gradient rule's graph stops below the logits; every step's omega is checked below under both rules
    assert {(u, v) for (u, _, v, _) in want} == ({("logits", "relu2"), ("relu2", "relu1")}
                                                 if rule == "gradient_x_activation" else {("logits", "relu2")})
