"""Reference images of the explorer's neurons: the model-side part of ``ssa explore``.

Everything that runs the network for the explorer is in this module, behind one function,
:func:`reference_images` (plus :func:`class_indices`, which finds the images each graph was
made from). For every neuron of the graphs it gives:

* **most relevant** (per class): the class's images with the largest per-image relevance of the
  neuron, ``r_i(v)`` = the mean over the graph's edges ``u -> v`` of omega[u, i, v] (so the mean of
  ``r_i(v)`` over the class's images is the node's ``mean_relevance``). omega comes from the same
  relevance sources as the traversal: the one-pass statistics (collected once for all the images,
  shared by every class) where a step has the closed form, batched autograd per tap elsewhere;
* **most active**: the analysed images (all classes together) with the largest neuron scalar
  (value, or spatial mean), from one forward pass per image batch;
* each reference **cropped to the neuron's receptive field** with a heat overlay: for a conv neuron,
  the support of the gradient of its strongest position w.r.t. the input (that position's receptive
  field on that image) with the activation map as heat; a dense neuron sees the whole image, and its
  heat is its saliency;
* its **saliency** (|gradient of the neuron's scalar w.r.t. the input|, max over channels; as
  :func:`ssa.viz.figures.saliency`) on each of its reference images.

Crops and saliency are batched over (neuron, image) pairs through the network's
:class:`~ssa.core.capabilities.SupportsInputMaps` capability (``pair_maps``: one forward and one
backward pass per tap and batch of pairs, each row of the batch carrying its own neuron, never one
pass per neuron). The result is cached on disk, keyed by the model's content hash, the images'
content hash, the graphs and the settings. The network must have input maps (the torch and ONNX
backends do).
"""

from __future__ import annotations

import base64
import hashlib
import io
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

import networkx as nx
import numpy as np
from matplotlib import colormaps
from PIL import Image

from ssa.analysis.grouping import group_images
from ssa.core.capabilities import SupportsInputMaps, require
from ssa.core.graph import DependencyGraph
from ssa.core.interfaces import Network
from ssa.engines.autograd import AutogradSource
from ssa.engines.closed_form import FastSource
from ssa.engines.statistics import collect
from ssa.engines.store import images_hash
from ssa.errors import InvalidInputError
from ssa.io.atomic import atomic_write_bytes
from ssa.plugins import make_rule
from ssa.viz.figures.common import dependency_graph, display_image, rgb, saliency_map

__all__ = ["References", "reference_images", "class_indices", "default_cache_dir", "CACHE_VERSION"]

CACHE_VERSION = 1
_CLASS_TAP = "logits"


@dataclass(frozen=True)
class References:
    """Reference images of every neuron of some graphs.

    data : ``{node id: JSON-ready dict}`` (see ``docs/explorer.md``, "neurons/<node>.json").
    cached : True when read from the cache rather than computed.
    path : the cache file (None without a cache).
    """

    data: Mapping[str, Any]
    cached: bool
    path: Path | None


def default_cache_dir() -> Path:
    """``$SSA_CACHE``, else ``$XDG_CACHE_HOME/ssa``, else ``~/.cache/ssa``; explorer data go to ``explorer/``."""
    root = os.environ.get("SSA_CACHE")
    if root:
        return Path(root) / "explorer"
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "ssa" / "explorer"


def class_indices(network: Network, graph: nx.DiGraph, images: np.ndarray, labels: np.ndarray | None) -> np.ndarray:
    """Positions in ``images`` of the images ``graph`` was made from, chosen as :func:`ssa.analyse_many` chose
    them (the graph's ``target``, ``grouping``, ``min_confidence``, ``max_per_class``). ``network`` is prepared.

    Refuses images that do not give the graph's number of images (other images than the graph's).
    """
    run = dependency_graph(graph).run
    target = run.target
    if target < 0:
        raise InvalidInputError("a graph has no 'target' attribute; pass graphs written by `ssa analyse`.")
    by_prediction = run.grouping == "prediction"
    max_per_class = run.max_per_class
    if labels is None and not by_prediction:
        idx = np.arange(images.shape[0])
        idx = idx[:int(max_per_class)] if max_per_class else idx
    else:
        idx = group_images(network, images, labels, [target], by_prediction=by_prediction,
                           min_confidence=run.min_confidence,
                           max_per_class=int(max_per_class) if max_per_class else None)[target].indices
    expected = run.n_images
    if expected and expected != len(idx):
        raise InvalidInputError(
            f"the graph of class {target} was made from {expected} images, but --images gives {len(idx)} for it; "
            "pass the images (and --labels) the graphs were made with.")
    return np.asarray(idx, dtype=np.int64)


# -- the network ---------------------------------------------------------------------------------------
def _scalars(network: Network, images: np.ndarray, taps: Sequence[str], batch_size: int) -> dict[str, np.ndarray]:
    """Every image's neuron scalars of ``taps``: one forward pass per batch."""
    parts: dict[str, list[np.ndarray]] = {t: [] for t in taps}
    for i in range(0, images.shape[0], batch_size):
        s = network.tap_scalars(images[i:i + batch_size])
        for t in taps:
            parts[t].append(np.asarray(s[t], dtype=np.float64))
    return {t: np.concatenate(v) for t, v in parts.items()}


def _per_image_relevance(network: Network, images: np.ndarray, rows: np.ndarray, graph: nx.DiGraph,
                         batch_size: int, stats_cache: dict[str, Any]) -> dict[str, np.ndarray]:
    """``{node: r (len(rows),)}``: per image, the mean over the graph's edges u -> node of omega[u, i, node]."""
    g = dependency_graph(graph)
    run = g.run
    rule = make_rule(run.rule or "gradient", **run.rule_params)
    form = rule.form
    fast = network.fast_taps(form) if form else frozenset()
    if fast:
        if form not in stats_cache:  # statistics of all the images, once, shared by every class
            stats_cache[form] = collect(network, images, [form], batch_size)
        source: Any = FastSource(network, stats_cache[form], form, images, batch_size, rows)
    else:
        source = AutogradSource(network, images[rows], batch_size)
    info = {n: g.info(n) for n in g.nodes}
    by_upper: dict[str, list[tuple[str, str]]] = {}
    for u, v in g.edges:
        by_upper.setdefault(info[u].tap, []).append((u, v))
    total: dict[str, np.ndarray] = {}
    count: dict[str, int] = {}
    for tap, edges in by_upper.items():
        neurons = sorted({info[u].neuron for u, _ in edges})
        col = {k: j for j, k in enumerate(neurons)}
        parts: dict[str, list[np.ndarray]] = {}
        for rel in source.iter_relevance(tap, neurons, rule):
            for parent, omega in rel.items():
                parts.setdefault(parent, []).append(np.asarray(omega, dtype=np.float64))
        omega_by_parent = {p: np.concatenate(v, axis=1) for p, v in parts.items()}  # (n, images, K)
        for u, v in edges:
            parent = info[v].tap
            if parent not in omega_by_parent:
                continue
            w = omega_by_parent[parent][col[info[u].neuron], :, info[v].neuron]
            w = np.where(np.isfinite(w), w, 0.0)
            total[v] = total.get(v, 0.0) + w
            count[v] = count.get(v, 0) + 1
    return {v: total[v] / count[v] for v in total}


def _top(values: np.ndarray, k: int) -> np.ndarray:
    """Positions of the ``k`` largest values, largest first (ties: lower position first)."""
    order = np.lexsort((np.arange(values.size), -values))
    return order[:k]


# -- pictures -----------------------------------------------------------------------------------------
def _png(rgb: np.ndarray, size: int) -> str:
    """An (H, W, 3) array in [0, 1] as a PNG data URI, its longest side scaled to about ``size`` pixels."""
    arr = (np.clip(rgb, 0.0, 1.0) * 255 + 0.5).astype(np.uint8)
    im = Image.fromarray(arr, mode="RGB")
    h, w = arr.shape[:2]
    f = size / max(h, w)
    if f > 1:
        f = max(1, int(f))  # whole-pixel blocks for small images
        im = im.resize((w * f, h * f), Image.NEAREST)
    elif f < 1:
        im = im.resize((max(1, round(w * f)), max(1, round(h * f))), Image.BILINEAR)
    buf = io.BytesIO()
    im.save(buf, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def _resize_map(m: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    m = np.asarray(m, dtype=np.float32)
    if m.ndim == 1:
        m = m[None, :]
    elif m.ndim > 2:
        m = m.reshape(m.shape[0], -1)
    return np.asarray(Image.fromarray(m, mode="F").resize((shape[1], shape[0]), Image.BILINEAR), dtype=np.float64)


def _overlay(base: np.ndarray, heat: np.ndarray, cmap: Any, strength: float = 0.7) -> np.ndarray:
    h = np.clip(heat, 0.0, 1.0)[..., None]
    return base * (1 - strength * h) + cmap(h[..., 0])[..., :3] * strength * h


def _bbox(mask: np.ndarray) -> tuple[int, int, int, int]:
    ys, xs = np.nonzero(mask)
    if ys.size == 0:
        return 0, mask.shape[0], 0, mask.shape[1]
    return int(ys.min()), int(ys.max()) + 1, int(xs.min()), int(xs.max()) + 1


# -- the whole computation ---------------------------------------------------------------------------------
def _cache_key(network: Network, images: np.ndarray, groups: Sequence[np.ndarray], graphs: Sequence[DependencyGraph],
               settings: Mapping[str, Any]) -> tuple[str, str, str] | None:
    try:
        fp = network.fingerprint()
    except NotImplementedError:
        return None
    h = hashlib.blake2b(digest_size=16)
    h.update(json.dumps({"version": CACHE_VERSION, "settings": dict(settings)}, sort_keys=True).encode())
    for rows, g in zip(groups, graphs):
        h.update(np.asarray(rows, dtype=np.int64).tobytes())
        run = g.run
        h.update(json.dumps([run.rule, dict(run.rule_params),
                             sorted((u, v, g.edge_info(u, v).sign) for u, v in g.edges),
                             sorted(g.nodes)]).encode())
    safe = "".join(c if c.isalnum() or c in "._-" else "_" for c in network.name)
    return f"{safe}-{fp[:16]}", images_hash(images), h.hexdigest()


def reference_images(network: Network, images: np.ndarray, groups: Sequence[np.ndarray],
                     graphs: Sequence[nx.DiGraph], *, top_k: int = 4, batch_size: int = 32, thumb: int = 72,
                     saliency_size: int = 200, cache_dir: str | os.PathLike | None = None,
                     use_cache: bool = True) -> References:
    """Reference images of every neuron of ``graphs`` (see the module docstring).

    Parameters
    ----------
    network : the prepared, PyTorch-backed network the graphs were made with.
    images : every image (``(n, ...)`` shaped for the model).
    groups : for each graph, the positions in ``images`` of its class's images (:func:`class_indices`).
    top_k : reference images per neuron and list (most relevant per class, most active).
    cache_dir : where to cache (default :func:`default_cache_dir`); ``use_cache=False`` neither reads nor writes.

    Returns
    -------
    :class:`References`; image numbers in it are positions in ``images``.
    """
    graphs = [dependency_graph(g) for g in graphs]
    if len(groups) != len(graphs):
        raise InvalidInputError(f"got {len(groups)} image groups for {len(graphs)} graphs; they must match.")
    if top_k < 1:
        raise InvalidInputError(f"top_k must be >= 1, got {top_k}.")
    maps = require(network, SupportsInputMaps, "reference images")
    taps = {t.name: t for t in network.taps}
    needed = sorted({tap for g in graphs for tap in g.taps()})
    missing = [t for t in needed if t not in taps]
    if missing:
        raise InvalidInputError(f"the graphs have taps the model does not ({', '.join(missing)}); pass the model "
                                "(and --taps) the graphs were made with.")
    union = np.unique(np.concatenate([np.asarray(g, dtype=np.int64) for g in groups]))
    imgs = np.ascontiguousarray(images[union])
    rows_of = [np.searchsorted(union, np.asarray(g, dtype=np.int64)) for g in groups]
    settings = {"top_k": top_k, "thumb": thumb, "saliency_size": saliency_size}

    key = _cache_key(network, imgs, rows_of, graphs, settings) if use_cache else None
    cache_file = None
    if key is not None:
        cache_file = Path(cache_dir or default_cache_dir()) / key[0] / key[1] / f"references-{key[2]}.json"
        if cache_file.is_file():
            try:
                return References(json.loads(cache_file.read_text(encoding="utf-8")), True, cache_file)
            except (OSError, ValueError):
                pass  # unreadable: compute again and overwrite

    # 1. scalars of every analysed image (one forward pass per batch) -> most active
    scal = _scalars(network, imgs, needed, batch_size)
    # 2. per-image relevance of every node of every class graph, from the relevance sources -> most relevant
    stats_cache: dict[str, Any] = {}
    relevant: dict[str, dict[int, list[tuple[int, float]]]] = {}
    for gi, (g, rows) in enumerate(zip(graphs, rows_of)):
        per = _per_image_relevance(network, imgs, rows, g, batch_size, stats_cache)
        for node, r in per.items():
            relevant.setdefault(node, {})[gi] = [(int(rows[j]), float(r[j])) for j in _top(r, top_k)]
    nodes: dict[str, tuple[str, int]] = {}
    for g in graphs:
        for n in g.nodes:
            info = g.info(n)
            nodes.setdefault(n, (info.tap, info.neuron))
    active = {n: [(int(u), float(scal[t][u, k])) for u in _top(scal[t][:, k], top_k)] for n, (t, k) in nodes.items()}
    # 3. crops and saliency for every (neuron, image) pair, batched per tap
    pairs: dict[str, set[tuple[int, int]]] = {}
    for n, (t, k) in nodes.items():
        us = {u for u, _ in active[n]} | {u for lst in relevant.get(n, {}).values() for u, _ in lst}
        pairs.setdefault(t, set()).update((k, u) for u in us)
    shown = [rgb(display_image(im)) for im in imgs]
    crop: dict[tuple[str, int, int], tuple[np.ndarray, np.ndarray]] = {}  # (tap, k, u) -> (image crop, heat crop)
    sal: dict[tuple[str, int, int], np.ndarray] = {}
    for t, todo in pairs.items():
        spatial = len(taps[t].shape) >= 2
        todo_l = sorted(todo, key=lambda p: (p[1], p[0]))
        for i in range(0, len(todo_l), batch_size):  # one forward and one backward pass per chunk of pairs
            chunk = todo_l[i:i + batch_size]
            ks = np.array([k for k, _ in chunk])
            us = np.array([u for _, u in chunk])
            pm = maps.pair_maps(imgs[us], t, ks, batch_size=batch_size)
            for j, (k, u) in enumerate(chunk):
                sal[(t, k, u)] = saliency_map(pm.saliency[j], imgs[u])
                if spatial:
                    assert pm.peak_gradient is not None and pm.activations is not None
                    h, w = shown[u].shape[:2]
                    y0, y1, x0, x1 = _bbox(saliency_map(pm.peak_gradient[j], imgs[u]) > 0)
                    heat = _resize_map(pm.activations[j], (h, w))
                    crop[(t, k, u)] = (shown[u][y0:y1, x0:x1], heat[y0:y1, x0:x1])
                else:
                    crop[(t, k, u)] = (shown[u], sal[(t, k, u)])
    # 4. pictures
    heat_cmap, sal_cmap = colormaps["magma"], colormaps["inferno"]
    data: dict[str, Any] = {}
    for n, (t, k) in nodes.items():
        spatial = len(taps[t].shape) >= 2
        us = sorted({u for u, _ in active[n]} | {u for lst in relevant.get(n, {}).values() for u, _ in lst})
        top = max([float(np.max(crop[(t, k, u)][1])) for u in us] + [0.0]) or 1.0  # one heat scale per neuron

        def item(u: int, value: float) -> dict[str, Any]:
            base, heat = crop[(t, k, u)]
            return {"image": int(union[u]), "value": value, "src": _png(_overlay(base, heat / top, heat_cmap), thumb)}

        saliency = {}
        for u in us:
            s = sal[(t, k, u)]
            smax = float(s.max())
            saliency[str(int(union[u]))] = {
                "max": smax, "src": _png(0.35 * shown[u] + 0.65 * sal_cmap(s / (smax or 1.0))[..., :3], saliency_size)}
        data[n] = {
            "node": n, "tap": t, "neuron": k, "kind": "map" if spatial else "value", "n_analysed": int(union.size),
            "crop_note": ("Crops: the receptive field of the neuron's strongest position in each image (where that "
                          "position's gradient w.r.t. the input is non-zero); heat: its activation map."
                          if spatial else "A dense neuron sees the whole image; heat: its saliency."),
            "active": [item(u, v) for u, v in active[n]],
            "relevant": {str(gi): [item(u, v) for u, v in lst] for gi, lst in sorted(relevant.get(n, {}).items())},
            "saliency": saliency,
        }
    if cache_file is not None:
        atomic_write_bytes(cache_file, json.dumps(data, separators=(",", ":"), allow_nan=False).encode("utf-8"))
    return References(data, False, cache_file)
