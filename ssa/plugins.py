"""Plugin manager and registries (pluggy).

Built-in backends, rules and selectors are registered through the ``ssa``
entry-point group exactly like third-party plugins. Set the environment
variable ``SSA_DISABLE_PLUGIN_AUTOLOAD=1`` to skip entry points; the
built-ins are then registered directly, third-party plugins are not.
"""

from __future__ import annotations

import importlib
import os
from dataclasses import dataclass
from typing import Any

import pluggy

from . import hookspecs
from .errors import PluginError
from .interfaces import Backend, Rule, Selector

__all__ = ["get_plugin_manager", "registry", "Registry", "PluginInfo", "AUTOLOAD_ENV"]

AUTOLOAD_ENV = "SSA_DISABLE_PLUGIN_AUTOLOAD"
BUILTIN_MODULES = ("ssa_torch.plugin", "ssa_onnx.plugin", "ssa_rules.plugin", "ssa_selectors.plugin")

_pm: pluggy.PluginManager | None = None
_registry: "Registry | None" = None


@dataclass(frozen=True)
class PluginInfo:
    kind: str  # "backend", "rule" or "selector"
    name: str
    cls: type
    distribution: str
    description: str


def get_plugin_manager() -> pluggy.PluginManager:
    """The process-wide plugin manager, built on first use."""
    global _pm
    if _pm is None:
        pm = pluggy.PluginManager("ssa")
        pm.add_hookspecs(hookspecs)
        if os.environ.get(AUTOLOAD_ENV, "").strip() not in ("", "0"):
            for modname in BUILTIN_MODULES:
                pm.register(importlib.import_module(modname), name=modname)
        else:
            pm.load_setuptools_entrypoints("ssa")
            for modname in BUILTIN_MODULES:  # a checkout run without installing
                if pm.get_plugin(modname) is None and not _registered_module(pm, modname):
                    try:
                        pm.register(importlib.import_module(modname), name=modname)
                    except ImportError:
                        pass
        pm.check_pending()
        _pm = pm
    return _pm


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
        for kind, hook in hooks.items():
            for impl in hook.get_hookimpls():
                dist = _distribution_of(pm, impl.plugin)
                impl.function(register=lambda cls, _k=kind, _d=dist: self._add(_k, cls, _d))

    def _add(self, kind: str, cls: type, dist: str) -> None:
        base = self._bases[kind]
        if not (isinstance(cls, type) and issubclass(cls, base)):
            raise PluginError(f"a plugin registered {cls!r} as a {kind}, expected a subclass of {base.__name__}.")
        name = getattr(cls, "name", "")
        if not name or not isinstance(name, str):
            raise PluginError(f"{kind} class {cls.__name__} has no 'name'; set a unique class attribute name.")
        if name in self._items[kind]:
            other = self._items[kind][name]
            raise PluginError(
                f"two plugins register a {kind} named {name!r} ({other.distribution} and {dist}); uninstall one."
            )
        desc = (getattr(cls, "description", "") or (cls.__doc__ or "").strip().split("\n")[0]).strip()
        self._items[kind][name] = PluginInfo(kind, name, cls, dist, desc)

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
