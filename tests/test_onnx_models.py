"""ONNX backend on exported models: parity with onnxruntime, and the same graph as the torch model.

For every model kind the issue names (VGG-style, ResNet-style with BatchNorm, MobileNetV3-style with
Hardswish and hard-sigmoid squeeze-excitation gates, channels-last with Transposes around its convs,
and a Keras-style graph built with onnx.helper), ``ssa.analyse`` on the ``.onnx`` file must give the
graph ``ssa.analyse`` gives on the torch model. Tap names differ (ONNX node names against module
paths), so graphs are compared with every node relabelled by (tap order, neuron).
"""

from __future__ import annotations

import numpy as np
import pytest
from ssa_onnx import OnnxNetwork

import ssa
from ssa.testing.tolerance import assert_graphs_close, fixture_margin

from . import onnx_models as om

# name -> (builder, image shape, target class); each is exported with opset 17, those in OLD_OPSET also
# with opset 11 (Softmax V1-V11; HardSwish written as x * HardSigmoid(x))
CASES = {
    "vgg": (om.vgg_style, (3, 8, 8), 5),
    "resnet": (om.resnet_style, (3, 8, 8), 0),
    "mobilenetv3": (om.mobilenet_style, (3, 8, 8), 4),
    "channels_last": (om.channels_last, (8, 8, 3), 3),
}
OLD_OPSET = ("vgg", "mobilenetv3")


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    root = tmp_path_factory.mktemp("onnx_models")
    out = {}
    for name, (build, shape, target) in CASES.items():
        model = build()
        x = om.images(shape, 32)
        for opset in ((17, 11) if name in OLD_OPSET else (17,)):
            out[name, opset] = (model, x, target, om.export(model, x, root / f"{name}_{opset}.onnx", opset=opset))
    keras = om.keras_style_torch()
    x = om.images((8, 8, 3), 32)
    out["keras", 13] = (keras, x, 3, om.keras_style_onnx(keras, root / "keras.onnx"))
    return out


def relabel(result) -> tuple[set, set]:
    """Nodes and edges of a result's graph, named by (tap order, neuron) instead of tap names."""
    g = result.graph
    order = {t.name: t.order for t in result.taps}

    def key(n):
        return order[g.nodes[n]["tap"]], g.nodes[n]["neuron"]

    return {key(n) for n in g.nodes}, {(key(u), key(v), d["frequency"]) for u, v, d in g.edges(data=True)}


def in_names_of(result, like):
    """``result``'s graph with its taps named as ``like``'s (matched by tap order)."""
    import networkx as nx

    by_order = {t.order: t.name for t in like.taps}
    name = {t.name: by_order[t.order] for t in result.taps}
    g = result.graph

    def node(n):
        return f"{name[g.nodes[n]['tap']]}:{g.nodes[n]['neuron']}"

    h = nx.DiGraph()
    h.add_nodes_from((node(n), {**d, "tap": name[d["tap"]]}) for n, d in g.nodes(data=True))
    h.add_edges_from((node(u), node(v), d) for u, v, d in g.edges(data=True))
    return h


def tap_structure(taps) -> list[tuple]:
    """Taps by order: kind, shape, channel axis and parents (as orders)."""
    order = {t.name: t.order for t in taps}
    return [(t.order, t.kind, tuple(t.shape), t.channel_axis, tuple(sorted(order[p] for p in t.parents)))
            for t in sorted(taps, key=lambda t: t.order)]


ALL = [(name, 17) for name in CASES] + [(name, 11) for name in OLD_OPSET] + [("keras", 13)]


@pytest.mark.parametrize("name,opset", ALL, ids=[f"{n}-opset{o}" for n, o in ALL])
def test_parity_and_taps_match_the_torch_model(exported, name, opset):
    model, x, _, path = exported[name, opset]
    net = ssa.load_model(str(path))
    assert isinstance(net, OnnxNetwork)
    net.prepare(x)
    assert net.parity is not None and net.parity.ok
    assert net.parity.relative < 1e-4 and net.parity.top1_agreement == 1.0
    ref = ssa.load_model(model)
    ref.prepare(x)
    assert tap_structure(net.taps) == tap_structure(ref.taps)
    np.testing.assert_allclose(net.logits(x), ref.logits(x), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("rule", ["gradient", "gradient_x_activation"])
@pytest.mark.parametrize("name", list(CASES) + ["keras"])
def test_onnx_graph_equals_torch_graph(exported, name, rule):
    opset = 13 if name == "keras" else 17
    model, x, target, path = exported[name, opset]
    a = ssa.analyse(str(path), x, target, rule=rule, selector="tukey")
    b = ssa.analyse(model, x, target, rule=rule, selector="tukey")
    assert b.graph.number_of_nodes() >= 4, "the reference graph should not be trivial"
    # the converted ONNX graph and the torch module compute in float32 in other orders: counts apart only by
    # values on the selector's cut (the fixture's margin asserted), relevances to 1e-4
    net = ssa.load_model(model)
    net.prepare(x)
    assert_graphs_close(in_names_of(a, b), b, margin=fixture_margin(net, x, b, rule, "tukey"))


def test_old_opset_graph_equals_torch_graph(exported):
    """Opset 11: Softmax V1-V11 is stripped, HardSwish is written as x * HardSigmoid(x) (the product is the tap)."""
    for name in OLD_OPSET:
        model, x, target, path = exported[name, 11]
        a = ssa.analyse(str(path), x, target, rule="gradient_x_activation", selector="tukey")
        b = ssa.analyse(model, x, target, rule="gradient_x_activation", selector="tukey")
        assert relabel(a) == relabel(b)


def test_mobilenet_taps_hardswish_not_gates(exported):
    model, x, _, path = exported["mobilenetv3", 17]
    net = ssa.load_model(str(path))
    net.prepare(x)
    ops = [t.op for t in net.taps if t.kind == "activation"]
    assert ops.count("Hardswish") == 5 and ops.count("ReLU") == 1  # the SE's ReLU; its hard-sigmoid gate is no tap
    assert not any("HardSigmoid" in op for op in ops)
    old = ssa.load_model(str(exported["mobilenetv3", 11][3]))
    old.prepare(x)
    assert [t.op for t in old.taps if t.kind == "activation"].count("hardswish") == 5


def test_channel_axes_follow_the_transposes(exported):
    _, x, _, path = exported["channels_last", 17]
    net = ssa.load_model(str(path), include_input=True)
    net.prepare(x)
    axes = {t.order: t.channel_axis for t in net.taps}
    assert axes == {0: 3, 1: 3, 2: 3, 3: 1, 4: 1}  # input NHWC, two NHWC ReLUs, dense ReLU, logits
    _, xk, _, kpath = exported["keras", 13]
    knet = ssa.load_model(str(kpath), include_input=True)
    knet.prepare(xk)
    assert knet.taps[0].name == "input" and knet.taps[0].channel_axis == 3


def test_keras_dense_batchnorm_multiplication_is_not_a_gate(exported):
    _, x, _, path = exported["keras", 13]
    net = ssa.load_model(str(path))
    net.prepare(x)
    assert [t.name for t in net.taps] == ["conv1/Relu", "conv2/Relu", "dense1/Relu", "logits"]
    assert net.output_kind == "softmax stripped"


def test_resnet_keeps_a_batchnorm_node(exported):
    import onnx

    _, x, _, path = exported["resnet", 17]
    ops = [n.op_type for n in onnx.load(str(path)).graph.node]
    assert "BatchNormalization" in ops  # the BN after the Add cannot be folded into a conv
    net = ssa.load_model(str(path))
    net.prepare(x)
    assert [len(t.parents) for t in net.taps] == [0, 1, 2, 1, 2, 1]  # skip connections: two parents


def test_fixed_batch_export_is_made_dynamic(tmp_path):
    model = om.vgg_style()
    x = om.images((3, 8, 8), 12)
    path = om.export(model, x[:1], tmp_path / "fixed.onnx", dynamic=False)
    net = ssa.load_model(str(path))
    net.prepare(x)
    assert net.onnx.info.fixed_batch == 1 and net.parity.ok and net.parity.n_images == 8
    assert any("batch size" in n for n in net.notes)
    ref = ssa.load_model(model)
    ref.prepare(x)
    np.testing.assert_allclose(net.logits(x), ref.logits(x), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("opset", [20, 21])
def test_recent_opsets(tmp_path, opset):
    """Identity-19/21 (on an initializer), ReduceMean-18 (axes as an input): versions onnx2torch lacks."""
    import onnx

    model = om.shared_bias()
    x = om.images((3, 8, 8), 32)
    path = om.export(model, x, tmp_path / f"shared_{opset}.onnx", opset=opset)
    ops = {n.op_type for n in onnx.load(str(path)).graph.node}
    assert {"Identity", "ReduceMean"} <= ops
    net = ssa.load_model(str(path))
    net.prepare(x)
    assert net.parity.ok and net.parity.relative < 1e-4
    a = ssa.analyse(str(path), x, 1, rule="gradient_x_activation", selector="tukey")
    b = ssa.analyse(model, x, 1, rule="gradient_x_activation", selector="tukey")
    assert relabel(a) == relabel(b) and len(relabel(b)[0]) >= 4


def test_asymmetric_padding_conv_keeps_the_channel_axis(tmp_path):
    """onnx2torch wraps a conv with asymmetric pads (Keras 'same', stride 2) as Sequential(pad, conv)."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    inits = [numpy_helper.from_array(rng.standard_normal((4, 3, 3, 3)).astype(np.float32), "k"),
             numpy_helper.from_array(rng.standard_normal((64, 5)).astype(np.float32), "d"),
             numpy_helper.from_array(np.array([-1, 64], np.int64), "shape")]
    nodes = [helper.make_node("Transpose", ["x"], ["t"], perm=[0, 3, 1, 2], name="to_nchw"),
             helper.make_node("Conv", ["t", "k"], ["c"], strides=[2, 2], pads=[0, 0, 1, 1], name="conv"),
             helper.make_node("Transpose", ["c"], ["n"], perm=[0, 2, 3, 1], name="to_nhwc"),
             helper.make_node("Relu", ["n"], ["r"], name="relu"),
             helper.make_node("Reshape", ["r", "shape"], ["f"], name="flatten"),
             helper.make_node("MatMul", ["f", "d"], ["y"], name="dense")]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 8, 8, 3])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 5])], initializer=inits)
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    proto.ir_version = 8
    onnx.save(proto, str(tmp_path / "same.onnx"))
    net = ssa.load_model(str(tmp_path / "same.onnx"))
    net.prepare(om.images((8, 8, 3), 4))
    assert type(dict(net.graph_module.named_modules())["conv"]).__name__ == "Sequential"
    assert net.parity.ok and [(t.name, t.channel_axis, t.n_neurons) for t in net.taps] == [
        ("relu", 3, 4), ("logits", 1, 5)]


@pytest.mark.parametrize("name,opset", ALL, ids=[f"{n}-opset{o}" for n, o in ALL])
def test_shape_inference_without_the_weights_gives_the_same_model(exported, name, opset, monkeypatch):
    """read_onnx infers shapes on the model without its large initializers (typed inputs instead): with every
    initializer of more than 16 elements moved (the test models' weights are small), the model comes out byte for
    byte as strict inference on the whole model gives it."""
    import onnx
    from ssa_onnx import model as onnx_model

    monkeypatch.setattr(onnx_model, "_LIGHT_ELEMENTS", 16)
    path = exported[name, opset][3]
    proto = onnx.load(str(path))
    light = onnx_model._without_weights(proto)
    assert light is not None and len(light.graph.initializer) < len(proto.graph.initializer)
    want = onnx.shape_inference.infer_shapes(proto, strict_mode=True).SerializeToString()
    got = onnx_model._infer_shapes(proto, path, False)
    assert got.SerializeToString() == want
