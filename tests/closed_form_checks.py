"""One check shared by the closed-form tests of single ops and small nets: every step by the closed form, each step's
omega equal to autograd's, and the graph equal to the slow reference, for each way the model is loaded."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np

import ssa
from ssa.testing.models import RefTap
from ssa.testing.reference import reference_ssa

from .graph_keys import assert_same_edges, edges_by_order, predicted_class
from .test_fast import _omega_close


def assert_closed_form_equals_reference(model: Any, x: np.ndarray, ref_taps: Sequence[RefTap], rule: str,
                                        sources: Iterable[Any], n_steps: int, kinds: Sequence[str] = ()) -> dict:
    """For each of ``sources`` (the module, an ONNX path, ...): ``n_steps`` steps, all by the closed form (and, per
    entry of ``kinds``, some step whose description names it), each step's omega equal to autograd's
    (:func:`tests.test_fast._omega_close`), and the edges of the predicted class's graph (b = 3, Tukey) equal to
    :func:`~ssa.testing.reference.reference_ssa` of ``model`` over ``ref_taps``. Returns the reference's edges."""
    target = predicted_class(model, x)
    order = {t.name: i for i, t in enumerate(ref_taps)}
    want = reference_ssa(model, x, ref_taps, target, 3, rule)
    want_by_order = {(order[u], n, order[v], k): val for (u, n, v, k), val in want.items()}
    for source in sources:
        net = ssa.load_model(source)
        net.prepare(x)
        steps = net.describe_steps()
        assert len(steps) == n_steps and all(v.startswith("fast") for v in steps.values()), steps
        for kind in kinds:
            assert any(kind in v for v in steps.values()), (kind, steps)
        assert _omega_close(net, x, rule) == n_steps
        res = ssa.analyse(source, x, target, 3, rule=rule, selector="tukey", engine="auto")
        assert_same_edges(edges_by_order(res), want_by_order)
    return want
