"""A synthetic ImageNet-layout folder and a 24-class model for the scale tests and benchmarks.

Classes 0-9 are the digits (PNG files, one sub-folder per class); classes 10-19 are the same digits mirrored,
20-23 the digits 0-3 transposed. The model is the embedded digits CNN with 14 more logits (seeded rows), so
every class has a logit; graphs do not need a trained logit to be computed.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

import ssa

N_CLASSES = 24

MODEL_PY = '''
import torch
import torch.nn as nn

from ssa.models import digits_cnn


def build(n=24):
    m = digits_cnn()
    old = m.classifier[3]
    new = nn.Linear(64, n)
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        new.weight[:10] = old.weight
        new.bias[:10] = old.bias
        new.weight[10:] = torch.randn(n - 10, 64, generator=g) * 0.3
        new.bias[10:] = 0.0
    m.classifier[3] = new
    return m.eval()


model = build({n})
'''


def write_model(folder: Path, n_classes: int = N_CLASSES) -> str:
    """Write the model file; returns its spec (``path/model.py:model``)."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"model{n_classes}.py"
    path.write_text(MODEL_PY.replace("{n}", str(n_classes)))
    return f"{path}:model"


def class_images(c: int) -> np.ndarray:
    """The 0-1 images (N, 8, 8) of synthetic class ``c``."""
    x, y = ssa.load_images("digits")
    base = x[y == c % 10, 0]
    if c < 10:
        return base
    if c < 20:
        return base[:, :, ::-1]
    return np.transpose(x[y == c - 20, 0], (0, 2, 1))


def write_folder(root: Path, n_classes: int = N_CLASSES, per_class: int = 20) -> Path:
    """``root/<c>/<i>.png`` for every class (8x8 grayscale)."""
    for c in range(n_classes):
        d = root / str(c)
        d.mkdir(parents=True, exist_ok=True)
        imgs = class_images(c % 24)[:per_class]
        reps = -(-per_class // len(imgs))
        imgs = np.concatenate([imgs] * reps)[:per_class]
        for i, im in enumerate(imgs):
            if c >= 24:  # more classes than the 24 patterns: shift the intensities
                im = np.clip(im * (0.5 + 0.5 * ((c // 24) % 2)), 0, 1)
            Image.fromarray(np.uint8(np.round(im * 255))).save(d / f"{i:03d}.png")
    return root


RGB_MODEL_PY = '''
import torch
import torch.nn as nn


class Small(nn.Module):
    def __init__(self, n):
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(3, 8, 5, stride=2), nn.ReLU(), nn.Conv2d(8, 16, 3, stride=2),
                                      nn.ReLU(), nn.AdaptiveAvgPool2d(4))
        self.classifier = nn.Sequential(nn.Flatten(), nn.Linear(256, 32), nn.ReLU(), nn.Linear(32, n))

    def forward(self, x):
        return self.classifier(self.features(x))


torch.manual_seed(0)
model = Small({n}).eval()
'''


def write_rgb_model(folder: Path, n_classes: int) -> str:
    """A small seeded RGB CNN with ``n_classes`` logits (any input size); returns its spec."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"rgb{n_classes}.py"
    path.write_text(RGB_MODEL_PY.replace("{n}", str(n_classes)))
    return f"{path}:model"


def write_jpeg_folder(root: Path, n_classes: int, per_class: int, size: int = 112, seed: int = 0) -> Path:
    """``root/<c>/<i>.jpg``: seeded RGB images (a class-specific colour gradient plus noise), JPEG quality 90."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size] / size
    for c in range(n_classes):
        d = root / str(c)
        d.mkdir(parents=True, exist_ok=True)
        base = np.stack([np.sin(3 * xx + c), np.cos(2 * yy + 0.5 * c), xx * yy], axis=-1)
        for i in range(per_class):
            im = 127 + 80 * base + rng.normal(0, 25, base.shape)
            Image.fromarray(np.uint8(np.clip(im, 0, 255))).save(d / f"{i:04d}.jpg", quality=90)
    return root
