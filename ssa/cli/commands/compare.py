"""``ssa compare``: cluster class graphs, per-layer Jaccard, shared sub-graph, tables."""

from __future__ import annotations

import argparse
from pathlib import Path

from ssa.analysis.compare import compare, identical_graphs_quietly, load_graphs
from ssa.errors import InvalidInputError
from ssa.io.graphs import write_graph
from ssa.io.outdir import COMPARE_OUTPUTS, OutputDir


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "compare", help="compare the dependency graphs of several classes",
        description="Bag-of-nodes vectors, Ward clustering with cosine distance (clustermap, dendrogram), "
                    "pairwise Jaccard similarity per layer, the shared sub-graph, and per-neuron tables.")
    p.add_argument("graphs", nargs="+", help="graph files written by `ssa analyse` (.json or .graphml), 2 or more")
    p.add_argument("--out-dir", "-o", default=None,
                   help="write figures, CSV tables and shared.json here (default: only print the summary)")
    p.add_argument("--weight", default="frequency", choices=("frequency", "binary"),
                   help="bag-of-nodes weight: frequency / n_images (default) or 1 per kept neuron")
    p.add_argument("--shared", default=None,
                   help="classes (targets, comma-separated) whose shared sub-graph to write (default: all graphs)")
    p.add_argument("--format", default="png", choices=("png", "svg"), help="figure format (default png)")
    p.add_argument("--allow-mixed", action="store_true",
                   help="also accept graphs made with different rules, selectors, parameters, branching factors or "
                        "image sets (graphs of different models are always refused)")
    p.set_defaults(run=run)


def _shared_indices(text: str | None, cmp) -> list[int] | None:
    if text is None:
        return None
    targets = [g.run.target for g in cmp.graphs]
    out = []
    for part in text.split(","):
        part = part.strip()
        if not part:
            continue
        if not part.isdigit() or int(part) not in targets:
            raise InvalidInputError(f"--shared must list classes of the given graphs ({', '.join(map(str, targets))}), "
                                    f"got {part!r}.")
        out.append(targets.index(int(part)))
    if len(out) < 2:
        raise InvalidInputError(f"--shared needs at least 2 classes, got {text!r}.")
    return out


def run(args: argparse.Namespace) -> int:
    if not args.out_dir:
        return _run(args)
    # checked first; a run's old files are replaced, all or (when it fails or is interrupted) none
    with OutputDir(args.out_dir, "compare", COMPARE_OUTPUTS, all_or_nothing=True):
        return _run(args)


def _run(args: argparse.Namespace) -> int:
    # the view modules load matplotlib: imported when the command runs, so the CLI starts without it
    from ssa.viz import figures

    graphs, names = load_graphs(args.graphs)
    cmp = compare(graphs, weight=args.weight, names=[Path(p).name for p in args.graphs], allow_mixed=args.allow_mixed)
    which = _shared_indices(args.shared, cmp)
    shared = cmp.shared(which)
    labels = list(cmp.labels)
    print(f"{len(labels)} graphs of {cmp.model}, {len(cmp.nodes)} distinct neurons (weight: {cmp.weight})")
    print("cluster order: " + ", ".join(labels[i] for i in cmp.order))
    print("most similar (cosine): " + "; ".join(f"{a} ~ {b} {s:.2f}" for a, b, s in cmp.closest_pairs(3)))
    print("mean Jaccard per layer: " + ", ".join(f"{tap} {m:.2f}" for tap, m in cmp.mean_jaccard().items()))
    who = "all graphs" if which is None else ", ".join(labels[i] for i in which)
    print(f"shared sub-graph of {who}: {shared.number_of_nodes()} neurons, {shared.number_of_edges()} edges")
    if args.out_dir:
        out = Path(args.out_dir)
        fmt = args.format
        with identical_graphs_quietly():
            written = [figures.save_figure(figures.plot_clustermap(cmp), out / f"clustermap.{fmt}"),
                       figures.save_figure(figures.plot_clustermap(cmp, kind="nodes"), out / f"clustermap-nodes.{fmt}"),
                       figures.save_figure(figures.plot_dendrogram(cmp), out / f"dendrogram.{fmt}")]
        written += cmp.write_tables(out)
        written.append(write_graph(shared, out / "shared.json"))
        if shared.number_of_nodes():
            fig = figures.plot_graph(shared, title=f"shared sub-graph of {who}")
            written.append(figures.save_figure(fig, out / f"shared.{fmt}"))
        print(f"wrote {len(written)} files to {out}: " + ", ".join(p.name for p in written))
    return 0

