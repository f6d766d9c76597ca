"""The open table of closed forms: op kind -> :class:`ClosedForm` (what a step's layer contributes).

Like BackPACK's ``module_exts`` table, the built-ins (conv, dense, skip connections) are entries
of the same table a plugin extends, without editing ssa's files:

* :func:`register_closed_form` (Python), or
* the pluggy hook ``ssa_register_closed_forms(register)`` in a plugin module registered through
  the ``ssa`` entry-point group (``docs/plugins.md``).

A :class:`ClosedForm` names the op kinds it handles (``kinds``), optionally classifies new module
classes or functions as those kinds (``targets``, passed to :func:`ssa_torch.kinds.register_kind`),
and builds the :class:`~ssa_torch.closed_form.terms.Term` objects of a layer node in
:meth:`ClosedForm.terms`. An op kind with no entry stops the closed form (the step falls back to
batched autograd, and ``ssa check`` says which op).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar

from torch import fx

from ssa.errors import PluginError

from ..kinds import register_kind
from .terms import Term

__all__ = ["ClosedForm", "register_closed_form", "unregister_closed_form", "closed_forms", "form_for",
           "register_builtin"]


class ClosedForm:
    """Builds the closed-form terms of a layer node of the kinds it handles.

    Subclass and set ``kinds`` (and ``targets`` to classify your own modules / functions), then
    implement :meth:`terms`. ``ctx`` (:class:`~ssa_torch.closed_form.planner.Planner`) gives the
    graph, its values at batch 1 (``ctx.value(node)``), the taps, and the helpers the built-in forms
    use: ``ctx.resolve(x, op)`` (the branches from a layer input to the parent taps),
    ``ctx.layer_op(node)``. Raise :class:`~ssa_torch.closed_form.linear.NotClosedForm` with a reason
    when a node has no closed form.
    """

    name: ClassVar[str] = ""
    kinds: ClassVar[tuple[str, ...]] = ()
    targets: ClassVar[Mapping[Any, str]] = {}

    def terms(self, node: fx.Node, ctx: Any) -> list[Term]:
        raise NotImplementedError

    def channel_axis(self, node: fx.Node, ctx: Any) -> int:
        """The channel axis of the node's (batched) output: 1 for maps, the last axis for vectors."""
        value = ctx.value(node)
        return 1 if value.dim() >= 3 else value.dim() - 1


_BUILTIN: list[ClosedForm] = []  # registered by the built-in modules (conv, dense, identity)
_DIRECT: list[tuple[ClosedForm, bool]] = []  # registered with register_closed_form
_table: dict[str, ClosedForm] | None = None


def _instance(form: ClosedForm | type[ClosedForm]) -> ClosedForm:
    inst = form() if isinstance(form, type) else form
    if not isinstance(inst, ClosedForm):
        raise PluginError(f"a closed form must be a ClosedForm subclass or instance, got {form!r}.")
    if not inst.kinds:
        raise PluginError(f"closed form {type(inst).__name__} handles no op kinds; set its class attribute 'kinds'.")
    return inst


def _add(table: dict[str, ClosedForm], inst: ClosedForm, replace: bool) -> None:
    for kind in inst.kinds:
        old = table.get(kind)
        if old is not None and not replace and type(old) is not type(inst):
            raise PluginError(f"op kind {kind!r} already has the closed form {type(old).__name__}; "
                              f"register {type(inst).__name__} with replace=True to override it.")
    for target, kind in inst.targets.items():
        register_kind(target, kind)
    for kind in inst.kinds:
        table[kind] = inst


def register_builtin(form: type[ClosedForm]) -> type[ClosedForm]:
    """Class decorator of the built-in forms."""
    _BUILTIN.append(_instance(form))
    return form


def register_closed_form(form: ClosedForm | type[ClosedForm], *, replace: bool = False) -> ClosedForm:
    """Add ``form`` to the table for each of its ``kinds`` (and classify its ``targets`` as those kinds).

    A kind that already has another form is refused (:class:`ssa.errors.PluginError`) unless ``replace``.
    Returns the registered instance. :func:`unregister_closed_form` removes it again.
    """
    global _table
    inst = _instance(form)
    _add(dict(closed_forms()), inst, replace)  # refuse conflicts now
    _DIRECT.append((inst, replace))
    _table = None
    return inst


def unregister_closed_form(form: ClosedForm | type[ClosedForm]) -> None:
    """Remove a form registered with :func:`register_closed_form` (all its instances, for a class)."""
    global _table
    _DIRECT[:] = [(f, r) for f, r in _DIRECT if not (f is form or type(f) is form)]
    _table = None


def closed_forms(refresh: bool = False) -> dict[str, ClosedForm]:
    """The table: op kind -> closed form (built-ins, :func:`register_closed_form`, plugin hooks).

    Built on first use; ``refresh`` rebuilds it (after plugins were registered or unregistered).
    """
    global _table
    if _table is None or refresh:
        from ssa.plugins import get_plugin_manager

        table: dict[str, ClosedForm] = {}
        for inst in _BUILTIN:
            _add(table, inst, True)
        for inst, replace in _DIRECT:
            _add(table, inst, replace)
        hook = getattr(get_plugin_manager().hook, "ssa_register_closed_forms", None)
        if hook is not None:
            hook(register=lambda form, replace=False: _add(table, _instance(form), replace))
        _table = table
    return dict(_table)


def form_for(kind: str) -> ClosedForm | None:
    """The closed form of an op kind, or None."""
    if _table is None:
        closed_forms()
    return _table.get(kind)  # type: ignore[union-attr]
