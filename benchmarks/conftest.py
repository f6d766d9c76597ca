"""Benchmark fixtures: VGG16 (torchvision's definition, random weights) and ResNet18, 224x224.

Knobs: SSA_BENCH_IMAGES (default 8 on CPU, 32 on CUDA), SSA_BENCH_DEVICE (default cuda when available),
SSA_BENCH_MODELS (comma-separated, default "vgg16,resnet18").
"""

from __future__ import annotations

import os
import platform
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch


def cpu_model() -> str:
    """The CPU's model name (``/proc/cpuinfo``), else what ``platform`` says: for the benchmarks' records."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def sync() -> None:
    """Wait for the GPU, where there is one (timings then cover the work, not its launch)."""
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def timed(fn):
    """``(seconds, fn())``, the GPU synchronised before and after."""
    sync()
    t = time.perf_counter()
    out = fn()
    sync()
    return time.perf_counter() - t, out


def bench_device() -> str:
    return os.environ.get("SSA_BENCH_DEVICE", "cuda" if torch.cuda.is_available() else "cpu")


def bench_images() -> int:
    return int(os.environ.get("SSA_BENCH_IMAGES", "32" if bench_device().startswith("cuda") else "8"))


def bench_models() -> list[str]:
    return [m for m in os.environ.get("SSA_BENCH_MODELS", "vgg16,resnet18").split(",") if m]


def build(name: str) -> torch.nn.Module:
    import torchvision

    torch.manual_seed(0)
    model = {"vgg16": torchvision.models.vgg16, "resnet18": torchvision.models.resnet18,
             "resnet50": torchvision.models.resnet50}[name](weights=None)
    return heavy_tail(model).eval()


def heavy_tail(model: torch.nn.Module, sigma: float = 1.0) -> torch.nn.Module:
    """Trained networks have heavy-tailed connection strengths; PyTorch's uniform initialisation has
    none, so Tukey's fences would find no outliers and the graph would stop near the logits. Redraw
    every conv / dense weight as normal noise times a log-normal scale per (output, input) channel
    pair (variance-preserving), and give batch-norms non-trivial running statistics."""
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, (torch.nn.Conv2d, torch.nn.Linear)):
                w = m.weight
                fan_in = w[0].numel()
                scale = torch.exp(sigma * torch.randn(w.shape[0], w.shape[1], generator=gen) - sigma ** 2)
                scale = scale.reshape(scale.shape + (1,) * (w.dim() - 2))
                w.copy_(torch.randn(w.shape, generator=gen) * scale * (2.0 / fan_in) ** 0.5)
            elif isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.normal_(0, 0.1, generator=gen)
                m.running_var.uniform_(0.5, 1.5, generator=gen)
    return model


@pytest.fixture(scope="module", params=bench_models())
def case(request: pytest.FixtureRequest) -> tuple[str, torch.nn.Module, np.ndarray]:
    name = request.param
    model = build(name)
    rng = np.random.default_rng(0)
    images = rng.standard_normal((bench_images(), 3, 224, 224)).astype(np.float32)
    return name, model, images


@pytest.fixture(scope="module")
def results(case: tuple[str, torch.nn.Module, np.ndarray]) -> dict[str, Any]:
    """The numbers of one model (one per ``case``), filled by a module's benchmarks and written by its last one."""
    return {}
