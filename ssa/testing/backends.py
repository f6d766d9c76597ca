"""Conformance checks for backends (the contract of :class:`~ssa.core.interfaces.Backend` and
:class:`~ssa.core.interfaces.Network`), as :mod:`ssa.testing.conformance` has for selectors.

A backend author describes one small model as a :class:`BackendCase` and runs every check::

    from ssa.testing.backends import BackendCase, assert_backend_conforms

    def test_my_backend_conforms():
        assert_backend_conforms(BackendCase("tiny", MyBackend, source=lambda: "tiny.mine", input_shape=(3, 8, 8),
                                            taps=EXPECTED_TAPS, reference=MY_EXACT_REFERENCE))

What is checked, on random inputs drawn from ``input_shape`` (method doc, sections 3, 4 and 6):

* ``taps``: ``prepare`` returns :class:`~ssa.core.interfaces.Tap` objects in execution order (orders strictly
  increasing, unique names), ``logits`` last and 1-D, every parent an earlier tap, channel axes inside the
  shape; ``network.taps`` and a second ``prepare`` give the same taps; ``tap_scalars`` gives every tap's
  (B, N) finite scalars;
* ``cut_semantics``: the taps and their parents are the expected ones (``case.taps``, matched by position in
  execution order, so a backend may name them its own way), and ``step_relevance`` gives exactly the upper
  tap's parents, each (n, B, K_parent);
* ``logits``: (B, n_classes), finite, equal to the logits tap's scalars, to the reference's logits, and the same
  for an image alone as in a batch;
* ``relevance``: for every step and every rule in ``case.rules``, ``step_relevance`` (through the traversal's
  autograd source) equals the reference's exact autograd; on a batch it equals the concatenation of its halves;
  the scalars it returns equal ``tap_scalars``; for a dense parent, ``gradient_x_activation`` equals
  ``gradient`` times the parent's value;
* ``closed_form``: every step the network claims a closed form for (``fast_taps``) gives, through the statistics
  (``collect``, the engine's ``ClosedFormSource``), the reference's relevance;
* ``ablation`` (when the network has :class:`~ssa.core.capabilities.SupportsAblation`): ablating nothing gives
  the logits; zeroing every neuron of the logits' parents makes the logits equal on every image (cut semantics:
  the logits depend on their parents only); mean maps fitted on one image, ablated on it, change nothing; the
  logits tap, an unknown tap and an unknown mode are refused with an :class:`~ssa.errors.SSAError`;
* ``devices``: ``network.device`` is the device asked for, the arrays the network returns live there,
  ``as_array`` and ``to_host_async`` round-trip exactly; on every other available device of ``case.devices``
  (``cuda`` with a GPU) the logits and the relevance equal the CPU's;
* ``errors``: every ``case.bad_sources``, images of the wrong rank and an unknown tap give an
  :class:`~ssa.errors.SSAError` whose message is one line.

Floating-point comparisons use ``case.rtol`` (default 1e-4) relative to the largest reference value of the
array: the backend and the reference run float32 passes in different orders (a canonical graph, a closed
form, numpy in float64), so agreement is to float32 rounding, not bit for bit.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np

from ssa.core.arrays import device_of, to_numpy
from ssa.core.capabilities import SupportsAblation
from ssa.core.interfaces import Backend, Network, Rule, Tap
from ssa.errors import SSAError

__all__ = ["BackendCase", "ExpectedTap", "Reference", "TorchReference", "check_backend", "assert_backend_conforms",
           "BACKEND_CHECKS"]


class ExpectedTap(Protocol):
    """A tap written out by hand (:class:`ssa.testing.models.RefTap` is one): its name in the reference, its
    channel axis and its parents under cut semantics (method doc, section 4)."""

    name: str
    channel_axis: int
    parents: tuple[str, ...]


class Reference(Protocol):
    """The exact values a backend must reproduce, computed independently of it (tap names: ``case.taps``')."""

    def logits(self, images: np.ndarray) -> np.ndarray:
        """(B, n_classes) class logits."""

    def relevance(self, images: np.ndarray, upper: str, neurons: Sequence[int], rule: str) -> Mapping[str, Any]:
        """``{parent: omega (len(neurons), B, K)}`` of the step below ``upper`` under cut semantics."""


@dataclass(frozen=True)
class BackendCase:
    """One small model for the backend kit.

    name : shown in failures.
    backend : the :class:`~ssa.core.interfaces.Backend` class under test.
    source : makes the model source ``backend().load`` takes (an object or a path), afresh for every load.
    input_shape : the per-image input shape; the kit draws random images of it (uniform in [0, 1), float32).
    taps : the expected taps in execution order, logits last (names may differ from the backend's).
    reference : exact logits and relevance (e.g. :class:`TorchReference`); without one, the relevance is only
        checked for consistency (batches, rules, scalars).
    rules : the rules the backend supports (registered rule names).
    load_options : keywords for ``backend().load``.
    bad_sources : sources ``load`` must refuse with a one-line :class:`~ssa.errors.SSAError`.
    devices : devices to load on; those not available here (``cuda`` without a GPU) are left out.
    """

    name: str
    backend: type[Backend]
    source: Callable[[], Any]
    input_shape: tuple[int, ...]
    taps: Sequence[ExpectedTap] | None = None
    reference: Reference | None = None
    rules: tuple[str, ...] = ("gradient", "gradient_x_activation")
    load_options: Mapping[str, Any] = field(default_factory=dict)
    bad_sources: tuple[Any, ...] = ()
    devices: tuple[str, ...] = ("cpu", "cuda")
    n_images: int = 6
    seed: int = 0
    rtol: float = 1e-4

    def images(self, n: int | None = None, seed: int | None = None) -> np.ndarray:
        rng = np.random.default_rng(self.seed if seed is None else seed)
        return rng.uniform(0.0, 1.0, (self.n_images if n is None else n, *self.input_shape)).astype(np.float32)

    def load(self, device: str = "cpu") -> Network:
        return self.backend().load(self.source(), device=device, **self.load_options)


class TorchReference:
    """Exact logits and relevance of a torch module with hand-written taps: forward hooks cut every tap and one
    ``torch.autograd.grad`` call per upper neuron and image (:mod:`ssa.testing.reference`, independent of ssa's
    backends). Use it for any backend whose model has a torch twin with the same weights."""

    def __init__(self, module: Any, taps: Sequence[Any]) -> None:
        self.module, self.taps = module, tuple(taps)

    def logits(self, images: np.ndarray) -> np.ndarray:
        import torch

        from ssa.testing.reference import _fresh, run_cut

        raw, _ = run_cut(_fresh(self.module), torch.from_numpy(np.asarray(images, np.float32)), self.taps)
        return raw["logits"].detach().double().numpy()

    def relevance(self, images: np.ndarray, upper: str, neurons: Sequence[int], rule: str) -> Mapping[str, Any]:
        from ssa.testing.reference import reference_relevance

        return reference_relevance(self.module, images, self.taps, upper, neurons, rule)


class _Subject:
    """A case's network, prepared once on the case's images, with what the checks share."""

    def __init__(self, case: BackendCase) -> None:
        from ssa.plugins import make_rule

        self.case = case
        self.images = case.images()
        self.network = case.load()
        self.taps = tuple(self.network.prepare(self.images))
        self.by_name = {t.name: t for t in self.taps}
        self.rules: dict[str, Rule] = {r: make_rule(r) for r in case.rules}
        order = sorted(self.taps, key=lambda t: t.order)
        expected = list(case.taps or ())
        self.ref_name: dict[str, str] | None = None  # network tap name -> the reference's
        if expected and len(expected) == len(order):
            self.ref_name = {t.name: e.name for t, e in zip(order, expected, strict=True)}
        self.steps = [t for t in order if t.parents]

    def neurons(self, tap: Tap) -> list[int]:
        return sorted({0, tap.n_neurons // 2, tap.n_neurons - 1})

    def reference(self, images: np.ndarray, upper: str, neurons: Sequence[int], rule: str) -> dict[str, np.ndarray]:
        """The reference's relevance keyed by the network's tap names (None when there is no reference)."""
        ref, names = self.case.reference, self.ref_name
        assert ref is not None and names is not None
        back = {v: k for k, v in names.items()}
        omega = ref.relevance(images, names[upper], neurons, rule)
        return {back[p]: np.asarray(v, np.float64) for p, v in omega.items()}


def _close(what: str, got: Any, want: Any, rtol: float) -> list[str]:
    if got is None or want is None:
        return [f"{what}: {'the value' if got is None else 'the expected value'} is missing"]
    got, want = np.asarray(to_numpy(got), np.float64), np.asarray(to_numpy(want), np.float64)
    if got.shape != want.shape:
        return [f"{what}: shape {got.shape}, expected {want.shape}"]
    scale = float(np.abs(want).max()) if want.size else 0.0
    if np.allclose(got, want, rtol=rtol, atol=rtol * max(scale, 1e-12)):
        return []
    return [f"{what}: differs by up to {float(np.abs(got - want).max()):.3g} (largest value {scale:.3g}, rtol {rtol})"]


def _refused(what: str, call: Callable[[], Any]) -> list[str]:
    """[] when ``call()`` raises an SSAError with a one-line message; a failure otherwise."""
    try:
        call()
    except SSAError as exc:
        text = str(exc).strip()
        return [f"{what}: the message is not one line: {text!r}"] if "\n" in text or not text else []
    except Exception as exc:  # noqa: BLE001 - any other exception is the failure being checked
        return [f"{what}: raised {type(exc).__name__} ({str(exc).strip()[:120]!r}) instead of an ssa.SSAError"]
    return [f"{what}: was accepted, expected an ssa.SSAError"]


def _check_taps(s: _Subject) -> list[str]:
    fails: list[str] = []
    taps = s.taps
    if not taps or not all(isinstance(t, Tap) for t in taps):
        return [f"prepare() returned {taps!r}, expected a tuple of ssa.Tap"]
    names = [t.name for t in taps]
    if len(set(names)) != len(names):
        fails.append(f"tap names are not unique: {names}")
    if [t.order for t in taps] != sorted({t.order for t in taps}):
        fails.append(f"tap orders {[t.order for t in taps]} are not strictly increasing in execution order")
    last = taps[-1]
    if last.name != "logits" or last.kind != "logits" or len(last.shape) != 1:
        fails.append(f"the last tap is {last.name!r} ({last.kind}, shape {last.shape}), expected 'logits' of kind "
                     "'logits' with a 1-D shape")
    for t in taps:
        for p in t.parents:
            if p not in s.by_name or s.by_name[p].order >= t.order:
                fails.append(f"tap {t.name!r}: parent {p!r} is not an earlier tap")
        if not 1 <= t.channel_axis <= len(t.shape):
            fails.append(f"tap {t.name!r}: channel_axis {t.channel_axis} is outside its shape {t.shape}")
    if tuple(s.network.taps) != taps:
        fails.append("network.taps differs from what prepare() returned")
    if tuple(s.network.prepare(s.images)) != taps:
        fails.append("a second prepare() on the same images gave other taps")
    scalars = s.network.tap_scalars(s.images)
    for t in taps:
        v = np.asarray(to_numpy(scalars[t.name])) if t.name in scalars else None
        if v is None or v.shape != (len(s.images), t.n_neurons) or not np.isfinite(v).all():
            fails.append(f"tap_scalars()[{t.name!r}] is {None if v is None else v.shape}, expected finite "
                         f"({len(s.images)}, {t.n_neurons})")
    return fails


def _check_cut_semantics(s: _Subject) -> list[str]:
    fails: list[str] = []
    expected = list(s.case.taps or ())
    if expected and s.ref_name is None:
        fails.append(f"found {len(s.taps)} taps ({', '.join(t.name for t in s.taps)}), expected {len(expected)} "
                     f"({', '.join(e.name for e in expected)})")
    elif expected and s.ref_name is not None:
        for t, e in zip(sorted(s.taps, key=lambda t: t.order), expected, strict=True):
            parents = sorted(s.ref_name[p] for p in t.parents)
            if parents != sorted(e.parents):
                fails.append(f"tap {t.name!r} (expected {e.name!r}) has parents {parents}, expected "
                             f"{sorted(e.parents)}")
            if t.channel_axis != e.channel_axis:
                fails.append(f"tap {t.name!r} has channel_axis {t.channel_axis}, expected {e.channel_axis}")
    rule = next(iter(s.rules.values()))
    for t in s.taps:
        rel, _ = s.network.step_relevance(s.images, t.name, s.neurons(t), rule)
        if set(rel) != set(t.parents):
            fails.append(f"step_relevance({t.name!r}) gave parents {sorted(rel)}, expected {sorted(t.parents)}")
        for p, om in rel.items():
            want = (len(s.neurons(t)), len(s.images), s.by_name[p].n_neurons) if p in s.by_name else None
            if tuple(om.shape) != want:
                fails.append(f"step {t.name} -> {p}: omega of shape {tuple(om.shape)}, expected {want}")
    return fails


def _check_logits(s: _Subject) -> list[str]:
    out = np.asarray(to_numpy(s.network.logits(s.images)))
    n = s.by_name["logits"].n_neurons
    if out.shape != (len(s.images), n) or not np.isfinite(out).all():
        return [f"logits() gave {out.shape}, expected finite ({len(s.images)}, {n})"]
    fails = _close("logits() against tap_scalars()['logits']", out, s.network.tap_scalars(s.images)["logits"],
                   s.case.rtol)
    alone = np.concatenate([to_numpy(s.network.logits(s.images[i:i + 1])) for i in range(len(s.images))])
    fails += _close("logits of images one by one against the batch", alone, out, s.case.rtol)
    if s.case.reference is not None:
        fails += _close("logits against the reference", out, s.case.reference.logits(s.images), s.case.rtol)
    return fails


def _omega(network: Network, images: np.ndarray, upper: str, neurons: Sequence[int], rule: Rule,
           batch_size: int) -> dict[str, np.ndarray]:
    """The step's omega as the traversal's autograd engine gets it (batches of ``batch_size`` images)."""
    from ssa.core.traversal import step_omega
    from ssa.engines.autograd import AutogradSource

    return step_omega(AutogradSource(network, images, batch_size), upper, neurons, rule)


def _check_relevance(s: _Subject) -> list[str]:
    fails: list[str] = []
    half = max(1, len(s.images) // 2)
    for rule_name, rule in s.rules.items():
        for t in s.steps:
            neurons = s.neurons(t)
            whole = _omega(s.network, s.images, t.name, neurons, rule, len(s.images))
            halves = _omega(s.network, s.images, t.name, neurons, rule, half)
            for p in t.parents:
                fails += _close(f"{rule_name}, step {t.name} -> {p}: a batch against its halves", halves.get(p),
                                whole.get(p), s.case.rtol)
            if s.case.reference is not None and s.ref_name is not None:
                ref = s.reference(s.images, t.name, neurons, rule_name)
                for p in t.parents:
                    fails += _close(f"{rule_name}, step {t.name} -> {p} against the reference", whole.get(p),
                                    ref.get(p), s.case.rtol)
            _, scalars = s.network.step_relevance(s.images, t.name, neurons, rule)
            plain = s.network.tap_scalars(s.images)
            for name in plain:
                fails += _close(f"scalars of {name} from step_relevance({t.name!r}) against tap_scalars()",
                                scalars.get(name), plain[name], s.case.rtol)
    if {"gradient", "gradient_x_activation"} <= set(s.rules):
        values = s.network.tap_scalars(s.images)
        for t in s.steps:
            for p in t.parents:
                if len(s.by_name[p].shape) != 1:
                    continue  # with positions, the mean of a product is not the product of the means
                g = _omega(s.network, s.images, t.name, s.neurons(t), s.rules["gradient"], len(s.images))[p]
                gxa = _omega(s.network, s.images, t.name, s.neurons(t), s.rules["gradient_x_activation"],
                             len(s.images))[p]
                fails += _close(f"step {t.name} -> {p} (a dense parent): gradient_x_activation against gradient times "
                                "the parent's value", gxa, g * to_numpy(values[p])[None], s.case.rtol)
    return fails


def _check_closed_form(s: _Subject) -> list[str]:
    from ssa.core.traversal import step_omega
    from ssa.engines.closed_form import ClosedFormSource
    from ssa.engines.statistics import collect

    fails: list[str] = []
    for rule_name, rule in s.rules.items():
        form = rule.form
        fast = s.network.fast_taps(form) if form else frozenset()
        if form is None or not fast:
            continue
        stats = collect(s.network, s.images, [form], len(s.images))
        source = ClosedFormSource(s.network, stats, form, s.images, len(s.images))
        for t in s.steps:
            if t.name not in fast:
                continue
            got = step_omega(source, t.name, s.neurons(t), rule)
            want = s.reference(s.images, t.name, s.neurons(t), rule_name) if s.case.reference is not None and \
                s.ref_name is not None else _omega(s.network, s.images, t.name, s.neurons(t), rule, len(s.images))
            for p in t.parents:
                fails += _close(f"{rule_name}, closed form of step {t.name} -> {p}", got.get(p), want.get(p),
                                s.case.rtol)
    return fails


def _check_ablation(s: _Subject) -> list[str]:
    if not isinstance(s.network, SupportsAblation):
        return []  # an optional capability: `ssa evaluate` says in one line that it needs it
    ablator = s.network.ablator()
    logits = to_numpy(s.network.logits(s.images))
    fails = _close("ablating nothing against logits()", ablator.logits(s.images, {}), logits, s.case.rtol)
    below = {p: np.arange(s.by_name[p].n_neurons) for p in s.by_name["logits"].parents}
    zeroed = np.asarray(ablator.logits(s.images, below, "zero"))
    fails += _close("zeroing every neuron of the logits' parents: logits of every image against the first's",
                    zeroed, np.broadcast_to(zeroed[:1], zeroed.shape), s.case.rtol)
    lower = [t.name for t in s.taps if t.name != "logits"]
    for i in range(min(2, len(s.images))):
        one = s.images[i:i + 1]
        ablator.fit_means(one, lower)
        every = {t: np.arange(s.by_name[t].n_neurons) for t in lower}
        fails += _close(f"image {i} with every tap set to its own mean map against its logits",
                        ablator.logits(one, every, "mean"), logits[i:i + 1], s.case.rtol)
    fails += _refused("ablating the logits tap", lambda: ablator.logits(s.images, {"logits": np.array([0])}))
    fails += _refused("ablating an unknown tap", lambda: ablator.logits(s.images, {"no such tap": np.array([0])}))
    one_neuron = {lower[-1]: np.array([0])}
    fails += _refused("an unknown ablation mode", lambda: ablator.logits(s.images, one_neuron, "no such mode"))
    return fails


def _available(device: str) -> bool:
    if device == "cpu":
        return True
    from ssa.core.checks import check_device

    try:
        check_device(device)
    except (SSAError, ImportError):  # no GPU, or no torch (a backend without torch): not available here
        return False
    return True


def _check_devices(s: _Subject) -> list[str]:
    fails: list[str] = []
    net = s.network
    if str(net.device) != "cpu":
        fails.append(f"network.device is {net.device!r} for a network loaded on 'cpu'")
    t = s.steps[-1] if s.steps else None
    arrays = dict(net.tap_scalars(s.images))
    if t is not None:
        rel, _ = net.step_relevance(s.images, t.name, s.neurons(t), next(iter(s.rules.values())))
        arrays.update({f"omega of {t.name} -> {p}": v for p, v in rel.items()})
    for what, v in arrays.items():
        if str(device_of(v)) != str(net.device):
            fails.append(f"{what} lives on {device_of(v)}, expected the network's device {net.device}")
    host = {"a": np.arange(12, dtype=np.float64).reshape(3, 4), "b": np.ones(5, np.int64)}
    back = net.to_host_async({k: net.as_array(v) for k, v in host.items()}).result()
    if set(back) != set(host) or not all(np.array_equal(np.asarray(back[k]), host[k]) for k in host):
        fails.append("as_array() then to_host_async().result() did not give the host arrays back")
    for dev in s.case.devices:
        if dev == "cpu" or not _available(dev):
            continue
        other = s.case.load(device=dev)
        other.prepare(s.images)
        if not str(other.device).startswith(dev):
            fails.append(f"network.device is {other.device!r} for a network loaded on {dev!r}")
        fails += _close(f"logits on {dev} against the CPU's", other.logits(s.images), net.logits(s.images), s.case.rtol)
        for rule_name, rule in s.rules.items():
            for step in s.steps:
                a = _omega(other, s.images, step.name, s.neurons(step), rule, len(s.images))
                b = _omega(net, s.images, step.name, s.neurons(step), rule, len(s.images))
                for p in step.parents:
                    fails += _close(f"{rule_name}, step {step.name} -> {p} on {dev} against the CPU's", a.get(p),
                                    b.get(p), s.case.rtol)
    return fails


def _check_errors(s: _Subject) -> list[str]:
    fails: list[str] = []
    def load(bad: Any) -> Callable[[], Any]:
        return lambda: s.case.backend().load(bad, **s.case.load_options)

    for i, bad in enumerate(s.case.bad_sources):
        fails += _refused(f"loading bad source {i} ({bad!r:.60})", load(bad))
    fails += _refused("prepare() on images with an extra axis", lambda: s.case.load().prepare(s.images[..., None]))
    rule = next(iter(s.rules.values()))
    fails += _refused("step_relevance() of an unknown tap",
                      lambda: s.network.step_relevance(s.images, "no such tap", [0], rule))
    return fails


BACKEND_CHECKS: dict[str, Callable[[_Subject], list[str]]] = {
    "taps": _check_taps,
    "cut_semantics": _check_cut_semantics,
    "logits": _check_logits,
    "relevance": _check_relevance,
    "closed_form": _check_closed_form,
    "ablation": _check_ablation,
    "devices": _check_devices,
    "errors": _check_errors,
}


def check_backend(case: BackendCase, checks: Sequence[str] | None = None) -> list[str]:
    """Run the backend checks (all, or those named) on ``case``; return the failures (empty list: conforms).

    Each failure is one line prefixed with the check's name and the case's; an exception a check meets is
    reported as a failure of that check, and a network that cannot be loaded or prepared fails ``setup``.
    """
    unknown = sorted(set(checks or ()) - set(BACKEND_CHECKS))
    if unknown:
        raise ValueError(f"unknown backend checks {unknown}; choose from {sorted(BACKEND_CHECKS)}")
    try:
        subject = _Subject(case)
    except Exception as exc:  # noqa: BLE001 - a backend that cannot load or prepare its own model fails
        return [f"setup [{case.name}]: loading and preparing raised {type(exc).__name__}: {_line(exc)}"]
    failures: list[str] = []
    for name in checks or BACKEND_CHECKS:
        try:
            msgs = BACKEND_CHECKS[name](subject)
        except Exception as exc:  # noqa: BLE001
            msgs = [f"raised {type(exc).__name__}: {_line(exc)}"]
        failures.extend(f"{name} [{case.name}]: {m}" for m in msgs)
    return failures


def _line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else ""


def assert_backend_conforms(case: BackendCase, checks: Sequence[str] | None = None) -> None:
    """pytest-friendly: raise ``AssertionError`` listing every failure of :func:`check_backend`."""
    failures = check_backend(case, checks)
    if failures:
        raise AssertionError(f"backend {case.backend.__name__} does not conform on {case.name} ({len(failures)} "
                             "failure(s)):\n  " + "\n  ".join(failures))
