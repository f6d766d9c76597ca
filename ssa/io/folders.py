"""Image folders with one sub-folder per class (``folder/3/*.png``, ``imagenet/n01440764/*.JPEG``).

Which sub-folder is which class is :func:`ssa.io.classmap.class_folder_labels`'s (numbers as indices, a
``--class-map``, names in sorted order).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

from ssa.errors import InvalidInputError
from ssa.io.classmap import ClassMap, class_folder_labels
from ssa.io.images import Preprocess, load_images, validate_images
from ssa.io.preprocess import describe_preprocess

__all__ = ['class_folders', 'load_grouped_images', 'folder_class_map', 'files_preprocessing']


def class_folders(path: str | os.PathLike, labels: Any = None) -> dict[str, int] | None:
    """``{sub-folder: class}`` when ``path`` is a folder with one sub-folder per class, else None (see
    :func:`ssa.io.classmap.class_folder_labels`; ``labels`` may be a :class:`~ssa.io.classmap.ClassMap`)."""
    if not isinstance(path, (str, os.PathLike)) or os.fspath(path) == "digits":
        return None
    return class_folder_labels(path, labels if isinstance(labels, ClassMap) else None)


def folder_class_map(images: Any, labels: Any = None) -> dict[str, int] | None:
    """The labels a run on ``images`` uses, ``{folder: class}``, for class folders (recorded in graphs and
    manifests); None for other images. A :class:`ClassMap` for other images is refused."""
    found = class_folders(images, labels)
    if found is None and isinstance(labels, ClassMap):
        what = (repr(os.fspath(images)) if isinstance(images, (str, os.PathLike))
                else "not given" if images is None else "an array")
        raise InvalidInputError(f"--class-map applies to a folder with one sub-folder per class, and --images is "
                                f"{what}; drop --class-map, or pass --images ROOT with ROOT/<class>/*.png.")
    return found


def files_preprocessing(images: Any, preprocess: Preprocess | None) -> str | None:
    """How ``images`` are decoded, recorded in graphs (``preprocess``): for a folder of image files, else None
    (arrays and the digits are used as they are)."""
    if isinstance(images, (str, os.PathLike)) and os.fspath(images) != "digits" and Path(images).is_dir():
        return describe_preprocess(preprocess or Preprocess())
    return None


def load_grouped_images(spec: Any, *, labels: Any = None, preprocess: Preprocess | None = None
                        ) -> tuple[np.ndarray, np.ndarray | None]:
    """Images and labels; a folder of class sub-folders (``folder/3/*.png``) gives labels from the folder names
    (``labels`` may then be a :class:`~ssa.io.classmap.ClassMap`, ``--class-map``)."""
    folders = folder_class_map(spec, labels)
    if folders is None:
        return load_images(spec, preprocess=preprocess, labels=labels)
    if labels is not None and not isinstance(labels, ClassMap):
        raise InvalidInputError("--labels cannot be combined with class sub-folders; the folder names are the labels "
                                "(--class-map says which folder is which class). Drop --labels.")
    from ssa.io.images import _read_folder

    parts: list[np.ndarray] = []
    labs: list[np.ndarray] = []
    for name, c in folders.items():
        folder = Path(spec) / name
        arr, _ = _read_folder(folder, preprocess or Preprocess())
        if parts and arr.shape[1:] != parts[0].shape[1:]:
            raise InvalidInputError(
                f"images in {str(folder)!r} have shape {arr.shape[1:]}, others {parts[0].shape[1:]}; "
                "pass --resize H,W.")
        parts.append(arr)
        labs.append(np.full(arr.shape[0], c, np.int64))
    return validate_images(np.concatenate(parts)), np.concatenate(labs)
