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
  the logits depend on their parents only); mean maps fitted on one image, ablated on it, change nothing;
  zeroing neurons equals the reference's ``ablated_logits`` (:class:`AblationReference`, optional); the
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
from typing import Any

import numpy as np

from ssa.core.interfaces import Backend, Network
from ssa.testing.backend_checks import BACKEND_CHECKS, AblationReference, ExpectedTap, Reference, _Subject

__all__ = ["BackendCase", "ExpectedTap", "Reference", "AblationReference", "TorchReference", "check_backend",
           "assert_backend_conforms", "BACKEND_CHECKS"]


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

    def ablated_logits(self, images: np.ndarray, ablate: Mapping[str, Sequence[int]]) -> np.ndarray:
        """Logits with channels of taps set to 0: forward hooks on a copy of the module replace the output of
        each tap's module call (the input itself for the input tap), and one more records the logits."""
        import torch

        from ssa.testing.reference import _fresh

        model = _fresh(self.module)
        modules = dict(model.named_modules())
        by_name = {t.name: t for t in self.taps}
        calls: dict[str, int] = {}
        got: dict[str, Any] = {}

        def zero(value: Any, tap: Any) -> Any:
            index = torch.as_tensor(np.asarray(ablate[tap.name], dtype=np.int64))
            return value.index_fill(tap.channel_axis, index, 0.0)

        def hook(path: str) -> Any:
            def run(module: Any, inputs: Any, output: Any) -> Any:
                k = calls[path] = calls.get(path, -1) + 1
                for t in self.taps:
                    if t.module == path and t.call == k:
                        if t.name == "logits":
                            got["logits"] = output
                        elif t.name in ablate:
                            return zero(output, t)
                return None

            return run

        handles = [modules[p].register_forward_hook(hook(p)) for p in {t.module for t in self.taps if t.module}]
        x = torch.from_numpy(np.asarray(images, np.float32))
        input_tap = next((t for t in self.taps if t.module is None), None)
        if input_tap is not None and input_tap.name in ablate:
            x = zero(x, input_tap)
        unknown = sorted(set(ablate) - set(by_name))
        try:
            if unknown:
                raise KeyError(f"unknown reference taps {unknown}")
            with torch.no_grad():
                model(x)
        finally:
            for h in handles:
                h.remove()
        return got["logits"].double().numpy()


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
