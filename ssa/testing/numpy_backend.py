"""An example backend written with numpy only: a two-layer network (3x3 conv, ReLU, dense logits).

It is the smallest complete backend, for backend authors to read and copy, and the proof that ssa's core
runs without torch: every method of :class:`~ssa.core.interfaces.Network` is implemented here by hand
(the forward pass, the taps under cut semantics, the relevance of each step with the rule's ``combine``),
with the ablation capability (:class:`~ssa.core.capabilities.SupportsAblation`) and one-line errors for bad
input. The backend kit (:mod:`ssa.testing.backends`) checks it like the torch and ONNX backends, and the
suite checks that its graphs equal the torch backend's on the same weights.

The model (method doc, sections 3 and 4)::

    input x (B, C0, H, W) -> conv 3x3, valid, stride 1 (z) -> ReLU: tap "relu" (B, C1, H-2, W-2)
                          -> flatten -> dense: tap "logits" (B, n_classes)

Taps: ``relu`` (parents: none, or ``input`` with ``include_input=True``) and ``logits`` (parent ``relu``);
with ``include_input`` the input's channels are a tap too. Under cut semantics the tap values are free
variables, so the step ``logits -> relu`` differentiates the dense layer alone (its gradient is the weight,
on every image), and the step ``relu -> input`` the conv and the ReLU (the mask ``z > 0``).

It is a plugin like any other: this module implements ``ssa_register_backends``. A distribution would name
it in its ``ssa`` entry points (``docs/plugins.md``); ssa's tests register it with the plugin manager.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

from ssa.core.checks import call_rule
from ssa.core.interfaces import Backend, Network, Rule, Tap
from ssa.errors import InvalidInputError, ModelLoadError
from ssa.hookspecs import hookimpl

__all__ = ["TwoLayerModel", "NumpyNetwork", "NumpyAblator", "NumpyBackend", "ssa_register_backends"]

_KEYS = ("conv_w", "conv_b", "fc_w", "fc_b")


class TwoLayerModel:
    """The weights: ``conv_w`` (C1, C0, 3, 3), ``conv_b`` (C1,), ``fc_w`` (n_classes, C1 * P), ``fc_b``."""

    def __init__(self, conv_w: Any, conv_b: Any, fc_w: Any, fc_b: Any) -> None:
        self.conv_w, self.conv_b, self.fc_w, self.fc_b = (np.asarray(a, dtype=np.float64)
                                                          for a in (conv_w, conv_b, fc_w, fc_b))
        c1 = self.conv_w.shape[0] if self.conv_w.ndim == 4 else -1
        if c1 < 1 or self.conv_b.shape != (c1,) or self.fc_w.ndim != 2 or self.fc_b.shape != self.fc_w.shape[:1] \
                or self.fc_w.shape[1] % c1:
            raise ModelLoadError(f"two-layer weights of shapes {[a.shape for a in self.arrays().values()]} do not fit "
                                 "together; expected conv_w (C1, C0, kh, kw), conv_b (C1,), fc_w (n, C1 * positions), "
                                 "fc_b (n,).")

    @classmethod
    def random(cls, seed: int = 0, in_channels: int = 8, channels: int = 12, size: int = 6,
               n_classes: int = 5) -> TwoLayerModel:
        """Seeded weights, heavy-tailed (a log-normal scale per pair of channels) so that graphs are not trivial."""
        rng = np.random.default_rng(seed)
        positions = (size - 2) ** 2

        def weight(shape: tuple[int, ...], fan_in: int) -> np.ndarray:
            scale = np.exp(rng.standard_normal(shape[:2])).reshape(shape[:2] + (1,) * (len(shape) - 2))
            return (rng.standard_normal(shape) * scale / np.sqrt(fan_in)).astype(np.float32)

        return cls(weight((channels, in_channels, 3, 3), in_channels * 9),
                   (0.1 + 0.1 * rng.standard_normal(channels)).astype(np.float32),
                   weight((n_classes, channels, positions), channels * positions).reshape(n_classes, -1),
                   (0.1 + 0.1 * rng.standard_normal(n_classes)).astype(np.float32))

    def arrays(self) -> dict[str, np.ndarray]:
        return dict(zip(_KEYS, (self.conv_w, self.conv_b, self.fc_w, self.fc_b), strict=True))

    @classmethod
    def load(cls, path: str | os.PathLike) -> TwoLayerModel:
        """Read an ``.npz`` file with the four arrays (``numpy.savez(path, **model.arrays())``)."""
        try:
            with np.load(os.fspath(path), allow_pickle=False) as data:
                missing = [k for k in _KEYS if k not in data]
                if missing:
                    raise ModelLoadError(f"model file {os.fspath(path)!r} lacks the arrays {', '.join(missing)}; "
                                         f"expected {', '.join(_KEYS)}.")
                return cls(*(data[k] for k in _KEYS))
        except (OSError, ValueError) as exc:
            if isinstance(exc, ModelLoadError):
                raise
            raise ModelLoadError(f"cannot read model file {os.fspath(path)!r} ({type(exc).__name__}); expected an "
                                 ".npz file written by numpy.savez.") from None


class NumpyNetwork(Network):
    """The :class:`~ssa.core.interfaces.Network` of a :class:`TwoLayerModel`; arrays are float64 numpy."""

    def __init__(self, model: TwoLayerModel, *, name: str = "numpy-two-layer", include_input: bool = False) -> None:
        self.model = model
        self.name = name
        self.include_input = bool(include_input)
        self._taps: tuple[Tap, ...] = ()
        self._input_shape: tuple[int, ...] | None = None

    # -- taps ---------------------------------------------------------------------------------------------
    def prepare(self, example: np.ndarray) -> tuple[Tap, ...]:
        x = self._check_batch(example, prepared=False)
        c1, kh, kw = self.model.conv_w.shape[0], *self.model.conv_w.shape[2:]
        hidden = (c1, x.shape[2] - kh + 1, x.shape[3] - kw + 1)
        if hidden[1] < 1 or hidden[2] < 1 or c1 * hidden[1] * hidden[2] != self.model.fc_w.shape[1]:
            raise InvalidInputError(f"images of shape {tuple(x.shape[1:])} do not fit the model (its dense layer "
                                    f"reads {self.model.fc_w.shape[1]} values); pass images of the size it was built "
                                    "for.")
        lowest: tuple[str, ...] = ()
        taps = []
        if self.include_input:
            taps.append(Tap("input", 0, "input", tuple(x.shape[1:]), 1, (), "input"))
            lowest = ("input",)
        taps.append(Tap("relu", len(taps), "activation", hidden, 1, lowest, "ReLU"))
        taps.append(Tap("logits", len(taps), "logits", (self.model.fc_w.shape[0],), 1, ("relu",), "Dense"))
        self._taps, self._input_shape = tuple(taps), tuple(x.shape[1:])
        return self._taps

    @property
    def taps(self) -> tuple[Tap, ...]:
        return self._taps

    def tap(self, name: str) -> Tap:
        for t in self._taps:
            if t.name == name:
                return t
        raise InvalidInputError(f"unknown tap {name!r}; taps are: {', '.join(t.name for t in self._taps)}.")

    def _check_batch(self, batch: Any, prepared: bool = True) -> np.ndarray:
        x = np.asarray(batch, dtype=np.float64)
        c0 = self.model.conv_w.shape[1]
        if x.ndim != 4 or x.shape[1] != c0:
            raise InvalidInputError(f"images must have shape (B, {c0}, H, W), got {tuple(x.shape)}; pass images with "
                                    f"{c0} channels first.")
        if prepared and self._input_shape is None:
            raise InvalidInputError("the network is not prepared; call prepare(images) first.")
        if prepared and tuple(x.shape[1:]) != self._input_shape:
            raise InvalidInputError(f"images of shape {tuple(x.shape[1:])}, but the network was prepared for "
                                    f"{self._input_shape}; pass images of one shape.")
        return x

    # -- forward pass -----------------------------------------------------------------------------------------
    def _forward(self, x: np.ndarray, ablate: Mapping[str, tuple[np.ndarray, np.ndarray]] | None = None
                 ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """``(x, z, h, logits)``; ``ablate[tap] = (mask, fill)`` replaces masked channels of ``input`` or ``relu``."""
        m = self.model
        if ablate and "input" in ablate:
            mask, fill = ablate["input"]
            x = np.where(mask, fill, x)
        windows = sliding_window_view(x, m.conv_w.shape[2:], axis=(2, 3))  # (B, C0, H', W', kh, kw)
        z = np.einsum("bcyxij,ocij->boyx", windows, m.conv_w, optimize=True) + m.conv_b[None, :, None, None]
        h = np.maximum(z, 0.0)
        if ablate and "relu" in ablate:
            mask, fill = ablate["relu"]
            h = np.where(mask, fill, h)
        return x, z, h, h.reshape(h.shape[0], -1) @ m.fc_w.T + m.fc_b

    def _scalars(self, x: np.ndarray, h: np.ndarray, logits: np.ndarray) -> dict[str, np.ndarray]:
        out = {"relu": h.mean(axis=(2, 3)), "logits": logits}
        if self.include_input:
            out["input"] = x.mean(axis=(2, 3))
        return out

    def logits(self, batch: np.ndarray) -> np.ndarray:
        return self._forward(self._check_batch(batch))[3]

    def tap_scalars(self, batch: np.ndarray) -> dict[str, np.ndarray]:
        x, _, h, logits = self._forward(self._check_batch(batch))
        return self._scalars(x, h, logits)

    # -- relevance (method doc, sections 3 and 4): gradients written out, the rule combines ---------------------
    def step_relevance(self, batch: np.ndarray, upper: str, neurons: Sequence[int], rule: Rule
                       ) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
        tap = self.tap(upper)
        x, z, h, logits = self._forward(self._check_batch(batch))
        scalars = self._scalars(x, h, logits)
        idx = _indices(neurons, tap)
        if not tap.parents or idx.size == 0:
            return {}, scalars
        n, B = idx.size, x.shape[0]
        if upper == "logits":  # d logit_n / d h = the dense weights of n, on every image (h is a cut leaf)
            grad = np.broadcast_to(self.model.fc_w[idx].reshape(n, 1, *h.shape[1:]), (n, B, *h.shape[1:]))
            parent, act = "relu", h
        else:  # relu -> input: d mean_p relu(z[n, p]) / d x = the conv's transpose of the mask (z > 0) / P
            mask = (z[:, idx] > 0).astype(np.float64) / (z.shape[2] * z.shape[3])  # (B, n, H', W')
            grad = np.zeros((n, *x.shape))
            kh, kw = self.model.conv_w.shape[2:]
            for i in range(kh):
                for j in range(kw):
                    grad[:, :, :, i:i + z.shape[2], j:j + z.shape[3]] += np.einsum(
                        "bnyx,nc->nbcyx", mask, self.model.conv_w[idx, :, i, j])
            parent, act = "input", x
        combined = call_rule(rule, grad, act[None])
        return {parent: combined.reshape(n, B, act.shape[1], -1).mean(axis=3)}, scalars

    # -- identity ------------------------------------------------------------------------------------------
    def model_hash(self) -> str:
        digest = hashlib.sha256()
        for key, a in self.model.arrays().items():
            digest.update(f"{key}{a.shape}".encode())
            digest.update(np.ascontiguousarray(a).tobytes())
        return digest.hexdigest()[:16]

    def fingerprint(self) -> str:
        return hashlib.sha256(f"{self.model_hash()}{self._taps}".encode()).hexdigest()[:16]

    def weight_arrays(self) -> list[np.ndarray]:
        return list(self.model.arrays().values())

    # -- capability: ablation (ssa.core.capabilities.SupportsAblation) ------------------------------------------
    def ablator(self, batch_size: int = 256) -> NumpyAblator:
        return NumpyAblator(self)


class NumpyAblator:
    """Class logits with chosen channels of ``input`` or ``relu`` set to 0 (``"zero"``) or to their mean map."""

    def __init__(self, network: NumpyNetwork) -> None:
        self.network = network
        self.means: dict[str, np.ndarray] = {}

    def fit_means(self, images: np.ndarray, taps: Sequence[str]) -> None:
        x, _, h, _ = self.network._forward(self.network._check_batch(images))
        values = {"input": x, "relu": h}
        self.means = {t: values[self._ablatable(t)].mean(axis=0) for t in taps}

    def _ablatable(self, tap: str) -> str:
        if self.network.tap(tap).kind == "logits":
            raise InvalidInputError("the logits tap cannot be ablated; ablate the taps below it.")
        return tap

    def logits(self, images: np.ndarray, ablate: Mapping[str, np.ndarray], mode: str = "zero") -> np.ndarray:
        if mode not in ("zero", "mean"):
            raise InvalidInputError(f"ablation must be 'zero' or 'mean', got {mode!r}.")
        edits = {}
        for tap, neurons in ablate.items():
            info = self.network.tap(self._ablatable(tap))
            mask = np.zeros((1, info.n_neurons) + (1,) * (len(info.shape) - 1), dtype=bool)
            mask[0, _indices(neurons, info)] = True
            if mode == "mean" and tap not in self.means:
                raise InvalidInputError(f"no mean map for tap {tap!r}; call fit_means() with the taps first.")
            edits[tap] = (mask, self.means[tap][None] if mode == "mean" else np.zeros(1))
        return self.network._forward(self.network._check_batch(images), edits)[3]


def _indices(neurons: Any, tap: Tap) -> np.ndarray:
    idx = np.asarray(neurons, dtype=np.int64).reshape(-1)
    if idx.size and (idx.min() < 0 or idx.max() >= tap.n_neurons):
        raise InvalidInputError(f"neurons of tap {tap.name!r} must be in [0, {tap.n_neurons - 1}], got "
                                f"{idx.tolist()}.")
    return idx


class NumpyBackend(Backend):
    """A :class:`TwoLayerModel`, or an ``.npz`` file of its four arrays."""

    name = "numpy_example"
    description = "example: a two-layer conv network written with numpy only (ssa.testing.numpy_backend)"
    priority = 30  # asked before the torch backend, which takes any path that is not .onnx

    @classmethod
    def can_load(cls, source: Any) -> bool:
        if isinstance(source, TwoLayerModel):
            return True
        return isinstance(source, (str, os.PathLike)) and os.fspath(source).lower().endswith(".npz")

    def load(self, source: Any, *, device: str = "cpu", name: str | None = None, include_input: bool = False,
             taps: Sequence[str] | None = None, channel_axes: Mapping[str, int] | None = None,
             output_index: int | None = None, **options: Any) -> NumpyNetwork:
        if str(device) != "cpu":
            raise InvalidInputError(f"the numpy_example backend runs on the CPU only, got device {device!r}; use "
                                    "--device cpu.")
        fixed = {"taps": taps, "channel_axes": channel_axes, "output_index": output_index, **options}
        given = sorted(k for k, v in fixed.items() if v is not None)
        if given:
            raise InvalidInputError(f"the numpy_example backend has fixed taps and takes no {', '.join(given)}; "
                                    "leave them out.")
        if isinstance(source, TwoLayerModel):
            model = source
        elif self.can_load(source):
            if not os.path.isfile(source):
                raise ModelLoadError(f"model file {os.fspath(source)!r} does not exist; check the path.")
            model = TwoLayerModel.load(source)
        else:
            raise ModelLoadError(f"the numpy_example backend loads a TwoLayerModel or an .npz file, got "
                                 f"{type(source).__name__}.")
        return NumpyNetwork(model, name=name or "numpy-two-layer", include_input=include_input)


@hookimpl
def ssa_register_backends(register: Any) -> None:
    register(NumpyBackend)
