"""``ssa study study.toml``: every model x class x configuration of a study file, resumable (docs/scale.md)."""

from __future__ import annotations

import argparse
import sys

from ssa.cli.commands.analyse_many import add_scale_args
from ssa.cli.commands.common import add_threads_arg
from ssa.errors import InvalidInputError


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "study", help="run a study file: models x classes x rules x selectors x branching factors",
        description="Writes one graph per (model, class, configuration), the comparisons and the reports into an "
                    "output folder with a manifest. A re-run skips what is done; a run stopped half-way (crash, "
                    "Ctrl-C) goes on where it stopped. See docs/scale.md for the file format.")
    p.add_argument("study", help="the study file (.toml)")
    p.add_argument("--out-dir", default=None, help="the output folder (default: the file's out = \"...\")")
    p.add_argument("--quiet", "-q", action="store_true", help="no progress bar, only the final line")
    add_scale_args(p)
    add_threads_arg(p)
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from ssa.scale.runners import make_runner  # ssa.scale and torch: only when a study runs
    from ssa.scale.study import read_study, run_study

    study = read_study(args.study, out_dir=args.out_dir)
    if args.decode_workers is not None:
        if args.decode_workers < 0:
            raise InvalidInputError(f"--decode-workers must be 0 or more, got {args.decode_workers}.")
        from dataclasses import replace

        study = replace(study, decode_workers=args.decode_workers)
    runner = make_runner(args.ray, args.ray_address, workers=args.workers, device=study.device)
    result = run_study(study, runner, progress=not args.quiet, out=None if args.quiet else sys.stdout)
    run_ = result.run  # a comparison or report skipped for its graphs: run_study said so, once
    kept = run_.kept + sum(len(r.skipped) for r in run_.results)
    print(f"study {study.path.name}: {len(study.models)} model(s) x {len(result.folders) // len(study.models)} "
          f"configuration(s), {run_.jobs} class job(s): {sum(1 for r in run_.results if r.written)} computed, "
          f"{kept} graph(s) kept; {result.summary}")
    if not args.quiet:
        print(run_.rates_line())
    return 0
