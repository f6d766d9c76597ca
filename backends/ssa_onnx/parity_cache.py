"""Parity results remembered by the model file's content hash: the check runs once per model file.

The parity check (:mod:`ssa_onnx.parity`) runs onnxruntime, onnx2torch's conversion and the
canonical module on the first images: seconds for a large model, at every run. Once the
comparisons passed, :func:`remember` stores them in ``parity.json`` in ssa's cache folder
(:func:`ssa.io.paths.user_cache_dir`: ``$SSA_CACHE``, ``$XDG_CACHE_HOME/ssa`` or ``~/.cache/ssa``)
under a key made of the file's SHA-256 and everything else the result depends on: the tolerance,
the device and provider, the per-image input shape, the number of images compared, the
versions of ssa, onnx2torch, torch and onnxruntime, and the sizes and times of the backends' source
files (a changed checkout re-checks). A changed file, tolerance or version is a new
key, so the check runs again; a failed check is never remembered. An analysis whose canonical module agrees
does not check the conversion on its own (``OnnxNetwork.prepare_deferred``): its entry says so (``converted`` is
null), and ``ssa check``, which shows both, checks such a file again. ``SSA_PARITY_CACHE=0`` turns the
cache off. An unreadable cache file is ignored (and rewritten), never an error.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import asdict
from importlib import metadata
from pathlib import Path
from typing import Any

from ssa.core.checks import env_switch
from ssa.io.atomic import write_cache_file
from ssa.io.paths import user_cache_dir

from .parity import ParityResult

__all__ = ["enabled", "cache_path", "file_sha256", "parity_key", "recall", "remember", "knows_file", "MAX_ENTRIES"]

#: entries kept in the cache file (the most recently written)
MAX_ENTRIES = 256
_VERSION = 1  # of the entries' layout


def enabled() -> bool:
    """False when ``SSA_PARITY_CACHE`` is 0, off, no or false (:func:`ssa.core.checks.env_switch`; another value
    is refused)."""
    return env_switch("SSA_PARITY_CACHE") is not False


def cache_path() -> Path:
    return user_cache_dir() / "parity.json"


def file_sha256(path: str | os.PathLike) -> str:
    """SHA-256 of the file's bytes."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 22), b""):
            h.update(block)
    return h.hexdigest()


def _version(dist: str) -> str:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return "none"


def _code_fingerprint() -> str:
    """Names, sizes and modification times of the ONNX and PyTorch backends' sources: a checkout whose conversion
    or canonical form changed gets new keys even when its version number did not."""
    import ssa_torch

    h = hashlib.sha256()
    for root in (Path(__file__).parent, Path(ssa_torch.__file__).parent):
        for path in sorted(root.rglob("*.py")):
            st = path.stat()
            h.update(f"{path.relative_to(root)}:{st.st_size}:{st.st_mtime_ns};".encode())
    return h.hexdigest()


def parity_key(file_hash: str, *, tolerance: float, device: str, provider: str, input_shape: tuple[int, ...],
               n_images: int) -> str:
    """The cache key: a hash of the file's hash and of everything else the parity result depends on."""
    parts = {"layout": _VERSION, "file": file_hash, "tolerance": float(tolerance), "device": str(device),
             "provider": str(provider), "input_shape": [int(d) for d in input_shape], "n_images": int(n_images),
             "ssa": _version("stepwise-sa"), "code": _code_fingerprint(),
             "onnx2torch": _version("onnx2torch"), "torch": _version("torch"),
             "onnxruntime": _version("onnxruntime")}
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()


def _read() -> dict[str, Any]:
    try:
        data = json.loads(cache_path().read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _result(fields: Any) -> ParityResult | None:
    try:
        return ParityResult(**{**fields, "remembered": True})
    except TypeError:
        return None


def recall(key: str) -> tuple[ParityResult | None, ParityResult, str] | None:
    """(the conversion's parity, the canonical module's parity, output kind) remembered under ``key``, or None; the
    conversion's is None where the run that remembered them did not check it (an analysis: see :func:`remember`)."""
    entry = _read().get(key)
    if not isinstance(entry, dict):
        return None
    unchecked = "converted" in entry and entry["converted"] is None
    converted, canonical = _result(entry.get("converted")), _result(entry.get("canonical"))
    kind = entry.get("output_kind")
    if (converted is None and not unchecked) or canonical is None or not isinstance(kind, str) or \
            not canonical.ok or (converted is not None and not converted.ok):
        return None
    return converted, canonical, kind


def knows_file(file_hash: str) -> bool:
    """Whether an entry was remembered for the file of this SHA-256 (under any settings): its next run most likely
    recalls its check (:class:`ssa_onnx.prefetch.Prefetch` then builds no onnxruntime session)."""
    return any(isinstance(entry, dict) and entry.get("file") == file_hash for entry in _read().values())


def remember(key: str, converted: ParityResult | None, canonical: ParityResult, output_kind: str,
             file_hash: str | None = None) -> bool:
    """Store passed checks under ``key`` (``file_hash``: the file's SHA-256, for :func:`knows_file`); ``converted``
    None: the conversion was not checked on its own (stored as null, never as passed). False (nothing written) when
    a check failed or the cache folder cannot be written (the cache is an optimisation: the run goes on)."""
    if not (canonical.ok and (converted is None or converted.ok)):
        return False
    data = _read()
    data.pop(key, None)
    data[key] = {"converted": None if converted is None else {**asdict(converted), "remembered": False},
                 "canonical": {**asdict(canonical), "remembered": False}, "output_kind": output_kind}
    if file_hash is not None:
        data[key]["file"] = file_hash
    keep = dict(list(data.items())[-MAX_ENTRIES:])
    return _write(cache_path(), json.dumps(keep, indent=1).encode())


def _write(path: Path, data: bytes) -> bool:
    """Best effort, never half-written (:func:`ssa.io.atomic.write_cache_file`: a temporary file in the same folder,
    then a rename; not recorded as an output of the run); False on any OS error."""
    return write_cache_file(path, data) is None
