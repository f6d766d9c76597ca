"""Preprocessing presets and config files (ssa.io.preprocess) for folders of images."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

import ssa
from ssa.errors import InvalidInputError
from ssa.io.images import Preprocess, load_images
from ssa.io.preprocess import (
    PRESETS,
    describe_preprocess,
    infer_layout,
    resolve_preprocess,
)


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    """Three RGB photos-to-be of different sizes and aspect ratios."""
    root = tmp_path_factory.mktemp("photos")
    rng = np.random.default_rng(0)
    for i, (h, w) in enumerate([(300, 260), (260, 330), (256, 256)]):
        yy, xx = np.mgrid[0:h, 0:w]
        img = np.stack([(xx * 255 // w), (yy * 255 // h), rng.integers(0, 256, (h, w))], -1).astype(np.uint8)
        Image.fromarray(img).save(root / f"img{i}.png")
    return root


def _pil(folder):
    return [Image.open(p).convert("RGB") for p in sorted(folder.glob("*.png"))]


def test_torchvision_preset_matches_torchvision_transforms(folder):
    from torchvision import transforms as T

    pipeline = T.Compose([T.Resize(256), T.CenterCrop(224), T.ToTensor(),
                          T.Normalize((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))])
    expect = np.stack([pipeline(im).numpy() for im in _pil(folder)])
    got, _ = load_images(str(folder), preprocess=resolve_preprocess("torchvision"))
    assert got.shape == (3, 3, 224, 224)
    np.testing.assert_allclose(got, expect, atol=1e-5)


def test_keras_vgg16_preset_matches_caffe_preprocessing(folder):
    pre = resolve_preprocess("keras-vgg16", input_shape=(None, 224, 224, 3))
    assert pre.layout == "nhwc" and pre.bgr and pre.scale == 1.0 and pre.interpolation == "nearest"
    got, _ = load_images(str(folder), preprocess=pre)
    expect = []
    for im in _pil(folder):  # keras.utils.load_img(target_size=(224, 224)) + vgg16.preprocess_input
        a = np.asarray(im.resize((224, 224), Image.NEAREST), dtype=np.float32)[..., ::-1]
        expect.append(a - np.array([103.939, 116.779, 123.68], np.float32))
    np.testing.assert_allclose(got, np.stack(expect), atol=1e-4)


def test_layout_and_channels_come_from_the_model_input():
    assert infer_layout((None, 3, 32, 32)) == ("nchw", 3, (32, 32))
    assert infer_layout((None, 224, 224, 3)) == ("nhwc", 3, (224, 224))
    assert infer_layout((None, 1, None, None)) == ("nchw", 1, None)
    assert infer_layout((None, 3, 3, 3)) == (None, None, None)  # ambiguous
    assert resolve_preprocess("torchvision", input_shape=(None, 224, 224, 3)).layout == "nhwc"
    assert resolve_preprocess("keras-vgg16", input_shape=(None, 3, 224, 224)).layout == "nchw"
    assert resolve_preprocess("keras-vgg16").layout == "nhwc"  # the preset's own, when the model says nothing
    pre = resolve_preprocess("0-255", input_shape=(None, 1, 28, 28))
    assert (pre.channels, pre.resize, pre.scale, pre.layout) == (1, (28, 28), 1.0, "nchw")
    assert resolve_preprocess(None) == resolve_preprocess("0-1")
    explicit = resolve_preprocess({"preset": "torchvision", "layout": "nchw"}, input_shape=(None, 224, 224, 3))
    assert explicit.layout == "nchw"  # a config that says so wins


def test_scale_only_presets_resize_to_the_model(folder):
    got, _ = load_images(str(folder), preprocess=resolve_preprocess("0-1", input_shape=(None, 40, 30, 3)))
    assert got.shape == (3, 40, 30, 3) and 0.0 <= got.min() and got.max() <= 1.0


def test_config_files_json_and_toml(folder, tmp_path):
    cfg = {"preset": "torchvision", "resize": 40, "crop": [32, 32]}
    (tmp_path / "pre.json").write_text(json.dumps(cfg))
    (tmp_path / "pre.toml").write_text('preset = "torchvision"\nresize = 40\ncrop = [32, 32]\n')
    a = resolve_preprocess(str(tmp_path / "pre.json"), input_shape=(None, 3, 32, 32))
    b = resolve_preprocess(tmp_path / "pre.toml", input_shape=(None, 3, 32, 32))
    assert a == b and a.resize_shorter == 40 and a.crop == (32, 32)
    assert a.mean == tuple(PRESETS["torchvision"]["mean"]) and a.std == tuple(PRESETS["torchvision"]["std"])
    got, _ = load_images(str(folder), preprocess=a)
    assert got.shape == (3, 3, 32, 32)
    (tmp_path / "bgr.json").write_text(json.dumps({"scale": "0-255", "channel_order": "bgr", "resize": [20, 24],
                                                   "mean": [1, 2, 3], "layout": "nhwc"}))
    pre = resolve_preprocess(str(tmp_path / "bgr.json"))
    assert (pre.resize, pre.bgr, pre.mean, pre.layout, pre.scale) == ((20, 24), True, (1.0, 2.0, 3.0), "nhwc", 1.0)


def test_letterbox_keeps_the_aspect_and_pads(folder):
    pre = resolve_preprocess({"letterbox": 64, "pad_value": 114, "scale": "0-255"})
    got, _ = load_images(str(folder), preprocess=pre)
    assert got.shape == (3, 3, 64, 64)
    wide = got[1]  # 260 x 330: scaled to 50 x 64, padded top and bottom
    assert np.all(wide[:, :6, :] == 114) and np.all(wide[:, -6:, :] == 114)
    assert "letterbox to 64x64 (pad 114)" in describe_preprocess(pre)


def test_bad_settings_name_the_problem(tmp_path):
    with pytest.raises(InvalidInputError, match="unknown preprocess setting 'sclae'"):
        resolve_preprocess({"sclae": 1})
    with pytest.raises(InvalidInputError, match="unknown preprocess preset"):
        resolve_preprocess({"preset": "caffe"})
    with pytest.raises(InvalidInputError, match="makes 224x224 images but the model takes 32x32"):
        resolve_preprocess("torchvision", input_shape=(None, 3, 32, 32))
    with pytest.raises(InvalidInputError, match="preset .* or a .json/.toml"):
        resolve_preprocess("imagenet")
    (tmp_path / "broken.json").write_text("{not json")
    with pytest.raises(InvalidInputError, match="cannot parse"):
        resolve_preprocess(str(tmp_path / "broken.json"))
    with pytest.raises(InvalidInputError, match="channel_order"):
        resolve_preprocess({"channel_order": "grb"})
    with pytest.raises(InvalidInputError, match="interpolation"):
        Preprocess(interpolation="lanczos5")


def test_center_crop_larger_than_the_image(folder):
    with pytest.raises(InvalidInputError, match="cannot center-crop"):
        load_images(str(folder), preprocess=Preprocess(crop=(400, 400)))


def test_existing_preprocess_behaviour_is_kept(folder):
    got, _ = load_images(str(folder), preprocess=Preprocess(resize=(16, 16)))
    assert got.shape == (3, 3, 16, 16) and got.max() <= 1.0


# -- options that do not apply to the input are refused, not ignored (issue 9) ----------------------------
@pytest.mark.parametrize("extra, flag", [
    (["--resize", "8,8"], "--resize"), (["--preprocess", "0-1"], "--preprocess"), (["--scale", "1"], "--scale"),
    (["--mean", "0.5"], "--mean"), (["--std", "0.5"], "--std"), (["--layout", "nhwc"], "--layout"),
    (["--channels", "1"], "--channels"), (["--bgr"], "--bgr"),
])
@pytest.mark.parametrize("images", ["npy", "digits"])
def test_folder_options_for_arrays_are_refused(tmp_path, capsys, extra, flag, images):
    from ssa.cli import main
    from ssa.models import digits_data

    spec = "digits"
    if images == "npy":
        spec = str(tmp_path / "x.npy")
        np.save(spec, digits_data()[0][:10])
    assert main(["analyse", "digits", "--images", spec, "-t", "3", *extra]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and f"{flag} applies to folders of image files" in err[0] and f"drop {flag}" in err[0]


def test_folder_options_beside_a_preset_are_refused(tmp_path, capsys):
    from ssa.cli import main

    (tmp_path / "imgs").mkdir()
    Image.fromarray(np.zeros((8, 8), np.uint8)).save(tmp_path / "imgs" / "a.png")
    assert main(["analyse", "digits", "--images", str(tmp_path / "imgs"), "-t", "3", "--preprocess", "0-1",
                 "--resize", "8,8"]) == 2
    err = capsys.readouterr().err
    assert "--resize cannot be combined with --preprocess" in err and err.count("\n") == 1
    assert main(["check", "digits", "--input-shape", "1,8,8", "--scale", "1"]) == 2
    assert "no --images was given" in capsys.readouterr().err


def test_raw_0_255_arrays_get_a_one_line_warning(tmp_path, capsys):
    from ssa.cli import main
    from ssa.models import digits_data

    x = digits_data()[0][:40]
    np.save(tmp_path / "u8.npy", (x * 255).astype(np.uint8))
    np.save(tmp_path / "f.npy", x)
    assert main(["analyse", "digits", "--images", str(tmp_path / "u8.npy"), "-t", "3", "-q"]) == 0
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("ssa: warning: the images look like raw 0-255 pixels")
    assert main(["analyse", "digits", "--images", str(tmp_path / "f.npy"), "-t", "3", "-q"]) == 0
    assert capsys.readouterr().err == ""
    with pytest.warns(ssa.SSAWarning, match="raw 0-255 pixels"):
        ssa.load_images(np.round(x * 255))
    # 16-bit pixels (before: no warning, the run went on with values up to 65535)
    np.save(tmp_path / "u16.npy", (x * 65535).astype(np.uint16))
    assert main(["analyse", "digits", "--images", str(tmp_path / "u16.npy"), "-t", "3", "-q"]) == 0
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("ssa: warning: the images look like raw 0-65535 pixels (values are "
                                               "whole numbers from 0 to 65535)") and "divide them by 65535" in err[0]
