"""Image sets at scale: indexed, decoded in parallel, streamed batch by batch, never held whole.

An :class:`ImageSource` is a list of images that can be read by position, with optional integer
labels. Three kinds exist:

* :class:`FolderSource`: PNG/JPEG files; the ImageNet layout (``root/<class>/*.JPEG``, one sub-folder per
  class, named by index ``3`` or by any name, e.g. the WordNet ids ``n01440764``, then numbered in sorted
  order as torchvision's ``ImageFolder`` does), or one flat folder with a labels file (``.npy`` with one
  integer per file in sorted file order, or a text file: one integer per line in sorted file order, or
  ``name label`` / ``name,label`` lines). Files are decoded one by one with the
  :class:`~ssa.io.images.Preprocess` of :mod:`ssa.io.preprocess` (presets and config files): the pixels are
  exactly those :func:`ssa.io.folders.load_grouped_images` gives.
* :class:`ArraySource`: an in-memory array, or a ``.npy`` file opened memory-mapped (re-opened by path in
  another process, never copied whole).
* ``"digits"``: the embedded digits set (an :class:`ArraySource`).

:func:`iter_batches` streams any subset of a source in order, in batches, through a torch ``DataLoader``
with ``workers`` decoding processes (at most ``workers x prefetch x batch`` images in memory), or with
torchvision's JPEG decoder on a CUDA device (:class:`FolderSource` with ``decoder="gpu"``).
:class:`StreamHash` computes :func:`ssa.engines.store.images_hash` of the whole set (the identity graphs
record) from the stream, without the whole set in memory.
"""

from __future__ import annotations

import hashlib
import os
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from ssa.core.checks import check_labels
from ssa.errors import InvalidInputError
from ssa.io.classmap import ClassMap
from ssa.io.folders import class_folders, folder_class_map
from ssa.io.images import IMAGE_SUFFIXES, Preprocess, normalise, read_npy, read_pixels
from ssa.io.preprocess import describe_preprocess

__all__ = ["ImageSource", "FolderSource", "ArraySource", "open_source", "iter_batches", "StreamHash", "DecodeStats",
           "decode_image", "normalise", "read_labels_file", "DECODERS"]

#: how :class:`FolderSource` decodes files: "pil" (Pillow, the reference) or "gpu" (torchvision on CUDA)
DECODERS = ("pil", "gpu")


def decode_image(path: str | os.PathLike, pre: Preprocess) -> np.ndarray:
    """One image file as the model's input (``(C, H, W)`` or ``(H, W, C)``, float32), as ``load_images`` reads it."""
    return normalise(read_pixels(path, pre), pre)


def read_labels_file(path: str | os.PathLike, names: Sequence[str]) -> np.ndarray:
    """Integer labels for ``names`` (files in sorted order) from ``.npy`` or a text file.

    Text files hold one integer per line (in the sorted file order), or ``name label`` / ``name,label``
    lines (any order; a header line ``name,label`` is skipped).
    """
    p = Path(path)
    if not p.is_file():
        raise InvalidInputError(f"labels file {str(p)!r} does not exist; pass a .npy or text file of labels.")
    if p.suffix.lower() == ".npy":
        return check_labels(read_npy(p, what="labels"), len(names))
    lines = [ln.strip() for ln in p.read_text(encoding="utf-8").splitlines() if ln.strip()]
    pairs = [ln.replace(",", " ").split() for ln in lines]
    if pairs and all(len(x) == 1 for x in pairs):
        try:
            lab = np.array([int(x[0]) for x in pairs], dtype=np.int64)
        except ValueError:
            raise InvalidInputError(f"labels file {p.name!r} must hold integers, one per line, or 'name label' "
                                    "lines.") from None
        return check_labels(lab, len(names))
    if pairs and len(pairs[0]) == 2 and not pairs[0][1].lstrip("-").isdigit():
        pairs = pairs[1:]  # a header
    by_name: dict[str, int] = {}
    for x in pairs:
        if len(x) != 2 or not x[1].lstrip("-").isdigit():
            raise InvalidInputError(f"labels file {p.name!r}: cannot read the line {' '.join(x)!r}; write 'name label' "
                                    "(or 'name,label') lines, or one integer per line in sorted file order.")
        by_name[x[0]] = int(x[1])
    missing = [n for n in names if n not in by_name and Path(n).name not in by_name]
    if missing:
        raise InvalidInputError(f"labels file {p.name!r} gives no label for {missing[0]!r} ({len(missing)} file(s) "
                                "without one); add them.")
    lab = np.array([by_name.get(n, by_name.get(Path(n).name)) for n in names], dtype=np.int64)
    return check_labels(lab, len(names))


class ImageSource:
    """Images readable by position, with optional integer labels (see the module docstring).

    Attributes
    ----------
    labels : int64 array, one per image, or None.
    class_names : ``{class index: name}`` where the classes have names (class folders), else empty.
    class_map : ``{folder: class index}`` of class folders (the labels a run used, recorded in graphs), else empty.
    """

    labels: np.ndarray | None = None
    class_names: dict[int, str] = {}
    class_map: dict[str, int] = {}

    def __len__(self) -> int:
        raise NotImplementedError

    def read(self, i: int) -> np.ndarray:
        """Image ``i`` (float32, shaped for the model)."""
        raise NotImplementedError

    def read_many(self, indices: Sequence[int] | np.ndarray) -> np.ndarray:
        """Images at ``indices``, stacked."""
        return np.stack([self.read(int(i)) for i in indices]) if len(indices) else np.zeros((0,), np.float32)

    def subset(self, indices: Sequence[int] | np.ndarray) -> ImageSource:
        """A source of ``self``'s images at ``indices`` (cheap to send to another process)."""
        raise NotImplementedError

    def identity(self) -> dict[str, Any]:
        """What this source reads (for job keys and manifests): kind, location and a listing fingerprint."""
        raise NotImplementedError

    def name_of(self, i: int) -> str:
        return f"#{i}"

    def preprocessing(self) -> str | None:
        """How image files are decoded (recorded in graphs), or None for arrays (used as they are)."""
        return None


@dataclass(frozen=True, eq=False)
class FolderSource(ImageSource):
    """Image files below ``root`` (relative paths ``files``), decoded with ``preprocess``."""

    root: Path
    files: tuple[str, ...]
    preprocess: Preprocess = field(default_factory=Preprocess)
    labels: np.ndarray | None = None
    class_names: dict[int, str] = field(default_factory=dict)
    decoder: str = "pil"
    class_map: dict[str, int] = field(default_factory=dict)  # class folders: {folder: class}, recorded in graphs
    device: str = "cpu"

    def __len__(self) -> int:
        return len(self.files)

    def read(self, i: int) -> np.ndarray:
        return decode_image(self.root / self.files[i], self.preprocess)

    def name_of(self, i: int) -> str:
        return str(self.root / self.files[i])

    def preprocessing(self) -> str | None:
        return describe_preprocess(self.preprocess)

    def subset(self, indices: Sequence[int] | np.ndarray) -> FolderSource:
        idx = np.asarray(indices, dtype=np.int64)
        return replace(self, files=tuple(self.files[int(i)] for i in idx),
                       labels=None if self.labels is None else self.labels[idx])

    def with_decoder(self, decoder: str, device: str = "cpu") -> FolderSource:
        if decoder not in DECODERS:
            raise InvalidInputError(f"decoder must be one of {', '.join(DECODERS)}, got {decoder!r}.")
        return replace(self, decoder=decoder, device=device)

    def identity(self) -> dict[str, Any]:
        h = hashlib.blake2b(digest_size=16)
        for f in self.files:
            st = (self.root / f).stat()
            h.update(f"{f}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
        if self.labels is not None:
            h.update(np.ascontiguousarray(self.labels, dtype=np.int64).tobytes())
        return {"kind": "folder", "root": str(self.root.resolve()), "n": len(self.files), "listing": h.hexdigest(),
                "preprocess": repr(self.preprocess), "decoder": self.decoder}


@dataclass(frozen=True, eq=False)
class ArraySource(ImageSource):
    """Images of an array; with ``path`` a ``.npy`` file opened memory-mapped (re-opened after pickling)."""

    array: Any = None
    path: str | None = None
    positions: np.ndarray | None = None  # rows of the file this source holds (None: all)
    labels: np.ndarray | None = None
    class_names: dict[int, str] = field(default_factory=dict)
    builtin: str | None = None

    def _data(self) -> Any:
        if self.array is not None:
            return self.array
        data = _open_array(self.path, self.builtin)
        object.__setattr__(self, "array", data)
        return data

    def __getstate__(self) -> dict:  # a memory-mapped or built-in array is re-opened, not copied
        state = dict(self.__dict__)
        if self.path is not None or self.builtin is not None:
            state["array"] = None
        return state

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)

    def __len__(self) -> int:
        return len(self.positions) if self.positions is not None else int(self._data().shape[0])

    def read(self, i: int) -> np.ndarray:
        row = int(self.positions[i]) if self.positions is not None else int(i)
        return np.ascontiguousarray(self._data()[row], dtype=np.float32)

    def read_many(self, indices: Sequence[int] | np.ndarray) -> np.ndarray:
        rows = np.asarray(indices, dtype=np.int64)
        if self.positions is not None:
            rows = self.positions[rows]
        return np.ascontiguousarray(self._data()[rows], dtype=np.float32)

    def subset(self, indices: Sequence[int] | np.ndarray) -> ArraySource:
        idx = np.asarray(indices, dtype=np.int64)
        rows = idx if self.positions is None else self.positions[idx]
        if self.path is None and self.builtin is None:  # in memory: send only the rows
            return replace(self, array=np.ascontiguousarray(self.array[rows]), positions=None,
                           labels=None if self.labels is None else self.labels[idx])
        return replace(self, positions=rows, labels=None if self.labels is None else self.labels[idx])

    def identity(self) -> dict[str, Any]:
        where = self.builtin or (str(Path(self.path).resolve()) if self.path else "array")
        out: dict[str, Any] = {"kind": "array", "source": where, "n": len(self)}
        if self.path is not None:
            st = Path(self.path).stat()
            out["listing"] = f"{st.st_size}-{st.st_mtime_ns}"
        elif self.builtin is None:
            h = hashlib.blake2b(digest_size=16)
            h.update(np.ascontiguousarray(self.array).tobytes())
            out["listing"] = h.hexdigest()
        return out


def _open_array(path: str | None, builtin: str | None) -> np.ndarray:
    if builtin == "digits":
        from ssa.models import digits_data

        return digits_data()[0]
    if path is None:
        raise InvalidInputError("an array image source needs a .npy path or a built-in image set; pass one.")
    return read_npy(path, mmap=True)


def _index_class_folders(root: Path, labels: Any) -> tuple[list[str], np.ndarray, dict[str, int]] | None:
    """Files, labels and ``{folder: class}`` of a folder with one sub-folder per class; None for other folders."""
    folders = class_folders(root, labels)
    if folders is None:
        return None
    files: list[str] = []
    out: list[int] = []
    for name, c in folders.items():
        names = sorted(p.name for p in (root / name).iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
        if not names:
            raise InvalidInputError(f"folder {str(root / name)!r} holds no PNG/JPEG files; put the class's images "
                                    "there or remove the folder.")
        files.extend(f"{name}/{n}" for n in names)
        out.extend([c] * len(names))
    return files, np.asarray(out, dtype=np.int64), folders


def open_source(spec: Any, *, labels: Any = None, preprocess: Preprocess | None = None) -> ImageSource:
    """An :class:`ImageSource` for what ``--images`` accepts: a folder (class sub-folders, or flat with
    ``labels``), a ``.npy`` file (memory-mapped), ``"digits"``, or an array. Nothing is decoded yet."""
    pre = preprocess or Preprocess()
    if isinstance(spec, ImageSource):
        return spec
    if isinstance(labels, ClassMap):
        folder_class_map(spec, labels)  # refuses a class map for images that are not class folders
    if isinstance(spec, (str, os.PathLike)):
        s = os.fspath(spec)
        if s == "digits":
            from ssa.models import digits_data

            _, digit_labels = digits_data()
            given = None if labels is None else _array_labels(labels, len(digit_labels))
            return ArraySource(builtin="digits", labels=digit_labels if given is None else given)
        path = Path(s)
        if not path.exists():
            raise InvalidInputError(f"images {s!r} do not exist; pass a .npy file or a folder of PNG/JPEG files.")
        if path.is_dir():
            grouped = _index_class_folders(path, labels)
            if grouped is not None:
                if labels is not None and not isinstance(labels, ClassMap):
                    raise InvalidInputError("--labels cannot be combined with class sub-folders; the folder names "
                                            "are the labels (--class-map says which folder is which class). Drop "
                                            "--labels.")
                files, folder_labels, folders = grouped
                return FolderSource(path, tuple(files), pre, folder_labels, {c: n for n, c in folders.items()},
                                    class_map=folders)
            names_ = sorted(p.name for p in path.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
            if not names_:
                raise InvalidInputError(f"folder {s!r} holds no PNG/JPEG files and no class sub-folders; put the "
                                        "images there (root/<class>/*.png, or a flat folder with --labels).")
            lab = None
            if labels is not None:
                lab = (read_labels_file(labels, names_) if isinstance(labels, (str, os.PathLike))
                       else check_labels(np.asarray(labels), len(names_)))
            return FolderSource(path, tuple(names_), pre, lab)
        if path.suffix.lower() == ".npy":
            arr = _open_array(str(path), None)
            if arr.ndim < 2 or arr.shape[0] == 0:
                raise InvalidInputError(f"images {s!r} must be shaped (N, ...) with at least one image, got shape "
                                        f"{arr.shape}.")
            return ArraySource(path=str(path), labels=_array_labels(labels, arr.shape[0]))
        raise InvalidInputError(f"images must be a .npy file or a folder of PNG/JPEG files, got {path.name!r}.")
    arr = np.asarray(spec.detach().cpu().numpy() if hasattr(spec, "detach") else spec)
    if arr.ndim < 2 or arr.shape[0] == 0:
        raise InvalidInputError(f"images must be shaped (N, ...) with at least one image, got shape {arr.shape}.")
    return ArraySource(array=arr, labels=_array_labels(labels, arr.shape[0]))


def _array_labels(labels: Any, n: int) -> np.ndarray | None:
    if labels is None:
        return None
    if isinstance(labels, (str, os.PathLike)):
        labels = read_npy(labels, what="labels")
    return check_labels(np.asarray(labels), n)


# -- streaming -------------------------------------------------------------------------------------------------

@dataclass
class DecodeStats:
    """Images decoded and the seconds the consumer waited for them (decode throughput as seen downstream)."""

    images: int = 0
    seconds: float = 0.0

    def add(self, other: DecodeStats) -> None:
        self.images += other.images
        self.seconds += other.seconds


class _Items:
    """Map-style dataset over a source's positions, for torch's DataLoader (any object with len/getitem)."""

    def __init__(self, source: ImageSource, positions: np.ndarray, raw: bool = False) -> None:
        self.source, self.positions, self.raw = source, positions, raw

    def __len__(self) -> int:
        return len(self.positions)

    def __getitem__(self, k: int):
        i = int(self.positions[k])
        if self.raw:  # GPU decoding: the worker only reads the file's bytes
            assert isinstance(self.source, FolderSource)
            return i, (self.source.root / self.source.files[i]).read_bytes()
        return i, self.source.read(i)


def _stack(items):
    idx = np.array([i for i, _ in items], dtype=np.int64)
    return idx, [a for _, a in items]


def _check_same_shape(source: ImageSource, idx: np.ndarray, arrays: list[np.ndarray], shape: tuple | None) -> tuple:
    for i, a in zip(idx, arrays, strict=False):
        if shape is None:
            shape = a.shape
        elif a.shape != shape:
            raise InvalidInputError(f"image {Path(source.name_of(int(i))).name!r} has shape {a.shape}, others {shape}; "
                                    "pass --resize H,W (or a --preprocess that sets the size).")
    return shape  # type: ignore[return-value]


def iter_batches(source: ImageSource, positions: Sequence[int] | np.ndarray | None = None, *, batch_size: int = 32,
                 workers: int = 0, prefetch: int = 2, stats: DecodeStats | None = None
                 ) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """``(positions, images)`` batches of ``source`` in order; at most about ``(workers + 1) x prefetch x
    batch_size`` decoded images exist at once.

    ``workers`` > 0 decodes in that many processes (torch ``DataLoader``); a :class:`FolderSource` with
    ``decoder="gpu"`` reads the files' bytes in the workers and decodes JPEGs with torchvision on its device.
    ``stats`` (optional) accumulates the images delivered and the seconds spent waiting for them.
    Images of a different shape than the first are refused (one line naming the file).
    """
    pos = np.arange(len(source), dtype=np.int64) if positions is None else np.asarray(positions, dtype=np.int64)
    if pos.size == 0:
        return
    gpu = isinstance(source, FolderSource) and source.decoder == "gpu"
    if isinstance(source, ArraySource) and not gpu:  # rows of an array: no decoding, slice directly
        shape = None
        for k in range(0, pos.size, batch_size):
            t0 = time.perf_counter()
            chunk = pos[k:k + batch_size]
            batch = source.read_many(chunk)
            if stats is not None:
                stats.images += len(chunk)
                stats.seconds += time.perf_counter() - t0
            if shape is None:
                shape = batch.shape[1:]
            yield chunk, batch
        return
    items = _Items(source, pos, raw=gpu)
    if workers <= 0:
        batches: Any = (_stack([items[j] for j in range(k, min(k + batch_size, len(items)))])
                        for k in range(0, len(items), batch_size))
    else:
        import torch.utils.data  # torch: only where images are streamed (kept out of `import ssa`)

        dataset: Any = items  # a map-style dataset: torch's DataLoader takes any object with __len__/__getitem__
        batches = torch.utils.data.DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=workers,
                                              collate_fn=_stack, prefetch_factor=prefetch, persistent_workers=False)
    shape = None
    it = iter(batches)
    try:
        while True:
            t0 = time.perf_counter()
            try:
                idx, arrays = next(it)
            except StopIteration:
                return
            if gpu:
                arrays = _gpu_decode(source, idx, arrays)  # type: ignore[arg-type]
            shape = _check_same_shape(source, idx, arrays, shape)
            batch = np.stack(arrays)
            if stats is not None:
                stats.images += len(idx)
                stats.seconds += time.perf_counter() - t0
            yield idx, batch
    finally:
        del it  # shuts a DataLoader's workers down when the consumer stops early


def _gpu_decode(source: FolderSource, idx: np.ndarray, blobs: list[bytes]) -> list[np.ndarray]:
    """Decode JPEG bytes on ``source.device`` with torchvision (nvJPEG on CUDA) and preprocess there.

    The geometry uses torchvision's tensor resize (antialiased) and crop, so pixels differ slightly from
    Pillow's (the reference decoder): a different image set by content hash. Non-JPEG files (PNG) and
    grayscale-vs-RGB conversion go through Pillow's path.
    """
    import warnings

    import torch  # torch/torchvision: only on the GPU decoding path

    with warnings.catch_warnings():  # torchvision 0.29 announces torchcodec as the successor of its decoders
        warnings.simplefilter("ignore", DeprecationWarning)
        from torchvision.io import ImageReadMode, decode_jpeg
    from torchvision.transforms.v2 import functional as F

    pre = source.preprocess
    mode = ImageReadMode.GRAY if pre.channels == 1 else ImageReadMode.RGB
    jpeg = [k for k, b in enumerate(blobs) if b[:2] == b"\xff\xd8"]
    out: list[np.ndarray | None] = [None] * len(blobs)
    for k in sorted(set(range(len(blobs))) - set(jpeg)):
        out[k] = source.read(int(idx[k]))
    if jpeg:
        data = [torch.frombuffer(bytearray(blobs[k]), dtype=torch.uint8) for k in jpeg]
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            decoded = decode_jpeg(data, mode=mode, device=source.device)
        interp = {"bilinear": F.InterpolationMode.BILINEAR, "nearest": F.InterpolationMode.NEAREST,
                  "bicubic": F.InterpolationMode.BICUBIC}[pre.interpolation]
        for k, img in zip(jpeg, decoded, strict=False):
            x = img
            if pre.resize_shorter is not None:
                h, w = x.shape[-2:]
                short, long_ = (w, h) if w <= h else (h, w)
                new_long = int(pre.resize_shorter * long_ / short)
                size = [new_long, pre.resize_shorter] if w <= h else [pre.resize_shorter, new_long]
                x = F.resize(x, size, interpolation=interp, antialias=True)
            if pre.resize is not None:
                x = F.resize(x, list(pre.resize), interpolation=interp, antialias=True)
            if pre.letterbox is not None:
                out[k] = source.read(int(idx[k]))  # letterboxing: the reference path
                continue
            if pre.crop is not None:
                x = F.center_crop(x, list(pre.crop))
            pixels = x.permute(1, 2, 0).to(torch.float32).cpu().numpy()
            out[k] = normalise(pixels, pre)
    return out  # type: ignore[return-value]


class StreamHash:
    """:func:`ssa.engines.store.images_hash` of a whole image set, fed batch by batch in order.

    ``images_hash(np.concatenate(batches))`` equals ``StreamHash(n).update(b) ... .hexdigest()`` for batches
    that together hold the ``n`` images (float32); the set never has to be in memory at once.
    """

    def __init__(self, n: int) -> None:
        self.n = int(n)
        self._h: Any = None
        self._seen = 0

    def update(self, batch: np.ndarray) -> StreamHash:
        batch = np.ascontiguousarray(batch, dtype=np.float32)
        if self._h is None:
            self._h = hashlib.blake2b(digest_size=16)
            self._h.update(str(((self.n, *batch.shape[1:]), str(batch.dtype))).encode())
        self._h.update(batch.tobytes())
        self._seen += batch.shape[0]
        return self

    def hexdigest(self) -> str:
        if self._seen != self.n:
            raise RuntimeError(f"StreamHash was fed {self._seen} images of {self.n}")
        return self._h.hexdigest()


def content_hash(source: ImageSource, *, batch_size: int = 64, workers: int = 0,
                 on_batch: Callable[[int], None] | None = None) -> str:
    """The ``images_hash`` of the whole source, streamed (every image decoded once, never all in memory).

    Refuses a non-finite image or one of another shape (one line naming it), before any analysis.
    """
    h = StreamHash(len(source))
    for idx, batch in iter_batches(source, batch_size=batch_size, workers=workers):
        bad = ~np.isfinite(batch.reshape(batch.shape[0], -1)).all(axis=1)
        if bad.any():
            raise InvalidInputError(f"image {Path(source.name_of(int(idx[np.flatnonzero(bad)[0]]))).name!r} holds NaN "
                                    "or infinite values after preprocessing; fix it or the preprocessing (std 0?).")
        h.update(batch)
        if on_batch is not None:
            on_batch(len(idx))
    return h.hexdigest()
