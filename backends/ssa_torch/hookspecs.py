"""Hook specifications the PyTorch backend adds to ssa's (through ``ssa_add_hookspecs``).

They extend the PyTorch backend (and the ONNX backend, which analyses a canonical torch module) and
exist only while it is installed. A plugin implements them like any ssa hook, with ``@ssa.hookimpl``.
"""

from __future__ import annotations

from collections.abc import Callable

import pluggy

hookspec = pluggy.HookspecMarker("ssa")


@hookspec
def ssa_register_closed_forms(register: Callable[..., None]) -> None:
    """Register closed forms of step relevance (method doc, section 6).

    Call ``register(form)`` with a :class:`ssa_torch.closed_form.ClosedForm` subclass or instance: its
    ``kinds`` are the op kinds whose layer nodes it turns into closed-form terms
    (:class:`ssa_torch.closed_form.Term`: which per-image statistics to collect, how omega is
    reconstructed from them); its ``targets`` classify your own module classes or functions as those
    kinds. ``register(form, replace=True)`` replaces the form of a kind that has one. Steps through op
    kinds without a form use exact autograd.
    """


__all__ = ["ssa_register_closed_forms"]
