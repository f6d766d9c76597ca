"""Reference images of the explorer's neurons: the model-side part of ``ssa explore``.

Everything that runs the network for the explorer is in this module, behind one function,
:func:`reference_images` (plus :func:`class_indices`, which finds the images each graph was
made from). For every neuron of the graphs it gives:

* **most relevant** (per class): the class's images with the largest per-image relevance of the
  neuron, ``r_i(v)`` = the mean over the graph's edges ``u -> v`` of omega[u, i, v] (so the mean of
  ``r_i(v)`` over the class's images is the node's ``mean_relevance``). omega comes from the same
  relevance sources as the traversal, asked of a :class:`~ssa.session.Session` (its engine choice and
  checks): the one-pass statistics (collected once for all the images, shared by every class) where a
  step has the closed form, batched autograd per tap elsewhere;
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
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import networkx as nx
import numpy as np
from matplotlib import colormaps
from PIL import Image

from ssa.analysis.grouping import group_images
from ssa.core.arrays import to_numpy
from ssa.core.budget import WORK_BYTES
from ssa.core.capabilities import SupportsInputMaps, unsupported
from ssa.core.graph import DependencyGraph
from ssa.core.interfaces import Network
from ssa.core.traversal import step_omega
from ssa.engines.store import images_hash
from ssa.errors import InvalidInputError, SSAWarning
from ssa.io.atomic import write_cache_file
from ssa.io.paths import user_cache_dir
from ssa.session import Session
from ssa.viz.figures.common import dependency_graph, display_image, rgb, saliency_map

__all__ = ["References", "reference_images", "class_indices", "default_cache_dir", "decode_maps", "CACHE_VERSION",
           "DEFAULT_SALIENCY_BUDGET", "SALIENCY_GRID"]

CACHE_VERSION = 2
DEFAULT_SALIENCY_BUDGET = 8 * 2**20  # bytes of quantised saliency maps for "any image of the class"
SALIENCY_GRID = 32  # longest side of those maps; larger images are pooled
_CLASS_TAP = "logits"


@dataclass(frozen=True)
class References:
    """Reference images of every neuron of some graphs.

    data : ``{node id: JSON-ready dict}`` (see ``docs/explorer.md``, "neurons/<node>.json").
    cached : True when read from the cache rather than computed.
    path : the cache file (None without a cache).
    images : the analysed images at the saliency grid, for the saliency on any of a class's images
        (``images.json``: ``shape``, ``factor``, ``index``, ``pixels``, ``lut``); None when none is offered.
    note : what the saliency on a chosen image offers (every image of the class, or how many, and why).
    """

    data: Mapping[str, Any]
    cached: bool
    path: Path | None
    images: Mapping[str, Any] | None = None
    note: str = ""


def default_cache_dir() -> Path:
    """``$SSA_CACHE``, else ``$XDG_CACHE_HOME/ssa``, else ``~/.cache/ssa``; explorer data go to ``explorer/``."""
    return user_cache_dir() / "explorer"


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
            parts[t].append(to_numpy(s[t]).astype(np.float64))
    return {t: np.concatenate(v) for t, v in parts.items()}


def _per_image_relevance(network: Network, images: np.ndarray, rows: np.ndarray, graph: nx.DiGraph,
                         batch_size: int, sessions: dict[str, Session]) -> dict[str, np.ndarray]:
    """``{node: r (len(rows),)}``: per image, the mean over the graph's edges u -> node of omega[u, i, node].

    omega comes from the relevance source a :class:`~ssa.session.Session` of the graph's rule gives for the
    class's images (its engine choice and checks); ``sessions`` keeps one session per rule, so the statistics
    of all the images are collected once and shared by every class of that rule.
    """
    g = dependency_graph(graph)
    run = g.run
    key = json.dumps([run.rule or "gradient", dict(run.rule_params)], sort_keys=True, default=str)
    if key not in sessions:
        sessions[key] = Session.of_network(network, images, rule=run.rule or "gradient",
                                           rule_params=run.rule_params, batch_size=batch_size)
    session = sessions[key]
    rule = session.rule
    source = session.relevance_source(rows)
    info = {n: g.info(n) for n in g.nodes}
    by_upper: dict[str, list[tuple[str, str]]] = {}
    for u, v in g.edges:
        by_upper.setdefault(info[u].tap, []).append((u, v))
    total: dict[str, np.ndarray] = {}
    count: dict[str, int] = {}
    for tap, edges in by_upper.items():
        neurons = sorted({info[u].neuron for u, _ in edges})
        col = {k: j for j, k in enumerate(neurons)}
        with network.arithmetic():  # the analysis's exact arithmetic (Session.analyse enters it the same way)
            omega_by_parent = step_omega(source, tap, neurons, rule)  # (n, images, K)
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
        im = im.resize((w * f, h * f), Image.Resampling.NEAREST)
    elif f < 1:
        im = im.resize((max(1, round(w * f)), max(1, round(h * f))), Image.Resampling.BILINEAR)
    buf = io.BytesIO()
    im.save(buf, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def _resize_map(m: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    m = np.asarray(m, dtype=np.float32)
    if m.ndim == 1:
        m = m[None, :]
    elif m.ndim > 2:
        m = m.reshape(m.shape[0], -1)
    resized = Image.fromarray(m, mode="F").resize((shape[1], shape[0]), Image.Resampling.BILINEAR)
    return np.asarray(resized, dtype=np.float64)


def _overlay(base: np.ndarray, heat: np.ndarray, cmap: Any, strength: float = 0.7) -> np.ndarray:
    h = np.clip(heat, 0.0, 1.0)[..., None]
    return base * (1 - strength * h) + cmap(h[..., 0])[..., :3] * strength * h


def _bbox(mask: np.ndarray) -> tuple[int, int, int, int]:
    ys, xs = np.nonzero(mask)
    if ys.size == 0:
        return 0, mask.shape[0], 0, mask.shape[1]
    return int(ys.min()), int(ys.max()) + 1, int(xs.min()), int(xs.max()) + 1


# -- saliency on any image of a class -------------------------------------------------------------------
def _grid(h: int, w: int, grid: int) -> tuple[int, int, int]:
    """``(factor, rows, columns)``: images larger than ``grid`` are pooled by ``factor`` x ``factor`` blocks."""
    f = max(1, -(-max(h, w) // grid))
    return f, -(-h // f), -(-w // f)


def _pool(a: np.ndarray, f: int, how: str) -> np.ndarray:
    """Pool the last two axes of ``a`` by ``f`` x ``f`` blocks (``max`` or ``mean``; edges padded)."""
    if f == 1:
        return a
    h, w = a.shape[-2:]
    pad = [(0, 0)] * (a.ndim - 2) + [(0, -(-h // f) * f - h), (0, -(-w // f) * f - w)]
    b = np.pad(a, pad, mode="constant" if how == "max" else "edge")
    b = b.reshape(*a.shape[:-2], b.shape[-2] // f, f, b.shape[-1] // f, f)
    return b.max(axis=(-3, -1)) if how == "max" else b.mean(axis=(-3, -1))


def _abs_max_channels(grads: np.ndarray, image_shape: tuple[int, ...], hw: tuple[int, int]) -> np.ndarray:
    """``(..., H, W)``: |gradient| with the channel axis reduced by the maximum, for gradients ``(..., *image)``
    (as :func:`ssa.viz.figures.common.saliency_map`, vectorised)."""
    g = np.abs(grads)
    if len(image_shape) == 3:
        return g.max(axis=-3 if tuple(image_shape[1:]) == hw else -1)
    return g


def _b64(a: np.ndarray) -> str:
    return base64.b64encode(np.ascontiguousarray(a, dtype=np.uint8).tobytes()).decode("ascii")


def decode_maps(entry: Mapping[str, Any], shape: Sequence[int]) -> np.ndarray:
    """The saliency maps of one ``class_saliency`` entry as floats ``(n, rows, columns)`` (``shape``: the grid)."""
    q = np.frombuffer(base64.b64decode(entry["maps"]), dtype=np.uint8).reshape(-1, int(shape[0]), int(shape[1]))
    return q.astype(np.float64) / 255.0 * np.asarray(entry["max"], dtype=np.float64)[:, None, None]


def _round(v: float) -> float:
    return float(f"{v:.4g}")


def _class_saliency(maps: SupportsInputMaps, imgs: np.ndarray, union: np.ndarray, rows_of: Sequence[np.ndarray],
                    graphs: Sequence[DependencyGraph], relevance: Sequence[Mapping[str, np.ndarray]],
                    scal: Mapping[str, np.ndarray], *, budget: int, grid: int, batch_size: int
                    ) -> tuple[dict[str, dict[str, Any]], dict[str, Any] | None, str]:
    """The saliency of every neuron of every class graph on the class's images, quantised for the page.

    Returns ``({node: {class index: entry}}, images, note)``. An entry lists the class's images (numbers in
    ``--images``) ordered by the neuron's per-image relevance there (for the class neuron: by its value),
    with that number (``value``, ``by``), each map's largest |gradient| (``max``) and the maps as uint8
    (``maps``: base64 of ``(n, rows, columns)``, the map divided by its ``max``, times 255, rounded). When
    every (neuron, image) pair does not fit in ``budget`` bytes, each list keeps the ``cap`` images where
    the neuron is most relevant. The saliency comes from :meth:`SupportsInputMaps.saliency`: one forward pass
    per batch of a class's images and tap, and one backward pass batched over the tap's neurons.
    """
    h, w = display_image(imgs[0]).shape[:2]
    f, gh, gw = _grid(h, w, grid)
    pairs = sum(g.number_of_nodes() * len(rows) for g, rows in zip(graphs, rows_of, strict=False))
    per_image = gh * gw
    cap: int | None = None
    if pairs * per_image > budget:
        cap = int(budget // (per_image * max(1, sum(g.number_of_nodes() for g in graphs))))
    size = f"{gh}×{gw}" + (f" (|gradient| pooled by its maximum over {f}×{f} pixels)" if f > 1 else "")
    if cap == 0:
        return {}, None, (f"Saliency only on the reference images: maps of the classes' images would need "
                          f"{pairs * per_image / 2**20:.1f} MiB (raise --saliency-budget).")
    note = (f"Every image of the class has its saliency map ({size})." if cap is None else
            f"Only the {cap} images of each class where the neuron is most relevant have saliency maps ({size}): "
            f"all of them would need {pairs * per_image / 2**20:.1f} MiB, over the budget of "
            f"{budget / 2**20:.1f} MiB (raise --saliency-budget).")
    image_bytes = int(imgs[0].size) * 4
    out: dict[str, dict[str, Any]] = {}
    used: set[int] = set()
    for gi, (g, rows) in enumerate(zip(graphs, rows_of, strict=False)):
        for tap, nodes in g.layers():
            ks = [g.info(n).neuron for n in nodes]
            orders, values, by = {}, {}, {}
            for n, k in zip(nodes, ks, strict=False):
                r = relevance[gi].get(n)
                v, by[n] = (r, "relevance") if r is not None else (scal[tap][rows, k], "activation")
                orders[n] = _top(np.asarray(v, dtype=np.float64), cap or len(rows))
                values[n] = v
            need = np.array(sorted(set().union(*(set(o.tolist()) for o in orders.values()))), dtype=np.int64)
            slot = {int(p): i for i, p in enumerate(need)}
            q = np.zeros((len(nodes), len(need), gh, gw), np.uint8)
            top = np.zeros((len(nodes), len(need)))
            # as many images per pass as the memory budget allows (small models: all of the class's at once)
            step = max(batch_size, WORK_BYTES // max(1, 3 * image_bytes * len(ks)))
            for i0 in range(0, len(need), step):
                sel = need[i0:i0 + step]
                sal = maps.saliency(imgs[rows[sel]], tap, ks, batch_size=step)  # (b, K, *image)
                m = _pool(_abs_max_channels(sal, imgs.shape[1:], (h, w)), f, "max").transpose(1, 0, 2, 3)
                mx = m.reshape(len(ks), len(sel), -1).max(axis=2)
                top[:, i0:i0 + len(sel)] = mx
                q[:, i0:i0 + len(sel)] = np.rint(m / np.where(mx > 0, mx, 1.0)[..., None, None] * 255.0)
            for j, n in enumerate(nodes):
                pos = [slot[int(p)] for p in orders[n]]
                used.update(int(rows[p]) for p in orders[n])
                out.setdefault(n, {})[str(gi)] = {
                    "images": [int(union[rows[p]]) for p in orders[n]], "by": by[n],
                    "value": [_round(float(values[n][p])) for p in orders[n]],
                    "max": [_round(top[j, i]) for i in pos], "maps": _b64(q[j, pos]),
                }
    order = sorted(used)
    shown = [display_image(imgs[u]) for u in order]
    channels = 1 if shown[0].ndim == 2 else 3
    pixels = np.stack([_pool(a[None] if a.ndim == 2 else a[..., :3].transpose(2, 0, 1), f, "mean").transpose(1, 2, 0)
                       for a in shown])
    lut = colormaps["inferno"](np.arange(256) / 255.0)[:, :3]
    images = {"shape": [gh, gw, channels], "factor": f, "index": [int(union[u]) for u in order],
              "pixels": _b64(np.rint(pixels * 255.0)), "lut": _b64(np.rint(lut * 255.0))}
    return out, images, note


# -- the whole computation ---------------------------------------------------------------------------------
def _cache_key(network: Network, images: np.ndarray, groups: Sequence[np.ndarray], graphs: Sequence[DependencyGraph],
               settings: Mapping[str, Any]) -> tuple[str, str, str] | None:
    try:
        fp = network.fingerprint()
    except NotImplementedError:
        return None
    h = hashlib.blake2b(digest_size=16)
    h.update(json.dumps({"version": CACHE_VERSION, "settings": dict(settings)}, sort_keys=True).encode())
    for rows, g in zip(groups, graphs, strict=True):
        h.update(np.asarray(rows, dtype=np.int64).tobytes())
        run = g.run
        h.update(json.dumps([run.rule, dict(run.rule_params),
                             sorted((u, v, g.edge_info(u, v).sign) for u, v in g.edges),
                             sorted(g.nodes)]).encode())
    safe = "".join(c if c.isalnum() or c in "._-" else "_" for c in network.name)
    return f"{safe}-{fp[:16]}", images_hash(images), h.hexdigest()


def reference_images(network: Network, images: np.ndarray, groups: Sequence[np.ndarray],
                     graphs: Sequence[nx.DiGraph], *, top_k: int = 4, batch_size: int = 32, thumb: int = 72,
                     saliency_size: int = 200, saliency_budget: int = DEFAULT_SALIENCY_BUDGET,
                     saliency_grid: int = SALIENCY_GRID, cache_dir: str | os.PathLike | None = None,
                     use_cache: bool = True) -> References:
    """Reference images of every neuron of ``graphs`` (see the module docstring).

    Parameters
    ----------
    network : the prepared, PyTorch-backed network the graphs were made with.
    images : every image (``(n, ...)`` shaped for the model).
    groups : for each graph, the positions in ``images`` of its class's images (:func:`class_indices`).
    top_k : reference images per neuron and list (most relevant per class, most active).
    saliency_budget : bytes of quantised saliency maps for "saliency on a chosen image" (one byte per map cell):
        within it, every neuron of every class graph gets its saliency on every image of the class; beyond it,
        on the images where it is most relevant, as many per (neuron, class) as fit (0: none, only the
        reference images' saliency).
    saliency_grid : those maps' longest side; larger images are pooled (the maximum of |gradient| per block).
    cache_dir : where to cache (default :func:`default_cache_dir`); ``use_cache=False`` neither reads nor writes.

    Returns
    -------
    :class:`References`; image numbers in it are positions in ``images``.
    """
    dgraphs = [dependency_graph(g) for g in graphs]
    if len(groups) != len(dgraphs):
        raise InvalidInputError(f"got {len(groups)} image groups for {len(dgraphs)} graphs; they must match.")
    if top_k < 1:
        raise InvalidInputError(f"top_k must be >= 1, got {top_k}.")
    if saliency_budget < 0:
        raise InvalidInputError(f"the saliency budget must be >= 0, got {saliency_budget}.")
    if saliency_grid < 1:
        raise InvalidInputError(f"saliency_grid must be >= 1, got {saliency_grid}.")
    if not isinstance(network, SupportsInputMaps):
        raise unsupported(network, SupportsInputMaps, "reference images")
    taps = {t.name: t for t in network.taps}
    needed = sorted({tap for g in dgraphs for tap in g.taps()})
    missing = [t for t in needed if t not in taps]
    if missing:
        raise InvalidInputError(f"the graphs have taps the model does not ({', '.join(missing)}); pass the model "
                                "(and --taps) the graphs were made with.")
    union = np.unique(np.concatenate([np.asarray(g, dtype=np.int64) for g in groups]))
    imgs = np.ascontiguousarray(images[union])
    rows_of = [np.searchsorted(union, np.asarray(g, dtype=np.int64)) for g in groups]
    settings = {"top_k": top_k, "thumb": thumb, "saliency_size": saliency_size, "saliency_budget": saliency_budget,
                "saliency_grid": saliency_grid}

    key = _cache_key(network, imgs, rows_of, dgraphs, settings) if use_cache else None
    cache_file = None
    if key is not None:
        cache_file = Path(cache_dir or default_cache_dir()) / key[0] / key[1] / f"references-{key[2]}.json"
        if cache_file.is_file():
            try:
                cached = json.loads(cache_file.read_text(encoding="utf-8"))
                return References(cached["neurons"], True, cache_file, cached["images"], cached["note"])
            except (OSError, ValueError, KeyError, TypeError):
                pass  # unreadable: compute again and overwrite

    # 1. scalars of every analysed image (one forward pass per batch) -> most active
    scal = _scalars(network, imgs, needed, batch_size)
    # 2. per-image relevance of every node of every class graph, from the relevance sources -> most relevant
    sessions: dict[str, Session] = {}
    relevant: dict[str, dict[int, list[tuple[int, float]]]] = {}
    per_class = []
    for gi, (g, rows) in enumerate(zip(dgraphs, rows_of, strict=False)):
        per = _per_image_relevance(network, imgs, rows, g, batch_size, sessions)
        per_class.append(per)
        for node, r in per.items():
            relevant.setdefault(node, {})[gi] = [(int(rows[j]), float(r[j])) for j in _top(r, top_k)]
    nodes: dict[str, tuple[str, int]] = {}
    for g in dgraphs:
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
            ks = [k for k, _ in chunk]
            chunk_rows = np.array([u for _, u in chunk])
            pm = network.pair_maps(imgs[chunk_rows], t, ks, batch_size=batch_size)
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
    # 4. saliency of every neuron on (as many as the budget allows of) its classes' images
    on_class, pixels, note = _class_saliency(network, imgs, union, rows_of, dgraphs, per_class, scal,
                                             budget=saliency_budget, grid=saliency_grid, batch_size=batch_size)
    # 5. pictures
    heat_cmap, sal_cmap = colormaps["magma"], colormaps["inferno"]
    data: dict[str, Any] = {}
    for n, (t, k) in nodes.items():
        spatial = len(taps[t].shape) >= 2
        ref_rows = sorted({u for u, _ in active[n]} | {u for lst in relevant.get(n, {}).values() for u, _ in lst})
        top = max([float(np.max(crop[(t, k, u)][1])) for u in ref_rows] + [0.0]) or 1.0  # one heat scale per neuron

        def item(u: int, value: float, t: str = t, k: int = k, top: float = top) -> dict[str, Any]:
            base, heat = crop[(t, k, u)]
            return {"image": int(union[u]), "value": value, "src": _png(_overlay(base, heat / top, heat_cmap), thumb)}

        saliency = {}
        for u in ref_rows:
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
            "class_saliency": on_class.get(n, {}),
        }
    if cache_file is not None:
        record = {"version": CACHE_VERSION, "neurons": data, "images": pixels, "note": note}
        failed = write_cache_file(cache_file, json.dumps(record, separators=(",", ":"), allow_nan=False).encode())
        if failed is not None:  # a cache is no output: the references are computed, the explorer is written
            warnings.warn(f"cannot cache the reference images in {str(cache_file)!r} ({failed.strerror or failed}); "
                          "they were computed and are used, not cached (--cache DIR names another cache folder, "
                          "--no-cache turns it off).", SSAWarning, stacklevel=2)
            cache_file = None
    return References(data, False, cache_file, pixels, note)
