"""Plugin manager and registries (pluggy).

Built-in backends, rules and selectors are registered through the ``ssa``
entry-point group exactly like third-party plugins. Set the environment
variable ``SSA_DISABLE_PLUGIN_AUTOLOAD=1`` to skip entry points; the
built-ins are then registered directly, third-party plugins are not.

A broken third-party plugin (it cannot be imported, implements a misspelt hook,
raises in its hook, registers something that is not a plugin class, or takes a
name another plugin has) is skipped with a one-line warning that names it; the
others keep working, ``ssa plugins`` included.
"""

from __future__ import annotations

import importlib
import os
import warnings
from dataclasses import dataclass
from typing import Any

import pluggy

from ssa import hookspecs
from ssa.core.interfaces import Backend, Rule, Selector
from ssa.errors import PluginError, SSAWarning

__all__ = ["get_plugin_manager", "registry", "Registry", "PluginInfo", "SkippedPlugin", "skipped_plugins",
           "AUTOLOAD_ENV"]

AUTOLOAD_ENV = "SSA_DISABLE_PLUGIN_AUTOLOAD"
BUILTIN_MODULES = ("ssa_torch.plugin", "ssa_onnx.plugin", "ssa_rules.plugin", "ssa_selectors.plugin")

_pm: pluggy.PluginManager | None = None
_skipped: list["SkippedPlugin"] = []
_registry: "Registry | None" = None


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
        if os.environ.get(AUTOLOAD_ENV, "").strip() in ("", "0"):
            _load_entry_points(pm)
        for modname in BUILTIN_MODULES:  # autoloading off, or a checkout run without installing
            if pm.get_plugin(modname) is None and not _registered_module(pm, modname):
                try:
                    pm.register(importlib.import_module(modname), name=modname)
                except ImportError:
                    pass
        _drop_unknown_hooks(pm)
        _pm = pm
    return _pm


def _entry_point_dist(ep: Any) -> str:
    dist = getattr(ep, "dist", None)
    if dist is None:
        return "unknown distribution"
    return f"{dist.metadata['name']} {dist.version}"


def _load_entry_points(pm: pluggy.PluginManager) -> None:
    """Load the ``ssa`` entry points one by one, so that one broken plugin does not stop the others."""
    from importlib.metadata import entry_points

    seen: set[str] = set()
    for ep in entry_points(group="ssa"):
        if ep.name in seen:
            continue
        seen.add(ep.name)
        try:
            pm.load_setuptools_entrypoints("ssa", name=ep.name)
        except Exception as exc:  # noqa: BLE001 - any failure of third-party code
            _skip(ep.name, _entry_point_dist(ep), f"importing {ep.value!r} failed ({_first_line(exc)})")


def _drop_unknown_hooks(pm: pluggy.PluginManager) -> None:
    """Unregister plugins that implement hooks ssa does not define (pluggy's ``check_pending``, per plugin)."""
    known = sorted(n for n in dir(hookspecs) if n.startswith("ssa_"))
    bad: dict[int, tuple[Any, str]] = {}
    for name in list(vars(pm.hook)):
        if name.startswith("_"):
            continue
        hook = getattr(pm.hook, name)
        if hook.has_spec():
            continue
        for impl in hook.get_hookimpls():
            if not impl.optionalhook:
                bad.setdefault(id(impl.plugin), (impl.plugin, name))
    for plugin, hook_name in bad.values():
        name = pm.get_name(plugin) or repr(plugin)
        dist = _distribution_of(pm, plugin)
        pm.unregister(plugin)
        _skip(name, dist, f"it implements {hook_name!r}, which is not an ssa hook (known hooks: {', '.join(known)})")


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0]}" if text else type(exc).__name__


def _skip(name: str, dist: str, why: str) -> None:
    _skipped.append(SkippedPlugin(name, dist, why))
    warnings.warn(
        f"plugin {name!r} ({dist}) was skipped: {why}; fix or uninstall it, or set {AUTOLOAD_ENV}=1 to load no "
        "third-party plugin.", SSAWarning, stacklevel=3)


def skipped_plugins() -> list["SkippedPlugin"]:
    """The plugins skipped so far in this process (import failures, unknown hooks, hooks that raised)."""
    get_plugin_manager()
    return list(_skipped)


def _registered_module(pm: pluggy.PluginManager, modname: str) -> bool:
    return any(getattr(p, "__name__", None) == modname for p in pm.get_plugins())


def _distribution_of(pm: pluggy.PluginManager, plugin: Any) -> str:
    for p, dist in pm.list_plugin_distinfo():
        if p is plugin:
            return f"{dist.metadata['name']} {dist.version}"
    return "ssa (built-in)" if getattr(plugin, "__name__", "") in BUILTIN_MODULES else "(not installed)"


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
        # built-ins first, so that a third-party plugin cannot take a built-in name
        for kind, hook in hooks.items():
            impls = sorted(hook.get_hookimpls(), key=lambda i: getattr(i.plugin, "__name__", "") not in BUILTIN_MODULES)
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
    return registry().get("rule", name)(**params)


def make_selector(name: str | Selector, **params: Any) -> Selector:
    """A configured selector from its registered name (or the instance itself)."""
    if isinstance(name, Selector):
        return name
    return registry().get("selector", name)(**params)
