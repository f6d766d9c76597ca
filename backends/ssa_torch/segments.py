"""A step by autograd runs only its own segment of the graph (method doc, sections 4 and 4b).

The step ``upper <- parents`` differentiates along the paths from the parent taps to the upper tap
that meet no other tap (cut semantics), so only the nodes on those paths need to run with gradients:
the **segment** of ``upper`` is every node reachable backwards from its node without passing through
a tap or the input. Its boundary is exactly its parent taps (and the input). The boundary values come
from one forward pass of the batch with every tap cut, kept (:class:`TapValues`) for the batch's next
steps within a memory budget, so that a transformer step costs the forward pass of its own block and
one batched backward pass, not a pass through the whole network; with what the steps' forward passes compute
(:func:`recorded_nodes`) kept by that pass with its autograd graph, their backward passes alone.
"""

from __future__ import annotations

import hashlib
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import fx

from .head import Head, split_head
from .interpreters import ModelCodeInterpreter
from .taps import TapPlan

__all__ = ["Segment", "segment_of", "recorded_nodes", "run_nodes", "run_segment", "TapValues", "batch_key"]


@dataclass
class Segment:
    """The nodes of one step, in graph order (``nodes``), and the boundary nodes they read (``boundary``)."""

    upper: str  # the upper tap's node name
    nodes: tuple[str, ...]
    boundary: tuple[str, ...]
    head: Head  # its linear top, in closed form (:mod:`ssa_torch.head`)
    batched: bool = True  # False once a backward pass below the head met an op without a batching rule
    probed: bool = False  # True once a batched backward pass said whether every op has one
    # the interpreter that runs it and the graph's nodes by name, made once (making one walks all the modules)
    runner: tuple[ModelCodeInterpreter, dict[str, fx.Node]] | None = field(default=None, repr=False, compare=False)


def segment_of(gm: fx.GraphModule, plan: TapPlan, upper: str) -> Segment:
    """The segment of tap ``upper``: its node and every node above it up to the taps and the input."""
    tap_nodes = {node for tap, node in plan.node_of.items()}
    by_name = {n.name: n for n in gm.graph.nodes}
    start = by_name[plan.node_of[upper]]
    inside: set[str] = {start.name}
    boundary: set[str] = set()
    stack = [start]
    while stack:
        node = stack.pop()
        for a in node.all_input_nodes:
            if a.name in inside or a.name in boundary:
                continue
            if a.name in tap_nodes or a.op == "placeholder":
                boundary.add(a.name)
            else:
                inside.add(a.name)
                stack.append(a)
    order = [n.name for n in gm.graph.nodes]
    nodes = tuple(n for n in order if n in inside)
    parents = tuple(n for n in order if n in boundary and n in tap_nodes)
    return Segment(start.name, nodes, tuple(n for n in order if n in boundary),
                   split_head(gm, nodes, start.name, parents))


def recorded_nodes(gm: fx.GraphModule, segment: Segment) -> tuple[str, ...]:
    """The nodes whose values (with their autograd graph) a step below the head of ``segment`` reads: what its
    forward pass computes (``head.compute``) and its stops, less the parameters and constants (``get_attr``).
    Empty when the step runs no backward pass (a head without stops)."""
    if not segment.head.stops:
        return ()
    attrs = {n.name for n in gm.graph.nodes if n.op == "get_attr"}
    wanted = set(segment.head.compute) | set(segment.head.stops)
    return tuple(n for n in segment.nodes if n in wanted and n not in attrs)


def run_nodes(gm: fx.GraphModule, segment: Segment, values: Mapping[str, torch.Tensor], batch: int,
              nodes: tuple[str, ...] | None = None) -> dict[str, Any]:
    """Every node of ``nodes`` (default: the whole segment) computed from ``values`` (boundary node name ->
    tensor), and the boundary values: node name -> value. Not for two threads at once on one segment."""
    if segment.runner is None or segment.runner[0].module is not gm:
        segment.runner = (ModelCodeInterpreter(gm, garbage_collect_values=False), {n.name: n for n in gm.graph.nodes})
    interp, by_name = segment.runner
    interp.args_batch = batch
    interp.env = {by_name[name]: values[name] for name in segment.boundary}
    try:
        for name in segment.nodes if nodes is None else nodes:
            node = by_name[name]
            interp.env[node] = interp.run_node(node)
        return {n.name: v for n, v in interp.env.items()}
    finally:
        interp.env = {}


def run_segment(gm: fx.GraphModule, segment: Segment, values: Mapping[str, torch.Tensor], batch: int) -> Any:
    """The upper tap's value computed from ``values`` (boundary node name -> tensor) through the segment."""
    return run_nodes(gm, segment, values, batch)[segment.upper]


def batch_key(batch: np.ndarray | torch.Tensor) -> bytes:
    """A fingerprint of a batch's content (shape, dtype, bytes)."""
    arr = _contiguous(batch)
    h = hashlib.blake2b(repr((arr.shape, str(arr.dtype))).encode(), digest_size=16)
    h.update(arr.view(np.uint8).reshape(-1).data)
    return h.digest()


def _contiguous(batch: np.ndarray | torch.Tensor) -> np.ndarray:
    arr = batch.detach().cpu().numpy() if isinstance(batch, torch.Tensor) else np.asarray(batch)
    return np.ascontiguousarray(arr)


def _size(values: dict[str, torch.Tensor]) -> int:
    """The bytes of the memory the tensors among ``values`` hold: each storage once, whole (the values kept with
    an autograd graph are often views of one another's: a layer's output and its heads; a node's value may also
    be a tuple of such views or a size, not counted)."""
    storages: dict[tuple[str, int], int] = {}
    for v in values.values():
        if isinstance(v, torch.Tensor):
            st = v.untyped_storage()
            key = (str(v.device), st.data_ptr())
            storages[key] = max(int(st.nbytes()), storages.get(key, 0))
    return sum(storages.values())


_PROBE = 4096  # bytes of a batch sampled to find a kept batch that may be the same


class TapValues:
    """Every tap's value (and the input) per batch, most recently used first, within ``budget`` bytes.

    :meth:`key` is :func:`batch_key`, found without hashing the whole batch again when a kept batch has the same
    bytes (each kept batch keeps a copy of its bytes, counted in the budget): the steps of a class visit its
    batches in turn, and a byte comparison costs a tenth of the hash."""

    def __init__(self, budget: int) -> None:
        self.budget = int(budget)
        # key -> (values, bytes counted, the batch's bytes, its probe)
        self._items: OrderedDict[bytes, tuple[dict[str, torch.Tensor], int, np.ndarray | None, bytes]] = OrderedDict()
        self._probes: dict[bytes, bytes] = {}  # probe -> key of a kept batch
        self._pending: tuple[bytes, bytes, np.ndarray] | None = None  # (key, probe, bytes) of the last unknown batch
        self._bytes = 0

    def key(self, batch: np.ndarray | torch.Tensor) -> bytes:
        """:func:`batch_key` of ``batch``: a kept batch's key when their bytes are equal, else the hash."""
        arr = _contiguous(batch)
        raw = arr.view(np.uint8).reshape(-1)
        sample = raw[::max(1, raw.size // _PROBE)]
        probe = hashlib.blake2b(repr((arr.shape, str(arr.dtype))).encode() + sample.tobytes(), digest_size=16).digest()
        known = self._probes.get(probe, b"")
        hit = self._items.get(known)
        if hit is not None and hit[2] is not None and np.array_equal(hit[2], raw):
            return known
        key = batch_key(arr)
        self._pending = (key, probe, raw.copy())
        return key

    def get(self, key: bytes) -> dict[str, torch.Tensor] | None:
        hit = self._items.get(key)
        if hit is None:
            return None
        self._items.move_to_end(key)
        return hit[0]

    def fits(self, values: dict[str, torch.Tensor]) -> bool:
        """Whether :meth:`put` would keep ``values`` (with the bytes of the batch last given to :meth:`key`)."""
        raw = self._pending[2].nbytes if self._pending is not None else 0
        return _size(values) + raw <= self.budget

    def put(self, key: bytes, values: dict[str, torch.Tensor]) -> None:
        size = _size(values)
        raw, probe = None, b""
        if self._pending is not None and self._pending[0] == key:
            _, probe, raw = self._pending
            size += raw.nbytes
        self._pending = None
        if key in self._items:  # replaced (the values again, with their autograd graph): its bytes are freed
            _, freed, old_raw, old_probe = self._items.pop(key)
            self._bytes -= freed
            if raw is None and old_raw is not None:
                raw, probe = old_raw, old_probe
                size += raw.nbytes
        if size > self.budget:
            return
        while self._items and self._bytes + size > self.budget:
            _, (_, freed, _, gone) = self._items.popitem(last=False)
            self._probes.pop(gone, None)
            self._bytes -= freed
        self._items[key] = (values, size, raw, probe)
        if raw is not None:
            self._probes[probe] = key
        self._bytes += size

    def clear(self) -> None:
        self._items.clear()
        self._probes.clear()
        self._pending = None
        self._bytes = 0
