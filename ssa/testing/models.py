"""Tiny seeded models for the tests, built in code (no downloads).

Each model comes as a :class:`ModelCase`: the module, seeded images, and the
taps written out by hand (module path, which call of the module, channel axis,
parent taps under cut semantics, method doc section 4). The hand-written taps
are what :mod:`ssa.testing.reference` uses; tap discovery in ``ssa_torch`` must find
the same ones on its own.

Weights are heavy-tailed (a log-normal scale per (output, input) connection), so
that a few lower neurons dominate every relevance row and Tukey's fence finds
outliers in every step: the graphs are not trivial.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn as nn
from torchvision.models.resnet import BasicBlock

__all__ = ["RefTap", "ModelCase", "plain_cnn", "residual_cnn", "se_cnn", "channels_last_cnn", "ALL_CASES"]


@dataclass(frozen=True)
class RefTap:
    """A tap written out by hand.

    name : the name ssa gives the tap (module path, ``path@k`` for the k-th call of a reused module,
        ``logits``, ``input``).
    module : module path whose output is the tap; None for the model input (or for an ``op`` tap).
    call : which call of ``module`` (or of ``op``) in one forward pass (0 = first).
    channel_axis : axis of the neurons in the batched tensor.
    parents : the parent taps (cut semantics).
    op : ``"add"`` for a tap that is the output of a tensor addition (a residual stream, method doc
        section 4b): the ``call``-th addition of two tensors in one forward pass; ``"relu"`` for the
        ``call``-th ReLU called as a function (``F.relu``; ``nn.ReLU`` modules call it too, and count).
    cls : the class token alone: a neuron's value is its channel at position 0 of axis 1 (a token tap
        (N, T, C)), not its mean over the positions (``tokens="cls"``).
    """

    name: str
    module: str | None
    call: int = 0
    channel_axis: int = 1
    parents: tuple[str, ...] = ()
    op: str | None = None
    cls: bool = False


@dataclass(frozen=True)
class ModelCase:
    name: str
    build: Callable[[], nn.Module]
    images: Callable[[int], np.ndarray]
    taps: tuple[RefTap, ...]  # execution order, logits last
    target: int
    branching: int = 3

    def taps_with_input(self, input_axis: int = 1) -> tuple[RefTap, ...]:
        """The same taps plus the model input as the lowest tap (``include_input=True``).

        In these models only the first tap reads the input, so the input is its only new parent.
        """
        out = [RefTap("input", None, 0, input_axis, ())]
        for t in self.taps:
            parents = t.parents if t.parents else ("input",)
            out.append(RefTap(t.name, t.module, t.call, t.channel_axis, parents))
        return tuple(out)


def _heavy_tail_(model: nn.Module, seed: int, sigma: float = 1.0, bias: float = 0.1,
                 bn_mean_std: float = 0.5) -> nn.Module:
    """Re-draw conv/dense weights: normal times a log-normal scale per (out, in) connection."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, (nn.Conv2d, nn.Linear)):
                w = m.weight
                fan_in = w[0].numel()
                scale = torch.exp(sigma * torch.randn(w.shape[0], w.shape[1], generator=g))
                scale = scale.reshape(scale.shape + (1,) * (w.dim() - 2))
                w.copy_(torch.randn(w.shape, generator=g) * scale / fan_in ** 0.5)
                if m.bias is not None:
                    m.bias.copy_(bias + 0.1 * torch.randn(m.bias.shape, generator=g))
            elif isinstance(m, nn.BatchNorm2d):
                c = m.num_features
                assert m.running_mean is not None and m.running_var is not None  # track_running_stats=True
                m.running_mean.copy_(bn_mean_std * torch.randn(c, generator=g))
                m.running_var.copy_(0.5 + 1.5 * torch.rand(c, generator=g))
                m.weight.copy_(0.5 + torch.rand(c, generator=g))
                m.bias.copy_(0.1 + 0.2 * torch.randn(c, generator=g))
    return model.eval()


def _images(shape: tuple[int, ...], seed: int) -> Callable[[int], np.ndarray]:
    def make(n: int) -> np.ndarray:
        rng = np.random.default_rng(seed)
        return rng.uniform(0.0, 1.0, size=(n, *shape)).astype(np.float32)

    return make


# --- plain CNN: conv / maxpool / conv / avgpool / dense / dense, ending in a Softmax ----------


def _plain() -> nn.Module:
    torch.manual_seed(0)
    m = nn.Sequential(OrderedDict(
        conv1=nn.Conv2d(1, 8, 3, padding=1), relu1=nn.ReLU(), pool1=nn.MaxPool2d(2),  # 12 -> 6
        conv2=nn.Conv2d(8, 16, 3, padding=1), relu2=nn.ReLU(), pool2=nn.AvgPool2d(2),  # 6 -> 3
        flatten=nn.Flatten(), fc1=nn.Linear(16 * 9, 24), relu3=nn.ReLU(), drop=nn.Dropout(0.5),
        fc2=nn.Linear(24, 6), softmax=nn.Softmax(dim=1),
    ))
    return _heavy_tail_(m, 1)


plain_cnn = ModelCase(
    "plain", _plain, _images((1, 12, 12), 10),
    (
        RefTap("relu1", "relu1"),
        RefTap("relu2", "relu2", parents=("relu1",)),
        RefTap("relu3", "relu3", parents=("relu2",)),
        RefTap("logits", "fc2", parents=("relu3",)),  # the Softmax is stripped: its input is the logits
    ),
    target=4,
)


# --- residual CNN: torchvision BasicBlocks (one ReLU module called twice per block) ---------


class TinyResNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 8, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(8)
        self.relu = nn.ReLU(inplace=True)
        self.layer1 = nn.Sequential(BasicBlock(8, 8))  # identity skip
        down = nn.Sequential(nn.Conv2d(8, 16, 1, stride=2, bias=False), nn.BatchNorm2d(16))
        self.layer2 = nn.Sequential(BasicBlock(8, 16, stride=2, downsample=down))  # conv skip
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(16, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.relu(self.bn1(self.conv1(x)))
        x = self.layer2(self.layer1(x))
        return self.fc(torch.flatten(self.avgpool(x), 1))


def _residual() -> nn.Module:
    torch.manual_seed(0)
    return _heavy_tail_(TinyResNet(), 2)


residual_cnn = ModelCase(
    "residual", _residual, _images((3, 10, 10), 20),
    (
        RefTap("relu", "relu"),
        RefTap("layer1.0.relu", "layer1.0.relu", 0, parents=("relu",)),
        RefTap("layer1.0.relu@1", "layer1.0.relu", 1, parents=("layer1.0.relu", "relu")),
        RefTap("layer2.0.relu", "layer2.0.relu", 0, parents=("layer1.0.relu@1",)),
        RefTap("layer2.0.relu@1", "layer2.0.relu", 1, parents=("layer2.0.relu", "layer1.0.relu@1")),
        RefTap("logits", "fc", parents=("layer2.0.relu@1",)),
    ),
    target=4,
)


# --- squeeze-excitation: a sigmoid gate multiplied into the features (not a tap) ------------


class SEBlock(nn.Module):
    def __init__(self, channels: int, reduced: int) -> None:
        super().__init__()
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc1 = nn.Linear(channels, reduced)
        self.relu = nn.ReLU()
        self.fc2 = nn.Linear(reduced, channels)
        self.gate = nn.Sigmoid()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = self.gate(self.fc2(self.relu(self.fc1(torch.flatten(self.pool(x), 1)))))
        return x * s[:, :, None, None]


class SECNN(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 8, 3, padding=1)
        self.relu1 = nn.ReLU()
        self.conv2 = nn.Conv2d(8, 12, 3, padding=1)
        self.relu2 = nn.ReLU()
        self.se = SEBlock(12, 6)
        self.conv3 = nn.Conv2d(12, 16, 3, padding=1, stride=2)
        self.relu3 = nn.ReLU()
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(16, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.relu2(self.conv2(self.relu1(self.conv1(x))))
        x = self.relu3(self.conv3(self.se(x)))
        return self.fc(torch.flatten(self.pool(x), 1))


def _se() -> nn.Module:
    torch.manual_seed(0)
    return _heavy_tail_(SECNN(), 6)


se_cnn = ModelCase(
    "se", _se, _images((3, 8, 8), 30),
    (
        RefTap("relu1", "relu1"),
        RefTap("relu2", "relu2", parents=("relu1",)),
        RefTap("se.relu", "se.relu", parents=("relu2",)),
        # relu3 reads relu2 * gate(se.relu): two parents, the gate is inside the step
        RefTap("relu3", "relu3", parents=("se.relu", "relu2")),
        RefTap("logits", "fc", parents=("relu3",)),
    ),
    target=0,
)


# --- channels-last: NHWC input, permutes around each conv, NHWC ReLU taps ---------------------


class ChannelsLastCNN(nn.Module):
    """Computes in NHWC like an ONNX export of a Keras model: the channel axis of the ReLU taps is 3."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 8, 3, padding=1)
        self.relu1 = nn.ReLU()
        self.conv2 = nn.Conv2d(8, 12, 3, padding=1)
        self.pool = nn.MaxPool2d(2)
        self.relu2 = nn.ReLU()
        self.fc1 = nn.Linear(4 * 4 * 12, 16)
        self.relu3 = nn.ReLU()
        self.fc2 = nn.Linear(16, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # x: (B, 8, 8, 3)
        x = self.relu1(self.conv1(x.permute(0, 3, 1, 2)).permute(0, 2, 3, 1))
        x = self.relu2(self.pool(self.conv2(x.permute(0, 3, 1, 2))).permute(0, 2, 3, 1))
        x = self.relu3(self.fc1(torch.flatten(x, 1)))  # NHWC flatten, as Keras does
        return self.fc2(x)


def _channels_last() -> nn.Module:
    torch.manual_seed(0)
    return _heavy_tail_(ChannelsLastCNN(), 6)


channels_last_cnn = ModelCase(
    "channels_last", _channels_last, _images((8, 8, 3), 40),
    (
        RefTap("relu1", "relu1", channel_axis=3),
        RefTap("relu2", "relu2", channel_axis=3, parents=("relu1",)),
        RefTap("relu3", "relu3", channel_axis=1, parents=("relu2",)),
        RefTap("logits", "fc2", channel_axis=1, parents=("relu3",)),
    ),
    target=0,
)

ALL_CASES = (plain_cnn, residual_cnn, se_cnn, channels_last_cnn)
