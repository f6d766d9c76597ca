"""The :class:`Term` protocol and the helpers every term uses.

A term is one linear contribution to an upper tap's pre-activation that reaches one parent
tap (method doc, section 6): a conv or dense layer applied to a path from the parent, a skip
connection, a gate. It says

* **what to collect** (:meth:`Term.statistics`): per-image arrays computed in the one forward
  pass from ``m``, the derivative of the upper tap's summed activation with respect to the
  term's *head* (the layer output, or the parent tap for a skip), and the values of the nodes it
  names in :attr:`Term.needs`;
* **how to reconstruct omega** (:meth:`Term.omega`) for any upper neurons from those arrays:
  omega[j, i, k] of upper neuron ``neurons[j]``, image i and parent neuron k.

Statistics are computed with torch on the model's device. :meth:`Term.omega` takes numpy or
torch arrays, computes in float64 on the arrays' device and returns a torch tensor.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextvars import ContextVar
from typing import Any, ClassVar

import numpy as np
import torch

from ssa.core.arrays import host_view
from ssa.core.budget import WORK_BYTES
from ssa.core.interfaces import Rank1Factors

__all__ = ["Term", "as_tensor", "channels_of", "as_float64", "picked_rows", "stat_device", "scatter_channels",
           "place_channels", "chunks", "rank1_rows", "WORK_BYTES", "statistics_slot", "statistics_slots"]

#: where the statistics pass's caller takes a term's statistics (:func:`statistics_slot`); set per term by the pass
_SLOTS: ContextVar[Callable[[str, tuple[int, ...], torch.Tensor], torch.Tensor | None] | None] = ContextVar(
    "ssa_statistics_slots", default=None)


@contextlib.contextmanager
def statistics_slots(slots: Callable[[str, tuple[int, ...], torch.Tensor], torch.Tensor | None] | None
                     ) -> Iterator[None]:
    """Within: :func:`statistics_slot` asks ``slots(field, shape, like)`` (the statistics pass binds the term's key)."""
    token = _SLOTS.set(slots)
    try:
        yield
    finally:
        _SLOTS.reset(token)


def statistics_slot(field: str, shape: tuple[int, ...], like: torch.Tensor) -> torch.Tensor | None:
    """A tensor of ``shape`` (``like``'s dtype and device) that the current term may write its statistics ``field``
    into and return as that field: the batch's rows of the whole image set's array, so they are not copied there
    afterwards (:meth:`ssa.engines.statistics.DeviceStatistics.slots`); None: make your own. The values must be
    those the term computes without it, bit for bit."""
    slots = _SLOTS.get()
    return None if slots is None else slots(field, tuple(shape), like)


def is_identity_map(chan: torch.Tensor, k: int) -> bool:
    """Whether :func:`scatter_channels` with ``chan`` into ``k`` bins returns its values themselves."""
    return chan.dim() == 1 and _column_plan(chan, k)[0] == "identity"


def as_tensor(value: Any, device: torch.device | str | None = None) -> torch.Tensor:
    """``value`` (numpy array, memmap or tensor) as a float64 tensor, on ``device`` when given."""
    if isinstance(value, torch.Tensor):
        t = value
    else:  # numpy (a read-only memory map too): the float64 copy is writable
        t = torch.from_numpy(np.asarray(value, dtype=np.float64))
    if device is not None:
        t = t.to(device)
    return t.to(torch.float64)


def stat_device(value: Any) -> torch.device:
    """Where a statistics array lives (a tensor's device; numpy: the CPU)."""
    return value.device if isinstance(value, torch.Tensor) else torch.device("cpu")


def channels_of(value: Any, h: torch.Tensor) -> torch.Tensor:
    """``as_tensor(value)[:, h]``: the channels ``h`` of the second axis, converted to float64 after they are
    picked (a class's statistics hold every channel; a block of upper neurons needs a few)."""
    if isinstance(value, torch.Tensor):
        return as_float64(value.index_select(1, h.to(value.device)))
    return torch.from_numpy(np.asarray(np.asarray(value)[:, h.cpu().numpy()], dtype=np.float64))


def picked_rows(raw: Any, h: torch.Tensor) -> torch.Tensor:
    """``raw[:, h]`` (B, n, K) as rows (n, B, K), contiguous and fresh: a tensor's channels picked into (n, B, K) order
    in the statistics' own dtype (numpy: :func:`channels_of`, float64)."""
    if not isinstance(raw, torch.Tensor):
        return channels_of(raw, h).transpose(0, 1).contiguous()
    return raw.transpose(0, 1).index_select(0, h)


def as_float64(rows: torch.Tensor) -> torch.Tensor:
    """``rows`` in float64: converted (a fresh array), or themselves when they are float64 already (then a fresh
    :func:`picked_rows` stays fresh: the caller may scale it in place). In host memory (outside
    :func:`~ssa.core.arrays.device_path`) numpy converts: the same values (the conversion is exact) in a quarter of
    the time of torch's ``to`` on the 2-core CPU (10 ms against 44-49 ms for 227 x 32 x 1024 values)."""
    if rows.dtype == torch.float64:
        return rows
    host = host_view(rows)
    if isinstance(host, np.ndarray):
        return torch.from_numpy(host.astype(np.float64))
    return rows.to(torch.float64)


def scatter_channels(values: torch.Tensor, chan: torch.Tensor, k: int) -> torch.Tensor:
    """Sum the last axis of ``values`` into ``k`` bins by ``chan`` (entries with ``chan == -1`` are dropped).

    ``chan`` has the length of ``values``' last axis (one bin per column), or the shape of ``values``
    itself (a bin per element: ``scatter_add``). One bin per column takes the cheapest exact route:
    nothing to do for the identity map, a gather for a permutation, a reshape and sum for contiguous
    equal blocks (a flatten before a dense layer), and else a sum (``index_add``; on a GPU a product
    with a 0/1 matrix, which is deterministic and fast where index_add is neither). A column map's route
    is found once per map (on the host) and its arrays are kept per device: pass the same ``chan``
    tensor (wherever it lives) every time, and the device path copies nothing and never waits.
    """
    if chan.dim() == 1:
        plan = _column_plan(chan, k)
        kind = plan[0]
        if kind == "identity":
            return values
        if kind == "permutation":
            return values.index_select(values.dim() - 1, _on(plan, "inverse", values.device))
        if kind == "blocks":
            width = plan[1]
            return values.reshape(*values.shape[:-1], k, width).sum(-1)
        if values.is_cuda and values.shape[-1] * k <= (1 << 26):
            return values @ _on(plan, "onehot", values.device, values.dtype, k)
    chan = chan.to(values.device)
    idx = torch.where(chan >= 0, chan, torch.full_like(chan, k))
    out = torch.zeros(values.shape[:-1] + (k + 1,), dtype=values.dtype, device=values.device)
    if idx.dim() == 1:
        out.index_add_(values.dim() - 1, idx, values)
    else:
        out.scatter_add_(-1, idx.expand(values.shape).contiguous(), values)
    return out[..., :k]


def place_channels(chan: torch.Tensor, k: int, device: torch.device | str) -> torch.Tensor:
    """A column-to-bin map (1-D) or an element map on ``device``, with its column plan decided and its plan's arrays
    made there (:meth:`Term.to`): :func:`scatter_channels` given the returned tensor then copies nothing."""
    chan = chan.to(device)
    if chan.dim() == 1:
        plan = _column_plan(chan, k)
        if plan[0] == "permutation":
            _on(plan, "inverse", chan.device)
    return chan


_PLANS: dict[tuple[int, int], tuple[Any, ...]] = {}


def _column_plan(chan: torch.Tensor, k: int) -> tuple[Any, ...]:
    """How a column-to-bin map can be applied: ("identity",), ("permutation", inverse), ("blocks", width), ("sum",).

    Cached by the map's identity (the cache holds the tensor, so the identity cannot be reused), decided once
    on the host; the last element is a dict of the plan's arrays per device (:func:`_on`).
    """
    key = (id(chan), k)
    plan = _PLANS.get(key)
    if plan is not None and plan[-2] is chan:
        return plan
    c = chan.detach().cpu()
    n = int(c.numel())
    out: tuple[Any, ...] = ("sum",)
    if n == k and bool((c >= 0).all()) and torch.equal(torch.sort(c).values, torch.arange(k)):
        if torch.equal(c, torch.arange(k)):
            out = ("identity",)
        else:  # bin j gets column inv[j]
            out = ("permutation", torch.argsort(c))
    elif k > 0 and n % k == 0 and bool((c >= 0).all()) and torch.equal(c, torch.arange(n) // (n // k)):
        out = ("blocks", n // k)
    if len(_PLANS) > 4096:
        _PLANS.clear()
    _PLANS[key] = (*out, chan, {"chan": c})
    return _PLANS[key]


def _on(plan: tuple[Any, ...], what: str, device: torch.device, dtype: torch.dtype | None = None, k: int = 0
        ) -> torch.Tensor:
    """A column plan's array on ``device`` (made there once): the inverse permutation, or the (columns, k) 0/1
    matrix with a 1 where a column's bin is."""
    arrays = plan[-1]
    key = (what, str(device), dtype, k)
    if key not in arrays:
        if what == "inverse":
            arrays[key] = plan[1].to(device)
        else:
            c = arrays["chan"]
            onehot = torch.zeros((c.numel(), k), dtype=dtype)
            mine = torch.nonzero(c >= 0).squeeze(1)
            onehot[mine, c[mine]] = 1.0
            arrays[key] = onehot.to(device)
    return arrays[key]


def chunks(n: int, bytes_per_item: int, budget: int = WORK_BYTES) -> list[tuple[int, int]]:
    """``[(start, stop), ...]`` covering ``range(n)`` with about ``budget`` bytes per chunk."""
    step = max(1, min(n, budget // max(int(bytes_per_item), 1)))
    return [(i, min(n, i + step)) for i in range(0, n, step)]


class Term:
    """One closed-form term of a step (subclass it to add a closed form for a new op).

    Attributes set by the planner
    -----------------------------
    parent : the parent tap the term reaches.
    head : the fx node whose derivative ``m`` the statistics are computed from.
    out_index : (N_upper,) long tensor: the head channel that feeds each upper channel (-1: none).
    scale : 1 / (P_u * P_l), the spatial means of the upper neuron and of the parent.
    n_parent : the parent's number of neurons K.
    """

    #: short label for ``ssa check`` ("conv", "linear", "identity", "gate", ...)
    label: ClassVar[str] = "term"

    parent: str
    head: str
    out_index: torch.Tensor
    scale: float = 1.0
    n_parent: int = 0
    #: a constant shift lies between the parents and the op's input: only the gradient rule has a closed form
    shifted: bool = False
    #: :meth:`statistics` takes ``relu_of=True``: ``m`` given as a ReLU's output, the derivative being its 0/1 mask
    #: (the statistics pass then makes no mask of the whole batch for this term)
    takes_relu_output: ClassVar[bool] = False

    @property
    def forms(self) -> frozenset[str]:
        """The closed forms this term has ("gradient", "gradient_x_activation"; only "gradient" when shifted)."""
        return frozenset({"gradient"} if self.shifted else {"gradient", "gradient_x_activation"})

    @property
    def needs(self) -> tuple[str, ...]:
        """fx node names whose values :meth:`statistics` reads (kept during the forward pass)."""
        return ()

    def statistics(self, m: torch.Tensor, values: Mapping[str, torch.Tensor], forms: Sequence[str]
                   ) -> dict[str, torch.Tensor]:
        """Per-image arrays (first axis: image) for the given forms, from the head derivative ``m``."""
        raise NotImplementedError

    def omega(self, stats: Mapping[str, Any], neurons: Sequence[int], form: str) -> torch.Tensor:
        """omega (len(neurons), B, K) in float64 from this term's statistics."""
        raise NotImplementedError

    def rank1(self, stats: Mapping[str, Any], neurons: Sequence[int], form: str
              ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None:
        """``(coeff (n, B), vec (n, K), fed (n,))`` when omega is ``finish(vec[:, None] * coeff[..., None], fed)``.

        Such a step's rows are per-image multiples of one vector per upper neuron, so their sorted
        order follows from sorting ``vec`` once (:func:`rank1_rows`). None (the default): no such form.
        """
        return None

    def own_rows(self, stats: Mapping[str, Any], neurons: Sequence[int], form: str
                 ) -> tuple[torch.Tensor, torch.Tensor] | None:
        """``(rows (n, B, K), fed (n,))`` when omega is ``finish(rows.to(float64), fed, inplace=True)``: the
        statistics' own values picked (:func:`picked_rows`), a fresh array in their dtype, so a host sorts them as
        they are (float32: half the bytes) and has omega's rows sorted (:class:`~ssa.core.interfaces.SortedKeys`).
        None (the default): no such form."""
        return None

    def picked_relevance(self, stats: Mapping[str, Any], neurons: Sequence[int]
                         ) -> tuple[torch.Tensor, torch.Tensor]:
        """The collected input relevance ``stats["a"]`` (B, N, K) picked for the upper ``neurons``: (rows (n, B, K)
        in its dtype, fed (n,)), the :meth:`own_rows` of the terms that collect it."""
        raw = stats["a"]  # (B, N, K)
        h, fed = self.head_channels(neurons, stat_device(raw))
        return picked_rows(raw, h), fed

    def rank1_order(self, neurons: Sequence[int], device: torch.device | str) -> torch.Tensor | None:
        """Optional: (n, K), a permutation sorting each row of :meth:`rank1`'s ``vec`` ascending, when the term
        can give it without sorting (its ``vec`` rows are constant, e.g. weights sorted once and kept). None:
        the traversal sorts ``vec`` itself."""
        return None

    def to(self, device: torch.device | str) -> Term:
        """Place the term's constant arrays on ``device``, once, when the network's closed form is planned
        (docs/architecture.md, "Placement and exactness"): :attr:`out_index` and its flags, decided here on the
        host ("every upper neuron fed": :attr:`feeds_all`; "each upper neuron is its own head channel"), then what
        :meth:`place` adds (a subclass's channel maps and column plans). The per-class path then copies no
        constant; what it needs on another device (statistics handed over as numpy) is made there once."""
        dev = torch.device(device)
        host = self.out_index.detach().cpu()
        self.__dict__["_feeds_all"] = bool((host >= 0).all())
        self.__dict__["_own_channel"] = torch.equal(host, torch.arange(host.numel(), dtype=host.dtype))
        self.out_index = self.out_index.to(dev)
        self.__dict__["_out_index_on"] = {str(dev): self.out_index}
        self.place(dev)
        return self

    def place(self, device: torch.device) -> None:
        """Put a subclass's own constant arrays on ``device`` (called by :meth:`to`; nothing by default)."""

    # -- helpers -------------------------------------------------------------------------------------
    def head_channels(self, neurons: Sequence[int] | torch.Tensor, device: torch.device | str
                      ) -> tuple[torch.Tensor, torch.Tensor]:
        """(head channel of each upper neuron, clamped to 0 where none; mask of the neurons this term feeds).

        ``neurons`` may already be a long tensor on ``device`` (the network makes it once per block for all its
        terms); a term whose upper neurons are their own head channels indexes nothing."""
        idx = torch.as_tensor(neurons, dtype=torch.long, device=device)
        if self.__dict__.get("_own_channel"):
            return idx, idx >= 0
        idx = self._out_index(device)[idx]
        return idx.clamp_min(0), idx >= 0

    def _out_index(self, device: torch.device | str) -> torch.Tensor:
        """:attr:`out_index` on ``device``, copied there once."""
        cache = self.__dict__.setdefault("_out_index_on", {})
        key = str(device)
        if key not in cache:
            cache[key] = self.out_index.to(device)
        return cache[key]

    @property
    def feeds_all(self) -> bool:
        """Whether every upper neuron has a head channel, so that no row is ever zeroed (decided once, on the host:
        the hot path masks unconditionally or not at all, and never asks the device)."""
        if "_feeds_all" not in self.__dict__:
            self.__dict__["_feeds_all"] = bool((self.out_index.cpu() >= 0).all())
        return bool(self.__dict__["_feeds_all"])

    def finish(self, om: torch.Tensor, fed: torch.Tensor, *, inplace: bool = False) -> torch.Tensor:
        """Scale, and zero the rows of upper neurons this term does not feed (``inplace``: in ``om`` itself,
        for a temporary nothing else holds; the same products either way: rows it feeds are multiplied by 1)."""
        if not inplace:
            om = om * self.scale
        elif self.scale != 1.0:  # in place, a scale of 1 is no pass (x * 1 is x)
            om = om.mul_(self.scale)
        if not self.feeds_all:
            mask = fed.to(om.dtype).reshape(-1, *([1] * (om.dim() - 1)))
            om = om.mul_(mask) if inplace else om * mask
        return om


def rank1_rows(f: Rank1Factors, all_fed: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """omega ``(n, B, K)`` of rank-1 factors, and its rows sorted ascending, without sorting them (``all_fed``: every
    upper neuron is fed, so the rows' products by their fed flags, all 1, are left out).

    omega[j, i, k] = ((vec[j, k] * coeff[j, i]) * scale) * fed[j], as :meth:`Term.finish` rounds it; for a
    fixed non-negative factor the rounded product is non-decreasing in ``vec`` (and non-increasing for a
    negative one), so each row sorted is the same products of ``vec`` sorted once per neuron (reversed where
    coeff < 0), bit for bit.
    """
    coeff, vec, fed = f.coeff, f.vec, None if all_fed else f.fed
    # written into row-major (n, B, K) buffers: coeff is often a transposed view, and a product laid out after
    # it would make every later (n * B, K) view of the rows a copy; the products are the same either way
    shape = (coeff.shape[0], coeff.shape[1], vec.shape[1])
    dtype = torch.promote_types(vec.dtype, coeff.dtype)
    om = torch.mul(vec[:, None, :], coeff[:, :, None], out=torch.empty(shape, dtype=dtype, device=vec.device))
    om = _scale_rows(om, f.scale, fed)
    s = torch.sort(vec, dim=1).values  # (n, K), once per upper neuron
    ordered = torch.where((coeff >= 0)[:, :, None], s[:, None, :], s.flip(1)[:, None, :],
                          out=torch.empty(shape, dtype=s.dtype, device=vec.device))
    ordered = ordered.mul_(coeff[:, :, None]) if ordered.dtype == dtype else ordered * coeff[:, :, None]
    return om, _scale_rows(ordered, f.scale, fed)


def _scale_rows(om: torch.Tensor, scale: float, fed: torch.Tensor | None) -> torch.Tensor:
    """:meth:`Term.finish` in place: times ``scale``, then every row times its fed flag (1 or 0; a fed row's
    products are unchanged; None: every row fed), without asking the device whether all are fed. A scale of 1 is
    no pass (x * 1 is x)."""
    if scale != 1.0:
        om = om.mul_(scale)
    return om if fed is None else om.mul_(fed.to(om.dtype).reshape(-1, *([1] * (om.dim() - 1))))
