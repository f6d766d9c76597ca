"""``ssa report``: one self-contained HTML file with the graphs, their comparison and figures."""

from __future__ import annotations

import argparse

from ssa.analysis.compare import load_graphs
from ssa.cli.commands.common import (
    add_image_args,
    add_model_args,
    check_model_options,
    labels_from,
    model_options,
    preprocess_from,
)
from ssa.errors import InvalidInputError
from ssa.io.paths import check_output_file


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "report", help="write a self-contained HTML report of class graphs",
        description="Run parameters, per-class dependency graphs with their layer tables, the comparison "
                    "(clustermap, Jaccard similarity per layer, shared sub-graphs) and per-neuron tables, in one "
                    "HTML file with the figures embedded. With --model and --images, each class also gets the "
                    "outlier-frequency plot, relevance heat map, saliency and activation maps.")
    p.add_argument("graphs", nargs="+", help="graph files written by `ssa analyse` (.json or .graphml)")
    p.add_argument("--out", "-o", default="ssa-report.html", help="the HTML file to write (default ssa-report.html)")
    p.add_argument("--title", default=None, help="report title")
    p.add_argument("--format", default="png", choices=("png", "svg"),
                   help="figures as base64 PNG <img> (default) or inline SVG")
    p.add_argument("--weight", default="frequency", choices=("frequency", "binary"), help="bag-of-nodes weight")
    p.add_argument("--n-images", type=int, default=8, help="images shown in the saliency and activation grids")
    p.add_argument("--explorer", default=None, metavar="PAGE",
                   help="link the report to this explorer (written by `ssa explore --out PAGE`)")
    p.add_argument("--evaluation", default=None, metavar="TABLE.csv",
                   help="add a faithfulness section from this `ssa evaluate --out` table (necessity and sufficiency "
                        "bars per class)")
    p.add_argument("--curves", default=None, metavar="CURVES.csv",
                   help="add the curves over circuit size from this `ssa evaluate --curves-out` file")
    p.add_argument("--allow-mixed", action="store_true",
                   help="also accept graphs made with different rules, selectors, parameters, branching factors or "
                        "image sets (graphs of different models are always refused)")
    add_model_args(p, optional="model (optional: adds the figures that need the network; with its --taps, "
                               "--include-input, ... if the graphs were made with them)")
    add_image_args(p, required=False)
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    # the view modules load matplotlib: imported when the command runs, so the CLI starts without it
    from ssa.viz.report import write_report

    if args.n_images < 1:
        raise InvalidInputError(f"--n-images must be >= 1, got {args.n_images}.")
    check_model_options(args, "the figures that need the network", **{"--n-images": ("n_images", 8)})
    check_output_file(args.out, flag="--out", suffixes=(".html", ".htm"))
    graphs, names = load_graphs(args.graphs)
    path = write_report(args.out, graphs, names, model=args.model, images=args.images, labels=labels_from(args),
                        preprocess=preprocess_from(args), fmt=args.format, title=args.title, weight=args.weight,
                        n_images=args.n_images, batch_size=args.batch_size, device=args.device,
                        backend=args.backend, model_options=model_options(args) if args.model else None,
                        explorer=args.explorer, allow_mixed=args.allow_mixed, evaluation=args.evaluation,
                        curves=args.curves)
    print(f"wrote report {path.resolve()}")
    return 0
