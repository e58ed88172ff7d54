"""Embedding models: timm backbones + embedding head + L2 normalisation, students and real teachers.

``EmbeddingNet`` = backbone (global-pooled features) -> optional Linear (+ BatchNorm1d) head -> L2 norm, with
the backbone's intermediate feature maps available for hint / attention losses (timm
``forward_intermediates``). Every model carries its ``Preprocess`` contract and is rebuilt from a JSON
``ModelSpec`` -- the checkpoint format is ``model.safetensors`` + ``model.json``.

Names:
* students: ``mobilenetv1_025`` (MobileNetV1, width 0.25 -- the seed's student), ``mobilenetv2_035``,
  ``mobilenetv2_050``, ``mobilenetv3_small_050``, ``lcnet_035``, ``lcnet_050`` (symmetric padding, from
  scratch), ``efficientnet_lite_025`` / ``efficientnet_lite_035`` (EfficientNet-Lite at width 0.25 / 0.35,
  TF-Lite preprocessing; ``--init-from efficientnet_lite0`` weight-selects them from ImageNet Lite0, see
  ``mobilekd.weight_selection``); and the TensorFlow-compatible ``tf_mobilenetv1_025/050/075``, ``tf_mobilenetv2_100`` (timm's
  convention: TF "SAME" padding, ReLU6, BN eps 1e-3, input ``(x - 127.5) / 127.5``) that compute the same
  function as Google's ImageNet ``.tflite`` classifiers (``mobilekd.tflite_import``). ``pretrained=True``
  loads the ImageNet weights shipped in ``mobilekd/assets`` (``tf_mobilenetv1_025``; ``mobilenetv1_025``
  with ``pretrained`` becomes it, so old from-scratch checkpoints keep their own architecture);
* teachers with real ImageNet weights from PyPI wheels: ``efficientnet_lite0/1/2`` (timm
  ``tf_efficientnet_lite0..2``; see ``mobilekd.weights``);
* ``timm:<name>``: any timm model (``pretrained=True`` needs the Hugging Face hub).
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path

import timm
import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from torch import nn

from mobilekd.errors import ModelError
from mobilekd.io import atomic_path, write_json
from mobilekd.preprocess import (IMAGENET_MEAN, IMAGENET_STD, TF_LITE_MEAN, TF_LITE_STD, TF_MOBILENET_MEAN,
                                 TF_MOBILENET_STD, Preprocess)

CHECKPOINT_FORMAT = "mobilekd-model/1"


def _mobilenetv1_025(**kwargs) -> nn.Module:
    # timm has no registered 0.25 variant, and create_model("mobilenetv1_100", channel_multiplier=0.25)
    # raises a TypeError; the generator takes the multiplier directly (213k params, 256-d features).
    from timm.models.efficientnet import _gen_mobilenet_v1

    return _gen_mobilenet_v1("mobilenetv1_100", 0.25, **kwargs)


def _tf_mobilenet(version: int, width: float):
    """A TensorFlow-compatible MobileNet (timm's ``tf_`` convention): TF "SAME" padding (the extra row/column of
    a stride-2 layer at the bottom/right), ReLU6 (timm's default for both generators), BN eps 1e-3 as TF-slim."""
    from timm.models.efficientnet import _gen_mobilenet_v1, _gen_mobilenet_v2

    generator = _gen_mobilenet_v1 if version == 1 else _gen_mobilenet_v2

    def build(**kwargs) -> nn.Module:
        return generator(f"mobilenetv{version}_100", width, pad_type="same", bn_eps=1e-3, **kwargs)

    return build


def _efficientnet_lite(width: float):
    """EfficientNet-Lite at ``width`` x Lite0's channels, depth 1.0, built like timm's ``tf_efficientnet_lite0``
    (TF "SAME" padding, BN eps 1e-3, ReLU6) so every tensor has a same-named counterpart in the ImageNet Lite0
    for ``--init-from efficientnet_lite0``. timm rounds channels to multiples of 8 and keeps the family's fixed
    32-channel stem and 1280-channel head conv (at width 0.25 the head is 105k of 359k parameters; the pooled
    features are 1280-d like the Lite teachers')."""

    def build(**kwargs) -> nn.Module:
        from timm.models._efficientnet_builder import BN_EPS_TF_DEFAULT
        from timm.models.efficientnet import _gen_efficientnet_lite

        return _gen_efficientnet_lite("tf_efficientnet_lite0", channel_multiplier=width, depth_multiplier=1.0,
                                      bn_eps=BN_EPS_TF_DEFAULT, pad_type="same", **kwargs)

    return build


TF_MOBILENET = (TF_MOBILENET_MEAN, TF_MOBILENET_STD)
# name -> (timm name or builder, default input size[, preprocessing (mean, std)]); without the third entry the
# mean/std follow from the family (ImageNet for students, TF-Lite's for teachers, the pretrained cfg for
# timm:<name>): see default_preprocess
STUDENTS = {
    "mobilenetv1_025": (_mobilenetv1_025, 224),
    "tf_mobilenetv1_025": (_tf_mobilenet(1, 0.25), 224, TF_MOBILENET),
    "tf_mobilenetv1_050": (_tf_mobilenet(1, 0.5), 224, TF_MOBILENET),
    "tf_mobilenetv1_075": (_tf_mobilenet(1, 0.75), 224, TF_MOBILENET),
    "tf_mobilenetv2_100": (_tf_mobilenet(2, 1.0), 224, TF_MOBILENET),
    "mobilenetv2_035": ("mobilenetv2_035", 224),
    "mobilenetv2_050": ("mobilenetv2_050", 224),
    "mobilenetv3_small_050": ("mobilenetv3_small_050", 224),
    "lcnet_035": ("lcnet_035", 224),
    "lcnet_050": ("lcnet_050", 224),
    # the Lite teachers' family at MobileNet-0.25 size, for weight selection from ImageNet Lite0 (--init-from)
    "efficientnet_lite_025": (_efficientnet_lite(0.25), 224, (TF_LITE_MEAN, TF_LITE_STD)),
    "efficientnet_lite_035": (_efficientnet_lite(0.35), 224, (TF_LITE_MEAN, TF_LITE_STD)),
}
TEACHERS = {
    "efficientnet_lite0": ("tf_efficientnet_lite0", 224),
    "efficientnet_lite1": ("tf_efficientnet_lite1", 240),
    "efficientnet_lite2": ("tf_efficientnet_lite2", 260),
}
# ImageNet weights shipped in mobilekd/assets (backbone only, BatchNorm folded: identity + bias), and the
# TF-compatible architecture a student name means when --pretrained asks for them
SHIPPED_WEIGHTS = {"tf_mobilenetv1_025": "tf_mobilenetv1_025_imagenet.safetensors"}
PRETRAINED_ARCH = {"mobilenetv1_025": "tf_mobilenetv1_025"}
ASSETS = Path(__file__).parent / "assets"


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


def default_preprocess(arch: str, size: int | None = None) -> Preprocess:
    if arch in TEACHERS:
        return Preprocess(size or TEACHERS[arch][1], TF_LITE_MEAN, TF_LITE_STD)
    if arch in STUDENTS:
        mean, std = STUDENTS[arch][2] if len(STUDENTS[arch]) > 2 else (IMAGENET_MEAN, IMAGENET_STD)
        return Preprocess(size or STUDENTS[arch][1], mean, std)
    if arch.startswith("timm:"):
        cfg = timm.get_pretrained_cfg(arch[5:])
        mean = tuple(255 * m for m in cfg.mean) if cfg else IMAGENET_MEAN
        std = tuple(255 * s for s in cfg.std) if cfg else IMAGENET_STD
        return Preprocess(size or (cfg.input_size[-1] if cfg else 224), mean, std,
                          crop=cfg.crop_pct if cfg else 1.0)
    raise ModelError(unknown_model_message(arch))


def unknown_model_message(name: str) -> str:
    return (f"unknown model {name!r}: use a student ({', '.join(STUDENTS)}), a teacher ({', '.join(TEACHERS)}), "
            f"'timm:<timm model name>', a mobilekd checkpoint folder, an .onnx file or an embeddings file")


def build_backbone(arch: str, pretrained: bool = False, num_classes: int = 0) -> nn.Module:
    """The timm network behind ``arch`` with ``num_classes`` outputs (0 = pooled features)."""
    if arch in STUDENTS:
        builder = STUDENTS[arch][0]
        if callable(builder):
            model = builder(num_classes=num_classes)
        else:
            model = timm.create_model(builder, pretrained=False, num_classes=num_classes)
        if pretrained:
            load_shipped_weights(arch, model)
        return model
    if arch in TEACHERS:
        model = timm.create_model(TEACHERS[arch][0], pretrained=False, num_classes=1000 if pretrained else num_classes)
        if pretrained:
            from mobilekd.weights import load_efficientnet_lite

            model.load_state_dict(load_efficientnet_lite(arch))
            if num_classes != 1000:
                model.reset_classifier(num_classes)
        return model
    if arch.startswith("timm:"):
        try:
            return timm.create_model(arch[5:], pretrained=pretrained, num_classes=num_classes)
        except RuntimeError as error:  # unknown model, or no weights / no hub
            raise ModelError(f"timm could not create {arch[5:]!r} (pretrained={pretrained}): {error}") from None
        except Exception as error:  # huggingface_hub offline / connection errors
            raise ModelError(f"timm could not fetch weights for {arch[5:]!r}: {type(error).__name__}: {error}. "
                             "Offline machines: set pretrained off or use a local checkpoint (and HF_HUB_OFFLINE=1 "
                             "to fail at once instead of after the hub's retries)") from None
    raise ModelError(unknown_model_message(arch))


def load_shipped_weights(arch: str, backbone: nn.Module) -> None:
    """Load the ImageNet backbone shipped in ``mobilekd/assets`` for ``arch`` (the classifier stays as built)."""
    if arch not in SHIPPED_WEIGHTS:
        raise ModelError(f"no ImageNet weights are shipped for student {arch} (shipped: "
                         f"{', '.join(SHIPPED_WEIGHTS)}; 'mobilenetv1_025 --pretrained' means tf_mobilenetv1_025). "
                         "Import Google's .tflite classifier: --student-weights FILE.tflite, or "
                         "python -m mobilekd.weights import FILE.tflite --arch ARCH --out DIR; or weight-select it from a larger "
                         "model of its family with --init-from MODEL")
    path = ASSETS / SHIPPED_WEIGHTS[arch]
    if not path.is_file():
        raise ModelError(f"the shipped weights {path} are missing from this installation")
    missing, unexpected = backbone.load_state_dict(load_file(str(path)), strict=False)
    if unexpected or [k for k in missing if not k.startswith("classifier.")]:
        raise ModelError(f"{path} does not fit {arch}: missing {missing[:3]}, unexpected {unexpected[:3]}")


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


# ------------------------------------------------------------------------------------------ checkpoints


def save_model(model: EmbeddingNet, directory: str | os.PathLike, metadata: dict | None = None) -> Path:
    """``directory/model.safetensors`` + ``directory/model.json`` (spec, preprocessing, metadata)."""
    directory = Path(directory)
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    with atomic_path(directory / "model.safetensors") as tmp:
        save_file(state, tmp)
    write_json(directory / "model.json", {"format": CHECKPOINT_FORMAT, "spec": model.spec.to_dict(),
                                          "embed_dim": model.embed_dim, **(metadata or {})})
    return directory


def is_checkpoint(path: str | os.PathLike) -> bool:
    path = Path(path)
    return (path / "model.json").is_file() or (path.suffix == ".safetensors" and path.with_suffix(".json").is_file())


def load_model(path: str | os.PathLike, map_location: str = "cpu") -> EmbeddingNet:
    """Rebuild a model saved by ``save_model`` (a folder, or a ``.safetensors`` with a ``.json`` beside)."""
    path = Path(path)
    if path.is_dir():
        meta_path, weights_path = path / "model.json", path / "model.safetensors"
    else:
        meta_path, weights_path = path.with_suffix(".json"), path
    if not weights_path.is_file() or not meta_path.is_file():
        raise ModelError(f"{path} is not a mobilekd checkpoint (needs model.safetensors and model.json)")
    try:
        meta = json.loads(meta_path.read_text())
        spec = ModelSpec.from_dict(meta["spec"])
    except (json.JSONDecodeError, KeyError, TypeError, ValueError) as error:
        raise ModelError(f"{meta_path} is not a valid mobilekd model description: {error}") from None
    model = EmbeddingNet(ModelSpec(**{**spec.__dict__, "pretrained": False}))
    model.spec = spec
    try:
        state = load_file(str(weights_path), device=map_location)
    except Exception as error:  # safetensors raises its own error types for damaged files
        raise ModelError(f"cannot read weights {weights_path}: {error}") from None
    try:
        missing, unexpected = model.load_state_dict(state, strict=False)
    except RuntimeError as error:  # tensor shapes that do not fit the architecture in model.json
        raise ModelError(f"{weights_path} does not fit {spec.arch} (embed_dim {spec.embed_dim}): "
                         f"{str(error).splitlines()[-1].strip()}") from None
    if missing or unexpected:
        raise ModelError(f"{weights_path} does not fit {spec.arch}: missing {missing[:3]}, unexpected {unexpected[:3]}")
    return model
