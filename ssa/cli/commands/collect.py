"""``ssa collect``: fill the statistics store for a model and an image set (``--verify``: check and repair it)."""

from __future__ import annotations

import argparse

from ssa.cli.commands.common import (
    add_image_args,
    add_model_args,
    add_option_args,
    labels_from,
    load_network,
    model_spec,
    preprocess_from,
)
from ssa.core.defaults import DEFAULT_RULE
from ssa.core.options import RunOptions
from ssa.engines.statistics import collect, verify_store
from ssa.engines.store import check_store_root, default_store_root
from ssa.errors import InvalidInputError
from ssa.io.folders import load_grouped_images
from ssa.plugins import make_rule
from ssa.session import open_store, prepare_network, store_meta


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("collect", help="collect per-image statistics into a resumable store",
                       description="One forward pass per batch; afterwards `ssa analyse --store` re-runs any class, "
                                   "branching factor or selector from the store without the network. A store is "
                                   "written by one process at a time (a second one is refused).")
    add_model_args(p)
    add_image_args(p)
    add_option_args(p, RunOptions, ["store"], store="store folder (default: $SSA_STORE or .ssa-store)")
    p.add_argument("--rule", action="append", default=None,
                   help="rule(s) to collect for (default gradient_x_activation, the default rule; repeatable)")
    p.add_argument("--verify", action="store_true",
                   help="re-read every batch in full (shapes, truncation, NaN); collect broken ones again and name "
                        "them")
    p.add_argument("--quiet", "-q", action="store_true")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    if args.batch_size < 1:
        raise InvalidInputError(f"--batch-size must be >= 1, got {args.batch_size}.")
    root = check_store_root(args.store or default_store_root(), write=True,
                            flag="--store" if args.store else "the store ($SSA_STORE or .ssa-store)")
    rules = [make_rule(r) for r in (args.rule or [DEFAULT_RULE])]
    forms = []
    for r in rules:
        if r.form is None:
            raise InvalidInputError(f"rule {r.name!r} has no closed form, so nothing can be collected for it; "
                                    "analyse with it directly.")
        forms.append(r.form)
    forms = list(dict.fromkeys(forms))
    network = load_network(model_spec(args))
    images, _ = load_grouped_images(args.images, preprocess=preprocess_from(args), labels=labels_from(args))
    prepare_network(network, images, images_spec=args.images, preprocess=preprocess_from(args))
    if not network.fast_taps():
        raise InvalidInputError("no step of this model has the closed form; `ssa analyse` uses autograd directly.")
    store = open_store(network, images, root)
    with store.writing(store_meta(network, images, args.batch_size)):  # one writer; a second one is refused
        broken = verify_store(network, images, store, forms, args.batch_size) if args.verify else []
        before = {f: store.is_complete(f) for f in forms}
        collect(network, images, forms, args.batch_size, store=store, progress=not args.quiet)
    if args.verify:
        n_batches = -(-images.shape[0] // args.batch_size)
        print(f"verified {n_batches * len(forms)} batch(es) of {', '.join(forms)}: "
              + ("all sound" if not broken else f"{len(broken)} broken, collected again: "
                 + "; ".join(f"{form} batch {i}: {why}" for form, i, why in broken)))
    if not args.quiet:
        steps = network.describe_steps()
        n_fast = sum(v.startswith("fast") for v in steps.values())
        done = " (already complete; --verify re-reads every batch)" if all(before.values()) and not broken else ""
        print(f"store {store.path}: {images.shape[0]} images, {', '.join(forms)}, "
              f"{store.size_bytes() / 2**20:.1f} MiB; {n_fast} of {len(steps)} steps use the closed form{done}")
    return 0
