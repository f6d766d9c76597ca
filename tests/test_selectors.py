"""Known-answer tests of the outlier selectors (method doc, section 3, STEP 2; section 5).

Every expected answer is worked out by hand in the comments.
"""

from __future__ import annotations

import numpy as np
import pytest

import ssa

NAN = float("nan")


def select(name: str, rows, **params) -> np.ndarray:
    out = ssa.make_selector(name, **params).select(np.asarray(rows, dtype=np.float64))
    assert out.dtype == np.int8
    assert out.shape == np.shape(rows)
    return out


# --- Tukey's fences (the paper's selector) -------------------------------------------------------


def test_tukey_flags_values_above_the_upper_fence() -> None:
    # Q1 = 2, Q3 = 4 (linear interpolation at positions 1 and 3), fence = 4 + 1.5 * 2 = 7
    assert select("tukey", [[1, 2, 3, 4, 100]]).tolist() == [[0, 0, 0, 0, 1]]


def test_tukey_is_strictly_greater_than_the_fence() -> None:
    # the same quartiles, and 7 sits exactly on the fence: not an outlier; just above it is
    assert select("tukey", [[1, 2, 3, 4, 7]]).tolist() == [[0, 0, 0, 0, 0]]
    assert select("tukey", [[1, 2, 3, 4, 7.000001]]).tolist() == [[0, 0, 0, 0, 1]]


def test_tukey_quartiles_are_linearly_interpolated() -> None:
    # sorted row of 8: Q1 at position 1.75 -> 6, Q3 at position 5.25 -> 7 + 0.25 * 2 = 7.5,
    # fence = 7.5 + 1.5 * 1.5 = 9.75, so 10 is an outlier. Every other numpy quantile method
    # (lower, higher, midpoint, nearest, hazen, weibull, median_unbiased, ...) gives a fence >= 10.
    row = [7, 4, 10, 6, 7, 9, 6, 7]  # unsorted on purpose
    assert select("tukey", [row]).tolist() == [[0, 0, 1, 0, 0, 0, 0, 0]]


def test_tukey_rows_are_independent() -> None:
    rows = [[1, 2, 3, 4, 100], [100, 2, 3, 4, 1], [1, 2, 3, 4, 5]]
    assert select("tukey", rows).tolist() == [[0, 0, 0, 0, 1], [1, 0, 0, 0, 0], [0, 0, 0, 0, 0]]


def test_tukey_constant_and_all_zero_rows_have_no_outliers() -> None:
    # IQR = 0 and the fence equals the value: nothing is strictly greater
    assert select("tukey", [[3, 3, 3, 3], [0, 0, 0, 0]]).tolist() == [[0] * 4, [0] * 4]


def test_tukey_ties() -> None:
    # mostly zeros: Q1 = 0, Q3 = 0 -> any positive value is an outlier, tied values alike
    assert select("tukey", [[0, 0, 0, 0, 0, 0, 0, 5, 5]]).tolist() == [[0] * 7 + [1, 1]]
    # 8 values, Q3 at position 5.25 = 0 + 0.25 * 5 = 1.25, fence 1.25 + 1.5 * 1.25 = 3.125: both 5s
    assert select("tukey", [[0, 0, 0, 0, 0, 0, 5, 5]]).tolist() == [[0] * 6 + [1, 1]]
    # 3 tied large values among 8: Q3 at position 5.25 = 5, fence = 5 + 1.5 * 5 = 12.5: none
    assert select("tukey", [[0, 0, 0, 0, 0, 5, 5, 5]]).tolist() == [[0] * 8]


def test_tukey_nan_and_inf_rows_give_zeros_without_touching_other_rows() -> None:
    rows = [[1, 2, NAN, 4, 100], [1, 2, 3, 4, 100], [1, 2, float("inf"), 4, 100], [NAN] * 5]
    assert select("tukey", rows).tolist() == [[0] * 5, [0, 0, 0, 0, 1], [0] * 5, [0] * 5]


def test_tukey_two_sided_marks_negative_outliers() -> None:
    # sorted: -100, 1, 2, 3, 4 -> Q1 = 1, Q3 = 3, IQR 2: lower fence 1 - 3 = -2, upper fence 3 + 3 = 6
    row = [[2, -100, 1, 3, 4]]
    assert select("tukey", row).tolist() == [[0, 0, 0, 0, 0]]
    assert select("tukey", row, two_sided=True).tolist() == [[0, -1, 0, 0, 0]]
    both = [[-100, 1, 2, 3, 4, 5, 100]]  # Q1 = 1.5, Q3 = 4.5, fences -3 and 9
    assert select("tukey", both, two_sided=True).tolist() == [[-1, 0, 0, 0, 0, 0, 1]]
    assert select("tukey", both).tolist() == [[0, 0, 0, 0, 0, 0, 1]]


def test_tukey_k_parameter() -> None:
    # k = 0: strictly above Q3 = 4
    assert select("tukey", [[1, 2, 3, 4, 5]], k=0).tolist() == [[0, 0, 0, 0, 1]]
    # k = 3: fence 4 + 6 = 10
    assert select("tukey", [[1, 2, 3, 4, 10]], k=3).tolist() == [[0, 0, 0, 0, 0]]
    assert select("tukey", [[1, 2, 3, 4, 10.5]], k=3).tolist() == [[0, 0, 0, 0, 1]]


# --- z-score ------------------------------------------------------------------------------------


def test_zscore_known_answer_and_strictness() -> None:
    # nine 0s and one 10: mean 1, population std sqrt((9 * 1 + 81) / 10) = 3, z(10) = 3
    row = [[0] * 9 + [10]]
    assert select("zscore", row).tolist() == [[0] * 10]  # 3 is not > 3
    assert select("zscore", row, threshold=2.9).tolist() == [[0] * 9 + [1]]
    neg = [[0] * 9 + [-10]]
    assert select("zscore", neg, threshold=2.9).tolist() == [[0] * 10]
    assert select("zscore", neg, threshold=2.9, two_sided=True).tolist() == [[0] * 9 + [-1]]


def test_zscore_constant_zero_and_nan_rows() -> None:
    # 0.1 repeated has a rounding-error std (~1e-17): still no outliers
    rows = [[2, 2, 2, 2, 2, 2, 2], [0] * 7, [0.1] * 7, [1, NAN, 1, 50, 1, 1, 1]]
    assert select("zscore", rows, threshold=0.5).tolist() == [[0] * 7] * 4


# --- MAD (modified z-score) ---------------------------------------------------------------------


def test_mad_known_answer() -> None:
    # median 3, |x - 3| = [2, 1, 0, 1, 97] -> MAD 1; modified z = 0.6745 * (x - 3):
    # 100 -> 65.4 (outlier), 1 -> -1.35 (not)
    assert select("mad", [[1, 2, 3, 4, 100]]).tolist() == [[0, 0, 0, 0, 1]]
    # threshold between: 0.6745 * 1 = 0.6745 for x = 4, 0.6745 * 97 for 100
    assert select("mad", [[1, 2, 3, 4, 100]], threshold=0.6).tolist() == [[0, 0, 0, 1, 1]]
    assert select("mad", [[1, 2, 3, 4, 100]], threshold=0.6, two_sided=True).tolist() == [[-1, -1, 0, 1, 1]]


def test_mad_falls_back_to_the_mean_absolute_deviation_when_mad_is_zero() -> None:
    # [5, 5, 5, 5, 9]: median 5, |x - 5| = [0, 0, 0, 0, 4] -> MAD 0; MeanAD = 0.8,
    # z(9) = 4 / (1.253314 * 0.8) = 3.989 (Iglewicz-Hoaglin): above 3.5, below 4
    assert select("mad", [[5, 5, 5, 5, 9]]).tolist() == [[0, 0, 0, 0, 1]]
    assert select("mad", [[5, 5, 5, 5, 9]], threshold=4).tolist() == [[0] * 5]
    assert select("mad", [[5, 5, 5, 5, 1]], two_sided=True).tolist() == [[0, 0, 0, 0, -1]]
    assert select("mad", [[5, 5, 5, 5, 1]]).tolist() == [[0] * 5]


def test_mad_constant_zero_and_nan_rows() -> None:
    rows = [[0, 0, 0, 0, 0], [7, 7, 7, 7, 7], [1, 2, 3, NAN, 100]]
    assert select("mad", rows, threshold=0.1).tolist() == [[0] * 5] * 3


def _mad_written_out(rows: np.ndarray, t: float) -> np.ndarray:
    """The modified z-score as the docstring states it, every quantity for every row (the slow reference)."""
    safe = np.where(np.isfinite(rows), rows, 0.0)
    med = np.median(safe, axis=1, keepdims=True)
    mad = np.median(np.abs(safe - med), axis=1, keepdims=True)
    meanad = np.mean(np.abs(safe - med), axis=1, keepdims=True)
    scale = np.where(mad > 0, mad / 0.6745, 1.253314 * meanad)
    z = np.where(scale > 0, (safe - med) / np.where(scale > 0, scale, 1.0), 0.0)
    ok = np.all(np.isfinite(rows), axis=1, keepdims=True)
    return ((z > t) & ok).astype(np.int8) - ((z < -t) & ok).astype(np.int8)


def test_mad_equals_the_formula_written_out_on_sparse_and_dense_rows() -> None:
    """The fast MAD (sorted rows, the mean-AD fallback only for rows whose MAD is 0) labels every entry as the
    written-out formula does, under numpy and torch."""
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(0)
    sel = ssa.make_selector("mad", two_sided=True)
    fallback_rows = 0
    for trial in range(200):
        R, K = int(rng.integers(1, 40)), int(rng.integers(1, 200))
        x = rng.standard_normal((R, K)) * np.exp(rng.standard_normal((R, 1)) * 3)
        x[rng.random((R, K)) < rng.random()] = 0.0  # sparse rows: MAD 0, the mean-AD fallback
        if trial % 7 == 0:
            x[0] = 1.5
        if trial % 11 == 0:
            x[-1, 0] = NAN
        want = _mad_written_out(x, 3.5)
        fallback_rows += int((np.median(np.abs(x - np.median(x, axis=1, keepdims=True)), axis=1) == 0).sum())
        assert np.array_equal(sel.select(x), want), trial
        assert np.array_equal(sel.select(torch.from_numpy(x)).numpy(), want), trial
    assert fallback_rows > 100  # the fallback was exercised


# --- percentile ---------------------------------------------------------------------------------


def test_percentile_known_answer() -> None:
    # q = 50 of [1..5] is 3: strictly above and positive
    assert select("percentile", [[1, 2, 3, 4, 5]], q=50).tolist() == [[0, 0, 0, 1, 1]]
    # q = 99 (default): 99th percentile of [0, 0, 0, 10] = 0 + 0.97 * 10 = 9.7 -> 10 only
    assert select("percentile", [[0, 0, 0, 10]]).tolist() == [[0, 0, 0, 1]]


def test_percentile_needs_positive_values_and_two_sided() -> None:
    row = [[-5, -4, -3, -2, -1]]
    assert select("percentile", row, q=50).tolist() == [[0] * 5]  # above the median but not positive
    # lower percentile 50 = -3: strictly below and negative
    assert select("percentile", row, q=50, two_sided=True).tolist() == [[-1, -1, 0, 0, 0]]


def test_percentile_constant_zero_and_nan_rows() -> None:
    rows = [[4, 4, 4, 4], [0, 0, 0, 0], [NAN, 1, 2, 30]]
    assert select("percentile", rows, q=50).tolist() == [[0] * 4] * 3


# --- top-k --------------------------------------------------------------------------------------


def test_topk_known_answer_and_ties() -> None:
    # kept iff > 0 and strictly above the (k+1)-th largest value of the row
    assert select("topk", [[1, 5, 3, 5, 0]], k=2).tolist() == [[0, 1, 0, 1, 0]]  # 3rd largest: 3
    assert select("topk", [[2, 2, 1, 0]], k=2).tolist() == [[1, 1, 0, 0]]
    # a tie across the k-th place is never broken by position: none of the tied entries is kept
    assert select("topk", [[2, 2, 2, 0]], k=2).tolist() == [[0, 0, 0, 0]]
    assert select("topk", [[0, 2, 9, 2]], k=2).tolist() == [[0, 0, 1, 0]]
    # only strictly positive entries; k at least the row length: compared with the row minimum
    assert select("topk", [[1, -1, 2]], k=10).tolist() == [[1, 0, 1]]
    assert select("topk", [[4, 4, 4]], k=10).tolist() == [[0, 0, 0]]


def test_topk_zero_nan_and_two_sided() -> None:
    assert select("topk", [[0, 0, 0], [NAN, 3, 1]], k=1).tolist() == [[0, 0, 0], [0, 0, 0]]
    assert select("topk", [[3, -1, -5, 2]], k=1, two_sided=True).tolist() == [[1, 0, -1, 0]]
    assert select("topk", [[3, -1, -5, 2]], k=1).tolist() == [[1, 0, 0, 0]]


# --- parameters ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "name, params, words",
    [
        ("tukey", {"k": -1}, "'k' must be >= 0"),
        ("tukey", {"k": "wide"}, "'k' must be float"),
        ("tukey", {"two_sided": "maybe"}, "'two_sided' must be bool"),
        ("tukey", {"fence": 2}, "has no parameter 'fence'"),
        ("zscore", {"threshold": 0}, "'threshold' must be > 0"),
        ("mad", {"threshold": -1}, "'threshold' must be > 0"),
        ("percentile", {"q": 0}, "'q' must be in (0, 100)"),
        ("percentile", {"q": 100}, "'q' must be in (0, 100)"),
        ("topk", {"k": 0}, "'k' must be >= 1"),
        ("topk", {"k": 1.5}, "'k' must be int"),
        ("topk", {"k": float("inf")}, "'k' must be int"),
        ("mad", {"threshold": float("inf")}, "'threshold' must be a finite number, got inf"),
        ("zscore", {"threshold": "nan"}, "'threshold' must be a finite number, got nan"),
        ("tukey", {"k": "inf"}, "'k' must be a finite number, got inf"),
    ],
)
def test_invalid_parameters_raise_invalid_input_error(name: str, params: dict, words: str) -> None:
    with pytest.raises(ssa.InvalidInputError) as info:
        ssa.make_selector(name, **params)
    assert words in str(info.value)
    assert isinstance(info.value, ValueError)


def test_parameters_are_converted_and_stored() -> None:
    sel = ssa.make_selector("tukey", k="3", two_sided="yes")
    assert sel.params == {"k": 3.0, "two_sided": True}
    assert sel.two_sided
    assert ssa.make_selector("topk", k=2.0).params["k"] == 2


def test_unknown_selector_is_a_plugin_error() -> None:
    with pytest.raises(ssa.PluginError, match="unknown selector 'grubbs'"):
        ssa.make_selector("grubbs")


# -- plugin bugs are named when the traversal calls the selector (issue 9) ---------------------------------
class _Bad(ssa.Selector):
    parameters = {"two_sided": ssa.Param(False, "unused", bool)}


class ReturnsTwo(_Bad):
    name = "returns_two"

    def select(self, rows):
        return np.full(rows.shape, 2, np.int8)


class WrongShape(_Bad):
    name = "wrong_shape"

    def select(self, rows):
        return np.zeros((rows.shape[0], rows.shape[1] + 1), np.int8)


class Raises(_Bad):
    name = "raises"

    def select(self, rows):
        raise ZeroDivisionError("oops")


class Halves(_Bad):
    name = "halves"

    def select(self, rows):
        return np.full(rows.shape, 0.5)


class BadHint(_Bad):
    """Keeps nothing (so the graph stops at once), and its advice for that is two lines."""

    name = "bad_hint"

    def select(self, rows):
        return np.zeros(rows.shape, np.int8)

    def loosen_hint(self):
        return "--selector-param width=2\nor another selector"


class RaisingRule(ssa.Rule):
    name = "raising_rule"
    closed_form = None

    def combine(self, grad, activation):
        raise RuntimeError("rule bug")


@pytest.mark.parametrize("selector, words", [
    (ReturnsTwo(), "selector 'returns_two' (from tests) returned 2 (expected only -1, 0 or +1"),
    (WrongShape(), "returned an array of shape"),
    (Raises(), "selector 'raises' (from tests) raised ZeroDivisionError: oops on relevance rows of shape"),
    (Halves(), "returned 0.5"),
    (BadHint(), "selector 'bad_hint' (from tests) loosen_hint() returned '--selector-param width=2\\nor another "
                "selector' (expected one line of text, or None)"),
])
def test_a_selector_bug_is_named_not_counted(selector, words):
    with pytest.raises(ssa.PluginError) as info:
        ssa.analyse("digits", "digits", 3, 1, rule="gradient", selector=selector)
    msg = str(info.value)
    assert words in msg and "bug in the selector plugin" in msg and "--selector" in msg
    assert len(msg.splitlines()) == 1


class _BadCounts(ssa.Selector):
    """Labels as MAD does, but counts them wrongly (the device path asks for counts, not labels)."""

    parameters = {"two_sided": ssa.Param(False, "unused", bool)}
    array_api = True

    def select(self, rows):
        return ssa.make_selector("mad").select(rows)


class CountsOneColumn(_BadCounts):
    name = "counts_one_column"

    def count_labels(self, rows, groups, sorted_rows=None):
        return rows[:, :1] > 0, None


class CountsRaise(_BadCounts):
    name = "counts_raise"

    def count_labels(self, rows, groups, sorted_rows=None):
        raise ValueError("no counts")


@pytest.mark.parametrize("selector, words", [
    (CountsOneColumn(), "selector 'counts_one_column' (from tests) count_labels() returned counts of shapes [("),
    (CountsRaise(), "selector 'counts_raise' (from tests) raised ValueError: no counts in count_labels() on relevance "
                    "rows of shape"),
])
def test_a_selector_counting_wrongly_on_the_device_path_is_named(selector, words):
    from ssa.core.arrays import device_path

    with pytest.raises(ssa.PluginError) as info, device_path():  # tensors stay tensors: the counts are asked for
        ssa.analyse("digits", "digits", 3, 1, rule="gradient", selector=selector)
    msg = str(info.value)
    assert words in msg and "bug in the selector plugin" in msg and "--selector" in msg
    assert len(msg.splitlines()) == 1


class ZeroRuleRaisingHint(ssa.Rule):
    """Relevance zero everywhere (so the graph stops at once), and its advice for that raises."""

    name = "zero_rule"
    closed_form = None

    def combine(self, grad, activation):
        return grad * 0

    def stop_hint(self):
        raise KeyError("no advice")


def test_a_rule_bug_is_named():
    x, _ = ssa.load_images("digits")
    with pytest.raises(ssa.PluginError, match="rule 'raising_rule' .* raised RuntimeError: rule bug in combine"):
        ssa.analyse("digits", x[:8], 3, 1, rule=RaisingRule(), selector="tukey")
    with pytest.raises(ssa.PluginError, match=r"rule 'zero_rule' \(from tests\) raised KeyError: 'no advice' in "
                                              r"stop_hint\(\); this is a bug in the rule plugin"):
        ssa.analyse("digits", x[:8], 3, 1, rule=ZeroRuleRaisingHint(), selector="tukey")


def test_a_selector_bug_in_the_cli_is_one_line_exit_2(capsys):
    from ssa.cli import main
    from ssa.plugins import get_plugin_manager, registry

    class Plugin:
        @ssa.hookimpl
        def ssa_register_selectors(self, register):
            register(ReturnsTwo)

    pm = get_plugin_manager()
    plugin = Plugin()
    pm.register(plugin, name="returns-two")
    try:
        registry(refresh=True)
        assert main(["analyse", "digits", "--images", "digits", "-t", "3", "--selector", "returns_two", "-q"]) == 2
    finally:
        pm.unregister(plugin)
        registry(refresh=True)
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("ssa: error: selector 'returns_two'") and "internal" not in err[0]


def test_median_of_falling_then_rising_rows_equals_the_sorted_median() -> None:
    """MAD's second median (of |s - median| over sorted rows s) from the two runs, against sorting them."""
    torch = pytest.importorskip("torch")
    from ssa.core.arrays import median_of_v_rows, median_sorted

    rng = np.random.default_rng(0)
    for trial in range(300):
        R, K = int(rng.integers(1, 30)), int(rng.integers(1, 120))
        x = rng.standard_t(2, (R, K))
        x[rng.random((R, K)) < rng.random()] = 0.0
        if trial % 5 == 0:
            x = np.round(x, 1)  # ties
        s = np.sort(x, axis=1)
        med = median_sorted(s)
        d = np.abs(s - med)
        want = median_sorted(np.sort(d, axis=1))
        below = np.sum(s < med, axis=1, keepdims=True)
        assert np.array_equal(median_of_v_rows(d, below), want), trial
        assert np.array_equal(median_of_v_rows(torch.from_numpy(d), torch.from_numpy(below)).numpy(), want), trial
        assert np.array_equal(median_of_v_rows(s, below, center=med), want), trial  # |s - med| read lazily
