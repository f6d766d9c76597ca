"""Streaming image sources (ssa.io.datasets): the same pixels, labels and content hash as the in-memory path."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

import ssa
from ssa.engines.store import images_hash
from ssa.errors import InvalidInputError
from ssa.io.datasets import ArraySource, DecodeStats, StreamHash, content_hash, iter_batches, open_source
from ssa.io.folders import load_grouped_images
from ssa.io.images import Preprocess, load_images
from ssa.io.preprocess import resolve_preprocess


@pytest.fixture(scope="module")
def digit_folder(tmp_path_factory):
    x, y = ssa.load_images("digits")
    root = tmp_path_factory.mktemp("digits") / "imgs"
    for c in range(10):
        (root / str(c)).mkdir(parents=True)
        for i, im in enumerate(x[y == c][:12]):
            Image.fromarray(np.uint8(np.round(im[0] * 255))).save(root / str(c) / f"{i:02d}.png")
    return root


@pytest.mark.parametrize("workers", [0, 2])
def test_folder_stream_equals_load_grouped_images(digit_folder, workers):
    pre = Preprocess(channels=1)
    arr, lab = load_grouped_images(digit_folder, preprocess=pre)
    src = open_source(digit_folder, preprocess=pre)
    assert len(src) == len(arr) and np.array_equal(src.labels, lab)
    stats = DecodeStats()
    got = list(iter_batches(src, batch_size=7, workers=workers, stats=stats))
    assert np.array_equal(np.concatenate([i for i, _ in got]), np.arange(len(arr)))
    assert np.array_equal(np.concatenate([b for _, b in got]), arr)  # bit-identical pixels
    assert stats.images == len(arr)
    assert content_hash(src, workers=workers) == images_hash(arr)


def test_preset_and_rgb_decoding_is_the_reference(tmp_path):
    rng = np.random.default_rng(0)
    for i in range(5):
        Image.fromarray(rng.integers(0, 255, (40 + i, 50, 3), dtype=np.uint8)).save(tmp_path / f"{i}.jpg", quality=90)
    pre = resolve_preprocess({"preset": "torchvision", "resize_shorter": 36, "crop": [32, 32]})
    ref, _ = load_images(tmp_path, preprocess=pre)
    src = open_source(tmp_path, preprocess=pre)
    assert np.array_equal(np.concatenate([b for _, b in iter_batches(src, batch_size=2)]), ref)
    sub = src.subset([3, 1])
    assert np.array_equal(sub.read_many([0, 1]), ref[[3, 1]])


def test_torchvision_decoder_on_cpu_is_close_to_pillow(tmp_path):
    rng = np.random.default_rng(1)
    for i in range(3):
        Image.fromarray(rng.integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(tmp_path / f"{i}.jpg", quality=95)
    pre = resolve_preprocess({"scale": "0-1", "crop": [48, 48]})
    ref = np.concatenate([b for _, b in iter_batches(open_source(tmp_path, preprocess=pre))])
    gpu_path = open_source(tmp_path, preprocess=pre).with_decoder("gpu", device="cpu")  # same code, CPU device
    got = np.concatenate([b for _, b in iter_batches(gpu_path, batch_size=2)])
    assert got.shape == ref.shape
    assert np.abs(got - ref).max() < 0.1  # another IDCT; same images up to JPEG decoding noise


def test_flat_folder_with_a_labels_file(tmp_path):
    for i in range(4):
        Image.fromarray(np.full((8, 8), 40 * i, np.uint8)).save(tmp_path / f"im{i}.png")
    (tmp_path / "labels.txt").write_text("name,label\nim0.png,3\nim2.png,1\nim1.png,3\nim3.png,0\n")
    src = open_source(tmp_path, labels=tmp_path / "labels.txt", preprocess=Preprocess(channels=1))
    assert list(src.labels) == [3, 3, 1, 0]
    (tmp_path / "one.txt").write_text("5\n5\n6\n6\n")
    assert list(open_source(tmp_path, labels=tmp_path / "one.txt").labels) == [5, 5, 6, 6]
    (tmp_path / "short.txt").write_text("im0.png 1\n")
    with pytest.raises(InvalidInputError, match="gives no label for 'im1.png'"):
        open_source(tmp_path, labels=tmp_path / "short.txt")


def test_named_class_folders_are_numbered_in_sorted_order(tmp_path):
    for name in ("n02", "n01"):
        (tmp_path / name).mkdir()
        Image.fromarray(np.zeros((4, 4), np.uint8)).save(tmp_path / name / "a.png")
    src = open_source(tmp_path)
    assert src.class_names == {0: "n01", 1: "n02"} and list(src.labels) == [0, 1]
    assert src.files == ("n01/a.png", "n02/a.png")


def test_mixed_sizes_are_refused_naming_the_file(tmp_path):
    Image.fromarray(np.zeros((4, 4), np.uint8)).save(tmp_path / "a.png")
    Image.fromarray(np.zeros((5, 4), np.uint8)).save(tmp_path / "b.png")
    with pytest.raises(InvalidInputError, match="'b.png' has shape"):
        content_hash(open_source(tmp_path))


def test_npy_is_memory_mapped_and_pickles_without_its_data(tmp_path):
    import pickle

    x = np.random.default_rng(0).standard_normal((50, 1, 4, 4)).astype(np.float32)
    np.save(tmp_path / "x.npy", x)
    src = open_source(tmp_path / "x.npy", labels=np.arange(50) % 3)
    assert isinstance(src, ArraySource) and isinstance(src._data(), np.memmap)
    sub = src.subset(np.flatnonzero(src.labels == 2))
    blob = pickle.dumps(sub)
    assert len(blob) < x.nbytes / 4  # positions and path, not the images
    back = pickle.loads(blob)
    assert np.array_equal(back.read_many(range(len(back))), x[2::3])
    assert content_hash(src) == images_hash(x)


def test_stream_hash_equals_images_hash():
    x = np.random.default_rng(2).standard_normal((11, 3, 2, 2)).astype(np.float32)
    h = StreamHash(11)
    for k in range(0, 11, 4):
        h.update(x[k:k + 4])
    assert h.hexdigest() == images_hash(x)
    with pytest.raises(RuntimeError):
        StreamHash(12).update(x).hexdigest()
