"""What a closed-form plan holds: per tap, its terms; per refused tap, the reason (method doc, section 6).

:class:`~ssa_torch.closed_form.planner.Planner` builds these; :mod:`.planner` re-exports them.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from .linear import LinearOp
from .terms import Term

__all__ = ["Branch", "Gate", "TapForm", "ClosedFormPlan", "FORMS"]

FORMS = ("gradient", "gradient_x_activation")


@dataclass
class Gate:
    """A squeeze-excitation product ``data * gate`` at a layer's input (the gate: one value per image and channel).

    node : the gate value multiplied in. act : the gate activation (sigmoid, hard-sigmoid, ...).
    u : the activation's input, the output of ``inner`` (a dense layer or a 1x1 conv on a 1x1 map).
    x : the input of ``inner``. data : the other factor. branches : how ``x`` is computed from taps.
    """

    node: str
    act: str
    u: str
    inner: LinearOp
    x: str
    data: str
    outer: LinearOp | None = None  # the layer the gated product enters
    branches: list[Branch] = field(default_factory=list)


@dataclass
class Branch:
    """One way a (possibly composed) layer's input is computed from parent taps.

    parents : the parent taps, in tap order. chan : per layer input channel (conv) or feature (dense),
    the parent code (parent i's channel k is ``offsets[i] + k``; -1: no parent). x : the fx node whose
    value enters ``op`` (times ``gate`` when there is one). x_shape : its per-image shape.
    scale : per input element, the sum over parent positions of d(input)/d(parent) (None: 1 everywhere).
    shifted : a constant shift lies between the parents and x (``gradient_x_activation`` does not hold).
    """

    parents: tuple[str, ...]
    offsets: tuple[int, ...]
    chan: torch.Tensor
    x: str
    x_shape: tuple[int, ...]
    scale: torch.Tensor | None
    shifted: bool
    op: LinearOp
    gate: Gate | None = None

    def channels_of(self, parent: str) -> torch.Tensor:
        """``chan`` for one parent: its channel, -1 elsewhere."""
        i = self.parents.index(parent)
        lo = self.offsets[i]
        hi = self.offsets[i + 1] if i + 1 < len(self.offsets) else None
        mine = (self.chan >= lo) & ((self.chan < hi) if hi is not None else torch.ones_like(self.chan,
                                                                                            dtype=torch.bool))
        return torch.where(mine, self.chan - lo, torch.full_like(self.chan, -1))


@dataclass
class TapForm:
    """The closed form of one upper tap: its terms (one or more per parent)."""

    tap: str
    act_node: str | None  # the activation's fx node (None for the logits)
    z_node: str  # the activation's input (the logits node itself for the logits)
    terms: list[Term]
    segment: tuple[str, ...] = ()  # the ops between the heads and z (run with autograd during collection)

    @property
    def forms(self) -> tuple[str, ...]:
        have = set(FORMS)
        for t in self.terms:
            have &= set(t.forms)
        return tuple(f for f in FORMS if f in have)

    @property
    def heads(self) -> tuple[str, ...]:
        return tuple(dict.fromkeys(t.head for t in self.terms))


@dataclass
class ClosedFormPlan:
    taps: dict[str, TapForm] = field(default_factory=dict)
    reasons: dict[str, str] = field(default_factory=dict)  # tap -> why it falls back to autograd

    def covers(self, tap: str, form: str | None = None) -> bool:
        return tap in self.taps and (form is None or form in self.taps[tap].forms)
