"""``ssa figures``: the paper's figures for one class graph (needs the model and the images)."""

from __future__ import annotations

import argparse
from pathlib import Path

from ssa.analysis.compare import check_graph_images, check_graph_network, load_graphs, same_model, same_run
from ssa.analysis.grouping import images_for_graph
from ssa.cli.commands.common import (
    add_image_args,
    add_model_args,
    labels_from,
    load_network,
    model_spec,
    preprocess_from,
)
from ssa.engines.store import images_hash
from ssa.errors import InvalidInputError
from ssa.io.folders import load_grouped_images
from ssa.io.graphs import read_graph
from ssa.io.outdir import FIGURES_OUTPUTS, OutputDir
from ssa.session import prepare_network


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "figures", help="draw the paper's figures for a class graph",
        description="Layered dependency graph (Fig. 3), outlier frequency with power-law fit (Fig. 2a), relevance "
                    "rows across images (Fig. 2b), saliency of a neuron w.r.t. the input (Fig. 4b,c) and its "
                    "activation maps (Fig. 5), for a graph written by `ssa analyse`.")
    add_model_args(p)
    add_image_args(p)
    p.add_argument("--graph", "-g", required=True, help="the class graph (.json or .graphml) from `ssa analyse`")
    p.add_argument("--out-dir", "-o", required=True, help="write the figures here")
    p.add_argument("--format", default="png", choices=("png", "svg"), help="figure format (default png)")
    p.add_argument("--neuron", default=None, metavar="TAP:N",
                   help="draw frequency/relevance/saliency/activations for this neuron only (a graph node id); "
                        "default: the most frequent neuron of every layer (maps: of the highest conv layer)")
    p.add_argument("--n-images", type=int, default=8, help="images shown in the saliency and activation grids")
    p.add_argument("--compare", nargs="*", default=(), metavar="GRAPH",
                   help="graphs of other classes: nodes are coloured by how many of the graphs keep them")
    p.add_argument("--by-prediction", action="store_true", default=None,
                   help="choose the class's images by prediction (default: as the graph was made)")
    p.add_argument("--min-confidence", type=float, default=None, help="override the graph's confidence threshold")
    p.add_argument("--max-per-class", type=int, default=None, help="override the graph's image cap")
    p.add_argument("--allow-mixed", action="store_true",
                   help="also accept a graph (and --compare graphs) made with different rules, selectors, parameters, "
                        "branching factors or image sets (another model is always refused)")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    if args.n_images < 1:
        raise InvalidInputError(f"--n-images must be >= 1, got {args.n_images}.")
    # checked first; a run's old figures are replaced, all or (when it fails or is interrupted) none
    with OutputDir(args.out_dir, "figures", FIGURES_OUTPUTS, all_or_nothing=True):
        return _run(args)


def _run(args: argparse.Namespace) -> int:
    # the view modules load matplotlib: imported when the command runs, so the CLI starts without it
    from ssa.viz.figures import parse_node, write_class_figures

    graph = read_graph(args.graph)
    others, other_names = load_graphs(args.compare) if args.compare else ([], [])
    kept_by = None
    if others:  # of the same model, and (unless --allow-mixed) of the same run
        names = [Path(args.graph).name, *(Path(p).name for p in args.compare)]
        same_model([graph, *others], names)
        if not args.allow_mixed:
            same_run([graph, *others], names)
        # colour: how many of the graphs (this one and the others) keep each neuron
        kept_by = {n: 1 + sum(n in g for g in others) for n in graph.nodes}
    network = load_network(model_spec(args))
    arr, lab = load_grouped_images(args.images, labels=labels_from(args), preprocess=preprocess_from(args))
    prepare_network(network, arr, images_spec=args.images, preprocess=preprocess_from(args))
    check_graph_network(graph, network, Path(args.graph).name)
    check_graph_images(graph, images_hash(arr), Path(args.graph).name, allow_mixed=args.allow_mixed)
    images = images_for_graph(network, graph, arr, labels=lab, by_prediction=args.by_prediction,
                              min_confidence=args.min_confidence, max_per_class=args.max_per_class)
    neuron = parse_node(args.neuron) if args.neuron else None
    if neuron is not None and f"{neuron[0]}:{neuron[1]}" not in graph:
        raise InvalidInputError(f"--neuron {args.neuron} is not a node of the graph; pick one of its nodes "
                                "(see the graph file or `ssa analyse` output).")
    made = write_class_figures(network, graph, images, Path(args.out_dir), fmt=args.format, kept_by=kept_by,
                               n_graphs=1 + len(others), steps="all", neuron=neuron, n_images=args.n_images,
                               batch_size=args.batch_size)
    for kind, caption, path in made:
        print(f"{kind:<12} {path}  ({caption})")
    return 0
