"""Any classifier (issue 19, method doc section 4b): ConvNeXt, DeiT and Swin through the module API and ONNX.

Tap discovery must find, on its own, every GELU's output and the residual stream after every block, with
tokens aggregated as positions; the graphs must equal the slow reference (taps by hand, one autograd call
per upper neuron and image, additions cut by a torch function mode) under both rules, and the ONNX exports
(opset 17: GELU as the erf pattern; opset 20: a Gelu op) must analyse to the same taps and graph.
"""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

import ssa
from ssa.errors import UnsupportedModelError
from ssa.testing.reference import reference_ssa

from . import any_models as am
from . import onnx_models as om
from .graph_keys import assert_same_edges, edges_by_order, parents_by_order, predicted_class

pytest.importorskip("timm")

N_IMAGES = 8
BRANCHING = 2
RULES = ("gradient", "gradient_x_activation")


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    root = tmp_path_factory.mktemp("any_classifier")
    out = {}
    for family in am.FAMILIES:
        model = am.build(family)
        x = am.images(2)
        for opset in (17, 20):
            out[family, opset] = om.export(model, x, root / f"{family}_{opset}.onnx", opset=opset)
    return out


@pytest.mark.parametrize("family", sorted(am.FAMILIES))
def test_taps_are_the_gelus_and_the_streams(family):
    net = ssa.load_model(am.build(family))
    taps = net.prepare(am.images(2))
    ref = am.reference_taps(family)
    want = [(i, t.channel_axis, tuple(sorted(j for j, p in enumerate(ref) if p.name in t.parents)))
            for i, t in enumerate(ref)]
    assert parents_by_order(taps) == want
    kinds = [t.kind for t in taps]
    assert kinds == ["stream" if r.op == "add" else ("logits" if r.name == "logits" else "activation") for r in ref]


@pytest.mark.parametrize("rule", RULES)
@pytest.mark.parametrize("family", sorted(am.FAMILIES))
def test_graph_equals_the_reference(family, rule):
    model = am.build(family)
    x = am.images(N_IMAGES)
    target = predicted_class(model, x)
    res = ssa.analyse(model, x, target, BRANCHING, rule=rule, selector="tukey")
    ref_taps = am.reference_taps(family)
    want_named = reference_ssa(model, x, ref_taps, target, BRANCHING, rule)
    order = {t.name: i for i, t in enumerate(ref_taps)}
    want = {(order[u], n, order[v], k): val for (u, n, v, k), val in want_named.items()}
    assert_same_edges(edges_by_order(res), want)
    assert res.graph.number_of_nodes() >= 6, res.graph.number_of_nodes()


@pytest.mark.parametrize("opset", (17, 20))
@pytest.mark.parametrize("family", sorted(am.FAMILIES))
def test_onnx_export_gives_the_module_graph(family, opset, exported):
    model = am.build(family)
    x = am.images(N_IMAGES)
    target = predicted_class(model, x)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        got = ssa.analyse(str(exported[family, opset]), x, target, BRANCHING, rule="gradient", selector="tukey")
    want = ssa.analyse(model, x, target, BRANCHING, rule="gradient", selector="tukey")
    assert parents_by_order(got.taps) == parents_by_order(want.taps)
    assert [t.op for t in got.taps if t.kind == "activation"] == ["GELU"] * sum(t.kind == "activation"
                                                                                for t in got.taps)
    assert_same_edges(edges_by_order(got), edges_by_order(want))


# --- GELU and Mish written out: one activation each -----------------------------------------------------------


class _Written(nn.Module):
    def __init__(self, form: str) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.form = form
        self.fc1, self.fc2, self.fc3 = nn.Linear(12, 16), nn.Linear(16, 16), nn.Linear(16, 5)

    def act(self, x: torch.Tensor) -> torch.Tensor:
        if self.form == "erf":
            return x * 0.5 * (1.0 + torch.erf(x / 1.4142135623730951))
        if self.form == "tanh":
            return 0.5 * x * (1.0 + torch.tanh(0.7978845608028654 * (x + 0.044715 * torch.pow(x, 3))))
        return x * torch.tanh(F.softplus(x))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc3(self.act(self.fc2(self.act(self.fc1(x.flatten(1))))))


@pytest.mark.parametrize("form, op", [("erf", "GELU"), ("tanh", "GELU"), ("mish", "Mish")])
def test_activations_written_out_are_one_tap_each(form, op):
    model = _Written(form).eval()
    x = np.random.default_rng(0).standard_normal((6, 12)).astype(np.float32)
    net = ssa.load_model(model)
    taps = net.prepare(x)
    assert [t.op for t in taps] == [op, op, "Linear"]
    assert [t.parents for t in taps][1:] == [(taps[0].name,), (taps[1].name,)]
    interp = net.run(x, grad=False)  # the fused graph computes what the module computes
    np.testing.assert_allclose(interp.raw["logits"].numpy(), model(torch.from_numpy(x)).detach().numpy(),
                               rtol=1e-5, atol=1e-6)


def test_a_model_without_taps_is_refused():
    model = nn.Sequential(nn.Flatten(), nn.Linear(12, 4), nn.LayerNorm(4), nn.Linear(4, 3))
    with pytest.raises(UnsupportedModelError, match="no taps below the logits"):
        ssa.load_model(model).prepare(np.zeros((2, 12), np.float32))


# --- timm:NAME and torchvision:NAME ----------------------------------------------------------------------------


def test_zoo_sources_build_random_or_local_weights(tmp_path):
    import timm

    torch.manual_seed(3)
    trained = timm.create_model("convnext_atto", pretrained=False, num_classes=1000).eval()
    torch.save(trained.state_dict(), tmp_path / "w.pth")
    x = am.images(2, size=32)
    loaded = ssa.load_model("timm:convnext_atto", weights=str(tmp_path / "w.pth"))
    loaded.prepare(x)
    with torch.no_grad():
        want = trained(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(loaded.logits(x), want, rtol=1e-5, atol=1e-5)
    random = ssa.load_model("timm:convnext_atto")
    random.prepare(x)
    assert not np.allclose(random.logits(x), want)  # random weights, nothing downloaded
    net = ssa.load_model("torchvision:resnet18")
    assert len(net.prepare(x)) == 18  # 17 ReLU calls and the logits, as for the module itself


# --- ShuffleNetV2: the channel split by the closed form, through ONNX and as a module ---------------------------


@pytest.mark.slow
def test_shufflenet_channel_split_takes_the_closed_form(tmp_path):
    import torchvision

    torch.manual_seed(0)
    model = om.heavy_tail_(torchvision.models.shufflenet_v2_x0_5(num_classes=10), 2)
    x = am.images(6, size=48)
    path = om.export(model, x, tmp_path / "shufflenet.onnx")
    target = predicted_class(model, x)
    results = {}
    for source in (model, str(path)):
        net = ssa.load_model(source)
        net.prepare(x)
        steps = net.describe_steps()
        fast = sum(v.startswith("fast") for v in steps.values())
        assert fast >= 0.9 * len(steps), net.closed_form_summary()
        results[type(source).__name__] = ssa.analyse(source, x, target, 2, engine="auto", rule="gradient",
                                                     selector="tukey")
    auto = ssa.analyse(model, x, target, 2, engine="autograd", rule="gradient", selector="tukey")
    assert_same_edges(edges_by_order(results["ShuffleNetV2"]), edges_by_order(auto))
    assert_same_edges(edges_by_order(results["str"]), edges_by_order(auto))
    assert results["str"].graph.number_of_nodes() >= 10


# --- 1-D networks: Conv1d and its poolings by the closed form (as 2-D ops on a height-1 image) -----------------


def _conv1d_net() -> nn.Module:
    torch.manual_seed(0)
    m = nn.Sequential(nn.Conv1d(3, 8, 5, padding=2), nn.BatchNorm1d(8), nn.ReLU(), nn.MaxPool1d(2),
                      nn.Conv1d(8, 16, 3, padding=1, dilation=1, stride=2), nn.ReLU(), nn.AvgPool1d(2),
                      nn.Conv1d(16, 16, 3, padding=2, dilation=2, groups=2), nn.ReLU(),
                      nn.AdaptiveAvgPool1d(1), nn.Flatten(), nn.Linear(16, 12), nn.ReLU(), nn.Linear(12, 5))
    return om.heavy_tail_(m, 4, sigma=2.0)


@pytest.mark.parametrize("rule", RULES)
def test_conv1d_net_by_the_closed_form_equals_the_reference(rule, tmp_path):
    from ssa.testing.models import RefTap

    model = _conv1d_net()
    x = np.random.default_rng(1).standard_normal((16, 3, 32)).astype(np.float32)
    target = predicted_class(model, x)
    ref_taps = (RefTap("2", "2"), RefTap("5", "5", 0, 1, ("2",)), RefTap("8", "8", 0, 1, ("5",)),
                RefTap("12", "12", 0, 1, ("8",)), RefTap("logits", "13", 0, 1, ("12",)))
    want = reference_ssa(model, x, ref_taps, target, BRANCHING, rule)
    order = {t.name: i for i, t in enumerate(ref_taps)}
    want_by_order = {(order[u], n, order[v], k): val for (u, n, v, k), val in want.items()}
    path = om.export(model, x, tmp_path / "conv1d.onnx")
    for source in (model, str(path)):
        net = ssa.load_model(source)
        net.prepare(x)
        assert all(v.startswith("fast") for v in net.describe_steps().values()), net.describe_steps()
        res = ssa.analyse(source, x, target, BRANCHING, rule=rule, selector="tukey", engine="auto")
        assert_same_edges(edges_by_order(res), want_by_order)
    assert len(want) >= 6


def test_a_conversion_that_fails_at_run_time_names_the_onnx_node(exported, monkeypatch):
    import ssa_onnx.convert

    # without the LayerNormalization repair, onnx2torch's module fails on Swin's computed shapes
    monkeypatch.setattr(ssa_onnx.convert, "repair_layer_norms", lambda gm: 0)
    with pytest.raises(UnsupportedModelError, match=r"fails at ONNX node '[^']*LayerNormalization' \(LayerNorm\): "
                                                    r"Expected weight to be of same shape as normalized_shape"):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            ssa.load_model(str(exported["swin", 17])).prepare(am.images(2))


# --- every pointwise nonlinearity is a tap, however the exporter writes it ---------------------------------------

_ACTIVATIONS = (nn.ReLU(), nn.GELU(), nn.GELU(approximate="tanh"), nn.SiLU(), nn.Hardswish(), nn.Mish(), nn.ELU(),
                nn.SELU(), nn.LeakyReLU(0.1), nn.ReLU6(), nn.Softplus(), nn.CELU())


@pytest.mark.parametrize("opset", (12, 17, 20))
def test_every_activation_is_a_tap_through_onnx(opset, tmp_path):
    layers: list[nn.Module] = []
    for i, act in enumerate(_ACTIVATIONS):
        layers += [nn.Conv2d(3 if i == 0 else 6, 6, 3, padding=1), act]
    torch.manual_seed(0)
    model = nn.Sequential(*layers, nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(6, 4)).eval()
    x = np.random.default_rng(0).uniform(0, 1, (4, 3, 8, 8)).astype(np.float32)
    module_taps = ssa.load_model(model).prepare(x)
    onnx_taps = ssa.load_model(str(om.export(model, x, tmp_path / "acts.onnx", opset=opset))).prepare(x)
    # opsets before 14 write HardSwish as x * HardSigmoid(x); SiLU is x * Sigmoid(x) at every opset
    written = {"SiLU": "swish", **({"Hardswish": "hardswish"} if opset < 14 else {})}
    assert [t.op for t in onnx_taps] == [written.get(t.op, t.op) for t in module_taps]
    assert [t.op for t in module_taps] == ["ReLU", "GELU", "GELU", "SiLU", "Hardswish", "Mish", "ELU", "SELU",
                                           "LeakyReLU", "ReLU6", "Softplus", "CELU", "Linear"]
    assert parents_by_order(onnx_taps) == parents_by_order(module_taps)
