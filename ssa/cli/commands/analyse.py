"""``ssa analyse``: the dependency graph of a class."""

from __future__ import annotations

import argparse

from ssa.api import analyse
from ssa.cli.commands.analyse_many import add_many_args, run_many, wants_many, warn_notes
from ssa.cli.commands.common import (
    add_engine_args,
    add_image_args,
    add_method_args,
    add_model_args,
    add_threads_arg,
    api_options,
    labels_from,
    model_argument,
    model_spec,
    preprocess_from,
    run_options,
)
from ssa.io.paths import check_output_file


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("analyse", aliases=["analyze"], help="build the dependency graph of a class",
                       description="Walk the network top-down from a class logit and write its dependency graph.")
    add_model_args(p)
    add_image_args(p)
    p.add_argument("--target", "-t", type=int, default=None, help="class index (into the logits); or use --targets")
    add_many_args(p)  # --targets, --by-prediction, --min-confidence, --max-per-class, --out-dir
    add_method_args(p)
    add_engine_args(p)
    add_threads_arg(p)
    p.add_argument("--out", "-o", default=None, help="write the graph here (.json node-link or .graphml)")
    p.add_argument("--quiet", "-q", action="store_true", help="no progress bar, no summary")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    if wants_many(args):  # several classes, or images grouped by class folders / predictions
        return run_many(args)
    if args.out is not None:
        check_output_file(args.out, flag="--out", suffixes=(".json", ".graphml"))
    spec, options = model_spec(args), run_options(args)
    result = analyse(model_argument(spec), args.images, args.target, labels=labels_from(args),
                     preprocess=preprocess_from(args), **api_options(spec, options))
    if args.out:
        path = result.write(args.out)
    if not args.quiet:
        print(result.summary())
        if args.out:
            print(f"wrote {path}")
    else:
        warn_notes(result)
    return 0

