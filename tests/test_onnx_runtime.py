"""onnxruntime side of the ONNX backend: provider choice, image selection, logits, ``ssa check`` data."""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
import ssa_onnx
import torch
import torch.nn as nn
from onnx import TensorProto, helper, numpy_helper
from ssa_onnx import OnnxNetwork, check_report, make_session

import ssa
from ssa.analysis.grouping import group_images
from ssa.core.capabilities import SupportsClassProbabilities
from ssa.errors import InvalidInputError

from . import onnx_models as om


@pytest.fixture(scope="module")
def vgg(tmp_path_factory):
    root = tmp_path_factory.mktemp("onnx_runtime")
    model = om.vgg_style()
    x = om.images((3, 8, 8), 40, seed=3)
    return model, x, om.export(model, x, root / "vgg.onnx")


def test_provider_auto_works_and_is_quiet(vgg, capfd):
    sess = make_session(vgg[2].read_bytes(), "auto")
    provider = sess.get_providers()[0]
    assert provider in ("CUDAExecutionProvider", "CPUExecutionProvider")
    if not torch.cuda.is_available():
        assert provider == "CPUExecutionProvider"
    err = capfd.readouterr().err
    assert "provider_bridge" not in err and "Failed to load" not in err and "[E:" not in err


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without a GPU")
def test_provider_cuda_refused_without_gpu(vgg):
    with pytest.raises(InvalidInputError, match="provider='cpu'"):
        make_session(vgg[2].read_bytes(), "cuda")


def test_confident_images_onnx_and_torch_agree(vgg):
    """The paper's selection (images of the class the model is sure about) by ssa.analysis.grouping: the ONNX
    network's probabilities come from onnxruntime (SupportsClassProbabilities), the torch model's from a softmax."""
    model, x, path = vgg
    with torch.no_grad():
        probs = torch.softmax(model[:-1](torch.from_numpy(x)), 1).numpy()  # the model without its Softmax
    target = int(np.bincount(probs.argmax(1)).argmax())
    threshold = float(np.median(probs[:, target]))
    expect = np.flatnonzero(probs[:, target] >= threshold)
    onnx_net, torch_net = ssa.load_model(str(path)), ssa.load_model(model)
    for net in (onnx_net, torch_net):
        net.prepare(x)
    assert isinstance(onnx_net, SupportsClassProbabilities) and not isinstance(torch_net, SupportsClassProbabilities)
    for net in (onnx_net, torch_net):
        chosen = group_images(net, x, None, [target], min_confidence=threshold, batch_size=7)[target]
        np.testing.assert_array_equal(chosen.indices, expect)
        np.testing.assert_allclose(chosen.confidence, probs[expect, target], rtol=1e-4, atol=1e-6)
        np.testing.assert_array_equal(chosen.images, x[expect])
    first = group_images(onnx_net, x, None, [target], min_confidence=threshold, max_per_class=3)[target]
    np.testing.assert_array_equal(first.images, x[expect[:3]])  # the first three, in order
    labels = np.where(np.arange(len(x)) % 2 == 0, target, target + 1)
    chosen = group_images(onnx_net, x, labels, [target], min_confidence=threshold)[target]
    np.testing.assert_array_equal(chosen.indices, 2 * np.flatnonzero(probs[::2, target] >= threshold))


def test_confident_images_errors(vgg):
    model, x, path = vgg
    with torch.no_grad():
        best = torch.softmax(model[:-1](torch.from_numpy(x)), 1).numpy().max(0)
    unsure = int(best.argmin())
    assert best[unsure] < 0.99
    net = ssa.load_model(str(path))
    net.prepare(x)
    with pytest.raises(InvalidInputError, match="has no image with probability >= 0.99") as exc:
        group_images(net, x, None, [unsure], min_confidence=0.99, max_per_class=100)  # the paper's 0.99 and 100
    assert "--min-confidence" in str(exc.value)
    with pytest.raises(InvalidInputError, match="min_confidence"):
        group_images(net, x, None, [0], min_confidence=1.5)
    with pytest.raises(InvalidInputError, match="target must be in"):
        group_images(net, x, None, [9], min_confidence=0.0)


def _prob_graph(path, *, log_softmax=False):
    """image (N,3,4,4) -> Flatten -> Gemm -> Relu -> Gemm -> [Exp, ReduceSum, Div | LogSoftmax]: no Softmax node."""
    rng = np.random.default_rng(1)
    inits = [numpy_helper.from_array(rng.standard_normal((5, 48)).astype(np.float32), "w"),
             numpy_helper.from_array(rng.standard_normal(5).astype(np.float32), "b"),
             numpy_helper.from_array(rng.standard_normal((5, 5)).astype(np.float32), "w2"),
             numpy_helper.from_array(rng.standard_normal(5).astype(np.float32), "b2"),
             numpy_helper.from_array(np.array([1], np.int64), "axes")]
    nodes = [helper.make_node("Flatten", ["image"], ["f"], name="flatten"),
             helper.make_node("Gemm", ["f", "w", "b"], ["z"], transB=1, name="dense"),
             helper.make_node("Relu", ["z"], ["r0"], name="relu0"),
             helper.make_node("Gemm", ["r0", "w2", "b2"], ["z2"], transB=1, name="dense2")]
    if log_softmax:
        nodes.append(helper.make_node("LogSoftmax", ["z2"], ["out"], axis=1, name="logsoftmax"))
    else:
        nodes += [helper.make_node("Exp", ["z2"], ["e"], name="exp"),
                  helper.make_node("ReduceSum", ["e", "axes"], ["s"], keepdims=1, name="sum"),
                  helper.make_node("Div", ["e", "s"], ["out"], name="normalise")]
    graph = helper.make_graph(nodes, "probs", [helper.make_tensor_value_info("image", TensorProto.FLOAT, ["N", 3, 4,
                                                                                                          4])],
                              [helper.make_tensor_value_info("out", TensorProto.FLOAT, ["N", 5])], initializer=inits)
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    proto.ir_version = 8
    onnx.checker.check_model(proto)
    onnx.save(proto, str(path))
    return path


def test_probabilities_without_softmax_node_use_log_probabilities(tmp_path):
    path = _prob_graph(tmp_path / "probs.onnx")
    x = om.images((3, 4, 4), 16)
    net = ssa.load_model(str(path))
    net.prepare(x)
    assert net.output_kind == "probabilities"
    assert any("log-probabilities" in n for n in net.notes)
    top = net.taps[-1]
    assert top.name == "logits" and top.op == "LogProbabilities" and top.parents == ("relu0",)
    probs = net.ort_outputs(x)
    np.testing.assert_allclose(np.exp(net.logits(x)), probs, rtol=1e-4, atol=1e-6)
    report = check_report(str(path))
    assert "logits: probabilities" in report.render() and "log-probabilities" in report.render()
    t = int(probs[0].argmax())
    p = group_images(net, x, None, [t], min_confidence=0.0)[t].confidence  # onnxruntime's output itself
    np.testing.assert_allclose(p, probs[:, t], rtol=1e-5)
    assert ssa.analyse(str(path), x, 0, preset="paper").graph.number_of_nodes() >= 1


def test_log_softmax_output_is_stripped(tmp_path):
    path = _prob_graph(tmp_path / "logprobs.onnx", log_softmax=True)
    x = om.images((3, 4, 4), 8)
    net = ssa.load_model(str(path))
    net.prepare(x)
    assert net.output_kind == "log-softmax stripped" and net.plan.stripped == "LogSoftmax"
    z = net.logits(x)
    assert not np.allclose(np.exp(z).sum(1), 1.0)  # the input of the LogSoftmax: not normalised


def test_check_report_data_and_text(vgg):
    model, x, path = vgg
    report = check_report(str(path), x)
    assert report.backend == "onnx" and report.ok and report.parity.n_images == 8
    assert report.output_kind == "softmax stripped"
    assert report.info.input.shape == (None, 3, 8, 8) and report.info.layout == "nchw"
    assert [t.name for t in report.taps] == ["1/Relu", "3/Relu", "6/Relu", "10/Relu", "logits"]
    assert report.dag() == {"1/Relu": (), "3/Relu": ("1/Relu",), "6/Relu": ("3/Relu",), "10/Relu": ("6/Relu",),
                            "logits": ("10/Relu",)}
    assert set(report.steps) == {"3/Relu -> 1/Relu", "6/Relu -> 3/Relu", "10/Relu -> 6/Relu", "logits -> 10/Relu"}
    text = report.render()
    for needle in ("parity ok", "max |onnxruntime - converted|", "logits: softmax stripped", "10/Relu -> 6/Relu",
                   "input  image (?, 3, 8, 8) float32, layout NCHW", "axis 1"):
        assert needle in text, needle
    json.dumps(report.to_dict())
    random = check_report(str(path))  # no images: seeded random ones of the declared shape
    assert "random images" in random.example and random.ok
    torch_report = check_report(model, x)
    assert torch_report.backend == "torch" and torch_report.parity is None
    assert torch_report.output_kind == "Softmax stripped" and len(torch_report.taps) == 5


def test_network_check_report_for_the_cli(vgg):
    _, x, path = vgg
    net = ssa.load_model(str(path))
    assert isinstance(net, OnnxNetwork) and net.default_input_shape == (3, 8, 8)
    net.prepare(x[:2])
    text = net.check_report(x[:2])
    assert text.startswith("model vgg (onnx backend)") and "parity ok" in text and "2 image(s)" in text


class GeluNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 6, 3, padding=1)
        self.act = nn.GELU()
        self.fc = nn.Linear(6, 4)

    def forward(self, x):
        return self.fc(self.act(self.conv(x)).mean((2, 3)))


class SinNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv, self.conv2, self.fc = nn.Conv2d(3, 6, 3, padding=1), nn.Conv2d(6, 6, 3, padding=1), nn.Linear(6, 4)

    def forward(self, x):
        return self.fc(torch.relu(self.conv2(torch.sin(self.conv(x)))).mean((2, 3)))


def test_unrecognised_activation_is_reported(tmp_path):
    """A nonlinearity tap discovery does not know (Sin) is listed by ssa check, with the advice to name taps."""
    model = om.heavy_tail_(SinNet(), 0)
    path = om.export(model, om.images((3, 8, 8), 12), tmp_path / "sin.onnx")
    report = check_report(str(path))
    assert [t.name for t in report.taps] == ["Relu", "logits"]
    assert report.unknown_ops == ("sin (Sin)",) and "--taps" in report.render()


def test_gelu_written_out_is_a_tap_and_taps_can_still_be_named(tmp_path):
    """GELU exports as Div / Erf / Add / Mul / Mul (opset 17): the pattern is one GELU tap (method doc, section 4b;
    it was an unclassified OnnxErf before); naming its last Mul by hand with --taps still works."""
    model = om.heavy_tail_(GeluNet(), 0)
    x = om.images((3, 8, 8), 12)
    path = om.export(model, x, tmp_path / "gelu.onnx")
    report = check_report(str(path))
    assert [(t.name, t.op) for t in report.taps] == [("act/Erf", "GELU"), ("logits", "Linear")]
    assert not any(u.startswith("OnnxErf") for u in report.unknown_ops)
    proto = onnx.load(str(path))
    consumer = {i for n in proto.graph.node if n.op_type == "ReduceMean" for i in n.input}
    gelu_out = next(n for n in proto.graph.node if n.output[0] in consumer)
    tap = gelu_out.name.replace(".", "/").lstrip("/")
    net = ssa.load_model(str(path), taps=[tap])
    net.prepare(x)
    assert [t.name for t in net.taps] == [tap, "logits"] and net.taps[0].shape == (6, 8, 8)
    ref = ssa.analyse(model, x, 1, taps=["act"], preset="paper")
    got = ssa.analyse(str(path), x, 1, taps=[tap], preset="paper")
    assert {(d["tap"] == "logits", d["neuron"]) for _, d in got.graph.nodes(data=True)} == \
        {(d["tap"] == "logits", d["neuron"]) for _, d in ref.graph.nodes(data=True)}


def test_public_surface():
    for name in ("check_report", "OnnxBackend", "OnnxNetwork", "input_shape_of", "read_onnx"):
        assert hasattr(ssa_onnx, name)


def test_onnxruntime_loads_the_file_itself_when_the_model_is_as_read(vgg, tmp_path):
    """A model as the file has it: onnxruntime gets the file's path (no serialisation of the proto); a model
    changed on reading (a fixed batch made dynamic) gets the changed proto's bytes. Both give the outputs of a
    session on the file, and the parity check passes."""
    from ssa_onnx.model import read_onnx

    model, x, path = vgg
    as_read = read_onnx(path)
    assert as_read.as_file and as_read.session_source() == str(path)
    fixed = om.export(model, x[:1], tmp_path / "fixed.onnx", dynamic=False)
    changed = read_onnx(fixed)
    assert not changed.as_file and isinstance(changed.session_source(), bytes)
    want = make_session(str(path), "cpu").run(None, {"image": x[:4]})[0]
    for m in (as_read, changed):
        got = make_session(m.session_source(), "cpu").run(None, {"image": x[:4]})[0]
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
    net = ssa.load_model(str(path))
    net.prepare(x)
    assert net.parity.ok and net.parity_converted.ok
