"""Tiny seeded models for the ONNX tests: torch modules to export, and a Keras-style graph built by hand.

Weights are heavy-tailed (a log-normal scale per (output, input) connection) so that Tukey's
fence finds outliers in every step and the dependency graphs are not trivial.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn

from ssa.testing.models import ChannelsLastCNN, _heavy_tail_

__all__ = ["vgg_style", "resnet_style", "mobilenet_style", "channels_last", "KerasStyleTorch", "keras_style_torch",
           "keras_style_onnx", "shared_bias", "export", "images", "heavy_tail_"]


def heavy_tail_(model: nn.Module, seed: int, sigma: float = 1.0, bias: float = 0.1) -> nn.Module:
    """Re-draw conv/dense weights and batch-norm statistics from a seeded generator; eval mode, no grads."""
    _heavy_tail_(model, seed, sigma, bias, bn_mean_std=0.3)
    for p in model.parameters():
        p.requires_grad_(False)
    return model.eval()


def images(shape: tuple[int, ...], n: int = 24, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return rng.uniform(0.0, 1.0, size=(n, *shape)).astype(np.float32)


def export(model: nn.Module, example: np.ndarray, path: Path, *, opset: int = 17, dynamic: bool = True,
           output_names: tuple[str, ...] = ("logits",)) -> Path:
    """torch.onnx.export (the TorchScript exporter), batch axis dynamic unless ``dynamic`` is False."""
    x = torch.from_numpy(example[:2])
    axes = {"image": {0: "batch"}, **{o: {0: "batch"} for o in output_names}} if dynamic else None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(model, (x,), str(path), dynamo=False, opset_version=opset, input_names=["image"],
                          output_names=list(output_names), dynamic_axes=axes)
    return path


# --- VGG-style: conv-conv-pool blocks, dense head with dropout, final Softmax --------------------


def parity_cache_on(tmp_path: Path, monkeypatch) -> Path:
    """The ONNX parity cache on, in ``tmp_path``'s own folder (``SSA_PARITY_CACHE``, ``SSA_CACHE``); its file's path."""
    monkeypatch.setenv("SSA_PARITY_CACHE", "1")
    monkeypatch.setenv("SSA_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache" / "parity.json"


def vgg_style() -> nn.Module:
    torch.manual_seed(0)
    m = nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 8, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(8, 16, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Flatten(), nn.Linear(16 * 2 * 2, 24), nn.ReLU(), nn.Dropout(0.5), nn.Linear(24, 6), nn.Softmax(dim=1),
    )
    return heavy_tail_(m, 1)


# --- ResNet-style: BatchNorm after convs (folded by the exporter) and after an Add (kept) --------


class _Block(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.relu1 = nn.ReLU()
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.skip = (nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))
                     if stride != 1 or cin != cout else nn.Identity())
        self.bn_out = nn.BatchNorm2d(cout)  # after the Add: stays a BatchNormalization node in ONNX
        self.relu2 = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.bn2(self.conv2(self.relu1(self.bn1(self.conv1(x)))))
        return self.relu2(self.bn_out(y + self.skip(x)))


class TinyResNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8), nn.ReLU())
        self.block1 = _Block(8, 8, 1)
        self.block2 = _Block(8, 16, 2)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(16, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.block2(self.block1(self.stem(x)))
        return self.fc(torch.flatten(self.pool(x), 1))


def resnet_style() -> nn.Module:
    torch.manual_seed(0)
    return heavy_tail_(TinyResNet(), 2)


# --- MobileNetV3-style: Hardswish, depthwise conv, hard-sigmoid squeeze-excitation gate ----------


class _SE(nn.Module):
    def __init__(self, c: int, r: int) -> None:
        super().__init__()
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc1 = nn.Conv2d(c, r, 1)
        self.relu = nn.ReLU()
        self.fc2 = nn.Conv2d(r, c, 1)
        self.gate = nn.Hardsigmoid()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.gate(self.fc2(self.relu(self.fc1(self.pool(x)))))


class TinyMobileNetV3(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 8, 3, 2, 1, bias=False), nn.BatchNorm2d(8), nn.Hardswish())
        self.expand = nn.Sequential(nn.Conv2d(8, 16, 1, bias=False), nn.BatchNorm2d(16), nn.Hardswish())
        self.dw = nn.Sequential(nn.Conv2d(16, 16, 3, 1, 1, groups=16, bias=False), nn.BatchNorm2d(16), nn.Hardswish())
        self.se = _SE(16, 8)
        self.project = nn.Sequential(nn.Conv2d(16, 8, 1, bias=False), nn.BatchNorm2d(8))
        self.head = nn.Sequential(nn.Conv2d(8, 24, 1), nn.Hardswish())
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc1 = nn.Linear(24, 16)
        self.act = nn.Hardswish()
        self.fc2 = nn.Linear(16, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        x = x + self.project(self.se(self.dw(self.expand(x))))
        x = self.pool(self.head(x)).flatten(1)
        return self.fc2(self.act(self.fc1(x)))


def mobilenet_style() -> nn.Module:
    torch.manual_seed(0)
    return heavy_tail_(TinyMobileNetV3(), 3)


# --- channels-last: NHWC input, Transposes around every conv, NHWC ReLU taps --------------------


def channels_last() -> nn.Module:
    torch.manual_seed(0)
    return heavy_tail_(ChannelsLastCNN(), 4)  # the same NHWC model as the PyTorch tests


# --- Keras-style graph, as tf2onnx writes it, built with onnx.helper ------------------------------


class KerasStyleTorch(nn.Module):
    """The torch model the Keras-style ONNX graph computes (NHWC input, NHWC flatten, dense BN as Mul+Add)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 8, 3, padding=1)
        self.relu1 = nn.ReLU()
        self.pool1 = nn.MaxPool2d(2)
        self.conv2 = nn.Conv2d(8, 12, 3, padding=1)
        self.relu2 = nn.ReLU()
        self.pool2 = nn.MaxPool2d(2)
        self.fc1 = nn.Linear(2 * 2 * 12, 16)
        self.relu3 = nn.ReLU()
        self.register_buffer("bn_scale", torch.empty(16))
        self.register_buffer("bn_shift", torch.empty(16))
        self.fc2 = nn.Linear(16, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, 8, 8, 3)
        x = x.permute(0, 3, 1, 2)
        x = self.pool1(self.relu1(self.conv1(x)))
        x = self.pool2(self.relu2(self.conv2(x)))
        x = x.permute(0, 2, 3, 1).reshape(-1, 2 * 2 * 12)
        x = self.relu3(self.fc1(x)) * self.bn_scale + self.bn_shift  # a constant multiplication: no gate
        return torch.softmax(self.fc2(x), dim=-1)


def keras_style_torch() -> KerasStyleTorch:
    torch.manual_seed(0)
    m = heavy_tail_(KerasStyleTorch(), 5)
    g = torch.Generator().manual_seed(55)
    with torch.no_grad():
        m.bn_scale.copy_(0.5 + torch.rand(16, generator=g))
        m.bn_shift.copy_(0.1 * torch.randn(16, generator=g))
    return m


def keras_style_onnx(model: KerasStyleTorch, path: Path, *, opset: int = 13) -> Path:
    """Write ``model`` as the graph tf2onnx makes of a Keras model: NHWC input, Transpose, Conv, Relu,
    MaxPool, Transpose, Reshape, MatMul + Add dense layers, a dense batch-norm as Mul + Add, Softmax."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    def init(name: str, value: np.ndarray) -> onnx.TensorProto:
        return numpy_helper.from_array(np.ascontiguousarray(value), name)

    w = {k: v.detach().numpy().astype(np.float32) for k, v in model.state_dict().items()}
    inits = [
        init("conv1/kernel", w["conv1.weight"]), init("conv1/bias", w["conv1.bias"]),
        init("conv2/kernel", w["conv2.weight"]), init("conv2/bias", w["conv2.bias"]),
        init("flatten/shape", np.array([-1, 48], dtype=np.int64)),
        init("dense1/kernel", w["fc1.weight"].T), init("dense1/bias", w["fc1.bias"]),
        init("bn/scale", w["bn_scale"]), init("bn/shift", w["bn_shift"]),
        init("dense2/kernel", w["fc2.weight"].T), init("dense2/bias", w["fc2.bias"]),
    ]
    nodes = [
        helper.make_node("Transpose", ["input_1"], ["t0"], perm=[0, 3, 1, 2], name="conv1/Conv2D__6"),
        helper.make_node("Conv", ["t0", "conv1/kernel", "conv1/bias"], ["c1"], kernel_shape=[3, 3],
                         pads=[1, 1, 1, 1], name="conv1/Conv2D"),
        helper.make_node("Relu", ["c1"], ["r1"], name="conv1/Relu"),
        helper.make_node("MaxPool", ["r1"], ["p1"], kernel_shape=[2, 2], strides=[2, 2], name="pool1/MaxPool"),
        helper.make_node("Conv", ["p1", "conv2/kernel", "conv2/bias"], ["c2"], kernel_shape=[3, 3],
                         pads=[1, 1, 1, 1], name="conv2/Conv2D"),
        helper.make_node("Relu", ["c2"], ["r2"], name="conv2/Relu"),
        helper.make_node("MaxPool", ["r2"], ["p2"], kernel_shape=[2, 2], strides=[2, 2], name="pool2/MaxPool"),
        helper.make_node("Transpose", ["p2"], ["t1"], perm=[0, 2, 3, 1], name="pool2/MaxPool__20"),
        helper.make_node("Reshape", ["t1", "flatten/shape"], ["f"], name="flatten/Reshape"),
        helper.make_node("MatMul", ["f", "dense1/kernel"], ["m1"], name="dense1/MatMul"),
        helper.make_node("Add", ["m1", "dense1/bias"], ["a1"], name="dense1/BiasAdd"),
        helper.make_node("Relu", ["a1"], ["r3"], name="dense1/Relu"),
        helper.make_node("Mul", ["r3", "bn/scale"], ["bn1"], name="bn/mul"),
        helper.make_node("Add", ["bn1", "bn/shift"], ["bn2"], name="bn/add"),
        helper.make_node("MatMul", ["bn2", "dense2/kernel"], ["m2"], name="dense2/MatMul"),
        helper.make_node("Add", ["m2", "dense2/bias"], ["a2"], name="dense2/BiasAdd"),
        helper.make_node("Softmax", ["a2"], ["predictions"], axis=-1, name="dense2/Softmax"),
    ]
    graph = helper.make_graph(
        nodes, "keras_style",
        [helper.make_tensor_value_info("input_1", TensorProto.FLOAT, ["unk__1", 8, 8, 3])],
        [helper.make_tensor_value_info("predictions", TensorProto.FLOAT, ["unk__2", 5])],
        initializer=inits,
    )
    proto = helper.make_model(graph, producer_name="tf2onnx-style test", opset_imports=[helper.make_opsetid("", opset)])
    proto.ir_version = 8
    onnx.checker.check_model(proto)
    onnx.save(proto, str(path))
    return path


# --- recent opsets: identical initializers written once (Identity nodes), mean() as ReduceMean-18 ---


class SharedBias(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 8, 3, padding=1)
        self.relu1 = nn.ReLU()
        self.conv2 = nn.Conv2d(8, 8, 3, padding=1)
        self.relu2 = nn.ReLU()
        self.fc = nn.Linear(8, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.relu2(self.conv2(self.relu1(self.conv1(x)))).mean((2, 3)))


def shared_bias() -> nn.Module:
    """Two convs with identical (zero) biases: the exporter stores one and reads the other through Identity."""
    torch.manual_seed(0)
    m = heavy_tail_(SharedBias(), 7)
    with torch.no_grad():
        m.conv1.bias.zero_()
        m.conv2.bias.zero_()
    return m
