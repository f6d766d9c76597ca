"""Argument helpers shared by the sub-commands, and the two builders of a run's options.

:func:`model_spec` turns the model arguments (:func:`add_model_args`, with the options the backends
register through ``ssa_register_model_options``) into a :class:`~ssa.core.options.ModelSpec`;
:func:`run_options` turns the method and engine arguments into a :class:`~ssa.core.options.RunOptions`.
Nothing here knows any one backend.
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ssa.core.capabilities import SupportsDeclaredInputShape
from ssa.core.interfaces import Network
from ssa.core.options import ModelSpec, RunOptions, option_fields, option_flag, option_values
from ssa.engines.store import check_store_root, default_store_root
from ssa.errors import InvalidInputError
from ssa.io.classmap import class_map
from ssa.io.folders import folder_class_map
from ssa.io.images import Preprocess
from ssa.io.preprocess import resolve_preprocess
from ssa.plugins import model_options as registered_model_options
from ssa.plugins import registry
from ssa.session import load_model

__all__ = ["check_folder_options", "FOLDER_OPTIONS", "add_option_args", "add_engine_args", "add_threads_arg",
           "add_model_args", "add_image_args", "add_method_args", "parse_kv", "parse_ints", "model_spec",
           "run_options", "load_network", "model_options", "api_options", "model_argument", "preprocess_from",
           "labels_from"]


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
            k, v = k.strip(), v.strip()
            if k in out and out[k] != v:  # the last would win without a word
                raise InvalidInputError(f"{what} gives {k!r} twice, {out[k]} and {v}; give each name once.")
            out[k] = v
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


def add_option_args(group: Any, cls: type, names: Sequence[str], **help: str) -> None:
    """Add the options of ``cls``'s fields ``names`` (:class:`ModelSpec` or :class:`RunOptions`) to ``group``:
    the flag, the default, the type and the help text all come from the field (``help`` overrides a text
    where a command means something narrower)."""
    every = option_fields(cls)
    for name in names:
        f = every[name]
        flag = option_flag(f)
        if flag is None:
            raise ValueError(f"{cls.__name__}.{name} has no command-line option")
        cli = {k: v for k, v in f.metadata["cli"].items() if k not in ("flag", "short")}
        flags = [flag] + ([f.metadata["cli"]["short"]] if "short" in f.metadata["cli"] else [])
        if flag.startswith("-"):
            cli["default"] = f.default
        group.add_argument(*flags, help=help.get(name, f.metadata["help"]), **cli)


def add_model_args(parser: argparse.ArgumentParser, optional: str | None = None) -> None:
    """The model and how to load it (read back by :func:`model_spec`), with every backend's own options.

    ``optional``: the title of a group of options with ``--model`` (default None), for commands that load a
    model only for some of their outputs; else the model is the first positional argument.
    """
    p: Any = parser
    if optional is None:
        add_option_args(p, ModelSpec, ["source"])
    else:
        p = parser.add_argument_group(optional)
        p.add_argument("--model", default=None, help="the model the graphs were made with (as for `ssa analyse`)")
    add_option_args(p, ModelSpec, ["device", "backend", "name", "taps", "include_input", "channel_axes", "tokens",
                                   "output_index"])
    for opt in registered_model_options():  # the backends' own (ssa_register_model_options)
        if opt.type is None:
            p.add_argument(opt.flag, dest=opt.dest, action="store_const", const=True, default=None,
                           help=f"{opt.models}: {opt.help}")
        else:
            p.add_argument(opt.flag, dest=opt.dest, type=opt.type, default=None, metavar=opt.metavar,
                           help=f"{opt.models}: {opt.help}")


#: the options of :func:`add_model_args` besides the model itself (field names of :class:`ModelSpec`)
_MODEL_OPTIONS = ("device", "backend", "name", "taps", "include_input", "channel_axes", "tokens", "output_index")


def check_model_options(args: argparse.Namespace, what: str, **extra: Any) -> None:
    """Refuse model options (and ``extra``: ``{flag: (dest, default)}``, the command's own options that need the
    model) given without ``--model``, where they would be ignored without a word. ``what``: what the model adds."""
    if getattr(args, "model", None) is not None:
        return
    every = option_fields(ModelSpec)
    given = [(option_flag(every[n]), n if n != "channel_axes" else "channel_axis", every[n].default)
             for n in _MODEL_OPTIONS]
    given += [(opt.flag, opt.dest, None) for opt in registered_model_options()]
    given += [(flag, dest, default) for flag, (dest, default) in extra.items()]
    for flag, dest, default in given:
        if getattr(args, dest, default) != default:
            raise InvalidInputError(f"{flag} applies with --model ({what}), and no --model was given; drop {flag}, "
                                    "or pass --model and --images.")


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


def _backend_options(args: argparse.Namespace) -> dict[str, Any]:
    """The backends' own options given on the command line; refused for a model another backend loads."""
    given = [opt for opt in registered_model_options() if getattr(args, opt.dest, None) is not None]
    if not given:
        return {}
    backend = registry().backend_for(args.model, args.backend).name
    for opt in given:
        if opt.backend != backend:
            raise InvalidInputError(f"{opt.flag} applies to {opt.models} only (the {opt.backend} backend), and the "
                                    f"{backend} backend loads {args.model!r}; drop it for this model.")
    return {opt.option: getattr(args, opt.dest) for opt in given}


def model_spec(args: argparse.Namespace) -> ModelSpec:
    """The :class:`ModelSpec` of the arguments :func:`add_model_args` added (checked)."""
    return ModelSpec(
        source=args.model, backend=args.backend, device=args.device,
        taps=tuple(t for t in args.taps.split(",") if t) if args.taps else None,
        include_input=bool(args.include_input), channel_axes=_channel_axes(args.channel_axis),
        tokens=args.tokens, output_index=args.output_index, name=getattr(args, "name", None) or None,
        options=_backend_options(args))


def load_network(spec: ModelSpec) -> Network:
    """The network ``spec`` describes, loaded by its backend (not prepared)."""
    return load_model(spec.source, backend=spec.backend, device=spec.device, **spec.load_options())


def model_options(args: argparse.Namespace) -> dict[str, Any]:
    """The keyword options of :func:`ssa.load_model` (and of the functions that load a model with them) that
    the model arguments give: :meth:`ModelSpec.load_options` of :func:`model_spec`."""
    return model_spec(args).load_options()


def add_image_args(p: argparse.ArgumentParser, required: bool = True) -> None:
    g = p.add_argument_group("images")
    g.add_argument("--images", required=required,
                   help=".npy array shaped and scaled for the model, a folder of PNG/JPEG files, or 'digits'")
    g.add_argument("--labels", default=None, help=".npy of integer labels, one per image (keeps the target's images)")
    g.add_argument("--class-map", default=None, metavar="MAP",
                   help="class sub-folders: which folder is which class: 'imagenet' (synset folders n01440764/... in "
                        "the standard ILSVRC-2012 order) or a .json/.csv file of folder -> class index (default: "
                        "numbered folders are those classes, other names in sorted order)")
    add_option_args(g, RunOptions, ["batch_size"])
    g.add_argument("--preprocess", default=None,
                   help="folders: a preset (torchvision, keras-vgg16, 0-1, 0-255) or a .json/.toml config; "
                        "the layout and size are read from the input the model file declares, where its backend "
                        "can read it (see docs/onnx.md)")
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
    if images is None:
        raise InvalidInputError(f"{given[0]} applies to --images folders of image files, and no --images was given; "
                                f"drop {given[0]} or pass --images DIR.")
    if images == "digits" or not Path(images).is_dir():
        what = "the built-in digits" if images == "digits" else f"{images!r}, an array"
        raise InvalidInputError(f"{given[0]} applies to folders of image files, but --images is {what} already "
                                f"shaped and scaled for the model; drop {given[0]} (or pass a folder of PNG/JPEG "
                                "files).")
    if "--preprocess" in given and len(given) > 1:
        other = next(f for f in given if f != "--preprocess")
        raise InvalidInputError(f"{other} cannot be combined with --preprocess, which sets the whole preprocessing; "
                                f"drop {other}, or write it into a .json/.toml preprocessing config (docs/onnx.md).")


def labels_from(args: argparse.Namespace) -> Any:
    """What the image loaders take as ``labels``: ``--labels``, or the :class:`~ssa.io.classmap.ClassMap` of
    ``--class-map`` (class folders; refused with --labels, and for images that are not class folders)."""
    spec = getattr(args, "class_map", None)
    if spec is None:
        return getattr(args, "labels", None)
    if getattr(args, "labels", None) is not None:
        raise InvalidInputError("--labels and --class-map cannot be combined: --labels labels a flat folder or a .npy "
                                "file, --class-map a folder of class sub-folders; drop one.")
    cmap = class_map(spec)
    folder_class_map(getattr(args, "images", None), cmap)  # refuses images that are not class folders
    return cmap


def preprocess_from(args: argparse.Namespace) -> Preprocess:
    check_folder_options(args)
    if getattr(args, "preprocess", None):
        return resolve_preprocess(args.preprocess, input_shape=_declared_input_shape(args))
    resize = parse_ints(args.resize, "--resize", 2, minimum=1)
    default = Preprocess()
    return Preprocess(resize=resize, scale=default.scale if args.scale is None else args.scale,  # type: ignore[arg-type]
                      mean=_floats(args.mean, "--mean"), std=_floats(args.std, "--std"),
                      layout=args.layout or default.layout,
                      channels=default.channels if args.channels is None else args.channels, bgr=bool(args.bgr))


def _declared_input_shape(args: argparse.Namespace) -> Any:
    """The input shape the model file declares, when its backend can read it without loading the model
    (``SupportsDeclaredInputShape``): a ``--preprocess`` preset takes the layout and size from it."""
    model = getattr(args, "model", None)
    if not isinstance(model, str) or not Path(model).is_file():
        return None
    backend = registry().backend_for(model, getattr(args, "backend", None))()
    return backend.declared_input_shape(model) if isinstance(backend, SupportsDeclaredInputShape) else None


def add_method_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("method")
    add_option_args(g, RunOptions, ["branching", "rule", "rule_params", "selector", "preset", "selector_params",
                                    "stop_at"])


def add_engine_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("engine")
    add_option_args(g, RunOptions, ["engine", "store", "fast_math"])


def add_threads_arg(p: Any) -> None:
    """``--threads N``: the CPU threads torch computes with (``ssa.cli`` applies it before torch loads, through
    :func:`ssa.core.threads.command_threads`); a command of the command line only, not an option of a run."""
    p.add_argument("--threads", type=int, default=None, metavar="N",
                   help="CPU threads for torch (default: OMP_NUM_THREADS if set, else min(cores this process may "
                        "use, torch's default, cores other processes leave idle; a resumed `ssa analyse --out-dir` or "
                        "`ssa study`: the count of the graphs it keeps); graphs record it (docs/scale.md)")


def _store(args: argparse.Namespace) -> tuple[str | None, str]:
    """The statistics store and its mode: ``--store`` (filled with what it lacks), else ``$SSA_STORE`` or
    ``.ssa-store`` when that folder exists (read when it holds this model and image set), else none."""
    if getattr(args, "store", None) is not None:  # asked for: fill what it lacks
        check_store_root(args.store, flag="--store")
        return args.store, "fill"
    if os.environ.get("SSA_STORE"):
        check_store_root(default_store_root(), flag="SSA_STORE")
    if default_store_root().is_dir():  # used when `ssa collect` filled it for this model and images
        return str(default_store_root()), "read"
    return None, "fill"


def batch_size(args: argparse.Namespace) -> int:
    """--batch-size, or by the device when it is not given (32 on the CPU, 128 on a GPU); ssa's main fills
    ``args.batch_size`` with it, and :func:`run_options` uses it for namespaces built without main."""
    if args.batch_size is not None:
        return int(args.batch_size)
    from ssa.session import default_batch_size

    return default_batch_size(str(getattr(args, "device", None) or "cpu"))


def run_options(args: argparse.Namespace) -> RunOptions:
    """The :class:`RunOptions` of the method (:func:`add_method_args`), engine (:func:`add_engine_args`) and
    image arguments a sub-command has (checked; the preset resolved in :attr:`RunOptions.method`)."""
    store, store_mode = _store(args) if hasattr(args, "engine") else (None, "fill")
    return RunOptions(
        rule=args.rule, rule_params=parse_kv(args.rule_param, "--rule-param"),
        selector=args.selector, selector_params=parse_kv(args.selector_param, "--selector-param"),
        preset=args.preset, branching=args.branching, stop_at=args.stop_at,
        engine=getattr(args, "engine", "auto"), fast_math=getattr(args, "fast_math", False),
        batch_size=batch_size(args), store=store, store_mode=store_mode,
        progress=not getattr(args, "quiet", False))


def api_options(spec: ModelSpec, options: RunOptions) -> dict[str, Any]:
    """``spec`` and ``options`` as the keywords of :func:`ssa.analyse` and :func:`ssa.analyse_many` (besides the
    model, the images and the targets), the preset resolved."""
    model = {"backend": spec.backend, "device": spec.device,
             **{k: v for k, v in spec.load_options().items() if k not in spec.options}}
    run = {k: v for k, v in option_values(options).items() if k != "preset"}
    m = options.method  # the preset resolved
    run.update(rule=m.rule, rule_params=dict(m.rule_params), selector=m.selector,
               selector_params=dict(m.selector_params))
    return {**run, **model}


def model_argument(spec: ModelSpec) -> Any:
    """What :func:`ssa.analyse` takes as the model: the source, or (with a backend's own options, which its
    keywords do not carry) the network loaded here."""
    return load_network(spec) if spec.options else spec.source
