"""The default rule and selector, and named presets (``--preset paper``).

**Defaults: rule ``gradient_x_activation``, selector ``mad`` (threshold 3.5).** Chosen from
``ssa evaluate`` (``scripts/evaluate_defaults.py``; numbers in the README, "Which strategy?"):

* on the embedded digits CNN, the only trained model, all ten classes: ablating the
  ``gradient_x_activation`` + ``mad`` graphs (14 of 144 neurons on average) takes 99 % of a class's
  images away from it, against 10 % for random neurons, and lowers the class logit by 16.3 against
  6.1; no other combination has a larger margin over random ablation; bootstrap Jaccard 0.89;
* on the four small test models (random weights, noise images) its graphs beat random ablation on
  average on every model and stop early in only 1 of 5 classes of one model, while the ``gradient``
  rule's graphs with the paper's ``tukey`` stop early on all ten digits classes (after the first
  dense step), on half of ``plain``'s and on 60 % of ``channels_last``'s classes. On two test models
  ``percentile`` and ``tukey`` beat random by more than ``mad``; the selector rests on the digits.

**``preset="paper"``**: the paper's exact configuration: rule ``gradient``, Tukey's fences with
k = 1.5, positive outliers only (method doc, section 3).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from ssa.errors import InvalidInputError

__all__ = ["DEFAULT_RULE", "DEFAULT_SELECTOR", "PRESETS", "resolve_method", "other_rule_advice"]

DEFAULT_RULE = "gradient_x_activation"
DEFAULT_SELECTOR = "mad"

#: name -> the rule, rule parameters, selector and selector parameters it stands for
PRESETS: dict[str, dict[str, Any]] = {
    "paper": {"rule": "gradient", "rule_params": {}, "selector": "tukey",
              "selector_params": {"k": 1.5, "two_sided": False}},
}


def resolve_method(preset: str | None, rule: Any = None, rule_params: Mapping[str, Any] | None = None,
                   selector: Any = None, selector_params: Mapping[str, Any] | None = None,
                   ) -> tuple[Any, dict[str, Any], Any, dict[str, Any]]:
    """``(rule, rule_params, selector, selector_params)``: the preset's, else the values given, else the defaults.

    A preset fixes all four, so giving any of them beside it is refused (it would be ignored otherwise).
    """
    if preset is None:
        return (DEFAULT_RULE if rule is None else rule, dict(rule_params or {}),
                DEFAULT_SELECTOR if selector is None else selector, dict(selector_params or {}))
    if preset not in PRESETS:
        raise InvalidInputError(f"preset must be one of {', '.join(sorted(PRESETS))}, got {preset!r}.")
    given = [flag for flag, value in (("rule", rule), ("rule_params", rule_params), ("selector", selector),
                                      ("selector_params", selector_params)) if value]
    if given:
        flag = "--" + given[0].replace("_params", "-param").replace("_", "-")
        raise InvalidInputError(f"preset {preset!r} sets the rule, the selector and their parameters; drop "
                                f"{given[0]} ({flag}), or drop the preset.")
    p = PRESETS[preset]
    return p["rule"], dict(p["rule_params"]), p["selector"], dict(p["selector_params"])


def other_rule_advice(in_use: str | None) -> str:
    """``"--rule gradient_x_activation, or "`` to start a list of things to try, or nothing when that rule is the
    one in use (a note never advises the rule that made the graph)."""
    return "" if in_use == DEFAULT_RULE else f"--rule {DEFAULT_RULE}, or "
