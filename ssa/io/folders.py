"""Image folders with one sub-folder per class (``folder/3/*.png``).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

from ssa.errors import InvalidInputError
from ssa.io.images import IMAGE_SUFFIXES, Preprocess, load_images, validate_images

__all__ = ['class_folders', 'load_grouped_images']


def class_folders(path: str | os.PathLike) -> dict[int, Path] | None:
    """``{class: folder}`` when ``path`` is a folder of sub-folders named by integer class, else None."""
    p = Path(path)
    if not p.is_dir():
        return None
    if any(f.is_file() and f.suffix.lower() in IMAGE_SUFFIXES for f in p.iterdir()):
        return None
    subs = {}
    for d in p.iterdir():
        if d.is_dir() and d.name.isdigit():
            subs[int(d.name)] = d
    return dict(sorted(subs.items())) or None


def load_grouped_images(spec: Any, *, labels: Any = None, preprocess: Preprocess | None = None
                        ) -> tuple[np.ndarray, np.ndarray | None]:
    """Images and labels; a folder of class sub-folders (``folder/3/*.png``) gives labels from the folder names."""
    if isinstance(spec, (str, os.PathLike)) and spec != "digits":
        folders = class_folders(spec)
        if folders is not None:
            from ssa.io.images import _read_folder

            parts: list[np.ndarray] = []
            labs: list[np.ndarray] = []
            for c, folder in folders.items():
                arr, _ = _read_folder(folder, preprocess or Preprocess())
                if parts and arr.shape[1:] != parts[0].shape[1:]:
                    raise InvalidInputError(
                        f"images in {str(folder)!r} have shape {arr.shape[1:]}, others {parts[0].shape[1:]}; "
                        "pass --resize H,W.")
                parts.append(arr)
                labs.append(np.full(arr.shape[0], c, np.int64))
            lab = np.concatenate(labs)
            if labels is not None:
                raise InvalidInputError("--labels cannot be combined with class sub-folders; the folder names are "
                                        "the labels. Drop --labels.")
            return validate_images(np.concatenate(parts)), lab
    return load_images(spec, preprocess=preprocess, labels=labels)
