"""A rank-1 step's boundaries on the host (``ssa.core.rank1_host``): searched once per row and sign of the coefficient,
checked on the other images, against a bisection of every row (``first_plain``) and against a scan of the built rows
(the definition: the first position where the comparison holds)."""

from __future__ import annotations

import numpy as np
import pytest

from ssa.core.rank1_host import HostRank1


def _rows(rng: np.random.Generator, n: int, b: int, K: int, sorted_given: bool, positive: bool = False
          ) -> tuple[HostRank1, np.ndarray]:
    vec = rng.standard_t(3, (n, K))
    vec[:, : K // 5] = 0.0  # ties
    if n > 1:
        vec[1] = np.round(vec[1], 1)  # more ties
    coeff = rng.standard_normal((n, b)) * np.exp(rng.standard_normal((n, 1)))
    if positive:
        coeff = np.abs(coeff)
    elif b > 2:
        coeff[:, 0], coeff[:, 1] = 0.0, -0.0
    fed = np.ones(n, bool)
    if n > 2:
        fed[2] = False
    order = np.argsort(vec, axis=1, kind="stable")
    mask = fed.astype(np.float64).reshape(n, 1)
    sv = np.take_along_axis(vec, order, axis=1) if sorted_given else None
    host = HostRank1(coeff, vec, order, 0.037, mask, bool(fed.all()), sv)
    built = ((np.take_along_axis(vec, order, axis=1)[:, None, :] * coeff[:, :, None]) * 0.037) * mask[:, :, None]
    return host, built  # built[j, i, q]: row (j, i) at position q of vec's sorted order


def _scan(built: np.ndarray, cut: np.ndarray, above: bool, invert: np.ndarray) -> np.ndarray:
    flips = (built > cut[..., None] if above else built < cut[..., None]) != invert[..., None]
    K = built.shape[2]
    return np.where(flips.any(axis=2), flips.argmax(axis=2), K)


@pytest.mark.parametrize("sorted_given", [False, True])
@pytest.mark.parametrize("above", [True, False])
def test_first_equals_the_bisection_and_the_scan(sorted_given, above):
    rng = np.random.default_rng(11)
    for n, b, K in [(6, 9, 64), (5, 7, 37), (3, 1, 2), (2, 4, 1), (7, 16, 300), (4, 5, 1023), (3, 6, 1025)]:
        host, built = _rows(rng, n, b, K, sorted_given)
        down = host.coeff < 0
        invert = down if above else ~down
        scale = np.abs(host.coeff) * 0.037
        cases = {  # cuts a selector could make (one scale per row: the guesses hold), and arbitrary ones (they fail)
            "row": np.quantile(np.abs(built), 0.9, axis=2) * np.sign(host.coeff + 0.5) * (1 if above else -1),
            "scaled": rng.standard_normal((n, 1)) * scale,
            "any": rng.standard_normal((n, b)) * scale * 3,
            "at values": built[np.arange(n)[:, None], np.arange(b)[None, :], rng.integers(0, K, (n, b))],
        }
        for label, cut in cases.items():
            ends = (built[:, :, 0], built[:, :, -1])
            want = _scan(built, cut, above, invert)
            got = host.first(cut, above, invert, ends)
            assert got.dtype == np.int64 and np.array_equal(got, want), (n, b, K, label)
            assert np.array_equal(host.first_plain(cut, above, invert), want), (n, b, K, label)


def test_first_searches_only_the_images_whose_row_guess_fails(monkeypatch):
    """The search runs on one image per row and sign, then only where the guess is wrong: with cuts of one scale per
    row every other image takes its row's position."""
    rng = np.random.default_rng(5)
    host, built = _rows(rng, 8, 32, 512, False, positive=True)  # one sign
    searched: list[int] = []
    real = HostRank1._search

    def spy(self, idx, *args):
        searched.append(int(idx.shape[0]))
        return real(self, idx, *args)

    monkeypatch.setattr(HostRank1, "_search", spy)
    cut = np.quantile(built, 0.95, axis=2)  # each image's own 95th percentile: the same position in every image
    got = host.first(cut, True, host.down, (built[:, :, 0], built[:, :, -1]))
    assert np.array_equal(got, _scan(built, cut, True, host.down))
    assert searched[0] <= 8 and sum(searched[1:]) < 8 * 32 // 4, searched


@pytest.mark.parametrize("images", [3, 255, 256, 300])
def test_dense_counts_of_one_sided_labels_equal_the_plain_count(images):
    """A dense block's outlier counts on the host (one-sided labels summed in bytes below 256 images) against the
    labels counted one by one."""
    import ssa
    from ssa.core.interfaces import DenseBlock
    from ssa.core.traversal import _accumulate, labels_by_partition

    selector = ssa.make_selector("tukey", k=0.0)
    omega = np.random.default_rng(images).standard_t(2, (4, images, 50))
    omega[:, :, 7] = 1e6  # an outlier on every image: counts up to the number of images (above 255 too)
    acc: dict = {}
    _accumulate(acc, DenseBlock("p", 0, omega), 4, selector)
    labels = labels_by_partition(selector, omega.reshape(-1, 50)).reshape(omega.shape)
    want = np.array([[sum(int(labels[j, i, k]) for i in range(images)) for k in range(50)] for j in range(4)])
    got = acc["p"].pos
    assert got.dtype == np.int64 and np.array_equal(got, want) and want.max() == images
