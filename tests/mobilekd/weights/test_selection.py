"""Weight selection (Xu et al. 2024): exact elements, consistent channels, family errors, --init-from."""

import hashlib
import json

import pytest
import timm
import torch
from safetensors.torch import save_file

from mobilekd.distill import main as distill_main
from mobilekd.errors import ModelError
from mobilekd.models import build_backbone, create_model, load_model, save_model
from mobilekd.weights.selection import initialise_from, select_weights, selection_indices
from mobilekd.weights.selection import main as selection_main


def lite(width: float):
    from timm.models.efficientnet import _gen_efficientnet_lite

    torch.manual_seed(int(width * 100))
    return _gen_efficientnet_lite("efficientnet_lite0", channel_multiplier=width, num_classes=0).eval()


@pytest.fixture(scope="module")
def pair():
    large, small = lite(0.5), lite(0.25)
    large_state = large.state_dict()
    for name, value in large_state.items():  # non-trivial BN statistics, so their selection is checked too
        if name.endswith("running_var"):
            value.uniform_(0.5, 2.0)
        elif name.endswith("running_mean"):
            value.normal_()
    return large_state, small, select_weights(large_state, small.state_dict())


def test_indices_follow_the_papers_rule():
    assert selection_indices(32, 8).tolist() == [0, 4, 8, 12, 16, 20, 24, 28]  # step L // l when l divides L
    assert selection_indices(40, 16).tolist() == [0, 3, 5, 8, 10, 13, 16, 18, 21, 23, 26, 29, 31, 34, 36, 39]
    assert selection_indices(7, 7).tolist() == list(range(7))


def test_selected_tensors_hold_exactly_the_evenly_spaced_elements(pair):
    large, small, selected = pair
    for name, value in selected.items():
        expected = large[name]
        for dim, size in enumerate(value.shape):
            expected = expected.index_select(dim, selection_indices(expected.shape[dim], size))
        assert torch.equal(value, expected), name
    # one hand-checked tensor: the expansion conv of a stage-3 block, (out, in, 1, 1), 0.5 -> 0.25 width
    name = "blocks.3.1.conv_pw.weight"
    out_idx = selection_indices(large[name].shape[0], selected[name].shape[0])
    in_idx = selection_indices(large[name].shape[1], selected[name].shape[1])
    assert torch.equal(selected[name], large[name][out_idx][:, in_idx])
    assert torch.equal(selected["blocks.0.0.bn1.num_batches_tracked"], large["blocks.0.0.bn1.num_batches_tracked"])


def test_same_sizes_keep_the_same_channels_through_depthwise_bn_and_residuals(pair):
    large, small, selected = pair
    for block in ("blocks.3.1", "blocks.5.2"):  # residual inverted-residual blocks
        conv_pw, conv_dw = large[f"{block}.conv_pw.weight"], large[f"{block}.conv_dw.weight"]
        kept = selection_indices(conv_pw.shape[0], selected[f"{block}.conv_pw.weight"].shape[0])
        # the depthwise filters and both BNs around it keep the channels the expansion conv kept
        assert torch.equal(selected[f"{block}.conv_dw.weight"], conv_dw[kept])
        for bn in ("bn1", "bn2"):
            for stat in ("weight", "bias", "running_mean", "running_var"):
                assert torch.equal(selected[f"{block}.{bn}.{stat}"], large[f"{block}.{bn}.{stat}"][kept])
        # the residual: the block's input channels (its conv_pw input) = its output channels (conv_pwl output, bn3)
        res_in = selection_indices(conv_pw.shape[1], selected[f"{block}.conv_pw.weight"].shape[1])
        res_out = selection_indices(large[f"{block}.conv_pwl.weight"].shape[0],
                                    selected[f"{block}.conv_pwl.weight"].shape[0])
        assert torch.equal(res_in, res_out)
        assert torch.equal(selected[f"{block}.bn3.running_var"], large[f"{block}.bn3.running_var"][res_out])


def test_selected_network_loads_strictly_and_runs(pair):
    _, small, selected = pair
    small.load_state_dict(selected, strict=True)
    with torch.no_grad():
        out = small(torch.randn(2, 3, 64, 64))
    assert out.shape == (2, small.num_features) and torch.isfinite(out).all()


def test_mobilenetv1_050_selects_into_the_seed_student():
    from timm.models.efficientnet import _gen_mobilenet_v1

    large = _gen_mobilenet_v1("mobilenetv1_100", 0.5, num_classes=0).state_dict()
    student = build_backbone("mobilenetv1_025")
    student.load_state_dict(select_weights(large, student.state_dict()), strict=True)
    assert torch.equal(student.conv_stem.weight, large["conv_stem.weight"][::2])  # 16 -> 8 channels: step 2


def test_another_family_names_the_first_parameter_that_does_not_correspond():
    mobilenetv2 = timm.create_model("mobilenetv2_100", num_classes=0).state_dict()
    student = lite(0.25).state_dict()
    # both families name their layers alike; Lite's first 5x5 depthwise conv has no 5x5 counterpart in MobileNetV2
    with pytest.raises(ModelError, match=r"blocks\.2\.0\.conv_dw\.weight \(48, 1, 5, 5\) does not correspond"):
        select_weights(mobilenetv2, student)
    lcnet = timm.create_model("lcnet_100", num_classes=0).state_dict()
    with pytest.raises(ModelError, match=r"conv_stem\.weight \(32, 3, 3, 3\) .* \(16, 3, 3, 3\)"):
        select_weights(lcnet, student)
    mobilenetv1 = build_backbone("mobilenetv1_025").state_dict()
    with pytest.raises(ModelError, match=r"blocks\.1\.0\.conv_pw\.weight .* no counterpart"):
        select_weights({k: v for k, v in mobilenetv1.items() if not k.startswith("blocks.1.0.conv_pw")},
                       build_backbone("mobilenetv1_025").state_dict())


def test_init_from_checkpoint_and_state_dict_files_select_the_backbone_only(tmp_path):
    large = create_model("efficientnet_lite_035", embed_dim=8, size=32)
    save_model(large, tmp_path / "large")
    save_file({k: v.contiguous() for k, v in large.backbone.state_dict().items()}, str(tmp_path / "timm.safetensors"))
    torch.save({"state_dict": large.backbone.state_dict()}, tmp_path / "timm.pth")
    expected = select_weights(large.backbone.state_dict(), create_model("efficientnet_lite_025").backbone.state_dict())
    for source in (tmp_path / "large", tmp_path / "timm.safetensors", tmp_path / "timm.pth"):
        student = create_model("efficientnet_lite_025", embed_dim=8, size=32)
        head = {k: v.clone() for k, v in student.head.state_dict().items()}
        record = initialise_from(student, str(source))
        backbone = student.backbone.state_dict()
        assert all(torch.equal(backbone[k], v) for k, v in expected.items())
        assert all(torch.equal(student.head.state_dict()[k], v) for k, v in head.items())  # head: fresh
        assert len(record["sha256"]) == 64 and record["source"] == str(source)

    # the command writes the selected student as a checkpoint; a missing source writes nothing
    out = tmp_path / "selected"
    assert selection_main(["--student", "efficientnet_lite_025", "--init-from", str(tmp_path / "large"),
                           "--embed-dim", "0", "--out", str(out)]) == 0
    written = load_model(out).backbone.state_dict()
    assert all(torch.equal(written[k], v) for k, v in expected.items())
    sha = hashlib.sha256((tmp_path / "large" / "model.safetensors").read_bytes()).hexdigest()
    assert json.loads((out / "model.json").read_text())["init_from"]["sha256"] == sha
    assert selection_main(["--student", "efficientnet_lite_025", "--init-from", str(tmp_path / "gone.pth"),
                           "--out", str(tmp_path / "none")]) == 2
    assert not (tmp_path / "none").exists()


@pytest.fixture
def mobilenetv2_file(tmp_path):
    """A timm MobileNetV2 state dict on disk: another family than EfficientNet-Lite."""
    path = tmp_path / "mobilenetv2.safetensors"
    save_file({k: v.contiguous() for k, v in timm.create_model("mobilenetv2_100", num_classes=0).state_dict().items()},
              str(path))
    return path


def test_init_from_another_family_leaves_the_student_untouched(mobilenetv2_file):
    student = create_model("efficientnet_lite_025", embed_dim=8, size=32)
    before = {k: v.clone() for k, v in student.state_dict().items()}
    with pytest.raises(ModelError, match=r"mobilenetv2.safetensors.*blocks\.2\.0\.conv_dw\.weight"):
        initialise_from(student, str(mobilenetv2_file))
    after = student.state_dict()
    assert all(torch.equal(after[k], v) for k, v in before.items())


def test_distill_init_from_imagenet_lite0(folder_dataset, tmp_path, capsys, mobilenetv2_file):
    out = tmp_path / "run"
    argv = ["--data", str(folder_dataset), "--out", str(out), "--student", "efficientnet_lite_025",
            "--student-size", "32", "--embed-dim", "8", "--teacher", "efficientnet_lite0", "--teacher-size", "32",
            "--views", "1", "--epochs", "1", "--steps-per-epoch", "2", "--batch-classes", "4",
            "--images-per-class", "2", "--threads", "1", "--no-progress", "--preload", "64"]
    assert distill_main(argv + ["--init-from", "efficientnet_lite0"]) == 0
    meta = json.loads((out / "model.json").read_text())
    assert meta["init_from"]["source"] == "efficientnet_lite0" and len(meta["init_from"]["sha256"]) == 64
    assert meta["spec"]["preprocess"]["mean"] == [127.0, 127.0, 127.0]
    assert load_model(out).backbone.conv_stem.weight.shape == (32, 3, 3, 3)

    bad = tmp_path / "bad"
    capsys.readouterr()
    assert distill_main([a if a != str(out) else str(bad) for a in argv] + ["--init-from", str(mobilenetv2_file)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: --init-from ") and "blocks.2.0.conv_dw.weight" in err[0], err
    assert not bad.exists()  # nothing half-written
