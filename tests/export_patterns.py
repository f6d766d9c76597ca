"""Real-world export patterns, built by the tests themselves (onnx.helper and torch.onnx.export).

Each :class:`Pattern` is a torch model with its taps written out by hand (for the slow reference,
:mod:`ssa.testing.reference`) and an ONNX file computing the same function the way an exporter writes it:

* ``keras_flatten``: Keras / tf2onnx: NHWC input, the flatten before the dense layers reshapes with a
  shape computed by Shape -> Gather -> Unsqueeze -> Concat, dense layers as MatMul + Add;
* ``channels_last_resnet``: Caffe-converted ResNet: a Transpose around every Conv, no-op Casts, and
  batch-norm written as per-channel Sub, Mul, Add after each conv, in NHWC, with a residual Add;
* ``mobilenetv3``: a MobileNetV3 block: BatchNormalization nodes, HardSwish, a squeeze-excitation gate
  with a hard-sigmoid (ONNX's slope 0.2, as Keras and PaddlePaddle write it), a projection conv and
  a residual into the next conv (a linear chain);
* ``densenet``: DenseNet-style concatenated outputs, a batch-norm after each concatenation, a
  transition with a conv and average pooling (torch.onnx.export);
* ``avgpool_pad``: average pooling that counts its zero padding (torch.onnx.export).
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
import torch
import torch.nn as nn
from onnx import TensorProto, helper, numpy_helper

from ssa.testing.models import RefTap

from .onnx_models import export, heavy_tail_, images

__all__ = ["Pattern", "PATTERNS", "build_pattern"]


@dataclass(frozen=True)
class Pattern:
    name: str
    model: nn.Module
    taps: tuple[RefTap, ...]  # for ssa.testing.reference (execution order, logits last)
    path: Path
    images: np.ndarray
    target: int


def _w(model: nn.Module) -> dict[str, np.ndarray]:
    return {k: v.detach().numpy().astype(np.float32) for k, v in model.state_dict().items()}


def _save(nodes, inits: dict[str, np.ndarray], path: Path, in_shape, out_shape, opset: int) -> Path:
    graph = helper.make_graph(
        nodes, path.stem,
        [helper.make_tensor_value_info("input_1", TensorProto.FLOAT, list(in_shape))],
        [helper.make_tensor_value_info("output", TensorProto.FLOAT, list(out_shape))],
        initializer=[numpy_helper.from_array(np.ascontiguousarray(v), k) for k, v in inits.items()])
    proto = helper.make_model(graph, producer_name="ssa tests", opset_imports=[helper.make_opsetid("", opset)])
    proto.ir_version = 8
    onnx.checker.check_model(proto)
    onnx.save(proto, str(path))
    return path


# --- Keras-style flatten with a computed shape, NHWC ------------------------------------------------


class KerasFlatten(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 16, 3, padding=1)
        self.relu1 = nn.ReLU()
        self.pool1 = nn.MaxPool2d(2)
        self.conv2 = nn.Conv2d(16, 24, 3, padding=1)
        self.relu2 = nn.ReLU()
        self.pool2 = nn.MaxPool2d(2)
        self.fc1 = nn.Linear(2 * 2 * 24, 32)
        self.relu3 = nn.ReLU()
        self.fc2 = nn.Linear(32, 5)

    def forward(self, x):  # (B, 8, 8, 3)
        x = self.pool1(self.relu1(self.conv1(x.permute(0, 3, 1, 2))))
        x = self.pool2(self.relu2(self.conv2(x)))
        x = x.permute(0, 2, 3, 1).reshape(x.shape[0], -1)  # Keras flattens NHWC
        return torch.softmax(self.fc2(self.relu3(self.fc1(x))), dim=-1)


def keras_flatten(root: Path) -> Pattern:
    torch.manual_seed(0)
    m = heavy_tail_(KerasFlatten(), 11)
    w = _w(m)
    inits = {"conv1/kernel": w["conv1.weight"], "conv1/bias": w["conv1.bias"],
             "conv2/kernel": w["conv2.weight"], "conv2/bias": w["conv2.bias"],
             "dense1/kernel": w["fc1.weight"].T, "dense1/bias": w["fc1.bias"],
             "dense2/kernel": w["fc2.weight"].T, "dense2/bias": w["fc2.bias"],
             "const_0": np.array([0], np.int64), "const_minus1": np.array([-1], np.int64)}
    mk = helper.make_node
    nodes = [
        mk("Transpose", ["input_1"], ["t0"], perm=[0, 3, 1, 2], name="conv1/Conv2D__6"),
        mk("Conv", ["t0", "conv1/kernel", "conv1/bias"], ["c1"], kernel_shape=[3, 3], pads=[1, 1, 1, 1],
           name="conv1/Conv2D"),
        mk("Relu", ["c1"], ["r1"], name="conv1/Relu"),
        mk("MaxPool", ["r1"], ["p1"], kernel_shape=[2, 2], strides=[2, 2], name="pool1/MaxPool"),
        mk("Conv", ["p1", "conv2/kernel", "conv2/bias"], ["c2"], kernel_shape=[3, 3], pads=[1, 1, 1, 1],
           name="conv2/Conv2D"),
        mk("Relu", ["c2"], ["r2"], name="conv2/Relu"),
        mk("MaxPool", ["r2"], ["p2"], kernel_shape=[2, 2], strides=[2, 2], name="pool2/MaxPool"),
        mk("Transpose", ["p2"], ["t1"], perm=[0, 2, 3, 1], name="pool2/MaxPool__20"),
        mk("Shape", ["t1"], ["shape"], name="flatten/Shape"),
        mk("Gather", ["shape", "const_0"], ["batch"], axis=0, name="flatten/strided_slice"),
        mk("Concat", ["batch", "const_minus1"], ["target"], axis=0, name="flatten/Reshape/shape"),
        mk("Reshape", ["t1", "target"], ["f"], name="flatten/Reshape"),
        mk("MatMul", ["f", "dense1/kernel"], ["m1"], name="dense1/MatMul"),
        mk("Add", ["m1", "dense1/bias"], ["a1"], name="dense1/BiasAdd"),
        mk("Relu", ["a1"], ["r3"], name="dense1/Relu"),
        mk("MatMul", ["r3", "dense2/kernel"], ["m2"], name="dense2/MatMul"),
        mk("Add", ["m2", "dense2/bias"], ["a2"], name="dense2/BiasAdd"),
        mk("Softmax", ["a2"], ["output"], axis=-1, name="dense2/Softmax"),
    ]
    path = _save(nodes, inits, root / "keras_flatten.onnx", ["unk__1", 8, 8, 3], ["unk__2", 5], 13)
    taps = (RefTap("relu1", "relu1"), RefTap("relu2", "relu2", parents=("relu1",)),
            RefTap("relu3", "relu3", parents=("relu2",)), RefTap("logits", "fc2", parents=("relu3",)))
    return Pattern("keras_flatten", m, taps, path, images((8, 8, 3), 24, seed=1), 1)


# --- channels-last ResNet block: Transposes, Casts, batch-norm as Sub / Mul / Add ---------------------


class ChannelsLastResNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv0 = nn.Conv2d(3, 16, 3, padding=1)
        self.conv1 = nn.Conv2d(16, 16, 3, padding=1)
        self.conv2 = nn.Conv2d(16, 16, 3, padding=1)
        g = torch.Generator().manual_seed(21)
        for i in range(3):
            self.register_buffer(f"mean{i}", 0.3 * torch.randn(16, generator=g))
            self.register_buffer(f"scale{i}", 0.5 + torch.rand(16, generator=g))
            self.register_buffer(f"shift{i}", 0.1 * torch.randn(16, generator=g))
        self.relu0 = nn.ReLU()
        self.relu1 = nn.ReLU()
        self.relu2 = nn.ReLU()
        self.fc = nn.Linear(16, 5)

    def _bn(self, y, i):  # NHWC, per channel on the last axis
        return (y - getattr(self, f"mean{i}")) * getattr(self, f"scale{i}") + getattr(self, f"shift{i}")

    def _conv(self, conv, x):  # NHWC in, NHWC out
        return conv(x.permute(0, 3, 1, 2)).permute(0, 2, 3, 1)

    def forward(self, x):  # (B, 8, 8, 3)
        r0 = self.relu0(self._bn(self._conv(self.conv0, x), 0))
        r1 = self.relu1(self._bn(self._conv(self.conv1, r0), 1))
        r2 = self.relu2(self._bn(self._conv(self.conv2, r1), 2) + r0)
        return self.fc(r2.mean((1, 2)))


def channels_last_resnet(root: Path) -> Pattern:
    torch.manual_seed(0)
    m = heavy_tail_(ChannelsLastResNet(), 12)
    w = _w(m)
    inits = {"fc/kernel": w["fc.weight"].T, "fc/bias": w["fc.bias"]}
    mk = helper.make_node
    nodes = []
    x = "input_1"

    def block(i: int, src: str, skip: str | None) -> str:
        inits[f"res{i}/kernel"], inits[f"res{i}/bias"] = w[f"conv{i}.weight"], w[f"conv{i}.bias"]
        inits[f"bn{i}/mean"], inits[f"bn{i}/scale"], inits[f"bn{i}/shift"] = (
            w[f"mean{i}"], w[f"scale{i}"], w[f"shift{i}"])
        nodes.extend([
            mk("Cast", [src], [f"c{i}_in"], to=TensorProto.FLOAT, name=f"res{i}/cast_in"),
            mk("Transpose", [f"c{i}_in"], [f"t{i}a"], perm=[0, 3, 1, 2], name=f"res{i}/to_nchw"),
            mk("Conv", [f"t{i}a", f"res{i}/kernel", f"res{i}/bias"], [f"conv{i}"], kernel_shape=[3, 3],
               pads=[1, 1, 1, 1], name=f"res{i}/conv"),
            mk("Transpose", [f"conv{i}"], [f"t{i}b"], perm=[0, 2, 3, 1], name=f"res{i}/to_nhwc"),
            mk("Cast", [f"t{i}b"], [f"c{i}_out"], to=TensorProto.FLOAT, name=f"res{i}/cast_out"),
            mk("Sub", [f"c{i}_out", f"bn{i}/mean"], [f"s{i}"], name=f"bn{i}/sub"),
            mk("Mul", [f"s{i}", f"bn{i}/scale"], [f"m{i}"], name=f"bn{i}/mul"),
            mk("Add", [f"m{i}", f"bn{i}/shift"], [f"b{i}"], name=f"bn{i}/add"),
        ])
        out = f"b{i}"
        if skip is not None:
            nodes.append(mk("Add", [out, skip], [f"sum{i}"], name=f"res{i}/add"))
            out = f"sum{i}"
        nodes.append(mk("Relu", [out], [f"r{i}"], name=f"res{i}/relu"))
        return f"r{i}"

    r0 = block(0, x, None)
    r1 = block(1, r0, None)
    r2 = block(2, r1, r0)
    nodes.extend([
        mk("ReduceMean", [r2], ["gap"], axes=[1, 2], keepdims=0, name="pool"),
        mk("MatMul", ["gap", "fc/kernel"], ["mm"], name="fc/MatMul"),
        mk("Add", ["mm", "fc/bias"], ["output"], name="fc/BiasAdd"),
    ])
    path = _save(nodes, inits, root / "channels_last_resnet.onnx", ["N", 8, 8, 3], ["N", 5], 13)
    taps = (RefTap("relu0", "relu0", channel_axis=3), RefTap("relu1", "relu1", channel_axis=3, parents=("relu0",)),
            RefTap("relu2", "relu2", channel_axis=3, parents=("relu1", "relu0")),
            RefTap("logits", "fc", parents=("relu2",)))
    return Pattern("channels_last_resnet", m, taps, path, images((8, 8, 3), 24, seed=2), 3)


# --- MobileNetV3 block: BN, HardSwish, hard-sigmoid SE gate, projection + residual into the next conv ----


class TinyMBV3(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, stride=2, padding=1, bias=False)
        self.stem_bn = nn.BatchNorm2d(8)
        self.stem_act = nn.Hardswish()
        self.expand = nn.Conv2d(8, 16, 1, bias=False)
        self.expand_bn = nn.BatchNorm2d(16)
        self.expand_act = nn.Hardswish()
        self.dw = nn.Conv2d(16, 16, 3, padding=1, groups=16, bias=False)
        self.dw_bn = nn.BatchNorm2d(16)
        self.dw_act = nn.Hardswish()
        self.se_fc1 = nn.Conv2d(16, 8, 1)
        self.se_relu = nn.ReLU()
        self.se_fc2 = nn.Conv2d(8, 16, 1)
        self.project = nn.Conv2d(16, 8, 1, bias=False)
        self.project_bn = nn.BatchNorm2d(8)
        self.head = nn.Conv2d(8, 24, 1, bias=False)
        self.head_bn = nn.BatchNorm2d(24)
        self.head_act = nn.Hardswish()
        self.fc1 = nn.Linear(24, 16)
        self.fc1_act = nn.Hardswish()
        self.fc2 = nn.Linear(16, 5)

    def forward(self, x):
        h0 = self.stem_act(self.stem_bn(self.stem(x)))
        h1 = self.expand_act(self.expand_bn(self.expand(h0)))
        h2 = self.dw_act(self.dw_bn(self.dw(h1)))
        s = self.se_relu(self.se_fc1(h2.mean((2, 3), keepdim=True)))
        gate = torch.clamp(0.2 * self.se_fc2(s) + 0.5, 0.0, 1.0)  # ONNX HardSigmoid(alpha=0.2, beta=0.5)
        y = self.project_bn(self.project(h2 * gate)) + h0  # no activation: a linear chain into the head conv
        h3 = self.head_act(self.head_bn(self.head(y)))
        return self.fc2(self.fc1_act(self.fc1(h3.mean((2, 3)))))


def mobilenetv3(root: Path) -> Pattern:
    torch.manual_seed(0)
    m = heavy_tail_(TinyMBV3(), 13)
    w = _w(m)
    mk = helper.make_node
    inits: dict[str, np.ndarray] = {}
    nodes = []

    def conv(name: str, src: str, out: str, *, bias: bool = False, **attrs) -> None:
        inits[f"{name}/W"] = w[f"{name}.weight"]
        ins = [src, f"{name}/W"]
        if bias:
            inits[f"{name}/B"] = w[f"{name}.bias"]
            ins.append(f"{name}/B")
        nodes.append(mk("Conv", ins, [out], name=f"{name}/Conv", **attrs))

    def bn(name: str, src: str, out: str) -> None:
        for part, key in (("scale", "weight"), ("B", "bias"), ("mean", "running_mean"), ("var", "running_var")):
            inits[f"{name}/{part}"] = w[f"{name}.{key}"]
        nodes.append(mk("BatchNormalization", [src] + [f"{name}/{p}" for p in ("scale", "B", "mean", "var")], [out],
                        epsilon=1e-5, name=f"{name}/BatchNorm"))

    conv("stem", "input_1", "c0", kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1])
    bn("stem_bn", "c0", "n0")
    nodes.append(mk("HardSwish", ["n0"], ["h0"], name="stem/HardSwish"))
    conv("expand", "h0", "c1", kernel_shape=[1, 1])
    bn("expand_bn", "c1", "n1")
    nodes.append(mk("HardSwish", ["n1"], ["h1"], name="expand/HardSwish"))
    conv("dw", "h1", "c2", kernel_shape=[3, 3], pads=[1, 1, 1, 1], group=16)
    bn("dw_bn", "c2", "n2")
    nodes.append(mk("HardSwish", ["n2"], ["h2"], name="dw/HardSwish"))
    nodes.append(mk("GlobalAveragePool", ["h2"], ["se_pool"], name="se/pool"))
    conv("se_fc1", "se_pool", "se_c1", bias=True, kernel_shape=[1, 1])
    nodes.append(mk("Relu", ["se_c1"], ["se_r"], name="se/Relu"))
    conv("se_fc2", "se_r", "se_c2", bias=True, kernel_shape=[1, 1])
    nodes.append(mk("HardSigmoid", ["se_c2"], ["se_gate"], alpha=0.2, beta=0.5, name="se/HardSigmoid"))
    nodes.append(mk("Mul", ["h2", "se_gate"], ["se_out"], name="se/Mul"))
    conv("project", "se_out", "c3", kernel_shape=[1, 1])
    bn("project_bn", "c3", "n3")
    nodes.append(mk("Add", ["n3", "h0"], ["y"], name="block/Add"))
    conv("head", "y", "c4", kernel_shape=[1, 1])
    bn("head_bn", "c4", "n4")
    nodes.append(mk("HardSwish", ["n4"], ["h3"], name="head/HardSwish"))
    nodes.append(mk("GlobalAveragePool", ["h3"], ["gap"], name="pool"))
    nodes.append(mk("Flatten", ["gap"], ["flat"], axis=1, name="flatten"))
    inits["fc1/W"], inits["fc1/B"], inits["fc2/W"], inits["fc2/B"] = (w["fc1.weight"], w["fc1.bias"], w["fc2.weight"],
                                                                      w["fc2.bias"])
    nodes.append(mk("Gemm", ["flat", "fc1/W", "fc1/B"], ["d1"], transB=1, name="fc1/Gemm"))
    nodes.append(mk("HardSwish", ["d1"], ["h4"], name="fc1/HardSwish"))
    nodes.append(mk("Gemm", ["h4", "fc2/W", "fc2/B"], ["output"], transB=1, name="fc2/Gemm"))
    path = _save(nodes, inits, root / "mobilenetv3.onnx", ["N", 3, 8, 8], ["N", 5], 14)
    taps = (RefTap("stem_act", "stem_act"), RefTap("expand_act", "expand_act", parents=("stem_act",)),
            RefTap("dw_act", "dw_act", parents=("expand_act",)), RefTap("se_relu", "se_relu", parents=("dw_act",)),
            RefTap("head_act", "head_act", parents=("se_relu", "dw_act", "stem_act")),
            RefTap("fc1_act", "fc1_act", parents=("head_act",)), RefTap("logits", "fc2", parents=("fc1_act",)))
    return Pattern("mobilenetv3", m, taps, path, images((3, 8, 8), 24, seed=3), 2)


# --- DenseNet-style concatenated outputs (torch.onnx.export) -------------------------------------------


class _DenseLayer(nn.Module):
    def __init__(self, cin: int, growth: int) -> None:
        super().__init__()
        self.norm1 = nn.BatchNorm2d(cin)
        self.relu1 = nn.ReLU()
        self.conv1 = nn.Conv2d(cin, 16, 1, bias=False)
        self.norm2 = nn.BatchNorm2d(16)
        self.relu2 = nn.ReLU()
        self.conv2 = nn.Conv2d(16, growth, 3, padding=1, bias=False)

    def forward(self, features: list[torch.Tensor]) -> torch.Tensor:
        x = torch.cat(features, 1)
        return self.conv2(self.relu2(self.norm2(self.conv1(self.relu1(self.norm1(x))))))


class TinyDenseNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv0 = nn.Conv2d(3, 16, 3, padding=1, bias=False)
        self.norm0 = nn.BatchNorm2d(16)
        self.relu0 = nn.ReLU()
        self.pool0 = nn.MaxPool2d(2)
        self.layer1 = _DenseLayer(16, 8)
        self.layer2 = _DenseLayer(24, 8)
        self.trans_norm = nn.BatchNorm2d(32)
        self.trans_relu = nn.ReLU()
        self.trans_conv = nn.Conv2d(32, 16, 1, bias=False)
        self.trans_pool = nn.AvgPool2d(2)
        self.norm5 = nn.BatchNorm2d(16)
        self.relu5 = nn.ReLU()
        self.fc = nn.Linear(16, 5)

    def forward(self, x):
        x0 = self.pool0(self.relu0(self.norm0(self.conv0(x))))
        f1 = self.layer1([x0])
        f2 = self.layer2([x0, f1])
        x1 = self.trans_pool(self.trans_conv(self.trans_relu(self.trans_norm(torch.cat([x0, f1, f2], 1)))))
        y = self.relu5(self.norm5(x1))
        return self.fc(torch.flatten(nn.functional.adaptive_avg_pool2d(y, 1), 1))


def densenet(root: Path) -> Pattern:
    torch.manual_seed(0)
    m = heavy_tail_(TinyDenseNet(), 14)
    x = images((3, 8, 8), 24, seed=4)
    path = export(m, x, root / "densenet.onnx", opset=17, output_names=("output",))
    taps = (RefTap("relu0", "relu0"),
            RefTap("layer1.relu1", "layer1.relu1", parents=("relu0",)),
            RefTap("layer1.relu2", "layer1.relu2", parents=("layer1.relu1",)),
            RefTap("layer2.relu1", "layer2.relu1", parents=("layer1.relu2", "relu0")),
            RefTap("layer2.relu2", "layer2.relu2", parents=("layer2.relu1",)),
            RefTap("trans_relu", "trans_relu", parents=("layer2.relu2", "layer1.relu2", "relu0")),
            RefTap("relu5", "relu5", parents=("trans_relu",)),
            RefTap("logits", "fc", parents=("relu5",)))
    return Pattern("densenet", m, taps, path, x, 4)


# --- average pooling that counts its padding (torch.onnx.export) --------------------------------------


class PaddedAvgPool(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 16, 3, padding=1)
        self.relu1 = nn.ReLU()
        self.pool1 = nn.AvgPool2d(3, stride=2, padding=1, count_include_pad=True)
        self.conv2 = nn.Conv2d(16, 24, 3, padding=1)
        self.relu2 = nn.ReLU()
        self.pool2 = nn.AvgPool2d(3, stride=1, padding=1, count_include_pad=True)
        self.fc = nn.Linear(24 * 4 * 4, 5)

    def forward(self, x):
        x = self.pool1(self.relu1(self.conv1(x)))
        x = self.pool2(self.relu2(self.conv2(x)))
        return self.fc(torch.flatten(x, 1))


def avgpool_pad(root: Path) -> Pattern:
    torch.manual_seed(0)
    m = heavy_tail_(PaddedAvgPool(), 15)
    x = images((3, 8, 8), 24, seed=5)
    path = export(m, x, root / "avgpool_pad.onnx", opset=17, output_names=("output",))
    taps = (RefTap("relu1", "relu1"), RefTap("relu2", "relu2", parents=("relu1",)),
            RefTap("logits", "fc", parents=("relu2",)))
    return Pattern("avgpool_pad", m, taps, path, x, 3)


PATTERNS: dict[str, Callable[[Path], Pattern]] = {
    "keras_flatten": keras_flatten, "channels_last_resnet": channels_last_resnet, "mobilenetv3": mobilenetv3,
    "densenet": densenet, "avgpool_pad": avgpool_pad,
}


def build_pattern(name: str, root: Path) -> Pattern:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return PATTERNS[name](root)
