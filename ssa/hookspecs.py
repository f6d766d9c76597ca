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

from collections.abc import Callable
from typing import TYPE_CHECKING

import pluggy

if TYPE_CHECKING:
    from ssa.core.interfaces import Backend, Rule, Selector
    from ssa.core.options import ModelOption
    from ssa.plugins import CommandRegistry

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


@hookspec
def ssa_register_model_options(register: Callable[[ModelOption], None]) -> None:
    """Register command-line model options of a backend (``ssa analyse model.x --my-option 3``).

    Call ``register(ssa.core.options.ModelOption(flag, option, backend=..., help=..., type=...))`` once per
    option. Every sub-command that loads a model then takes ``flag``; its value reaches the backend's
    ``load(source, **options)`` as ``options[option]`` (through :attr:`ssa.core.options.ModelSpec.options`).
    The option is refused, in one line, when the model is loaded by another backend. A flag that a built-in
    option or another plugin already uses is refused (the plugin is skipped with a warning).
    """


@hookspec
def ssa_register_commands(commands: CommandRegistry) -> None:
    """Add sub-commands to the ``ssa`` command line (``ssa my-command ...``).

    ``commands`` is a :class:`ssa.plugins.CommandRegistry`: call ``commands.add(name, run=function,
    help=..., description=...)`` once per command; it returns the command's ``argparse.ArgumentParser``, to
    which you add your arguments (the helpers of :mod:`ssa.cli.commands.common` give the standard model,
    image and method options). ``run(args)`` gets the parsed arguments and returns the exit code. Raise an
    :class:`ssa.errors.SSAError` for bad input: the command line prints it as one line and exits with
    code 2. A name that a built-in command or another plugin already uses is refused (the plugin is
    skipped with a warning, without the commands it added).
    """


@hookspec(historic=True)
def ssa_add_hookspecs(pluginmanager: pluggy.PluginManager) -> None:
    """Add hook specifications of a plugin's own: extension points of a backend for other plugins.

    Call ``pluginmanager.add_hookspecs(module_or_class)``. Called once for every plugin, whenever it is
    registered; the plugins are checked against the hooks so added after all of them are loaded. The
    PyTorch backend adds ``ssa_register_closed_forms`` this way (``docs/plugins.md``).
    """
