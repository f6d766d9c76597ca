"""Preprocessing presets and config files for folders of images.

A folder of PNG/JPEG files becomes a model input through :class:`ssa.io.images.Preprocess`
(resize / letterbox / center-crop, value scale, mean/std, RGB or BGR, NCHW or NHWC).
This module names the common recipes and reads small JSON / TOML config files, so that
``ssa analyse model.onnx --images folder --preprocess torchvision`` (or
``--preprocess my.toml``) feeds the model what it was trained on.

Presets
-------
``torchvision``
    torchvision's ImageNet evaluation transform: resize the shorter side to 256, center-crop
    224 x 224, values 0-1, ImageNet mean (0.485, 0.456, 0.406) and std (0.229, 0.224, 0.225),
    RGB, NCHW.
``keras-vgg16``
    Keras ``applications.vgg16.preprocess_input`` ("caffe" mode) after ``load_img(target_size=
    (224, 224))``: resize to 224 x 224 (nearest, Keras' default), values 0-255, RGB -> BGR, mean
    subtraction [103.939, 116.779, 123.68] (B, G, R), no std, NHWC.
``0-1`` / ``0-255``
    Only the value scale; images are resized to the model's input size when the model declares
    one (otherwise they must all have the same size).

The layout (NCHW or NHWC) and the number of channels are read from the model's input when
its shape says so unambiguously (a 1- or 3-sized axis at position 1 or 3); a config file can
force them with ``layout = "nchw"`` / ``"nhwc"``.

Config file keys (JSON object or TOML table; all optional)
----------------------------------------------------------
``preset`` (start from a preset), ``resize`` ([h, w]: exact size; or one number: shorter
side, as torchvision's Resize), ``resize_shorter``, ``crop`` (number or [h, w]: center crop),
``letterbox`` (number or [h, w]: fit inside and pad), ``pad_value`` (0-255), ``interpolation``
("bilinear", "nearest", "bicubic"), ``scale`` (a number, or "0-1" / "0-255"), ``mean``,
``std``, ``channel_order`` ("rgb" or "bgr"), ``layout`` ("nchw", "nhwc" or "auto"),
``channels`` (1 or 3).
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from ssa.errors import InvalidInputError
from ssa.io.images import Preprocess

__all__ = ["PRESETS", "resolve_preprocess", "read_preprocess_config", "infer_layout", "describe_preprocess"]

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
CAFFE_MEAN_BGR = (103.939, 116.779, 123.68)

# preset name -> config (the same keys a config file has)
PRESETS: dict[str, dict[str, Any]] = {
    "torchvision": {"resize_shorter": 256, "crop": [224, 224], "scale": "0-1", "mean": list(IMAGENET_MEAN),
                    "std": list(IMAGENET_STD), "channel_order": "rgb", "layout": "nchw"},
    "keras-vgg16": {"resize": [224, 224], "interpolation": "nearest", "scale": "0-255",
                    "mean": list(CAFFE_MEAN_BGR), "channel_order": "bgr", "layout": "nhwc"},
    "0-1": {"scale": "0-1"},
    "0-255": {"scale": "0-255"},
}

_KEYS = ("preset", "resize", "resize_shorter", "crop", "letterbox", "pad_value", "interpolation", "scale",
         "mean", "std", "channel_order", "layout", "channels")


def _size(key: str, value: Any) -> tuple[int, int]:
    if isinstance(value, bool):
        raise InvalidInputError(f"preprocess {key!r} must be a size or [height, width], got {value!r}.")
    if isinstance(value, (int, float)):
        value = [value, value]
    if not isinstance(value, Sequence) or isinstance(value, str) or len(value) != 2:
        raise InvalidInputError(f"preprocess {key!r} must be a size or [height, width], got {value!r}.")
    try:
        h, w = (int(v) for v in value)
    except (TypeError, ValueError):
        raise InvalidInputError(f"preprocess {key!r} must hold integers, got {value!r}.") from None
    if h < 1 or w < 1:
        raise InvalidInputError(f"preprocess {key!r} must be positive, got {value!r}.")
    return h, w


def _floats(key: str, value: Any) -> tuple[float, ...]:
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return (float(value),)
    try:
        return tuple(float(v) for v in value)
    except (TypeError, ValueError):
        raise InvalidInputError(f"preprocess {key!r} must be a list of numbers, got {value!r}.") from None


def infer_layout(input_shape: Sequence[int | None] | None) -> tuple[str | None, int | None, tuple[int, int] | None]:
    """``(layout, channels, (height, width))`` read from a model's 4-D input shape; None where unclear.

    A dimension that is unknown (dynamic) is None. The layout is "nchw" when axis 1 has 1 or 3
    entries and axis 3 does not, "nhwc" in the opposite case.
    """
    if input_shape is None or len(input_shape) != 4:
        return None, None, None
    d1, d3 = input_shape[1], input_shape[3]
    c1, c3 = d1 in (1, 3), d3 in (1, 3)
    if c1 and not c3:
        layout, channels, hw = "nchw", d1, (input_shape[2], input_shape[3])
    elif c3 and not c1:
        layout, channels, hw = "nhwc", d3, (input_shape[1], input_shape[2])
    else:
        return None, None, None
    h, w = hw
    size = (h, w) if isinstance(h, int) and isinstance(w, int) and h > 0 and w > 0 else None
    return layout, channels, size


def read_preprocess_config(path: str | os.PathLike) -> dict[str, Any]:
    """Read a JSON (``.json``) or TOML (``.toml``) preprocessing config file into a dict."""
    p = Path(path)
    if not p.is_file():
        raise InvalidInputError(f"preprocess config {str(p)!r} does not exist; pass a preset "
                                f"({', '.join(PRESETS)}) or a .json/.toml file.")
    try:
        if p.suffix.lower() == ".json":
            data = json.loads(p.read_text(encoding="utf-8"), object_pairs_hook=lambda kv: _unique(kv, p.name))
        elif p.suffix.lower() == ".toml":
            if sys.version_info >= (3, 11):
                import tomllib
            else:  # pragma: no cover - Python 3.10
                try:
                    import tomli as tomllib
                except ImportError:
                    raise InvalidInputError("reading .toml configs on Python 3.10 needs `pip install tomli`; "
                                            "or write the config as .json.") from None
            data = tomllib.loads(p.read_text())
        else:
            raise InvalidInputError(f"preprocess config must be a .json or .toml file, got {p.name!r}.")
    except InvalidInputError:
        raise
    except (ValueError, UnicodeDecodeError) as exc:
        raise InvalidInputError(f"cannot parse preprocess config {p.name!r} ({str(exc).splitlines()[0]}); "
                                "fix its syntax.") from None
    if isinstance(data, dict) and "preprocess" in data and isinstance(data["preprocess"], dict) and len(data) == 1:
        data = data["preprocess"]  # allow a [preprocess] table
    if not isinstance(data, dict):
        raise InvalidInputError(f"preprocess config {p.name!r} must hold an object / table of settings.")
    return data


def _unique(pairs: list[tuple[str, Any]], name: str) -> dict[str, Any]:
    """A JSON object's pairs as a dict, refusing a key given twice (before, the last won without a word; TOML files
    refuse it themselves)."""
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise InvalidInputError(f"preprocess config {name!r} gives {key!r} twice, {json.dumps(out[key])} and "
                                    f"{json.dumps(value)}; give each setting once.")
        out[key] = value
    return out


def _merge(spec: Mapping[str, Any]) -> dict[str, Any]:
    unknown = sorted(set(spec) - set(_KEYS))
    if unknown:
        raise InvalidInputError(f"unknown preprocess setting {unknown[0]!r}; known settings: {', '.join(_KEYS)}.")
    base: dict[str, Any] = {}
    if "preset" in spec:
        name = spec["preset"]
        if name not in PRESETS:
            raise InvalidInputError(f"unknown preprocess preset {name!r}; choose one of: {', '.join(PRESETS)}.")
        base = dict(PRESETS[name])
        base["_preset"] = name
    cfg = {**base, **{k: v for k, v in spec.items() if k != "preset"}}
    if "resize" in cfg and isinstance(cfg["resize"], (int, float)) and not isinstance(cfg["resize"], bool):
        cfg["resize_shorter"] = int(cfg.pop("resize"))  # torchvision's Resize(n): the shorter side
    return cfg


def resolve_preprocess(spec: Any = None, *, input_shape: Sequence[int | None] | None = None) -> Preprocess:
    """The :class:`~ssa.io.images.Preprocess` for a preset name, a config file, a dict, or None.

    Parameters
    ----------
    spec : a preset name (see :data:`PRESETS`), a ``.json`` / ``.toml`` path, a dict of settings,
        a ready :class:`Preprocess` (returned as is), or None (the ``0-1`` preset).
    input_shape : the model's input shape, e.g. ``(None, 3, 224, 224)`` (None for unknown
        dimensions). It decides the layout and channels unless the config sets ``layout``
        explicitly, gives the size for presets without one, and is checked against the size a
        preset produces.
    """
    if isinstance(spec, Preprocess):
        return spec
    if spec is None:
        raw: dict[str, Any] = {"preset": "0-1"}
    elif isinstance(spec, Mapping):
        raw = dict(spec)
    elif isinstance(spec, (str, os.PathLike)):
        s = os.fspath(spec)
        if s in PRESETS:
            raw = {"preset": s}
        elif s.lower().endswith((".json", ".toml")):
            raw = read_preprocess_config(s)
        else:
            raise InvalidInputError(f"--preprocess must be a preset ({', '.join(PRESETS)}) or a .json/.toml "
                                    f"config file, got {s!r}.")
    else:
        raise InvalidInputError("preprocess must be a preset name, a config path or a dict, got "
                                f"{type(spec).__name__}.")
    cfg = _merge(raw)
    if "layout" not in raw:  # the model's input decides; the preset's layout is the fallback
        cfg["_layout_default"] = cfg.get("layout")
        cfg["layout"] = "auto"
    return _build(cfg, input_shape)


def _build(cfg: dict[str, Any], input_shape: Sequence[int | None] | None) -> Preprocess:
    model_layout, model_channels, model_size = infer_layout(input_shape)
    layout = str(cfg.get("layout") or "auto").lower()
    if layout not in ("nchw", "nhwc", "auto"):
        raise InvalidInputError(f"preprocess 'layout' must be 'nchw', 'nhwc' or 'auto', got {cfg.get('layout')!r}.")
    if layout == "auto":
        layout = model_layout or str(cfg.get("_layout_default") or "nchw").lower()
    channels = cfg.get("channels", model_channels or 3)
    try:
        channels = int(channels)
    except (TypeError, ValueError):
        raise InvalidInputError(f"preprocess 'channels' must be 1 or 3, got {channels!r}.") from None

    scale = cfg.get("scale", "0-1")
    if isinstance(scale, str):
        if scale not in ("0-1", "0-255"):
            raise InvalidInputError(f"preprocess 'scale' must be a number, '0-1' or '0-255', got {scale!r}.")
        scale = 1.0 / 255.0 if scale == "0-1" else 1.0
    elif isinstance(scale, bool) or not isinstance(scale, (int, float)):
        raise InvalidInputError(f"preprocess 'scale' must be a number, '0-1' or '0-255', got {scale!r}.")

    order = str(cfg.get("channel_order", "rgb")).lower()
    if order not in ("rgb", "bgr"):
        raise InvalidInputError(f"preprocess 'channel_order' must be 'rgb' or 'bgr', got {cfg.get('channel_order')!r}.")
    mean = _floats("mean", cfg.get("mean", ()))
    std = _floats("std", cfg.get("std", ()))
    if channels == 1:  # a grayscale model: one mean/std value (the first, or their average for RGB presets)
        mean = (sum(mean) / len(mean),) if len(mean) > 1 else mean
        std = (sum(std) / len(std),) if len(std) > 1 else std

    resize = _size("resize", cfg["resize"]) if cfg.get("resize") is not None else None
    crop = _size("crop", cfg["crop"]) if cfg.get("crop") is not None else None
    letterbox = _size("letterbox", cfg["letterbox"]) if cfg.get("letterbox") is not None else None
    shorter = cfg.get("resize_shorter")
    if shorter is not None:
        if isinstance(shorter, bool) or not isinstance(shorter, (int, float)) or int(shorter) < 1:
            raise InvalidInputError(f"preprocess 'resize_shorter' must be a positive size, got {shorter!r}.")
        shorter = int(shorter)
    final = crop or letterbox or resize
    if final is None and shorter is None and model_size is not None:
        resize = final = model_size  # scale-only presets: take the model's input size
    if final is not None and model_size is not None and tuple(final) != tuple(model_size):
        what = f"preset {cfg['_preset']!r}" if "_preset" in cfg else "the preprocess config"
        raise InvalidInputError(
            f"{what} makes {final[0]}x{final[1]} images but the model takes {model_size[0]}x{model_size[1]}; "
            f"set crop (or resize) to [{model_size[0]}, {model_size[1]}] in a config file."
        )
    interpolation = str(cfg.get("interpolation", "bilinear")).lower()
    pad_value = cfg.get("pad_value", 0.0)
    if isinstance(pad_value, bool) or not isinstance(pad_value, (int, float)):
        raise InvalidInputError(f"preprocess 'pad_value' must be a number (0-255), got {pad_value!r}.")
    return Preprocess(resize=resize, scale=float(scale), mean=mean, std=std, layout=layout, channels=channels,
                      bgr=order == "bgr", resize_shorter=shorter, letterbox=letterbox, crop=crop,
                      pad_value=float(pad_value), interpolation=interpolation)


def describe_preprocess(pre: Preprocess) -> str:
    """One line saying what ``pre`` does, for reports."""
    steps = []
    if pre.resize_shorter is not None:
        steps.append(f"resize shorter side to {pre.resize_shorter}")
    if pre.resize is not None:
        steps.append(f"resize to {pre.resize[0]}x{pre.resize[1]}")
    if pre.letterbox is not None:
        steps.append(f"letterbox to {pre.letterbox[0]}x{pre.letterbox[1]} (pad {pre.pad_value:g})")
    if pre.crop is not None:
        steps.append(f"center-crop {pre.crop[0]}x{pre.crop[1]}")
    if steps:
        steps[-1] += f" ({pre.interpolation})"
    steps.append("values 0-1" if abs(pre.scale - 1 / 255) < 1e-12 else
                 "values 0-255" if pre.scale == 1.0 else f"values x{pre.scale:g}")
    if pre.channels == 3:
        steps.append("BGR" if pre.bgr else "RGB")
    else:
        steps.append("grayscale")
    if pre.mean:
        steps.append("minus mean " + ",".join(f"{v:g}" for v in pre.mean))
    if pre.std:
        steps.append("divided by std " + ",".join(f"{v:g}" for v in pre.std))
    steps.append(pre.layout.upper())
    return ", ".join(steps)
