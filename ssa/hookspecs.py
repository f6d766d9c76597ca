"""Hook specifications of the ``ssa`` plugin system (pluggy).

A plugin is a module or object with functions marked ``@ssa.hookimpl`` and is
registered through the ``ssa`` entry-point group, exactly like the built-ins in
``backends/`` and ``plugins/``. Each hook receives a ``register`` callback; the
host validates what is registered and reports duplicate names in one place.
"""

from __future__ import annotations

import pluggy

hookspec = pluggy.HookspecMarker("ssa")
hookimpl = pluggy.HookimplMarker("ssa")


@hookspec
def ssa_register_backends(register):
    """Register model backends.

    Call ``register(backend_class)`` once per class; the class derives from
    :class:`ssa.core.interfaces.Backend` and has a unique ``name`` and a one-line
    ``description``. Backends are asked in order of ``priority`` (highest first)
    whether they ``can_load`` a model source.
    """


@hookspec
def ssa_register_rules(register):
    """Register relevance rules.

    Call ``register(rule_class)`` once per class; the class derives from
    :class:`ssa.core.interfaces.Rule` and has a unique ``name`` and ``description``.
    """


@hookspec
def ssa_register_selectors(register):
    """Register outlier selectors.

    Call ``register(selector_class)`` once per class; the class derives from
    :class:`ssa.core.interfaces.Selector` and has a unique ``name``, a
    ``description`` and documented keyword parameters.
    """


@hookspec
def ssa_register_closed_forms(register):
    """Register closed forms of step relevance (PyTorch backend; method doc, section 6).

    Call ``register(form)`` with a :class:`ssa_torch.closed_form.ClosedForm` subclass or
    instance: its ``kinds`` are the op kinds whose layer nodes it turns into closed-form terms
    (``ssa_torch.closed_form.Term``: which per-image statistics to collect, how omega is
    reconstructed from them); its ``targets`` classify your own module classes or functions as
    those kinds. ``register(form, replace=True)`` replaces the form of a kind that has one.
    Steps through op kinds without a form use exact autograd.
    """
