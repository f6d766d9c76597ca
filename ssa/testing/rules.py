"""Rule checks for plugin authors: a rule that declares a closed form must give the same graphs under
both engines (method doc, section 6).

>>> from ssa.testing import assert_rule_engines_agree
>>> assert_rule_engines_agree(MyRule)      # raises AssertionError naming every model that disagrees
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

__all__ = ["check_rule_engines", "assert_rule_engines_agree"]


def _edges(result: Any) -> dict[tuple[str, str], tuple[int, int]]:
    g = result.graph
    return {(u, v): (int(d["frequency"]), int(d["sign"])) for u, v, d in g.edges(data=True)}


def check_rule_engines(rule: Any, *, cases: Sequence[Any] | None = None, n_images: int = 12, branching: int = 3,
                       selector: str = "tukey", **params: Any) -> list[str]:
    """Analyse each small model (``ssa.testing.models``) with the closed form and with autograd; list disagreements.

    Parameters
    ----------
    rule : a :class:`ssa.Rule` subclass or instance (with ``params`` for a class).
    cases : the :class:`~ssa.testing.models.ModelCase` objects to use (default: all four small models).

    Returns
    -------
    One line per model whose graphs differ (edges, frequencies or signs), or that fails; empty when they agree.
    A rule without a closed form gives an empty list (it always uses autograd).
    """
    import ssa
    from ssa.testing.models import ALL_CASES

    inst = rule(**params) if isinstance(rule, type) else rule
    if inst.closed_form is None:
        return []
    from ssa.core.checks import check_closed_form

    failures = []
    try:
        check_closed_form(inst)
    except Exception as exc:  # noqa: BLE001 - report, then show the graphs' differences too
        failures.append(f"declaration: {str(exc).splitlines()[0]}")
    # what --engine auto computes for this rule: the declared closed form (combine() is not called there)
    closed = ssa.make_rule(inst.closed_form.value)
    for case in (cases if cases is not None else ALL_CASES):
        model, images = case.build(), case.images(n_images)
        try:
            ssa.load_model(model).prepare(images)  # a model the backend cannot prepare fails here, not in analyse
            target = 0
            fast = ssa.analyse(model, images, target, branching, rule=closed, selector=selector, engine="auto")
            slow = ssa.analyse(model, images, target, branching, rule=inst, selector=selector, engine="autograd")
        except Exception as exc:  # noqa: BLE001 - report, do not stop
            failures.append(f"{case.name}: {type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}")
            continue
        a, b = _edges(fast), _edges(slow)
        if a != b:
            only_fast = sorted(set(a) - set(b))[:3]
            only_slow = sorted(set(b) - set(a))[:3]
            differ = sorted(k for k in set(a) & set(b) if a[k] != b[k])[:3]
            failures.append(f"{case.name}: the closed form and autograd give different graphs (only closed form: "
                            f"{only_fast}; only autograd: {only_slow}; different frequency or sign: {differ})")
    return failures


def assert_rule_engines_agree(rule: Any, **kwargs: Any) -> None:
    """pytest-friendly :func:`check_rule_engines`: raise ``AssertionError`` listing every disagreement."""
    failures = check_rule_engines(rule, **kwargs)
    if failures:
        name = rule.__name__ if isinstance(rule, type) else type(rule).__name__
        raise AssertionError(f"{name}: the engines disagree ({len(failures)} model(s)):\n  " + "\n  ".join(failures))
