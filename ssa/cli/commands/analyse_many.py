"""The several-classes part of ``ssa analyse`` (``--targets``, grouping flags, ``--out-dir``).

Not a sub-command of its own: :mod:`ssa.cli.commands.analyse` adds these flags and hands
the run over to :func:`run_many` when they ask for more than the plain one-class path.
"""

from __future__ import annotations

import argparse
import warnings
from pathlib import Path

from ssa.analysis.grouping import parse_targets
from ssa.api import analyse_many
from ssa.cli.commands.common import api_options, labels_from, model_argument, model_spec, preprocess_from, run_options
from ssa.errors import InvalidInputError, SSAWarning
from ssa.io.folders import class_folders
from ssa.io.paths import check_output_file
from ssa.results import AnalysisResult
from ssa.scale import analyse_to_folder, make_runner

__all__ = ["add_many_args", "wants_many", "run_many", "warn_notes"]


def add_many_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("several classes")
    g.add_argument("--targets", default=None,
                   help="comma-separated classes (0,3,5) or 'all': one graph per class (use instead of --target)")
    g.add_argument("--by-prediction", action="store_true",
                   help="group the images by the model's predicted class instead of by labels")
    g.add_argument("--min-confidence", type=float, default=None,
                   help="keep only images whose predicted probability of the class is >= this (e.g. 0.99)")
    g.add_argument("--max-per-class", "--max-images", type=int, default=None,
                   help="use at most this many images per class (the paper: --min-confidence 0.99 --max-images 100)")
    g.add_argument("--out-dir", default=None,
                   help="write one graph per class as DIR/class-<c>.json, each as soon as it is done; a re-run skips "
                        "the classes already written with the same configuration (docs/scale.md)")
    add_scale_args(p)


def add_scale_args(p: argparse.ArgumentParser) -> None:
    """--ray, --ray-address, --workers, --decode-workers (``ssa analyse --out-dir`` and ``ssa study``)."""
    g = p.add_argument_group("scale-out (docs/scale.md)")
    g.add_argument("--ray", action="store_true",
                   help="run the class jobs on a local Ray cluster started here (pip install 'stepwise-sa[ray]')")
    g.add_argument("--ray-address", default=None, metavar="ADDR",
                   help="run the class jobs on an existing Ray cluster (auto, host:6379, ray://host:10001); the "
                        "output folder must be on storage every node sees")
    g.add_argument("--workers", type=int, default=None,
                   help="Ray workers (default: one per CPU, or per GPU with --device cuda); each loads the model once")
    g.add_argument("--decode-workers", type=int, default=None,
                   help="processes decoding image files in parallel (default 0: in the worker itself)")


def wants_many(args: argparse.Namespace) -> bool:
    """Check --target / --targets (exactly one) and say whether the several-classes path is needed."""
    if (args.target is None) == (args.targets is None):
        raise InvalidInputError(
            "pass exactly one of --target C (one class) and --targets 0,3,5|all (several classes), "
            f"got {'both' if args.target is not None else 'neither'}.")
    if args.targets is not None and args.out is not None:
        raise InvalidInputError("--out writes one graph; with --targets use --out-dir DIR (writes DIR/class-<c>.json).")
    if args.target is not None and args.out_dir is not None and args.out is not None:
        raise InvalidInputError("pass --out FILE or --out-dir DIR, not both.")
    return (args.targets is not None or args.by_prediction or args.min_confidence is not None
            or args.max_per_class is not None or args.out_dir is not None
            or args.ray or args.ray_address is not None or args.workers is not None
            or class_folders(args.images, labels_from(args)) is not None)


def run_many(args: argparse.Namespace) -> int:
    if args.out is not None:
        check_output_file(args.out, flag="--out", suffixes=(".json", ".graphml"))
    if args.out_dir is None:
        for flag, given in (("--ray", args.ray), ("--ray-address", args.ray_address), ("--workers", args.workers)):
            if given:
                raise InvalidInputError(f"{flag} runs class jobs into a folder; add --out-dir DIR (or drop {flag}).")
        return _run_many(args)
    return _run_folder(args)


def _run_folder(args: argparse.Namespace) -> int:
    """Per-class jobs into --out-dir (ssa.scale): each graph written when done, finished classes skipped."""
    decode_workers = args.decode_workers or 0
    if decode_workers < 0:
        raise InvalidInputError(f"--decode-workers must be 0 or more, got {decode_workers}.")
    targets = parse_targets(args.targets) if args.targets is not None else [args.target]
    runner = make_runner(args.ray, args.ray_address, workers=args.workers, device=args.device)
    spec, options = model_spec(args), run_options(args)
    report = analyse_to_folder(spec.source, args.images, targets, args.out_dir, labels=labels_from(args),
                               by_prediction=args.by_prediction, min_confidence=args.min_confidence,
                               max_per_class=args.max_per_class, preprocess=preprocess_from(args), runner=runner,
                               decode_workers=decode_workers, **api_options(spec, options), **spec.options)
    results = sorted(report.results, key=lambda r: r.target)
    written = report.written
    if not args.quiet:
        for r in results:
            for text in r.summaries:
                print(text)
        kept = report.kept + sum(len(r.skipped) for r in results)
        if kept:
            print(f"kept {kept} graph(s) already written with this configuration")
        for path in written:
            print(f"wrote {path}")
        print(report.rates_line())
    else:
        for r in results:
            for note in r.notes:
                warnings.warn(note, SSAWarning, stacklevel=2)
        if written:
            print(f"wrote {len(written)} graph(s) to {Path(written[0]).parent}")
    return 0


def _run_many(args: argparse.Namespace) -> int:
    targets = parse_targets(args.targets) if args.targets is not None else [args.target]
    spec, options = model_spec(args), run_options(args)
    results = analyse_many(model_argument(spec), args.images, targets, labels=labels_from(args),
                           by_prediction=args.by_prediction, min_confidence=args.min_confidence,
                           max_per_class=args.max_per_class, preprocess=preprocess_from(args),
                           **api_options(spec, options))
    written = []
    if args.out is not None and args.target is not None:
        written.append(results[args.target].write(args.out))
    if not args.quiet:
        for res in results.values():
            print(res.summary())
        for path in written:
            print(f"wrote {path}")
    else:
        for res in results.values():
            warn_notes(res)
        if written:
            print(f"wrote {len(written)} graph(s) to {Path(written[0]).parent}")
    return 0


def warn_notes(result: AnalysisResult) -> None:
    """With --quiet the summary is not printed: say why a graph stops as one warning line each."""
    for note in result.notes:
        warnings.warn(f"class {result.target}: {note}", SSAWarning, stacklevel=2)
