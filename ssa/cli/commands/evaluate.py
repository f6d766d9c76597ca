"""``ssa evaluate``: faithfulness and stability of the graphs of every rule x selector.

The command builds the :class:`ssa.Session` objects (one per rule, sharing the loaded model and images)
and hands them to :func:`ssa.analysis.strategies.compare_strategies`.
"""

from __future__ import annotations

import argparse
import sys
import warnings
from typing import Any

import numpy as np

from ssa.analysis.ablation import ABLATIONS
from ssa.analysis.curves import BRANCHINGS
from ssa.analysis.grouping import parse_targets
from ssa.analysis.split import check_split
from ssa.analysis.strategies import (
    compare_strategies,
    format_areas,
    format_table,
    write_csv,
    write_curves_csv,
    write_layers_csv,
)
from ssa.cli.commands.common import (
    add_image_args,
    add_model_args,
    add_option_args,
    add_threads_arg,
    labels_from,
    model_options,
    parse_kv,
    preprocess_from,
)
from ssa.core.checks import check_int
from ssa.core.options import RunOptions
from ssa.errors import InvalidInputError, SSAWarning
from ssa.io.paths import check_distinct_outputs, check_output_file
from ssa.plugins import registry
from ssa.session import Session, load_model


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "evaluate", help="compare rules x selectors: ablation faithfulness and bootstrap stability",
        description=(
            "For every class, rule, selector and ablation: build the graph on one half of the class's images, then on "
            "the other half measure its necessity (ablate its neurons) and sufficiency (keep only its neurons), each "
            "beside random neuron sets of the same size per tap, and bootstrap the images to measure how stable the "
            "graph is. Every score comes with a 95%% bootstrap interval. Prints a table and writes it as CSV."
        ),
    )
    add_model_args(p)
    add_image_args(p)
    p.add_argument("--targets", "-t", required=True, help="comma-separated classes, e.g. 0,3, or 'all'")
    p.add_argument("--rules", default=None, help="comma-separated rules (default: every installed rule)")
    p.add_argument("--selectors", default=None, help="comma-separated selectors (default: every installed selector)")
    p.add_argument("--rule-param", action="append", metavar="[RULE.]NAME=VALUE",
                   help="rule parameter; without RULE. it goes to every rule that has it (repeatable)")
    p.add_argument("--selector-param", action="append", metavar="[SELECTOR.]NAME=VALUE",
                   help="selector parameter, e.g. tukey.k=3 or two_sided=true (repeatable)")
    add_option_args(p, RunOptions, ["branching", "stop_at"])
    p.add_argument("--ablation", default="zero", metavar="ABLATION[,ABLATION...]",
                   help="comma-separated ablations, or 'all': zero (default: channels set to 0), mean (their mean map "
                        "over every loaded image), resample (each neuron's value on an image of another class)")
    p.add_argument("--split", default="auto",
                   help="share of each class's images that builds the graph; the others are scored (default auto: "
                        "0.5 when a class has at least 20 images, else no split; 0: no split)")
    p.add_argument("--bootstrap", type=int, default=1000,
                   help="bootstrap replicates of the 95%% intervals (default 1000)")
    p.add_argument("--draws", type=int, default=5, help="random neuron sets per tap (default 5)")
    p.add_argument("--resamples", type=int, default=5, help="bootstrap resamples of the images (default 5; 0: skip)")
    p.add_argument("--seed", type=int, default=0,
                   help="seed of the random sets, resamples, split, donors and bootstrap (default 0)")
    p.add_argument("--out", "-o", default=None, help="write the table here (.csv)")
    p.add_argument("--layers-out", default=None,
                   help="write the necessity and sufficiency of each tap alone here (.csv; measured only then)")
    p.add_argument("--curves", action="store_true",
                   help="also sweep the circuit size (b = 1..8 and each selector's main parameter): the sufficiency "
                        "curve beside random sets, and its CPR-like and CMD-like areas")
    p.add_argument("--curves-out", default=None, help="write the curves' points here (.csv; implies --curves)")
    p.add_argument("--figure", default=None, help="draw the curves here (.png or .svg; implies --curves)")
    add_threads_arg(p)
    p.add_argument("--quiet", "-q", action="store_true", help="no progress lines")
    p.set_defaults(run=run)


def _per_name(items: list[str] | None, names: list[str] | None, kind: str, flag: str) -> dict[str, dict[str, Any]]:
    """``["tukey.k=3", "two_sided=true"]`` -> ``{"tukey": {"k": "3"}, "*": {"two_sided": "true"}}``."""
    out: dict[str, dict[str, Any]] = {}
    for key, value in parse_kv(items, flag).items():
        owner, _, pname = key.rpartition(".")
        if not pname:
            raise InvalidInputError(f"{flag} must look like [{kind}.]name=value, got {key!r}.")
        out.setdefault(owner or "*", {})[pname] = value
    return out


def _resolve(spec: dict[str, dict[str, Any]], names: list[str], kind: str, flag: str) -> dict[str, dict[str, Any]]:
    reg = registry()
    out: dict[str, dict[str, Any]] = {}
    for owner in spec:
        if owner != "*" and owner not in names:
            raise InvalidInputError(f"{flag} names {kind} {owner!r}, which is not evaluated; evaluated: "
                                    f"{', '.join(names)}.")
    for name in names:
        known = getattr(reg.get(kind, name), "parameters", {})
        params = {k: v for k, v in spec.get("*", {}).items() if k in known}
        params.update(spec.get(name, {}))
        if params:
            out[name] = params
    for pname in spec.get("*", {}):
        if not any(pname in getattr(reg.get(kind, n), "parameters", {}) for n in names):
            raise InvalidInputError(f"{flag} {pname!r}: no evaluated {kind} has that parameter (see `ssa plugins`).")
    return out


def parse_ablations(text: str) -> list[str]:
    """``"zero,resample"`` or ``"all"`` -> the ablations, each once (refused: unknown names, repeats)."""
    names = list(ABLATIONS) if text.strip() == "all" else [t.strip() for t in text.split(",") if t.strip()]
    for name in names:
        if name not in ABLATIONS:
            raise InvalidInputError(f"--ablation must list some of {', '.join(ABLATIONS)} (or 'all'), got {name!r}.")
    if not names or len(set(names)) != len(names):
        raise InvalidInputError(f"--ablation must list each ablation once, got {text!r}.")
    return names


def _names(text: str | None, flag: str) -> list[str] | None:
    """``"a,b"`` -> ``["a", "b"]`` (None for nothing); a name listed twice is refused (its rows would be computed
    and written twice)."""
    if text is None:
        return None
    names = [t.strip() for t in text.split(",") if t.strip()]
    twice = sorted({n for n in names if names.count(n) > 1})
    if twice:
        raise InvalidInputError(f"{flag} lists {twice[0]!r} twice, got {text!r}; list each once.")
    return names or None


def run(args: argparse.Namespace) -> int:
    for flag, path in (("--out", args.out), ("--layers-out", args.layers_out), ("--curves-out", args.curves_out)):
        if path is not None:
            check_output_file(path, flag=flag, suffixes=(".csv",))
    if args.figure is not None:
        check_output_file(args.figure, flag="--figure", suffixes=(".png", ".svg"))
    outputs = {"--out": args.out, "--layers-out": args.layers_out, "--curves-out": args.curves_out,
               "--figure": args.figure}
    check_distinct_outputs(outputs)
    curves = bool(args.curves or args.curves_out or args.figure)
    targets = parse_targets(args.targets)  # "all", or distinct class indices
    ablations = parse_ablations(args.ablation)
    split = check_split(args.split)
    check_int("bootstrap", args.bootstrap, 0)
    reg = registry()
    rules = _names(args.rules, "--rules") or reg.names("rule")
    selectors = _names(args.selectors, "--selectors") or reg.names("selector")
    for r in rules:
        reg.get("rule", r)
    for s in selectors:
        reg.get("selector", s)
    rule_params = _resolve(_per_name(args.rule_param, rules, "rule", "--rule-param"), rules, "rule", "--rule-param")
    selector_params = _resolve(_per_name(args.selector_param, selectors, "selector", "--selector-param"), selectors,
                               "selector", "--selector-param")
    network = load_model(args.model, backend=args.backend, device=args.device, **model_options(args))
    first = Session(network, args.images, rule=rules[0], rule_params=rule_params.get(rules[0]),
                    labels=labels_from(args), preprocess=preprocess_from(args), device=args.device,
                    batch_size=args.batch_size)
    first.prepare()
    loaded, loaded_labels = first.images, first.labels  # the mean and the donors: every loaded image
    if targets != "all" and first.labels is not None:  # statistics only of the evaluated classes' images
        first.restrict(np.flatnonzero(np.isin(first.labels, targets)))
    sessions = [first, *(first.with_rule(r, rule_params.get(r)) for r in rules[1:])]  # one model and image set

    def progress(row) -> None:
        if not args.quiet:
            print(f"  class {row.target}  {row.rule:<22} {row.selector:<12} {row.ablation:<9} {row.nodes:>4} nodes  "
                  f"{row.seconds:6.2f} s", file=sys.stderr, flush=True)

    rows = compare_strategies(sessions, targets, selectors=selectors, selector_params=selector_params,
                              branching=args.branching, stop_at=args.stop_at, ablation=ablations,
                              draws=args.draws, resamples=args.resamples, seed=args.seed, split=split,
                              mean_images=loaded, pool_images=loaded, pool_classes=loaded_labels,
                              n_boot=args.bootstrap, per_tap=args.layers_out is not None, curves=curves,
                              progress=progress)
    _warn_single_image(rows)
    print(f"b={args.branching}, {args.draws} random draws, {args.resamples} bootstrap resamples of the graph, "
          f"{args.bootstrap} bootstrap replicates of the 95% intervals [low, high], seed {args.seed}; split "
          f"build/scored images. necessity: class-logit drop with the graph's neurons ablated; sufficiency: share "
          f"of the class logit recovered with only the graph's neurons kept; random: random sets of the same size "
          f"per tap; still class: share of images still classified as the class")
    print(format_table(rows))
    if curves:
        print(f"\ncurves over circuit size (b = {', '.join(map(str, BRANCHINGS))} and each selector's main parameter "
              "at the b above): CPR-like area under the sufficiency curve (higher is better), CMD-like area "
              "under |1 - sufficiency| (lower is better), graph and random sets of the same sizes")
        print(format_areas(rows))
    if args.out:
        print(f"wrote {write_csv(rows, args.out)}")
    if args.layers_out:
        print(f"wrote {write_layers_csv(rows, args.layers_out)}")
    if args.curves_out:
        print(f"wrote {write_curves_csv(rows, args.curves_out)}")
    if args.figure:
        from ssa.viz.figures.common import save_figure  # matplotlib only when a figure is drawn
        from ssa.viz.figures.curves import plot_curves

        points = [p for r in rows for p in r.curve]
        fig = plot_curves(points, title="sufficiency over circuit size, mean over classes")
        print(f"wrote {save_figure(fig, args.figure)}")
    return 0


def _warn_single_image(rows: list) -> None:
    """One warning per class whose graph is built from, or scored on, one image: every bootstrap resample is that
    image, so the intervals have no width and the stability (Jaccard) is 1 whatever the rule and selector."""
    said: set[int] = set()
    for r in rows:
        if r.target in said or min(r.n_build, r.n_scored) >= 2:
            continue
        said.add(r.target)
        warnings.warn(f"class {r.target}: its graph is built from {r.n_build} image(s) and scored on {r.n_scored}; "
                      "with one image the 95% intervals have no width and the stability (jaccard) is 1 whatever the "
                      "rule and selector: give the class more images (or a lower --split).", SSAWarning, stacklevel=2)
