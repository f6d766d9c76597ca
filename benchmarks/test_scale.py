"""Scale benchmarks (issue 13), in one run on one machine: classes per second in this process and on 2 Ray
workers; the decode rate of the image pipeline with DataLoader workers against one process; peak host memory of
a 50-class study against a 5-class one (streamed) and of the in-memory path for contrast.

    pytest benchmarks/test_scale.py --benchmark-only -s        # part of `make bench`

Results: benchmarks/results/scale-cpu.json (merged per section). GPU variant: benchmarks/gpu_scale.py.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from ssa.io.datasets import DecodeStats, iter_batches, open_source
from ssa.io.preprocess import resolve_preprocess
from ssa.scale import LocalRunner, RayRunner, analyse_to_folder
from tests.scale.synthetic import write_jpeg_folder, write_rgb_model

from .conftest import cpu_model

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results" / "scale-cpu.json"
N_CLASSES, PER_CLASS = 24, 40


def _machine() -> str:
    return f"{cpu_model()}, {os.cpu_count()} cores"


def _record(section: str, values: dict) -> None:
    data = json.loads(RESULTS.read_text()) if RESULTS.is_file() else {}
    data[section] = {**values, "machine": _machine(), "date": time.strftime("%Y-%m-%d")}
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(data, indent=1, sort_keys=True))


@pytest.fixture(scope="module")
def jpeg_study(tmp_path_factory):
    d = tmp_path_factory.mktemp("scale-bench")
    return write_rgb_model(d, N_CLASSES), write_jpeg_folder(d / "imgs", N_CLASSES, PER_CLASS)


@pytest.mark.benchmark(group="scale")
def test_classes_per_second_local_and_two_ray_workers(benchmark, jpeg_study, tmp_path):
    spec, images = jpeg_study
    pre = resolve_preprocess({"scale": "0-1"})

    import torch

    def run(runner, out, targets="all"):  # min_confidence 0: every image scored (a selection rate), all kept
        return analyse_to_folder(spec, images, targets, out, preprocess=pre, runner=runner, min_confidence=0.0)

    threads = torch.get_num_threads()
    run(LocalRunner(), tmp_path / "warm-up", [0, 1])  # imports, plugins, first trace: paid once per process
    local = {}
    for n in (1, threads):  # one core (a Ray worker's share), and torch's default threads
        torch.set_num_threads(n)
        local[n] = benchmark.pedantic(lambda n=n: run(LocalRunner(), tmp_path / f"local-{n}"), rounds=1, iterations=1) \
            if n == 1 else run(LocalRunner(), tmp_path / f"local-{n}")
    torch.set_num_threads(threads)
    t0 = time.perf_counter()
    ray_runner = RayRunner(workers=2, num_cpus=2).start()
    startup = time.perf_counter() - t0
    on_ray = run(ray_runner, tmp_path / "ray")  # closes the runner (and the cluster) at the end
    ref = tmp_path / "local-1"
    same = all((ref / f.name).read_bytes() == f.read_bytes() for f in (tmp_path / "ray").glob("class-*.json"))
    assert same and len(list((tmp_path / "ray").glob("class-*.json"))) == N_CLASSES
    rr = on_ray.rates()
    print(f"\n{N_CLASSES} classes x {PER_CLASS} JPEG images 112x112, small RGB CNN, {_machine()}, load average "
          f"{os.getloadavg()[0]:.1f}")
    for n, rep in local.items():
        rate = rep.rates()["classes_per_s"]
        print(f"  this process, {n} torch thread(s): {rate:.2f} classes/s  ({rep.rates_line()})")
    print(f"  Ray, 2 workers x 1 thread: {rr['classes_per_s']:.2f} classes/s  ({on_ray.rates_line()}); cluster start "
          f"{startup:.1f} s (not counted)")
    speedup = rr["classes_per_s"] / local[1].rates()["classes_per_s"]
    print(f"  Ray (2 workers) / this process (1 thread): {speedup:.2f}x; graphs byte-identical: {same}")
    _record("classes_per_second", {"classes": N_CLASSES, "images_per_class": PER_CLASS,
                                   **{f"local_{n}_threads": rep.as_dict() for n, rep in local.items()},
                                   "ray_2_workers": on_ray.as_dict(), "ray_startup_s": round(startup, 2),
                                   "ray_over_local_1_thread": round(speedup, 3),
                                   "load_average": round(os.getloadavg()[0], 2)})


@pytest.fixture(scope="module")
def imagenet_like(tmp_path_factory):
    """400 JPEG files of 500x375 (ImageNet's typical size), seeded noise over gradients."""
    d = tmp_path_factory.mktemp("decode") / "imgs"
    d.mkdir()
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:375, 0:500] / 500
    for i in range(400):
        base = np.stack([np.sin(5 * xx + i), np.cos(3 * yy), xx * yy], -1)
        im = np.clip(127 + 90 * base + rng.normal(0, 20, base.shape), 0, 255).astype(np.uint8)
        Image.fromarray(im).save(d / f"{i:04d}.jpg", quality=90)
    return d


@pytest.mark.benchmark(group="scale")
@pytest.mark.parametrize("workers", [0, 2])
def test_decode_rate(benchmark, imagenet_like, workers):
    src = open_source(imagenet_like, preprocess=resolve_preprocess("torchvision"))

    def decode():
        stats = DecodeStats()
        n = sum(len(idx) for idx, _ in iter_batches(src, batch_size=32, workers=workers, stats=stats))
        return n, stats

    t0 = time.perf_counter()
    n, stats = benchmark.pedantic(decode, rounds=2, iterations=1)
    rate = n / benchmark.stats.stats.min
    print(f"\ndecode, torchvision preset (resize 256, crop 224), {n} JPEG 500x375, {workers or 'no'} DataLoader "
          f"workers: {rate:.0f} images/s ({_machine()}, load average {os.getloadavg()[0]:.1f})")
    _record(f"decode_{workers}_workers", {"images": n, "images_per_s": round(rate, 1),
                                          "wall_s": round(time.perf_counter() - t0, 2),
                                          "load_average": round(os.getloadavg()[0], 2)})
    data = json.loads(RESULTS.read_text())
    if workers and "decode_0_workers" in data:
        ratio = data["decode_2_workers"]["images_per_s"] / data["decode_0_workers"]["images_per_s"]
        print(f"DataLoader with 2 workers / one process: {ratio:.2f}x")


PEAK = '''
import json, sys
from ssa.cli import main
from ssa.testing.memory import peak_rss_kib
code = main(sys.argv[1:])
print(json.dumps({"code": code, "maxrss_kib": peak_rss_kib()}))
'''


def _peak(argv: list[str]) -> int:
    res = subprocess.run([sys.executable, "-c", PEAK, *argv], capture_output=True, text=True, cwd=ROOT, timeout=1200)
    assert res.returncode == 0, res.stderr
    data = json.loads(res.stdout.strip().splitlines()[-1])
    assert data["code"] == 0, res.stderr
    return int(data["maxrss_kib"])


@pytest.mark.benchmark(group="scale")
def test_peak_memory_50_vs_5_classes(benchmark, tmp_path):
    spec = write_rgb_model(tmp_path, 50)
    images = write_jpeg_folder(tmp_path / "imgs", 50, 40)
    study = ('targets = {t}\n[[model]]\nspec = "{spec}"\n[images]\npath = "{images}"\npreprocess = "0-1"\n'
             '[selection]\nmax_images = 40\n[outputs]\ncompare = false\nreport = false\n')
    peaks = {}
    for n, targets in ((5, "[0, 1, 2, 3, 4]"), (50, '"all"')):
        f = tmp_path / f"s{n}.toml"
        f.write_text(study.format(t=targets, spec=spec, images=images))
        peaks[f"study_{n}"] = _peak(["study", str(f), "--out-dir", str(tmp_path / f"study{n}"), "-q"])
        cls = "0,1,2,3,4" if n == 5 else "all"  # the in-memory path of `ssa analyse --targets` (no --out-dir)
        peaks[f"in_memory_{n}"] = _peak(["analyse", spec, "--images", str(images), "--targets", cls, "-q"])
    benchmark.pedantic(lambda: None, rounds=1, iterations=1)
    streamed = peaks["study_50"] / peaks["study_5"]
    in_memory = peaks["in_memory_50"] / peaks["in_memory_5"]
    print(f"\npeak host memory (MiB): ssa study, 5 classes {peaks['study_5'] / 1024:.0f}, 50 classes "
          f"{peaks['study_50'] / 1024:.0f}: ratio {streamed:.3f} (target <= 1.2). For contrast, the in-memory path "
          f"(`ssa analyse --targets` without --out-dir, which loads the whole folder whatever the targets): "
          f"5 classes {peaks['in_memory_5'] / 1024:.0f}, 50 classes {peaks['in_memory_50'] / 1024:.0f} (ratio "
          f"{in_memory:.3f})")
    _record("peak_memory", {"kib": peaks, "study_50_over_5": round(streamed, 3),
                            "in_memory_50_over_5": round(in_memory, 3)})
    assert streamed <= 1.2
