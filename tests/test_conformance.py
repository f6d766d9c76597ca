"""Conformance checks of selectors (ssa.conformance): every built-in and the example plugin pass,
and each check catches the mistake it is meant to catch."""

from __future__ import annotations

import importlib.util
import re
from collections.abc import Mapping
from pathlib import Path
from typing import ClassVar

import numpy as np
import pytest

import ssa
from ssa.plugins import OWN_DISTRIBUTION, registry
from ssa.testing.conformance import CHECKS, assert_selector_conforms, check_selector

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE_SRC = ROOT / "plugins" / "ssa_example_selector" / "src" / "ssa_example_selector" / "__init__.py"

BUILTINS = ["tukey", "zscore", "mad", "percentile", "topk"]
PARAM_SETS = {
    "tukey": [{}, {"k": 0.0}, {"k": 3.0}],
    "zscore": [{}, {"threshold": 0.5}, {"threshold": 2.0}],
    "mad": [{}, {"threshold": 0.5}],
    "percentile": [{}, {"q": 50.0}, {"q": 90.0}],
    "topk": [{}, {"k": 1}, {"k": 3}, {"k": 100}],
}


def _load_example():
    spec = importlib.util.spec_from_file_location("_ssa_example_selector_src", EXAMPLE_SRC)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)  # type: ignore[union-attr]
    return module


def test_every_builtin_selector_is_covered() -> None:
    builtin = {i.name for i in registry().infos("selector") if i.distribution.split()[0] == OWN_DISTRIBUTION}
    assert builtin == set(BUILTINS)


@pytest.mark.parametrize("name,params", [(n, p) for n in BUILTINS for p in PARAM_SETS[n]])
def test_builtin_selectors_conform(name: str, params: dict) -> None:
    cls = registry().get("selector", name)
    assert_selector_conforms(cls, **params)
    assert_selector_conforms(cls(**params, two_sided=True))


@pytest.mark.parametrize("params", [{}, {"max_k": 1}, {"factor": 0.0}, {"max_k": 3, "factor": 2.0}])
def test_example_plugin_selector_conforms(params: dict) -> None:
    gap = _load_example().GapSelector
    assert gap.name == "gap" and gap.name not in BUILTINS
    assert_selector_conforms(gap, **params)
    assert_selector_conforms(gap, two_sided=True, **params)


# --- each check catches its mistake ---------------------------------------------------------------


def _selector(name: str, fn, two_sided_param: bool = True, array_api: bool = False,
              methods: Mapping | None = None) -> type[ssa.Selector]:
    params: dict = {"two_sided": ssa.Param(False, "negative outliers", bool)} if two_sided_param else {}

    class Broken(ssa.Selector):
        parameters: ClassVar[Mapping[str, ssa.Param]] = params

        def select(self, rows):
            return fn(self, rows if array_api else np.asarray(rows, dtype=np.float64))

    Broken.array_api = array_api
    for attr, method in (methods or {}).items():
        setattr(Broken, attr, method)

    Broken.name = name
    Broken.__name__ = name
    return Broken


def _tukey(rows: np.ndarray) -> np.ndarray:
    q1, q3 = np.percentile(rows, [25, 75], axis=1, keepdims=True)
    out = (rows > q3 + 1.5 * (q3 - q1)).astype(np.int8)
    out[~np.isfinite(rows).all(axis=1)] = 0
    return out


def _old_topk(self, rows):  # the first version: ties broken by index, constant rows keep k entries
    safe = np.nan_to_num(rows)
    order = np.argsort(-safe, axis=1, kind="stable")[:, :2]
    out = np.zeros(rows.shape, np.int8)
    out[np.arange(len(rows))[:, None], order] = 1
    out[safe <= 0] = 0
    out[~np.isfinite(rows).all(axis=1)] = 0
    return out


def _naive_zscore(self, rows):  # no guard against rounding-error std on constant rows
    with np.errstate(invalid="ignore", divide="ignore"):
        z = (rows - rows.mean(axis=1, keepdims=True)) / rows.std(axis=1, keepdims=True)
    out = np.nan_to_num(z > 0.5).astype(np.int8)
    out[~np.isfinite(rows).all(axis=1)] = 0
    return out


def _batch_quartiles(self, rows):  # fences computed over the whole batch, not per row
    q1, q3 = np.percentile(rows, [25, 75])
    out = (rows > q3 + 1.5 * (q3 - q1)).astype(np.int8)
    out[~np.isfinite(rows).all(axis=1)] = 0
    return out


def _mutating(self, rows):
    out = _tukey(rows)
    rows[:] = 0.0
    return out


def _random(self, rows):
    return (np.random.default_rng().random(rows.shape) > 0.9).astype(np.int8)


BROKEN = {
    "dtype": lambda self, rows: _tukey(rows).astype(np.int64),
    "shape": lambda self, rows: _tukey(rows)[:, :-1],
    "values": lambda self, rows: _tukey(rows) * 2,
    "one_sided": lambda self, rows: _tukey(rows) - _tukey(-rows),
    "two_sided": lambda self, rows: _tukey(rows),  # ignores two_sided=True
    "outlier": lambda self, rows: np.zeros(rows.shape, np.int8),
    "determinism": _random,
    "input_untouched": _mutating,
    "row_independence": _batch_quartiles,
    "ties": _old_topk,
    "constant_rows": _naive_zscore,
    "all_zero_rows": lambda self, rows: _tukey(rows) | (rows == 0).all(axis=1, keepdims=True).astype(np.int8),
    "nan_rows": lambda self, rows: _tukey(np.nan_to_num(rows)),
}


def _host_only(self, rows):  # claims the array API but hands back a numpy array of float32 quartiles
    host = rows.cpu().numpy() if hasattr(rows, "cpu") else np.asarray(rows)
    return _tukey(host.astype(np.float32))


BROKEN["array_libraries"] = _host_only
ARRAY_API = {"array_libraries"}
# labels by Tukey's fences, but cuts at the median: the traversal would count other outliers in rank-1 steps
BROKEN["sorted_cuts"] = lambda self, rows: _tukey(rows)
# labels by Tukey's fences, but searched cuts at the row's maximum: the traversal would count no outliers
BROKEN["searched_cuts"] = lambda self, rows: _tukey(rows)
# a loosening hint of two lines: a stop note is one line
BROKEN["loosen_hint"] = lambda self, rows: _tukey(rows)
# a curve sweep of a parameter the selector does not have
BROKEN["sweep"] = lambda self, rows: _tukey(rows)
# counts of Tukey's labels, all but the first group's: the traversal's device path would miss outliers
BROKEN["counts"] = lambda self, rows: _tukey(rows)


def _wrong_counts(self, rows, groups, sorted_rows=None):
    labels = np.asarray(self.select(np.asarray(rows.cpu() if hasattr(rows, "cpu") else rows)), dtype=np.int64)
    pos = (labels.reshape(-1, groups, labels.shape[1]) > 0).sum(axis=1)
    pos[0] = 0
    return pos, None


METHODS = {"sorted_cuts": {"sorted_cuts": lambda self, n, column: (column(n // 2), None)},
           "counts": {"count_labels": _wrong_counts},
           "searched_cuts": {"searched_cuts": lambda self, n, read, mean_abs: (read(n - 1), None)},
           "loosen_hint": {"loosen_hint": lambda self: "--selector-param k=1\nor another selector"},
           "sweep": {"sweep": ("threshold", (1.0, 2.0))}}


def test_every_check_has_a_broken_selector() -> None:
    assert set(BROKEN) == set(CHECKS)


@pytest.mark.parametrize("check", sorted(BROKEN))
def test_check_catches_its_mistake(check: str) -> None:
    def broken() -> type[ssa.Selector]:
        return _selector(f"broken_{check}", BROKEN[check], array_api=check in ARRAY_API, methods=METHODS.get(check))

    failures = check_selector(broken())
    assert any(f.startswith(f"{check} [") for f in failures), failures
    with pytest.raises(AssertionError, match=rf"broken_{check} does not conform"):
        assert_selector_conforms(broken())


def test_missing_two_sided_parameter_is_a_failure() -> None:
    cls = _selector("no_two_sided", lambda self, rows: _tukey(rows), two_sided_param=False)
    failures = check_selector(cls)
    assert any("has no 'two_sided' parameter" in f for f in failures)


def test_exceptions_and_bad_arguments_are_reported_as_failures() -> None:
    def boom(self, rows):
        raise RuntimeError("kaputt")

    failures = check_selector(_selector("boom", boom))
    assert failures and all("RuntimeError: kaputt" in f for f in failures)
    assert check_selector(int) == ["setup: int is not a subclass of ssa.Selector"]  # type: ignore[arg-type]
    assert check_selector("tukey")[0].startswith("setup:")  # type: ignore[arg-type]
    failures = check_selector(registry().get("selector", "tukey"), k=-1)
    assert len(failures) == 1 and failures[0].startswith("setup:") and "must be >= 0" in failures[0]


def test_check_selector_accepts_instances_and_returns_an_empty_list() -> None:
    assert check_selector(ssa.make_selector("tukey", k=2.0)) == []
    assert check_selector(ssa.make_selector("topk", k=2, two_sided=True)) == []


# --- the selectors' reviewed edge cases (what the checks found in the first versions) ---------------


def test_topk_drops_ties_at_the_kth_place_and_keeps_nothing_in_constant_rows() -> None:
    topk = ssa.make_selector("topk", k=2)
    assert topk.select(np.array([[3.0, 1.0, 3.0, 3.0, 0.5]])).tolist() == [[0, 0, 0, 0, 0]]  # three tied for 2 places
    assert topk.select(np.array([[3.0, 1.0, 2.0, 2.0, 0.5]])).tolist() == [[1, 0, 0, 0, 0]]  # 3rd place tied: only 1
    assert topk.select(np.array([[3.0, 1.0, 2.0, 0.0, 0.5]])).tolist() == [[1, 0, 1, 0, 0]]
    assert topk.select(np.full((2, 4), 2.0)).tolist() == [[0] * 4] * 2
    assert topk.select(np.array([[2.0, 1.0]])).tolist() == [[1, 0]]  # K <= k: everything above the minimum
    assert ssa.make_selector("topk", k=1, two_sided=True).select(np.array([[-4.0, 1.0, 0.0, -1.0]])).tolist() == [
        [-1, 1, 0, 0]]


def test_zscore_ignores_rounding_error_std_of_constant_rows() -> None:
    row = np.full((1, 73), 13040000.451301372)
    assert row.std() > 0  # rounding error
    assert not ssa.make_selector("zscore", threshold=0.5).select(row).any()


def test_mad_uses_the_mean_absolute_deviation_when_mad_is_zero() -> None:
    sparse = np.zeros((1, 16))
    sparse[0, 3] = 1.0
    assert ssa.make_selector("mad").select(sparse)[0].tolist() == [0, 0, 0, 1] + [0] * 12


# --- the plugin guide's examples run and conform ------------------------------------------------------


def _doc_blocks() -> list[str]:
    text = (ROOT / "docs" / "plugins.md").read_text()
    return re.findall(r"```python\n(.*?)```", text, flags=re.S)


def test_plugin_guide_examples_conform_and_run() -> None:
    code = "\n".join(b for b in _doc_blocks() if "class AboveMean" in b or "class GradientXAbsActivation" in b)
    assert "class AboveMean" in code and "class GradientXAbsActivation" in code
    ns: dict = {"__name__": "plugin_guide_example"}
    exec(compile(code, "docs/plugins.md", "exec"), ns)
    assert_selector_conforms(ns["AboveMean"])
    assert_selector_conforms(ns["AboveMean"], factor=1.5)

    from ssa.plugins import get_plugin_manager

    class Inline:
        @ssa.hookimpl
        def ssa_register_selectors(self, register):
            register(ns["AboveMean"])

        @ssa.hookimpl
        def ssa_register_rules(self, register):
            register(ns["GradientXAbsActivation"])

    pm = get_plugin_manager()
    plugin = Inline()
    pm.register(plugin, name="plugin-guide-test")
    try:
        registry(refresh=True)
        images, labels = ssa.load_images("digits")
        result = ssa.analyse("digits", images[labels == 3][:40], 3, rule="gradient_x_abs_activation",
                             selector="above_mean", selector_params={"factor": 3})
        assert result.rule == "gradient_x_abs_activation" and result.selector == "above_mean"
        assert result.graph.number_of_nodes() > 1
    finally:
        pm.unregister(plugin)
        registry(refresh=True)
    assert "above_mean" not in registry().names("selector")


def test_readme_plugin_example_conforms() -> None:
    text = (ROOT / "README.md").read_text()
    (code,) = [b for b in re.findall(r"```python\n(.*?)```", text, flags=re.S) if "class Above" in b]
    ns: dict = {"__name__": "readme_example"}
    exec(compile(code, "README.md", "exec"), ns)
    assert_selector_conforms(ns["Above"])
    assert_selector_conforms(ns["Above"], t=0.0)


def test_sorted_cuts_that_read_positions_by_value_are_a_failure() -> None:
    """The traversal finds the positions a selector's cuts read once per row length; reading by value breaks it."""

    def cuts(self, n, column):
        first = column(0)
        p = n - 1 if float(np.asarray(first).ravel()[0]) > 0 else 0  # a position chosen by a value
        return column(p), None

    cls = _selector("by_value", lambda self, rows: _tukey(rows), methods={"sorted_cuts": cuts})
    assert any("reads other sorted positions for other values" in f for f in check_selector(cls))
