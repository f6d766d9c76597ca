"""``ssa explore``: the interactive explorer (one offline HTML file, or a folder for ``ssa serve``)."""

from __future__ import annotations

import argparse
from pathlib import Path

from ssa.analysis.compare import check_graphs, load_graphs
from ssa.cli.commands.common import (
    add_image_args,
    add_model_args,
    check_model_options,
    labels_from,
    load_network,
    model_spec,
    preprocess_from,
)
from ssa.errors import InvalidInputError, OutputError
from ssa.io.folders import load_grouped_images
from ssa.io.paths import ENVIRONMENT_ERRNOS, describe_os_error


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "explore", help="write an interactive explorer of class graphs (HTML)",
        description="A page to walk the class graphs in a browser: the classes in dendrogram order with their "
                    "similarity, each graph layered by tap (pan, zoom, compare with a second class), a neuron panel "
                    "with its numbers, the classes that keep it and (with --model and --images) its reference "
                    "images, the paths from the class logit, and SVG / PNG / JSON export. --out FILE.html writes "
                    "one self-contained file (everything embedded; opens offline); --out DIR/ writes a folder "
                    "whose data load lazily, for `ssa serve DIR`.")
    p.add_argument("graphs", nargs="+", help="graph files written by `ssa analyse` (.json or .graphml)")
    p.add_argument("--out", "-o", default="explorer.html",
                   help="explorer.html (one file, default) or DIR/ (a folder for `ssa serve`)")
    p.add_argument("--title", default=None, help="page title")
    p.add_argument("--weight", default="frequency", choices=("frequency", "binary"),
                   help="bag-of-nodes weight of the clustering (as for `ssa compare`)")
    add_model_args(p, optional="reference images (optional: need the model and the images the graphs were made "
                               "with, and its --taps, --include-input, ... if they were given)")
    m = p.add_argument_group("reference images")
    m.add_argument("--top-k", type=int, default=4, help="reference images per neuron and list (default 4)")
    m.add_argument("--saliency-budget", type=float, default=None, metavar="MIB",
                   help="MiB of saliency maps for 'saliency on a chosen image' (default 8): within it, every image "
                        "of the class; beyond it, the images where the neuron is most relevant; 0: none")
    m.add_argument("--cache", default=None,
                   help="cache folder for reference images (default $SSA_CACHE/explorer or ~/.cache/ssa/explorer)")
    m.add_argument("--no-cache", action="store_true", help="neither read nor write the cache")
    add_image_args(p, required=False)
    p.set_defaults(run=run)


def _is_folder(out: str) -> bool:
    return out.endswith(("/", "\\")) or Path(out).is_dir() or Path(out).suffix == ""


def run(args: argparse.Namespace) -> int:
    # the view modules load matplotlib: imported when the command runs, so the CLI starts without it
    from ssa.viz.explorer import SINGLE_FILE_CLASSES, write_explorer
    from ssa.viz.explorer.references import class_indices, reference_images

    folder = _is_folder(args.out)
    if not folder and Path(args.out).suffix.lower() not in (".html", ".htm"):
        raise InvalidInputError(f"--out must end in .html (one file) or / (a folder), got {args.out!r}.")
    if folder:
        from ssa.viz.explorer.folder import check_explorer_folder

        check_explorer_folder(args.out)  # before any computation: nothing in a refused folder is touched
    if (args.model is None) != (args.images is None):
        raise InvalidInputError("pass both --model and --images (for reference images) or neither.")
    check_model_options(args, "the reference images", **{"--top-k": ("top_k", 4), "--saliency-budget":
                        ("saliency_budget", None), "--cache": ("cache", None), "--no-cache": ("no_cache", False)})
    if args.top_k < 1:
        raise InvalidInputError(f"--top-k must be >= 1, got {args.top_k}.")
    if args.saliency_budget is not None and not args.saliency_budget >= 0:
        raise InvalidInputError(f"--saliency-budget must be >= 0 (MiB), got {args.saliency_budget:g}.")
    graphs, _ = load_graphs(args.graphs)
    names = [Path(p).name for p in args.graphs]
    if len(graphs) >= 2:
        check_graphs(graphs, names)  # before the reference images are computed
    refs = None
    if args.model is not None:
        network = load_network(model_spec(args))
        arr, lab = load_grouped_images(args.images, labels=labels_from(args), preprocess=preprocess_from(args))
        network.prepare(arr)
        other = {str(g.run.model) for g in graphs if g.run.model is not None} - {network.name}
        if other:
            raise InvalidInputError(f"the graphs were made with model {sorted(other)[0]!r}, not {network.name!r}; "
                                    "pass the model the graphs were made with.")
        groups = [class_indices(network, g, arr, lab) for g in graphs]  # checks the images before the long part
        budget = {} if args.saliency_budget is None else {"saliency_budget": int(args.saliency_budget * 2**20)}
        refs = reference_images(network, arr, groups, graphs, top_k=args.top_k, batch_size=args.batch_size,
                                cache_dir=args.cache, use_cache=not args.no_cache, **budget)
        how = f"read from the cache {refs.path}" if refs.cached else (
            f"computed, cached in {refs.path}" if refs.path else "computed")
        print(f"reference images for {len(refs.data)} neurons: {how}")
        print(refs.note)
    try:
        page = write_explorer(args.out, graphs, names, folder=folder, title=args.title, weight=args.weight,
                              references=refs.data if refs is not None else None,
                              saliency_images=refs.images if refs is not None else None,
                              saliency_note=refs.note if refs is not None else None)
    except OSError as exc:  # a write inside the folder (disk full, ulimit -f) names no file: name the --out
        if exc.filename is not None or exc.errno not in ENVIRONMENT_ERRNOS:
            raise
        raise OutputError(describe_os_error(exc, f"cannot write the explorer --out {str(args.out)!r}")) from exc
    print(f"wrote explorer {page.resolve()} ({len(graphs)} class{'es' if len(graphs) != 1 else ''})")
    if folder:
        print(f"open it with: ssa serve {page.parent}")
    elif len(graphs) > SINGLE_FILE_CLASSES:
        print(f"note: {len(graphs)} classes in one file; for a whole study --out DIR/ loads each class lazily "
              "(open it with `ssa serve DIR`).")
    return 0
