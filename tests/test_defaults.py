"""Defaults from the project's own evidence (issue 9, item 5): gradient_x_activation + mad, and the paper's
exact configuration as --preset paper / preset="paper"."""

from __future__ import annotations

import pytest

import ssa
from ssa.cli import main
from ssa.core.defaults import DEFAULT_RULE, DEFAULT_SELECTOR, PRESETS


def _edges(result):
    return sorted(result.graph.edges(data="frequency"))


def test_the_defaults_are_gradient_x_activation_and_mad(capsys):
    assert (DEFAULT_RULE, DEFAULT_SELECTOR) == ("gradient_x_activation", "mad")
    res = ssa.analyse("digits", "digits", 3)
    assert (res.rule, res.selector, dict(res.selector_params)) == ("gradient_x_activation", "mad",
                                                                  {"threshold": 3.5, "two_sided": False})
    assert _edges(res) == _edges(ssa.analyse("digits", "digits", 3, rule="gradient_x_activation", selector="mad"))
    assert res.notes == ()  # reaches the first tap on the shipped model
    assert main(["analyse", "digits", "--images", "digits", "--target", "3"]) == 0
    first = capsys.readouterr().out.splitlines()[0]
    assert first == ("class 3 of digits: 183 images, b=3, rule=gradient_x_activation, selector=mad "
                     "{'threshold': 3.5, 'two_sided': False}")


def test_preset_paper_is_the_papers_configuration(tmp_path, capsys):
    assert PRESETS["paper"] == {"rule": "gradient", "rule_params": {}, "selector": "tukey",
                                "selector_params": {"k": 1.5, "two_sided": False}}
    paper = ssa.analyse("digits", "digits", 3, preset="paper")
    explicit = ssa.analyse("digits", "digits", 3, rule="gradient", selector="tukey",
                           selector_params={"k": 1.5, "two_sided": False})
    assert (paper.rule, paper.selector, dict(paper.selector_params)) == ("gradient", "tukey",
                                                                        {"k": 1.5, "two_sided": False})
    assert _edges(paper) == _edges(explicit)
    session = ssa.Session("digits", "digits", preset="paper")
    assert _edges(session.analyse(3)) == _edges(explicit)
    many = ssa.analyse_many("digits", "digits", [3], preset="paper")
    assert _edges(many[3]) == _edges(explicit)
    out = tmp_path / "paper.json"
    assert main(["analyse", "digits", "--images", "digits", "--target", "3", "--preset", "paper", "-o", str(out)]) == 0
    assert "rule=gradient, selector=tukey {'k': 1.5, 'two_sided': False}" in capsys.readouterr().out
    g = ssa.read_graph(out)
    assert (g.graph["rule"], g.graph["selector"]) == ("gradient", "tukey")
    assert sorted(g.edges(data="frequency")) == _edges(explicit)


@pytest.mark.parametrize("extra, flag", [(["--rule", "gradient"], "rule (--rule)"),
                                         (["--selector", "mad"], "selector (--selector)"),
                                         (["--selector-param", "k=3"], "selector_params (--selector-param)")])
def test_a_preset_with_its_own_settings_is_refused(capsys, extra, flag):
    assert main(["analyse", "digits", "--images", "digits", "-t", "3", "--preset", "paper", *extra]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and f"preset 'paper' sets the rule, the selector and their parameters; drop {flag}" in err[0]
    with pytest.raises(ssa.InvalidInputError, match="preset must be one of paper, got 'nope'"):
        ssa.analyse("digits", "digits", 3, preset="nope")
    with pytest.raises(ssa.InvalidInputError, match="drop selector"):
        ssa.analyse("digits", "digits", 3, preset="paper", selector="tukey")


def test_collect_fills_the_default_rules_form(tmp_path, capsys):
    store = tmp_path / "s"
    assert main(["collect", "digits", "--images", "digits", "--store", str(store), "-q"]) == 0
    assert [p.name for p in store.glob("*/*/*") if p.is_dir()] == ["gradient_x_activation"]


def test_the_plugin_guide_marks_the_same_defaults():
    """Issue 18, item 15: docs/plugins.md's tables of built-in rules and selectors mark as "(default)" the rule
    and selector of ssa.core.defaults, and the paper's as the paper's."""
    import re
    from pathlib import Path

    text = (Path(__file__).resolve().parents[1] / "docs" / "plugins.md").read_text(encoding="utf-8")
    marked = re.findall(r"^\| `(\w+)` \(default\) \|", text, flags=re.M)
    assert marked == [DEFAULT_RULE, DEFAULT_SELECTOR], marked
    papers = re.findall(r"^\| `(\w+)` \(the paper's", text, flags=re.M)
    assert papers == [PRESETS["paper"]["rule"], PRESETS["paper"]["selector"]], papers
