"""A first graph in seconds (issue 19, item 6): a whole ``ssa analyse`` process against onnxruntime's forward pass.

ResNet-50 and MobileNetV3 (large), torchvision's definitions with random heavy-tailed weights, exported with the
TorchScript exporter at opset 17 with a dynamic batch axis; 8 images at 224 px. For each model, printed side by side:
onnxruntime's forward pass of the images (session creation apart), then two whole ``ssa analyse`` processes (``python -m
ssa analyse MODEL --images X.npy --target 0``) in a fresh cache folder: the first checks parity against onnxruntime, the
second recalls it (:mod:`ssa_onnx.parity_cache`). Each line has the wall time, the process's CPU time (user + sys) and
the load average, since the machine may be shared; the targets of the issue (9 s for ResNet-50, 6 s for MobileNetV3, on
a quiet 2-core CPU) are printed beside them. The graphs of both runs are checked after timing: the same, and not trivial
(at the same thread count: where the threads rule gave the two runs different counts, a third run at the first one's
count, which its graph records, is compared). ssa's modules are compiled into ``__pycache__`` first and the processes
may write bytecode, as an installed ``ssa`` runs (a shell with ``PYTHONDONTWRITEBYTECODE`` would otherwise compile them
again in every process).
Run with ``pytest benchmarks/test_first_graph.py --benchmark-only -s`` (SSA_BENCH_FIRST_GRAPH=resnet50 for one).
"""

from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
import time
import warnings

import numpy as np
import pytest
import torch

from .conftest import cpu_model, heavy_tail

#: model -> the issue's target for a whole process, seconds (quiet 2-core CPU), and its measurement before
TARGETS = {"resnet50": (9.0, 18.8), "mobilenet_v3_large": (6.0, 10.9)}


def _models() -> list[str]:
    return [m for m in os.environ.get("SSA_BENCH_FIRST_GRAPH", ",".join(TARGETS)).split(",") if m]


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    import torchvision

    root = tmp_path_factory.mktemp("first_graph")
    x = np.random.default_rng(0).uniform(0.0, 1.0, (8, 3, 224, 224)).astype(np.float32)
    np.save(root / "images.npy", x)
    paths = {}
    for name in _models():
        torch.manual_seed(0)
        model = heavy_tail(getattr(torchvision.models, name)(weights=None)).eval()
        path = root / f"{name}.onnx"
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.onnx.export(model, (torch.from_numpy(x[:1]),), str(path), dynamo=False, opset_version=17,
                              input_names=["image"], output_names=["logits"],
                              dynamic_axes={"image": {0: "batch"}, "logits": {0: "batch"}})
        paths[name] = path
    return root, x, paths


def _ssa_analyse(model, images, out, cache, threads: int | None = None) -> tuple[float, float, int]:
    """(wall seconds, CPU seconds user + sys, exit code) of one whole ``ssa analyse`` process (``threads``: its
    ``OMP_NUM_THREADS``, else as the environment says)."""
    env = {**os.environ, "SSA_CACHE": str(cache), "SSA_PARITY_CACHE": "1"}
    if threads is not None:
        env["OMP_NUM_THREADS"] = str(threads)
        env.pop("MKL_NUM_THREADS", None)
    # as a user's Python runs it: modules compiled once into __pycache__ (with PYTHONDONTWRITEBYTECODE set, as in
    # some CI and sandbox shells, every run compiles ssa's own 140 modules again: about 0.4 s)
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "ssa", "analyse", str(model), "--images", str(images),
                           "--target", "0", "--out", str(out), "--quiet"], env=env, capture_output=True, text=True)
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    assert done.returncode == 0, done.stderr[-2000:]
    return wall, cpu, done.returncode


def _compile_ssa() -> None:
    """Compile ssa's packages into __pycache__ once, as the first run of an installed ``ssa`` does."""
    import compileall

    import ssa_onnx
    import ssa_rules
    import ssa_selectors
    import ssa_torch

    import ssa

    for package in (ssa, ssa_torch, ssa_onnx, ssa_rules, ssa_selectors):
        compileall.compile_dir(os.path.dirname(package.__file__), quiet=2)


def _load() -> str:
    return "load average " + " ".join(f"{v:.2f}" for v in os.getloadavg())


@pytest.mark.benchmark(group="first-graph")
@pytest.mark.parametrize("name", _models())
def test_first_graph_against_onnxruntime(benchmark, exported, name):
    import onnxruntime as ort

    root, x, paths = exported
    path = paths[name]
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    session.run(None, {"image": x})
    t = time.perf_counter()
    session.run(None, {"image": x})
    ort_s = time.perf_counter() - t
    cache = root / f"cache-{name}"
    target, before = TARGETS.get(name, (float("nan"), float("nan")))
    print(f"\n{name}: 8 images at 224 px on {cpu_model()}, {os.cpu_count()} CPUs, "
          f"OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', 'unset')}; {_load()}")
    print(f"  onnxruntime forward pass   {ort_s:6.2f} s")
    runs = {}
    _compile_ssa()
    for label in ("first (parity checked)", "second (parity recalled)"):
        out = root / f"{name}-{len(runs)}.json"
        wall, cpu, _ = _ssa_analyse(path, root / "images.npy", out, cache)
        runs[label] = (wall, cpu, out)
        print(f"  ssa analyse, {label:<25} {wall:6.2f} s wall ({wall / ort_s:5.0f}x onnxruntime), "
              f"{cpu:6.2f} s CPU; target {target:g} s, before {before:g} s; {_load()}")
    benchmark.pedantic(lambda: None, rounds=1, iterations=1)  # the timings above are the result; recorded for -s
    graphs = [json.loads(out.read_text()) for _, _, out in runs.values()]
    threads = [g["graph"].get("threads") for g in graphs]
    if threads[0] != threads[1]:
        # the threads rule gave the two runs different counts (the load changed), and torch's CPU kernels round
        # differently with one thread and with several (docs/onnx.md): compare at the first run's count, recorded
        out = root / f"{name}-at-{threads[0]}-threads.json"
        _ssa_analyse(path, root / "images.npy", out, cache, threads=threads[0])
        graphs[1] = json.loads(out.read_text())
        assert graphs[1]["graph"]["threads"] == threads[0]
        print(f"  (the runs had {threads[0]} and {threads[1]} threads: the graphs are compared at {threads[0]})")
    assert len(graphs[0]["nodes"]) > 100 and graphs[0]["nodes"] == graphs[1]["nodes"]
    assert graphs[0]["links" if "links" in graphs[0] else "edges"] == graphs[1]["links" if "links" in graphs[1]
                                                                                else "edges"]
