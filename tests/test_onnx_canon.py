"""The ONNX backend's own pass (onnx2torch modules to native torch ops), the converters it adds through
onnx2torch's public API, and the layering: the PyTorch backend never names onnx2torch."""

from __future__ import annotations

import ast
import copy
import inspect
from pathlib import Path

import numpy as np
import onnx
import pytest
import ssa_onnx
import torch
from onnx import TensorProto, helper, numpy_helper
from ssa_onnx.canon import Onnx2TorchNative
from ssa_onnx.convert import convert_model
from ssa_onnx.model import read_onnx
from ssa_torch.canon import canonicalize

import ssa

from . import onnx_models as om

ROOT = Path(__file__).resolve().parents[1]


def _save(nodes, inits, path, *, in_shape=("N", 3, 8, 8), out_shape=("N", 5), opset=13) -> Path:
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, list(in_shape))],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, list(out_shape))],
                              initializer=[numpy_helper.from_array(np.ascontiguousarray(v), k) for k,
                                           v in inits.items()])
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    proto.ir_version = 8
    onnx.checker.check_model(proto)
    onnx.save(proto, str(path))
    return path


def _many_ops(tmp_path: Path) -> Path:
    """A classifier using most onnx2torch modules the pass rewrites (NCHW input 3x8x8)."""
    rng = np.random.default_rng(0)
    f32 = np.float32
    inits = {
        "k1": rng.standard_normal((6, 3, 3, 3)).astype(f32), "b1": rng.standard_normal(6).astype(f32),
        "k2": rng.standard_normal((4, 6, 3, 3)).astype(f32), "slope": (0.1 * rng.random((4, 1, 1))).astype(f32),
        "mean": rng.standard_normal((1, 6, 1, 1)).astype(f32), "std": (1 + rng.random((1, 6, 1, 1))).astype(f32),
        "w": rng.standard_normal((4 * 4 * 4 + 6, 5)).astype(f32), "bias": rng.standard_normal(5).astype(f32),
        "zero": np.array([0], np.int64), "minus1": np.array([-1], np.int64), "axes0": np.array([0], np.int64),
    }
    nodes = [
        helper.make_node("Transpose", ["x"], ["t0"], perm=[0, 2, 3, 1], name="to_nhwc"),
        helper.make_node("Transpose", ["t0"], ["t1"], perm=[0, 3, 1, 2], name="to_nchw"),
        helper.make_node("Cast", ["t1"], ["c0"], to=TensorProto.FLOAT, name="cast"),
        helper.make_node("Conv", ["c0", "k1", "b1"], ["c1"], pads=[1, 1, 1, 1], name="conv1"),
        helper.make_node("Sub", ["c1", "mean"], ["s1"], name="bn/sub"),
        helper.make_node("Div", ["s1", "std"], ["d1"], name="bn/div"),
        helper.make_node("Clip", ["d1", "", ""], ["r1"], name="relu6_like"),
        helper.make_node("HardSigmoid", ["r1"], ["h1"], alpha=1.0 / 6.0, beta=0.5, name="hsig"),
        helper.make_node("Mul", ["r1", "h1"], ["a1"], name="hswish"),
        helper.make_node("Identity", ["a1"], ["a1i"], name="ident"),
        helper.make_node("Conv", ["a1i", "k2"], ["c2"], strides=[2, 2], pads=[0, 0, 1, 1], name="conv2"),
        helper.make_node("PRelu", ["c2", "slope"], ["p2"], name="prelu"),
        helper.make_node("Tanh", ["p2"], ["th"], name="tanh"),
        helper.make_node("Shape", ["th"], ["shp"], name="shape"),
        helper.make_node("Gather", ["shp", "zero"], ["n"], axis=0, name="gather"),
        helper.make_node("Concat", ["n", "minus1"], ["target"], axis=0, name="concat_shape"),
        helper.make_node("Reshape", ["th", "target"], ["flat"], name="flatten"),
        helper.make_node("GlobalAveragePool", ["a1"], ["gap"], name="gap"),
        helper.make_node("ReduceMean", ["gap"], ["gm"], axes=[2, 3], keepdims=0, name="squeeze_mean"),
        helper.make_node("Concat", ["flat", "gm"], ["feat"], axis=1, name="concat"),
        helper.make_node("Dropout", ["feat"], ["drop"], name="dropout"),
        helper.make_node("MatMul", ["drop", "w"], ["m"], name="dense"),
        helper.make_node("Add", ["m", "bias"], ["y"], name="dense/bias"),
    ]
    # Clip's min / max as constant inputs (opset >= 11)
    nodes[6] = helper.make_node("Clip", ["d1", "lo", "hi"], ["r1"], name="relu6_like")
    inits["lo"], inits["hi"] = np.array(0.0, f32), np.array(6.0, f32)
    return _save(nodes, inits, tmp_path / "many.onnx")


def test_onnx2torch_native_alone(tmp_path):
    path = _many_ops(tmp_path)
    gm = convert_model(read_onnx(path))
    before = copy.deepcopy(gm)
    x = torch.from_numpy(om.images((3, 8, 8), 2))
    report = canonicalize(gm, x, [Onnx2TorchNative()])
    assert report.total() >= 15
    modules = dict(gm.named_modules())
    left = {type(modules[n.target]).__name__ for n in gm.graph.nodes
            if n.op == "call_module" and type(modules[n.target]).__module__.startswith("onnx2torch.")}
    assert left == set(), left
    for b in (1, 3, 4):
        xb = torch.from_numpy(om.images((3, 8, 8), b, seed=b))
        with torch.no_grad():
            torch.testing.assert_close(gm(xb), before(xb), rtol=1e-5, atol=1e-5)
    # the ONNX node names survive the rewrite (--taps takes them)
    from ssa_torch.kinds import display_name

    names = {display_name(n) for n in gm.graph.nodes}
    assert {"hswish", "dense", "flatten", "to_nchw"} <= names


def test_many_ops_after_all_passes_match_onnxruntime(tmp_path):
    path = _many_ops(tmp_path)
    x = om.images((3, 8, 8), 6)
    net = ssa.load_model(str(path))
    net.prepare(x)
    assert net.parity_converted.ok and net.parity.ok and net.parity.relative < 1e-5
    modules = dict(net.graph_module.named_modules())
    assert not any(type(modules[n.target]).__module__.startswith("onnx2torch.")
                   for n in net.graph_module.graph.nodes if n.op == "call_module")
    assert [t.op for t in net.taps if t.kind == "activation"] == ["ReLU6", "hardswish", "PReLU", "Tanh"]


def test_hard_sigmoid_with_the_onnx_slope_stays_and_is_a_gate(tmp_path):
    """HardSigmoid(alpha=0.2) has no native torch module: it stays, classified as a hard-sigmoid gate."""
    rng = np.random.default_rng(1)
    inits = {"k": rng.standard_normal((4, 3, 3, 3)).astype(np.float32),
             "w": rng.standard_normal((4, 5)).astype(np.float32)}
    nodes = [helper.make_node("Conv", ["x", "k"], ["c"], pads=[1, 1, 1, 1], name="conv"),
             helper.make_node("Relu", ["c"], ["r"], name="relu"),
             helper.make_node("GlobalAveragePool", ["r"], ["p"], name="pool"),
             helper.make_node("HardSigmoid", ["p"], ["g"], alpha=0.2, beta=0.5, name="gate"),
             helper.make_node("Mul", ["r", "g"], ["se"], name="se"),
             helper.make_node("ReduceMean", ["se"], ["m"], axes=[2, 3], keepdims=0, name="mean"),
             helper.make_node("MatMul", ["m", "w"], ["y"], name="dense")]
    path = _save(nodes, inits, tmp_path / "hsig.onnx")
    net = ssa.load_model(str(path))
    net.prepare(om.images((3, 8, 8), 4))
    assert net.parity.ok
    assert [t.name for t in net.taps] == ["relu", "logits"]  # the gate is not a tap


@pytest.mark.parametrize("op,opset,attrs,torch_op", [
    ("Mish", 18, {}, "Mish"), ("Gelu", 20, {}, "GELU"), ("Gelu", 20, {"approximate": "tanh"}, "GELU"),
    ("Swish", 24, {}, "SiLU"), ("Swish", 24, {"alpha": 0.5}, "Swish"),
])
def test_added_activation_converters(tmp_path, op, opset, attrs, torch_op):
    rng = np.random.default_rng(2)
    inits = {"k": rng.standard_normal((6, 3, 3, 3)).astype(np.float32),
             "w": rng.standard_normal((6, 5)).astype(np.float32)}
    nodes = [helper.make_node("Conv", ["x", "k"], ["c"], pads=[1, 1, 1, 1], name="conv"),
             helper.make_node(op, ["c"], ["a"], name="act", **attrs),
             helper.make_node("GlobalMaxPool", ["a"], ["p"], name="pool"),
             helper.make_node("Flatten", ["p"], ["f"], name="flat"),
             helper.make_node("MatMul", ["f", "w"], ["y"], name="dense")]
    path = _save(nodes, inits, tmp_path / f"{op}.onnx", opset=opset)
    net = ssa.load_model(str(path))
    x = om.images((3, 8, 8), 6)
    net.prepare(x)
    assert net.parity_converted.ok and net.parity.ok
    assert [(t.name, t.op) for t in net.taps] == [("act", torch_op), ("logits", "Linear")]
    assert net.describe_steps() == {"logits -> act": "fast (linear)"}  # global max pooling is a closed-form path


def test_compat_uses_the_public_onnx2torch_api():
    from ssa_onnx import compat

    source = inspect.getsource(compat)
    assert "_CONVERTER_REGISTRY" not in source and "add_converter" in source


def _imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    out = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            out.add(("." * node.level) + (node.module or ""))
        elif isinstance(node, ast.Import):
            out.update(a.name for a in node.names)
    return out


def test_layering():
    """The PyTorch backend never names onnx2torch; the ONNX backend's modules import each other without cycles."""
    for path in (ROOT / "backends" / "ssa_torch").rglob("*.py"):
        text = path.read_text().lower()
        assert "onnx2torch" not in text and "onnxmatmul" not in text, path
    package = ROOT / "backends" / "ssa_onnx"
    graph = {p.stem: {i.lstrip(".").split(".")[0] for i in _imports(p) if i.startswith(".") and i != "."}
             for p in package.glob("*.py")}

    def reaches(a: str, b: str, seen: set[str]) -> bool:
        return any(n == b or (n not in seen and reaches(n, b, seen | {n})) for n in graph.get(a, ()))

    cycles = [m for m in graph if reaches(m, m, {m})]
    assert cycles == [], cycles
    assert ssa_onnx.OnnxNetwork.__module__ == "ssa_onnx.network"


def test_the_core_imports_no_layer_above_it():
    """ssa.core (interfaces, traversal, graph schema, arrays) reaches down only: to ssa.errors and the array
    libraries, never to the engines, io, analysis, views, session, API or CLI (docs/architecture.md); torch only
    inside a function that already holds torch tensors (`import ssa` stays torch-free)."""
    above = ("ssa.engines", "ssa.io", "ssa.analysis", "ssa.viz", "ssa.cli", "ssa.session", "ssa.api",
             "ssa.scale", "ssa.results", "ssa.testing", "ssa_torch", "ssa_onnx")
    heavy = ("torch", "onnx")
    bad = {}
    for path in (ROOT / "ssa" / "core").rglob("*.py"):
        tree = ast.parse(path.read_text())
        top = {a.name for n in tree.body if isinstance(n, ast.Import) for a in n.names}
        top |= {n.module or "" for n in tree.body if isinstance(n, ast.ImportFrom)}
        reached = sorted({m for m in _imports(path) if m.startswith(above)} | {m for m in top if m.startswith(heavy)})
        if reached:
            bad[path.name] = reached
    assert bad == {}, bad


def test_no_capability_probing_in_ssa():
    """What a network, backend, relevance source, selector or rule can do is asked through its interface
    (declared attributes) or a capability protocol (ssa/core/capabilities.py), never by getattr on the object."""
    import re

    probe = re.compile(r"getattr\(\s*(self\.)?(network|net|backend|source|model|selector|sel|rule)\b")
    found = [f"{p.relative_to(ROOT)}:{i}" for p in (ROOT / "ssa").rglob("*.py")
             for i, line in enumerate(p.read_text().splitlines(), 1) if probe.search(line)]
    assert found == [], found
