"""The closed form of method doc section 6: exact step relevance from one forward pass.

An open table (:mod:`~ssa_torch.closed_form.registry`) maps op kinds to closed forms; each
builds the :class:`~ssa_torch.closed_form.terms.Term` objects of a step, which say which
per-image statistics to collect and how omega is reconstructed from them. Modules:

* :mod:`.planner` - which steps have a closed form and why the others do not (the output side and
  :func:`plan_closed_form`), built on :mod:`.facts` (op kinds, constants, affine ops, layer operators),
  :mod:`.codes` (channel codes pushed through a path) and :mod:`.inputs` (the input side: paths, sums,
  linear chains, gates); :mod:`.plan` holds what a plan is made of (:class:`TapForm`, :class:`Branch`, ...);
* :mod:`.linear` - conv / dense operators and their composition (linear chains);
* :mod:`.conv`, :mod:`.dense`, :mod:`.identity`, :mod:`.gate` - the built-in terms and forms;
* :mod:`.collect` - the one forward pass that records the statistics;
* :mod:`.registry` - :func:`register_closed_form` and the ``ssa_register_closed_forms`` hook.

The public names are re-exported here; ``docs/plugins.md`` shows a plugin adding a closed form.
"""

from __future__ import annotations

from . import conv, dense, gate, identity  # noqa: F401  (register the built-in forms)
from .collect import StatsInterpreter
from .conv import ConvTerm
from .dense import DenseTerm
from .gate import GateTerm
from .identity import IdentityTerm
from .linear import LinearOp, NotClosedForm
from .planner import (
    FORMS,
    Branch,
    ClosedFormPlan,
    Gate,
    Planner,
    TapForm,
    plan_closed_form,
)
from .registry import (
    ClosedForm,
    closed_forms,
    form_for,
    register_closed_form,
    unregister_closed_form,
)
from .terms import Term, as_tensor, chunks, scatter_channels

__all__ = [
    "ClosedForm", "Term", "register_closed_form", "unregister_closed_form", "closed_forms", "form_for",
    "plan_closed_form", "ClosedFormPlan", "TapForm", "Planner", "Branch", "Gate", "LinearOp", "NotClosedForm",
    "ConvTerm", "DenseTerm", "IdentityTerm", "GateTerm", "StatsInterpreter", "FORMS", "as_tensor", "chunks",
    "scatter_channels",
]
