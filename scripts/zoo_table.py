"""The table of docs/zoo.md: what every torchvision family (tests/zoo_models.py) gives, as a module and through
ONNX (opset 17, the TorchScript exporter).

    PYTHONPATH=.:backends:plugins .venv/bin/python scripts/zoo_table.py [FAMILY ...]

Per family, on 4 images, the first image's class, branching 2, the gradient rule: the taps (activations +
residual streams, the logits left out), the steps by the closed form as a module and through ONNX, the graph's
nodes, and the seconds of a whole ``ssa.analyse`` from the module (taps, plan, statistics, traversal) and from
the ``.onnx`` file (with conversion and parity). Prints one Markdown row per family.
"""

from __future__ import annotations

import sys
import tempfile
import time
import warnings
from pathlib import Path

import torch

import ssa
from tests import zoo_models as zm
from tests.graph_keys import predicted_class
from tests.test_torchvision_zoo import _export


def _steps(net) -> str:
    steps = net.describe_steps()
    return f"{sum(v.startswith('fast') for v in steps.values())} / {len(steps)}"


def row(family: str, root: Path) -> str:
    model = zm.build(family)
    x = zm.images(family, 4)
    target = predicted_class(model, x)
    path = _export(family, model, x, root)
    module_net = ssa.load_model(model)
    taps = module_net.prepare(x)
    onnx_net = ssa.load_model(str(path))
    onnx_net.prepare(x)
    t0 = time.perf_counter()
    res = ssa.analyse(model, x, target, 2, rule="gradient", selector="tukey")
    t1 = time.perf_counter()
    ssa.analyse(str(path), x, target, 2, rule="gradient", selector="tukey")
    t2 = time.perf_counter()
    kinds = [t.kind for t in taps if t.kind != "logits"]
    n_params = sum(p.numel() for p in model.parameters())
    return (f"| {family} | {zm.SIZE[family]} | {n_params / 1e6:.2f} M | {kinds.count('activation')} + "
            f"{kinds.count('stream')} | {_steps(module_net)} | {_steps(onnx_net)} | {res.graph.number_of_nodes()} | "
            f"{t1 - t0:.1f} | {t2 - t1:.1f} |")


def main(families: list[str]) -> None:
    torch.set_num_threads(1)
    warnings.simplefilter("ignore")
    print("| family | px | weights | taps (activations + streams) | closed form, module | closed form, ONNX | nodes "
          "| s, module | s, ONNX |")
    print("|---|---|---|---|---|---|---|---|---|")
    with tempfile.TemporaryDirectory() as root:
        for family in families or list(zm.FAMILIES):
            print(row(family, Path(root)), flush=True)


if __name__ == "__main__":
    main(sys.argv[1:])
