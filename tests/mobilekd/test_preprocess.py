"""mobilekd.preprocess.Preprocess: the preprocessing contract every checkpoint and exported file carries. It must
survive the JSON round trip unchanged, and a bad one in a user's file is one clear error, not a traceback."""

import json
from dataclasses import fields

import pytest

from mobilekd.errors import MobileKDError, ModelError
from mobilekd.preprocess import IMAGENET_MEAN, IMAGENET_STD, TF_LITE_MEAN, TF_LITE_STD, Preprocess


def test_defaults_are_224_px_imagenet_full_image_bilinear_rgb():
    assert Preprocess() == Preprocess(224, IMAGENET_MEAN, IMAGENET_STD, 1.0, "bilinear", "RGB")
    assert IMAGENET_MEAN == (123.675, 116.28, 103.53) and IMAGENET_STD == (58.395, 57.12, 57.375)  # 0..255 units


def test_json_round_trip_gives_an_equal_hashable_preprocess():
    pre = Preprocess(96, TF_LITE_MEAN, TF_LITE_STD, crop=0.875)
    data = json.loads(json.dumps(pre.to_dict()))  # tuples come back as lists, ints as ints
    assert set(data) == {f.name for f in fields(Preprocess)}
    back = Preprocess.from_dict(data)
    assert back == pre and isinstance(back.mean, tuple) and isinstance(back.std, tuple)
    assert hash(back) == hash(pre)  # lists would make it unhashable and unequal
    assert Preprocess.from_dict({"size": 64, "mean": [1, 2, 3]}).mean == (1.0, 2.0, 3.0)
    assert Preprocess.from_dict({}) == Preprocess()  # missing keys: the defaults


def test_with_size_changes_the_size_only():
    pre = Preprocess(224, TF_LITE_MEAN, TF_LITE_STD, 0.875, "bilinear", "RGB")
    small = pre.with_size(32)
    assert small.size == 32 and small == Preprocess(32, TF_LITE_MEAN, TF_LITE_STD, 0.875)
    assert pre.size == 224  # frozen: the original is untouched
    with pytest.raises(ValueError, match=r"preprocess\.size must be an integer from 8 to 4096, got 4"):
        pre.with_size(4)


@pytest.mark.parametrize("values, message", [
    ({"size": 7}, r"preprocess\.size must be an integer from 8 to 4096, got 7"),
    ({"crop": 0.0}, r"crop must be in \(0, 1\], got 0\.0"),
    ({"crop": 1.01}, r"crop must be in \(0, 1\], got 1\.01"),
])
def test_impossible_values_are_refused(values, message):
    with pytest.raises(ValueError, match=message):
        Preprocess(**values)
    with pytest.raises(ValueError, match=message):
        Preprocess.from_dict(values)
    assert Preprocess(8, crop=1.0).size == 8 and Preprocess(crop=0.01).crop == 0.01  # the edges are allowed


def test_a_bad_preprocess_in_a_checkpoint_is_one_model_error(tmp_path):
    from mobilekd.models import create_model, load_model, save_model

    folder = save_model(create_model("mobilenetv1_025", embed_dim=8, size=32), tmp_path / "ckpt")
    assert load_model(folder).preprocess.size == 32
    meta_path = folder / "model.json"
    good = json.loads(meta_path.read_text())
    for bad, message in (({"crop": 2.0}, r"crop must be in \(0, 1\], got 2\.0"),
                         ({"colour": "RGB"}, r"unknown field\(s\) preprocess\.colour")):
        meta = json.loads(json.dumps(good))
        meta["spec"]["preprocess"].update(bad)
        meta_path.write_text(json.dumps(meta))
        with pytest.raises(ModelError, match=rf"model\.json is not a valid mobilekd model description: .*{message}"):
            load_model(folder)


def test_a_bad_preprocess_in_an_exported_model_json_is_one_clear_error():
    from mobilekd.runtime.contract import FORMAT, ModelContract, TensorSpec

    contract = ModelContract("model.onnx", "onnx", "fp32", TensorSpec("input", [1, 3, 32, 32], layout="NCHW"),
                             TensorSpec("embedding", [1, 8], l2_normalized=True), Preprocess(32), 8)
    data = json.loads(json.dumps(contract.to_dict()))
    assert data["format"] == FORMAT and ModelContract.from_dict(data).preprocess == Preprocess(32)
    data["preprocess"]["size"] = 4
    with pytest.raises(MobileKDError, match=r"model\.json preprocess\.size must be an integer from 8 to 4096, got 4"):
        ModelContract.from_dict(data)
