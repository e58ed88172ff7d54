"""Resolve models from what the user typed, and the teacher's targets for the training views.

``resolve_model``: a student/teacher name, ``timm:<name>`` or a mobilekd checkpoint folder.
``resolve_teacher``: the same, or an ``.onnx`` / ``.tflite`` (black box) or ``.npz`` of precomputed embeddings.
"""

from __future__ import annotations

from pathlib import Path

import torch

from mobilekd.data.embeddings_npz import PrecomputedEmbeddings
from mobilekd.errors import ModelError
from mobilekd.io import require_file
from mobilekd.models.checkpoint import is_checkpoint, load_model
from mobilekd.models.embedding_net import EmbeddingNet, check_input_size, create_model
from mobilekd.runtime.file_embedder import BLACK_BOX_SUFFIXES, FileEmbedder


def resolve_model(name: str, embed_dim: int = 128, size: int | None = None, pretrained: bool = False,
                  head_bn: bool = False) -> EmbeddingNet:
    if Path(name).exists():
        if not is_checkpoint(name):
            raise ModelError(f"{name} exists but is not a mobilekd checkpoint folder (model.json + model.safetensors)")
        model = load_model(name)
        if size and size != model.preprocess.size:
            model.spec.preprocess = model.preprocess.with_size(check_input_size(model, size))
        return model
    return create_model(name, embed_dim=embed_dim, pretrained=pretrained, size=size, head_bn=head_bn)


def resolve_teacher(name: str, size: int | None = None, threads: int | None = None):
    """A frozen teacher: EmbeddingNet (names: ImageNet weights, pooled features), FileEmbedder (.onnx, .tflite),
    PrecomputedEmbeddings, or a MasterEnsemble for a comma-separated list."""
    if "," in name:
        branches = [resolve_teacher(part.strip(), size, threads) for part in name.split(",") if part.strip()]
        if not all(isinstance(b, EmbeddingNet) for b in branches):
            raise ModelError("a multi-branch master is built from networks (names or checkpoints), not black boxes")
        master = MasterEnsemble(branches)
        master.eval()
        return master
    path = Path(name)
    if path.suffix.lower() in BLACK_BOX_SUFFIXES:
        require_file(path, "teacher model file", ModelError)
        return FileEmbedder(path, threads)
    if path.suffix.lower() == ".npz":
        require_file(path, "teacher embeddings file", ModelError)
        return PrecomputedEmbeddings(path)
    model = resolve_model(name, embed_dim=0, size=size, pretrained=not path.exists())
    model.eval()
    # A frozen teacher only runs forward: channels-last makes CPU convolutions faster with the same outputs.
    # Students stay NCHW: in training, channels-last changed their gradients (benchmarks/results/train_speed/step_settings.md).
    model.to(memory_format=torch.channels_last)
    for parameter in model.parameters():
        parameter.requires_grad_(False)
    return model


def teacher_dim(teacher) -> int:
    return int(teacher.embed_dim)


class MasterEnsemble(torch.nn.Module):
    """A multi-branch master: the L2-normalised concatenation of several frozen branch embeddings.

    ``--teacher A,B,C`` (e.g. three fine-tuned EfficientNet-Lites). The branches share one preprocessing (the
    first branch's; ``--teacher-size`` sets the size for all), so every branch sees the same view. Its
    cosine similarity is the mean of the branches' cosine similarities -- the "reduced hypothesis space"
    that guides the student (see the README's notes on Guided Deep Metric Learning).
    """

    def __init__(self, branches: list[EmbeddingNet]):
        super().__init__()
        first = branches[0].preprocess
        for branch in branches[1:]:
            if (branch.preprocess.mean, branch.preprocess.std) != (first.mean, first.std):
                raise ModelError(f"master branches must share input normalisation: {branches[0].spec.arch} "
                                 f"and {branch.spec.arch} differ")
        self.branches = torch.nn.ModuleList(branches)
        self.preprocess = first
        self.embed_dim = sum(b.embed_dim for b in branches)

    @property
    def spec(self):
        return [b.spec for b in self.branches]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        parts = [torch.nn.functional.normalize(branch(x), dim=1) for branch in self.branches]
        return torch.nn.functional.normalize(torch.cat(parts, dim=1), dim=1)
