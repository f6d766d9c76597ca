"""The pass machinery: :class:`CanonPass`, :class:`PassContext` and :func:`canonicalize`.

A pass rewrites the network's own traced copy (never the user's module) into an equivalent
graph that is easier to analyse: the function from the input to every tap and to the logits
is unchanged (tests check this pass by pass on random inputs). A pass never removes, replaces
or changes the value of a node the user named as a tap (``PassContext.protected``).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
import torch.nn as nn
from torch import fx

from ..interpreters import node_values
from ..kinds import NAME_KEY, display_name, node_kind

__all__ = ["CanonPass", "ModuleSwapPass", "PassContext", "CanonReport", "canonicalize", "canonicalize_values",
           "replace_node", "fresh_module_path", "first_tensor_arg"]


class CanonPass:
    """One small, named rewrite of an fx graph (subclass and implement :meth:`run`)."""

    name: ClassVar[str] = ""
    description: ClassVar[str] = ""

    def run(self, gm: fx.GraphModule, ctx: PassContext) -> int:
        """Rewrite ``gm`` in place; return how many rewrites were made (0 when nothing changed)."""
        raise NotImplementedError

    def __call__(self, gm: fx.GraphModule, ctx: PassContext) -> int:
        count = self.run(gm, ctx)
        if count:
            gm.graph.eliminate_dead_code()
            gm.graph.lint()
            gm.delete_all_unused_submodules()
            gm.recompile()
            ctx.invalidate()
        return count

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"


class ModuleSwapPass(CanonPass):
    """A pass that replaces each single-input layer it recognises by other layers: :meth:`swap` gives the
    replacement of a module (or None: left alone), :meth:`wire` calls it on the layer's input. A layer the user
    named as a tap, or called with more than one argument, is left alone."""

    def swap(self, module: nn.Module) -> nn.Module | None:
        raise NotImplementedError

    def wire(self, gm: fx.GraphModule, x: fx.Node, new: nn.Module, old: fx.Node) -> fx.Node:
        """Insert the call of ``new`` on ``x`` (replacing ``old``) and return the node of its output; by default
        each module of an ``nn.Sequential`` in turn, else ``new`` itself."""
        for part in (new if isinstance(new, nn.Sequential) else (new,)):
            path = fresh_module_path(gm, type(part).__name__.lower())
            gm.add_submodule(path, part)
            x = gm.graph.call_module(path, (x,))
        return x

    def run(self, gm: fx.GraphModule, ctx: PassContext) -> int:
        count = 0
        for node in list(gm.graph.nodes):
            if node.op != "call_module" or ctx.protected(node) or len(node.args) != 1 or node.kwargs:
                continue
            x = node.args[0]
            new = self.swap(ctx.modules[str(node.target)])
            if new is None or not isinstance(x, fx.Node):
                continue
            with gm.graph.inserting_before(node):
                out = self.wire(gm, x, new, node)
            replace_node(node, out)
            count += 1
        return count


@dataclass(frozen=True)
class CanonReport:
    """What canonicalisation did: ``(pass name, rewrites)`` in the order they ran (non-zero only)."""

    rewrites: tuple[tuple[str, int], ...] = ()

    def total(self) -> int:
        return sum(n for _, n in self.rewrites)

    def by_pass(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for name, n in self.rewrites:
            out[name] = out.get(name, 0) + n
        return out


@dataclass
class PassContext:
    """What a pass may look at: the graph module, an example input and the protected nodes.

    Parameters
    ----------
    gm : the graph module being rewritten.
    example : an example batch on the model's device (only its first image is used).
    protect : names of nodes that must keep their value and identity (taps named by the user:
        module paths, node names or display names).
    """

    gm: fx.GraphModule
    example: torch.Tensor
    protect: frozenset[str] = frozenset()
    _values: dict[int, dict[str, Any]] = field(default_factory=dict)

    # -- graph facts -------------------------------------------------------------------------------
    @property
    def modules(self) -> dict[str, nn.Module]:
        return dict(self.gm.named_modules())

    def kind(self, node: fx.Node) -> str:
        if node.op == "call_module":  # the module at the node's path now (a pass may have swapped it)
            return node_kind(node, {node.target: self.gm.get_submodule(str(node.target))})
        return node_kind(node, {})

    def protected(self, node: fx.Node) -> bool:
        return bool(self.protect) and (node.name in self.protect or display_name(node) in self.protect
                                       or (node.op == "call_module" and str(node.target) in self.protect))

    def computed(self) -> set[str]:
        """Names of the nodes whose value depends on the input."""
        out: set[str] = set()
        for node in self.gm.graph.nodes:
            if node.op == "placeholder" or any(a.name in out for a in node.all_input_nodes):
                out.add(node.name)
        return out

    def const(self, arg: Any) -> torch.Tensor | float | None:
        """The value of a constant argument (a number, or a get_attr tensor), else None."""
        if isinstance(arg, bool):
            return None
        if isinstance(arg, (int, float)):
            return float(arg)
        if isinstance(arg, fx.Node) and arg.op == "get_attr":
            obj: Any = self.gm
            for part in str(arg.target).split("."):
                obj = getattr(obj, part)
            return obj.detach() if isinstance(obj, torch.Tensor) else None
        return None

    # -- values ----------------------------------------------------------------------------------------
    def invalidate(self) -> None:
        self._values.clear()

    def values(self, batch: int = 1) -> dict[str, Any]:
        """Every node's value on ``batch`` copies of the example's first image (cached until a rewrite)."""
        if batch not in self._values:
            x = self.example[:1]
            if batch > 1:
                x = x.expand(batch, *x.shape[1:]).contiguous()
            self._values[batch] = node_values(self.gm, x)
        return self._values[batch]

    def try_values(self, batch: int) -> dict[str, Any] | None:
        """Like :meth:`values`, or None when the graph fails at that batch size (a batch baked into a shape)."""
        try:
            return self.values(batch)
        except Exception:  # noqa: BLE001 - any failure means: no answer at this batch size
            return None

    def shape(self, node: fx.Node, batch: int = 1) -> tuple[int, ...] | None:
        value = self.values(batch).get(node.name)
        return tuple(value.shape) if isinstance(value, torch.Tensor) else None


def fresh_module_path(gm: fx.GraphModule, stem: str) -> str:
    """An unused submodule path ``ssa_canon.<stem>_<i>``."""
    if not hasattr(gm, "ssa_canon"):
        gm.add_module("ssa_canon", nn.Module())
    holder = gm.get_submodule("ssa_canon")
    i = 0
    while hasattr(holder, f"{stem}_{i}"):
        i += 1
    return f"ssa_canon.{stem}_{i}"


def replace_node(old: fx.Node, new: fx.Node) -> None:
    """Route every use of ``old`` to ``new`` and remove ``old``; ``new`` keeps ``old``'s display name."""
    if NAME_KEY not in new.meta:
        new.meta[NAME_KEY] = display_name(old)
    old.replace_all_uses_with(new)
    old.graph.erase_node(old)


def canonicalize(gm: fx.GraphModule, example: torch.Tensor, passes: Sequence[CanonPass],
                 protect: Iterable[str] = (), *, rounds: int = 4, values: dict[str, Any] | None = None,
                 ) -> CanonReport:
    """Run ``passes`` in order on ``gm`` (in place) until none rewrites anything (at most ``rounds`` times).

    ``values``: every node's value of ``gm`` as it is on the example's first image, when the caller has them
    (what :meth:`PassContext.values` would compute first).
    """
    return canonicalize_values(gm, example, passes, protect, rounds=rounds, values=values)[0]


def canonicalize_values(gm: fx.GraphModule, example: torch.Tensor, passes: Sequence[CanonPass],
                        protect: Iterable[str] = (), *, rounds: int = 4, values: dict[str, Any] | None = None,
                        ) -> tuple[CanonReport, dict[str, Any] | None]:
    """:func:`canonicalize`, and every node's value of the canonical graph on the example's first image where a
    pass computed them after the last rewrite (None where none did)."""
    ctx = PassContext(gm, example, frozenset(protect))
    if values is not None:
        ctx._values[1] = values
    done: list[tuple[str, int]] = []
    for _ in range(rounds):
        changed = 0
        for p in passes:
            n = p(gm, ctx)
            if n:
                done.append((p.name, n))
                changed += n
        if not changed:
            break
    return CanonReport(tuple(done)), ctx._values.get(1)


def first_tensor_arg(node: fx.Node) -> fx.Node | None:
    arg = node.args[0] if node.args else node.kwargs.get("input")
    return arg if isinstance(arg, fx.Node) else None
