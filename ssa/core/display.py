"""Rich display in notebooks: the ``_repr_html_`` of ssa's result types, without the core knowing who draws.

Jupyter shows an object's ``_repr_html_()``. :class:`ssa.core.graph.DependencyGraph`,
:class:`ssa.results.AnalysisResult` and :class:`ssa.analysis.compare.Comparison` answer it with :func:`html`,
which asks the renderer registered for the object's class. The views register theirs from above
(:mod:`ssa.viz.notebook`, imported by ``import ssa``) by the class's dotted name, as IPython's
``for_type_by_name`` does, so registering imports nothing and the core imports no view. Without a renderer
``html`` returns None and Jupyter shows the plain ``repr``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

__all__ = ["register_html", "html"]

_RENDERERS: dict[str, Callable[[Any], str]] = {}


def _dotted(cls: type) -> str:
    return f"{cls.__module__}.{cls.__qualname__}"


def register_html(dotted_name: str, render: Callable[[Any], str]) -> None:
    """Draw instances of the class ``dotted_name`` (``"module.Class"``; subclasses too) with ``render``."""
    _RENDERERS[dotted_name] = render


def html(obj: object) -> str | None:
    """The HTML of ``obj`` by the renderer of its class or nearest base class; None when there is none."""
    for cls in type(obj).__mro__:
        render = _RENDERERS.get(_dotted(cls))
        if render is not None:
            return render(obj)
    return None
