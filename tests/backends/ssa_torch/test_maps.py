"""Input maps of the PyTorch backend (ssa_torch.maps, the SupportsInputMaps capability) against plain torch.

The reference runs the user's own module with a forward hook on the tap's module and takes one
backward pass per neuron and image: the slow, obvious computation. The batched maps (every
(image, neuron) combination from one forward pass; rows that each carry their own neuron) must
equal it, on every small model of ssa.testing and on an ONNX export.
"""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
import torch

import ssa
from ssa.core.capabilities import PairMaps, SupportsInputMaps
from ssa.errors import InvalidInputError
from ssa.testing.models import ALL_CASES, plain_cnn
from tests import onnx_models as om
from tests import zoo_models as zm

RTOL, ATOL = 1e-4, 1e-6


def _tap_value(model: torch.nn.Module, ref, x: torch.Tensor) -> torch.Tensor:
    """The value of a hand-written tap (``ref``: its module and which call of it) when ``model`` runs on ``x``."""
    seen: list[torch.Tensor] = []
    handle = model.get_submodule(ref.module).register_forward_hook(lambda m, i, o: seen.append(o))
    try:
        model(x)
    finally:
        handle.remove()
    return seen[ref.call].movedim(ref.channel_axis, 1)  # channels on axis 1


def _reference(model, ref, image: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray | None, np.ndarray | None]:
    """One image, one neuron: (saliency, gradient of the strongest position, map), by plain torch."""
    x = torch.from_numpy(image[None]).requires_grad_(True)
    v = _tap_value(model, ref, x)[0, k]
    (sal,) = torch.autograd.grad(v.mean(), x, retain_graph=True)
    if v.dim() == 0:
        return sal[0].numpy(), None, None
    (peak,) = torch.autograd.grad(v.reshape(-1).max(), x)
    return sal[0].numpy(), peak[0].numpy(), v.detach().numpy()


def _prepared(case, n: int = 6):
    model = case.build().eval()
    x = case.images(n)
    net = ssa.load_model(model)
    net.prepare(x)
    return model, net, x


@pytest.mark.parametrize("case", ALL_CASES, ids=[c.name for c in ALL_CASES])
def test_pair_maps_equal_one_image_and_neuron_at_a_time(case):
    model, net, x = _prepared(case)
    assert isinstance(net, SupportsInputMaps)
    rng = np.random.default_rng(0)
    by_name = {t.name: t for t in net.taps}
    for ref in case.taps:
        tap = by_name[ref.name]
        rows = rng.integers(0, len(x), size=7)
        ks = rng.integers(0, tap.n_neurons, size=7)
        ks[1] = ks[0]  # the same neuron on two images, and one image with two neurons
        rows[2] = rows[0]
        got = net.pair_maps(x[rows], ref.name, ks, batch_size=3)  # batches split the rows
        assert isinstance(got, PairMaps) and got.saliency.shape == x[rows].shape
        for i, (r, k) in enumerate(zip(rows, ks, strict=False)):
            sal, peak, amap = _reference(model, ref, x[r], int(k))
            np.testing.assert_allclose(got.saliency[i], sal, rtol=RTOL, atol=ATOL, err_msg=f"{ref.name}:{k}")
            if peak is None:
                assert got.peak_gradient is None and got.activations is None
            else:
                np.testing.assert_allclose(got.peak_gradient[i], peak, rtol=RTOL, atol=ATOL)
                np.testing.assert_allclose(got.activations[i], amap, rtol=RTOL, atol=ATOL)
        assert np.abs(got.saliency).sum() > 0  # a real test: the gradients are not all zero


@pytest.mark.parametrize("batched", [True, False], ids=["batched-backward", "one-backward-per-neuron"])
def test_saliency_and_activation_maps_of_many_neurons_equal_one_at_a_time(batched):
    model, net, x = _prepared(plain_cnn, 5)
    net._maps_batched_ok = batched  # False: the fallback for ops without a batching rule
    for ref in plain_cnn.taps:
        tap = next(t for t in net.taps if t.name == ref.name)
        ks = [0, tap.n_neurons - 1, 1]
        sal = net.saliency(x, ref.name, ks, batch_size=2)
        assert sal.shape == (len(x), len(ks), *x.shape[1:])
        spatial = len(tap.shape) >= 2
        maps = net.activation_maps(x, ref.name, ks, batch_size=2) if spatial else None
        for b in range(len(x)):
            for j, k in enumerate(ks):
                s, _, m = _reference(model, ref, x[b], k)
                np.testing.assert_allclose(sal[b, j], s, rtol=RTOL, atol=ATOL, err_msg=f"{ref.name}:{k} image {b}")
                if spatial:
                    np.testing.assert_allclose(maps[b, j], m, rtol=RTOL, atol=ATOL)
    assert net._maps_batched_ok is batched  # plain ops batch: the fallback was not needed


def test_input_maps_refuse_bad_requests():
    _, net, x = _prepared(plain_cnn, 3)
    dense = next(t for t in net.taps if len(t.shape) == 1)
    conv = next(t for t in net.taps if len(t.shape) >= 2)
    with pytest.raises(InvalidInputError, match="unknown tap"):
        net.saliency(x, "nope", [0])
    with pytest.raises(InvalidInputError, match=r"neuron must be in \[0, "):
        net.saliency(x, conv.name, [conv.n_neurons])
    with pytest.raises(InvalidInputError, match="dense layer"):
        net.activation_maps(x, dense.name, [0])
    with pytest.raises(InvalidInputError, match="one neuron per image"):
        net.pair_maps(x, conv.name, [0])


def test_the_onnx_backend_has_input_maps_through_the_torch_network(tmp_path):
    model = om.vgg_style()
    x = om.images((3, 8, 8), 6)
    onnx_net = ssa.load_model(str(om.export(model, x, tmp_path / "vgg.onnx")))
    onnx_net.prepare(x)
    torch_net = ssa.load_model(model)
    torch_net.prepare(x)
    assert isinstance(onnx_net, SupportsInputMaps)
    ks = [0, 3, 5]  # of the logits: the same tap name in both backends
    a = onnx_net.saliency(x, "logits", ks)
    b = torch_net.saliency(x, "logits", ks)
    assert np.abs(b).sum() > 0
    np.testing.assert_allclose(a, b, rtol=1e-3, atol=1e-5)


@pytest.mark.parametrize("tokens", ["all", "cls"])
def test_a_class_token_neuron_has_the_class_tokens_maps(tokens):
    """With tokens="cls" a token tap's neuron is its channel at the class token: the saliency (pair_maps' and
    saliency()'s) and the strongest position's gradient are those of that value; with "all", of the mean."""
    model = zm.build("vit").eval()
    x = zm.images("vit", 3)
    net = ssa.load_model(model, tokens=tokens)
    net.prepare(x)
    tap = "encoder.layers.encoder_layer_0.mlp.1"  # a GELU, (T, C): channels last
    ks = np.array([3, 7, 3])
    got = net.pair_maps(x, tap, ks, batch_size=2)
    sal = net.saliency(x, tap, [3, 7], batch_size=2)
    for i, k in enumerate(ks):
        xi = torch.from_numpy(x[i:i + 1]).requires_grad_(True)
        v = _tap_value(model, SimpleNamespace(module=tap, call=0, channel_axis=2), xi)[0, k]  # (T,)
        (want,) = torch.autograd.grad(v[0] if tokens == "cls" else v.mean(), xi, retain_graph=True)
        (peak,) = torch.autograd.grad(v[0] if tokens == "cls" else v.max(), xi)
        np.testing.assert_allclose(got.saliency[i], want[0].numpy(), rtol=RTOL, atol=ATOL, err_msg=f"{tokens}:{k}")
        np.testing.assert_allclose(sal[i, 0 if k == 3 else 1], want[0].numpy(), rtol=RTOL, atol=ATOL)
        np.testing.assert_allclose(got.peak_gradient[i], peak[0].numpy(), rtol=RTOL, atol=ATOL)
        # the heat: the 4 x 4 patch tokens (the class token, position 0, dropped), row-major
        np.testing.assert_allclose(got.activations[i], v.detach().numpy()[1:].reshape(4, 4), rtol=RTOL, atol=ATOL)


def _timm_vit_with_registers() -> torch.nn.Module:
    timm_vit = pytest.importorskip("timm.models.vision_transformer")
    torch.manual_seed(0)  # a class token, then 4 register tokens, then the 4 x 4 patches: T = 21
    return timm_vit.VisionTransformer(img_size=32, patch_size=8, embed_dim=16, depth=1, num_heads=2, mlp_ratio=2,
                                      num_classes=5, reg_tokens=4).eval()


@pytest.mark.parametrize("family", ["torchvision", "timm-registers"])
def test_a_token_neurons_map_is_its_patch_grid(family):
    """A token tap's map (activation_maps, pair_maps' activations) is its patch tokens' values reshaped row-major to
    the g x g patch grid: the class token (and register tokens) dropped; the scalars still see every token."""
    if family == "torchvision":
        model, x = zm.build("vit").eval(), zm.images("vit", 3)
        tap, skip, g = "encoder.layers.encoder_layer_0.mlp.1", 1, 4  # 64 px, 16 px patches: T = 1 + 4 * 4
    else:
        model = _timm_vit_with_registers()
        x = np.random.default_rng(0).uniform(0, 1, (3, 3, 32, 32)).astype(np.float32)
        tap, skip, g = "blocks.0.mlp.act", 5, 4
    net = ssa.load_model(model)
    net.prepare(x)
    t = next(t for t in net.taps if t.name == tap)
    assert t.shape[0] == skip + g * g
    ks = [3, 7]
    maps = net.activation_maps(x, tap, ks, batch_size=2)
    pm = net.pair_maps(x, tap, [3, 7, 3], batch_size=2)
    assert maps.shape == (3, 2, g, g) and pm.activations.shape == (3, g, g)
    for i in range(len(x)):
        with torch.no_grad():
            v = _tap_value(model, SimpleNamespace(module=tap, call=0, channel_axis=2), torch.from_numpy(x[i:i + 1]))
        for j, k in enumerate(ks):
            tokens = v[0, k].numpy()  # (T,): the neuron's value at every token
            want = np.array([[tokens[skip + r * g + c] for c in range(g)] for r in range(g)])  # row r, column c
            np.testing.assert_allclose(maps[i, j], want, rtol=RTOL, atol=ATOL, err_msg=f"{family} {k} image {i}")
            if (i, k) in ((0, 3), (1, 7), (2, 3)):
                np.testing.assert_allclose(pm.activations[i], want, rtol=RTOL, atol=ATOL)
        assert not np.allclose(maps[i, 0], v[0, 3].numpy()[:g * g].reshape(g, g))  # the leading tokens are dropped


def test_token_grid_keeps_other_token_counts_as_a_row():
    from ssa_torch.maps import token_grid

    def tap(shape, axis):
        return SimpleNamespace(shape=shape, channel_axis=axis)

    assert token_grid(tap((197, 768), 2)) == (1, 14)  # class token + 14 x 14
    assert token_grid(tap((198, 768), 2)) == (2, 14)  # class + distillation tokens
    assert token_grid(tap((201, 768), 2)) == (5, 14)  # class + 4 registers
    assert token_grid(tap((196 + 9, 768), 2)) is None  # 9 leading tokens: not a patch grid
    assert token_grid(tap((50, 8), 1)) is None  # a 1-D conv (C, L): channels first
    assert token_grid(tap((8, 7, 7), 1)) is None and token_grid(tap((10,), 1)) is None
