"""Array-API plumbing of the core (numpy, torch, cupy, ... through ``array-api-compat``).

The traversal, the selectors and the statistics work on the backend's own arrays, on the
backend's device (``xp = namespace(x)`` at the entry of a function, ``xp.*`` inside); only
small results come back to the host with :func:`to_numpy`.

Quantiles are computed exactly as :func:`numpy.percentile` does with its default ``linear``
method (Hyndman & Fan's 7th method): the same virtual index, computed on the host in float64,
the same neighbours of a sorted row and the same two-sided interpolation formula, each
operation a separate, correctly rounded elementwise kernel (no fused multiply-add). So a
quantile on a GPU is bit-identical to numpy's, and so are the outlier labels compared to it.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
from array_api_compat import array_namespace, is_numpy_namespace, is_torch_namespace
from array_api_compat import device as _device

__all__ = ["namespace", "host_view", "all_finite", "to_numpy", "device_of", "asarray_like", "is_numpy",
           "quantile_sorted", "median_sorted", "percentile_rows", "zeros", "take_rows"]

Array = Any


def namespace(*arrays: Array) -> Any:
    """The array-API namespace of ``arrays`` (numpy arrays and Python scalars give numpy's)."""
    arrs = [a for a in arrays if a is not None and not isinstance(a, (int, float, bool))]
    if not arrs:
        return array_namespace(np.zeros(0))
    return array_namespace(*arrs)


def is_numpy(xp: Any) -> bool:
    return bool(is_numpy_namespace(xp))


def device_of(x: Array) -> Any:
    return _device(x)


def to_numpy(x: Array) -> np.ndarray:
    """A host numpy copy (or view) of any array-API array."""
    if isinstance(x, np.ndarray):
        return x
    xp = array_namespace(x)
    if is_torch_namespace(xp):
        host: np.ndarray = x.detach().cpu().numpy()
        return host
    return np.asarray(x)


def host_view(x: Array) -> Array:
    """``x`` itself, or a zero-copy numpy view when ``x`` is a torch tensor in host memory.

    On the CPU numpy's kernels (SIMD sorting, reductions) are several times faster than
    torch's for the traversal's work, and a CPU tensor and its numpy view share memory: the
    work stays where the data lives.
    """
    if isinstance(x, np.ndarray):
        return x
    xp = array_namespace(x)
    if is_torch_namespace(xp) and x.device.type == "cpu" and not x.requires_grad:
        return x.numpy()
    return x


def all_finite(x: Array) -> bool:
    """Whether every value of ``x`` is finite (numpy's kernel for host tensors: much faster than torch's)."""
    v = host_view(x)
    xp = array_namespace(v)
    return bool(xp.all(xp.isfinite(v)))


def asarray_like(values: Any, like: Array, dtype: Any = None) -> Array:
    """``values`` as an array of ``like``'s namespace, on ``like``'s device."""
    xp = array_namespace(like)
    if is_torch_namespace(xp):
        import torch

        t = torch.as_tensor(np.asarray(values) if isinstance(values, np.ndarray) else values)
        return t.to(device=like.device, dtype=dtype if dtype is not None else t.dtype)
    return xp.asarray(values, dtype=dtype, device=_device(like))


def zeros(xp: Any, shape: tuple[int, ...], dtype: Any, like: Array) -> Array:
    return xp.zeros(shape, dtype=dtype, device=_device(like))


def take_rows(x: Array, index: Any) -> Array:
    """``x[index]`` along the first axis for an integer index (a list, numpy or backend array)."""
    xp = array_namespace(x)
    idx = asarray_like(np.asarray(index, dtype=np.int64), x, dtype=None)
    return xp.take(x, idx, axis=0)


def _lerp(xp: Any, a: Array, b: Array, t: float) -> Array:
    """numpy's ``_lerp``: ``a + (b - a) * t``, or ``b - (b - a) * (1 - t)`` for ``t >= 0.5``."""
    diff = b - a
    if t >= 0.5:
        return b - diff * (1.0 - t)
    return a + diff * t


def quantile_sorted(sorted_rows: Array, q: float) -> Array:
    """The ``q``-th percentile (0 <= q <= 100) of each row of an ascending-sorted (R, K) array.

    Bit-identical to ``numpy.percentile(rows, q, axis=1, keepdims=True)`` (method "linear"):
    the virtual index ``(K - 1) * (q / 100)`` is computed on the host in float64 as numpy does,
    and the interpolation uses numpy's formula with one rounding per operation.
    """
    xp = array_namespace(sorted_rows)
    K = int(sorted_rows.shape[1])
    if K == 0:
        raise ValueError("quantile of an empty row")
    frac = float(np.true_divide(np.float64(q), 100))
    vi = float(np.float64(K - 1) * np.float64(frac))
    if vi >= K - 1 or vi < 0:  # numpy takes the last (first) value as it is
        i = K - 1 if vi >= K - 1 else 0
        return sorted_rows[:, i:i + 1]
    lo = int(math.floor(vi))
    gamma = float(np.float64(vi) - np.float64(lo))
    return _lerp(xp, sorted_rows[:, lo:lo + 1], sorted_rows[:, lo + 1:lo + 2], gamma)


def percentile_rows(rows: Array, qs: tuple[float, ...]) -> list[Array]:
    """Several percentiles of every row (one sort), each (R, 1); see :func:`quantile_sorted`."""
    xp = array_namespace(rows)
    s = xp.sort(rows, axis=1)
    return [quantile_sorted(s, q) for q in qs]


def median_sorted(sorted_rows: Array) -> Array:
    """``numpy.median(rows, axis=1, keepdims=True)`` of ascending-sorted rows, bit for bit."""
    K = int(sorted_rows.shape[1])
    if K % 2:
        return sorted_rows[:, K // 2:K // 2 + 1]
    return (sorted_rows[:, K // 2 - 1:K // 2] + sorted_rows[:, K // 2:K // 2 + 1]) / 2.0
