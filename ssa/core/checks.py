"""Checks of user values and of plugin output, in one place (one-line errors).
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np

from ssa.errors import InvalidInputError, PluginError

__all__ = ['check_closed_form', 'check_int', 'check_stop_at', 'check_device', 'call_selector', 'call_counts',
           'call_rule', 'call_hint', 'check_labels', 'check_label_range', 'first_repeated', 'looks_unscaled',
           'env_switch', 'check_env_switches', 'ENV_SWITCHES']

#: the values an on/off environment switch (``SSA_KEEP_MEMORY``, ``SSA_ROWS_PER_CLASS``, ...) takes, by meaning
SWITCH_OFF, SWITCH_ON = ("0", "off", "no", "false"), ("1", "on", "yes", "true")


def env_switch(name: str) -> bool | None:
    """An on/off environment switch: True (``1``, ``on``, ``yes``, ``true``), False (``0``, ``off``, ``no``,
    ``false``; any case, spaces around ignored), None where it is unset or empty (the caller's default). Any other
    value is refused with one line (a typo such as ``SSA_KEEP_MEMORY=of`` must not silently mean on)."""
    value = os.environ.get(name, "").strip()
    if not value:
        return None
    if value.lower() in SWITCH_ON:
        return True
    if value.lower() in SWITCH_OFF:
        return False
    raise InvalidInputError(f"the environment variable {name}={value!r} is not a switch: set it to 0 (off) or 1 "
                            f"(on), or unset it for the default.")


#: the on/off environment switches of ssa and its backends (docs/device.md, "Memory knobs"; docs/onnx.md)
ENV_SWITCHES = ("SSA_CHANNELS_LAST", "SSA_KEEP_MEMORY", "SSA_PARITY_CACHE", "SSA_ROWS_PER_CLASS")


def check_env_switches() -> None:
    """Refuse a set switch of :data:`ENV_SWITCHES` that is neither on nor off (:func:`env_switch`), before anything
    is loaded: a switch is read where its code runs, which may be late in a run or never for some models."""
    for name in ENV_SWITCHES:
        env_switch(name)


def first_repeated(items: Sequence[Any]) -> Any:
    """The first item of ``items`` that an earlier one equals (hashable items), None when each is there once: what a
    refusal of a name listed twice names."""
    seen: set[Any] = set()
    for item in items:
        if item in seen:
            return item
        seen.add(item)
    return None


def check_int(name: str, value: Any, minimum: int, fix: str = "") -> int:
    """``value`` as an int >= ``minimum`` (bools and floats refused)."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise InvalidInputError(f"{name} must be an integer >= {minimum}, got {value!r}.{(' ' + fix) if fix else ''}")
    if value < minimum:
        raise InvalidInputError(f"{name} must be >= {minimum}, got {value}.{(' ' + fix) if fix else ''}")
    return int(value)


def check_stop_at(stop_at: str | None, taps: Iterable[str]) -> str | None:
    """``stop_at`` when it is None or one of ``taps`` (tap names), else one line listing them."""
    names = list(taps)
    if stop_at is not None and stop_at not in names:
        raise InvalidInputError(f"stop_at {stop_at!r} is not a tap; taps are: {', '.join(names)}.")
    return stop_at


def check_device(device: str) -> str:
    """``"cpu"``, ``"cuda"`` or ``"cuda:N"``, and a GPU when one is asked for."""
    if device == "cpu":  # no torch needed: a backend without torch (ssa.testing.numpy_backend) runs here
        return device
    import torch

    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError):
        raise InvalidInputError(f"device must be 'cpu', 'cuda' or 'cuda:N', got {device!r}.") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise InvalidInputError(f"device {device!r} was asked for but no CUDA GPU is available; use --device cpu.")
    if dev.type not in ("cpu", "cuda"):
        raise InvalidInputError(f"device must be 'cpu' or 'cuda', got {device!r}.")
    return str(dev)


def _plugin_bug(kind: str, obj: Any, what: str, flag: str) -> PluginError:
    origin = type(obj).__module__.split(".")[0]
    return PluginError(f"{kind} {getattr(obj, 'name', type(obj).__name__)!r} (from {origin}) {what}; this is a bug in "
                       f"the {kind} plugin: report it to its author, or choose another {flag} (see `ssa plugins`).")


def call_selector(selector: Any, rows: Any, sorted_rows: Any = None, *, check_values: bool = True) -> Any:
    """``selector.select(rows)``, checked: the same shape as ``rows`` and only -1, 0 or +1 (else a plugin bug).

    ``rows`` may be any array-API array (numpy, torch on any device): a selector that declares
    ``array_api = True`` gets them as they are, any other gets float64 numpy rows (converted here, at
    the boundary). The labels come back as int8 in the rows' own library and device.
    """
    from ssa.core.arrays import asarray_like, namespace, to_numpy

    native = bool(selector.array_api)
    given = rows if native else np.asarray(to_numpy(rows), dtype=np.float64)
    shape = tuple(rows.shape)
    try:
        if sorted_rows is not None and native:
            out = selector.select_sorted(given, sorted_rows)
        else:
            out = selector.select(given)
    except Exception as exc:  # noqa: BLE001 - the plugin's code
        text = str(exc).strip().splitlines()
        raise _plugin_bug("selector", selector, f"raised {type(exc).__name__}"
                          f"{': ' + text[0][:160] if text else ''} on relevance rows of shape {shape}",
                          "--selector") from exc
    if tuple(getattr(out, "shape", ())) != shape:
        raise _plugin_bug("selector", selector, f"returned an array of shape {tuple(getattr(out, 'shape', ()))} for "
                          f"rows of shape {shape} (expected one label per entry)", "--selector")
    xp = namespace(rows)
    if native and namespace(out) is xp:
        if str(out.dtype).split(".")[-1] in ("bool",) or "complex" in str(out.dtype):
            raise _plugin_bug("selector", selector, f"returned dtype {out.dtype} (expected int8 labels -1, 0, +1)",
                              "--selector")
        # ``check_values=False``: the caller counts labels outside {-1, 0, 1} itself (the traversal does, on
        # the device, without waiting for it) and refuses them then
        if not check_values:
            wrong_values = False
        elif isinstance(out, np.ndarray) and out.dtype.kind in "iu":  # integers: two reductions, no mask
            wrong_values = out.size > 0 and bool(out.min() < -1 or out.max() > 1)
        else:
            wrong_values = bool(xp.any((out != 0) & (out != 1) & (out != -1)))
        if wrong_values:
            host = to_numpy(out)
            wrong = host[~np.isin(host, (-1, 0, 1))]
            raise _plugin_bug("selector", selector, f"returned {wrong.reshape(-1)[0].item()!r} (expected only -1, 0 or "
                              f"+1; {wrong.size} entries are something else)", "--selector")
        return out if out.dtype == xp.int8 else xp.astype(out, xp.int8)
    out = np.asarray(to_numpy(out))
    if out.dtype.kind not in "biuf":
        raise _plugin_bug("selector", selector, f"returned dtype {out.dtype} (expected int8 labels -1, 0, +1)",
                          "--selector")
    bad = ~np.isin(out, (-1, 0, 1))
    if bad.any():
        raise _plugin_bug("selector", selector, f"returned {out[bad].reshape(-1)[0].item()!r} (expected only -1, 0 or "
                                                "+1; "
                          f"{int(bad.sum())} entries are something else)", "--selector")
    out = out.astype(np.int8, copy=False)
    return out if isinstance(rows, np.ndarray) else asarray_like(out, rows)


def call_counts(selector: Any, rows: Any, groups: int, sorted_rows: Any = None) -> tuple[Any, Any]:
    """``selector.count_labels(rows, groups, sorted_rows)`` (:class:`~ssa.core.interfaces.SupportsCounts`), checked by
    shape only (on a device its values are not waited for; ``ssa.conformance`` checks them): (n, K) positive counts,
    and (n, K) negative ones exactly when the selector is two-sided (else a plugin bug)."""
    want = (int(rows.shape[0]) // max(int(groups), 1), int(rows.shape[1]))
    try:
        pos, neg = selector.count_labels(rows, groups, sorted_rows)
    except Exception as exc:  # noqa: BLE001 - the plugin's code
        text = str(exc).strip().splitlines()
        raise _plugin_bug("selector", selector, f"raised {type(exc).__name__}{': ' + text[0][:160] if text else ''} "
                          f"in count_labels() on relevance rows of shape {tuple(rows.shape)}", "--selector") from exc
    shapes = [tuple(getattr(c, "shape", ())) for c in (pos, neg) if c is not None]
    if shapes != [want] * (2 if selector.two_sided else 1):
        raise _plugin_bug("selector", selector, f"count_labels() returned counts of shapes {shapes} for rows of shape "
                          f"{tuple(rows.shape)} in groups of {groups} (expected {want}, "
                          f"{'twice' if selector.two_sided else 'and None for the negative ones'})", "--selector")
    return pos, neg


def call_rule(rule: Any, grad: Any, activation: Any) -> Any:
    """``rule.combine(grad, activation)``, checked: a tensor shaped like ``grad`` (else a plugin bug)."""
    try:
        out = rule.combine(grad, activation)
    except Exception as exc:  # noqa: BLE001 - the plugin's code
        text = str(exc).strip().splitlines()
        raise _plugin_bug("rule", rule, f"raised {type(exc).__name__}{': ' + text[0][:160] if text else ''} in "
                          f"combine() on a gradient of shape {tuple(grad.shape)}", "--rule") from exc
    if tuple(getattr(out, "shape", ())) != tuple(grad.shape):
        raise _plugin_bug("rule", rule, f"combine() returned shape {tuple(getattr(out, 'shape', ()))} for a gradient "
                          f"of shape {tuple(grad.shape)} (expected the gradient's shape)", "--rule")
    return out


def call_hint(plugin: Any, method: str) -> str | None:
    """``plugin.<method>()`` (a selector's ``loosen_hint``, a rule's ``stop_hint``), checked: one line of text,
    stripped, or None (else a plugin bug)."""
    kind = getattr(plugin, "kind_label", "plugin")
    try:
        hint = getattr(plugin, method)()
    except Exception as exc:  # noqa: BLE001 - the plugin's code
        text = str(exc).strip().splitlines()
        raise _plugin_bug(kind, plugin, f"raised {type(exc).__name__}{': ' + text[0][:160] if text else ''} in "
                          f"{method}()", f"--{kind}") from exc
    if hint is None:
        return None
    if not isinstance(hint, str) or not hint.strip() or len(hint.strip().splitlines()) != 1:
        raise _plugin_bug(kind, plugin, f"{method}() returned {repr(hint)[:80]} (expected one line of text, or None)",
                          f"--{kind}")
    return hint.strip()


def check_labels(labels: Any, n_images: int, source: str = "labels") -> np.ndarray:
    """Integer class labels, one per image (integral floats are accepted; one-hot rows are refused with a hint)."""
    lab = np.asarray(labels)
    if lab.ndim == 2 and lab.shape[0] == n_images and lab.shape[1] > 1:
        raise InvalidInputError(
            f"{source} has shape {lab.shape}, one row per image: they look one-hot or like scores; pass one "
            "integer class per image, e.g. numpy.save('labels.npy', labels.argmax(axis=1)).")
    lab = lab.reshape(-1)
    if lab.shape[0] != n_images:
        raise InvalidInputError(f"{source} has {lab.shape[0]} entries for {n_images} images; they must match.")
    if lab.dtype == bool or np.issubdtype(lab.dtype, np.integer):
        return lab.astype(np.int64)
    if np.issubdtype(lab.dtype, np.floating):
        if np.isfinite(lab).all() and np.array_equal(lab, np.round(lab)):
            return lab.astype(np.int64)
        bad = lab[~(np.isfinite(lab) & (lab == np.round(lab)))]
        raise InvalidInputError(
            f"{source} must be integer class indices, got {lab.dtype} values such as {float(bad[0])!r}; "
            "save them as integers, e.g. numpy.save('labels.npy', labels.astype(int)).")
    raise InvalidInputError(f"{source} must be integer class indices, got dtype {lab.dtype}; "
                            "save them as integers with numpy.save.")


def check_label_range(labels: np.ndarray | None, n_classes: int, source: str = "labels") -> None:
    """Refuse labels that are not classes of a model with ``n_classes`` logits (negative, or ``n_classes`` and
    above: 1-based labels, another model's classes, -1 for "unlabelled"); such images would be left out of every
    class without a word."""
    if labels is None or labels.size == 0:
        return
    bad = (labels < 0) | (labels >= n_classes)
    if bad.any():
        first = int(np.flatnonzero(bad)[0])
        raise InvalidInputError(
            f"{source} must be classes in [0, {n_classes - 1}] (the model has {n_classes} logits), got "
            f"{int(labels[first])} (image {first}; {int(bad.sum())} of {labels.size} images are outside); pass this "
            "model's class indices (0-based), or drop the images of other classes.")


def looks_unscaled(images: np.ndarray) -> str | None:
    """Why ``images`` look like raw pixels (every value a whole number in [0, 255], some > 1; or in [0, 65535], some
    > 255: 16-bit pixels), or None."""
    if images.size == 0:
        return None
    lo, hi = float(images.min()), float(images.max())
    if lo < 0 or hi <= 1.0 or hi > 65535:
        return None
    sample = images.reshape(-1)[: 1 << 20]
    if not np.array_equal(sample, np.round(sample)):
        return None
    return f"values are whole numbers from {lo:g} to {hi:g}"


def check_closed_form(rule: Any) -> None:
    """Refuse a rule whose ``combine`` differs from the closed form it declares (a plugin bug).

    ``combine`` is tried on small seeded arrays (numpy; torch tensors when the rule needs them) and
    compared with :meth:`ssa.core.interfaces.ClosedForm.combine`. Without this check, ``--engine auto``
    (the closed form) and ``--engine autograd`` (the rule's own ``combine``) would give different graphs.
    """
    form = rule.closed_form
    if form is None:
        return
    rng = np.random.default_rng(0)
    grad = rng.standard_normal((2, 3, 4, 5))
    act = np.abs(rng.standard_normal((3, 4, 5))) + 0.5
    want = form.combine(grad, act[None])
    try:
        got = np.asarray(rule.combine(grad, act[None]), dtype=np.float64)
    except Exception:  # noqa: BLE001 - a rule written for torch tensors only
        try:
            import torch
        except ImportError:  # pragma: no cover - torch comes with the built-in backends
            return
        t = call_rule(rule, torch.from_numpy(grad), torch.from_numpy(act[None]))
        got = t.detach().cpu().double().numpy()
    if got.shape != want.shape or not np.allclose(got, want, rtol=1e-6, atol=1e-12):
        raise _plugin_bug("rule", rule, f"declares closed_form {form.name} but its combine() computes something "
                          "else, so the closed form and autograd would give different graphs; set closed_form to the "
                          "form combine() equals, or to None", "--rule")
