"""Class folders and their class indices: which folder of ``root/<class>/*.png`` is which logit.

A folder with one sub-folder per class is labelled by a :class:`ClassMap` (``--class-map``):

* ``"imagenet"``: the standard ILSVRC-2012 order, the sorted list of its 1000 WordNet synset ids
  (``n01440764`` is class 0, ``n15075141`` class 999), shipped as ``ssa/data/imagenet_synsets.txt`` (the list
  timm ships as ``timm/data/_info/imagenet_synsets.txt``);
* a ``.json`` file: ``{"cat": 3, "dog": 5}`` (folder name -> class index) or a list of folder names in class
  order (``["cat", "dog"]``: cat is 0);
* a ``.csv`` file: ``folder,index`` lines (a header line is skipped).

A folder that a file gives two classes (two lines, one JSON key twice, one name twice in a list) is refused.

Without a map (:func:`class_folder_labels`): folders named by numbers are those classes (``3/`` is class 3);
folders named otherwise are numbered in sorted name order (torchvision's ``ImageFolder``); folders named by
ImageNet synset ids are refused, with the fix (``--class-map imagenet``): numbered in sorted order, a subset of
ImageNet's classes would get the wrong indices. The labels a run used (folder -> index) are recorded in its
graphs (graph attribute ``class_map``).
"""

from __future__ import annotations

import csv
import json
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

from ssa.core.checks import first_repeated
from ssa.errors import InvalidInputError
from ssa.io.images import IMAGE_SUFFIXES

__all__ = ["ClassMap", "class_map", "imagenet_synsets", "is_synset", "class_folder_labels", "check_class_count"]

_SYNSET = re.compile(r"n\d{8}")


def is_synset(name: str) -> bool:
    """Whether ``name`` looks like a WordNet synset id (``n01440764``), as ImageNet names its class folders."""
    return _SYNSET.fullmatch(name) is not None


def imagenet_synsets() -> tuple[str, ...]:
    """The 1000 ILSVRC-2012 synset ids in the standard class order (sorted; index = class)."""
    text = resources.files("ssa").joinpath("data/imagenet_synsets.txt").read_text(encoding="utf-8")
    return tuple(text.split())


@dataclass(frozen=True)
class ClassMap:
    """Folder name -> class index, and where the map came from (``"imagenet"``, a file's path)."""

    indices: Mapping[str, int]
    source: str

    def labels_for(self, folders: list[str], root: Path) -> dict[str, int]:
        """``{folder: class}`` for the class folders of ``root``; a folder the map does not name is refused."""
        missing = [f for f in folders if f not in self.indices]
        if missing:
            raise InvalidInputError(
                f"class folder {str(root / missing[0])!r} is not in the class map {self.source} ({len(missing)} "
                f"folder(s) without a class index); add it to the map, remove the folder, or pass another "
                "--class-map.")
        return {f: int(self.indices[f]) for f in folders}


def _checked(indices: Mapping[Any, Any], source: str) -> ClassMap:
    out: dict[str, int] = {}
    for name, idx in indices.items():
        try:
            value = int(idx)
        except (TypeError, ValueError):
            value = -1
        if isinstance(idx, bool) or value < 0 or str(value) != str(idx).strip():
            raise InvalidInputError(f"class map {source}: folder {name!r} has class {idx!r}; every folder needs a "
                                    "class index, an integer >= 0.")
        out[str(name)] = value
    if not out:
        raise InvalidInputError(f"class map {source} names no folder; write folder -> class index pairs.")
    return ClassMap(out, source)


def _read_csv(path: Path) -> dict[str, str]:
    rows = [r for r in csv.reader(path.read_text(encoding="utf-8").splitlines()) if r and any(c.strip() for c in r)]
    if rows and len(rows[0]) == 2 and not rows[0][1].strip().isdigit():
        rows = rows[1:]  # a header line
    pairs = []
    for r in rows:
        if len(r) != 2:
            raise InvalidInputError(f"class map {str(path)!r}: cannot read the line {','.join(r)!r}; write one "
                                    "'folder,index' line per class.")
        pairs.append((r[0].strip(), r[1].strip()))
    return _once(pairs, repr(str(path)))


def _once(pairs: list[tuple[Any, Any]], source: str) -> dict[Any, Any]:
    """``dict(pairs)``, refusing a folder given two different classes (before, the last line won without a word)."""
    out: dict[Any, Any] = {}
    for name, idx in pairs:
        if name in out and str(out[name]).strip() != str(idx).strip():
            raise InvalidInputError(f"class map {source} gives folder {name!r} two classes, {out[name]} and {idx}; "
                                    "give each folder one class.")
        out[name] = idx
    return out


def class_map(spec: Any) -> ClassMap:
    """The :class:`ClassMap` of ``--class-map``: ``"imagenet"``, a ``.json`` or ``.csv`` file, a mapping of folder
    name -> class index, or a :class:`ClassMap`."""
    if isinstance(spec, ClassMap):
        return spec
    if isinstance(spec, Mapping):
        return _checked(spec, "given")
    if not isinstance(spec, (str, os.PathLike)):
        raise InvalidInputError(f"class map must be 'imagenet', a .json or .csv file or a mapping, got "
                                f"{type(spec).__name__}.")
    if os.fspath(spec) == "imagenet":
        return ClassMap({s: i for i, s in enumerate(imagenet_synsets())}, "imagenet")
    path = Path(spec)
    fix = "pass --class-map imagenet, or a .json ({\"folder\": index}) or .csv (folder,index lines) file"
    if path.suffix.lower() not in (".json", ".csv"):
        raise InvalidInputError(f"class map must be 'imagenet' or a .json or .csv file, got {os.fspath(spec)!r}; "
                                f"{fix}.")
    if not path.is_file():
        raise InvalidInputError(f"class map {os.fspath(spec)!r} does not exist; {fix}.")
    source = repr(os.fspath(spec))
    if path.suffix.lower() == ".csv":
        return _checked(_read_csv(path), source)
    try:
        data = json.loads(path.read_text(encoding="utf-8"), object_pairs_hook=lambda kv: _once(kv, source))
    except (ValueError, UnicodeDecodeError) as exc:
        if isinstance(exc, InvalidInputError):
            raise
        raise InvalidInputError(f"class map {source} is not valid JSON ({exc}); {fix}.") from None
    if isinstance(data, list) and all(isinstance(x, str) for x in data):
        twice = first_repeated(data)
        if twice is not None:
            raise InvalidInputError(f"class map {source} lists folder {twice!r} twice, as classes {data.index(twice)} "
                                    f"and {data.index(twice, data.index(twice) + 1)}; list each folder once.")
        data = {name: i for i, name in enumerate(data)}
    if not isinstance(data, dict):
        raise InvalidInputError(f"class map {source} must hold an object of folder -> class index (or a list of "
                                f"folder names in class order), got {type(data).__name__}.")
    return _checked(data, source)


def _refuse_images_beside_class_folders(root: Path, loose: list[str], entries: list[Path]) -> None:
    """A flat folder of images may not also hold sub-folders of images: read as a flat folder, the sub-folders'
    images (the classes) would be left out without a word, and read as class folders, the loose ones."""
    for d in sorted((e for e in entries if e.is_dir() and not e.name.startswith(".")), key=lambda e: e.name):
        try:
            holds_images = any(f.suffix.lower() in IMAGE_SUFFIXES and f.is_file() for f in d.iterdir())
        except OSError:  # a sub-folder that cannot be listed is not read either
            continue
        if holds_images:
            raise InvalidInputError(
                f"{str(root)!r} holds image files ({', '.join(loose[:2])}{', ...' if len(loose) > 2 else ''}) and "
                f"sub-folders of images ({d.name!r}, ...); ssa reads either a flat folder of images or one sub-folder "
                "per class: move the loose images into their class folder (or out), or pass one folder.")


def class_folder_labels(path: str | os.PathLike, labels: Any = None) -> dict[str, int] | None:
    """``{sub-folder: class index}`` of a folder with one sub-folder per class (``root/<class>/*.png``), in class
    order; None when ``path`` is not one (a file, a flat folder of images, a folder without sub-folders).

    ``labels``: a :class:`ClassMap` (``--class-map``), or None (numbers as indices, names in sorted order,
    ImageNet synset ids refused; see the module docstring). Hidden folders (``.name``) are ignored.
    """
    root = Path(path)
    if not root.is_dir():
        return None
    entries = list(root.iterdir())
    loose = sorted(f.name for f in entries if f.is_file() and f.suffix.lower() in IMAGE_SUFFIXES)
    if loose:
        _refuse_images_beside_class_folders(root, loose, entries)
        return None
    subs = sorted(d.name for d in entries if d.is_dir() and not d.name.startswith("."))
    if not subs:
        return None
    if isinstance(labels, ClassMap):
        found = labels.labels_for(subs, root)
    elif all(s.isdigit() for s in subs):
        found = {s: int(s) for s in subs}
    elif all(is_synset(s) for s in subs):
        raise InvalidInputError(
            f"the class folders of {str(root)!r} are ImageNet synset ids ({subs[0]}, ...), and numbered in sorted "
            "order they would not be the model's classes; pass --class-map imagenet (the standard ILSVRC-2012 "
            "order) or --class-map FILE (.json or .csv of folder -> class index); in a study file, class_map under "
            "[images].")
    elif any(s.isdigit() for s in subs):
        word = next(s for s in subs if not s.isdigit())
        raise InvalidInputError(
            f"the class folders of {str(root)!r} mix numbers ({next(s for s in subs if s.isdigit())}) and names "
            f"({word}); name every folder by its class index, or pass --class-map FILE (.json or .csv of folder -> "
            "class index).")
    else:
        found = {s: i for i, s in enumerate(subs)}  # torchvision's ImageFolder: sorted name order
    dup = _duplicates(found)
    if dup:
        raise InvalidInputError(f"class folders {dup[0]!r} and {dup[1]!r} of {str(root)!r} both get class "
                                f"{found[dup[0]]}; give every folder its own class (rename one, or fix the map).")
    return dict(sorted(found.items(), key=lambda kv: (kv[1], kv[0])))


def _duplicates(found: Mapping[str, int]) -> tuple[str, str] | None:
    seen: dict[int, str] = {}
    for name, idx in sorted(found.items()):
        if idx in seen:
            return seen[idx], name
        seen[idx] = name
    return None


def check_class_count(folders: Mapping[str, int] | None, n_logits: int) -> None:
    """Refuse class folders whose class index is not a logit of the model (before any long computation)."""
    if not folders:
        return
    name, idx = max(folders.items(), key=lambda kv: kv[1])
    if idx >= n_logits:
        raise InvalidInputError(
            f"class folder {name!r} is class {idx}, but the model has {n_logits} logits (classes 0-{n_logits - 1}); "
            "pass the model these classes belong to, or a --class-map that gives each folder its index in this "
            "model.")
