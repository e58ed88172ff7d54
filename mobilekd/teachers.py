"""Resolve models from what the user typed, and the teacher's targets for the training views.

``resolve_model``: a student/teacher name, ``timm:<name>`` or a mobilekd checkpoint folder.
``resolve_teacher``: the same, or an ``.onnx`` (black box) or ``.npz`` of precomputed embeddings.
"""

from __future__ import annotations

from pathlib import Path


from mobilekd.blackbox import OnnxEmbedder, PrecomputedEmbeddings
from mobilekd.errors import ModelError
from mobilekd.models import EmbeddingNet, create_model, is_checkpoint, load_model


def resolve_model(name: str, embed_dim: int = 128, size: int | None = None, pretrained: bool = False,
                  head_bn: bool = False) -> EmbeddingNet:
    if Path(name).exists():
        if not is_checkpoint(name):
            raise ModelError(f"{name} exists but is not a mobilekd checkpoint folder (model.json + model.safetensors)")
        model = load_model(name)
        if size and size != model.preprocess.size:
            model.spec.preprocess = model.preprocess.with_size(size)
        return model
    return create_model(name, embed_dim=embed_dim, pretrained=pretrained, size=size, head_bn=head_bn)


def resolve_teacher(name: str, size: int | None = None, threads: int | None = None):
    """A frozen teacher: EmbeddingNet (names: ImageNet weights, pooled features), OnnxEmbedder or
    PrecomputedEmbeddings."""
    path = Path(name)
    if path.suffix.lower() == ".onnx":
        if not path.is_file():
            raise ModelError(f"teacher ONNX file not found: {path}")
        return OnnxEmbedder(path, threads)
    if path.suffix.lower() == ".npz":
        if not path.is_file():
            raise ModelError(f"teacher embeddings file not found: {path}")
        return PrecomputedEmbeddings(path)
    model = resolve_model(name, embed_dim=0, size=size, pretrained=not path.exists())
    model.eval()
    for parameter in model.parameters():
        parameter.requires_grad_(False)
    return model


def teacher_dim(teacher) -> int:
    return int(teacher.embed_dim)
