"""The evidence behind ssa's default rule and selector: `ssa evaluate` on the digits CNN and on the test
suite's four small models (tests/models.py), then one summary table.

    .venv/bin/python scripts/evaluate_defaults.py OUT_DIR

* digits: the embedded trained CNN, all 1797 images, every class (`--targets all`).
* plain, residual, se, channels_last: heavy-tailed random weights and uniform-noise images (300), so
  every image is predicted as one class; each logit is analysed on its own share of the images
  (labels = image index modulo the number of logits). Faithfulness there asks whether ablating a
  logit's graph lowers that logit more than ablating as many random neurons.

Every run: 5 random draws, 5 bootstrap resamples, seed 0, b = 3, zero ablation, held-out images (the
default split: half of a class's images build the graph, the other half are scored). Writes
OUT_DIR/<model>.csv (the table of `ssa evaluate`) and prints, per rule x selector and model:
margin = mean over classes of (graph logit drop - random logit drop, the necessity columns); beats = share
of classes whose graph drop's 95 % interval lies above the random sets'; jaccard = mean bootstrap Jaccard;
stops = share of classes whose graph stops above the lowest tap (ssa says why in the result's notes).
The curves over circuit size and all three ablations: scripts/evaluate_curves.py.
"""

from __future__ import annotations

import csv
import sys
import warnings
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import ssa  # noqa: E402
from ssa.cli import main  # noqa: E402
from ssa.testing.models import ALL_CASES  # noqa: E402

N_IMAGES = 300
COMMON = ["--draws", "5", "--resamples", "5", "--seed", "0", "--threads", "1", "--quiet"]


def evaluate(out: Path) -> dict[str, tuple]:
    """Run `ssa evaluate` on every model; returns {name: (model, images, labels)}."""
    out.mkdir(parents=True, exist_ok=True)
    x, y = ssa.load_images("digits")
    models: dict[str, tuple] = {"digits": ("digits", x, y)}
    print("== digits", flush=True)
    if main(["evaluate", "digits", "--images", "digits", "--targets", "all", *COMMON, "--out",
             str(out / "digits.csv")]):
        raise SystemExit(1)
    for case in ALL_CASES:
        x = case.images(N_IMAGES)
        net = ssa.load_model(case.build())
        net.prepare(x[:2])
        n = int(net.logits(x[:1]).shape[1])
        y = np.arange(N_IMAGES) % n
        np.save(out / f"{case.name}-x.npy", x)
        np.save(out / f"{case.name}-y.npy", y)
        print(f"== {case.name}: {N_IMAGES} images, {n} logits", flush=True)
        if main(["evaluate", f"{ROOT / 'tests' / 'models.py'}:{case.name}_cnn.build", "--images",
                 str(out / f"{case.name}-x.npy"), "--labels", str(out / f"{case.name}-y.npy"), "--targets", "all",
                 *COMMON, "--out", str(out / f"{case.name}.csv")]):
            raise SystemExit(1)
        models[case.name] = (case.build(), x, y)
    return models


def summary(out: Path, models: dict[str, tuple]) -> str:
    rules = ("gradient", "gradient_x_activation")
    selectors = ("mad", "percentile", "topk", "tukey", "zscore")
    cells: dict[tuple[str, str, str], str] = {}
    for name, (model, x, y) in models.items():
        rows = [r for r in csv.DictReader(open(out / f"{name}.csv")) if r["target"] != "mean"]
        sessions = {r: ssa.Session(model, x, labels=y, rule=r) for r in rules}
        for r in rules:
            for s in selectors:
                rr = [q for q in rows if q["rule"] == r and q["selector"] == s]
                margin = np.mean([float(q["necessity"]) - float(q["necessity_random"]) for q in rr])
                beats = np.mean([float(q["necessity_low"]) > float(q["necessity_random_high"]) for q in rr])
                jac = np.mean([float(q["node_jaccard"]) for q in rr])
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    stops = np.mean([bool(sessions[r].analyse(int(q["target"]), 3, selector=s).notes) for q in rr])
                cells[(name, r, s)] = f"{margin:6.2f} {beats:4.2f} {jac:4.2f} {stops:4.2f}"
    names = list(models)
    lines = ["margin / beats / jaccard / stops per model",
             f"{'rule':<22} {'selector':<11}" + "".join(f"{n:>24}" for n in names)]
    for r in rules:
        for s in selectors:
            lines.append(f"{r:<22} {s:<11}" + "".join(f"  {cells[(n, r, s)]}" for n in names))
    return "\n".join(lines)


if __name__ == "__main__":
    target = Path(sys.argv[1])
    print(summary(target, evaluate(target)))
