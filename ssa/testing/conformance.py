"""Conformance checks for outlier selectors (the contract of :class:`ssa.core.interfaces.Selector`).

Any selector, built-in or from a third-party plugin, can check itself::

    from ssa.testing.conformance import assert_selector_conforms, check_selector

    def test_my_selector_conforms():
        assert_selector_conforms(MySelector)          # raises AssertionError listing every failure

    failures = check_selector(MySelector(k=2))        # [] when the selector conforms

What is checked (method doc, section 3, STEP 2; ``Selector.select``'s docstring):

* ``shape``: (R, K) rows give an (R, K) result, also for R = 0 and K = 1;
* ``dtype``: the result is ``numpy.int8``;
* ``values``: every entry is in {-1, 0, +1};
* ``one_sided``: no -1 unless ``two_sided`` is True (and every selector has ``two_sided``);
* ``two_sided``: with ``two_sided=True`` a clear negative outlier gets -1 and a clear positive one +1;
* ``outlier``: a clear positive outlier gets +1, in a noisy row and among exact zeros (sparse rows);
* ``determinism``: the same rows give the same result, from the same and from a fresh instance;
* ``input_untouched``: ``select`` does not modify its input;
* ``row_independence``: a row's result does not depend on the other rows (alone, reordered, duplicated);
* ``ties``: equal entries of a row get equal labels (permuting a row's entries permutes its result);
* ``constant_rows``: rows whose entries are all equal have no outliers (any value, any length);
* ``all_zero_rows``: all-zero rows have no outliers;
* ``nan_rows``: a row that contains NaN gives 0 everywhere (and does not affect other rows).
* ``array_libraries``: the labels are identical under numpy and under torch (on the CPU, and on
  CUDA when a GPU is present), through the core's boundary (:func:`ssa.core.traversal.apply_selector`).
  A selector that declares ``array_api = True`` must also return an int8 array of the rows' own
  library on the rows' device; one that does not is given numpy rows by the core.
* ``sorted_cuts``: a selector with sorted cuts labels every row exactly as its cuts say;
* ``counts``: a selector that counts its labels itself (``count_labels``) counts exactly ``select()``'s labels, for
  numpy and torch rows, given sorted or not;
* ``searched_cuts``: a selector with searched cuts (:class:`~ssa.core.interfaces.SupportsSearchedCuts`) labels every
  finite row exactly as its cuts say;
* ``loosen_hint``: :meth:`~ssa.core.interfaces.Selector.loosen_hint` returns None or one line of text (what a
  stop note suggests when the selector keeps nothing at a step).
* ``sweep``: :attr:`~ssa.core.interfaces.Selector.sweep` is None, or names one of the selector's parameters
  with a non-empty tuple of values it accepts (what ``ssa evaluate --curves`` tries).

Each check runs with the selector's own parameters and, when the selector has
``two_sided``, also with ``two_sided`` flipped.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from ssa.core.interfaces import Selector, SupportsCounts, SupportsSearchedCuts, SupportsSortedCuts

__all__ = ["check_selector", "assert_selector_conforms", "CHECKS"]


def _rows(seed: int = 0, R: int = 24, K: int = 40) -> np.ndarray:
    """Realistic relevance rows: heavy tails, exact zeros (silent neurons), ties, both signs."""
    rng = np.random.default_rng(seed)
    rows = rng.standard_t(df=3, size=(R, K))
    rows[rng.random((R, K)) < 0.3] = 0.0
    rows[R // 2:, : K // 4] = np.round(rows[R // 2:, : K // 4], 1)  # ties
    rows[1, 3] = 25.0
    rows[2, 5] = -25.0
    rows[3, :] = np.abs(rows[3, :]) * 1e-6
    return rows


def _clear_row(K: int = 50, spike: float = 1000.0, at: int = 7, seed: int = 1) -> np.ndarray:
    rng = np.random.default_rng(seed)
    row = rng.normal(0.0, 1.0, size=K)
    row[at] = spike
    return row[None, :]


def _instances(sel: Selector) -> list[Selector]:
    """The selector as given, and with ``two_sided`` flipped when it has that parameter."""
    out = [sel]
    if "two_sided" in type(sel).parameters:
        params = dict(sel.params)
        params["two_sided"] = not bool(params.get("two_sided", False))
        out.append(type(sel)(**params))
    return out


def _label(sel: Selector) -> str:
    return f"{type(sel).__name__}({', '.join(f'{k}={v!r}' for k, v in sel.params.items())})"


def _call(sel: Selector, rows: np.ndarray) -> np.ndarray:
    return np.asarray(sel.select(np.array(rows, dtype=np.float64, copy=True)))


def _check_shape(sel: Selector) -> list[str]:
    fails = []
    for shape in ((24, 40), (0, 40), (5, 1), (1, 2)):
        rows = _rows()[: shape[0], : shape[1]]
        out = _call(sel, rows)
        if out.shape != shape:
            fails.append(f"rows of shape {shape} gave a result of shape {out.shape}")
    return fails


def _check_dtype(sel: Selector) -> list[str]:
    out = _call(sel, _rows())
    return [] if out.dtype == np.int8 else [f"result dtype is {out.dtype}, expected int8"]


def _check_values(sel: Selector) -> list[str]:
    bad = sorted(set(np.unique(_call(sel, _rows()).astype(np.int64)).tolist()) - {-1, 0, 1})
    return [f"result has values {bad} outside {{-1, 0, 1}}"] if bad else []


def _check_one_sided(sel: Selector) -> list[str]:
    if "two_sided" not in type(sel).parameters:
        return ["has no 'two_sided' parameter (every selector must accept two_sided, default False)"]
    if sel.two_sided:
        return []
    rows = np.concatenate([_rows(), -_clear_row(K=40)], axis=0)
    return ["returned -1 although two_sided is False"] if (_call(sel, rows) < 0).any() else []


def _check_two_sided(sel: Selector) -> list[str]:
    if not sel.two_sided:
        return []
    fails = []
    out = _call(sel, -_clear_row())
    if out[0, 7] != -1:
        fails.append(f"two_sided: a clear negative outlier (-1000 among N(0, 1) values) got {out[0, 7]}, expected -1")
    out = _call(sel, _clear_row())
    if out[0, 7] != 1:
        fails.append(f"two_sided: a clear positive outlier got {out[0, 7]}, expected +1")
    return fails


def _check_outlier(sel: Selector) -> list[str]:
    fails = []
    out = _call(sel, _clear_row())
    if out[0, 7] != 1:
        fails.append(f"a clear positive outlier (1000 among 49 N(0, 1) values) got {out[0, 7]}, expected +1")
    sparse = np.zeros((1, 40))
    sparse[0, 11] = 5.0  # one firing neuron among silent ones (MAD = IQR = 0)
    out = _call(sel, sparse)
    if out[0, 11] != 1 or out[0, np.arange(40) != 11].any():
        fails.append("a row of 39 zeros and one 5.0 did not give +1 for the 5.0 alone")
    return fails


def _check_determinism(sel: Selector) -> list[str]:
    rows = _rows(seed=3)
    a, b = _call(sel, rows), _call(sel, rows)
    c = _call(type(sel)(**sel.params), rows)
    fails = []
    if not np.array_equal(a, b):
        fails.append("two calls on the same rows gave different results")
    if not np.array_equal(a, c):
        fails.append("a fresh instance with the same parameters gave a different result")
    return fails


def _check_input_untouched(sel: Selector) -> list[str]:
    rows = _rows(seed=4)
    rows[5, 2] = np.nan
    before = rows.copy()
    sel.select(rows)
    return [] if np.array_equal(rows, before, equal_nan=True) else ["select() modified its input rows"]


def _check_row_independence(sel: Selector) -> list[str]:
    rows = _rows(seed=5)
    full = _call(sel, rows)
    fails = []
    for i in (0, 1, 2, 3, len(rows) - 1):
        alone = _call(sel, rows[i:i + 1])
        if not np.array_equal(alone[0], full[i]):
            fails.append(f"row {i} alone gave a different result than within the batch")
            break
    perm = np.random.default_rng(0).permutation(len(rows))
    if not np.array_equal(_call(sel, rows[perm]), full[perm]):
        fails.append("reordering the rows changed their results")
    doubled = _call(sel, np.concatenate([rows, rows * 0.0 + 7.0, rows], axis=0))
    if not (np.array_equal(doubled[: len(rows)], full) and np.array_equal(doubled[-len(rows):], full)):
        fails.append("adding other rows (constant ones) to the batch changed a row's result")
    return fails


def _check_ties(sel: Selector) -> list[str]:
    fails = []
    # rows with many tied values, including ties at the top (topk's k-th place) and tied spikes
    tied = np.array([
        [5.0, 5.0, 5.0, 5.0, 5.0, 5.0, 5.0, 0.1, 0.0, 0.2, 0.1, 0.0, 0.3, 0.1, 0.0, 0.2],
        [9.0, 9.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0],
        [1.0, 2.0, 2.0, 3.0, 3.0, 3.0, 4.0, 4.0, 4.0, 4.0, -6.0, -6.0, 30.0, 30.0, 30.0, 30.0],
        [-9.0, -9.0, -9.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0],
    ])
    rows = np.concatenate([tied, _rows(seed=6, K=16)[:8]], axis=0)
    out = _call(sel, rows)
    for i, row in enumerate(rows):
        for v in np.unique(row):
            labels = np.unique(out[i, row == v])
            if labels.size > 1:
                fails.append(f"equal entries ({v:g}) of row {i} got different labels {labels.tolist()}")
                break
        if fails:
            break
    rng = np.random.default_rng(7)
    for i, row in enumerate(rows):
        perm = rng.permutation(row.size)
        if not np.array_equal(_call(sel, row[perm][None, :])[0], out[i, perm]):
            fails.append(f"permuting the entries of row {i} did not just permute its result")
            break
    return fails


def _check_constant_rows(sel: Selector) -> list[str]:
    values = [0.1, 1 / 3, -2.5, 1e-12, 13040000.451301372, 7.0, -1e6]
    lengths = [1, 2, 3, 10, 16, 73, 257]
    rows_by_len = {K: np.array([[v] * K for v in values]) for K in lengths}
    for K, rows in rows_by_len.items():
        out = _call(sel, rows)
        if out.any():
            i = int(np.argwhere(out.any(axis=1))[0, 0])
            return [f"a constant row ({values[i]!r} x {K}) has outliers"]
    return []


def _check_all_zero_rows(sel: Selector) -> list[str]:
    for K in (1, 5, 64):
        if _call(sel, np.zeros((3, K))).any():
            return [f"an all-zero row of {K} entries has outliers"]
    return []


def _check_nan_rows(sel: Selector) -> list[str]:
    rows = _rows(seed=8)
    clean = _call(sel, rows)
    bad = rows.copy()
    bad[1, 0] = np.nan          # a NaN next to a clear outlier
    bad[4, :] = np.nan          # an all-NaN row
    bad[6, 10] = np.nan
    out = _call(sel, bad)
    fails = []
    for i in (1, 4, 6):
        if out[i].any():
            fails.append(f"a row containing NaN has non-zero labels (row {i})")
            break
    others = [i for i in range(len(rows)) if i not in (1, 4, 6)]
    if not np.array_equal(out[others], clean[others]):
        fails.append("a NaN in one row changed the results of other rows")
    return fails


def _torch_devices() -> list[str]:
    try:
        import torch
    except ImportError:  # pragma: no cover - torch is a dependency of the built-in backends
        return []
    return ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


def _check_array_libraries(sel: Selector) -> list[str]:

    devices = _torch_devices()
    if not devices:
        return []

    cases = {"noisy rows": _rows(seed=11), "clear outlier": _clear_row(), "short rows": _rows(seed=12, K=7),
             "constant rows": np.full((3, 9), 2.5), "one column": np.random.default_rng(13).standard_normal((6, 1))}
    nan = _rows(seed=14)
    nan[2, 4] = np.nan
    nan[5, :] = np.inf
    cases["non-finite rows"] = nan
    fails = []
    with np.errstate(all="ignore"):
        fails = _compare_libraries(sel, cases, devices)
    return fails


def _compare_libraries(sel: Selector, cases: dict, devices: list[str]) -> list[str]:
    import torch

    from ssa.core.traversal import apply_selector

    fails = []
    for what, rows in cases.items():
        ref = np.asarray(apply_selector(sel, np.array(rows, dtype=np.float64, copy=True)))
        for dev in devices:
            t = torch.tensor(rows, dtype=torch.float64, device=dev)
            out = apply_selector(sel, t)
            if sel.array_api:  # it says it runs where the rows live: it must not go to the host
                raw = sel.select(t.clone())  # type: ignore[arg-type]  # array_api selectors take any array-API array
                if not isinstance(raw, torch.Tensor) or raw.device.type != torch.device(dev).type:
                    fails.append(f"{what}: declares array_api but returned {type(raw).__name__} on "
                                 f"{getattr(raw, 'device', 'the host')} for torch rows on {dev}")
                    continue
            if not isinstance(out, torch.Tensor) or out.device.type != torch.device(dev).type:
                fails.append(f"{what}: torch rows on {dev} gave {type(out).__name__} on "
                             f"{getattr(out, 'device', 'the host')}, expected a torch tensor on {dev}")
                continue
            if out.dtype != torch.int8:
                fails.append(f"{what}: torch rows on {dev} gave dtype {out.dtype}, expected torch.int8")
            got = out.cpu().numpy()
            if not np.array_equal(got, ref):
                fails.append(f"{what}: labels under torch on {dev} differ from numpy's in {(got != ref).sum()} entries")
    return fails


def _check_counts(sel: Selector) -> list[str]:
    """A selector that counts its labels itself (:class:`~ssa.core.interfaces.SupportsCounts`) gives, for numpy rows and
    torch rows (on each device, as the traversal's device path gets them, with and without the rows sorted), exactly
    :meth:`Selector.select`'s labels summed over each group of rows."""
    if not isinstance(sel, SupportsCounts):
        return []
    from ssa.core.arrays import device_path, to_numpy

    rows = np.concatenate([_rows(seed=15), np.round(_rows(seed=16), 1), _rows(seed=17) * (_rows(seed=18) > 1)])
    rows[3, 5] = np.nan
    rows[7, :] = np.inf
    fails = []
    for groups in (1, 4, 6):
        with np.errstate(all="ignore"):
            labels = _call(sel, rows).astype(np.int64).reshape(-1, groups, rows.shape[1])
        want = [(labels > 0).sum(axis=1), (labels < 0).sum(axis=1) if sel.two_sided else None]
        given: list[tuple[str, Any, Any]] = [("numpy rows", rows.copy(), None)]
        for dev in _torch_devices():
            import torch

            t = torch.tensor(rows, device=dev)
            given += [(f"torch rows on {dev}", t, None),
                      (f"sorted torch rows on {dev}", t, torch.sort(torch.nan_to_num(t, 0.0, 0.0, 0.0), dim=1).values)]
        for what, r, srt in given:
            with np.errstate(all="ignore"), device_path():
                got = sel.count_labels(r, groups, srt)
            for name, g, w in zip(("positive", "negative"), got, want, strict=True):
                if (g is None) != (w is None):
                    fails.append(f"{what}, groups of {groups}: {name} counts are {'missing' if g is None else 'given'}"
                                 f" for a {'two' if sel.two_sided else 'one'}-sided selector")
                elif g is not None and not np.array_equal(np.asarray(to_numpy(g)), w):
                    fails.append(f"{what}, groups of {groups}: {name} counts differ from select()'s labels summed")
    return fails


def _check_sorted_cuts(sel: Selector) -> list[str]:
    """A selector with sorted cuts (:class:`~ssa.core.interfaces.SupportsSortedCuts`) labels every finite row
    exactly as its cuts say: +1 above ``hi``, -1 below ``lo``; the traversal relies on it for rank-1 steps."""
    if not isinstance(sel, SupportsSortedCuts):
        return []
    fails = []
    rng = np.random.default_rng(11)
    for n in (1, 2, 7, 40, 513):  # the positions read may depend on n and the parameters, never on the values
        read = []
        for seed in (20, 21):
            shift = 100.0 if seed == 20 else -100.0  # all positive, then all negative values
            s0 = np.sort(np.random.default_rng(seed).standard_t(2, (6, n)) + shift, axis=1)
            positions: list[int] = []

            def reading(p: int, s0: np.ndarray = s0, positions: list[int] = positions) -> np.ndarray:
                positions.append(int(p))
                return s0[:, p:p + 1]

            sel.sorted_cuts(n, reading)
            read.append(sorted(set(positions)))
        if read[0] != read[1]:
            fails.append(f"sorted_cuts() reads other sorted positions for other values (rows of {n})")
    tied = np.round(_rows(seed=12), 1)  # many ties
    sparse = _rows(seed=13) * (rng.random((24, 40)) < 0.2)  # mostly zeros
    for label, rows in (("heavy-tailed rows", _rows(seed=10)), ("rows with ties", tied), ("sparse rows", sparse),
                        ("one column", rng.standard_normal((24, 1))), ("two columns", rng.standard_normal((24, 2)))):
        s = np.sort(rows, axis=1)

        def column(p: int, s: np.ndarray = s) -> np.ndarray:
            return s[:, p:p + 1]

        hi, lo = sel.sorted_cuts(rows.shape[1], column)
        want = (rows > np.asarray(hi)).astype(np.int8)
        if lo is not None:
            want = want - (rows < np.asarray(lo)).astype(np.int8)
        if not np.array_equal(_call(sel, rows), want):
            fails.append(f"on {label}, select() labels differ from the labels of sorted_cuts()")
    return fails


def _check_searched_cuts(sel: Selector) -> list[str]:
    """A selector with searched cuts labels every finite row exactly as its cuts say (+1 above ``hi``, -1 below
    ``lo``), given the rows only through sorted reads and means of absolute deviations; the traversal counts rank-1
    steps and the other rows by them."""
    if not isinstance(sel, SupportsSearchedCuts):
        return []
    from ssa.core.searched import sorted_reader

    fails = []
    rng = np.random.default_rng(14)
    tied = np.round(_rows(seed=15), 1)
    sparse = _rows(seed=16) * (rng.random((24, 40)) < 0.2)  # mostly zeros: a median absolute deviation of 0
    few = np.zeros((24, 40))
    few[np.arange(24), rng.integers(0, 40, 24)] = rng.standard_normal(24) * 10.0 ** rng.integers(-3, 4, 24)
    for label, rows in (("heavy-tailed rows", _rows(seed=17)), ("rows with ties", tied), ("sparse rows", sparse),
                        ("rows with one value off zero", few), ("constant rows", np.full((6, 9), 2.5)),
                        ("one column", rng.standard_normal((24, 1))), ("two columns", rng.standard_normal((24, 2)))):

        def mean_abs(center: Any, where: Any, rows: np.ndarray = rows) -> Any:
            return np.mean(np.abs(rows - center), axis=1, keepdims=True)

        try:
            hi, lo = sel.searched_cuts(rows.shape[1], sorted_reader(np.sort(rows, axis=1)), mean_abs)
            want = (rows > np.asarray(hi)).astype(np.int8)
            if lo is not None:
                want = want - (rows < np.asarray(lo)).astype(np.int8)
        except Exception as exc:  # noqa: BLE001 - a failing capability is the failure
            fails.append(f"on {label}, searched_cuts() raised {type(exc).__name__}: {exc}")
            continue
        if not np.array_equal(_call(sel, rows), want):
            fails.append(f"on {label}, select() labels differ from the labels of searched_cuts()")
    return fails


def _check_loosen_hint(sel: Selector) -> list[str]:
    """``loosen_hint()`` is None or one line of text: a stop note prints it after "try"."""
    from ssa.core.checks import call_hint
    from ssa.errors import PluginError

    try:
        call_hint(sel, "loosen_hint")
    except PluginError as exc:
        return [str(exc).split("; this is a bug")[0]]
    return []


def _check_sweep(sel: Selector) -> list[str]:
    """``sweep`` is None or (one of the selector's parameters, a non-empty tuple of values it accepts)."""
    sweep = type(sel).sweep
    if sweep is None:
        return []
    if not (isinstance(sweep, tuple) and len(sweep) == 2 and isinstance(sweep[1], tuple) and sweep[1]):
        return [f"sweep must be None or (parameter, (value, ...)), got {sweep!r}"]
    name, values = sweep
    if name not in type(sel).parameters:
        return [f"sweep names {name!r}, which is not one of the parameters {sorted(type(sel).parameters)}"]
    fails = []
    for value in values:
        try:
            type(sel)(**{**sel.params, name: value})
        except Exception as exc:  # noqa: BLE001 - a value the selector refuses is the failure
            fails.append(f"sweep value {name}={value!r} is refused: {exc}")
    return fails


CHECKS: dict[str, Callable[[Selector], list[str]]] = {
    "shape": _check_shape,
    "dtype": _check_dtype,
    "values": _check_values,
    "one_sided": _check_one_sided,
    "two_sided": _check_two_sided,
    "outlier": _check_outlier,
    "determinism": _check_determinism,
    "input_untouched": _check_input_untouched,
    "row_independence": _check_row_independence,
    "ties": _check_ties,
    "constant_rows": _check_constant_rows,
    "all_zero_rows": _check_all_zero_rows,
    "nan_rows": _check_nan_rows,
    "array_libraries": _check_array_libraries,
    "sorted_cuts": _check_sorted_cuts,
    "counts": _check_counts,
    "searched_cuts": _check_searched_cuts,
    "loosen_hint": _check_loosen_hint,
    "sweep": _check_sweep,
}


def check_selector(selector: type[Selector] | Selector, **params: Any) -> list[str]:
    """Run every conformance check against a selector; return the failures (empty list: conforms).

    Parameters
    ----------
    selector : a :class:`~ssa.core.interfaces.Selector` subclass (built with its defaults, or with
        ``params``) or a configured instance.
    params : parameters for the class (ignored for an instance).

    Returns
    -------
    list of one-line failure messages, each prefixed with the check's name and the
    configuration it failed for. An exception raised by ``select`` is reported as a failure.
    """
    if isinstance(selector, type):
        cls = selector
        if not issubclass(cls, Selector):
            return [f"setup: {cls.__name__} is not a subclass of ssa.Selector"]
        try:
            selector = cls(**params)
        except Exception as exc:  # noqa: BLE001 - a broken constructor is a failure too
            return [f"setup: {cls.__name__}(**{params!r}) raised {type(exc).__name__}: {exc}"]
    elif not isinstance(selector, Selector):
        return [f"setup: {selector!r} is not a Selector class or instance"]
    failures: list[str] = []
    if not getattr(type(selector), "name", ""):
        failures.append("setup: the class has no 'name'")
    for inst in _instances(selector):
        for check_name, check in CHECKS.items():
            try:
                msgs = check(inst)
            except Exception as exc:  # noqa: BLE001
                msgs = [f"raised {type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"]
            failures.extend(f"{check_name} [{_label(inst)}]: {m}" for m in msgs)
    return failures


def assert_selector_conforms(selector: type[Selector] | Selector, **params: Any) -> None:
    """pytest-friendly: raise ``AssertionError`` listing every failure of :func:`check_selector`."""
    failures = check_selector(selector, **params)
    if failures:
        name = selector.__name__ if isinstance(selector, type) else type(selector).__name__
        raise AssertionError(f"{name} does not conform ({len(failures)} failure(s)):\n  " + "\n  ".join(failures))
