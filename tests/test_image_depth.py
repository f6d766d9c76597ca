"""16-bit and float image files keep their full range (issue 18, item 2).

A 16-bit PNG used to be clipped at 255 by ``convert("L")`` (black and white images, another graph than its 8-bit
copy's). Now 16-bit PNG/TIFF (Pillow modes ``I;16``, ``I``) and float TIFF in [0, 1] (mode ``F``) are read on the
0-255 scale of an 8-bit copy, so the model sees the same range; what cannot be read faithfully is refused.
"""

from __future__ import annotations

import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import ssa
from ssa.io.datasets import decode_image, iter_batches, open_source
from ssa.io.folders import load_grouped_images
from ssa.io.images import Preprocess
from ssa.models import digits_data

GREY, RGB = Preprocess(channels=1), Preprocess(channels=3)


def _png16(path: Path, arr: np.ndarray) -> Path:
    """A 16-bit PNG of ``arr`` (H, W) or (H, W, 3) uint16, written byte by byte (Pillow writes no 16-bit RGB)."""
    a = arr if arr.ndim == 3 else arr[:, :, None]
    h, w, c = a.shape
    raw = b"".join(b"\0" + a[y].astype(">u2").tobytes() for y in range(h))

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    head = struct.pack(">IIBBBBB", w, h, 16, {1: 0, 3: 2}[c], 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", head) + chunk(b"IDAT", zlib.compress(raw))
                     + chunk(b"IEND", b""))
    return path


def _eight_bit_copy(v16: np.ndarray) -> np.ndarray:
    return np.round(v16.astype(np.float64) / 257.0).astype(np.uint8)  # 65535 -> 255, as image tools convert


@pytest.fixture
def wide(tmp_path) -> np.ndarray:
    return np.random.default_rng(0).integers(0, 65536, (10, 12), dtype=np.uint16)


def test_a_16_bit_png_keeps_its_range_and_equals_its_8_bit_copy(tmp_path, wide):
    Image.fromarray(_eight_bit_copy(wide)).save(tmp_path / "eight.png")
    _png16(tmp_path / "sixteen.png", wide)
    assert Image.open(tmp_path / "sixteen.png").mode == "I;16"
    # as read: within the 8-bit copy's rounding (half a level); resized: the 8-bit path also rounds the resampled
    # values to whole levels (another half level)
    for pre, levels in ((GREY, 0.5), (RGB, 0.5), (Preprocess(channels=1, resize=(7, 9)), 1.5),
                        (Preprocess(channels=3, letterbox=(16, 16), pad_value=128.0), 1.5)):
        a16, a8 = decode_image(tmp_path / "sixteen.png", pre), decode_image(tmp_path / "eight.png", pre)
        assert a16.shape == a8.shape
        assert np.abs(a16 - a8).max() <= levels / 255 + 1e-6, pre  # the old reader clipped: 1.0 nearly everywhere
    exact = decode_image(tmp_path / "sixteen.png", GREY)
    np.testing.assert_allclose(exact[0], wide / 65535.0, rtol=0, atol=1e-6)  # the full 16-bit precision
    assert 0.0 <= exact.min() and exact.max() <= 1.0 and (exact < 0.5).mean() > 0.3


def test_16_bit_rgb_png_and_tiff_and_float_tiff(tmp_path, wide):
    rgb16 = np.stack([wide, wide[::-1], 65535 - wide], axis=2)
    _png16(tmp_path / "rgb16.png", rgb16)
    Image.fromarray(_eight_bit_copy(rgb16)).save(tmp_path / "rgb8.png")
    diff = decode_image(tmp_path / "rgb16.png", RGB) - decode_image(tmp_path / "rgb8.png", RGB)
    assert np.abs(diff).max() <= 1.0 / 255 + 1e-6  # Pillow keeps the high byte of 16-bit RGB: the range is right
    Image.fromarray(wide).save(tmp_path / "g16.tif")
    Image.fromarray((wide / 65535.0).astype(np.float32)).save(tmp_path / "f.tif")
    Image.fromarray(_eight_bit_copy(wide)).save(tmp_path / "g8.png")
    eight = decode_image(tmp_path / "g8.png", GREY)
    for name, mode in (("g16.tif", "I;16"), ("f.tif", "F")):
        assert Image.open(tmp_path / name).mode == mode
        assert np.abs(decode_image(tmp_path / name, GREY) - eight).max() <= 1.0 / 255 + 1e-6, name


@pytest.mark.parametrize("values, words", [
    (np.linspace(0, 2, 20, dtype=np.float32), "holds values from 0 to 2; ssa reads float images in [0, 1]"),
    (np.array([0.5, np.nan] * 10, dtype=np.float32), "holds NaN or infinite values"),
    (np.array([0, 70000] * 10, dtype=np.int32), "integers from 0 to 70000, outside the 16-bit range"),
])
def test_what_cannot_be_read_faithfully_is_refused(tmp_path, values, words):
    Image.fromarray(values.reshape(4, 5)).save(tmp_path / "bad.tif")
    with pytest.raises(ssa.InvalidInputError, match=words.replace("[", r"\[").replace("]", r"\]")):
        decode_image(tmp_path / "bad.tif", GREY)


def test_a_16_bit_folder_gives_the_graph_of_its_8_bit_copy(tmp_path):
    """Digits images as 16-bit PNGs (v * 257, exact) and as 8-bit PNGs: the same tensors, the same graph; the
    streamed reader (--out-dir) reads the same pixels as the in-memory one."""
    x, y = digits_data()
    for depth in ("8", "16"):
        for c in (3, 5):
            (tmp_path / depth / str(c)).mkdir(parents=True)
            for i, im in enumerate(x[y == c][:25]):
                v8 = np.uint8(np.round(im[0] * 255))
                if depth == "8":
                    Image.fromarray(v8).save(tmp_path / depth / str(c) / f"{i:02d}.png")
                else:
                    _png16(tmp_path / depth / str(c) / f"{i:02d}.png", v8.astype(np.uint16) * 257)
    a8, l8 = load_grouped_images(tmp_path / "8", preprocess=GREY)
    a16, l16 = load_grouped_images(tmp_path / "16", preprocess=GREY)
    np.testing.assert_allclose(a16, a8, rtol=0, atol=1e-6)
    np.testing.assert_array_equal(l16, l8)
    streamed = np.concatenate([b for _, b in iter_batches(open_source(tmp_path / "16", preprocess=GREY))])
    np.testing.assert_array_equal(streamed, a16)
    g8 = ssa.analyse_many("digits", tmp_path / "8", "all", preprocess=GREY, selector="tukey")
    g16 = ssa.analyse_many("digits", tmp_path / "16", "all", preprocess=GREY, selector="tukey")
    assert sorted(g8) == sorted(g16) == [3, 5]
    for c in (3, 5):
        assert sorted(g16[c].graph.edges(data="frequency")) == sorted(g8[c].graph.edges(data="frequency"))
        assert g16[c].graph.number_of_nodes() > 1
