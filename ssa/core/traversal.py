"""The step-wise traversal (method doc, section 3; paper, Algorithm 1).

The traversal is independent of how relevance is computed: a
:class:`RelevanceSource` streams the relevance of one step as typed blocks
(:class:`~ssa.core.interfaces.DenseBlock`: rows omega; :class:`~ssa.core.interfaces.Rank1Block`: a rank-1
step's factors; each for a run of upper neurons and of images), and the traversal applies the selector to
every row, counts outliers, ranks, keeps the top-b and recurses top-down over the
tap DAG.

Everything runs on the source's arrays and device (the Python array API): the
selector, the outlier counts and relevance sums, and the ranking. Only the small
per-step results (counts and means, upper x lower neurons, and the kept edges) come
back to the host as numpy arrays.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any, Protocol, cast, runtime_checkable

import numpy as np

from ssa.core.arrays import (
    device_of,
    finite_or_zero,
    host_view,
    is_numpy,
    namespace,
    on_host,
    step_counts,
    take_along,
    to_numpy,
)
from ssa.core.checks import call_counts, call_selector
from ssa.core.interfaces import (
    DenseBlock,
    Rank1Block,
    Rank1Factors,
    Rule,
    Selector,
    SortedKeys,
    SupportsCounts,
    SupportsSearchedCuts,
    SupportsSortedCuts,
    Tap,
)
from ssa.core.rank1_host import HostRank1
from ssa.core.ranking import rank_neurons, step_winners, top_b
from ssa.core.searched import keys_rows, rank1_image_sums, rank1_searched_cuts, searched_only, searched_sums

__all__ = ["RelevanceSource", "SupportsDevice", "DenseBlock", "Rank1Block", "rank1_block_rows", "labels_by_partition",
           "StepRecord", "Kept", "rank_neurons", "top_b", "traverse",
           "TraversalOutput", "apply_selector", "explain_stop", "step_omega"]


class RelevanceSource(Protocol):
    """Where the traversal gets relevance from (autograd on the network, or per-image statistics)."""

    taps: tuple[Tap, ...]
    n_images: int

    def iter_blocks(self, upper: str, neurons: Sequence[int], rule: Rule, factors: bool = False
                    ) -> Iterator[DenseBlock | Rank1Block]:
        """Yield the step's relevance as typed blocks (docs/architecture.md, "The relevance seam").

        :class:`~ssa.core.interfaces.DenseBlock`: rows omega (n_block, b, K_parent) of upper neurons
        ``neurons[start:start + n_block]`` on b images; :class:`~ssa.core.interfaces.Rank1Block` (only when
        ``factors`` is True: the selector has sorted or searched cuts): a rank-1 step's factors instead of its rows.
        """

    def scalars(self, tap: str) -> Any:
        """Every image's neuron scalars of ``tap``, shape (n_images, N)."""


@runtime_checkable
class SupportsDevice(Protocol):
    """A relevance source that says where its arrays live (an optional capability): ``device``, its network's
    device. Without it the traversal takes the host's choices (they hold on a device too, with more kernels)."""

    device: Any


@dataclass(frozen=True)
class Kept:
    upper: int
    lower: int
    count: int
    relevance: float
    sign: int


@dataclass(frozen=True)
class StepRecord:
    """Statistics of one step (upper tap -> parent tap) over all images.

    ``counts[j, k]`` is the number of images in which lower neuron k was a
    positive outlier for upper neuron ``neurons[j]``; ``neg_counts`` the same
    for negative outliers; ``mean[j, k]`` the mean relevance over images.
    The kept edges are the arrays ``kept_upper`` (upper neuron), ``kept_lower``,
    ``kept_count``, ``kept_relevance`` and ``kept_sign``, in order: per upper neuron,
    the positive edges by rank, then the negative ones; ``kept`` has them as :class:`Kept`.
    """

    upper: str
    parent: str
    neurons: tuple[int, ...]
    counts_array: Any  # (n, K) on the device the step was computed on; ``counts`` is the host copy
    neg_counts_array: Any  # None: no negative outliers were counted
    mean_array: Any
    kept_upper: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))
    kept_lower: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))
    kept_count: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))
    kept_relevance: np.ndarray = field(default_factory=lambda: np.zeros(0, np.float64))
    kept_sign: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))

    @cached_property
    def counts(self) -> np.ndarray:
        """(n, K) positive outlier counts, on the host (copied from the device on first use)."""
        return np.asarray(to_numpy(self.counts_array))

    @cached_property
    def neg_counts(self) -> np.ndarray:
        """(n, K) negative outlier counts, on the host (zeros when none were counted: a one-sided selector)."""
        if self.neg_counts_array is None:
            return np.zeros_like(self.counts)
        return np.asarray(to_numpy(self.neg_counts_array))

    @cached_property
    def mean(self) -> np.ndarray:
        return np.asarray(to_numpy(self.mean_array))

    @cached_property
    def kept(self) -> tuple[Kept, ...]:
        return tuple(Kept(int(u), int(v), int(c), float(r), int(s)) for u, v, c, r, s in
                     zip(self.kept_upper, self.kept_lower, self.kept_count, self.kept_relevance, self.kept_sign,
                         strict=True))


def apply_selector(selector: Selector, rows: Any, sorted_rows: Any = None) -> Any:
    """Labels of ``rows`` (R, K) in {-1, 0, 1}, int8, on the rows' own array library and device.

    A selector that does not declare ``array_api = True`` gets float64 numpy rows (the
    conversion happens at the boundary) and its result is moved back. The result is validated
    (:func:`ssa.core.checks.call_selector`): a selector that raises, returns the wrong shape or values
    outside {-1, 0, 1} is named as a plugin bug.
    """
    return call_selector(selector, rows, sorted_rows)


class _Acc:
    """Per-parent sums of one step: positive / negative outlier counts and relevance sums.

    A step's first block that covers every upper neuron is kept as it is (no zeros to add it to: fewer
    kernels on a device); :meth:`field` gives zeros for a sum nothing was added to.
    """

    __slots__ = ("pos_", "neg_", "tot_", "bad", "n", "K", "xp", "dev")

    def __init__(self, xp: Any, n: int, K: int, like: Any) -> None:
        self.xp, self.n, self.K, self.dev = xp, n, K, device_of(like)
        self.pos_: Any = None
        self.neg_: Any = None
        self.tot_: Any = None
        self.bad: Any = None  # labels outside {-1, 0, 1} from an array-API selector, counted on the device

    def add(self, name: str, lo: int, hi: int, value: Any) -> None:
        """Add ``value`` (a fresh array of rows ``lo:hi``) to the sum ``name`` ("pos", "neg" or "tot")."""
        cur = getattr(self, name + "_")
        if cur is None:
            if lo == 0 and hi == self.n:  # + 0.0: a sum of -0.0 reads 0.0, as one added to zeros does
                if name == "tot" and isinstance(value, np.ndarray):
                    value += 0.0  # in place (the value is fresh): no copy of the step's sums
                elif name == "tot":
                    value = value + 0.0
                setattr(self, name + "_", value)
                return
            cur = self.field(name)
            setattr(self, name + "_", cur)
        cur[lo:hi, ...] += value

    def field(self, name: str) -> Any:
        cur = getattr(self, name + "_")
        if cur is None:
            dtype = self.xp.float64 if name == "tot" else self.xp.int64
            return self.xp.zeros((self.n, self.K), dtype=dtype, device=self.dev)
        return cur

    @property
    def pos(self) -> Any:
        return self.field("pos")

    @property
    def neg(self) -> Any:
        return self.field("neg")

    @property
    def tot(self) -> Any:
        return self.field("tot")


@dataclass(frozen=True)
class TraversalOutput:
    steps: tuple[StepRecord, ...]
    selected: Mapping[str, tuple[int, ...]]


def step_omega(source: RelevanceSource, upper: str, neurons: Sequence[int], rule: Rule) -> dict[str, np.ndarray]:
    """The whole omega of one step, ``{parent: (len(neurons), n_images, K)}`` float64 on the host.

    For figures and reference images (small steps); the traversal itself never materialises this.
    """
    rows: dict[str, list[tuple[int, list[np.ndarray]]]] = {}
    for block in source.iter_blocks(upper, list(neurons), rule):
        om = np.asarray(to_numpy(_rows_of(block)), dtype=np.float64)
        chunks = rows.setdefault(block.parent, [])
        for entry in chunks:
            if entry[0] == block.start and entry[1][0].shape[0] == om.shape[0]:
                entry[1].append(om)  # more images of the same neurons
                break
        else:
            chunks.append((block.start, [om]))
    out = {}
    for parent, chunks in rows.items():
        chunks.sort(key=lambda c: c[0])
        out[parent] = np.concatenate([np.concatenate(parts, axis=1) for _, parts in chunks], axis=0)
    return out


def _rows_of(block: DenseBlock | Rank1Block) -> Any:
    return rank1_block_rows(block.factors) if isinstance(block, Rank1Block) else block.omega


def _wants_factors(selector: Selector, source: RelevanceSource) -> bool:
    """Whether rank-1 steps come as factors, labelled and counted from a few sorted positions per row (no rows
    built): for sorted cuts everywhere; for searched cuts (a search per row: many small kernels on a device) only
    where the rows are numpy (on a device a rank-1 step's own rows are fewer kernels)."""
    if isinstance(selector, SupportsSortedCuts):
        return True
    device = source.device if isinstance(source, SupportsDevice) else "cpu"
    return isinstance(selector, SupportsSearchedCuts) and on_host(device)


def traverse(source: RelevanceSource, target: int, branching: int, rule: Rule, selector: Selector,
             *, stop_at: str | None = None, progress: Any = None) -> TraversalOutput:
    """Run the traversal from class ``target`` of the logits down the tap DAG."""
    taps = sorted(source.taps, key=lambda t: t.order)
    by_name = {t.name: t for t in taps}
    floor = by_name[stop_at].order if stop_at else -1
    sets: dict[str, set[int]] = {"logits": {int(target)}}
    steps: list[StepRecord] = []
    compact = _wants_factors(selector, source)
    for tap in reversed(taps):
        if tap.order <= floor or not sets.get(tap.name) or not tap.parents:
            continue
        neurons = sorted(sets[tap.name])
        n = len(neurons)
        acc: dict[str, _Acc] = {}
        for block in source.iter_blocks(tap.name, neurons, rule, compact):
            _accumulate(acc, block, n, selector)
            if progress is not None:
                progress.update(1)
        for parent in tap.parents:
            if parent not in acc or by_name[parent].order < floor:
                continue
            step = _finish_step(tap.name, parent, neurons, acc[parent], branching, selector.two_sided,
                                max(source.n_images, 1), selector)
            sets.setdefault(parent, set()).update(step.kept_lower[step.kept_sign > 0].tolist())
            steps.append(step)
    return TraversalOutput(tuple(steps), {k: tuple(sorted(v)) for k, v in sets.items()})


def _accumulate(acc: dict[str, _Acc], block: DenseBlock | Rank1Block, n: int, selector: Selector) -> None:
    if isinstance(block, Rank1Block):
        _accumulate_rank1(acc, block.parent, block.start, block.factors, n, selector)
        return
    omega = host_view(block.omega)
    xp = namespace(omega)
    if omega.dtype != xp.float64:
        omega = xp.astype(omega, xp.float64)
    nb, b, K = omega.shape
    if nb == 0 or b == 0:
        return
    host = is_numpy(xp)
    srt = None
    if isinstance(block.sorted, SortedKeys):  # searched cuts on the host read the keys; other selectors get the rows
        srt = block.sorted if host and searched_only(selector) else xp.asarray(keys_rows(block.sorted),
                                                                               device=device_of(omega))
    elif block.sorted is not None:
        srt = host_view(block.sorted)
        srt = xp.reshape(srt if srt.dtype == xp.float64 else xp.astype(srt, xp.float64), (nb * b, K))
    a = acc.get(block.parent)
    if a is None:
        a = acc[block.parent] = _Acc(xp, n, K, omega)
    lo, hi = block.start, block.start + nb
    if host and searched_only(selector):  # counted against the cuts, no label arrays (ssa.core.searched)
        for name, value in zip(("pos", "neg", "tot"), searched_sums(selector, omega, srt), strict=True):
            if value is not None:
                a.add(name, lo, hi, value)
        return
    rows = xp.reshape(omega, (nb * b, K))
    if not host and selector.array_api and isinstance(selector, SupportsCounts):  # counted by the selector, on
        pos, neg = call_counts(selector, rows, b, srt)  # the device: no labels to make, check and count here
        a.add("pos", lo, hi, pos)
        if neg is not None:
            a.add("neg", lo, hi, neg)
    else:
        _count_labels(a, lo, hi, selector, rows, srt, (nb, b, K), host)
    if not host:  # no synchronisation on a device: mask unconditionally
        a.add("tot", lo, hi, xp.sum(finite_or_zero(omega), axis=1))
        return
    # a finite sum has only finite terms (NaN and infinities stay non-finite in a sum): no pass to check them
    tot = np.sum(omega, axis=1)
    a.add("tot", lo, hi, tot if bool(np.isfinite(tot).all()) else np.sum(finite_or_zero(omega), axis=1))


def _count_labels(a: _Acc, lo: int, hi: int, selector: Selector, rows: Any, srt: Any, shape: tuple[int, int, int],
                  host: bool) -> None:
    """Add the outlier counts of the selector's labels of ``rows`` (R, K) to ``a`` (rows ``lo:hi``). On a device the
    labels are checked without a synchronisation: bad ones counted here, refused at the end of the step (a numpy
    selector's labels are checked at once, on the host)."""
    xp = namespace(rows)
    if host and srt is None and isinstance(selector, SupportsSortedCuts):
        labels = xp.reshape(labels_by_partition(selector, rows), shape)  # a few positions, not a sort
    else:
        labels = xp.reshape(call_selector(selector, rows, srt, check_values=host), shape)
    if not host and selector.array_api:
        bad = xp.sum((labels > 1) | (labels < -1))
        a.bad = bad if a.bad is None else a.bad + bad
    # checked labels all in {0, 1} (the one-sided selectors'): their sum is the count, and no negatives to count
    if host and (labels.size == 0 or int(np.min(labels)) >= 0):  # counts of at most 255 summed in bytes (3x faster)
        count = np.sum(labels, axis=1, dtype=np.uint8 if shape[1] < 256 else np.int64)
        a.add("pos", lo, hi, count.astype(np.int64, copy=False))
    else:
        a.add("pos", lo, hi, xp.sum(labels > 0, axis=1, dtype=xp.int64))
        a.add("neg", lo, hi, xp.sum(labels < 0, axis=1, dtype=xp.int64))


def cut_positions(selector: SupportsSortedCuts, n: int) -> list[int]:
    """The sorted positions ``selector.sorted_cuts`` reads in rows of ``n`` values (they depend on ``n`` and the
    selector's parameters only; ``ssa.conformance`` checks it)."""
    seen: list[int] = []

    def probe(p: int) -> np.ndarray:
        seen.append(int(p))
        return np.zeros((1, 1))

    with np.errstate(all="ignore"):  # the probe's zeros are not data
        selector.sorted_cuts(n, probe)
    return sorted(set(seen))


def labels_by_partition(selector: SupportsSortedCuts, rows: np.ndarray) -> np.ndarray:
    """A sorted-cuts selector's labels of numpy rows (R, K) from a partition at the position its cuts read (one), or
    a sort (more): each of those positions holds exactly the value a sort puts there. Rows with
    NaN or an infinity get no labels, as :meth:`~ssa.core.interfaces.Selector.select` gives them."""
    K = rows.shape[1]
    if K == 0 or rows.shape[0] == 0:
        return np.zeros(rows.shape, np.int8)
    kth = cut_positions(selector, K)
    if len(kth) > 1:  # the rows sorted as they are: NaN last, infinities at the ends, so a row is finite iff its
        part = np.sort(rows, axis=1)  # ends are (and a row that is not gets no labels, whatever its cuts)
        finite = np.isfinite(part[:, 0]) & np.isfinite(part[:, -1])
        safe = rows
    else:
        finite = np.isfinite(rows).all(axis=1)
        safe = rows if finite.all() else np.where(np.isfinite(rows), rows, 0.0)
        # numpy's partition at one position is one selection (2-3x faster than a sort); at two or more (Tukey's
        # four, a median's two) its SIMD sort was 1.3-6x faster on the 2-core CPU: the same values at those positions
        part = np.partition(safe, kth, axis=1) if kth else safe
    with np.errstate(invalid="ignore", over="ignore"):  # e.g. k = inf times a zero spread: NaN cuts, no labels
        hi, lo = selector.sorted_cuts(K, lambda p: part[:, p:p + 1])
        out = (safe > np.asarray(hi)).view(np.int8)  # booleans are the bytes 0 and 1
        if lo is not None:
            out = out - (safe < np.asarray(lo)).view(np.int8)
    if not finite.all():
        out[~finite] = 0
    return out


def rank1_block_rows(f: Rank1Factors) -> Any:
    """The rows ``omega (n, B, K)`` of rank-1 factors, rounded as the factors define (the plain reference
    of :func:`_accumulate_rank1`, and its fallback for non-finite rows)."""
    coeff, vec = host_view(f.coeff), host_view(f.vec)
    xp = namespace(coeff, vec)
    om = (vec[:, None, :] * coeff[:, :, None]) * f.scale
    return om * xp.reshape(xp.astype(host_view(f.fed), om.dtype), (-1, 1, 1))


def _accumulate_rank1(acc: dict[str, _Acc], parent: str, start: int, f: Rank1Factors, n: int,
                      selector: Selector) -> None:
    """:func:`_accumulate` of a rank-1 block without its rows (selectors with sorted cuts; searched cuts on the host).

    Row (j, i) is ``omega[j, i, k] = g(vec[j, k])`` with g = ((. * coeff[j, i]) * scale) * fed[j], monotone
    (non-decreasing for coeff >= 0, non-increasing below). In the order of ``vec[j]`` sorted, the row's
    outliers (> hi) are therefore a suffix (coeff >= 0) or a prefix (coeff < 0); the cuts come from a few
    sorted positions (:class:`~ssa.core.interfaces.SupportsSortedCuts`), the boundary from a binary search
    that evaluates g exactly as the rows would hold it (numpy: once per row and sign of coeff, checked on the other
    images, :class:`~ssa.core.rank1_host.HostRank1`), and the counts per lower neuron from the boundaries
    (:func:`~ssa.core.arrays.step_counts`). Labels and counts equal the built rows' bit for bit; the summed
    relevance is ``((vec * sum_i coeff) * scale) * fed`` (the rows' sum up to rounding) for sorted cuts, and for
    searched cuts the rows' own sum without the rows (:func:`~ssa.core.searched.rank1_image_sums`: a device sums a
    step's rows).
    """
    coeff, vec, fed = host_view(f.coeff), host_view(f.vec), host_view(f.fed)
    xp = namespace(coeff, vec)
    if coeff.dtype != xp.float64:
        coeff = xp.astype(coeff, xp.float64)
    if vec.dtype != xp.float64:
        vec = xp.astype(vec, xp.float64)
    nb, b = coeff.shape
    K = int(vec.shape[1])
    if nb == 0 or b == 0:
        return
    if K == 0 or not is_numpy(xp) and searched_only(selector):  # a device labels the built rows (a search per
        _accumulate(acc, DenseBlock(parent, start, rank1_block_rows(f)), n, selector)  # row: many small kernels)
        return
    mask = xp.reshape(xp.astype(fed, xp.float64), (nb, 1))
    order = xp.argsort(vec, axis=1, stable=True) if f.order is None else host_view(f.order)
    sorted_cuts = isinstance(selector, SupportsSortedCuts)
    # numpy, sorted cuts: vec's sorted values read at the few positions asked (flat gathers), not all sorted
    sv: Any = None if sorted_cuts and is_numpy(xp) else take_along(vec, order, 1)
    down = coeff < 0  # rows whose sorted order is vec's reversed
    # numpy: columns from 2 nb reads, boundaries searched once per row and sign (ssa.core.rank1_host); no product by
    # a mask of ones (x * 1.0 is x)
    host = HostRank1(coeff, vec, order, f.scale, mask, bool(np.all(fed)), sv) if is_numpy(xp) else None

    def g(q: Any) -> Any:  # (nb, b) positions in vec's sorted order -> the rows' values there (a device's)
        return ((take_along(sv, q, 1) * coeff) * f.scale) * mask

    def column(p: int) -> Any:  # the rows' values at sorted position p, (nb * b, 1)
        if host is not None:
            return host.sorted_column(p).reshape(nb * b, 1)
        return xp.reshape(g(xp.where(down, xp.full_like(q0, K - 1 - p), xp.full_like(q0, p))), (nb * b, 1))

    q0 = xp.zeros((nb, b), dtype=xp.int64, device=device_of(vec))
    ends = (host.at_position(0), host.at_position(K - 1)) if host is not None else (g(q0), g(xp.full_like(q0, K - 1)))
    with np.errstate(invalid="ignore", over="ignore"):  # non-finite cuts fall back to the rows below
        if sorted_cuts:  # (checked once above: a runtime protocol's isinstance costs about 12 us)
            hi, lo = cast(SupportsSortedCuts, selector).sorted_cuts(K, column)
        else:
            assert isinstance(selector, SupportsSearchedCuts)  # factors are asked for with one or the other
            hi, lo = rank1_searched_cuts(selector, sv, coeff, f.scale, mask, vec)
    hi = xp.reshape(hi, (nb, b))
    lo = None if lo is None else xp.reshape(lo, (nb, b))
    finite = xp.all(xp.isfinite(ends[0])) & xp.all(xp.isfinite(ends[1])) & xp.all(xp.isfinite(hi))
    if lo is not None:
        finite = finite & xp.all(xp.isfinite(lo))
    if not bool(finite):  # rows with NaN or infinities get no labels: the selector decides on the built rows
        _accumulate(acc, DenseBlock(parent, start, rank1_block_rows(f)), n, selector)
        return

    def first(flips: Any) -> Any:
        """Per row, the first position t in [0, K] where ``flips(q)`` holds (it is False before t, True after).

        A bisection of [0, K]: each halving leaves at most half of the width, so K.bit_length() of them settle it. A
        settled row (``low == high``) needs no mask: ``mid = low``, and ``min(mid + 1, high) = high``, so it keeps its
        bounds whatever ``flips`` gives there (read at ``min(mid, K - 1)``, within the row); a row still searching
        has ``mid < high <= K``, read where it is."""
        low, high = q0, xp.full_like(q0, K)
        last = xp.full_like(q0, K - 1)
        for _ in range(K.bit_length()):
            mid = (low + high) // 2
            c = flips(xp.minimum(mid, last))
            low = xp.where(c, low, xp.minimum(mid + 1, high))
            high = xp.where(c, mid, high)
        return low

    a = acc.get(parent)
    if a is None:
        a = acc[parent] = _Acc(xp, n, K, vec)
    up = ~down
    n_down = xp.sum(xp.astype(down, xp.int64), axis=1, keepdims=True)
    # +1: value > hi; a suffix in vec's order where coeff >= 0, a prefix where coeff < 0; counted per position of
    # vec's sorted order and put back in the order of the lower neurons
    t = host.first(hi, True, down, ends) if host is not None else first(lambda q: (g(q) > hi) != down)
    a.add("pos", start, start + nb, step_counts(t, up, n_down, order))
    if lo is not None:  # -1: value < lo; a prefix where coeff >= 0, a suffix where coeff < 0
        t = host.first(lo, False, up, ends) if host is not None else first(lambda q: (g(q) < lo) == down)
        a.add("neg", start, start + nb, step_counts(t, down, b - n_down, order))
    if sorted_cuts:  # summed from the factors, on the host as on a device
        total = xp.sum(coeff, axis=1, keepdims=True)
        a.add("tot", start, start + nb, _rank1_sum(vec, total, f.scale, mask, fed))
    elif K > 1:  # searched cuts: a device sums a step's own rows; the same sums here (bit for bit), without the rows
        a.add("tot", start, start + nb, rank1_image_sums(host_view(f.coeff), host_view(f.vec), f.scale,
                                                         host_view(f.fed)))
    else:
        a.add("tot", start, start + nb, xp.sum(xp.astype(rank1_block_rows(f), xp.float64), axis=1))


def _rank1_sum(vec: Any, total: Any, scale: float, mask: Any, fed: Any) -> Any:
    """``((vec * total) * scale) * mask``, the summed relevance of a rank-1 block; numpy: in one buffer, and no
    product by a mask of ones (x * 1.0 is x, bit for bit)."""
    if not is_numpy(namespace(vec)):
        return ((vec * total) * scale) * mask
    out = np.multiply(vec, total)
    out *= scale
    if not bool(np.all(fed)):
        out *= mask
    return out


def _finish_step(upper: str, parent: str, neurons: Sequence[int], a: _Acc, branching: int, two_sided: bool,
                 n_images: int, selector: Selector) -> StepRecord:
    """Rank on the device; bring only the kept edges to the host (the counts and means stay there until asked),
    together in one copy: on a device, the step's one synchronisation."""
    mean = a.tot
    if isinstance(mean, np.ndarray):  # the step's own sums, used no more: divided in place (the same quotients)
        mean /= float(n_images)
    else:
        mean = mean / float(n_images)
    winners, bad = step_winners(a.pos, a.neg if two_sided else None, mean, branching, two_sided, a.bad)
    if bad > 0:  # labels outside {-1, 0, 1} from an array-API selector, counted on the device
        raise _bad_labels(selector)
    j, r, k, cnt, rel = (np.concatenate([w[f] for w in winners]) for f in range(5))
    s = np.concatenate([np.full(len(w[0]), 1 if i == 0 else -1, np.int64) for i, w in enumerate(winners)])
    order = np.lexsort((r, -s, j))  # per upper neuron: positive by rank, then negative
    nrn = np.asarray(neurons, dtype=np.int64)
    return StepRecord(upper, parent, tuple(map(int, neurons)), a.pos, a.neg_, mean,
                      nrn[j[order]], k[order].astype(np.int64), cnt[order].astype(np.int64),
                      rel[order].astype(np.float64), s[order])


def _bad_labels(selector: Selector) -> Exception:
    from .checks import _plugin_bug

    return _plugin_bug("selector", selector, "returned labels other than -1, 0 and +1 (expected only -1, 0 or +1)",
                       "--selector")


def explain_stop(taps: Sequence[Tap], steps: Sequence[StepRecord], active: Mapping[str, np.ndarray],
                 rule: Rule, selector: Selector, *, stop_at: str | None = None) -> list[str]:
    """Why a graph stops above the lowest tap it could reach, and what to try (empty when it does not stop).

    For each step out of the graph's taps that kept nothing, one of: the upper neurons never fire on the
    images (their relevance rows are all zero), the relevance is zero on every image, or the selector
    found no outliers (with its parameters). A model without taps below the logits is said as such.
    What to try comes from the plugins themselves (:meth:`Rule.stop_hint`, :meth:`Selector.loosen_hint`);
    without a hint, from the defaults (:mod:`ssa.core.defaults`). The core names no plugin.
    """
    by_name = {t.name: t for t in taps}
    logits = by_name.get("logits")
    if logits is not None and not logits.parents:
        return ["the model has no taps below the logits (no activation functions were found), so the graph is only "
                "the class node; name taps with --taps, or add the input's channels with --include-input"]
    floor = by_name[stop_at].order if stop_at else None
    lowest_possible = min(t.order for t in taps if floor is None or t.order >= floor)  # stop_at itself is reached
    nodes = {"logits"} | {s.parent for s in steps if bool((s.kept_sign > 0).any())}
    if min(by_name[n].order for n in nodes) <= lowest_possible:
        return []
    from ssa.core.checks import call_hint
    from ssa.core.defaults import DEFAULT_SELECTOR, other_rule_advice

    rule_hint, loosen = call_hint(rule, "stop_hint"), call_hint(selector, "loosen_hint")
    other_rule = f"{rule_hint}, or " if rule_hint else other_rule_advice(rule.name)
    if loosen is None:
        loosen = "a lower selector threshold" + ("" if selector.name == DEFAULT_SELECTOR else
                                                 f", or --selector {DEFAULT_SELECTOR}")
    notes = []
    params = ", ".join(f"{k}={v}" for k, v in selector.params.items())
    for s in steps:
        if bool((s.kept_sign > 0).any()) or s.upper not in nodes:
            continue
        frac = active.get(s.upper)
        upper_active = None if frac is None or s.upper == "logits" else np.asarray(frac)[list(s.neurons)]
        where = f"step {s.upper} -> {s.parent}"
        if upper_active is not None and not (upper_active > 0).any():
            tip = f"try {rule_hint}" if rule_hint else "try other images of the class, or --stop-at above this tap"
            notes.append(f"the graph stops at {s.upper}: its {len(s.neurons)} kept neuron(s) never fire on these "
                         f"images, so every relevance row of {where} is zero; {tip}")
        elif not np.any(s.mean):
            notes.append(f"the graph stops at {s.upper}: the relevance of {where} is zero on every image; try "
                         f"{other_rule}other images")
        else:
            notes.append(f"the graph stops at {s.upper}: no outliers at {where} with selector {selector.name} "
                         f"({params}); try {loosen}")
    if not notes:
        notes.append(f"the graph stops at {by_name[min(nodes, key=lambda n: by_name[n].order)].name}, above the "
                     f"lowest tap; try {other_rule}{loosen}")
    return notes
