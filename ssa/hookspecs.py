"""Hook specifications of the ``ssa`` plugin system (pluggy): the reference of every hook.

A plugin is a module (or object) with functions marked ``@ssa.hookimpl``, named in the ``ssa``
entry-point group of its distribution. ssa's own backends, rules and selectors are plugins of exactly
this kind: ssa's distribution names them in the same group (``[project.entry-points.ssa]``), and one
code path loads every plugin (:func:`ssa.plugins.get_plugin_manager`). Each hook receives a
``register`` callback (or the object it extends); the host validates what is registered and reports
duplicate names in one place. A hook may gain arguments later; an implementation may omit any.

Plugin modules are imported by every ``ssa`` command, ``ssa --help`` included: import heavy libraries
(torch, onnx, ...) inside the hooks that need them, not at the top of the plugin module.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Callable

import pluggy

if TYPE_CHECKING:
    from ssa.core.interfaces import Backend, Rule, Selector

hookspec = pluggy.HookspecMarker("ssa")
hookimpl = pluggy.HookimplMarker("ssa")


@hookspec
def ssa_register_backends(register: Callable[[type[Backend]], None]) -> None:
    """Register model backends.

    Call ``register(backend_class)`` once per class; the class derives from
    :class:`ssa.core.interfaces.Backend` and has a unique ``name`` and a one-line
    ``description``. Backends are asked in order of ``priority`` (highest first)
    whether they ``can_load`` a model source.
    """


@hookspec
def ssa_register_rules(register: Callable[[type[Rule]], None]) -> None:
    """Register relevance rules.

    Call ``register(rule_class)`` once per class; the class derives from
    :class:`ssa.core.interfaces.Rule` and has a unique ``name`` and ``description``.
    """


@hookspec
def ssa_register_selectors(register: Callable[[type[Selector]], None]) -> None:
    """Register outlier selectors.

    Call ``register(selector_class)`` once per class; the class derives from
    :class:`ssa.core.interfaces.Selector` and has a unique ``name``, a
    ``description`` and documented keyword parameters.
    """


@hookspec(historic=True)
def ssa_add_hookspecs(pluginmanager: pluggy.PluginManager) -> None:
    """Add hook specifications of a plugin's own: extension points of a backend for other plugins.

    Call ``pluginmanager.add_hookspecs(module_or_class)``. Called once for every plugin, whenever it is
    registered; the plugins are checked against the hooks so added after all of them are loaded. The
    PyTorch backend adds ``ssa_register_closed_forms`` this way (``docs/plugins.md``).
    """
