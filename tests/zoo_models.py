"""Every classification family of torchvision, built small (issue 19, item 7), with random heavy-tailed weights.

Each builder uses the family's own torchvision class (``torchvision.models.<module>.<Class>``), with fewer
layers or channels where the constructor allows, and a 10-class head. Where a family's constructor fixes a
huge dense head (AlexNet, VGG: 4096 units), the head is replaced by a small one of the same pattern (dropout,
linear, ReLU). ``SIZE`` is the image side each family runs at (Inception v3 needs 75 px at least;
VGG 112 px, see ``SIZE``).
"""

from __future__ import annotations

import importlib
from collections.abc import Callable

import numpy as np
import torch
import torch.nn as nn
from torchvision.models import convnext as _convnext
from torchvision.models import densenet as _densenet
from torchvision.models import efficientnet as _eff
from torchvision.models import inception as _inception
from torchvision.models import maxvit as _maxvit
from torchvision.models import mnasnet as _mnasnet
from torchvision.models import mobilenetv2 as _mnv2
from torchvision.models import mobilenetv3 as _mnv3
from torchvision.models import regnet as _regnet
from torchvision.models import resnet as _resnet
from torchvision.models import shufflenetv2 as _shufflenet
from torchvision.models import squeezenet as _squeezenet
from torchvision.models import swin_transformer as _swin
from torchvision.models import vgg as _vgg
from torchvision.models import vision_transformer as _vit

from tests.onnx_models import heavy_tail_

# torchvision.models.alexnet and .googlenet are shadowed by the builder functions of the same name
_alexnet = importlib.import_module("torchvision.models.alexnet")
_googlenet = importlib.import_module("torchvision.models.googlenet")

__all__ = ["CLASSIC", "FAMILIES", "SIZE", "build", "images"]

N_CLASSES = 10


def _small_head(features: int, hidden: int = 32) -> nn.Sequential:
    return nn.Sequential(nn.Dropout(0.5), nn.Linear(features, hidden), nn.ReLU(True), nn.Dropout(0.5),
                         nn.Linear(hidden, hidden), nn.ReLU(True), nn.Linear(hidden, N_CLASSES))


def alexnet() -> nn.Module:
    m = _alexnet.AlexNet(num_classes=N_CLASSES)
    m.avgpool = nn.AdaptiveAvgPool2d(1)  # at 64 px the features are 1 x 1: pooling them to 6 x 6 does not export
    m.classifier = _small_head(256)
    return m


def vgg() -> nn.Module:
    m = _vgg.VGG(_vgg.make_layers([8, "M", 16, 16, "M", 32, "M"], batch_norm=True), num_classes=N_CLASSES)
    m.classifier = _small_head(32 * 7 * 7)
    return m


def resnet() -> nn.Module:
    return _resnet.ResNet(_resnet.BasicBlock, [1, 1, 1, 1], num_classes=N_CLASSES)


def resnext() -> nn.Module:
    return _resnet.ResNet(_resnet.Bottleneck, [1, 1, 1, 1], groups=4, width_per_group=4, num_classes=N_CLASSES)


def wide_resnet() -> nn.Module:
    return _resnet.ResNet(_resnet.Bottleneck, [1, 1, 1, 1], width_per_group=128, num_classes=N_CLASSES)


def squeezenet() -> nn.Module:
    return _squeezenet.SqueezeNet("1_1", num_classes=N_CLASSES)


def densenet() -> nn.Module:
    return _densenet.DenseNet(growth_rate=8, block_config=(2, 2, 2), num_init_features=16, bn_size=2,
                              num_classes=N_CLASSES)


def inception_v3() -> nn.Module:
    return _inception.Inception3(num_classes=N_CLASSES, aux_logits=False, init_weights=False)


def googlenet() -> nn.Module:
    return _googlenet.GoogLeNet(num_classes=N_CLASSES, aux_logits=False, init_weights=False)


def shufflenet_v2() -> nn.Module:
    return _shufflenet.ShuffleNetV2([2, 2, 2], [8, 16, 32, 64, 128], num_classes=N_CLASSES)


def mobilenet_v2() -> nn.Module:
    setting = [[1, 8, 1, 1], [6, 16, 2, 2], [6, 24, 2, 2], [6, 32, 1, 2]]
    return _mnv2.MobileNetV2(num_classes=N_CLASSES, inverted_residual_setting=setting)


def mobilenet_v3() -> nn.Module:
    setting, last = _mnv3._mobilenet_v3_conf("mobilenet_v3_small", width_mult=0.5)
    return _mnv3.MobileNetV3(setting, last, num_classes=N_CLASSES)


def mnasnet() -> nn.Module:
    return _mnasnet.MNASNet(0.5, num_classes=N_CLASSES)


def efficientnet() -> nn.Module:
    setting, last = _eff._efficientnet_conf("efficientnet_b0", width_mult=0.5, depth_mult=0.3)
    return _eff.EfficientNet(setting, 0.2, num_classes=N_CLASSES, last_channel=last)


def efficientnet_v2() -> nn.Module:
    setting = [_eff.FusedMBConvConfig(1, 3, 1, 8, 8, 1), _eff.FusedMBConvConfig(4, 3, 2, 8, 16, 1),
               _eff.MBConvConfig(4, 3, 2, 16, 24, 1, 1.0, 1.0)]
    return _eff.EfficientNet(setting, 0.2, num_classes=N_CLASSES, last_channel=64)


def regnet() -> nn.Module:
    params = _regnet.BlockParams.from_init_params(depth=4, w_0=8, w_a=8.0, w_m=2.0, group_width=8, se_ratio=0.25)
    return _regnet.RegNet(params, num_classes=N_CLASSES, stem_width=8)


def convnext() -> nn.Module:
    setting = [_convnext.CNBlockConfig(8, 16, 1), _convnext.CNBlockConfig(16, None, 1)]
    return _convnext.ConvNeXt(setting, stochastic_depth_prob=0.0, num_classes=N_CLASSES)


def vit() -> nn.Module:
    return _vit.VisionTransformer(image_size=64, patch_size=16, num_layers=2, num_heads=2, hidden_dim=16,
                                  mlp_dim=32, num_classes=N_CLASSES)


def swin() -> nn.Module:
    return _swin.SwinTransformer([4, 4], 16, [1, 1], [1, 2], [4, 4], stochastic_depth_prob=0.0,
                                 num_classes=N_CLASSES)


def swin_v2() -> nn.Module:
    return _swin.SwinTransformer([4, 4], 16, [1, 1], [1, 2], [4, 4], stochastic_depth_prob=0.0,
                                 num_classes=N_CLASSES, block=_swin.SwinTransformerBlockV2,
                                 downsample_layer=_swin.PatchMergingV2)


def maxvit() -> nn.Module:
    return _maxvit.MaxVit(input_size=(64, 64), stem_channels=8, partition_size=4, block_channels=[16, 32],
                          block_layers=[1, 1], head_dim=8, stochastic_depth_prob=0.0, num_classes=N_CLASSES)


FAMILIES: dict[str, Callable[[], nn.Module]] = {
    f.__name__: f for f in (alexnet, vgg, resnet, resnext, wide_resnet, squeezenet, densenet, inception_v3,
                            googlenet, shufflenet_v2, mobilenet_v2, mobilenet_v3, mnasnet, efficientnet,
                            efficientnet_v2, regnet, convnext, vit, swin, swin_v2, maxvit)}
# the classic CNNs: every step by the closed form (ShuffleNetV2: at least 90 %)
CLASSIC = ("alexnet", "vgg", "resnet", "resnext", "wide_resnet", "squeezenet", "densenet", "inception_v3",
           "googlenet", "shufflenet_v2", "mobilenet_v2", "mobilenet_v3", "mnasnet", "efficientnet",
           "efficientnet_v2", "regnet")
# VGG at 112 px: its adaptive pooling to 7 x 7 exports to ONNX only from a multiple of 7 (14 x 14)
SIZE = {name: 64 for name in FAMILIES} | {"inception_v3": 75, "vgg": 112}

# sigma 2 overflows Inception v3 and MNASNet to inf, and makes MobileNetV2's float32 rounding differ between
# onnxruntime and torch by 0.0015 of the output scale (the parity tolerance is 0.001): sigma 1 for them
SIGMA = {"inception_v3": 1.0, "mnasnet": 1.0, "mobilenet_v2": 1.0}


def build(family: str) -> nn.Module:
    torch.manual_seed(0)
    model = heavy_tail_(FAMILIES[family](), 1, sigma=SIGMA.get(family, 2.0))
    if isinstance(model, _inception.Inception3):
        model.transform_input = False
    return model


def images(family: str, n: int, seed: int = 0) -> np.ndarray:
    s = SIZE[family]
    return np.random.default_rng(seed).uniform(0.0, 1.0, size=(n, 3, s, s)).astype(np.float32)

