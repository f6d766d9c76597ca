"""GPU variant of the scale benchmark (issue 13): 10 classes x 100 JPEG images at 224x224 on the GPU, end to end
(decoding, selection, analysis, graphs written), with the ImageNet-scale projection from the measured rates.

    python benchmarks/gpu_scale.py                       # from the repository root, the package installed
    python benchmarks/gpu_scale.py --model resnet50 --decoder gpu --workers 8
    python benchmarks/gpu_scale.py --device cpu --classes 2 --per-class 8 --model resnet18   # a smoke run

It writes seeded JPEG files of 500x375 (ImageNet's typical size) as ``<tmp>/imgs/<class>/*.jpg``, builds
torchvision's VGG16 (or --model) with the benchmarks' heavy-tailed random weights (benchmarks/conftest.py), and
runs ``ssa.scale.analyse_to_folder`` with the torchvision preprocessing (resize 256, center-crop 224):

* once with Pillow decoding in ``--workers`` DataLoader processes, once with torchvision's nvJPEG decoder on the
  GPU (``--decoder both``, the default on CUDA);
* the plan (the image set's content hash: every image decoded once) and the class jobs timed apart; images/s for
  decoding, selection and analysis from the jobs' own counters; peak GPU and host memory.

ImageNet-scale projection (printed and written): 1000 classes x ``--per-class-imagenet`` images analysed (100,
the paper's ``--max-images``), with ``--decoded-per-class`` images decoded and scored per class to find them
(default 100: no confidence filter; with ``--min-confidence 0.99`` on a trained model this is 100 / the share of
a class's images that pass), plus the content-hash pass over 1,281,167 images at the measured decode rate:

    T = 1,281,167 / decode_rate  +  1000 x (decoded_per_class / decode_rate + decoded_per_class / select_rate
                                            + per_class_analysis)

per GPU (divide the second term by the number of GPUs with --ray on a multi-GPU node).
Writes ``$OUT/gpu_scale.json`` (``$OUT`` default /tmp) and prints one summary per decoder.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.conftest import build  # noqa: E402
from ssa.io.datasets import DecodeStats, iter_batches, open_source  # noqa: E402
from ssa.io.preprocess import resolve_preprocess  # noqa: E402
from ssa.scale import LocalRunner, analyse_to_folder  # noqa: E402

IMAGENET_TRAIN = 1_281_167


def write_jpegs(root: Path, classes: int, per_class: int) -> Path:
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:375, 0:500] / 500
    for c in range(classes):
        d = root / str(c)
        d.mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            base = np.stack([np.sin(5 * xx + c), np.cos(3 * yy + 0.3 * i), xx * yy], -1)
            im = np.clip(127 + 90 * base + rng.normal(0, 20, base.shape), 0, 255).astype(np.uint8)
            Image.fromarray(im).save(d / f"{i:04d}.jpg", quality=90)
    return root


def decode_rate(source, workers: int, batch: int) -> float:
    stats = DecodeStats()
    t0 = time.perf_counter()
    n = sum(len(i) for i, _ in iter_batches(source, batch_size=batch, workers=workers, stats=stats))
    return n / (time.perf_counter() - t0)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--model", default="vgg16", choices=("vgg16", "resnet18", "resnet50"))
    ap.add_argument("--classes", type=int, default=10)
    ap.add_argument("--per-class", type=int, default=100)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--workers", type=int, default=min(8, max(1, (os.cpu_count() or 2) - 1)))
    ap.add_argument("--decoder", default=None, choices=("pil", "gpu", "both"))
    ap.add_argument("--decoded-per-class", type=int, default=100)
    ap.add_argument("--per-class-imagenet", type=int, default=100)
    args = ap.parse_args()
    decoders = ["pil", "gpu"] if (args.decoder or ("both" if args.device.startswith("cuda") else "pil")) == "both" \
        else [args.decoder or "pil"]
    if args.model == "resnet50":
        import torchvision

        torch.manual_seed(0)
        model = torchvision.models.resnet50(weights=None).eval()
    else:
        model = build(args.model)
    card = torch.cuda.get_device_name(0) if args.device.startswith("cuda") else platform.processor() or "cpu"
    print(f"torch {torch.__version__}, {card}, {args.model}, {args.classes} classes x {args.per_class} JPEG 500x375 "
          f"-> 224x224, batch {args.batch_size}, {args.workers} decode workers", flush=True)
    out = Path(os.environ.get("OUT", "/tmp"))
    results: dict = {"device": card, "torch": torch.__version__, "model": args.model, "classes": args.classes,
                     "per_class": args.per_class, "batch_size": args.batch_size, "decode_workers": args.workers,
                     "runs": {}}
    pre = resolve_preprocess("torchvision")
    with tempfile.TemporaryDirectory(prefix="ssa-gpu-scale-") as tmp:
        t0 = time.perf_counter()
        imgs = write_jpegs(Path(tmp) / "imgs", args.classes, args.per_class)
        print(f"wrote {args.classes * args.per_class} JPEG files in {time.perf_counter() - t0:.1f} s", flush=True)
        for decoder in decoders:
            source = open_source(imgs, preprocess=pre)
            if decoder == "gpu":
                source = source.with_decoder("gpu", args.device)
            workers = args.workers
            rate = decode_rate(source, workers, args.batch_size)
            # warm-up (imports, plugins, the first trace and CUDA kernels: paid once per process, not per class)
            analyse_to_folder(model, source.subset(range(min(4, args.per_class))), [0], Path(tmp) / f"warm-{decoder}",
                              labels=np.zeros(min(4, args.per_class), np.int64), device=args.device,
                              batch_size=args.batch_size, runner=LocalRunner())
            if args.device.startswith("cuda"):
                torch.cuda.reset_peak_memory_stats()
            t0 = time.perf_counter()
            report = analyse_to_folder(model, source, list(range(args.classes)), Path(tmp) / f"graphs-{decoder}",
                                       device=args.device, batch_size=args.batch_size, decode_workers=workers,
                                       runner=LocalRunner())
            wall = time.perf_counter() - t0
            plan_s = wall - report.seconds
            r = report.rates()
            t = report.totals()
            per_class_analysis = t["analyse_s"] / max(len(report.results), 1)
            dec = r["decode_images_per_s"] or rate
            sel = r["select_images_per_s"]
            k = args.decoded_per_class
            projection_jobs = 1000 * (k / dec + (k / sel if sel else 0.0) + per_class_analysis)
            projection_hash = IMAGENET_TRAIN / rate
            row = {"decode_images_per_s_stream": round(rate, 1), "plan_s": round(plan_s, 2),
                   "jobs_s": round(report.seconds, 2), "wall_s": round(wall, 2), "run": report.as_dict(),
                   "per_class_analysis_s": round(per_class_analysis, 3),
                   "gpu_peak_mib": (round(torch.cuda.max_memory_allocated() / 2 ** 20)
                                    if args.device.startswith("cuda") else None),
                   "host_peak_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024),
                   "imagenet_projection": {"hash_pass_s": round(projection_hash),
                                           "class_jobs_s": round(projection_jobs),
                                           "total_h": round((projection_hash + projection_jobs) / 3600, 2),
                                           "decoded_per_class": k, "per_class_imagenet": args.per_class_imagenet}}
            results["runs"][decoder] = row
            print(f"[{decoder}] decode stream {rate:.0f} img/s; plan (content hash) {plan_s:.1f} s; "
                  f"{report.rates_line()}; analysis {per_class_analysis:.2f} s per class; GPU peak "
                  f"{row['gpu_peak_mib']} MiB, host peak {row['host_peak_mib']} MiB", flush=True)
            print(f"[{decoder}] ImageNet scale (1000 classes x {args.per_class_imagenet}, {k} decoded per class): "
                  f"content hash {projection_hash / 60:.1f} min + class jobs {projection_jobs / 60:.1f} min = "
                  f"{(projection_hash + projection_jobs) / 3600:.2f} h on one {card}", flush=True)
    out.mkdir(parents=True, exist_ok=True)
    (out / "gpu_scale.json").write_text(json.dumps(results, indent=1))
    print(f"wrote {out / 'gpu_scale.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
