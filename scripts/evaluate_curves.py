"""Evidence for the defaults, the way the field measures faithfulness: `ssa evaluate --curves` on the digits CNN,
every class, both rules, every built-in selector and all three ablations, held-out images; then Markdown tables
written into docs/analysis.md (between the `evidence:start` and `evidence:end` markers).

    .venv/bin/python scripts/evaluate_curves.py OUT_DIR [--summarise-only] [--zoo | --zoo-only]

Writes OUT_DIR/digits-table.csv, OUT_DIR/digits-curves.csv and OUT_DIR/digits-curves.png (the files of
`ssa evaluate --out --curves-out --figure`), prints the tables and puts them into docs/analysis.md.
`--summarise-only` re-reads the CSVs of an earlier run. `--zoo` also trains two of the test suite's
architectures (ssa.testing.models: `residual`, torchvision BasicBlocks with an identity and a conv skip, 5
classes; `se`, a squeeze-excitation gate, 4 classes) on the digits images of their first classes (upsampled to
their input size, the grey channel repeated three times; Adam, 40 epochs, seed 0) and evaluates them the same
way through the Python API (OUT_DIR/<model>-table.csv, -curves.csv, -accuracy.txt); `--zoo-only` re-uses the
digits CSVs of an earlier run and runs only those.

Per rule, selector and ablation, over the 10 classes:
* CPR, CMD: mean over classes of the areas (graph; random sets of the same sizes);
* above: classes whose sufficiency curve lies above the random-set curve at every size swept (point values;
  empty graphs left out: their random set is empty too);
* apart at b=3: classes whose sufficiency interval at b = 3 lies entirely above the random sets' (95 %).
"""

from __future__ import annotations

import csv
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from ssa.cli import main  # noqa: E402

DOC = ROOT / "docs" / "analysis.md"
START, END = "<!-- evidence:start -->", "<!-- evidence:end -->"
ABLATIONS = ("zero", "mean", "resample")
DEFAULT = ("gradient_x_activation", "mad")


def run(out: Path) -> float:
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    code = main(["evaluate", "digits", "--images", "digits", "--targets", "all", "--ablation", "all", "--curves",
                 "--draws", "5", "--resamples", "5", "--seed", "0", "--threads", "1", "--batch-size", "256", "-q",
                 "--out", str(out / "digits-table.csv"), "--curves-out", str(out / "digits-curves.csv"),
                 "--figure", str(out / "digits-curves.png")])
    if code:
        raise SystemExit(code)
    return time.perf_counter() - t0


def _read(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


def _f(rec: dict[str, str], key: str) -> float:
    return float(rec[key])


def _iv(rec: dict[str, str], key: str) -> str:
    return f"{_f(rec, key):.3f} [{_f(rec, key + '_low'):.3f}, {_f(rec, key + '_high'):.3f}]"


def _curve(points: Sequence[dict[str, str]]) -> tuple[bool, int]:
    """(above the random curve at every size, points below or equal); an empty graph is left out (its random set
    is empty too: the same ablation, the same score)."""
    worse = sum(_f(p, "sufficiency") <= _f(p, "sufficiency_random") for p in points if int(p["n_kept"]) > 0)
    return worse == 0, worse


def summarise(out: Path) -> str:
    table = [r for r in _read(out / "digits-table.csv") if r["target"] != "mean"]
    points = _read(out / "digits-curves.csv")
    classes = sorted({r["target"] for r in table}, key=int)
    by = {(r["target"], r["rule"], r["selector"], r["ablation"]): r for r in table}
    curve: dict[tuple[str, str, str, str], list[dict[str, str]]] = {}
    for p in points:
        curve.setdefault((p["target"], p["rule"], p["selector"], p["ablation"]), []).append(p)

    def at_b3(key: tuple[str, str, str, str]) -> dict[str, str]:
        return next(p for p in curve[key] if p["parameter"] == "b" and float(p["value"]) == 3.0)

    lines = ["### The default (`gradient_x_activation` + `mad`) per class, held-out images", "",
             "Sufficiency at b = 3 (share of the class logit with only the graph's neurons kept) with its 95 % "
             "interval, beside random sets of the same size per tap; **apart**: the graph's interval lies above "
             "the random sets'; **above everywhere**: the graph's curve is above the random-set curve at every "
             "size swept (b = 1, 2, 3, 4, 6, 8 and `mad`'s threshold 1.5, 2.5, 5, 8 at b = 3; else how many of the "
             "10 points are not; an empty graph is left out: its random set is empty too).", "",
             "| class | built/scored | " + " | ".join(f"{a}: b=3 graph vs random | apart | above everywhere"
                                                     for a in ABLATIONS) + " |",
             "| --- | --- | " + " | ".join("--- | --- | ---" for _ in ABLATIONS) + " |"]
    for t in classes:
        row = by[(t, *DEFAULT, "zero")]
        cells = [t, f"{row['n_build']}/{row['n_scored']}"]
        for a in ABLATIONS:
            p = at_b3((t, *DEFAULT, a))
            above, worse = _curve(curve[(t, *DEFAULT, a)])
            apart = _f(p, "sufficiency_low") > _f(p, "sufficiency_random_high")
            cells += [f"{_iv(p, 'sufficiency')} vs {_iv(p, 'sufficiency_random')}", "yes" if apart else "**no**",
                      "yes" if above else f"**no** ({worse} of {len(curve[(t, *DEFAULT, a)])})"]
        lines.append("| " + " | ".join(cells) + " |")
    lines += ["", "### Every rule, selector and ablation (10 classes)", "",
              "CPR and CMD: mean over classes of the areas (graph / random sets of the same sizes; CPR higher is "
              "better, CMD lower); **above**: classes whose sufficiency curve is above the random-set curve at "
              "every size; **apart at b=3**: classes whose sufficiency interval at b = 3 lies above the random "
              "sets'; **necessity apart**: the same for the class-logit drop with the graph ablated (b = 3).", "",
              "| rule | selector | ablation | CPR graph / random | CMD graph / random | above | apart at b=3 | "
              "necessity apart |", "| --- | --- | --- | --- | --- | --- | --- | --- |"]
    rules = sorted({r["rule"] for r in table})
    selectors = sorted({r["selector"] for r in table})
    for rule in rules:
        for sel in selectors:
            for a in ABLATIONS:
                rs = [by[(t, rule, sel, a)] for t in classes]
                cpr = np.mean([_f(r, "cpr") for r in rs]), np.mean([_f(r, "cpr_random") for r in rs])
                cmd = np.mean([_f(r, "cmd") for r in rs]), np.mean([_f(r, "cmd_random") for r in rs])
                above = sum(_curve(curve[(t, rule, sel, a)])[0] for t in classes)
                apart = sum(_f(at_b3((t, rule, sel, a)), "sufficiency_low")
                            > _f(at_b3((t, rule, sel, a)), "sufficiency_random_high") for t in classes)
                nec = sum(_f(r, "necessity_low") > _f(r, "necessity_random_high") for r in rs)
                lines.append(f"| {rule} | {sel} | {a} | {cpr[0]:.3f} / {cpr[1]:.3f} | {cmd[0]:.3f} / {cmd[1]:.3f} "
                             f"| {above}/{len(classes)} | {apart}/{len(classes)} | {nec}/{len(classes)} |")
    return "\n".join(lines)


def _digits_for(shape: tuple[int, ...], n_classes: int) -> tuple[np.ndarray, np.ndarray]:
    import torch
    import torch.nn.functional as F

    import ssa

    x, y = ssa.load_images("digits")
    keep = y < n_classes
    t = torch.from_numpy(x[keep])
    t = F.interpolate(t, size=shape[1:], mode="bilinear", align_corners=False).repeat(1, shape[0], 1, 1)
    return t.numpy().astype(np.float32), y[keep]


def train_zoo(name: str) -> tuple[object, np.ndarray, np.ndarray, float]:
    """A zoo architecture trained on digits; returns (model, images, labels, training accuracy)."""
    import torch

    from ssa.testing.models import residual_cnn, se_cnn

    case = {"residual": residual_cnn, "se": se_cnn}[name]
    torch.manual_seed(0)
    model = type(case.build())()  # the architecture with PyTorch's initialisation, not the heavy-tailed weights
    n_classes = model.fc.out_features
    x, y = _digits_for(case.images(1).shape[1:], n_classes)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    xt, yt = torch.from_numpy(x), torch.from_numpy(y).long()
    g = torch.Generator().manual_seed(0)
    model.train()
    for _ in range(40):
        for idx in torch.randperm(len(xt), generator=g).split(64):
            opt.zero_grad()
            torch.nn.functional.cross_entropy(model(xt[idx]), yt[idx]).backward()
            opt.step()
    model.eval()
    with torch.no_grad():
        acc = float((model(xt).argmax(1) == yt).float().mean())
    return model, x, y, acc


def run_zoo(out: Path, name: str) -> tuple[float, float]:
    import torch

    from ssa.analysis.strategies import compare_strategies, write_csv, write_curves_csv
    from ssa.session import Session

    torch.set_num_threads(1)
    model, x, y, acc = train_zoo(name)
    t0 = time.perf_counter()
    first = Session(model, x, labels=y, rule="gradient", batch_size=256)
    sessions = [first, first.with_rule("gradient_x_activation")]
    rows = compare_strategies(sessions, "all", ablation=list(ABLATIONS), curves=True, draws=5, resamples=5,
                              seed=0, per_tap=False)
    write_csv(rows, out / f"{name}-table.csv")
    write_curves_csv(rows, out / f"{name}-curves.csv")
    (out / f"{name}-accuracy.txt").write_text(f"{acc}\n")
    return acc, time.perf_counter() - t0


def zoo_summary(out: Path, name: str, acc: float) -> str:
    table = [r for r in _read(out / f"{name}-table.csv") if r["target"] != "mean"]
    points = _read(out / f"{name}-curves.csv")
    classes = sorted({r["target"] for r in table}, key=int)
    curve: dict[tuple[str, str, str, str], list[dict[str, str]]] = {}
    for p in points:
        curve.setdefault((p["target"], p["rule"], p["selector"], p["ablation"]), []).append(p)
    n = len(classes)
    head = f"### `{name}` ({n} classes, accuracy {acc:.3f} on its training images, which are also the analysed ones)"
    lines = [head, "", "| rule | selector | ablation | CPR graph / random | above | apart at b=3 | necessity apart |",
             "| --- | --- | --- | --- | --- | --- | --- |"]
    for rule in sorted({r["rule"] for r in table}):
        for sel in sorted({r["selector"] for r in table}):
            for a in ABLATIONS:
                rs = [r for r in table if (r["rule"], r["selector"], r["ablation"]) == (rule, sel, a)]
                b3 = [next(p for p in curve[(r["target"], rule, sel, a)] if p["parameter"] == "b"
                           and float(p["value"]) == 3.0) for r in rs]
                lines.append(
                    f"| {rule} | {sel} | {a} | {np.mean([_f(r, 'cpr') for r in rs]):.3f} / "
                    f"{np.mean([_f(r, 'cpr_random') for r in rs]):.3f} | "
                    f"{sum(_curve(curve[(r['target'], rule, sel, a)])[0] for r in rs)}/{n} | "
                    f"{sum(_f(p, 'sufficiency_low') > _f(p, 'sufficiency_random_high') for p in b3)}/{n} | "
                    f"{sum(_f(r, 'necessity_low') > _f(r, 'necessity_random_high') for r in rs)}/{n} |")
    return "\n".join(lines)


def write_doc(text: str) -> None:
    doc = DOC.read_text()
    start, end = doc.index(START) + len(START), doc.index(END)
    DOC.write_text(doc[:start] + "\n" + text + "\n" + doc[end:])


if __name__ == "__main__":
    target = Path(sys.argv[1])
    flags = set(sys.argv[2:])
    if not flags & {"--summarise-only", "--zoo-only"}:
        print(f"ssa evaluate --curves: {run(target):.0f} s wall-clock", flush=True)
    md = summarise(target)
    if flags & {"--zoo", "--zoo-only"}:
        for zoo in ("residual", "se"):
            if "--summarise-only" not in flags:
                accuracy, seconds = run_zoo(target, zoo)
                print(f"{zoo}: training accuracy {accuracy:.3f}, evaluated in {seconds:.0f} s wall-clock", flush=True)
            accuracy = float((target / f"{zoo}-accuracy.txt").read_text())
            md += "\n\n" + zoo_summary(target, zoo, accuracy)
    print(md)
    write_doc(md)
