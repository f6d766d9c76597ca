"""The checks of the backend conformance kit (:mod:`ssa.testing.backends` documents them and runs them).

Each check takes a :class:`_Subject` (a case's network, prepared once) and returns one-line failures.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

import numpy as np

from ssa.core.arrays import device_of, to_numpy
from ssa.core.capabilities import SupportsAblation
from ssa.core.interfaces import Network, Rule, Tap
from ssa.errors import SSAError

if TYPE_CHECKING:
    from ssa.testing.backends import BackendCase

__all__ = ["BACKEND_CHECKS", "ExpectedTap", "Reference", "AblationReference"]


class ExpectedTap(Protocol):
    """A tap written out by hand (:class:`ssa.testing.models.RefTap` is one): its name in the reference, its
    channel axis and its parents under cut semantics (method doc, section 4)."""

    @property
    def name(self) -> str: ...

    @property
    def channel_axis(self) -> int: ...

    @property
    def parents(self) -> tuple[str, ...]: ...


class Reference(Protocol):
    """The exact values a backend must reproduce, computed independently of it (tap names: ``case.taps``')."""

    def logits(self, images: np.ndarray) -> np.ndarray:
        """(B, n_classes) class logits."""

    def relevance(self, images: np.ndarray, upper: str, neurons: Sequence[int], rule: str) -> Mapping[str, Any]:
        """``{parent: omega (len(neurons), B, K)}`` of the step below ``upper`` under cut semantics."""


@runtime_checkable
class AblationReference(Protocol):
    """A reference that also knows the logits with neurons ablated (optional; the ``ablation`` check uses it)."""

    def ablated_logits(self, images: np.ndarray, ablate: Mapping[str, Sequence[int]]) -> np.ndarray:
        """(B, n_classes) logits with the channels ``ablate[tap]`` of every tap set to 0 at once."""


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
        """The reference's relevance keyed by the network's tap names (only called when the case has a reference
        and the taps matched it)."""
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
    ref = s.case.reference
    if isinstance(ref, AblationReference) and s.ref_name is not None:
        names = s.ref_name
        rng = np.random.default_rng(s.case.seed)
        chosen = {t: np.sort(rng.choice(s.by_name[t].n_neurons, max(1, s.by_name[t].n_neurons // 3), replace=False))
                  for t in lower}
        for ablate in [{t: v} for t, v in chosen.items()] + [chosen]:
            what = ", ".join(f"{t}{v.tolist()}" for t, v in ablate.items())
            fails += _close(f"zeroing {what} against the reference", ablator.logits(s.images, ablate, "zero"),
                            ref.ablated_logits(s.images, {names[t]: v.tolist() for t, v in ablate.items()}),
                            s.case.rtol)
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
        for name, v in other.tap_scalars(s.images).items():
            if str(device_of(v)).split(":")[0] != dev.split(":")[0]:
                fails.append(f"tap_scalars()[{name!r}] of a network on {dev} lives on {device_of(v)}")
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


