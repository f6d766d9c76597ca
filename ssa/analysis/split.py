"""Held-out images: build a class's graph on one part of its images and score it on the other.

Conventions:

* ``split`` is the share of a class's images that builds the graph (``0 < split < 1``); the others are
  scored. ``"auto"`` (the default of ``ssa evaluate``) is 0.5 when the class has at least
  :data:`SPLIT_MIN_IMAGES` images, and no split otherwise; ``0`` is no split: the graph is built and scored
  on every image of the class (what the table's ``split`` column then says).
* the halves are drawn per class with ``numpy.random.default_rng([seed, 4, target])``: a permutation of the
  class's images, the first ``round(split * n)`` (at least 1, at most n - 1) build, the rest are scored;
  each half keeps the images' order. The halves never share an image (an image listed twice in the
  class's images counts once).
"""

from __future__ import annotations

import numpy as np

from ssa.errors import InvalidInputError

__all__ = ["SPLIT_MIN_IMAGES", "check_split", "split_images"]

SPLIT_MIN_IMAGES = 20


def check_split(split: float | str) -> float | str:
    """``"auto"``, or a share in ``[0, 1)`` (0: no split)."""
    if split == "auto":
        return "auto"
    try:
        value = float(split)
    except (TypeError, ValueError):
        raise InvalidInputError(f"split must be 'auto' or a number in [0, 1), got {split!r}.") from None
    if not 0.0 <= value < 1.0:
        raise InvalidInputError(f"split must be 'auto' or a number in [0, 1) (0: no held-out images), got {split!r}.")
    return value


def split_images(chosen: np.ndarray, split: float | str, *, seed: int = 0, target: int = 0
                 ) -> tuple[np.ndarray, np.ndarray]:
    """``(build, score)``: positions of the images that build the graph and of those scored (see the module)."""
    split = check_split(split)
    chosen = np.unique(np.asarray(chosen, dtype=np.int64))
    n = chosen.size
    share = (0.5 if n >= SPLIT_MIN_IMAGES else 0.0) if split == "auto" else float(split)
    if share == 0.0 or n < 2:
        return chosen, chosen
    order = np.random.default_rng([seed, 4, int(target)]).permutation(n)
    k = min(max(int(round(share * n)), 1), n - 1)
    return np.sort(chosen[order[:k]]), np.sort(chosen[order[k:]])
