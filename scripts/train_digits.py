"""Train the embedded default model once: python scripts/train_digits.py.

Writes ssa/data/digits.npz (the scikit-learn digits) and ssa/data/digits_cnn.pt.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from sklearn.datasets import load_digits

from ssa.models import DigitsCNN

DATA = Path(__file__).resolve().parents[1] / "ssa" / "data"


def main() -> None:
    digits = load_digits()
    images = digits.images.astype(np.uint8)
    labels = digits.target.astype(np.uint8)
    DATA.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(DATA / "digits.npz", images=images, labels=labels)

    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    order = rng.permutation(len(images))
    train, test = order[:1500], order[1500:]
    x = torch.from_numpy(images[:, None].astype(np.float32) / 16.0)
    y = torch.from_numpy(labels.astype(np.int64))
    model = DigitsCNN()
    opt = torch.optim.Adam(model.parameters(), lr=2e-3, weight_decay=1e-4)
    for _epoch in range(40):
        model.train()
        perm = torch.from_numpy(rng.permutation(train))
        for i in range(0, len(perm), 64):
            idx = perm[i:i + 64]
            loss = F.cross_entropy(model(x[idx]), y[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
    model.eval()
    with torch.no_grad():
        acc = (model(x[test]).argmax(1) == y[test]).float().mean().item()
    print(f"held-out accuracy: {acc:.3f}")
    torch.save(model.state_dict(), DATA / "digits_cnn.pt")


if __name__ == "__main__":
    main()
