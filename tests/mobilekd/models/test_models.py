import numpy as np
import pytest
import torch
from PIL import Image

from mobilekd.data.views import center_view, render
from mobilekd.errors import ModelError
from mobilekd.models import (STUDENTS, build_backbone, create_model, default_preprocess, load_model, save_model)
from mobilekd.models.resolve import resolve_teacher


def _imagenet_top1(model, image: np.ndarray, arch: str) -> int:
    picture = Image.fromarray(image).convert("RGB")
    x = render(picture, center_view(*picture.size), default_preprocess(arch))[None]
    with torch.no_grad():
        return int(model(x).argmax())


def test_efficientnet_lite0_imagenet_weights_classify_real_photos():
    from skimage import data

    model = build_backbone("efficientnet_lite0", pretrained=True, num_classes=1000).eval()
    assert _imagenet_top1(model, data.coffee(), "efficientnet_lite0") == 967  # espresso
    assert _imagenet_top1(model, data.chelsea(), "efficientnet_lite0") in range(281, 286)  # cat classes


def test_lite_weights_are_cached_as_safetensors(tmp_path, monkeypatch):
    monkeypatch.setenv("MOBILEKD_CACHE", str(tmp_path))
    from mobilekd.models.pretrained import load_efficientnet_lite

    first = load_efficientnet_lite("efficientnet_lite0")
    assert (tmp_path / "efficientnet_lite0_imagenet.safetensors").is_file()
    second = load_efficientnet_lite("efficientnet_lite0")
    assert all(torch.equal(first[k], second[k]) for k in first)


def test_teacher_by_name_is_frozen_pooled_features():
    teacher = resolve_teacher("efficientnet_lite0", size=64)
    assert teacher.embed_dim == 1280 and teacher.preprocess.size == 64
    assert teacher.preprocess.mean == (127.0, 127.0, 127.0) and teacher.preprocess.std == (128.0, 128.0, 128.0)
    assert not any(p.requires_grad for p in teacher.parameters())


@pytest.mark.parametrize("arch", list(STUDENTS))
def test_students_embed_and_expose_feature_maps(arch):
    model = create_model(arch, embed_dim=16, size=32).eval()
    x = torch.randn(2, 3, 32, 32)
    embedding = model(x)
    assert embedding.shape == (2, 16)
    assert torch.allclose(embedding.norm(dim=1), torch.ones(2), atol=1e-5)
    again, maps = model.forward_with_intermediates(x, indices=[1, -1])
    assert torch.allclose(again, embedding, atol=1e-5)
    assert len(maps) == 2 and maps[0].shape[-1] > maps[1].shape[-1]


def test_mobilenetv1_025_is_the_seed_student():
    model = create_model("mobilenetv1_025", embed_dim=128)
    assert model.feature_dim == 256
    assert 200_000 < sum(p.numel() for p in model.backbone.parameters()) < 230_000


def test_checkpoint_round_trip(tmp_path):
    model = create_model("lcnet_035", embed_dim=8, size=32, head_bn=True).eval()
    save_model(model, tmp_path / "ckpt", {"note": "x"})
    again = load_model(tmp_path / "ckpt").eval()
    x = torch.randn(2, 3, 32, 32)
    assert torch.equal(model(x), again(x))
    assert again.preprocess == model.preprocess and again.spec.head_bn


def test_bad_models(tmp_path):
    with pytest.raises(ModelError, match="unknown model 'resnet9000'"):
        create_model("resnet9000")
    with pytest.raises(ModelError, match="no ImageNet weights are shipped for student lcnet_050"):
        create_model("lcnet_050", pretrained=True)
    (tmp_path / "model.json").write_text("{not json")
    (tmp_path / "model.safetensors").write_bytes(b"")
    with pytest.raises(ModelError, match="not a valid mobilekd model description"):
        load_model(tmp_path)
    with pytest.raises(ModelError, match="not found"):
        resolve_teacher(str(tmp_path / "missing.onnx"))


def test_onnx_black_box_teacher_matches_the_torch_model(tmp_path):
    model = create_model("mobilenetv2_035", embed_dim=16, size=32).eval()
    path = tmp_path / "teacher.onnx"
    torch.onnx.export(model, (torch.randn(1, 3, 32, 32),), str(path), dynamo=False, opset_version=17,
                      input_names=["input"], output_names=["embedding"], dynamic_axes={"input": {0: "n"}})
    teacher = resolve_teacher(str(path))
    x = torch.randn(3, 3, 32, 32)
    assert teacher.preprocess.size == 32 and teacher.embed_dim == 16
    assert torch.allclose(teacher(x), model(x), atol=1e-4)


def test_precomputed_embeddings_teacher(tmp_path):
    keys = np.array(["a/1.png", "b/2.png"])
    np.savez(tmp_path / "t.npz", keys=keys, embeddings=np.array([[3.0, 4.0], [0.0, 2.0]], np.float32))
    teacher = resolve_teacher(str(tmp_path / "t.npz"))
    assert torch.allclose(teacher.lookup(["b/2.png", "a/1.png"]), torch.tensor([[0.0, 1.0], [0.6, 0.8]]))
    with pytest.raises(ModelError, match="no embedding for image 'c.png'"):
        teacher.lookup(["c.png"])
    assert teacher.keys == ["a/1.png", "b/2.png"] and teacher.labels is None
    # one reader and one validation for teachers and compat: ambiguous ids and direction-less rows are errors
    np.savez(tmp_path / "dup.npz", keys=np.array(["a", "a"]), embeddings=np.eye(2, dtype=np.float32))
    with pytest.raises(ModelError, match="'a' occurs more than once"):
        resolve_teacher(str(tmp_path / "dup.npz"))
    np.savez(tmp_path / "zero.npz", keys=np.array(["a", "b"]), embeddings=np.array([[1.0, 0.0], [0.0, 0.0]]))
    with pytest.raises(ModelError, match="all zeros"):
        resolve_teacher(str(tmp_path / "zero.npz"))


def test_checkpoint_of_another_architecture_is_a_clear_error(tmp_path):
    import json

    save_model(create_model("mobilenetv1_025", embed_dim=8, size=32), tmp_path / "ckpt")
    meta = json.loads((tmp_path / "ckpt" / "model.json").read_text())
    meta["spec"]["embed_dim"] = 16
    (tmp_path / "ckpt" / "model.json").write_text(json.dumps(meta))
    with pytest.raises(ModelError, match="does not fit mobilenetv1_025 \\(embed_dim 16\\)"):
        load_model(tmp_path / "ckpt")
