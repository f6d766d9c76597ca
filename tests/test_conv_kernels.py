"""The default rule's per-image kernels (issue 20, item 1) against the unfold form they replace.

``conv_input_relevance`` computes A[b, n, c] = sum_p m[b, n, p] sum_delta W[n, c, delta] x[b, c, p + delta]
with the framework's backward-weight convolution (images folded into groups) or, for 1x1 convolutions, a
batched matrix product. The reference below is the unfold + batched matmul form the engine used before,
written out as it was. In float64 the two agree to rounding (1e-12 relative to the largest value); in
float32 (the statistics' dtype) to float32 rounding of sums over a few thousand products (1e-5).
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from ssa_torch.closed_form import conv as conv_mod
from ssa_torch.closed_form.conv import KERNELS, choose_kernel, conv_input_relevance
from ssa_torch.closed_form.linear import LinearOp

import ssa
from ssa.testing.models import ALL_CASES


def unfold_reference(op: LinearOp, m: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """The unfold form: im2col of the (padded) input, one batched matrix product, times W summed over offsets."""
    n, cg, kh, kw = op.weight.shape
    g = op.groups
    B = m.shape[0]
    w = op.weight.to(m.dtype).reshape(g, n // g, cg * kh * kw)
    top, bottom, left, right = op.pad
    xb = x.to(m.dtype)
    if any(op.pad):
        xb = F.pad(xb, (left, right, top, bottom))
    xu = F.unfold(xb, (kh, kw), dilation=op.dilation, stride=op.stride).reshape(B, g, cg * kh * kw, -1)
    a = torch.matmul(m.reshape(B, g, n // g, -1), xu.transpose(-1, -2))
    return (a * w).reshape(B, n, cg, kh * kw).sum(-1)


def plain_loop(op: LinearOp, m: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """The definition, one image, output channel and offset at a time (float64)."""
    n, cg, kh, kw = op.weight.shape
    top, bottom, left, right = op.pad
    xp = F.pad(x.double(), (left, right, top, bottom))
    out = torch.zeros((m.shape[0], n, cg), dtype=torch.float64)
    ho, wo = m.shape[2:]
    for j in range(n):
        c0 = (j // (n // op.groups)) * cg
        for dy in range(kh):
            for dx in range(kw):
                y0, x0 = dy * op.dilation[0], dx * op.dilation[1]
                win = xp[:, c0:c0 + cg, y0:y0 + op.stride[0] * (ho - 1) + 1:op.stride[0],
                         x0:x0 + op.stride[1] * (wo - 1) + 1:op.stride[1]]  # (B, cg, ho, wo)
                out[:, j] += (win * m[:, j:j + 1].double()).sum((2, 3)) * op.weight[j, :, dy, dx].double()
    return out


# (in channels, out channels, kernel, stride, padding (top, bottom, left, right), dilation, groups, size)
CASES = {
    "3x3": (4, 6, (3, 3), (1, 1), (1, 1, 1, 1), (1, 1), 1, (9, 9)),
    "3x3 stride 2": (4, 6, (3, 3), (2, 2), (1, 1, 1, 1), (1, 1), 1, (10, 11)),
    "7x7 stride 2 pad 3": (3, 5, (7, 7), (2, 2), (3, 3, 3, 3), (1, 1), 1, (16, 16)),
    "dilated": (4, 4, (3, 3), (1, 1), (2, 2, 2, 2), (2, 2), 1, (9, 9)),
    "groups": (6, 9, (3, 3), (1, 1), (1, 1, 1, 1), (1, 1), 3, (8, 8)),
    "depthwise stride 2": (5, 5, (3, 3), (2, 2), (1, 1, 1, 1), (1, 1), 5, (9, 9)),
    "depthwise x2": (4, 8, (5, 5), (1, 1), (2, 2, 2, 2), (1, 1), 4, (7, 7)),
    "asymmetric pad (absorbed)": (3, 4, (3, 3), (2, 2), (0, 1, 1, 0), (1, 1), 1, (8, 9)),
    "asymmetric pad, stride 1": (3, 4, (3, 3), (1, 1), (0, 1, 1, 0), (1, 1), 1, (8, 9)),
    "rectangular, dilated, stride 1": (3, 4, (2, 3), (1, 1), (1, 0, 2, 2), (2, 2), 1, (7, 10)),
    "rectangular": (3, 4, (1, 3), (1, 2), (0, 0, 1, 1), (1, 1), 1, (6, 9)),
    "1x1": (8, 6, (1, 1), (1, 1), (0, 0, 0, 0), (1, 1), 1, (7, 7)),
    "1x1 stride 2": (8, 6, (1, 1), (2, 2), (0, 0, 0, 0), (1, 1), 1, (7, 8)),
    "1x1 groups": (8, 6, (1, 1), (1, 1), (0, 0, 0, 0), (1, 1), 2, (5, 5)),
    "1x1 padded": (3, 4, (1, 1), (1, 1), (1, 1, 1, 1), (1, 1), 1, (5, 5)),
}


def _case(name: str, dtype: torch.dtype, batch: int = 5):
    c, n, k, stride, pad, dil, groups, size = CASES[name]
    gen = torch.Generator().manual_seed(len(name))
    op = LinearOp("conv", torch.randn((n, c // groups, *k), generator=gen, dtype=torch.float64).to(dtype),
                  groups=groups, stride=stride, dilation=dil, pad=pad)
    x = torch.randn((batch, c, *size), generator=gen, dtype=torch.float64).to(dtype)
    top, bottom, left, right = pad
    xp = F.pad(x, (left, right, top, bottom))
    out = F.conv2d(xp, op.weight, stride=stride, dilation=dil, groups=groups)
    m = torch.randn(out.shape, generator=gen, dtype=torch.float64).to(dtype)
    return op, m, x


@pytest.mark.parametrize("name", sorted(CASES))
def test_kernel_equals_the_unfold_form_in_float64(name):
    op, m, x = _case(name, torch.float64)
    got = conv_input_relevance(op, m, x)
    ref = unfold_reference(op, m, x)
    assert got.shape == ref.shape and got.dtype == torch.float64
    torch.testing.assert_close(got, ref, rtol=1e-12, atol=1e-12 * float(ref.abs().max()))
    torch.testing.assert_close(got, plain_loop(op, m, x), rtol=1e-12, atol=1e-12 * float(ref.abs().max()))


@pytest.mark.parametrize("name", sorted(CASES))
def test_kernel_equals_the_unfold_form_in_float32(name):
    op, m, x = _case(name, torch.float32)
    got = conv_input_relevance(op, m, x)
    ref = unfold_reference(op, m, x)
    assert got.dtype == torch.float32
    torch.testing.assert_close(got, ref, rtol=1e-5, atol=1e-5 * float(ref.abs().max()))


@pytest.mark.parametrize("name", ["3x3 stride 2", "depthwise stride 2", "1x1 stride 2", "asymmetric pad (absorbed)"])
def test_chunks_of_one_image_give_the_same_values(name, monkeypatch):
    """A budget below one image's weight gradients: one image per chunk, bit for bit the same values."""
    op, m, x = _case(name, torch.float64, batch=4)
    whole = conv_input_relevance(op, m, x)
    monkeypatch.setattr(conv_mod, "KERNEL_BYTES", 1)
    torch.testing.assert_close(conv_input_relevance(op, m, x), whole, rtol=0, atol=0)


@pytest.mark.parametrize("name", ["3x3", "3x3 stride 2", "7x7 stride 2 pad 3", "dilated", "groups",
                                  "depthwise stride 2", "asymmetric pad (absorbed)", "1x1 stride 2"])
def test_an_images_values_do_not_depend_on_the_batch(name):
    """Per-class statistics must round as the shared ones do (tests/test_session_statistics.py): an image's
    values are the same bits alone, in a batch of two and in a batch of nine, in float32."""
    op, m, x = _case(name, torch.float32, batch=9)
    whole = conv_input_relevance(op, m, x)
    for lo, hi in [(3, 4), (0, 2), (4, 9)]:
        torch.testing.assert_close(conv_input_relevance(op, m[lo:hi], x[lo:hi]), whole[lo:hi], rtol=0, atol=0)


PER_OFFSET = {  # few output positions, many weights: the per-offset form (conv.py: _per_offset)
    "wide, 3x3 on 2x2": (40, 6, (3, 3), (1, 1), (1, 1, 1, 1), (1, 1), 1, (2, 2)),
    "wide, stride 2, asymmetric pad": (30, 4, (3, 3), (2, 2), (0, 1, 1, 0), (1, 1), 1, (4, 5)),
    "wide, dilated, groups": (36, 6, (3, 3), (1, 1), (2, 2, 2, 2), (2, 2), 2, (3, 3)),
}


@pytest.mark.parametrize("name", sorted(PER_OFFSET))
def test_the_per_offset_form_equals_the_unfold_form(name, monkeypatch):
    monkeypatch.setitem(CASES, name, PER_OFFSET[name])
    op, m, x = _case(name, torch.float64)
    assert 2 * m.shape[2] * m.shape[3] < op.weight.shape[1] * op.weight.shape[2] * op.weight.shape[3]
    got = conv_input_relevance(op, m, x)
    ref = unfold_reference(op, m, x)
    torch.testing.assert_close(got, ref, rtol=1e-12, atol=1e-12 * float(ref.abs().max()))
    torch.testing.assert_close(got, plain_loop(op, m, x), rtol=1e-12, atol=1e-12 * float(ref.abs().max()))
    op, m, x = _case(name, torch.float32, batch=9)
    whole = conv_input_relevance(op, m, x)
    torch.testing.assert_close(whole, unfold_reference(op, m, x), rtol=1e-5, atol=1e-5 * float(whole.abs().max()))
    for lo, hi in [(3, 4), (0, 2), (4, 9)]:  # an image's values do not depend on the batch
        torch.testing.assert_close(conv_input_relevance(op, m[lo:hi], x[lo:hi]), whole[lo:hi], rtol=0, atol=0)


def _kernels_for(op: LinearOp) -> list[str]:
    """Every kernel that takes this geometry: ``matmul_1x1`` only 1x1 convolutions without padding, which never
    take the backward-weight convolution (it rounds them differently in different batches)."""
    one = tuple(op.weight.shape[2:]) == (1, 1) and not any(op.pad)
    kernels = [k for k in KERNELS if (k == "matmul_1x1") == one or k in ("per_image", "per_offset")]
    return [k for k in kernels if k != "shifted_rows"] + (["shifted_rows"] if op.stride == (1, 1) else [])


ALL = {**CASES, **PER_OFFSET}


@pytest.mark.parametrize("name", sorted(ALL))
def test_every_kernel_equals_the_unfold_form_and_the_plain_loop(name, monkeypatch):
    """Each kernel forced on each geometry (the choice by shape hides most pairs): float64 to rounding, float32
    to float32 rounding, and an image's float32 values the same bits in any batch."""
    monkeypatch.setitem(CASES, name, ALL[name])
    op, m, x = _case(name, torch.float64)
    ref = unfold_reference(op, m, x)
    loop = plain_loop(op, m, x)
    tol = 1e-12 * float(ref.abs().max())
    op32, m32, x32 = _case(name, torch.float32, batch=9)
    ref32 = unfold_reference(op32, m32, x32)
    for kernel in _kernels_for(op):
        got = conv_input_relevance(op, m, x, kernel=kernel)
        torch.testing.assert_close(got, ref, rtol=1e-12, atol=tol, msg=lambda s, k=kernel: f"{k}: {s}")
        torch.testing.assert_close(got, loop, rtol=1e-12, atol=tol, msg=lambda s, k=kernel: f"{k}: {s}")
        whole = conv_input_relevance(op32, m32, x32, kernel=kernel)
        torch.testing.assert_close(whole, ref32, rtol=1e-5, atol=1e-5 * float(ref32.abs().max()))
        for lo, hi in [(3, 4), (0, 2), (4, 9)]:
            torch.testing.assert_close(conv_input_relevance(op32, m32[lo:hi], x32[lo:hi], kernel=kernel),
                                       whole[lo:hi], rtol=0, atol=0, msg=lambda s, k=kernel: f"{k}: {s}")


def test_the_kernel_is_chosen_by_shape_alone():
    """Wide one-group convolutions take the per-image form on the CPU; few channels, groups, or input windows
    above the budget take the others (the same choice for any batch size)."""
    def op_of(c, n, k, groups=1):
        return LinearOp("conv", torch.zeros((n, c // groups, k, k)), groups=groups, stride=(1, 1), dilation=(1, 1),
                        pad=(k // 2,) * 4)
    assert choose_kernel(op_of(512, 512, 3), torch.zeros(1, 512, 7, 7)) == "per_image"
    assert choose_kernel(op_of(512, 512, 3), torch.zeros(32, 512, 7, 7)) == "per_image"
    assert choose_kernel(op_of(2048, 512, 1), torch.zeros(8, 512, 7, 7)) == "per_image"
    assert choose_kernel(op_of(3, 64, 3), torch.zeros(8, 64, 224, 224)) == "grouped_weight_grad"
    assert choose_kernel(op_of(64, 64, 3), torch.zeros(8, 64, 224, 224)) == "shifted_rows"  # stride 1, 50176 px
    assert choose_kernel(op_of(256, 256, 3), torch.zeros(8, 256, 56, 56)) == "shifted_rows"
    assert choose_kernel(op_of(256, 256, 3), torch.zeros(8, 256, 28, 28)) == "per_image"  # few positions
    assert choose_kernel(op_of(64, 64, 1), torch.zeros(8, 64, 56, 56)) == "per_image"  # 1x1: no shifts to save
    strided = LinearOp("conv", torch.zeros((64, 64, 3, 3)), groups=1, stride=(2, 2), dilation=(1, 1), pad=(1,) * 4)
    assert choose_kernel(strided, torch.zeros(8, 64, 112, 112)) == "grouped_weight_grad"  # windows: 29 MB
    assert choose_kernel(op_of(64, 64, 3), torch.zeros(8, 64, 224, 224, device="meta")) == "grouped_weight_grad"
    assert choose_kernel(op_of(64, 64, 3, groups=64), torch.zeros(8, 64, 14, 14)) == "grouped_weight_grad"
    assert choose_kernel(op_of(512, 512, 3, groups=2), torch.zeros(8, 512, 7, 7)) == "per_offset"
    assert choose_kernel(op_of(8, 8, 1, groups=2), torch.zeros(8, 8, 7, 7)) == "matmul_1x1"


def test_an_unknown_kernel_is_refused():
    op, m, x = _case("3x3", torch.float64)
    with pytest.raises(ValueError, match="unknown kernel"):
        conv_input_relevance(op, m, x, kernel="fft")


@pytest.mark.parametrize("name", sorted(k for k, v in CASES.items() if v[3] == (1, 1)))
def test_the_shifted_rows_form_in_tiles_of_one_row(name, monkeypatch):
    """Tiles of one padded row (the smallest): the per-offset products accumulated over many tiles still equal
    the unfold form and the plain loop (float64), and an image's float32 values do not depend on the batch."""
    monkeypatch.setattr(conv_mod, "SHIFT_TILE_BYTES", 1)
    op, m, x = _case(name, torch.float64)
    got = conv_input_relevance(op, m, x, kernel="shifted_rows")
    ref = unfold_reference(op, m, x)
    tol = 1e-12 * float(ref.abs().max())
    torch.testing.assert_close(got, ref, rtol=1e-12, atol=tol)
    torch.testing.assert_close(got, plain_loop(op, m, x), rtol=1e-12, atol=tol)
    op32, m32, x32 = _case(name, torch.float32, batch=9)
    whole = conv_input_relevance(op32, m32, x32, kernel="shifted_rows")
    for lo, hi in [(3, 4), (0, 2), (4, 9)]:
        torch.testing.assert_close(conv_input_relevance(op32, m32[lo:hi], x32[lo:hi], kernel="shifted_rows"),
                                   whole[lo:hi], rtol=0, atol=0)


def test_the_shifted_rows_form_refuses_strides():
    op, m, x = _case("3x3 stride 2", torch.float64)
    with pytest.raises(ValueError, match="stride-1"):
        conv_input_relevance(op, m, x, kernel="shifted_rows")


@pytest.mark.parametrize("case", ALL_CASES, ids=[c.name for c in ALL_CASES])
def test_graphs_with_every_stride_1_conv_on_shifted_rows_equal_the_reference(case, monkeypatch):
    """The choice gives :func:`_shifted_rows` to wide layers of 56 px and more, which the test models lack: forced
    onto every stride-1 convolution of each test model, the default rule's graph still equals the slow reference
    (one autograd call per neuron and image)."""
    from .test_traversal_reference import N_IMAGES, assert_same_edges, cached_reference, graph_edges

    chosen = []

    def forced(op: LinearOp, m: torch.Tensor) -> str:
        chosen.append("shifted_rows" if op.stride == (1, 1) else choose_kernel(op, m))
        return chosen[-1]

    monkeypatch.setattr(conv_mod, "choose_kernel", forced)
    result = ssa.analyse(case.build(), case.images(N_IMAGES), case.target, case.branching,
                         rule="gradient_x_activation", selector="tukey", batch_size=5)
    assert_same_edges(graph_edges(result.graph), cached_reference(case.name, "gradient_x_activation"))
    if any(isinstance(mod, torch.nn.Conv2d) and mod.stride == (1, 1) for mod in case.build().modules()):
        assert "shifted_rows" in chosen


def _channels_last(*ts: torch.Tensor) -> tuple[torch.Tensor, ...]:
    return tuple(t.contiguous(memory_format=torch.channels_last) for t in ts)


@pytest.mark.parametrize("name", sorted(ALL))
def test_channels_last_kernels_equal_their_contiguous_form(name, monkeypatch):
    """A channels-last statistics pass (``ssa_torch.host.channels_last``): ``per_image`` and ``shifted_rows`` read
    NHWC activations with positions as rows (``closed_form/conv_nhwc.py``). Their reference is the same kernel's
    contiguous form on the same values: float64 to rounding (and the unfold form and the plain loop), float32 to
    float32 rounding; an image's float32 values the same bits in any batch, and the layout really is NHWC."""
    monkeypatch.setitem(CASES, name, ALL[name])
    op, m, x = _case(name, torch.float64)
    mc, xc = _channels_last(m, x)
    assert conv_mod.is_nhwc(xc) and conv_mod.is_nhwc(mc)
    ref, loop = unfold_reference(op, m, x), plain_loop(op, m, x)
    tol = 1e-12 * float(ref.abs().max())
    op32, m32, x32 = _case(name, torch.float32, batch=9)
    mc32, xc32 = _channels_last(m32, x32)
    for kernel in [k for k in _kernels_for(op) if k in ("per_image", "shifted_rows")]:
        got = conv_input_relevance(op, mc, xc, kernel=kernel)
        contiguous = conv_input_relevance(op, m, x, kernel=kernel)
        for want in (contiguous, ref, loop):
            torch.testing.assert_close(got, want, rtol=1e-12, atol=tol, msg=lambda s, k=kernel: f"{k}: {s}")
        whole = conv_input_relevance(op32, mc32, xc32, kernel=kernel)
        torch.testing.assert_close(whole, conv_input_relevance(op32, m32, x32, kernel=kernel), rtol=1e-5,
                                   atol=1e-5 * float(whole.abs().max()), msg=lambda s, k=kernel: f"{k}: {s}")
        for lo, hi in [(3, 4), (0, 2), (4, 9)]:
            torch.testing.assert_close(conv_input_relevance(op32, mc32[lo:hi], xc32[lo:hi], kernel=kernel),
                                       whole[lo:hi], rtol=0, atol=0, msg=lambda s, k=kernel: f"{k}: {s}")


def test_channels_last_kernels_are_taken_on_wide_layers(monkeypatch):
    """VGG16's and ResNet-50's shapes in a channels-last pass take the NHWC kernels (not a copy back to NCHW): the
    NCHW forms are never called, and the values are theirs to float32 rounding."""
    gen = torch.Generator().manual_seed(0)
    for (c, n, k, stride, size), kernel in [((32, 40, 3, 1, 56), "shifted_rows"), ((48, 32, 3, 2, 15), "per_image"),
                                            ((64, 32, 1, 1, 7), "per_image")]:
        op = LinearOp("conv", torch.randn((n, c, k, k), generator=gen), groups=1, stride=(stride, stride),
                      dilation=(1, 1), pad=(k // 2,) * 4)
        x = torch.relu(torch.randn((2, c, size, size), generator=gen))
        m = F.conv2d(x, op.weight, stride=stride, padding=k // 2)
        assert choose_kernel(op, m) == kernel
        want = conv_input_relevance(op, m, x, relu_of=True)
        mc, xc = _channels_last(m, x)
        calls: list[str] = []
        with monkeypatch.context() as mp:
            for name in ("_per_image", "_shifted_rows"):
                real = getattr(conv_mod, name)
                mp.setattr(conv_mod, name,
                           lambda *a, real=real, name=name, calls=calls, **kw: calls.append(name) or real(*a, **kw))
            got = conv_input_relevance(op, mc, xc, relu_of=True)
            assert not calls
            conv_input_relevance(op, m, x, relu_of=True)
            assert calls == ["_" + kernel]  # the contiguous pass takes the NCHW form (the spy sees it)
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5 * float(want.abs().max()))


@pytest.mark.parametrize("shape,k", [((3, 5, 7, 9), (3, 2)), ((4, 6, 6, 6), (1, 1)), ((9, 8, 5, 4), (3, 3))])
def test_channels_last_offset_sums_equal_the_contiguous_form(shape, k):
    """The ``gradient`` form's per-offset sums of a channels-last m (``conv_nhwc.offset_sums_nhwc``) against the
    contiguous form ``vy^T @ (m @ vx)`` (its reference): float64 to rounding, float32 to float32 rounding, and an
    image's float32 values the same bits in any batch."""
    gen = torch.Generator().manual_seed(sum(shape))
    vy, vx = torch.randn((shape[2], k[0]), generator=gen), torch.randn((shape[3], k[1]), generator=gen)
    m = torch.randn(shape, generator=gen)
    for dtype, tol in ((torch.float64, 1e-12), (torch.float32, 1e-5)):
        a, y, x = (t.to(dtype) for t in (m, vy, vx))
        want = torch.matmul(y.t(), torch.matmul(a, x)).reshape(shape[0], shape[1], k[0] * k[1])
        (mc,) = _channels_last(a)
        got = conv_mod.offset_sums_nhwc(mc, y, x)
        torch.testing.assert_close(got, want, rtol=tol, atol=tol * float(want.abs().max()))
    (mc,) = _channels_last(m)
    whole = conv_mod.offset_sums_nhwc(mc, vy, vx)
    for lo, hi in [(1, 2), (0, 2), (1, 3)]:
        torch.testing.assert_close(conv_mod.offset_sums_nhwc(mc[lo:hi], vy, vx), whole[lo:hi], rtol=0, atol=0)
