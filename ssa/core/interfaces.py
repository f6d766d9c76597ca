"""Abstract interfaces of the core: backends, relevance rules, outlier selectors.

Plugins implement these and register the classes through the hooks in
:mod:`ssa.hookspecs`. The algorithm itself (:mod:`ssa.core.traversal`) only talks to
these interfaces, so a PyTorch module, an ONNX file or any other backend is
analysed the same way (method doc, section 3).
"""

from __future__ import annotations

import contextlib
import enum
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar, NamedTuple, Protocol, runtime_checkable

import numpy as np

from ssa.core.params import Configurable

__all__ = ["ClosedForm", 'Selector', 'SupportsSortedCuts', 'SupportsSearchedCuts', 'SupportsCounts', 'Rank1Factors',
           'SortedKeys', 'DenseBlock', 'Rank1Block', 'Rule', 'Tap', 'Network', 'Backend']


class Selector(Configurable, ABC):
    """Picks the relevant lower neurons of relevance rows (method doc, section 3, STEP 2).

    Every selector accepts ``two_sided`` (default False): when True, negative
    outliers are also returned, as -1, and become inhibitory edges.
    """

    kind_label: ClassVar[str] = "selector"
    #: True when :meth:`select` is written against the Python array API (``xp = namespace(rows)``,
    #: ``xp.*`` inside) and so runs on the backend's arrays and device (a GPU). False (the default):
    #: ``rows`` is a float64 numpy array; the core converts at the boundary.
    array_api: ClassVar[bool] = False
    #: the selector's main parameter and the values ``ssa evaluate --curves`` sweeps it over (besides its
    #: default) to vary the circuit's size, e.g. ``("k", (0.5, 1.0, 3.0, 6.0))``; None (the default): only the
    #: branching factor is swept
    sweep: ClassVar[tuple[str, tuple[float, ...]] | None] = None

    @abstractmethod
    def select(self, rows: np.ndarray) -> np.ndarray:
        """Classify every entry of every row.

        Parameters
        ----------
        rows : float64 array of shape (R, K); row r holds omega[n, i, :]. A numpy array, or, for a
            selector with ``array_api = True``, an array of the backend's library on its device.

        Returns
        -------
        int8 array of shape (R, K): +1 for a positive outlier, -1 for a
        negative outlier (only when ``two_sided``), 0 otherwise. Rows with NaN
        must give 0 everywhere. The result must depend only on the row itself.
        """

    def select_sorted(self, rows: np.ndarray, sorted_rows: Any) -> np.ndarray:
        """:meth:`select`, when each row's values sorted ascending are known (``sorted_rows``, same shape).

        The relevance source knows the order for some steps without sorting; a selector based on
        order statistics can skip its sort. The default ignores the hint. The result must equal
        :meth:`select`'s exactly.
        """
        return self.select(rows)

    def loosen_hint(self) -> str | None:
        """What to try when this selector keeps nothing at a step whose relevance is not zero: one line of
        command-line options, which a stop note prints after "try" (e.g. ``"--selector-param k=1, or --selector
        other"``), worked out from the selector's own parameters; None (the default): the note suggests a lower
        selector threshold or the default selector. ``ssa.testing.conformance`` checks it is one line or None.
        """
        return None

    @property
    def two_sided(self) -> bool:
        return bool(self.params.get("two_sided", False))


@runtime_checkable
class SupportsSortedCuts(Protocol):
    """A selector whose labels cut each row at two values found from the row sorted (an optional capability).

    ``sorted_cuts(n, column)`` gets rows of ``n`` values only through ``column(p)``, the (R, 1) values at
    position ``p`` of the rows sorted ascending, and returns ``(hi, lo)``, each (R, 1): a value of a finite row
    is labelled +1 iff it is > ``hi`` and -1 iff it is < ``lo`` (``lo`` None: never), exactly as
    :meth:`Selector.select` labels it. Order statistics need a few positions of a row, so the traversal labels
    and counts a rank-1 step (each row a per-image multiple of one vector) without building its rows.
    ``ssa.conformance`` checks the cuts against :meth:`Selector.select`. Selectors based on order statistics
    can have it (see ``docs/plugins.md`` for the built-in ones); those that need every value (a mean) cannot.
    """

    def sorted_cuts(self, n: int, column: Callable[[int], Any]) -> tuple[Any, Any | None]: ...


@runtime_checkable
class SupportsCounts(Protocol):
    """A selector that counts its labels over groups of rows itself (an optional capability, for the device path).

    ``count_labels(rows, groups, sorted_rows)`` takes rows (n * groups, K) as :meth:`Selector.select_sorted` does
    (``sorted_rows`` may be None) and returns ``(pos, neg)``, each (n, K) integer, on the rows' device:
    ``pos[j, k]`` is how many of rows ``j * groups .. (j + 1) * groups - 1`` :meth:`Selector.select` labels +1 in
    column k, ``neg`` the same for -1 (None when the selector is one-sided). On a device the traversal then needs
    no int8 labels and no pass to check them (fewer kernels per step); ``ssa.conformance`` checks the counts
    against :meth:`Selector.select`'s labels summed.
    """

    def count_labels(self, rows: Any, groups: int, sorted_rows: Any = None) -> tuple[Any, Any | None]: ...


@runtime_checkable
class SupportsSearchedCuts(Protocol):
    """A selector whose labels cut each row at two values found by searching the row sorted (an optional capability).

    ``searched_cuts(n, read, mean_abs)`` gets finite float64 numpy rows of ``n >= 1`` values only through
    ``read(p)``, the (R, 1) values at sorted position ``p`` of the rows sorted ascending (``p`` an int, the same
    for every row, or an (R, 1) int64 array, one position per row: what a search reads), and
    ``mean_abs(center, where)``, the (R, 1) mean of ``|x - center|`` over each row where ``where`` (R, 1) holds
    (anything elsewhere), exactly as ``numpy.mean(numpy.abs(row - center))`` gives it. It returns ``(hi, lo)`` as
    :meth:`SupportsSortedCuts.sorted_cuts` does: a value is labelled +1 iff it is > ``hi`` and -1 iff it is <
    ``lo`` (``lo`` None: never), exactly as :meth:`Selector.select` labels it. MAD has it (a median, the median of
    absolute deviations by a search, the mean absolute deviation where that is 0): the traversal labels and
    counts a rank-1 step on the host from its factors (a few reads per row; a row is built only for a mean of
    more than two values off the centre), and counts the other rows against the cuts (no label arrays).
    ``ssa.conformance`` checks the cuts against :meth:`Selector.select`. The traversal's ``read`` may be a
    :class:`ssa.core.arrays.FlatReader`, whose ``flat_reads`` are the same rows at flat offsets, for searches in fewer
    passes.
    """

    def searched_cuts(self, n: int, read: Callable[[Any], Any], mean_abs: Callable[[Any, Any], Any]
                      ) -> tuple[Any, Any | None]: ...


class Rank1Factors(NamedTuple):
    """A rank-1 step's relevance without its rows: ``omega[j, i, k] = ((vec[j, k] * coeff[j, i]) * scale) * fed[j]``,
    one rounding per product, in that order (a :class:`Rank1Block` of :meth:`Network.relevance_blocks`)."""

    coeff: Any  # (n, B)
    vec: Any  # (n, K)
    scale: float
    fed: Any  # (n,) bool: the upper neurons this term feeds (0 elsewhere)
    #: optional (n, K): a permutation sorting each row of ``vec`` ascending, when the backend keeps one (the
    #: rows are often weights, the same for every class); None: the traversal sorts
    order: Any = None


class SortedKeys(NamedTuple):
    """A :class:`DenseBlock`'s rows sorted, given by the numbers they are made from: row (j, i) of ``omega`` sorted
    ascending is ``(float64(keys[j, i]) * scale) * fed[j]``, one rounding per product, in that order (``keys`` (n, b, K)
    numpy, each row sorted ascending, in a dtype float64 holds exactly, e.g. the float32 statistics; ``scale`` > 0,
    so the products keep the keys' order; ``fed`` (n,) bool numpy, or None: every row fed). Sorting the keys
    (float32: half the bytes) replaces sorting the float64 rows; the sorted rows are read where a selector reads
    them (:func:`~ssa.core.searched.keys_reader`), or built (:func:`~ssa.core.searched.keys_rows`, the reference)."""

    keys: Any
    scale: float
    fed: Any = None


class DenseBlock(NamedTuple):
    """A block of one step's relevance (docs/architecture.md, "The relevance seam"): ``omega[j, i, k]`` of upper
    neuron ``neurons[start + j]``, an image i of the block and parent neuron k.

    ``omega`` has shape (n_block, n_images_in_block, K_parent), any array-API array on the source's device.
    Blocks of the same upper neurons and different images add up; blocks of different upper neurons fill
    different rows.
    """

    parent: str
    start: int
    omega: Any
    #: optional: every row of ``omega`` sorted ascending (same shape), when the source knows the order without a
    #: sort; order-statistic selectors then skip theirs (``Selector.select_sorted``); or :class:`SortedKeys` (numpy,
    #: given on the host only when the traversal asks for factors): the rows sorted through their keys
    sorted: Any = None


class Rank1Block(NamedTuple):
    """A rank-1 step's block given as its factors (rows ``neurons[start:start + n]``, n = ``factors.coeff``'s
    first axis); a source gives one only when the traversal asks for factors (its selector has sorted or searched
    cuts)."""

    parent: str
    start: int
    factors: Rank1Factors


class ClosedForm(enum.Enum):
    """The closed forms of method doc section 6: what a rule's ``combine`` must equal to use them.

    ``GRADIENT``: ``combine(grad, activation) == grad``; ``GRADIENT_X_ACTIVATION``:
    ``combine(grad, activation) == grad * activation``. The value is the name backends use.
    """

    GRADIENT = "gradient"
    GRADIENT_X_ACTIVATION = "gradient_x_activation"

    def combine(self, grad: Any, activation: Any) -> Any:
        """What a rule with this closed form combines (the definition the engines implement)."""
        return grad if self is ClosedForm.GRADIENT else grad * activation


class Rule(Configurable, ABC):
    """How the relevance omega of one step is computed (method doc, sections 3 and 5).

    A rule combines, per image and per parent position, the gradient of the
    upper neuron's scalar with the parent's activation; the step relevance is
    the spatial mean of that combination over the parent's positions.
    ``closed_form`` (a :class:`ClosedForm`) declares the closed form of method doc section 6
    the rule equals, or None for exact autograd only. The declaration is checked: a rule whose
    ``combine`` differs from its closed form is refused (:func:`ssa.core.checks.check_closed_form`),
    and :func:`ssa.testing.assert_rule_engines_agree` compares both engines' graphs on small models.
    """

    kind_label: ClassVar[str] = "rule"
    closed_form: ClassVar[ClosedForm | None] = None

    @property
    def form(self) -> str | None:
        """The closed form's name for the backends ("gradient", ...), or None."""
        return self.closed_form.value if self.closed_form is not None else None

    def stop_hint(self) -> str | None:
        """What to try instead of this rule when a graph stops because this rule's relevance is zero (kept neurons
        that never fire, or a step whose relevance is zero on every image): one line of command-line options,
        which a stop note prints after "try" (e.g. ``"--rule other"``); None (the default): the note suggests
        the default rule (when it is not this one) or other images. Checked to be one line or None.
        """
        return None

    @abstractmethod
    def combine(self, grad: Any, activation: Any) -> Any:
        """Elementwise contribution of each parent position (torch tensors).

        ``grad`` has shape (n, B, *parent_shape) for n upper neurons, and
        ``activation`` has shape (B, *parent_shape); return a tensor shaped like ``grad``.
        """


@dataclass(frozen=True)
class Tap:
    """A tensor whose neurons are nodes of the dependency graph.

    Attributes
    ----------
    name : unique name (module path or graph node name; ``logits``; ``input``).
    order : position in execution order (the logits have the highest).
    kind : "activation", "stream" (a residual stream, method doc section 4b), "logits", "input" or "manual".
    shape : per-image shape (without the batch axis).
    channel_axis : axis of the neurons in the full (batched) tensor.
    parents : names of the parent taps (method doc, section 4: cut semantics).
    op : short description of the operation that produces the tap.
    """

    name: str
    order: int
    kind: str
    shape: tuple[int, ...]
    channel_axis: int
    parents: tuple[str, ...] = ()
    op: str = ""

    @property
    def n_neurons(self) -> int:
        return int(self.shape[self.channel_axis - 1])

    @property
    def n_positions(self) -> int:
        total = 1
        for d in self.shape:
            total *= int(d)
        return total // max(self.n_neurons, 1)


class Network(ABC):
    """A loaded model, ready to be analysed by the traversal.

    Obtained from :meth:`Backend.load`; :meth:`prepare` discovers the taps
    and the tap DAG from an example batch (construction does no work).
    """

    name: str = "model"

    @abstractmethod
    def prepare(self, example: np.ndarray) -> tuple[Tap, ...]:
        """Discover the taps (execution order, logits last) for inputs like ``example``."""

    @property
    @abstractmethod
    def taps(self) -> tuple[Tap, ...]:
        """The taps found by :meth:`prepare`."""

    @abstractmethod
    def logits(self, batch: np.ndarray) -> np.ndarray:
        """Class logits, shape (B, n_classes)."""

    @abstractmethod
    def tap_scalars(self, batch: np.ndarray) -> dict[str, np.ndarray]:
        """Every tap's neuron scalars (value, or spatial mean) on a batch: ``{tap: (B, N)}``."""

    @abstractmethod
    def step_relevance(
        self, batch: np.ndarray, upper: str, neurons: Sequence[int], rule: Rule
    ) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
        """Relevance of every parent tap of ``upper`` for ``neurons`` on a batch.

        Returns ``(relevance, scalars)``: ``relevance[parent]`` has shape
        (len(neurons), B, K_parent); ``scalars[tap]`` has shape (B, N_tap) and
        holds every tap's neuron scalars (value or spatial mean) on the batch.
        """

    #: the device the network computes on ("cpu", "cuda:0", ...); arrays it returns live there
    device: str = "cpu"

    def as_array(self, values: Any) -> Any:
        """``values`` (a host numpy array, e.g. memory-mapped statistics) as an array on the network's device."""
        return values

    def arithmetic(self, fast_math: bool = False) -> contextlib.AbstractContextManager[Any]:
        """The arithmetic of one analysis, entered once around it by the session (statistics and traversal).

        A GPU backend makes the device compute as the CPU does (no reduced-precision products, deterministic
        algorithms) and restores the caller's settings afterwards; ``fast_math`` allows the device's faster,
        less exact products (TF32 on CUDA). The default does nothing.
        """
        return contextlib.nullcontext()

    def statistics_pass(self) -> contextlib.AbstractContextManager[Any]:
        """The context the statistics pass runs in, entered once around it by
        :func:`ssa.engines.statistics.collect` (all its batches). The default does nothing; the torch backend keeps
        freed memory in glibc's heap there for models of large activations (:func:`ssa.core.heap.kept_memory`)."""
        return contextlib.nullcontext()

    def to_host_async(self, arrays: Mapping[str, Any]) -> Any:
        """Start copying device ``arrays`` to the host; ``.result()`` returns ``{key: numpy array}``.

        The default copies at once; a GPU backend copies into pinned buffers without stalling the device.
        """
        return _HostArrays({k: np.asarray(v) for k, v in arrays.items()})

    def describe_steps(self) -> dict[str, str]:
        """Which computation each step uses, keyed by "upper -> parent"."""
        return {}

    # -- optional: the exact closed form of method doc section 6 -------------------------
    def fast_taps(self, form: str | None = None) -> frozenset[str]:
        """Upper taps whose steps have the closed form (for ``form``, when given); none by default."""
        return frozenset()

    def collect(self, batch: np.ndarray, forms: Sequence[str], slots: Callable[..., Any] | None = None
                ) -> dict[str, np.ndarray]:
        """Per-image statistics of every fast step and every tap's scalars, in one forward pass.

        ``slots`` (optional, a hint): ``slots(key, shape, like)`` returns an array where the batch's ``key`` (of
        ``shape``, ``like``'s dtype and device) may be written (the rows of the whole image set's array:
        :meth:`ssa.engines.statistics.DeviceStatistics.slots`), or None; a backend that writes there returns that
        array as the key's value, and one that ignores ``slots`` is as right.
        """
        raise NotImplementedError

    def relevance_blocks(self, upper: str, stats: Mapping[str, Any], neurons: Sequence[int], form: str,
                         factors: bool = False) -> list[DenseBlock | Rank1Block]:
        """The relevance of a closed-form step for ``neurons`` from a class's statistics, as blocks (``start`` 0:
        ``neurons[0]`` is row 0): per parent the backend's terms summed, one :class:`DenseBlock` of shape
        (len(neurons), B, K) with its rows sorted where the backend knows the order without a sort; with
        ``factors``, a parent reached by exactly one rank-1 term is a :class:`Rank1Block` instead (the traversal
        labels those without building the rows)."""
        raise NotImplementedError

    def statistics_bytes(self, form: str) -> int:
        """Bytes of closed-form statistics :meth:`collect` keeps per image for ``form`` (0 if unknown)."""
        return 0

    def fingerprint(self) -> str:
        """A content hash of the model and its taps, for the statistics store (keyed by what the statistics
        depend on)."""
        raise NotImplementedError

    def model_hash(self) -> str:
        """A content hash of the model itself (weights and graph, not the tap choice): its identity in graphs.

        Two networks with the same hash compute the same function with the same weights, whatever they were
        loaded from or called. The default is :meth:`fingerprint`.
        """
        return self.fingerprint()

    def weight_arrays(self) -> list[np.ndarray]:
        """The model's floating-point weights (any order), for recognising a built-in model by content; none by
        default."""
        return []


class Backend(ABC):
    """Loads models of one kind (PyTorch modules, ONNX files, ...)."""

    name: ClassVar[str] = ""
    description: ClassVar[str] = ""
    priority: ClassVar[int] = 0

    @classmethod
    @abstractmethod
    def can_load(cls, source: Any) -> bool:
        """True when ``source`` (an object or a string) is this backend's kind of model."""

    @abstractmethod
    def load(self, source: Any, *, device: str = "cpu", **options: Any) -> Network:
        """Load ``source``; raise :class:`ssa.errors.ModelLoadError` when it cannot be read."""


class _HostArrays:
    def __init__(self, arrays: dict[str, np.ndarray]) -> None:
        self._arrays = arrays

    def result(self) -> dict[str, np.ndarray]:
        return self._arrays
