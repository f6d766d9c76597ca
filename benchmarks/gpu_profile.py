"""Where the time goes on the GPU: the statistics pass (torch.profiler, CUDA kernels) and one class's
analysis from statistics (cProfile), for ResNet-50 and VGG16. Run on a GPU machine:
``python3 -m benchmarks.gpu_profile [models...]``.
"""

from __future__ import annotations

import contextlib
import cProfile
import pstats
import sys
import time

import numpy as np
import torch
from ssa_torch.network import exact_arithmetic

import ssa

from .conftest import build, sync


def profile_collect(name: str, net, x: np.ndarray, model) -> None:
    dev = "cuda"
    xb = torch.from_numpy(x[:32]).to(dev)
    m = model.to(dev)
    with torch.no_grad():
        for label, fast in (("forward (PyTorch's defaults: TF32 convolutions)", None),
                            ("forward, exact (TF32 off, cuDNN benchmark, deterministic)", False),
                            ("forward, --fast-math (TF32, cuDNN benchmark, deterministic)", True)):
            with contextlib.nullcontext() if fast is None else exact_arithmetic(dev, fast_math=fast):
                m(xb)  # warm-up (and cuDNN's benchmark of this shape)
                sync()
                t = time.perf_counter()
                m(xb)
                sync()
            print(f"{name}: {label}: {time.perf_counter() - t:.4f} s for 32 images")
    model.to("cpu")
    for form in ("gradient", "gradient_x_activation"):
        net.collect(x[:32], [form])
        sync()
        t = time.perf_counter()
        net.collect(x[:32], [form])
        sync()
        print(f"{name}: collect {form}: {time.perf_counter() - t:.4f} s for 32 images")
        with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU,
                                                torch.profiler.ProfilerActivity.CUDA]) as prof:
            net.collect(x[:32], [form])
            sync()
        print(prof.key_averages().table(sort_by="cuda_time_total", row_limit=12, max_name_column_width=50))
        pr = cProfile.Profile()
        pr.enable()
        net.collect(x[:32], [form])
        sync()
        pr.disable()
        pstats.Stats(pr).sort_stats("tottime").print_stats(10)


def main(names: list[str]) -> None:
    for name in names:
        model = build(name)
        x = np.random.default_rng(0).standard_normal((100, 3, 224, 224)).astype(np.float32)
        net = ssa.load_model(model, device="cuda")
        net.prepare(x[:2])
        profile_collect(name, net, x, model)
        for rule, sel in (("gradient", "tukey"),):
            s = ssa.Session(net, x, device="cuda", batch_size=50, rule=rule)
            s.analyse(1, 3, selector=sel)
            sync()
            t = time.perf_counter()
            pr = cProfile.Profile()
            pr.enable()
            res = s.analyse(2, 3, selector=sel)
            sync()
            pr.disable()
            print(f"== {name} {rule}: next class {time.perf_counter() - t:.3f} s, {res.graph.number_of_nodes()} nodes")
            pstats.Stats(pr).sort_stats("tottime").print_stats(14)


if __name__ == "__main__":
    main(sys.argv[1:] or ["vgg16", "resnet50"])
