"""Device-resident analysis at ImageNet scale (issue: the traversal on the GPU).

Measured in one run on one machine, per model (VGG16 and ResNet-50 at 224x224, heavy-tailed random
weights, seeded noise images):

* **32 images**: the plain forward pass; the statistics (one forward pass with the closed form's
  bookkeeping); the first class (statistics + traversal, b = 3, full depth); the next class (from the
  statistics); the full traversal against the forward pass (the target ratio);
* **10 classes x 100 images** (on a GPU, or with ``SSA_BENCH_LARGE=1``): statistics of all 1,000
  images, then each class from them; for ``gradient_x_activation`` (about 9 MB of statistics per image
  on VGG16) the statistics are collected per class, as the Session does when they do not fit;
* peak host memory (RSS) and peak GPU memory;
* the ImageNet-scale projection: statistics x 100,000 images + per-class cost x 1,000 classes;
* the share of steps by the closed form;
* the statistics pass against PyTorch's default forward (TF32 convolutions on CUDA, no cuDNN benchmark): exact
  (float32, the default), with ``--fast-math`` (TF32) and channels-last (``SSA_CHANNELS_LAST=1``); and the
  fast-math graphs' agreement with the exact ones (Jaccard of the node sets, per class; share of identical graphs).

Every graph is checked after timing: the fast path's graph equals the autograd engine's on a subset.
Run: ``make bench`` (or ``pytest benchmarks/test_device.py --benchmark-only -s``). Knobs:
``SSA_BENCH_DEVICE`` (cuda when available), ``SSA_BENCH_DEVICE_MODELS`` (default ``vgg16,resnet50``),
``SSA_BENCH_IMAGES`` (32), ``SSA_BENCH_LARGE`` (1 forces the 10 x 100 part on the CPU), ``SSA_BENCH_CLASSES`` and
``SSA_BENCH_PER_CLASS`` (10 and 100: that part's size; small values check the code on the CPU with resnet18).
"""

from __future__ import annotations

import contextlib
import gc
import json
import os
import resource
from pathlib import Path

import numpy as np
import pytest
import torch

import ssa
from ssa.engines.statistics import collect
from ssa.io.atomic import atomic_write_bytes

from .conftest import bench_device, build, cpu_model, timed

RULES = ("gradient", "gradient_x_activation")
SELECTOR = {"gradient": "tukey", "gradient_x_activation": "mad"}  # the paper's; and the default pair
B = 3
IMAGENET_IMAGES, IMAGENET_CLASSES = 100_000, 1_000
NEXT_CLASS_TARGET = {"vgg16": 0.05, "resnet50": 0.1}  # seconds per class from statistics, 100 images (issue 20)


def _models() -> list[str]:
    return [m for m in os.environ.get("SSA_BENCH_DEVICE_MODELS", "vgg16,resnet50").split(",") if m]


def _rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _machine(device: str) -> str:
    if device.startswith("cuda"):
        return f"{torch.cuda.get_device_name(torch.device(device))} (torch {torch.__version__})"
    return f"{cpu_model()}, {os.cpu_count()} cores, {torch.get_num_threads()} threads (torch {torch.__version__})"


def _card(device: str) -> str:
    """``cpu``, or ``cuda-`` and the card's name in lower case with dashes (``cuda-nvidia-h100-80gb-hbm3``)."""
    if not device.startswith("cuda"):
        return "cpu"
    name = torch.cuda.get_device_name(torch.device(device)).lower()
    return "cuda-" + "-".join("".join(c if c.isalnum() else " " for c in name).split())


class Report:
    """Results of this module's run, printed and written to benchmarks/results/ at the end."""

    def __init__(self, device: str) -> None:
        self.device = device
        self.rows: dict[str, dict[str, float | str]] = {}

    def put(self, model: str, key: str, value: float | str) -> None:
        self.rows.setdefault(model, {})[key] = value

    def write(self, show: bool = True) -> None:
        lines = [f"\n== device-resident analysis on {_machine(self.device)} =="]
        for model, r in self.rows.items():
            lines.append(f"-- {model}")
            for k, v in r.items():
                lines.append(f"   {k:<58} {v:.4g}" if isinstance(v, float) else f"   {k:<58} {v}")
        if show:
            print("\n".join(lines))
        out = Path(__file__).parent / "results" / f"{_card(self.device)}-device.json"
        out.parent.mkdir(exist_ok=True)
        atomic_write_bytes(out, json.dumps({"machine": _machine(self.device), "results": self.rows}, indent=1).encode())


@pytest.fixture(scope="module")
def report():
    rep = Report(bench_device())
    yield rep
    rep.write()


@contextlib.contextmanager
def _channels_last():
    """The statistics forward channels-last (``SSA_CHANNELS_LAST=1``; read at each call; CUDA only)."""
    old = os.environ.get("SSA_CHANNELS_LAST")
    os.environ["SSA_CHANNELS_LAST"] = "1"
    try:
        yield
    finally:
        if old is None:
            del os.environ["SSA_CHANNELS_LAST"]
        else:
            os.environ["SSA_CHANNELS_LAST"] = old


def _statistics_pass(report: Report, name: str, net, images: np.ndarray, form: str, rule: str, batch: int,
                     fwd: float) -> None:
    """The statistics pass of ``images`` in each arithmetic and layout, against PyTorch's default forward ``fwd``
    (TF32 convolutions on CUDA). Each is warmed up on one batch first: cuDNN benchmarks its candidates once per
    shape and arithmetic. On the CPU, where neither fast math nor the layout changes anything, the exact one only."""
    variants = (("exact (float32)", False, contextlib.nullcontext, "GPU target <= 2.5"),
                ("--fast-math (TF32)", True, contextlib.nullcontext, "GPU target <= 1.5"),
                ("exact, channels-last", False, _channels_last, "SSA_CHANNELS_LAST=1"),
                ("--fast-math, channels-last", True, _channels_last, "SSA_CHANNELS_LAST=1"))
    for label, fast, layout, target in variants if net.device.startswith("cuda") else variants[:1]:
        with layout(), net.arithmetic(fast_math=fast):
            collect(net, images[:batch], [form], batch)
            t, _ = timed(lambda: collect(net, images, [form], batch))
        report.put(name, f"[{rule}] statistics, {label} (s)", t)
        report.put(name, f"[{rule}]   / PyTorch's default forward ({target})", t / fwd)


def _build(name: str) -> torch.nn.Module:
    return build(name)


def _forward(model: torch.nn.Module, images: np.ndarray, device: str, batch: int) -> float:
    m = model.to(device)
    with torch.no_grad():
        x = [torch.from_numpy(images[i:i + batch]) for i in range(0, len(images), batch)]
        m(x[0].to(device))  # warm-up

        def run():
            for xb in x:
                m(xb.to(device))

        best = min(timed(run)[0] for _ in range(3))
    model.to("cpu")
    return best


@pytest.mark.benchmark(group="device")
@pytest.mark.parametrize("name", _models())
def test_device_resident_analysis(benchmark, report, name):
    device = bench_device()
    cuda = device.startswith("cuda")
    n = int(os.environ.get("SSA_BENCH_IMAGES", "32"))
    batch = 32 if cuda else 8
    rng = np.random.default_rng(0)
    model = _build(name)
    images = rng.standard_normal((n, 3, 224, 224)).astype(np.float32)
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    fwd = _forward(model, images, device, batch)
    report.put(name, f"forward, {n} images, PyTorch's defaults (s)", fwd)
    # preparation, once per model: tracing, canonicalisation, tap discovery, content hashes, the closed
    # form's plan and its weights on the device (a warm-up analysis of two images): not per class
    def prepare():
        session = ssa.Session(model, images, batch_size=batch, device=device, name=name, preset="paper")
        session.analyse(0, 1, indices=[0, 1])
        for rule in RULES:
            ssa.Session(session.network, images[:2], device=device, rule=rule).analyse(0, 1, selector="tukey")
        return session

    t_prep, session = timed(prepare)
    report.put(name, "preparation, once per model (s)", t_prep)
    net = session.network
    logits = net.logits(images)
    target = int(np.bincount(logits.argmax(1)).argmax())
    other = int(np.argsort(-logits.mean(0))[1])
    steps = net.describe_steps()
    share = sum(v.startswith("fast") for v in steps.values())
    report.put(name, "steps by the closed form", f"{share} of {len(steps)}")
    for rule in RULES:
        sel = SELECTOR[rule]
        s = ssa.Session(net, images, batch_size=batch, device=device, rule=rule)
        form = ssa.make_rule(rule).form
        _statistics_pass(report, name, net, images, form, rule, batch, fwd)
        t_first, first = timed(lambda s=s, sel=sel: s.analyse(target, B, selector=sel))  # statistics + traversal
        t_next, nxt = timed(lambda s=s, sel=sel: s.analyse(other, B, selector=sel))
        report.put(name, f"[{rule}] full traversal = statistics + first class (s)", t_first)
        report.put(name, f"[{rule}]   / forward (target <= 5 on GPU, <= 2 on CPU)", t_first / fwd)
        report.put(name, f"[{rule}] next class from the statistics (s)", t_next)
        report.put(name, f"[{rule}]   / forward (CPU target <= 0.3)", t_next / fwd)
        report.put(name, f"[{rule}] graph nodes (first, next)", f"{first.graph.number_of_nodes()}, "
                                                                  f"{nxt.graph.number_of_nodes()}")
        gc.collect()
    report.put(name, "peak host RSS so far (MiB)", _rss_mib())
    if cuda:
        report.put(name, "peak GPU memory so far (MiB)", torch.cuda.max_memory_allocated() / 2**20)

    if cuda or os.environ.get("SSA_BENCH_LARGE") == "1":
        _ten_classes(report, name, net, device, batch, rng)

    # the result is right: the closed form's graph equals exact autograd's (2 images, b = 1, the top steps)
    few = images[:2]
    order = sorted(net.taps, key=lambda t: t.order)
    stop = order[-6].name if len(order) > 6 else None
    fast = ssa.analyse(net, few, target, 1, preset="paper", device=device, stop_at=stop)
    slow = ssa.analyse(model, few, target, 1, preset="paper", device=device, engine="autograd", stop_at=stop)
    assert {(u, v, d["frequency"]) for u, v, d in fast.graph.edges(data=True)} == \
        {(u, v, d["frequency"]) for u, v, d in slow.graph.edges(data=True)}
    report.write(show=False)  # after each model: a run cut short keeps what it measured
    benchmark.extra_info.update(report.rows.get(name, {}))
    benchmark.pedantic(lambda: None, rounds=1, iterations=1)


def _ten_classes(report: Report, name: str, net, device: str, batch: int, rng) -> None:
    n_classes = int(os.environ.get("SSA_BENCH_CLASSES", "10"))
    per_class = int(os.environ.get("SSA_BENCH_PER_CLASS", "100"))
    images = rng.standard_normal((n_classes * per_class, 3, 224, 224)).astype(np.float32)
    labels = np.repeat(np.arange(n_classes), per_class)
    if device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()
    for rule in RULES:
        form = ssa.make_rule(rule).form
        s = ssa.Session(net, images, labels=labels, batch_size=batch, device=device, rule=rule)
        sel = SELECTOR[rule]
        per_image = net.statistics_bytes(form)
        shared = per_image * len(images) <= ssa.session.statistics_budget(device)
        t0, g0 = timed(lambda s=s, sel=sel: s.analyse(0, B, selector=sel))
        runs = [timed(lambda c=c, s=s, sel=sel: s.analyse(c, B, selector=sel)) for c in range(1, n_classes)]
        per = float(np.median([t for t, _ in runs]))
        exact = [g0] + [g for _, g in runs]
        key = f"[{rule}] {n_classes} classes x {per_class} images"
        report.put(name, f"{key}: statistics per image (MiB)", per_image / 2**20)
        report.put(name, f"{key}: statistics kept for", "all images" if shared else "one class at a time")
        report.put(name, f"{key}: first class incl. statistics (s)", t0)
        report.put(name, f"{key}: each next class, median (s; GPU target <= {NEXT_CLASS_TARGET.get(name, '-')})",
                   per)
        if shared:
            stats_per_image = max(t0 - per, 0.0) / len(images)
            total = stats_per_image * IMAGENET_IMAGES + per * IMAGENET_CLASSES
        else:
            total = per * IMAGENET_CLASSES  # each class collects its own 100 images' statistics
        report.put(name, f"{key}: ImageNet scale, 1000 classes x 100 images (min; target <= 5)", total / 60)
        _fast_math_agreement(report, name, key, net, images, labels, batch, device, rule, sel, exact)
        gc.collect()
    report.put(name, "peak host RSS after 10 x 100 (MiB)", _rss_mib())
    if device.startswith("cuda"):
        report.put(name, "peak GPU memory, 10 x 100 (MiB)", torch.cuda.max_memory_allocated() / 2**20)


def _fast_math_agreement(report: Report, name: str, key: str, net, images: np.ndarray, labels: np.ndarray, batch: int,
                         device: str, rule: str, sel: str, exact: list) -> None:
    """The ``--fast-math`` graphs of the same classes against the exact ones: the Jaccard index of the node sets
    (mean and lowest over the classes) and the share of identical graphs (nodes and edges with their frequencies).
    On the CPU fast math changes nothing (1.0 and 100 %: a check of this code)."""
    s = ssa.Session(net, images, labels=labels, batch_size=batch, device=device, rule=rule, fast_math=True)
    t, fast = timed(lambda: [s.analyse(c, B, selector=sel) for c in range(len(exact))])
    jaccard, same = [], 0
    for e, f in zip(exact, fast, strict=True):
        ne, nf = set(e.graph.nodes), set(f.graph.nodes)
        jaccard.append(len(ne & nf) / max(len(ne | nf), 1))
        edges = [{(u, v, d["frequency"]) for u, v, d in r.graph.edges(data=True)} for r in (e, f)]
        same += ne == nf and edges[0] == edges[1]
    report.put(name, f"{key}: --fast-math, all classes incl. statistics (s)", t)
    report.put(name, f"{key}: --fast-math node-set Jaccard vs exact, mean", float(np.mean(jaccard)))
    report.put(name, f"{key}: --fast-math node-set Jaccard vs exact, lowest", float(np.min(jaccard)))
    report.put(name, f"{key}: --fast-math graphs identical to exact", f"{same} of {len(exact)}")
