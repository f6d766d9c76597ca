"""Image inputs: arrays, ``.npy`` files, folders of PNG/JPEG files, the built-in digits set."""

from __future__ import annotations

import math
import os
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ssa.core.checks import check_labels, looks_unscaled
from ssa.errors import InvalidInputError, SSAWarning
from ssa.io.progress import progress

__all__ = ["Preprocess", "validate_images", "load_images", "select_class", "read_npy", "IMAGE_SUFFIXES"]

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")
#: Pillow modes of 8 bits per sample, read through ``convert("L" / "RGB")``; others by :func:`_wide_as_float`
_EIGHT_BIT_MODES = ("1", "L", "P", "LA", "PA", "La", "RGB", "RGBA", "RGBa", "RGBX", "CMYK", "YCbCr", "LAB", "HSV")
_INTERPOLATIONS = ("bilinear", "nearest", "bicubic")


@dataclass(frozen=True)
class Preprocess:
    """Simple preprocessing for folders of image files.

    resize : (height, width) or None; every image is resized to exactly this size (aspect not kept).
    scale : multiply the 0-255 pixel values by this (1/255 gives 0-1).
    mean, std : per-channel, applied after scaling (and after the BGR flip): (x - mean) / std.
    layout : "nchw" or "nhwc".
    channels : 1 (grayscale) or 3 (RGB).
    bgr : reverse the channel order (RGB -> BGR), as Caffe/Keras VGG models expect.
    resize_shorter : resize so that the shorter side has this length, aspect kept (torchvision's
        ``Resize(256)``); done first.
    letterbox : (height, width): scale to fit inside, aspect kept, and pad the rest with ``pad_value``.
    crop : (height, width): center crop, done last (torchvision's ``CenterCrop(224)``).
    pad_value : pixel value (0-255 scale, before ``scale``) of the letterbox padding.
    interpolation : "bilinear" (default), "nearest" (Keras ``load_img``'s default) or "bicubic".

    The geometric steps run in the order resize_shorter, resize, letterbox, crop; see
    :mod:`ssa.io.preprocess` for presets and config files.
    """

    resize: tuple[int, int] | None = None
    scale: float = 1.0 / 255.0
    mean: tuple[float, ...] = ()
    std: tuple[float, ...] = ()
    layout: str = "nchw"
    channels: int = 3
    bgr: bool = False
    resize_shorter: int | None = None
    letterbox: tuple[int, int] | None = None
    crop: tuple[int, int] | None = None
    pad_value: float = 0.0
    interpolation: str = "bilinear"

    def __post_init__(self) -> None:
        if self.layout not in ("nchw", "nhwc"):
            raise InvalidInputError(f"layout must be 'nchw' or 'nhwc', got {self.layout!r}.")
        if self.interpolation not in _INTERPOLATIONS:
            raise InvalidInputError(
                f"interpolation must be one of {', '.join(_INTERPOLATIONS)}, got {self.interpolation!r}."
            )
        for label, size in (("resize", self.resize), ("letterbox", self.letterbox), ("crop", self.crop)):
            if size is not None and (len(size) != 2 or any(int(v) < 1 for v in size)):
                raise InvalidInputError(f"{label} must be (height, width) with positive sizes, got {size!r}.")
        if self.resize_shorter is not None and int(self.resize_shorter) < 1:
            raise InvalidInputError(f"resize_shorter must be a positive size, got {self.resize_shorter!r}.")
        if self.channels not in (1, 3):
            raise InvalidInputError(f"channels must be 1 or 3, got {self.channels}.")
        for label, vals in (("mean", self.mean), ("std", self.std)):
            if vals and len(vals) not in (1, self.channels):
                if self.channels == 1:
                    raise InvalidInputError(
                        f"{label} has {len(vals)} values but the images are read with 1 channel (grayscale, "
                        f"channels=1); pass 1 value, or read them as RGB with channels=3 (--channels 3).")
                raise InvalidInputError(f"{label} must have 1 value or 3 (one per RGB channel), got {len(vals)}.")
        # a zero, negative or infinite scale or std, or a NaN anywhere, would turn every image into zeros, its
        # negative or NaN: refused (the NaN case was caught only later, as NaN images)
        if not (math.isfinite(self.scale) and self.scale > 0):
            raise InvalidInputError(f"scale must be a finite number > 0 (it multiplies the 0-255 pixel values), got "
                                    f"{self.scale!r}; 1/255 gives values in 0-1.")
        if any(not (math.isfinite(v) and v > 0) for v in self.std):
            raise InvalidInputError(f"std values must be finite numbers > 0, got "
                                    f"{', '.join(f'{v:g}' for v in self.std)}; pass the per-channel standard "
                                    "deviations (e.g. 0.229,0.224,0.225).")
        if any(not math.isfinite(v) for v in self.mean):
            raise InvalidInputError(f"mean values must be finite numbers, got "
                                    f"{', '.join(f'{v:g}' for v in self.mean)}; pass the per-channel means (e.g. "
                                    "0.485,0.456,0.406).")


def validate_images(images: object, *, source: str = "images") -> np.ndarray:
    """Check an image batch and return it as a contiguous float32 array."""
    arr = np.asarray(images) if not hasattr(images, "detach") else images.detach().cpu().numpy()
    if arr.dtype == object or not (np.issubdtype(arr.dtype, np.floating) or np.issubdtype(arr.dtype, np.integer)
                                   or arr.dtype == bool):
        raise InvalidInputError(f"{source} must hold numbers, got dtype {arr.dtype}; pass a float array shaped (N, "
                                "...).")
    if arr.ndim < 2:
        raise InvalidInputError(
            f"{source} must be shaped (N, ...) with one image per row, got shape {arr.shape}; add the batch axis."
        )
    if arr.shape[0] == 0:
        raise InvalidInputError(f"{source} is empty (0 images); pass at least one image of the class.")
    arr = arr.astype(np.float32, copy=False)
    if not np.isfinite(arr).all():
        bad = int((~np.isfinite(arr)).reshape(arr.shape[0], -1).any(axis=1).sum())
        raise InvalidInputError(f"{source} contains NaN or infinite values in {bad} image(s); clean or drop them.")
    return np.ascontiguousarray(arr)


def read_npy(path: str | os.PathLike, *, mmap: bool = False, what: str = "images") -> np.ndarray:
    """The array of a ``.npy`` file (memory-mapped with ``mmap``); one line naming the file and the fix when it
    is not one (a ``.npz`` archive renamed, a pickle, text)."""
    try:
        arr = np.load(path, mmap_mode="r" if mmap else None, allow_pickle=False)
    except (ValueError, OSError, EOFError) as exc:
        raise InvalidInputError(f"cannot read {os.fspath(path)!r} as a .npy array ({str(exc).splitlines()[0]}); save "
                                "it with numpy.save.") from None
    if isinstance(arr, np.lib.npyio.NpzFile):  # numpy reads by content: a .npz archive whatever its name
        names = list(arr.files)
        arr.close()
        first = names[0] if names else "images"
        raise InvalidInputError(
            f"{os.fspath(path)!r} is a .npz archive of {len(names)} array(s) ({', '.join(names[:5]) or 'none'}), not "
            f"a .npy array; save the {what} as one .npy file, e.g. numpy.save('{what}.npy', "
            f"numpy.load('{Path(path).name}')['{first}']).")
    return arr


def _geometry(im, pre: Preprocess) -> np.ndarray:
    """Resize / letterbox / center-crop a PIL image as ``pre`` says; returns float32 pixels (H, W[, C])."""
    from PIL import Image

    resample = {"bilinear": Image.Resampling.BILINEAR, "nearest": Image.Resampling.NEAREST,
                "bicubic": Image.Resampling.BICUBIC}[pre.interpolation]
    if pre.resize_shorter is not None:
        w, h = im.size
        short, long_ = (w, h) if w <= h else (h, w)
        new_short = int(pre.resize_shorter)
        new_long = int(new_short * long_ / short)  # torchvision's rounding
        size = (new_short, new_long) if w <= h else (new_long, new_short)
        if size != im.size:
            im = im.resize(size, resample)
    if pre.resize is not None:
        im = im.resize((int(pre.resize[1]), int(pre.resize[0])), resample)
    if pre.letterbox is not None:
        th, tw = int(pre.letterbox[0]), int(pre.letterbox[1])
        w, h = im.size
        ratio = min(tw / w, th / h)
        nw, nh = max(1, round(w * ratio)), max(1, round(h * ratio))
        im = im.resize((nw, nh), resample)
        fill: float = pre.pad_value if im.mode == "F" else int(round(pre.pad_value))
        canvas = Image.new(im.mode, (tw, th), fill if len(im.getbands()) == 1 else (fill,) * len(im.getbands()))
        canvas.paste(im, ((tw - nw) // 2, (th - nh) // 2))
        im = canvas
    if pre.crop is not None:
        ch, cw = int(pre.crop[0]), int(pre.crop[1])
        w, h = im.size
        if ch > h or cw > w:
            raise InvalidInputError(
                f"cannot center-crop {ch}x{cw} from an image of {h}x{w}; resize first (resize_shorter) or crop less."
            )
        top, left = int(round((h - ch) / 2.0)), int(round((w - cw) / 2.0))  # torchvision's center_crop
        im = im.crop((left, top, left + cw, top + ch))
    return np.asarray(im, dtype=np.float32)


def read_pixels(path: str | os.PathLike, pre: Preprocess) -> np.ndarray:
    """One image file's pixels ``(H, W, C)`` after the preset's geometry (grey or RGB, resize, crop), float32
    in the file's range; :func:`normalise` turns them into the model's input."""
    from PIL import Image, UnidentifiedImageError  # Pillow: only when files are read

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)  # refused, not decoded with a warning
            with Image.open(path) as im:
                if im.mode in _EIGHT_BIT_MODES:
                    a = _geometry(im.convert("L" if pre.channels == 1 else "RGB"), pre)
                else:  # 16-bit or float: the full range, on the 0-255 scale of an 8-bit copy
                    a = _geometry(_wide_as_float(im, path), pre)
                    if pre.channels == 3:
                        a = np.repeat(a[:, :, None], 3, axis=2)  # grey to RGB, as convert("RGB") does
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise InvalidInputError(
            f"image {str(path)!r} declares more than {Image.MAX_IMAGE_PIXELS:,} pixels, Pillow's limit against "
            "decompression bombs; shrink it (or crop it) to a sensible size, or remove it.") from None
    except (UnidentifiedImageError, OSError) as exc:
        raise InvalidInputError(f"cannot read image {str(path)!r} ({type(exc).__name__}); remove or fix it.") from None
    return a[:, :, None] if a.ndim == 2 else a


def _wide_as_float(im, path: str | os.PathLike):
    """A grey image of more than 8 bits per sample (16-bit PNG/TIFF: modes ``I;16*`` and ``I``; float TIFF:
    ``F``) as a float image (mode ``F``) on the 0-255 scale an 8-bit copy has: 16-bit values times 255/65535,
    float values in [0, 1] times 255. Anything else is refused (one line), never clipped."""
    from PIL import Image

    name = str(path)
    arr = np.asarray(im)
    if im.mode.startswith("I"):  # I;16, I;16B, I;16L, I (Pillow's 32-bit integers, e.g. an older 16-bit PNG)
        ilo, ihi = (int(arr.min()), int(arr.max())) if arr.size else (0, 0)
        if ilo < 0 or ihi > 65535:
            raise InvalidInputError(f"image {name!r} holds {im.mode} integers from {ilo} to {ihi}, outside the 16-bit "
                                    "range ssa reads (0-65535); save it as 8-bit or 16-bit PNG/TIFF, or as float "
                                    "in [0, 1].")
        scaled = arr.astype(np.float64) * (255.0 / 65535.0)
    elif im.mode == "F":
        finite = np.isfinite(arr).all()
        lo, hi = (float(arr.min()), float(arr.max())) if arr.size and finite else (0.0, 0.0)
        if not finite or lo < 0.0 or hi > 1.0:
            what = "NaN or infinite values" if not finite else f"values from {lo:g} to {hi:g}"
            raise InvalidInputError(f"float image {name!r} holds {what}; ssa reads float images in [0, 1] (as an "
                                    "8-bit copy's 0-255); rescale it to [0, 1], or save it as 8-bit or 16-bit.")
        scaled = arr.astype(np.float64) * 255.0
    else:
        raise InvalidInputError(f"image {name!r} has Pillow mode {im.mode!r}, which ssa cannot read faithfully; "
                                "save it as 8-bit or 16-bit PNG/TIFF (grey or RGB), or as a float TIFF in [0, 1].")
    return Image.fromarray(scaled.astype(np.float32), mode="F")


def normalise(pixels: np.ndarray, pre: Preprocess) -> np.ndarray:
    """Scale, channel order, mean / std and layout of decoded pixels ``(..., H, W, C)`` (float32).

    One arithmetic, in one order, for a folder read at once and for images streamed one by one
    (:mod:`ssa.io.datasets`), so every pixel is bit-identical either way.
    """
    x = pixels * pre.scale
    if pre.bgr:
        x = x[..., ::-1]
    if pre.mean:
        x = x - np.asarray(pre.mean, np.float32)
    if pre.std:
        x = x / np.asarray(pre.std, np.float32)
    if pre.layout == "nchw":
        x = np.moveaxis(x, -1, -3)
    return np.ascontiguousarray(x, dtype=np.float32)


def _read_folder(path: Path, pre: Preprocess) -> tuple[np.ndarray, list[str]]:
    files = sorted(p for p in path.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise InvalidInputError(f"folder {str(path)!r} holds no PNG/JPEG files; put the class's images there.")
    out: list[np.ndarray] = []
    with progress(len(files), f"loading {path.name}", "img") as bar:
        for f in files:
            a = read_pixels(f, pre)
            if out and a.shape != out[0].shape:
                raise InvalidInputError(
                    f"image {f.name!r} has size {a.shape[:2]}, others {out[0].shape[:2]}; pass --resize H,W."
                )
            out.append(a)
            bar.update(1)
    return normalise(np.stack(out), pre), [f.name for f in files]


def load_images(spec: object, *, target: int | None = None, preprocess: Preprocess | None = None,
                labels: object = None) -> tuple[np.ndarray, np.ndarray | None]:
    """Load images from an array, a ``.npy`` file, a folder, or ``"digits"``.

    Returns ``(images, labels)``; labels are None when unknown. When labels are
    known and ``target`` is given, only the images of that class are returned.
    """
    lab: np.ndarray | None = None
    raw = True  # an array or .npy file, used as it is (not a folder read with a Preprocess, not the digits)
    if isinstance(spec, (str, os.PathLike)):
        s = os.fspath(spec)
        if s == "digits":
            from ssa.models import digits_data

            arr, lab = digits_data()
            raw = False
        else:
            path = Path(s)
            if not path.exists():
                raise InvalidInputError(f"images {s!r} do not exist; pass a .npy file or a folder of PNG/JPEG files.")
            if path.is_dir():
                arr, _ = _read_folder(path, preprocess or Preprocess())
                raw = False
            elif path.suffix.lower() == ".npy":
                arr = read_npy(path)
            else:
                raise InvalidInputError(f"images must be a .npy file or a folder of PNG/JPEG files, got {path.name!r}.")
    else:
        arr = spec  # type: ignore[assignment]
    if labels is not None:
        lab = np.asarray(read_npy(labels, what="labels") if isinstance(labels, (str, os.PathLike)) else labels)
    arr = validate_images(arr)
    why = looks_unscaled(arr) if raw else None
    if why is not None:
        top = 255 if float(arr.max()) <= 255 else 65535  # 16-bit pixels (a uint16 array) as well
        warnings.warn(f"the images look like raw 0-{top} pixels ({why}); most models expect them scaled (e.g. to 0-1, "
                      f"or normalised): divide them by {top} first, or pass a folder of image files with --preprocess; "
                      f"ignore this if the model takes 0-{top} input.", SSAWarning, stacklevel=2)
    if lab is not None:
        lab = check_labels(lab, arr.shape[0])
    if target is not None:
        arr, lab = select_class(arr, lab, target)
    return arr, lab


def select_class(images: np.ndarray, labels: np.ndarray | None, target: int) -> tuple[np.ndarray, np.ndarray | None]:
    """The images labelled ``target`` (all images when there are no labels)."""
    if labels is None:
        return images, None
    keep = labels == target
    if not keep.any():
        raise InvalidInputError(f"no image is labelled {target}; choose a target that has images.")
    return images[keep], labels[keep]
