"""Where one class's time goes on the GPU (cProfile of Session.analyse from statistics), ResNet-50 and VGG16.

Run on a GPU machine: ``python3 -m benchmarks.gpu_profile``; prints the top functions by cumulative time.
"""

from __future__ import annotations

import cProfile
import pstats
import sys
import time

import numpy as np
import torch

import ssa

from .conftest import build


def main(names: list[str]) -> None:
    device = "cuda" if torch.cuda.is_available() else "cpu"
    for name in names:
        model = build(name)
        x = np.random.default_rng(0).standard_normal((100, 3, 224, 224)).astype(np.float32)
        for rule, sel in (("gradient", "tukey"), ("gradient_x_activation", "mad")):
            s = ssa.Session(model, x, device=device, batch_size=50, rule=rule)
            s.analyse(1, 3, selector=sel)  # statistics + first class
            torch.cuda.synchronize() if device == "cuda" else None
            t = time.perf_counter()
            pr = cProfile.Profile()
            pr.enable()
            res = s.analyse(2, 3, selector=sel)
            torch.cuda.synchronize() if device == "cuda" else None
            pr.disable()
            print(f"== {name} {rule}: next class {time.perf_counter() - t:.3f} s, {res.graph.number_of_nodes()} nodes")
            pstats.Stats(pr).sort_stats("tottime").print_stats(14)


if __name__ == "__main__":
    main(sys.argv[1:] or ["resnet50", "vgg16"])
