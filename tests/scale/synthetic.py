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
