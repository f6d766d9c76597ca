"""No plugin knowledge in the core (issue 22, item 3): a selector's ``loosen_hint()`` and a rule's ``stop_hint()``
give the advice of a note when a graph stops early, and ``ssa/core`` names no plugin."""

from __future__ import annotations

import ast
import io
import re
import tokenize
from dataclasses import replace
from importlib.metadata import entry_points
from pathlib import Path

import numpy as np
import pytest

import ssa
from ssa.core.defaults import DEFAULT_RULE, DEFAULT_SELECTOR
from ssa.core.traversal import explain_stop
from ssa.plugins import OWN_DISTRIBUTION, registry

ROOT = Path(__file__).resolve().parents[1]
CORE = ROOT / "ssa" / "core"
#: the one module of the core allowed to name plugins: the defaults and the paper's preset are configuration
#: (names looked up in the registry at run time), and every layer above reads them from there
EXEMPT = {"defaults.py"}


# -- the core names no plugin --------------------------------------------------------------------------------------
def _plugin_names() -> tuple[set[str], set[str]]:
    """(names of ssa's own rules and selectors, top-level packages of the ``ssa`` entry points)."""
    names = {"tukey", "mad", "zscore", "topk", "percentile", "gradient", "gradient_x_activation"}
    for kind in ("rule", "selector"):
        names |= {i.name for i in registry().infos(kind) if i.distribution.split()[0] == OWN_DISTRIBUTION}
    packages = {ep.value.split(".")[0].split(":")[0] for ep in entry_points(group="ssa")}
    return names, packages | {"ssa_example_selector", "ssa_rules", "ssa_selectors"}


def _docstrings(tree: ast.AST) -> set[int]:
    out = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)) and node.body:
            first = node.body[0]
            if isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant):
                out.add(id(first.value))
    return out


def _closed_form_values(tree: ast.AST) -> set[int]:
    """The values of ``ClosedForm``'s members: the names of method doc section 6's closed forms, which backends key
    on (a rule declares the form it equals; the built-in rules happen to be named like them)."""
    out = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ClassDef) and node.name == "ClosedForm":
            out |= {id(s.value) for s in node.body if isinstance(s, ast.Assign) and isinstance(s.value, ast.Constant)}
    return out


def plugin_mentions(source: str, names: set[str], packages: set[str]) -> list[str]:
    """Where ``source`` names a plugin in code: a string (not a docstring: prose may say "percentile") that is or
    contains a plugin's name, a comment that does, or an import or name of a plugin package."""
    words = re.compile(r"(?<![\w-])(" + "|".join(sorted(n for n in names if n != "gradient")) + r")(?![\w-])")
    tree = ast.parse(source)
    skip = _docstrings(tree) | _closed_form_values(tree)
    hits = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in skip:
            # "gradient" is also a plain word of the method ("the gradient of ..."): only a whole string is a name
            if node.value in names or words.search(node.value):
                hits.append(f"line {node.lineno}: {node.value!r}")
        elif isinstance(node, ast.Import):
            hits += [f"line {node.lineno}: import {a.name}" for a in node.names if a.name.split(".")[0] in packages]
        elif isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] in packages:
            hits.append(f"line {node.lineno}: from {node.module} import")
        elif isinstance(node, ast.Name) and node.id in packages:
            hits.append(f"line {node.lineno}: {node.id}")
    for tok in tokenize.generate_tokens(io.StringIO(source).readline):
        if tok.type == tokenize.COMMENT and words.search(tok.string):
            hits.append(f"line {tok.start[0]}: {tok.string}")
    return hits


def test_the_core_names_no_plugin():
    """``ssa/core`` (but its defaults) has no plugin's name in its code, comments or imports: the advice of a stop
    note comes from the plugins (``loosen_hint``, ``stop_hint``)."""
    names, packages = _plugin_names()
    assert {"tukey", "mad", "zscore", "topk", "percentile", "gradient_x_activation"} <= names
    assert {"ssa_selectors", "ssa_rules", "ssa_torch", "ssa_onnx"} <= packages
    files = sorted(f for f in CORE.rglob("*.py") if f.name not in EXEMPT)
    assert CORE / "traversal.py" in files and CORE / "interfaces.py" in files
    hits = [f"{f.relative_to(ROOT)} {h}" for f in files for h in plugin_mentions(f.read_text(), names, packages)]
    assert not hits, hits


def test_the_scan_finds_plugin_knowledge():
    """The scan of the test above finds what the core had (issue 22): a table of selectors, a rule compared by
    name, a comment, a plugin import; the closed forms' names and prose are not plugin knowledge."""
    names, packages = _plugin_names()
    planted = '''"""Uses numpy.percentile, the 25th percentile."""
import ssa_selectors
from ssa_rules.rules import GradientRule
import enum

class ClosedForm(enum.Enum):
    GRADIENT = "gradient"
    GRADIENT_X_ACTIVATION = "gradient_x_activation"

def advice(rule, selector):
    """Say what to try."""
    lower = {"tukey": "--selector-param k=1"}.get(selector.name, "a lower threshold")  # mad: 2.5
    if rule.name == "gradient":
        return f"try --selector {selector.name} or --rule gradient_x_activation"
    return lower
'''
    hits = plugin_mentions(planted, names, packages)
    lines = sorted(int(h.split(":")[0].split()[1]) for h in hits)
    assert lines == [2, 3, 12, 12, 13, 14], hits  # the imports, "tukey" and the comment, "gradient", the f-string
    assert plugin_mentions(planted.split("def advice")[0].replace("import ssa_selectors\nfrom ssa_rules.rules "
                                                                  "import GradientRule\n", ""), names, packages) == []


# -- the built-in selectors' advice loosens them -------------------------------------------------------------------
_BUILTIN_SELECTORS = {"tukey": [{}, {"k": 1000.0}, {"k": 1.0}, {"k": 0.0}], "mad": [{}, {"threshold": 1.0}],
                      "zscore": [{}, {"threshold": 0.5}], "percentile": [{}, {"q": 90.0}, {"q": 60.0}, {"q": 20.0}],
                      "topk": [{}, {"k": 1}]}


def test_every_builtin_selector_has_advice_cases():
    own = {i.name for i in registry().infos("selector") if i.distribution.split()[0] == OWN_DISTRIBUTION}
    assert own == set(_BUILTIN_SELECTORS)


@pytest.mark.parametrize("name, params", [(n, p) for n, ps in _BUILTIN_SELECTORS.items() for p in ps])
def test_a_builtin_selectors_advice_keeps_more(name, params):
    """Following the advice keeps every outlier the selector kept, and more on heavy-tailed rows (when it names a
    parameter); the other selectors it names exist."""
    sel = ssa.make_selector(name, **params)
    hint = sel.loosen_hint()
    assert isinstance(hint, str) and len(hint.splitlines()) == 1 and hint == hint.strip(), hint
    others = re.findall(r"--selector (\w+)", hint)
    assert others and name not in others and set(others) <= {i.name for i in registry().infos("selector")}, hint
    loosened = re.findall(r"--selector-param (\w+)=([^,\s]+)", hint)
    # Tukey's fences at Q3 cannot be narrower, and below the median a percentile keeps every value > 0 anyway:
    # only other selectors are advised
    if (name, params) in (("tukey", {"k": 0.0}), ("percentile", {"q": 20.0})):
        assert loosened == [], hint
        return
    ((param, value),) = loosened
    loose = ssa.make_selector(name, **{**params, param: value})
    assert loose.params[param] != sel.params[param]
    rows = np.random.default_rng(0).standard_t(2, size=(300, 40))
    before, after = sel.select(rows) == 1, loose.select(rows) == 1
    assert not (before & ~after).any() and after.sum() > before.sum(), (before.sum(), after.sum())


def test_the_example_plugins_advice():
    from tests.test_conformance import _load_example

    gap = _load_example().GapSelector
    assert gap(factor=1.0).loosen_hint() == "--selector-param factor=0.5" and gap(factor=0.0).loosen_hint() is None


# -- notes take the plugins' advice, and the defaults' without it ----------------------------------------------------
class _KeepsNothing(ssa.Selector):
    name = "keeps_nothing"
    parameters = {"two_sided": ssa.Param(False, "unused", bool)}

    def select(self, rows):
        return np.zeros(np.shape(rows), np.int8)


class _AdvisingSelector(_KeepsNothing):
    def loosen_hint(self):
        return "  --selector-param width=2  "  # stripped


class _MyRule(ssa.Rule):
    name = "my_rule"
    closed_form = None

    def combine(self, grad, activation):
        return grad


class _AdvisingRule(_MyRule):
    def stop_hint(self):
        return "--rule my_better_rule"


@pytest.fixture(scope="module")
def steps():
    """The digits CNN's network, and the first two steps of class 3's graph (logits -> classifier.2 -> ...)."""
    x, _ = ssa.load_images("digits")
    res = ssa.analyse("digits", x[:40], 3, rule=DEFAULT_RULE, selector=DEFAULT_SELECTOR)
    net = ssa.load_model("digits")
    net.prepare(x[:8])
    assert res.steps[0].upper == "logits" and res.steps[1].upper == res.steps[0].parent
    assert (res.steps[0].kept_sign > 0).any()
    return net, res.steps[0], res.steps[1]


def test_the_selectors_advice_or_the_default_selector(steps):
    """No outliers at a step: the selector's own advice, else a lower threshold or the default selector."""
    net, first, _ = steps
    nothing = replace(first, kept_sign=np.zeros(0, np.int64))
    rule = ssa.make_rule(DEFAULT_RULE)
    (note,) = explain_stop(net.taps, [nothing], {}, rule, _AdvisingSelector())
    assert note.startswith("the graph stops at logits: no outliers at step logits -> ") and \
        note.endswith("with selector keeps_nothing (two_sided=False); try --selector-param width=2"), note
    (note,) = explain_stop(net.taps, [nothing], {}, rule, _KeepsNothing())
    assert note.endswith(f"try a lower selector threshold, or --selector {DEFAULT_SELECTOR}"), note
    default = ssa.make_selector(DEFAULT_SELECTOR)
    (note,) = explain_stop(net.taps, [nothing], {}, rule, default)
    assert note.endswith(f"try {default.loosen_hint()}") and f"--selector {DEFAULT_SELECTOR}" not in note, note
    # end to end: a third-party selector that keeps nothing gets its own advice in the result's notes
    x, _ = ssa.load_images("digits")
    res = ssa.analyse("digits", x[:8], 3, 1, rule=DEFAULT_RULE, selector=_AdvisingSelector())
    assert len(res.notes) == 1 and res.notes[0].endswith("try --selector-param width=2"), res.notes


@pytest.mark.parametrize("rule, advice", [
    ("gradient", "try --rule gradient_x_activation, or other images"),
    (DEFAULT_RULE, "try other images"),
    (_AdvisingRule(), "try --rule my_better_rule, or other images"),
    (_MyRule(), f"try --rule {DEFAULT_RULE}, or other images"),
])
def test_zero_relevance_takes_the_rules_advice(steps, rule, advice):
    """A step whose relevance is zero on every image: the rule's advice, else the default rule (never the rule in
    use), then other images."""
    net, first, _ = steps
    zero = replace(first, mean_array=np.zeros_like(np.asarray(first.mean_array)), kept_sign=np.zeros(0, np.int64))
    (note,) = explain_stop(net.taps, [zero], {}, ssa.make_rule(rule), ssa.make_selector(DEFAULT_SELECTOR))
    assert note.endswith(f"is zero on every image; {advice}"), note


@pytest.mark.parametrize("rule, advice", [
    ("gradient", "try --rule gradient_x_activation"),
    (DEFAULT_RULE, "try other images of the class, or --stop-at above this tap"),
    (_AdvisingRule(), "try --rule my_better_rule"),
    (_MyRule(), "try other images of the class, or --stop-at above this tap"),
])
def test_neurons_that_never_fire_take_the_rules_advice(steps, rule, advice):
    net, first, second = steps
    dead = replace(second, kept_sign=np.zeros(0, np.int64))
    active = {second.upper: np.zeros(net.taps[[t.name for t in net.taps].index(second.upper)].n_neurons)}
    (note,) = explain_stop(net.taps, [first, dead], active, ssa.make_rule(rule), ssa.make_selector(DEFAULT_SELECTOR))
    assert note.startswith(f"the graph stops at {second.upper}: its {len(second.neurons)} kept neuron(s) never fire")
    assert note.endswith(f"every relevance row of step {second.upper} -> {second.parent} is zero; {advice}"), note
