"""The embedding model: a timm backbone -> optional Linear (+ BatchNorm1d) head -> L2 normalisation.

``EmbeddingNet`` exposes the backbone's intermediate feature maps for hint / attention losses (timm
``forward_intermediates``); ``parse_layer_pairs`` resolves ``--feature-layers`` against them. Every model
carries its ``Preprocess`` contract and is rebuilt from a JSON ``ModelSpec`` (``mobilekd.models.checkpoint``).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from mobilekd.errors import MobileKDError, ModelError
from mobilekd.models.pretrained import PRETRAINED_ARCH, SHIPPED_WEIGHTS
from mobilekd.models.registry import build_backbone, default_preprocess
from mobilekd.preprocess import Preprocess


@dataclass
class ModelSpec:
    """Everything needed to rebuild a model (weights aside). ``embed_dim`` 0 = the pooled features."""

    arch: str
    embed_dim: int = 128
    head_bn: bool = False
    normalize: bool = True
    pretrained: bool = False
    preprocess: Preprocess = field(default_factory=Preprocess)
    bn_folded: bool = False  # BatchNorms are identity + folded bias (imported weights): unfold before training

    def to_dict(self) -> dict:
        data = asdict(self)
        data["preprocess"] = self.preprocess.to_dict()
        return data

    @classmethod
    def from_dict(cls, data: dict) -> "ModelSpec":
        data = dict(data)
        data["preprocess"] = Preprocess.from_dict(data.get("preprocess", {}))
        return cls(**data)


class EmbeddingNet(nn.Module):
    """backbone -> global pool -> [Linear (+BN)] -> L2 normalise."""

    def __init__(self, spec: ModelSpec, backbone: nn.Module | None = None):
        super().__init__()
        self.spec = spec
        self.backbone = backbone if backbone is not None else build_backbone(spec.arch, spec.pretrained)
        # models with a conv head (MobileNetV3, LCNet) pool to head_hidden_size, not num_features
        self.feature_dim = int(getattr(self.backbone, "head_hidden_size", None) or self.backbone.num_features)
        if spec.embed_dim:
            layers = [nn.Linear(self.feature_dim, spec.embed_dim)]
            if spec.head_bn:
                layers.append(nn.BatchNorm1d(spec.embed_dim))
            self.head = nn.Sequential(*layers)
        else:
            self.head = nn.Identity()
        self.embed_dim = spec.embed_dim or self.feature_dim

    @property
    def preprocess(self) -> Preprocess:
        return self.spec.preprocess

    @property
    def feature_info(self) -> list[dict]:
        """Stages whose maps ``forward_with_intermediates`` can return: module name, channels, stride."""
        return [dict(info) for info in self.backbone.feature_info]

    def embed_pooled(self, pooled: torch.Tensor) -> torch.Tensor:
        out = self.head(pooled)
        return F.normalize(out, dim=1) if self.spec.normalize else out

    def forward(self, x: torch.Tensor, stages: list[int] | None = None):
        """L2-normalised embeddings; with ``stages``, also those stages' feature maps (one forward pass,
        through ``forward`` so DistributedDataParallel sees it)."""
        if stages is None:
            return self.embed_pooled(self.backbone(x))
        final, maps = self.backbone.forward_intermediates(x, indices=list(stages))
        pooled = self.backbone.forward_head(final, pre_logits=True)
        return self.embed_pooled(pooled), maps

    def forward_with_intermediates(self, x: torch.Tensor, indices: list[int]) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """The embedding plus the feature maps of the given stages (``feature_info`` order, negatives ok)."""
        return self.forward(x, indices)


def create_model(arch: str, embed_dim: int = 128, pretrained: bool = False, size: int | None = None,
                 head_bn: bool = False) -> EmbeddingNet:
    """A student or teacher by name, with its default preprocessing (``size`` overrides the input size).

    ``pretrained`` students take the shipped ImageNet weights of their TF-compatible architecture
    (``PRETRAINED_ARCH``); the spec records that architecture, and that their BatchNorm is folded."""
    if pretrained:
        arch = PRETRAINED_ARCH.get(arch, arch)
    spec = ModelSpec(arch, embed_dim, head_bn, True, pretrained, default_preprocess(arch),
                     bn_folded=pretrained and arch in SHIPPED_WEIGHTS)
    model = EmbeddingNet(spec)
    if size:
        model.spec.preprocess = model.preprocess.with_size(check_input_size(model, size))
    return model


def minimum_input_size(model: EmbeddingNet) -> int:
    """The smallest input side the network can use: its total stride (the ``reduction`` of its last feature
    stage), so that the last stage still sees one real pixel rather than only padding -- 32 for the MobileNets
    and EfficientNet-Lite -- and never under the 8 px the preprocessing contract accepts."""
    return max(8, max(int(info.get("reduction", 1)) for info in model.feature_info))


def check_input_size(model: EmbeddingNet, size: int) -> int:
    """``size`` if ``model`` can take it, else a ModelError naming the architecture's minimum."""
    minimum = minimum_input_size(model)
    if size < minimum:
        raise ModelError(f"input size {size} px is too small for {model.spec.arch}: its total stride is "
                         f"{minimum}, so it needs inputs of at least {minimum} px")
    return size


# ------------------------------------------------------------------------------- --feature-layers


def resolve_stage(token: str, info: list[dict], side: str) -> int:
    """A stage index into ``feature_info`` from its index (negative counts from the end) or module name."""
    names = [entry["module"] for entry in info]
    token = token.strip()
    if token in names:
        return names.index(token)
    try:
        index = int(token)
    except ValueError:
        index = None
    if index is None or not -len(info) <= index < len(info):
        valid = ", ".join(f"{i}={name}" for i, name in enumerate(names))
        raise MobileKDError(f"{side} has no feature stage {token!r}; valid stages: {valid}")
    return index % len(info)


def parse_layer_pairs(spec: str, student_info: list[dict], teacher_info: list[dict]) -> tuple[list[int], list[int]]:
    """(student stage indices, teacher stage indices) for ``--feature-layers`` ``"S=T,S=T"`` (each side an index or
    a module name, e.g. ``blocks.3``; spatial sizes need not match: the losses interpolate)."""
    student, teacher = [], []
    for pair in filter(None, (p.strip() for p in spec.split(","))):
        if pair.count("=") != 1:
            raise MobileKDError(f"--feature-layers: expected STUDENT=TEACHER pairs, got {pair!r}")
        left, right = pair.split("=")
        student.append(resolve_stage(left, student_info, "the student"))
        teacher.append(resolve_stage(right, teacher_info, "the teacher"))
    if not student:
        raise MobileKDError("--feature-layers names no stage pair")
    return student, teacher
