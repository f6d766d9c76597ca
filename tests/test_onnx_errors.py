"""Bad ONNX inputs: ssa errors (exit code 2 in the CLI) with one-line messages naming problem and fix."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
import torch
import torch.nn as nn
from onnx import TensorProto, helper, numpy_helper

import ssa
from ssa.cli import main
from ssa.errors import (
    InvalidInputError,
    ModelLoadError,
    SSAError,
    UnsupportedModelError,
)

from . import onnx_models as om


def one_line(exc: pytest.ExceptionInfo) -> str:
    msg = str(exc.value)
    assert "\n" not in msg and isinstance(exc.value, SSAError)
    return msg


@pytest.fixture(scope="module")
def vgg(tmp_path_factory):
    root = tmp_path_factory.mktemp("onnx_errors")
    model = om.vgg_style()
    x = om.images((3, 8, 8), 8)
    return model, x, om.export(model, x, root / "vgg.onnx")


def _conv_graph(act_nodes, path, *, opset=17, extra_inputs=()):
    """image (N,3,8,8) -> Conv -> <act_nodes reading 'c' and writing 'a'> -> GlobalAveragePool -> Flatten -> Gemm."""
    rng = np.random.default_rng(0)
    inits = [numpy_helper.from_array(rng.standard_normal((4, 3, 3, 3)).astype(np.float32), "w"),
             numpy_helper.from_array(rng.standard_normal((3, 4)).astype(np.float32), "fc_w"),
             numpy_helper.from_array(np.zeros(3, np.float32), "fc_b")]
    nodes = [helper.make_node("Conv", ["image", "w"], ["c"], pads=[1, 1, 1, 1], name="conv"), *act_nodes,
             helper.make_node("GlobalAveragePool", ["a"], ["g"], name="gap"),
             helper.make_node("Flatten", ["g"], ["f"], name="flatten"),
             helper.make_node("Gemm", ["f", "fc_w", "fc_b"], ["logits"], transB=1, name="fc")]
    inputs = [helper.make_tensor_value_info("image", TensorProto.FLOAT, ["N", 3, 8, 8]), *extra_inputs]
    graph = helper.make_graph(nodes, "g", inputs, [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N",
                                                                                                               3])],
                              initializer=inits)
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    proto.ir_version = 8
    onnx.save(proto, str(path))
    return path


def test_missing_file():
    with pytest.raises(ModelLoadError) as exc:
        ssa.load_model("/nonexistent/model.onnx")
    assert "does not exist" in one_line(exc)


def test_file_that_is_not_onnx(tmp_path):
    path = tmp_path / "notes.onnx"
    path.write_text("this is a text file, not a model\n")
    with pytest.raises(ModelLoadError) as exc:
        ssa.load_model(str(path))
    assert "not a readable ONNX file" in one_line(exc)
    empty = tmp_path / "empty.onnx"
    empty.write_bytes(b"")
    with pytest.raises(ModelLoadError) as exc:
        ssa.load_model(str(empty))
    assert "not an ONNX model" in one_line(exc)


def test_truncated_file(vgg, tmp_path):
    data = vgg[2].read_bytes()
    path = tmp_path / "truncated.onnx"
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(ModelLoadError) as exc:
        ssa.load_model(str(path))
    assert "truncated" in one_line(exc)


def test_operator_onnx2torch_cannot_convert_is_named(tmp_path):
    path = _conv_graph([helper.make_node("ThresholdedRelu", ["c"], ["a"], alpha=0.5, name="act1")],
                       tmp_path / "thresholded.onnx")
    with pytest.raises(UnsupportedModelError) as exc:
        ssa.load_model(str(path))
    msg = one_line(exc)
    assert "ThresholdedRelu" in msg and "'act1'" in msg and "--taps" in msg


def test_converter_failure_is_named(tmp_path):
    """onnx2torch has a Clip converter, but not for a min computed in the graph: the node is named."""
    nodes = [helper.make_node("ReduceMin", ["c"], ["lo"], keepdims=0, name="lowest"),
             helper.make_node("Clip", ["c", "lo"], ["a"], name="dyn_clip")]
    path = _conv_graph(nodes, tmp_path / "dynclip.onnx", opset=13)
    with pytest.raises(UnsupportedModelError) as exc:
        ssa.load_model(str(path))
    msg = one_line(exc)
    assert "Clip" in msg and "'dyn_clip'" in msg


def test_wrong_input_shape(vgg):
    _, x, path = vgg
    with pytest.raises(InvalidInputError) as exc:
        ssa.analyse(str(path), x.transpose(0, 2, 3, 1), 0)  # NHWC images for an NCHW model
    msg = one_line(exc)
    assert "(?, 3, 8, 8)" in msg and "nhwc" in msg
    with pytest.raises(InvalidInputError) as exc:
        ssa.analyse(str(path), np.zeros((2, 3, 16, 16), np.float32), 0)
    assert "--preprocess" in one_line(exc)


def test_several_inputs_are_refused(tmp_path):
    extra = helper.make_tensor_value_info("bias", TensorProto.FLOAT, ["N", 4, 8, 8])
    path = _conv_graph([helper.make_node("Add", ["c", "bias"], ["a"], name="add")], tmp_path / "two.onnx",
                       extra_inputs=[extra])
    with pytest.raises(UnsupportedModelError) as exc:
        ssa.load_model(str(path))
    assert "2 inputs" in one_line(exc)


class TwoHeads(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.relu = nn.ReLU()
        self.fc = nn.Linear(4, 3)

    def forward(self, x):
        feats = self.relu(self.conv(x)).mean((2, 3))
        return feats, self.fc(feats)


def test_several_outputs_need_output_index(tmp_path):
    model = om.heavy_tail_(TwoHeads(), 0)
    x = om.images((3, 8, 8), 8)
    path = om.export(model, x, tmp_path / "heads.onnx", output_names=("features", "logits"))
    with pytest.raises(UnsupportedModelError) as exc:
        ssa.load_model(str(path))
    msg = one_line(exc)
    assert "2 outputs" in msg and "--output-index" in msg and "logits" in msg
    with pytest.raises(InvalidInputError) as exc:
        ssa.load_model(str(path), output_index=2)
    assert "output_index must be in [0, 1]" in one_line(exc)
    net = ssa.load_model(str(path), output_index=1)
    net.prepare(x)
    assert net.parity.ok and net.taps[-1].shape == (3,)
    ref = model(torch.from_numpy(x))[1].numpy()
    np.testing.assert_allclose(net.logits(x), ref, rtol=1e-4, atol=1e-5)


def test_parity_failure_says_by_how_much(vgg):
    _, x, path = vgg
    net = ssa.load_model(str(path))
    with torch.no_grad():
        next(net.module.parameters()).add_(0.5)  # break the converted module
    with pytest.raises(UnsupportedModelError) as exc:
        net.prepare(x)
    msg = one_line(exc)
    assert "disagrees with onnxruntime" in msg and "max |diff|" in msg and "tolerance 0.001" in msg
    loose = ssa.load_model(str(path), parity_tolerance=1e6)
    with torch.no_grad():
        next(loose.module.parameters()).add_(0.5)
    loose.prepare(x)
    assert not loose.parity.relative < 1e-3 and loose.parity.ok


def test_unknown_backend_option(vgg):
    with pytest.raises(InvalidInputError) as exc:
        ssa.load_model(str(vgg[2]), parity=0.1)
    assert "known options" in one_line(exc)


def test_cli_exit_code_2(vgg, tmp_path, capsys):
    bad = tmp_path / "bad.onnx"
    bad.write_text("not a model")
    np.save(tmp_path / "x.npy", vgg[1])
    code = main(["analyse", str(bad), "--images", str(tmp_path / "x.npy"), "--target", "0", "--quiet"])
    err = capsys.readouterr().err
    assert code == 2 and err.startswith("ssa: error:") and err.count("\n") == 1


def test_newer_operator_version_using_a_new_input_is_named(tmp_path):
    """Pad-18 may take an 'axes' input that onnx2torch's Pad-13 converter knows nothing about."""
    axes = numpy_helper.from_array(np.array([2, 3], np.int64), "pad_axes")
    pads = numpy_helper.from_array(np.array([1, 1, 1, 1], np.int64), "pads")
    nodes = [helper.make_node("Pad", ["c", "pads", "", "pad_axes"], ["a"], name="pad_hw")]
    path = _conv_graph(nodes, tmp_path / "pad18.onnx", opset=18)
    proto = onnx.load(str(path))
    proto.graph.initializer.extend([axes, pads])
    onnx.save(proto, str(path))
    with pytest.raises(UnsupportedModelError) as exc:
        ssa.load_model(str(path))
    msg = one_line(exc)
    assert "Pad" in msg and "'pad_hw'" in msg and "input 3" in msg
