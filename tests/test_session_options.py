"""Session.from_options: a session from a ModelSpec and RunOptions gives the graphs of the keyword form."""

from __future__ import annotations

import pytest

import ssa
from ssa.io.graphs import graph_to_dict


def _same(a: ssa.AnalysisResult, b: ssa.AnalysisResult) -> None:
    da, db = graph_to_dict(a.graph), graph_to_dict(b.graph)
    assert da["nodes"] == db["nodes"] and da["edges"] == db["edges"]
    assert (a.branching, a.rule, a.selector, dict(a.selector_params)) == \
        (b.branching, b.rule, b.selector, dict(b.selector_params))


def test_options_set_the_rule_selector_branching_and_stop():
    spec = ssa.ModelSpec("digits")
    options = ssa.RunOptions(rule="gradient", selector="percentile", selector_params={"q": 90.0}, branching=2,
                             stop_at="features.3", batch_size=16)
    session = ssa.Session.from_options(spec, "digits", options)
    got = session.analyse(3)
    want = ssa.Session("digits", "digits", rule="gradient", batch_size=16).analyse(
        3, 2, selector="percentile", selector_params={"q": 90.0}, stop_at="features.3")
    _same(got, want)
    assert got.branching == 2 and got.selector == "percentile"
    assert {d["tap"] for _, d in got.graph.nodes(data=True)} <= {"logits", "classifier.2", "features.6", "features.3"}
    # an explicit argument still wins over the options
    _same(session.analyse(3, 1), ssa.Session("digits", "digits", rule="gradient").analyse(
        3, 1, selector="percentile", selector_params={"q": 90.0}, stop_at="features.3"))


def test_the_paper_preset_through_options():
    got = ssa.Session.from_options(ssa.ModelSpec("digits"), "digits", ssa.RunOptions(preset="paper")).analyse(5)
    want = ssa.Session("digits", "digits", preset="paper").analyse(5)
    _same(got, want)


def test_default_options_are_the_keyword_defaults():
    _same(ssa.Session.from_options(ssa.ModelSpec("digits"), "digits").analyse(1),
          ssa.Session("digits", "digits").analyse(1))


def test_wrong_types_are_refused():
    with pytest.raises(ssa.InvalidInputError, match="model must be an ssa.ModelSpec"):
        ssa.Session.from_options("digits", "digits")  # type: ignore[arg-type]
    with pytest.raises(ssa.InvalidInputError, match="options must be an ssa.RunOptions"):
        ssa.Session.from_options(ssa.ModelSpec("digits"), "digits", {"branching": 2})  # type: ignore[arg-type]
