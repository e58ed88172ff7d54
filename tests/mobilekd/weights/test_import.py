"""Importing ImageNet MobileNet classifiers from .tflite, the shipped weights, --student-weights, BN unfolding."""

import importlib.util
import json
import os

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from conftest import SHARED
from mobilekd.config import Config
from mobilekd.engine import Trainer
from mobilekd.errors import ModelError
from mobilekd.models import ASSETS, SHIPPED_WEIGHTS, create_model, load_model
from mobilekd.weights import import_tflite, main as weights_main
from mobilekd.weights.bn_unfold import unfold_batchnorm

WEIGHTS = os.path.join(SHARED, "weights")
needs_weights = pytest.mark.skipif(
    not os.path.isfile(os.path.join(WEIGHTS, "mobilenet_v1_0.25_224.tflite")) or not importlib.util.find_spec("ai_edge_litert"),
    reason="../shared/weights or ai-edge-litert is not present")


def _random_bn(backbone: torch.nn.Module) -> None:
    """Non-trivial BatchNorm statistics, so that folding them into the convolutions matters."""
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for module in backbone.modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                count = module.num_features
                module.running_mean.copy_(torch.randn(count, generator=generator) * 0.1)
                module.running_var.copy_(torch.rand(count, generator=generator) + 0.5)
                module.weight.copy_(torch.rand(count, generator=generator) + 0.5)
                module.bias.copy_(torch.randn(count, generator=generator) * 0.1)


@pytest.fixture(scope="module")
def round_trip(tmp_path_factory):
    """A random TF-compatible MobileNetV1-0.25 classifier (10 classes, 64 px) converted to .tflite by
    litert-torch (which folds BN, writes SAME padding and fuses ReLU6 like Google's files)."""
    litert_torch = pytest.importorskip("litert_torch")
    from mobilekd.models import build_backbone

    torch.manual_seed(0)
    network = build_backbone("tf_mobilenetv1_025", num_classes=10)
    _random_bn(network)
    network.eval()

    class Probabilities(torch.nn.Module):
        def __init__(self, inner):
            super().__init__()
            self.inner = inner

        def forward(self, x):
            return torch.softmax(self.inner(x), dim=1)

    module = litert_torch.to_channel_last_io(Probabilities(network).eval(), args=[0]).eval()
    path = tmp_path_factory.mktemp("roundtrip") / "random_mobilenet_v1_0.25_64.tflite"
    litert_torch.convert(module, (torch.randn(1, 64, 64, 3),)).export(str(path))
    return network, path


def test_round_trip_random_student_through_litert_torch_imports_to_the_same_function(round_trip, folder_dataset):
    network, path = round_trip
    model, metadata = import_tflite(path, "mobilenetv1_025", data=str(folder_dataset))
    assert model.spec.arch == "tf_mobilenetv1_025" and model.spec.bn_folded
    assert model.preprocess.size == 64 and model.preprocess.mean == (127.5, 127.5, 127.5)
    check = metadata["self_check"]
    assert check["passed"] and check["min_cosine"] >= 0.9999 and check["top1_agreement"] == 1.0
    assert metadata["source"]["classes"] == 10 and len(metadata["source"]["sha256"]) == 64
    x = torch.randn(4, 3, 64, 64)
    model.eval()
    with torch.no_grad():
        expected = torch.nn.functional.normalize(network.forward_head(network.forward_features(x), pre_logits=True))
        assert torch.allclose(model(x), expected, atol=1e-5)
    # the BatchNorms hold only the folded bias: the identity otherwise
    bn = model.backbone.bn1
    assert torch.all(bn.weight == 1) and torch.all(bn.running_mean == 0)


def test_import_cli_writes_a_checkpoint_that_rebuilds(round_trip, folder_dataset, tmp_path, capsys):
    network, path = round_trip
    out = tmp_path / "imported"
    assert weights_main(["import", str(path), "--arch", "tf_mobilenetv1_025", "--out", str(out),
                         "--data", str(folder_dataset), "--embed-dim", "32"]) == 0
    printed = capsys.readouterr().out
    assert "self-check" in printed and "top1_agreement" in printed
    meta = json.loads((out / "model.json").read_text())
    assert meta["bn_folded"] is True and meta["spec"]["bn_folded"] is True and meta["self_check"]["passed"]
    assert meta["spec"]["arch"] == "tf_mobilenetv1_025" and meta["embed_dim"] == 32
    model = load_model(out)
    assert model.embed_dim == 32
    stem = load_file(str(out / "model.safetensors"))["backbone.conv_stem.weight"]
    assert not torch.equal(stem, network.conv_stem.weight)  # BN scale folded into the weights
    assert stem.shape == network.conv_stem.weight.shape


def test_width_mismatch_names_the_first_layer_that_does_not_fit(round_trip, tmp_path, capsys):
    _, path = round_trip
    out = tmp_path / "never"
    assert weights_main(["import", str(path), "--arch", "mobilenetv1_050", "--out", str(out)]) == 2
    error = capsys.readouterr().err.strip()
    assert error.startswith("error:") and len(error.splitlines()) == 1
    assert "conv_stem" in error and "[8, 3, 3, 3]" in error and "[16, 3, 3, 3]" in error
    assert not out.exists()
    with pytest.raises(ModelError, match="tf_mobilenetv2_100"):
        import_tflite(path, "mobilenetv2_100")
    with pytest.raises(ModelError, match="no TF-compatible student"):
        import_tflite(path, "lcnet_050")


@pytest.mark.parametrize("cut", ["truncated", "text", "missing"])
def test_broken_files_give_one_clear_error_and_write_nothing(round_trip, tmp_path, capsys, cut):
    _, path = round_trip
    bad = tmp_path / "bad.tflite"
    if cut == "truncated":
        bad.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    elif cut == "text":
        bad.write_text("not a model\n")
    out = tmp_path / "never"
    assert weights_main(["import", str(bad), "--arch", "mobilenetv1_025", "--out", str(out)]) == 2
    error = capsys.readouterr().err.strip()
    assert error.startswith("error:") and len(error.splitlines()) == 1
    assert {"truncated": "truncated", "text": "not a TFLite flatbuffer", "missing": "not found"}[cut] in error
    assert not out.exists()


def test_bn_unfolding_keeps_the_eval_function_and_gives_real_statistics():
    model = create_model("mobilenetv1_025", embed_dim=0, pretrained=True, size=64)
    model.eval()
    generator = torch.Generator().manual_seed(0)
    images = torch.rand(24, 3, 64, 64, generator=generator) * 2 - 1
    probe = torch.rand(5, 3, 64, 64, generator=generator) * 2 - 1
    with torch.no_grad():
        before = model(probe)
    assert unfold_batchnorm(model, images.split(8)) == 24
    with torch.no_grad():
        after = model(probe)
    assert torch.allclose(before, after, atol=2e-5), (before - after).abs().max()
    assert not model.training
    norms = [m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    assert all(not torch.allclose(bn.weight, torch.ones_like(bn.weight)) for bn in norms)
    assert all(not torch.allclose(bn.running_mean, torch.zeros_like(bn.running_mean)) for bn in norms)
    # train mode now normalises by statistics close to the running ones: the first step keeps the features
    model.train()
    with torch.no_grad():
        train_mode = model(images[:16])
    model.eval()
    with torch.no_grad():
        eval_mode = model(images[:16])
    assert torch.nn.functional.cosine_similarity(train_mode, eval_mode).mean() > 0.95


def test_pretrained_loads_the_shipped_weights_offline():
    model = create_model("mobilenetv1_025", embed_dim=0, pretrained=True)
    assert model.spec.arch == "tf_mobilenetv1_025" and model.spec.bn_folded
    assert model.preprocess.mean == (127.5, 127.5, 127.5) and model.embed_dim == 256
    shipped = load_file(str(ASSETS / SHIPPED_WEIGHTS["tf_mobilenetv1_025"]))
    assert torch.equal(model.backbone.conv_stem.weight, shipped["conv_stem.weight"])
    assert os.path.getsize(ASSETS / SHIPPED_WEIGHTS["tf_mobilenetv1_025"]) < 1_000_000
    assert (ASSETS / "MOBILENET_V1_LICENSE").is_file() and (ASSETS / "MOBILENET_V1_NOTICE").is_file()
    same = create_model("tf_mobilenetv1_025", embed_dim=0, pretrained=True)
    assert torch.equal(same.backbone.blocks[4][1].conv_pw.weight, model.backbone.blocks[4][1].conv_pw.weight)
    # the from-scratch student keeps its own (symmetric padding) network
    scratch = create_model("mobilenetv1_025")
    assert scratch.spec.arch == "mobilenetv1_025" and type(scratch.backbone.conv_stem) is torch.nn.Conv2d
    with pytest.raises(ModelError, match="--student-weights FILE.tflite"):
        create_model("mobilenetv2_050", pretrained=True)


def test_old_from_scratch_checkpoint_still_rebuilds_as_itself(tmp_path):
    """A checkpoint written before ImageNet students existed (its model.json and tensor names, kept in
    tests/fixtures/old_checkpoint; random values of the recorded shapes) still loads as a from-scratch student."""
    import shutil

    from safetensors.torch import save_file

    fixture = os.path.join(os.path.dirname(__file__), "..", "..", "fixtures", "old_checkpoint")
    shutil.copy(os.path.join(fixture, "model.json"), tmp_path / "model.json")
    with open(os.path.join(fixture, "tensors.json")) as handle:
        shapes = json.load(handle)["tensors"]
    generator = torch.Generator().manual_seed(0)
    save_file({name: torch.rand(shape, generator=generator) for name, shape in shapes.items()},
              str(tmp_path / "model.safetensors"))
    model = load_model(str(tmp_path))
    assert model.spec.arch == "mobilenetv1_025" and not model.spec.bn_folded
    assert type(model.backbone.conv_stem) is torch.nn.Conv2d and model.backbone.conv_stem.padding == (1, 1)


def _train_config(data, out, **overrides) -> Config:
    values = dict(data=str(data), out=str(out), student="mobilenetv1_025", student_size=32, embed_dim=16,
                  teacher=None, views=1, epochs=1, batch_classes=4, images_per_class=2, steps_per_epoch=2,
                  eval_every=1, progress=False, threads=1, preload=64)
    values.update(overrides)
    return Config(**values)


def test_student_weights_tflite_in_a_short_run_unfolds_bn_once(round_trip, folder_dataset, tmp_path, monkeypatch):
    _, path = round_trip
    out = tmp_path / "run"
    trainer = Trainer(_train_config(folder_dataset, out, student_weights=str(path)))
    assert trainer.student.spec.arch == "tf_mobilenetv1_025" and not trainer.student.spec.bn_folded
    assert trainer.bn_unfolded["images"] == len(trainer.train_set)
    trainer.run()
    meta = json.loads((out / "model.json").read_text())
    assert meta["spec"]["arch"] == "tf_mobilenetv1_025" and meta["spec"]["bn_folded"] is False
    assert meta["bn_unfolded"]["images"] > 0 and meta["student_weights"]["self_check"]["passed"]
    # a resumed run restores the unfolded weights and does not unfold again
    import mobilekd.weights.bn_unfold

    monkeypatch.setattr(mobilekd.weights.bn_unfold, "unfold_batchnorm", lambda *a, **k: pytest.fail("unfolded twice"))
    resumed = Trainer(_train_config(folder_dataset, out, student_weights=str(path), epochs=2, resume=True))
    assert resumed.start_epoch == 1 and not resumed.student.spec.bn_folded
    resumed.run()
    assert json.loads((out / "model.json").read_text())["bn_unfolded"] == meta["bn_unfolded"]
    # a checkpoint of that run is re-used as is: its BN is no longer folded
    again = Trainer(_train_config(folder_dataset, tmp_path / "again", student=str(out)))
    assert again.bn_unfolded is None


def test_pretrained_and_student_weights_safetensors_and_bad_files(folder_dataset, tmp_path):
    trainer = Trainer(_train_config(folder_dataset, tmp_path / "pre", pretrained=True))
    assert trainer.student.spec.arch == "tf_mobilenetv1_025" and trainer.bn_unfolded is not None
    shipped = ASSETS / SHIPPED_WEIGHTS["tf_mobilenetv1_025"]
    trainer = Trainer(_train_config(folder_dataset, tmp_path / "run", student_weights=str(shipped)))
    assert trainer.student.spec.arch == "tf_mobilenetv1_025" and trainer.bn_unfolded is not None
    torch.save({"conv_stem.weight": torch.zeros(3)}, tmp_path / "wrong.pth")
    with pytest.raises(ModelError, match="does not fit"):
        Trainer(_train_config(folder_dataset, tmp_path / "bad", student_weights=str(tmp_path / "wrong.pth")))
    with pytest.raises(ModelError, match="holds weights for tf_mobilenetv1_025"):
        Trainer(_train_config(folder_dataset, tmp_path / "bad", student="lcnet_050", student_weights=str(shipped)))


@needs_weights
def test_real_float_file_matches_the_interpreter_and_the_shipped_weights(tmp_path):
    model, metadata = import_tflite(os.path.join(WEIGHTS, "mobilenet_v1_0.25_224.tflite"), "mobilenetv1_025")
    check = metadata["self_check"]
    if "images" in check:  # scikit-image photos available
        assert check["passed"] and check["min_cosine"] >= 0.9999 and check["top1_agreement"] == 1.0
    shipped = load_file(str(ASSETS / SHIPPED_WEIGHTS["tf_mobilenetv1_025"]))
    state = model.backbone.state_dict()
    assert all(torch.equal(state[key], value) for key, value in shipped.items())


@needs_weights
def test_real_uint8_file_reports_its_agreement(tmp_path, capsys):
    out = tmp_path / "q128"
    assert weights_main(["import", os.path.join(WEIGHTS, "mobilenet_v1_0.25_128_quant.tflite"),
                         "--arch", "mobilenetv1_025", "--out", str(out)]) == 0
    meta = json.loads((out / "model.json").read_text())
    assert meta["source"]["weights"] == "uint8" and meta["spec"]["preprocess"]["size"] == 128
    check = meta["self_check"]
    if "images" in check:
        assert check["mean_cosine"] > 0.99 and check["top1_agreement"] >= 0.75 and "passed" not in check
    assert "mean_cosine" in capsys.readouterr().out


@needs_weights
def test_real_width_mismatch_and_missing_quantisation(tmp_path, capsys):
    out = tmp_path / "never"
    assert weights_main(["import", os.path.join(WEIGHTS, "mobilenet_v1_0.5_160_quant.tflite"),
                         "--arch", "mobilenetv1_025", "--out", str(out)]) == 2
    error = capsys.readouterr().err
    assert "MobilenetV1/MobilenetV1/Conv2d_0" in error and "conv_stem" in error and not out.exists()
    # a uint8 file whose weight tensor lost its scale / zero point
    from ai_edge_litert import schema_py_generated as fb
    import flatbuffers

    model = fb.ModelT.InitFromPackedBuf(open(os.path.join(WEIGHTS, "mobilenet_v1_0.25_128_quant.tflite"), "rb").read(), 0)
    graph = model.subgraphs[0]
    graph.tensors[graph.operators[0].inputs[1]].quantization = None
    builder = flatbuffers.Builder(1 << 20)
    builder.Finish(model.Pack(builder), file_identifier=b"TFL3")
    broken = tmp_path / "no_quant.tflite"
    broken.write_bytes(bytes(builder.Output()))
    assert weights_main(["import", str(broken), "--arch", "mobilenetv1_025", "--out", str(out)]) == 2
    error = capsys.readouterr().err.strip()
    assert "no quantisation parameters" in error and len(error.splitlines()) == 1 and not out.exists()


def test_a_float_file_that_fails_the_self_check_writes_nothing(round_trip, folder_dataset, tmp_path, monkeypatch,
                                                               capsys):
    import mobilekd.weights.tflite_check

    _, path = round_trip
    monkeypatch.setattr(mobilekd.weights.tflite_check, "compare", lambda *a, **k: {
        "images": 3, "mean_cosine": 0.99, "min_cosine": 0.98, "top1_agreement": 2 / 3})
    out = tmp_path / "never"
    assert weights_main(["import", str(path), "--arch", "mobilenetv1_025", "--out", str(out),
                         "--data", str(folder_dataset)]) == 2
    error = capsys.readouterr().err
    assert "self-check failed" in error and "nothing written" in error and not out.exists()


def test_core_ml_gets_tf_same_padding_as_fixed_pads_with_identical_outputs():
    from export.coreml import static_same_padding

    model = create_model("tf_mobilenetv1_025", embed_dim=0, size=64).eval()
    images = torch.randn(2, 3, 64, 64)
    static = static_same_padding(model, images[:1])
    assert not [m for m in static.modules() if type(m).__name__ == "Conv2dSame"]
    assert [m for m in model.modules() if type(m).__name__ == "Conv2dSame"]  # the original is untouched
    with torch.no_grad():
        assert torch.equal(static(images), model(images))


def test_pretrained_students_train_channels_last_with_the_same_step(folder_dataset, tmp_path):
    """--memory-format auto: channels-last for a student from trained weights (faster on CPU), NCHW for a random
    one; the first training step computes the same update in either layout, and the checkpoint loads as usual."""
    from mobilekd.errors import MobileKDError

    def first_step(memory_format, out, **overrides):
        trainer = Trainer(_train_config(folder_dataset, tmp_path / out, memory_format=memory_format, **overrides))
        domain = trainer.domains[0]
        trainer.train_step(domain, next(iter(domain.loader)))
        return trainer

    auto = first_step("auto", "auto", pretrained=True)
    assert auto.channels_last and auto.student.backbone.conv_stem.weight.is_contiguous(memory_format=torch.channels_last)
    nchw = first_step("contiguous", "nchw", pretrained=True)
    assert not nchw.channels_last
    # the same gradient in either layout (the update itself is Adam's ~sign(grad) x lr: not comparable near 0)
    grads = [(a.grad, b.grad) for a, b in zip(auto.student.parameters(), nchw.student.parameters())]
    difference = sum(float((a - b).pow(2).sum()) for a, b in grads) ** 0.5
    assert difference <= 1e-3 * sum(float(b.pow(2).sum()) for _, b in grads) ** 0.5
    assert not first_step("auto", "random").channels_last  # random init: NCHW
    auto.run()
    reloaded = load_model(tmp_path / "auto")  # a channels-last student saves ordinary (contiguous) weights
    assert torch.equal(reloaded.state_dict()["backbone.conv_stem.weight"], auto.student.state_dict()["backbone.conv_stem.weight"])
    with pytest.raises(MobileKDError, match="--memory-format must be one of"):
        _train_config(folder_dataset, tmp_path / "bad", memory_format="nhwc").validate()
