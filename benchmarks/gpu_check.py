"""Device check for a CUDA machine: the closed form's statistics stay on the GPU, omega computed from
them on the GPU (and from their numpy copies) equals autograd's step by step, and the graphs of the
closed form and of autograd are equal, for the test models, four torchvision architectures (TF32 off;
once with TF32 on) and the ONNX export patterns.

    python -m benchmarks.gpu_check        # from the repository root, the package installed; writes $OUT/gpu_check.json

Prints one JSON line per model: the ssa check summary, the worst relative omega error per form, graph equality.
"""

from __future__ import annotations

import json
import os
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torchvision
from ssa_torch.closed_form import StatsInterpreter

import ssa
from ssa.api import load_model
from ssa.testing.models import ALL_CASES, _heavy_tail_
from tests.export_patterns import PATTERNS, build_pattern
from tests.test_fast import _grouped


def check(results: dict[str, Any], name: str, model: Any, x: np.ndarray, dev: str = "cuda",
          exact: bool = True) -> None:
    """Check one model on ``dev`` and put its row into ``results``."""
    torch.backends.cudnn.allow_tf32 = not exact
    torch.backends.cuda.matmul.allow_tf32 = not exact
    t0 = time.time()
    net = load_model(model, device=dev)
    net.prepare(x)
    summ = net.closed_form_summary()
    row = {"summary": summ}
    for form in ("gradient", "gradient_x_activation"):
        # statistics computed on the GPU, kept as torch tensors there
        interp = StatsInterpreter(net.graph_module, net.plan, net.closed_form, (form,))
        with torch.no_grad():
            interp.run(net.to_tensor(x))
        assert all(v.device.type == "cuda" for v in interp.stats.values()), "statistics left the GPU"
        stats_np = {k: v.float().cpu().numpy() for k, v in interp.stats.items()}
        rule = ssa.make_rule(form)
        worst, n = 0.0, 0
        for tap in sorted(net.fast_taps(form)):
            neurons = list(range(min(net.tap(tap).n_neurons, 4)))
            ref, _ = net.step_relevance(x, tap, neurons, rule)
            fast = {b.parent: b.omega for b in net.relevance_blocks(tap, stats_np, neurons, form)}  # numpy statistics
            tf = net.closed_form.taps[tap]
            for i, term in enumerate(tf.terms):  # omega straight from the CUDA tensors
                sub = {k[len(f"{tap}/{i}/"):]: v for k, v in interp.stats.items() if k.startswith(f"{tap}/{i}/")}
                om = term.omega(sub, neurons, form)
                assert om.device.type == "cuda" and om.dtype == torch.float64
            for p in ref:
                sc = np.abs(ref[p]).max() + 1e-12
                worst = max(worst, float(np.abs(fast[p] - ref[p]).max() / sc))
                n += 1
        row[form] = {"steps_checked": n, "worst_rel_err": worst}
    x_t = x
    logits = net.logits(x_t)
    target = int(np.bincount(logits.argmax(1)).argmax())
    a = ssa.analyse(model, x, target, 3, device=dev, engine="auto")
    b = ssa.analyse(model, x, target, 3, device=dev, engine="autograd")
    row["graph_equal"] = sorted(a.graph.edges) == sorted(b.graph.edges)
    row["edges"] = a.graph.number_of_edges()
    row["seconds"] = round(time.time() - t0, 1)
    row["tf32"] = not exact
    results[name] = row
    print(name, json.dumps(row), flush=True)

def main() -> None:
    warnings.simplefilter("ignore")
    out = Path(os.environ.get("OUT", "/tmp"))
    print("torch", torch.__version__, torch.cuda.get_device_name(0), flush=True)
    results: dict[str, Any] = {}
    rng = np.random.default_rng(0)
    for c in ALL_CASES:
        check(results, c.name, c.build(), c.images(8))
    check(results, "grouped", _grouped(), rng.uniform(0, 1, (8, 3, 12, 12)).astype(np.float32))
    for zoo in ("mobilenet_v3_small", "efficientnet_b0", "densenet121", "resnet18"):
        torch.manual_seed(0)
        m = _heavy_tail_(getattr(torchvision.models, zoo)(weights=None, num_classes=10), 3)
        check(results, zoo, m, rng.standard_normal((6, 3, 64, 64)).astype(np.float32))
    torch.manual_seed(0)
    m = _heavy_tail_(torchvision.models.mobilenet_v3_small(weights=None, num_classes=10), 3)
    check(results, "mobilenet_v3_small_tf32", m, rng.standard_normal((6, 3, 64, 64)).astype(np.float32), exact=False)
    try:
        root = Path("/tmp/patterns")
        root.mkdir(exist_ok=True)
        for name in PATTERNS:
            p = build_pattern(name, root)
            check(results, "onnx_" + name, str(p.path), p.images[:8])
            net = load_model(str(p.path), device="cuda")
            net.prepare(p.images[:8])
            results["onnx_" + name]["parity"] = [net.parity_converted.relative, net.parity.relative,
                                                 net.parity.provider]
            print("  parity", results["onnx_" + name]["parity"], flush=True)
    except Exception as exc:  # noqa: BLE001 - report and go on
        print("ONNX patterns failed:", type(exc).__name__, str(exc)[:300], flush=True)
    (out / "gpu_check.json").write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
