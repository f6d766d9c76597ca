"""``ssa check``: what the analysis will see in a model (taps, DAG, engines, and what its backend adds)."""

from __future__ import annotations

import argparse
import time

import numpy as np

from ssa.cli.commands.common import (
    add_image_args,
    add_model_args,
    check_folder_options,
    labels_from,
    load_network,
    model_spec,
    parse_ints,
    preprocess_from,
)
from ssa.core.capabilities import (
    SupportsCheckDetails,
    SupportsCheckReport,
    SupportsClosedFormSummary,
    SupportsDefaultInputShape,
)
from ssa.errors import InvalidInputError
from ssa.io.folders import load_grouped_images
from ssa.session import prepare_network


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("check", help="show the taps, the tap DAG and which computation each step uses",
                       description="Load a model and run it once (on --images, or on random inputs of --input-shape), "
                                   "then show what an analysis will see: the taps in execution order with their "
                                   "shapes and channel axes, the tap DAG (each tap's parent taps), and for every step "
                                   "whether the exact one-pass form or autograd computes it. A backend may add its "
                                   "own lines (ONNX files: the parity with onnxruntime and how the logits are read).")
    add_model_args(p)
    add_image_args(p, required=False)
    p.add_argument("--input-shape", default=None,
                   help="per-image input shape, e.g. 3,224,224 (without --images; default: the shape the model "
                        "declares, where it declares one)")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    check_folder_options(args)
    if args.images and args.input_shape is not None:  # before, --input-shape was ignored without a word
        raise InvalidInputError(f"--input-shape {args.input_shape} applies without --images (the images give the "
                                "shape); drop one of them.")
    start = time.perf_counter()
    network = load_network(model_spec(args))
    if isinstance(network, SupportsCheckDetails) and not network.stages.seconds:  # the backend did not time it
        network.stages.add("loading", time.perf_counter() - start)
    if args.images:
        images, _ = load_grouped_images(args.images, preprocess=preprocess_from(args), labels=labels_from(args))
        images = images[: max(1, min(len(images), args.batch_size))]
    else:
        shape = parse_ints(args.input_shape, "--input-shape", minimum=1)
        if shape is None and isinstance(network, SupportsDefaultInputShape):
            shape = network.default_input_shape
        if shape is None:
            raise InvalidInputError("pass --images or --input-shape C,H,W so the model can be run once.")
        images = np.random.default_rng(0).standard_normal((2, *shape)).astype(np.float32)
    taps = prepare_network(network, images, images_spec=args.images, preprocess=preprocess_from(args) if args.images
                           else None)
    if isinstance(network, SupportsCheckReport):
        print(network.check_report(images))
    print(f"model {network.name}: {len(taps)} taps")
    for t in sorted(taps, key=lambda t: -t.order):
        parents = ", ".join(t.parents) or "-"
        print(f"  [{t.order:>3}] {t.name:<28} {t.op:<12} shape {str(t.shape):<18} channel axis {t.channel_axis}"
              f"  <- {parents}")
    print("steps:")
    for step, how in network.describe_steps().items():
        print(f"  {step:<48} {how}")
    if isinstance(network, SupportsClosedFormSummary):
        print(network.closed_form_summary())
    if isinstance(network, SupportsCheckDetails):
        for line in network.check_details(images):
            print(line)
    return 0
