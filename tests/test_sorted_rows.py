"""Rows whose sorted order the closed form knows (rank-1 steps) are sorted exactly, and selectors that skip
their sort given them label exactly as they do without (the fast path against the plain one)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torchvision
from ssa_selectors.selectors import MADSelector, PercentileSelector, TopKSelector, TukeySelector, ZScoreSelector

import ssa
from ssa.testing.models import ALL_CASES

FORMS = ("gradient", "gradient_x_activation")


def models(n_images: int = 6):
    """Every small test model, and a ResNet-18 (1x1 downsample convs, skips, a dense layer): rank-1 steps."""
    for case in ALL_CASES:
        yield case.name, case.build(), case.images(n_images)
    torch.manual_seed(0)
    net = torchvision.models.resnet18(weights=None, num_classes=7).eval()
    n = max(4, n_images // 2)
    yield "resnet18", net, np.random.default_rng(0).standard_normal((n, 3, 40, 40)).astype(np.float32)


def fast_steps(form: str, picks: int = 9):
    """``(model name, network, statistics, fast tap, some of its neurons)`` over :func:`models`."""
    for name, model, images in models():
        net = ssa.load_model(model)
        net.prepare(images)
        stats = net.collect(images, [form])
        for tap in sorted(net.fast_taps(form)):
            n = next(t.n_neurons for t in net.taps if t.name == tap)
            yield name, net, stats, tap, list(range(0, n, max(1, n // picks)))


def _terms_omega(net, stats, tap, neurons, form):
    """The plain omega of a step: every term's rows (``Term.omega``) summed per parent, no rank-1 shortcut."""
    out = {}
    for i, term in enumerate(net.closed_form.taps[tap].terms):
        prefix = f"{tap}/{i}/"
        om = term.omega({k[len(prefix):]: v for k, v in stats.items() if k.startswith(prefix)}, neurons, form)
        out[term.parent] = out[term.parent] + om if term.parent in out else om
    return out


@pytest.mark.parametrize("form", FORMS)
def test_known_sorted_rows_are_the_rows_sorted_and_omega_is_unchanged(form):
    seen = 0
    for name, net, stats, tap, neurons in fast_steps(form):
        plain = _terms_omega(net, stats, tap, neurons, form)
        both = {b.parent: (b.omega, b.sorted) for b in net.relevance_blocks(tap, stats, neurons, form)}
        assert set(both) == set(plain), (name, tap)
        for parent, (om, srt) in both.items():
            torch.testing.assert_close(om, plain[parent], rtol=1e-12, atol=1e-300, msg=f"{name} {tap}->{parent}")
            if srt is not None:
                seen += 1
                assert torch.equal(srt, torch.sort(om, dim=2).values), f"{name} {tap}->{parent}"
    assert seen >= (10 if form == "gradient" else 3)  # gradient: skips, dense, 1x1 convs; gxa: skips


@pytest.mark.parametrize("cls", [TukeySelector, MADSelector, PercentileSelector, TopKSelector, ZScoreSelector])
@pytest.mark.parametrize("two_sided", [False, True])
def test_select_sorted_labels_exactly_like_select(cls, two_sided):
    rng = np.random.default_rng(5)
    vec = rng.standard_t(3, (1, 200))
    vec[0, :60] = 0.0
    coeff = np.concatenate([rng.standard_normal(30), [0.0, -0.0, 1e-300, -2.5]])
    rows = coeff[:, None] * vec  # rank-1 rows, as a 1x1 conv step gives them
    rows[3, 7] = np.nan
    sorted_rows = np.where(coeff[:, None] >= 0, np.sort(vec, axis=1), np.sort(vec, axis=1)[:, ::-1]) * coeff[:, None]
    assert np.array_equal(np.sort(np.nan_to_num(rows), axis=1)[4:], np.sort(rows, axis=1)[4:])
    sel = cls(two_sided=two_sided)
    want = sel.select(rows)
    for lib in (np, torch):
        r, s = (rows, sorted_rows) if lib is np else (torch.tensor(rows), torch.tensor(sorted_rows))
        got = sel.select_sorted(r, s)
        assert np.array_equal(np.asarray(got), want), lib.__name__
