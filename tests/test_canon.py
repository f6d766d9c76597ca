"""Each canonicalisation pass alone: the graph computes the same outputs before and after, on random
inputs and several batch sizes, and the pass made the rewrite it exists for."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from ssa_torch.canon import (
    CollapsePermutes,
    DropIdentities,
    FoldAffine,
    LayersAsModules,
    OutOfPlace,
    ResolveShapes,
    canonicalize,
)
from ssa_torch.kinds import node_kind
from torch import fx


def _run_pass(module: nn.Module, shape: tuple[int, ...], passes, *, export: bool = False, protect=()):
    torch.manual_seed(0)
    module = module.eval()
    x = torch.randn(2, *shape)
    if export:
        batch = torch.export.Dim("batch", min=1, max=64)
        gm = torch.export.export(module, (x,), dynamic_shapes={"x": {0: batch}}).module()
    else:
        gm = fx.symbolic_trace(module)
    before = copy.deepcopy(gm)
    report = canonicalize(gm, x, passes, protect=protect)
    for b in (1, 3, 5):
        xb = torch.randn(b, *shape)
        with torch.no_grad():
            torch.testing.assert_close(gm(xb), before(xb), rtol=1e-5, atol=1e-5)
    return gm, report


def _kinds(gm: fx.GraphModule) -> list[str]:
    modules = dict(gm.named_modules())
    return [node_kind(n, modules) for n in gm.graph.nodes]


def _targets(gm: fx.GraphModule) -> list:
    return [n.target for n in gm.graph.nodes if n.op in ("call_function", "call_method")]


class InPlace(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.relu = nn.ReLU(inplace=True)

    def forward(self, x):
        y = self.conv(x)
        z = y.clone()
        z += 1.0
        w = F.relu(z, inplace=True)
        v = self.relu(w * 2)
        v.mul_(0.5)  # result unused: later uses of v must see the product
        return v + x.mean(1, keepdim=True).relu_()


def test_out_of_place():
    gm, report = _run_pass(InPlace(), (3, 6, 6), [OutOfPlace()])
    assert report.total() >= 4
    names = [getattr(t, "__name__", str(t)) for t in _targets(gm)]
    assert not any(n.endswith("_") and not n.startswith("_") for n in names), names
    assert all(n.kwargs.get("inplace") is not True for n in gm.graph.nodes)
    assert not any(getattr(m, "inplace", False) for m in gm.modules())


class Identities(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3)
        self.drop = nn.Dropout(0.5)
        self.ident = nn.Identity()

    def forward(self, x):
        y = self.ident(self.drop(self.conv(x))).contiguous()
        y = y.to(torch.float32).float()
        z = y.to(torch.float64).to(torch.float32)  # a real round trip: the first cast stays
        return F.dropout(z, 0.3, training=False) + y


def test_drop_identities_and_no_op_casts():
    gm, report = _run_pass(Identities(), (3, 6, 6), [DropIdentities()])
    kinds = _kinds(gm)
    assert "identity" not in kinds
    assert kinds.count("cast") == 2  # to(float64) and the cast back are real conversions
    assert report.by_pass()["drop-identities"] == 6


class Permutes(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)

    def forward(self, x):  # x: NHWC
        y = self.conv(x.permute(0, 3, 1, 2)).permute(0, 2, 3, 1)
        y = torch.relu(y).permute(0, 3, 1, 2).permute(0, 2, 3, 1)  # a pair that undoes itself
        return y.permute(0, 3, 1, 2).transpose(2, 3)  # composed into one permutation


def test_collapse_permutes():
    gm, report = _run_pass(Permutes(), (6, 5, 3), [CollapsePermutes()])
    kinds = _kinds(gm)
    assert kinds.count("permute") + kinds.count("transpose") == 3, kinds
    assert report.total() == 2


class ComputedShapes(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3)
        self.fc = nn.Linear(4 * 4 * 4, 5)

    def forward(self, x):
        y = torch.relu(self.conv(x))
        flat = y.view(y.size(0), -1)
        also = torch.reshape(y, (y.shape[0], 4, -1))
        return self.fc(flat) + also.sum((1, 2))[:, None]


def test_resolve_shapes():
    gm, report = _run_pass(ComputedShapes(), (3, 6, 6), [ResolveShapes()])
    assert report.total() == 2
    assert "meta" not in _kinds(gm)  # size() / shape are gone
    targets = _targets(gm)
    assert torch.flatten in targets and torch.reshape in targets


class Functional(nn.Module):
    def __init__(self):
        super().__init__()
        g = torch.Generator().manual_seed(1)
        self.register_buffer("w1", torch.randn(4, 3, 3, 3, generator=g))
        self.register_buffer("b1", torch.randn(4, generator=g))
        self.register_buffer("w2", torch.randn(64, 6, generator=g))
        self.register_buffer("w3", torch.randn(5, 6, generator=g))

    def forward(self, x):
        y = torch.relu(F.conv2d(x, self.w1, self.b1, stride=1, padding=1))
        y = torch.flatten(F.max_pool2d(y, 2), 1) @ self.w2
        return F.linear(torch.relu(y), self.w3)


def test_layers_as_modules():
    gm, report = _run_pass(Functional(), (3, 8, 8), [LayersAsModules()])
    assert report.total() == 3
    modules = dict(gm.named_modules())
    layers = [type(modules[n.target]).__name__ for n in gm.graph.nodes if n.op == "call_module"]
    assert layers == ["Conv2d", "Linear", "Linear"]


class ConvBN(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 6, 3, padding=1, bias=False)
        self.bn = nn.BatchNorm2d(6)
        self.conv2 = nn.Conv2d(6, 4, 3, padding=1)
        g = torch.Generator().manual_seed(2)
        with torch.no_grad():
            self.bn.running_mean.normal_(generator=g)
            self.bn.running_var.uniform_(0.5, 2.0, generator=g)
            self.bn.weight.uniform_(-1.5, 1.5, generator=g)
            self.bn.bias.normal_(generator=g)
        self.register_buffer("mean", torch.randn(1, 6, 1, 1, generator=g))
        self.register_buffer("scale", torch.rand(6, 1, 1, generator=g) + 0.5)
        self.register_buffer("shift", torch.randn(6, 1, 1, generator=g))

    def forward(self, x):
        y = torch.relu(self.bn(self.conv(x)))
        return self.conv2(((y - self.mean) * self.scale + self.shift) / 2.0)  # padded conv: the shifts stay


class ChannelsLastBN(nn.Module):
    """Caffe-style: Transposes around the conv, batch-norm as Sub / Mul / Add on the NHWC channel axis."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 6, 3, padding=1)
        g = torch.Generator().manual_seed(3)
        self.register_buffer("mean", torch.randn(6, generator=g))
        self.register_buffer("scale", torch.rand(6, generator=g) + 0.5)
        self.register_buffer("shift", torch.randn(6, generator=g))
        self.fc = nn.Linear(6, 5)
        self.register_buffer("s2", torch.rand(6, generator=g) + 0.5)
        self.register_buffer("t2", torch.randn(6, generator=g))

    def forward(self, x):  # NHWC
        y = self.conv(x.permute(0, 3, 1, 2)).permute(0, 2, 3, 1)
        y = torch.relu((y - self.mean) * self.scale + self.shift)
        return self.fc(y.mean((1, 2)) * self.s2 + self.t2)  # Keras dense batch-norm: folded into the dense layer


def test_fold_affine_after_and_before_layers():
    gm, report = _run_pass(ConvBN(), (3, 6, 6), [FoldAffine()])
    kinds = _kinds(gm)
    assert "batchnorm" not in kinds and kinds.count("mul") == 0 and kinds.count("div") == 0
    assert kinds.count("sub") + kinds.count("add") == 1  # one shift stays before the padded conv: s * (x + t / s)
    gm, _ = _run_pass(ChannelsLastBN(), (6, 6, 3), [FoldAffine()])
    kinds = _kinds(gm)
    assert not {"sub", "mul", "add"} & set(kinds), kinds


def test_fold_affine_on_an_exported_program():
    """torch.export writes batch-norm as aten's no-training batch-norm and a getitem."""
    gm, report = _run_pass(ConvBN(), (3, 6, 6), [LayersAsModules(), FoldAffine()], export=True)
    assert "batchnorm" not in _kinds(gm) and report.by_pass()["fold-affine"] >= 2


def test_protected_nodes_keep_their_value():
    """A node named as a tap is neither removed nor changed (here: the batch-norm output)."""
    gm, report = _run_pass(ConvBN(), (3, 6, 6), [FoldAffine()], protect=("bn",))
    assert "batchnorm" in _kinds(gm)


def test_a_shared_conv_is_not_changed_for_its_other_calls():
    class Shared(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(3, 3, 1)
            self.register_buffer("s", torch.tensor([1.0, 2.0, 3.0]).reshape(1, 3, 1, 1))

        def forward(self, x):
            return self.conv(x) * self.s + self.conv(x * 2)

    gm, report = _run_pass(Shared(), (3, 4, 4), [FoldAffine()])
    assert report.total() == 2  # both multiplications folded, each into its own copy of the conv


@pytest.mark.parametrize("build", [InPlace, Identities, Permutes, ComputedShapes, Functional, ConvBN, ChannelsLastBN])
def test_default_passes_together(build):
    from ssa_torch.canon import DEFAULT_PASSES

    shape = (6, 5, 3) if build is Permutes else (6, 6, 3) if build is ChannelsLastBN else \
        (3, 8, 8) if build is Functional else (3, 6, 6)
    _run_pass(build(), shape, DEFAULT_PASSES)
