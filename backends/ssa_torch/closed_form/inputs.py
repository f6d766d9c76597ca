"""The input side of a closed form: how a layer's input is computed from parent taps (method doc, section 6).

Paths of channel-keeping ops, sums, linear chains and squeeze-excitation gates; see :mod:`.planner`.
"""

from __future__ import annotations

import torch
from torch import fx

from ..kinds import ACTIVATIONS, LAYERS, PERMUTATIONS, POOLING, RESHAPES, SUMS
from .codes import ChannelCodes
from .facts import reason_for
from .linear import LinearOp, NotClosedForm
from .plan import Branch, Gate

__all__ = ["InputSide"]

#: ``zero_insert``: a strided transposed conv's input spread out (``ssa_torch.canon.conv_transpose.ZeroInsert``)
_PATH = POOLING | RESHAPES | PERMUTATIONS | {"identity", "cast", "pad", "getitem", "zero_insert"}
_SHAPE_ONLY_GATE = {"reshape", "flatten", "identity", "getitem", "cast"}


class InputSide(ChannelCodes):
    """:meth:`resolve`: one :class:`~ssa_torch.closed_form.plan.Branch` per way a layer input is computed."""

    def resolve(self, x: fx.Node, op: LinearOp, gate: Gate | None = None) -> list[Branch]:
        """How the input ``x`` of ``op`` is computed from parent taps: one :class:`Branch` per path."""
        while (not self.is_tap(x) and self.kind(x) in ("identity", "cast") and len(self.computed_args(x)) == 1
               and x.args and x.args[0] is self.computed_args(x)[0]):
            x = x.args[0]
        if self.is_tap(x):
            return [self._path_branch(x, op, gate)]
        kind = self.kind(x)
        comp = self.computed_args(x)
        if kind in SUMS and len(comp) >= 2:
            if set(x.kwargs) - {"alpha"} or float(x.kwargs.get("alpha", 1.0)) != 1.0 or len(x.args) != 2:
                raise NotClosedForm("a sum with a scale factor (alpha) before a layer")
            out = self.resolve(x.args[0], op, gate)
            out += self.resolve(x.args[1], op.negated() if kind == "sub" else op, gate)
            return out
        if kind == "mul" and len(comp) == 2:
            if gate is not None:
                raise NotClosedForm("a product of computed tensors inside a gated input")
            g = self._gate(x, op)
            g.outer = op
            return self.resolve(self.nodes[g.data], op, g)
        if kind in LAYERS and x.name in self.computed:
            if gate is not None:
                raise NotClosedForm("a gate on the input of a linear chain")
            inner, inner_x = self.layer_op(x)
            return self.resolve(inner_x, op.compose(inner), gate)
        return [self._path_branch(x, op, gate)]

    def _gate(self, x: fx.Node, op: LinearOp) -> Gate:
        """A squeeze-excitation product: one factor is the data, the other a per-image, per-channel gate."""
        if op.kind != "conv":
            raise NotClosedForm("a product of computed tensors before a dense layer")
        a, b = x.args[0], x.args[1]
        xv = self.value(x)
        for data, g in ((a, b), (b, a)):
            dv, gv = self.value(data), self.value(g)
            if not (isinstance(dv, torch.Tensor) and isinstance(gv, torch.Tensor)) or dv.shape != xv.shape:
                continue
            rank = xv.dim()  # 4: a 2-D map, 5: a 3-D one (video, volume)
            if rank not in (4, 5) or gv.numel() != xv.shape[1] or (gv.dim() == rank and gv.shape[1] != xv.shape[1]):
                continue
            if gv.dim() == rank and any(s != 1 for s in gv.shape[2:]):
                continue
            act = g
            while self.kind(act) in _SHAPE_ONLY_GATE and not self.is_tap(act) and len(self.computed_args(act)) == 1:
                act = self.computed_args(act)[0]
            if self.kind(act) not in ACTIVATIONS or self.is_tap(act) or len(self.computed_args(act)) != 1:
                continue
            u = self.computed_args(act)[0]
            av, uv = self.value(act), self.value(u)
            if not isinstance(av, torch.Tensor) or av.shape != uv.shape or av.numel() != gv.numel():
                raise NotClosedForm("a gate whose activation changes the shape")
            if self.kind(u) not in LAYERS or self.is_tap(u):
                raise NotClosedForm(f"a gate computed by a {self.kind(u)} op (not a layer)")
            inner, inner_x = self.layer_op(u)
            if inner.kind == "conv":
                if not (inner.pointwise() and uv.dim() in (4, 5) and all(s == 1 for s in uv.shape[2:])):
                    raise NotClosedForm("a gate computed by a spatial convolution")
                inner = LinearOp("dense", inner.full_weight().flatten(1), flat=True)
            elif uv.dim() != 2:
                raise NotClosedForm("a gate computed by a dense layer on a spatial map")
            gate = Gate(g.name, act.name, u.name, inner, inner_x.name, data.name)
            gate.branches = self.resolve(inner_x, inner)
            if any(br.gate is not None for br in gate.branches):
                raise NotClosedForm("a gate inside a gate")
            return gate
        raise NotClosedForm("a product of computed tensors that is not a per-channel gate")

    def _max_pool_pad(self, node: fx.Node) -> bool:
        """A constant pad of -inf read by max poolings alone (ONNX's asymmetric pads of a MaxPool): the pooled values
        are those of the unpadded input, each window's maximum one of its elements (a window of padding alone would
        give -inf, which the codes refuse)."""
        mode = node.kwargs.get("mode", node.args[2] if len(node.args) > 2 else "constant")
        value = node.kwargs.get("value", node.args[3] if len(node.args) > 3 else 0.0)
        return (mode == "constant" and isinstance(value, float) and value == float("-inf") and bool(node.users)
                and all(self.kind(u) == "maxpool" and len(self.computed_args(u)) == 1 and u.args[0] is node
                        for u in node.users))

    def _path_branch(self, x: fx.Node, op: LinearOp, gate: Gate | None) -> Branch:
        """The parent taps reached from ``x`` through path ops, and the channel of every input element."""
        parents: list[str] = []
        dag: list[fx.Node] = []
        seen: set[str] = set()
        stack = [x]
        while stack:
            node = stack.pop()
            if node.name in seen:
                continue
            seen.add(node.name)
            if self.is_tap(node):
                parents.append(self.tap_of_node[node.name])
                continue
            if node.op == "placeholder":
                raise NotClosedForm("the input image reaches the layer without a tap (use --include-input)")
            kind = self.kind(node)
            comp = self.computed_args(node)
            if self.affine(node) is None:
                if kind not in _PATH and kind != "cat":
                    raise NotClosedForm(reason_for(kind, "between a layer and its parent tap"))
                if kind != "cat" and len(comp) != 1:
                    raise NotClosedForm("an op with several computed inputs between a layer and its parent tap")
                if kind == "maxpool" and node.op == "call_module" and getattr(self.modules[node.target],
                                                                              "return_indices", False):
                    raise NotClosedForm("max pooling with indices")
                if kind == "pad" and self._zero_pad(node) is None and not self._max_pool_pad(node):
                    raise NotClosedForm("padding that is not zero padding")
            dag.append(node)
            stack.extend(comp)
        if not parents:
            raise NotClosedForm("a layer input computed from no tap")
        dag.sort(key=lambda n: self.order[n.name])
        parents = sorted(set(parents), key=lambda t: self.taps[t].order)
        offsets, total = [], 0
        for p in parents:
            offsets.append(total)
            total += self.taps[p].n_neurons
        chan, scale, shifted = self._decode(parents, offsets, dag, x, op)
        xv = self.value(x)
        return Branch(tuple(parents), tuple(offsets), chan, x.name, tuple(xv.shape[1:]), scale, shifted, op, gate)
