"""Argument helpers shared by the sub-commands."""

from __future__ import annotations

import argparse
from typing import Any

from ssa.errors import InvalidInputError
from ssa.io.images import Preprocess

__all__ = ["check_folder_options", "FOLDER_OPTIONS", "add_engine_args", "engine_options", "add_model_args", "add_image_args", "add_method_args", "parse_kv", "parse_ints", "model_options",
           "preprocess_from", "method_options"]


def parse_kv(items: list[str] | None, what: str) -> dict[str, Any]:
    """``["k=1.5", "two_sided=true"]`` -> ``{"k": "1.5", "two_sided": "true"}`` (plugins convert types)."""
    out: dict[str, Any] = {}
    for item in items or []:
        for part in item.split(","):
            if not part.strip():
                continue
            if "=" not in part:
                raise InvalidInputError(f"{what} must look like name=value, got {part!r}.")
            k, v = part.split("=", 1)
            out[k.strip()] = v.strip()
    return out


def parse_ints(text: str | None, what: str, count: int | None = None, minimum: int | None = None
               ) -> tuple[int, ...] | None:
    """``"3,224,224"`` -> ``(3, 224, 224)``; ``count`` values exactly, each >= ``minimum`` when given."""
    if text is None:
        return None
    try:
        vals = tuple(int(v) for v in text.replace("x", ",").split(",") if v.strip())
    except ValueError:
        raise InvalidInputError(f"{what} must be comma-separated integers, got {text!r}.") from None
    if not vals:
        raise InvalidInputError(f"{what} names no number, got {text!r}.")
    if count is not None and len(vals) != count:
        raise InvalidInputError(f"{what} must have {count} integers, got {text!r}.")
    if minimum is not None and any(v < minimum for v in vals):
        bad = next(v for v in vals if v < minimum)
        raise InvalidInputError(f"{what} must hold integers >= {minimum}, got {bad} in {text!r}.")
    return vals


def _floats(text: str | None, what: str) -> tuple[float, ...]:
    if not text:
        return ()
    try:
        return tuple(float(v) for v in text.split(","))
    except ValueError:
        raise InvalidInputError(f"{what} must be comma-separated numbers, got {text!r}.") from None


def add_model_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("model", help="model: file.onnx, file.pt2, path/file.py:attr, package.module:attr, or 'digits'")
    p.add_argument("--device", default="cpu", help="cpu (default), cuda, cuda:N")
    p.add_argument("--backend", default=None, help="force a backend (see `ssa plugins`)")
    p.add_argument("--name", default=None,
                   help="the model's display name in graphs and summaries (default: the built-in name for a built-in "
                        "model's weights, else the class name or file stem; graphs identify models by content hash)")
    p.add_argument("--taps", default=None, help="comma-separated tap names to use instead of the default taps")
    p.add_argument("--include-input", action="store_true", help="add the input image's channels as the last tap")
    p.add_argument("--channel-axis", action="append", metavar="TAP=AXIS",
                   help="override the channel axis of a tap (repeatable)")
    p.add_argument("--output-index", type=int, default=None, help="which model output holds the logits")
    p.add_argument("--parity-tolerance", type=float, default=None,
                   help="ONNX: largest relative difference allowed between onnxruntime and the converted model "
                        "(default 1e-3 on CPU, 1e-2 on CUDA)")


def _channel_axes(items: list[str] | None) -> dict[str, int] | None:
    if not items:
        return None
    out = {}
    for tap, axis in parse_kv(items, "--channel-axis").items():
        try:
            out[tap] = int(axis)
        except ValueError:
            raise InvalidInputError(f"--channel-axis must look like TAP=AXIS with an integer axis (e.g. "
                                    f"{tap or 'features.1'}=1), got {tap}={axis}.") from None
    return out


def model_options(args: argparse.Namespace) -> dict[str, Any]:
    axes = _channel_axes(args.channel_axis)
    out = {
        "taps": [t for t in args.taps.split(",") if t] if args.taps else None,
        "include_input": bool(args.include_input),
        "channel_axes": axes,
        "output_index": args.output_index,
    }
    if getattr(args, "name", None):
        out["name"] = args.name
    if getattr(args, "parity_tolerance", None) is not None:
        if not _is_onnx(args.model):
            raise InvalidInputError("--parity-tolerance applies to ONNX models only; drop it for this model.")
        out["parity_tolerance"] = args.parity_tolerance
    return out


def _is_onnx(model: str) -> bool:
    return isinstance(model, str) and model.lower().endswith(".onnx")


def add_image_args(p: argparse.ArgumentParser, required: bool = True) -> None:
    g = p.add_argument_group("images")
    g.add_argument("--images", required=required,
                   help=".npy array shaped and scaled for the model, a folder of PNG/JPEG files, or 'digits'")
    g.add_argument("--labels", default=None, help=".npy of integer labels, one per image (keeps the target's images)")
    g.add_argument("--batch-size", type=int, default=32, help="images per forward pass (default 32)")
    g.add_argument("--preprocess", default=None,
                   help="folders: a preset (torchvision, keras-vgg16, 0-1, 0-255) or a .json/.toml config; "
                        "the layout is read from an ONNX model's input (see docs/onnx.md)")
    g.add_argument("--resize", default=None, help="folders: resize to H,W")
    g.add_argument("--scale", type=float, default=None, help="folders: multiply 0-255 pixels by this (default 1/255)")
    g.add_argument("--mean", default=None, help="folders: per-channel mean, comma-separated")
    g.add_argument("--std", default=None, help="folders: per-channel std, comma-separated")
    g.add_argument("--layout", default=None, choices=("nchw", "nhwc"), help="folders: tensor layout (default nchw)")
    g.add_argument("--channels", type=int, default=None, choices=(1, 3),
                   help="folders: 1 (grayscale) or 3 (RGB, the default)")
    g.add_argument("--bgr", action="store_true", default=None, help="folders: BGR channel order")


#: options that only apply to folders of image files (``--images DIR``), with their argparse names
FOLDER_OPTIONS = {"--preprocess": "preprocess", "--resize": "resize", "--scale": "scale", "--mean": "mean",
                  "--std": "std", "--layout": "layout", "--channels": "channels", "--bgr": "bgr"}


def _given_folder_options(args: argparse.Namespace) -> list[str]:
    return [flag for flag, dest in FOLDER_OPTIONS.items() if getattr(args, dest, None) is not None]


def check_folder_options(args: argparse.Namespace) -> None:
    """Refuse image options that would be ignored: folder options for a .npy array or the built-in digits,
    and the simple folder options beside a --preprocess preset or config (which sets all of them)."""
    given = _given_folder_options(args)
    if not given:
        return
    images = getattr(args, "images", None)
    from pathlib import Path

    if images is None:
        raise InvalidInputError(f"{given[0]} applies to --images folders of image files, and no --images was given; "
                                f"drop {given[0]} or pass --images DIR.")
    if images == "digits" or not Path(images).is_dir():
        what = "the built-in digits" if images == "digits" else f"{images!r}, an array"
        raise InvalidInputError(f"{given[0]} applies to folders of image files, but --images is {what} already "
                                f"shaped and scaled for the model; drop {given[0]} (or pass a folder of PNG/JPEG files).")
    if "--preprocess" in given and len(given) > 1:
        other = next(f for f in given if f != "--preprocess")
        raise InvalidInputError(f"{other} cannot be combined with --preprocess, which sets the whole preprocessing; "
                                f"drop {other}, or write it into a .json/.toml preprocessing config (docs/onnx.md).")


def preprocess_from(args: argparse.Namespace) -> Preprocess:
    check_folder_options(args)
    if getattr(args, "preprocess", None):
        from ssa.io.preprocess import resolve_preprocess

        shape = None
        if _is_onnx(args.model):
            from pathlib import Path

            if Path(args.model).is_file():
                try:
                    from ssa_onnx import input_shape_of

                    shape = input_shape_of(args.model)
                except Exception:  # noqa: BLE001 - loading reports a bad file with its own message
                    shape = None
        return resolve_preprocess(args.preprocess, input_shape=shape)
    resize = parse_ints(args.resize, "--resize", 2, minimum=1)
    default = Preprocess()
    return Preprocess(resize=resize, scale=default.scale if args.scale is None else args.scale,  # type: ignore[arg-type]
                      mean=_floats(args.mean, "--mean"), std=_floats(args.std, "--std"),
                      layout=args.layout or default.layout,
                      channels=default.channels if args.channels is None else args.channels, bgr=bool(args.bgr))


def add_method_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("method")
    g.add_argument("--branching", "-b", type=int, default=3, help="neurons kept per upper neuron (default 3)")
    g.add_argument("--rule", default=None,
                   help="relevance rule (default gradient_x_activation; see `ssa plugins` and README, 'Which strategy?')")
    g.add_argument("--rule-param", action="append", metavar="NAME=VALUE", help="rule parameter (repeatable)")
    g.add_argument("--selector", default=None, help="outlier selector (default mad; see `ssa plugins`)")
    g.add_argument("--preset", default=None, choices=("paper",),
                   help="paper: the paper's exact configuration (rule gradient, Tukey k=1.5, positive outliers only); "
                        "replaces --rule, --selector and their parameters")
    g.add_argument("--selector-param", action="append", metavar="NAME=VALUE",
                   help="selector parameter, e.g. k=3 or two_sided=true (repeatable)")
    g.add_argument("--stop-at", default=None, help="lowest tap to expand down to")


def method_options(args: argparse.Namespace) -> dict[str, Any]:
    from ssa.core.defaults import resolve_method

    rule, rule_params, selector, selector_params = resolve_method(
        args.preset, args.rule, parse_kv(args.rule_param, "--rule-param"), args.selector,
        parse_kv(args.selector_param, "--selector-param"))
    return {"branching": args.branching, "rule": rule, "rule_params": rule_params, "selector": selector,
            "selector_params": selector_params, "stop_at": args.stop_at}


def add_engine_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("engine")
    g.add_argument("--engine", default="auto", choices=("auto", "fast", "autograd"),
                   help="auto (default): exact closed form where a step has one, autograd elsewhere")
    g.add_argument("--store", default=None,
                   help="statistics store folder (default: $SSA_STORE or .ssa-store when it holds this model and "
                        "image set; see `ssa collect`)")


def engine_options(args: argparse.Namespace) -> dict[str, Any]:
    import os

    from ssa.engines.store import check_store_root, default_store_root

    if args.store is not None:  # asked for: fill what it lacks
        check_store_root(args.store, flag="--store")
        return {"engine": args.engine, "store": args.store, "store_mode": "fill"}
    if os.environ.get("SSA_STORE"):
        check_store_root(default_store_root(), flag="SSA_STORE")
    if default_store_root().is_dir():  # used when `ssa collect` filled it for this model and images
        return {"engine": args.engine, "store": str(default_store_root()), "store_mode": "read"}
    return {"engine": args.engine, "store": None}
