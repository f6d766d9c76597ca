"""The embedded default model: a small CNN trained on scikit-learn's digits.

The weights (``ssa/data/digits_cnn.pt``) and the images (``ssa/data/digits.npz``,
scikit-learn's copy of the UCI optical digits, 8x8, values 0-16) ship with the
package; ``scripts/train_digits.py`` trained the weights once.
"""

from __future__ import annotations

from importlib import resources

import numpy as np
import torch
import torch.nn as nn

__all__ = ["DigitsCNN", "digits_cnn", "digits_data"]


class DigitsCNN(nn.Module):
    """conv(1->16) relu, conv(16->32) relu, maxpool, conv(32->32) relu, maxpool, fc(128->64) relu, fc(64->10)."""

    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(1, 16, 3, padding=1), nn.ReLU(),
            nn.Conv2d(16, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(32, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        )
        self.classifier = nn.Sequential(nn.Flatten(), nn.Linear(128, 64), nn.ReLU(), nn.Linear(64, 10))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))


def digits_cnn() -> DigitsCNN:
    """The trained default model (weights shipped with the package)."""
    model = DigitsCNN()
    with resources.files("ssa").joinpath("data/digits_cnn.pt").open("rb") as fh:
        state = torch.load(fh, map_location="cpu", weights_only=True)
    model.load_state_dict(state)
    return model.eval()


def digits_data() -> tuple[np.ndarray, np.ndarray]:
    """All 1797 digits as float32 (N, 1, 8, 8) scaled to 0-1, and their labels."""
    with resources.files("ssa").joinpath("data/digits.npz").open("rb") as fh:
        data = np.load(fh)
        images = data["images"].astype(np.float32) / 16.0
        labels = data["labels"].astype(np.int64)
    return images[:, None, :, :], labels
