"""Documented, validated keyword parameters of plugins (rules, selectors).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

from ssa.errors import InvalidInputError

__all__ = ['Param', 'Configurable']


@dataclass(frozen=True)
class Param:
    """A documented keyword parameter of a rule or selector.

    Parameters
    ----------
    default : the value used when the parameter is not given.
    doc : one line shown by ``ssa plugins``.
    kind : the Python type values are converted to (``float``, ``int``, ``bool``, ``str``).
    check : optional predicate; a value for which it returns False is refused.
    expect : what ``check`` expects, in words, for the error message.
    """

    default: Any
    doc: str
    kind: type = float
    check: Callable[[Any], bool] | None = None
    expect: str = ""


def _convert(kind: type, name: str, owner: str, value: Any) -> Any:
    if isinstance(value, kind) and not (kind is int and isinstance(value, bool)):
        return _finite(value, name, owner)
    try:
        if kind is bool:
            if isinstance(value, str):
                low = value.strip().lower()
                if low in ("1", "true", "yes", "on"):
                    return True
                if low in ("0", "false", "no", "off"):
                    return False
                raise ValueError(value)
            return bool(value)
        if kind is int and isinstance(value, float) and not value.is_integer():
            raise ValueError(value)
        converted = kind(value)
    except (TypeError, ValueError, OverflowError):
        raise InvalidInputError(
            f"{owner} parameter {name!r} must be {kind.__name__}, got {value!r}; "
            f"pass e.g. {name}=<{kind.__name__}>."
        ) from None
    return _finite(converted, name, owner)


def _finite(value: Any, name: str, owner: str) -> Any:
    """``value``, refused when it is a float that is not finite (``threshold=inf`` cut nothing: an empty graph after
    the whole computation; ``nan`` compares false with everything)."""
    if isinstance(value, float) and not math.isfinite(value):
        raise InvalidInputError(f"{owner} parameter {name!r} must be a finite number, got {value!r}.")
    return value


class Configurable:
    """Mixin: named plugin class with validated keyword parameters.

    Construction does no work beyond storing and validating the parameters.
    """

    name: ClassVar[str] = ""
    description: ClassVar[str] = ""
    parameters: ClassVar[Mapping[str, Param]] = {}

    def __init__(self, **params: Any) -> None:
        owner = f"{self.kind_label} {self.name!r}"
        unknown = sorted(set(params) - set(self.parameters))
        if unknown:
            known = ", ".join(sorted(self.parameters)) or "none"
            raise InvalidInputError(
                f"{owner} has no parameter {unknown[0]!r}; known parameters: {known}."
            )
        values: dict[str, Any] = {}
        for key, spec in self.parameters.items():
            value = params.get(key, spec.default)
            value = _convert(spec.kind, key, owner, value)
            if spec.check is not None and not spec.check(value):
                raise InvalidInputError(
                    f"{owner} parameter {key!r} must be {spec.expect or 'valid'}, got {value!r}."
                )
            values[key] = value
        self.params: dict[str, Any] = values

    kind_label: ClassVar[str] = "plugin"

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.params.items())
        return f"{type(self).__name__}({args})"
