"""Resolve models from what the user typed, and the teacher's targets for the training views.

``resolve_model``: a student/teacher name, ``timm:<name>`` or a mobilekd checkpoint folder.
``resolve_teacher``: the same, or an ``.onnx`` (black box) or ``.npz`` of precomputed embeddings.
``TeacherTargets``: teacher embeddings of views 0..V-1 of every training image, computed once, saved in the
run folder (safetensors) and reused on ``--resume``; the student trains on exactly those views.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from mobilekd.blackbox import OnnxEmbedder, PrecomputedEmbeddings
from mobilekd.data.dataset import ViewDataset
from mobilekd.embed import embed_views
from mobilekd.errors import ModelError
from mobilekd.io import atomic_path
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


def describe_teacher(teacher) -> str:
    if isinstance(teacher, EmbeddingNet):
        return json.dumps(teacher.spec.to_dict(), sort_keys=True)
    return str(getattr(teacher, "path", teacher))


class TeacherTargets:
    """``targets[index, view]`` = teacher embedding of that view of that training image."""

    def __init__(self, embeddings: torch.Tensor):
        self.embeddings = embeddings  # [N, V, D]

    @property
    def num_views(self) -> int:
        return self.embeddings.shape[1]

    def __call__(self, index: torch.Tensor, view: torch.Tensor) -> torch.Tensor:
        return self.embeddings[index, view]

    @classmethod
    def build(cls, teacher, dataset: ViewDataset, num_views: int, cache_file: Path, identity: dict,
              device: str = "cpu", progress: bool = True) -> "TeacherTargets":
        """Compute (or load from ``cache_file`` when ``identity`` matches) the targets of views 0..V-1."""
        digest = hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()
        if cache_file.is_file():
            stored = load_file(str(cache_file))
            meta = json.loads(cache_file.with_suffix(".json").read_text()) if cache_file.with_suffix(".json").is_file() else {}
            if meta.get("digest") == digest:
                return cls(stored["embeddings"])
        if isinstance(teacher, PrecomputedEmbeddings):
            if num_views != 1:
                raise ModelError("precomputed teacher embeddings exist for one view per image: use --views 1")
            embeddings = teacher.lookup(dataset.images.keys)[:, None, :]
        else:
            if isinstance(teacher, torch.nn.Module):
                teacher.to(device)
            keys = [(i, v) for i in range(len(dataset)) for v in range(num_views)]
            flat = embed_views(teacher, dataset, keys, "teacher", device,
                               desc=f"teacher targets ({num_views} views x {len(dataset)} images)", progress=progress)
            embeddings = flat.reshape(len(dataset), num_views, -1)
        with atomic_path(cache_file) as tmp:
            save_file({"embeddings": embeddings.contiguous()}, tmp)
        cache_file.with_suffix(".json").write_text(json.dumps({"digest": digest, "identity": identity}, indent=2))
        return cls(embeddings)
