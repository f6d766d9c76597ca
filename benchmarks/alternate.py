"""Analysis time against the forward pass on a shared host: forward passes alternated with the analyses.

Each analysis (statistics + first class, then the next class from the statistics) is divided by the mean of the
forward passes timed just before and after it, so a host whose speed drifts (other jobs) moves both alike; the
statistics pass alone (``Session.relevance_source``, before the first class) is printed as well. For each rule
pair (the defaults, ``gradient_x_activation`` + ``mad``; the paper's, ``gradient`` + ``tukey``) it prints every
repetition and the median ratios. Usage, from the repository root::

    OMP_NUM_THREADS=1 python -m benchmarks.alternate resnet50 2     # model (vgg16, resnet18, resnet50), repetitions

32 noise images at 224 x 224 (``SSA_BENCH_IMAGES``), batches of 8, b = 3, full depth. ``SSA_BENCH_CLOCK=cpu`` times
the process's CPU time instead of wall time: on a host shared with other jobs (more runnable threads than cores) the
steadier measure for one-thread runs, since waiting for a core is not counted.
"""

from __future__ import annotations

import os
import sys
import time

import numpy as np
import torch

import ssa

from .conftest import build

PAIRS = (("gradient_x_activation", "mad"), ("gradient", "tukey"))


def main(name: str, reps: int) -> None:
    model = build(name)
    n = int(os.environ.get("SSA_BENCH_IMAGES", "32"))
    images = np.random.default_rng(0).standard_normal((n, 3, 224, 224)).astype(np.float32)
    batches = [torch.from_numpy(images[i:i + 8]) for i in range(0, n, 8)]

    clock = time.process_time if os.environ.get("SSA_BENCH_CLOCK") == "cpu" else time.perf_counter

    def forward() -> float:
        t = clock()
        with torch.no_grad():
            for x in batches:
                model(x)
        return clock() - t

    forward()
    net = ssa.load_model(model, name=name)
    net.prepare(images[:2])
    for rule, sel in PAIRS:  # once per model: tracing, plans, weights on the device
        ssa.Session(net, images[:2], rule=rule).analyse(0, 1, selector=sel)
    ratios: dict[str, list[tuple[float, float]]] = {}
    for _ in range(reps):
        for rule, sel in PAIRS:
            f0 = forward()
            session = ssa.Session(net, images, batch_size=8, rule=rule)
            t = clock()
            session.relevance_source()  # the statistics pass (kept by the session for its classes)
            stats = clock() - t
            session.analyse(0, 3, selector=sel)
            first = clock() - t
            f1 = forward()
            t = clock()
            session.analyse(1, 3, selector=sel)
            nxt = clock() - t
            f2 = forward()
            r = (first / ((f0 + f1) / 2), nxt / ((f1 + f2) / 2), stats / ((f0 + f1) / 2))
            ratios.setdefault(rule, []).append(r)
            load = " ".join(open("/proc/loadavg").read().split()[:3]) if os.path.exists("/proc/loadavg") else "?"
            print(f"{rule}: first/forward {r[0]:.2f}, next/forward {r[1]:.2f}, statistics/forward {r[2]:.2f} (forward "
                  f"{f0:.1f} {f1:.1f} {f2:.1f} s, first {first:.1f} s of which statistics {stats:.1f} s, "
                  f"next {nxt:.1f} s; load {load})", flush=True)
    for rule, rs in ratios.items():
        a = np.asarray(rs)
        print(f"MEDIAN {rule}: first/forward {np.median(a[:, 0]):.2f}, next/forward {np.median(a[:, 1]):.2f}, "
              f"statistics/forward {np.median(a[:, 2]):.2f}")


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "resnet50", int(sys.argv[2]) if len(sys.argv) > 2 else 2)
