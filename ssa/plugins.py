"""Plugin manager and registries (pluggy).

Every plugin, ssa's own backends, rules and selectors included, is a module named in the ``ssa``
entry-point group of an installed distribution (ssa's own are in its ``pyproject.toml``), and one
code path loads them all: there is no list of built-in module names and no second path for a
checkout. ssa's own plugins are those of its distribution, ``stepwise-sa`` (:data:`OWN_DISTRIBUTION`; the
import name is ``ssa``, but ``ssa`` on PyPI is another project); they are loaded first, so that a
third-party plugin cannot take their names. Set the environment variable
``SSA_DISABLE_PLUGIN_AUTOLOAD=1`` to load only ssa's own (pytest's ``PYTEST_DISABLE_PLUGIN_AUTOLOAD``).

A broken third-party plugin (it cannot be imported, implements a misspelt hook, raises in its hook,
registers something that is not a plugin class, or takes a name another plugin has) is skipped with a
one-line warning that names it; the others keep working, ``ssa plugins`` included.
"""

from __future__ import annotations

import argparse
import importlib
import os
import re
import sys
import warnings
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from importlib.metadata import EntryPoint, entry_points
from typing import Any

import pluggy

from ssa import hookspecs
from ssa.core.interfaces import Backend, Rule, Selector
from ssa.core.options import ModelOption
from ssa.errors import PluginError, SSAWarning

__all__ = ["lazy_exports",
           "get_plugin_manager", "registry", "Registry", "PluginInfo", "SkippedPlugin", "skipped_plugins",
           "model_options", "add_plugin_commands", "CommandRegistry", "AUTOLOAD_ENV", "OWN_DISTRIBUTION"]

AUTOLOAD_ENV = "SSA_DISABLE_PLUGIN_AUTOLOAD"
#: the distribution whose ``ssa`` entry points are ssa's own plugins (loaded even with autoloading off), as
#: ``pyproject.toml`` names it (normalised: lower case, runs of ``-_.`` as one ``-``)
OWN_DISTRIBUTION = "stepwise-sa"

_pm: pluggy.PluginManager | None = None
_skipped: list[SkippedPlugin] = []
_registry: Registry | None = None
_model_options: tuple[ModelOption, ...] | None = None
_distributions: dict[str, str] = {}  # plugin name (its entry point's) -> "name version" of its distribution
_own: set[str] = set()  # names of the plugins of ssa's own distribution


@dataclass(frozen=True)
class SkippedPlugin:
    """A plugin that was not used: its name, distribution and why."""

    name: str
    distribution: str
    reason: str


@dataclass(frozen=True)
class PluginInfo:
    kind: str  # "backend", "rule" or "selector"
    name: str
    cls: type
    distribution: str
    description: str


def get_plugin_manager() -> pluggy.PluginManager:
    """The process-wide plugin manager, built on first use.

    A third-party plugin that cannot be imported or that implements a hook ssa does not know
    (a misspelt name) is skipped with a one-line :class:`ssa.errors.SSAWarning` naming it, and
    the other plugins keep working (see :func:`skipped_plugins`).
    """
    global _pm
    if _pm is None:
        pm = pluggy.PluginManager("ssa")
        pm.add_hookspecs(hookspecs)
        pm.hook.ssa_add_hookspecs.call_historic(kwargs={"pluginmanager": pm})  # every plugin, as it registers
        autoload = os.environ.get(AUTOLOAD_ENV, "").strip() in ("", "0")
        _load_entry_points(pm, entry_points(group="ssa"), third_party=autoload)
        _drop_unknown_hooks(pm)
        _pm = pm
    return _pm


def _normalise(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _entry_point_dist(ep: EntryPoint) -> tuple[str, bool]:
    """``("name version", is ssa's own)`` of the distribution that declares ``ep``."""
    dist = ep.dist
    if dist is None:
        return "unknown distribution", False
    name = dist.metadata["Name"] or "unknown distribution"
    return f"{name} {dist.version}", _normalise(name) == OWN_DISTRIBUTION


def _load_entry_points(pm: pluggy.PluginManager, eps: Iterable[EntryPoint], third_party: bool) -> None:
    """Register the plugin of each ``ssa`` entry point (ssa's own first), one by one, so that one broken
    plugin does not stop the others; ``third_party=False`` registers ssa's own only."""
    found = [(ep, *_entry_point_dist(ep)) for ep in eps]
    if not any(own for _, _, own in found):
        raise PluginError(
            f"ssa's own backends, rules and selectors are plugins named in its entry points, and this Python "
            f"({sys.executable}) has none: ssa is not installed in it; install it (`pip install -e .` in a checkout, "
            f"as `make install` does, or `pip install {OWN_DISTRIBUTION}`) instead of running it from the source "
            "folder.")
    found.sort(key=lambda item: not item[2])  # stable: ssa's own first, the others in discovery order
    for ep, dist, own in found:
        if not (own or third_party):
            continue
        if ep.name in _distributions or pm.get_plugin(ep.name) is not None or pm.is_blocked(ep.name):
            if _distributions.get(ep.name, dist) != dist:
                _skip(ep.name, dist, f"its entry-point name {ep.name!r} is taken by {_distributions[ep.name]}; "
                      "rename the entry point")
            continue
        try:
            plugin = ep.load()
        except Exception as exc:  # noqa: BLE001 - any failure of a plugin's code
            _skip(ep.name, dist, f"importing {ep.value!r} failed ({_first_line(exc)})")
            continue
        try:
            pm.register(plugin, name=ep.name)
        except pluggy.PluginValidationError as exc:  # a hook whose arguments are not the hook's
            _skip(ep.name, dist, _mismatch(exc))
            continue
        _distributions[ep.name] = dist
        if own:
            _own.add(ep.name)


def _drop_unknown_hooks(pm: pluggy.PluginManager) -> None:
    """Unregister plugins that implement hooks ssa does not define (pluggy's ``check_pending``, per plugin)."""
    known = sorted(n for n, h in vars(pm.hook).items() if not n.startswith("_") and h.has_spec())
    bad: dict[int, tuple[Any, str]] = {}
    for name, hook in list(vars(pm.hook).items()):
        if name.startswith("_") or hook.has_spec():
            continue
        for impl in hook.get_hookimpls():
            if not impl.optionalhook:
                bad.setdefault(id(impl.plugin), (impl.plugin, name))
    for plugin, hook_name in bad.values():
        name = pm.get_name(plugin) or repr(plugin)
        dist = _distribution_of(pm, plugin)
        pm.unregister(plugin)
        _skip(name, dist, f"it implements {hook_name!r}, which is not an ssa hook (known hooks: {', '.join(known)})")


def _mismatch(exc: pluggy.PluginValidationError) -> str:
    """Why a plugin's hook does not fit its specification, in one line (pluggy's message has three)."""
    why = "; ".join(line.strip() for line in str(exc).splitlines()[1:]) or _first_line(exc)
    old_commands = "ssa_register_commands(" in why and "subparsers" in why
    return (f"its hook does not match ssa's ({why}); "
            + ("ssa_register_commands now receives `commands`, an ssa.plugins.CommandRegistry (docs/plugins.md), "
               "not argparse's sub-parsers" if old_commands else "ssa/hookspecs.py gives each hook's arguments"))


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0]}" if text else type(exc).__name__


def _skip(name: str, dist: str, why: str) -> None:
    skipped = SkippedPlugin(name, dist, why)
    if skipped not in _skipped:  # the command hooks run again for every parser a process builds
        _skipped.append(skipped)
    warnings.warn(
        f"plugin {name!r} ({dist}) was skipped: {why}; fix or uninstall it, or set {AUTOLOAD_ENV}=1 to load no "
        "third-party plugin.", SSAWarning, stacklevel=3)


def skipped_plugins() -> list[SkippedPlugin]:
    """The plugins skipped so far in this process (import failures, unknown hooks, hooks that raised)."""
    get_plugin_manager()
    return list(_skipped)


def _distribution_of(pm: pluggy.PluginManager, plugin: Any) -> str:
    """``"name version"`` of the distribution that installed ``plugin``; ``(not installed)`` for objects
    registered by code (tests, notebooks)."""
    return _distributions.get(pm.get_name(plugin) or "", "(not installed)")


def _is_own(pm: pluggy.PluginManager, plugin: Any) -> bool:
    return (pm.get_name(plugin) or "") in _own


def _each_impl(pm: pluggy.PluginManager, hook: Any, call: Callable[[Any], None]) -> None:
    """``call(impl)`` for every implementation of ``hook``, ssa's own first; one that raises is skipped with a
    warning that names its plugin, and the others go on."""
    for impl in sorted(hook.get_hookimpls(), key=lambda i: not _is_own(pm, i.plugin)):
        try:
            call(impl)
        except Exception as exc:  # noqa: BLE001 - a plugin's code: name it and go on
            what = exc if isinstance(exc, PluginError) else f"{hook.name} raised {_first_line(exc)}"
            _skip(impl.plugin_name, _distribution_of(pm, impl.plugin), str(what).rstrip("."))


def model_options(refresh: bool = False) -> tuple[ModelOption, ...]:
    """The command-line model options the backends registered (``ssa_register_model_options``), checked."""
    global _model_options
    if _model_options is None or refresh:
        pm = get_plugin_manager()
        out: dict[str, ModelOption] = {}

        def call(impl: Any) -> None:
            got: list[Any] = []
            impl.function(register=got.append)
            for opt in got:
                if not isinstance(opt, ModelOption):
                    raise PluginError(f"it registered {opt!r} as a model option, expected an "
                                      "ssa.core.options.ModelOption")
                other = out.get(opt.flag)
                if other is not None:
                    raise PluginError(f"it registers the model option {opt.flag}, which the {other.backend} backend "
                                      "already registers")
            out.update((opt.flag, opt) for opt in got)

        _each_impl(pm, pm.hook.ssa_register_model_options, call)
        _model_options = tuple(out.values())
    return _model_options


class CommandRegistry:
    """The sub-commands of ``ssa``, as plugins add theirs: what the ``ssa_register_commands`` hook receives.

    ::

        @ssa.hookimpl
        def ssa_register_commands(commands):
            p = commands.add("hello", run=hello, help="say hello to a model's logits")
            p.add_argument("--times", type=int, default=1)

    :meth:`add` returns the command's :class:`argparse.ArgumentParser` (its errors are one line, exit code 2);
    ``run(args)`` is called with the parsed :class:`argparse.Namespace` and returns the exit code. A name or
    alias that a built-in command or another plugin already has is refused (:class:`ssa.errors.PluginError`:
    the plugin is skipped with a warning), and so are the commands of a plugin whose hook fails.
    """

    _NAME = re.compile(r"[a-z][a-z0-9-]*\Z")

    def __init__(self, subparsers: Any) -> None:
        """``subparsers``: the command line's ``argparse`` sub-parsers (built by :func:`ssa.cli.build_parser`)."""
        self._sub = subparsers
        self._owners: dict[str, str] = dict.fromkeys(subparsers.choices, "ssa")  # command name -> who added it
        self._adding = "ssa"

    @property
    def names(self) -> tuple[str, ...]:
        """The commands and aliases taken so far: ssa's own, then those of the plugins called before."""
        return tuple(self._owners)

    def add(self, name: str, run: Callable[[argparse.Namespace], int], *, help: str,
            description: str | None = None, aliases: Iterable[str] = ()) -> argparse.ArgumentParser:
        """Add ``ssa <name>`` (also reached by ``aliases``), shown with the one-line ``help`` in ``ssa --help`` and
        ``description`` (default: ``help``) in ``ssa <name> --help``; returns its parser for the arguments
        (:mod:`ssa.cli.commands.common` has the standard model, image and method ones)."""
        names = [name, *aliases]
        for n in names:
            if not isinstance(n, str) or not self._NAME.match(n):
                raise PluginError(f"it registers a command named {n!r}; a command name is lower-case letters, digits "
                                  "and '-', starting with a letter")
            owner = self._owners.get(n)
            if owner is not None:
                raise PluginError(f"it registers the command {n!r}, which "
                                  + ("is one of ssa's own" if owner == "ssa" else f"plugin {owner!r} already has"))
        if len(set(names)) != len(names):
            raise PluginError(f"it registers the command {name!r} with a repeated alias ({', '.join(names)})")
        if not callable(run):
            raise PluginError(f"it registers the command {name!r} with run={run!r}, which is not callable")
        if not isinstance(help, str) or len(help.strip().splitlines()) != 1:
            raise PluginError(f"it registers the command {name!r} with help={help!r}; give one line of text")
        parser: argparse.ArgumentParser = self._sub.add_parser(
            name, help=help.strip(), description=description or help.strip(), aliases=list(aliases))
        parser.set_defaults(run=run)
        self._owners.update(dict.fromkeys(names, self._adding))
        return parser

    def _add_from(self, plugin: str, hook: Callable[..., Any]) -> None:
        """Call ``hook(commands=self)`` for ``plugin``; when it fails, take its commands away again and re-raise."""
        before, self._adding = set(self._owners), plugin
        try:
            hook(commands=self)
        except Exception:
            added = set(self._owners) - before
            for n in added:  # the parsers, and their lines in ``ssa --help``
                del self._owners[n]
                self._sub.choices.pop(n, None)
            self._sub._choices_actions[:] = [a for a in self._sub._choices_actions if a.dest not in added]
            raise
        finally:
            self._adding = "ssa"


def add_plugin_commands(commands: CommandRegistry) -> None:
    """Let every plugin add its sub-commands (``ssa_register_commands``); a plugin whose hook fails (a name
    already taken included) is skipped with a warning, without the commands it added before failing."""
    pm = get_plugin_manager()
    _each_impl(pm, pm.hook.ssa_register_commands, lambda impl: commands._add_from(impl.plugin_name, impl.function))


class Registry:
    """Everything the plugins registered, by kind and name."""

    _bases = {"backend": Backend, "rule": Rule, "selector": Selector}

    def __init__(self, pm: pluggy.PluginManager) -> None:
        self._items: dict[str, dict[str, PluginInfo]] = {k: {} for k in self._bases}
        hooks = {
            "backend": pm.hook.ssa_register_backends,
            "rule": pm.hook.ssa_register_rules,
            "selector": pm.hook.ssa_register_selectors,
        }
        self.skipped: list[SkippedPlugin] = []
        # ssa's own first, so that a third-party plugin cannot take one of their names
        for kind, hook in hooks.items():
            impls = sorted(hook.get_hookimpls(), key=lambda i: not _is_own(pm, i.plugin))
            for impl in impls:
                dist = _distribution_of(pm, impl.plugin)
                got: list[type] = []
                try:
                    impl.function(register=got.append)
                    infos = [self._check(kind, cls, dist) for cls in got]
                except Exception as exc:  # noqa: BLE001 - third-party code: name it and go on
                    what = exc if isinstance(exc, PluginError) else f"{hook.name} raised {_first_line(exc)}"
                    self._skip(impl.plugin_name, dist, str(what).rstrip("."))
                    continue
                for info in infos:
                    other = self._items[kind].get(info.name)
                    if other is not None:
                        self._skip(impl.plugin_name, dist, f"it registers a {kind} named {info.name!r}, which "
                                   f"{other.distribution} already registers")
                        continue
                    self._items[kind][info.name] = info
        self.skipped = [*_skipped, *self.skipped]

    def _skip(self, name: str, dist: str, why: str) -> None:
        self.skipped.append(SkippedPlugin(name, dist, why))
        warnings.warn(
            f"plugin {name!r} ({dist}) was skipped: {why}; fix or uninstall it, or set {AUTOLOAD_ENV}=1 to load no "
            "third-party plugin.", SSAWarning, stacklevel=4)

    def _check(self, kind: str, cls: type, dist: str) -> PluginInfo:
        base = self._bases[kind]
        if not (isinstance(cls, type) and issubclass(cls, base)):
            raise PluginError(f"it registered {cls!r} as a {kind}, expected a subclass of ssa.{base.__name__}")
        name = getattr(cls, "name", "")
        if not name or not isinstance(name, str):
            raise PluginError(f"its {kind} class {cls.__name__} has no 'name' (set a unique class attribute name)")
        desc = (getattr(cls, "description", "") or (cls.__doc__ or "").strip().split("\n")[0]).strip()
        return PluginInfo(kind, name, cls, dist, desc)

    def names(self, kind: str) -> list[str]:
        return sorted(self._items[kind])

    def infos(self, kind: str) -> list[PluginInfo]:
        return [self._items[kind][n] for n in self.names(kind)]

    def get(self, kind: str, name: str) -> type:
        try:
            return self._items[kind][name].cls
        except KeyError:
            known = ", ".join(self.names(kind)) or "none installed"
            raise PluginError(f"unknown {kind} {name!r}; choose one of: {known} (see `ssa plugins`).") from None

    def backends(self) -> list[type[Backend]]:
        return sorted((i.cls for i in self._items["backend"].values()), key=lambda c: -c.priority)

    def backend_for(self, source: Any, name: str | None = None) -> type[Backend]:
        """The backend class named ``name``, else the first (highest ``priority``) that ``can_load(source)``."""
        if name is not None:
            return self.get("backend", name)
        for cls in self.backends():
            if cls.can_load(source):
                return cls
        raise PluginError(f"no installed backend can load {source!r}; installed backends: "
                          f"{', '.join(self.names('backend'))}.")


def registry(refresh: bool = False) -> Registry:
    """The registry of installed plugins (built once; ``refresh`` rebuilds it)."""
    global _registry
    if _registry is None or refresh:
        _registry = Registry(get_plugin_manager())
    return _registry


def make_rule(name: str | Rule, **params: Any) -> Rule:
    """A configured rule from its registered name (or the instance itself)."""
    if isinstance(name, Rule):
        return name
    rule: Rule = registry().get("rule", name)(**params)
    return rule


def make_selector(name: str | Selector, **params: Any) -> Selector:
    """A configured selector from its registered name (or the instance itself)."""
    if isinstance(name, Selector):
        return name
    selector: Selector = registry().get("selector", name)(**params)
    return selector


def lazy_exports(package: str, exports: Mapping[str, str], namespace: dict[str, Any]
                 ) -> tuple[Callable[[str], Any], Callable[[], list[str]]]:
    """A plugin package's PEP 562 ``__getattr__`` and ``__dir__``: each public name in ``exports`` (name ->
    submodule) is imported from its submodule on first use and kept in ``namespace`` (the package's
    ``globals()``), so that importing the package's plugin module (every ``ssa`` command does) imports no
    heavy library. Use: ``__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS, globals())``."""

    def __getattr__(name: str) -> Any:
        module = exports.get(name)
        if module is None:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        value = getattr(importlib.import_module(f".{module}", package), name)
        namespace[name] = value
        return value

    def __dir__() -> list[str]:
        return sorted({*namespace, *exports})

    return __getattr__, __dir__
