"""Student weights from files: Google's MobileNet ``.tflite`` classifiers and timm-style state dicts.

``import_tflite`` turns a ``.tflite`` classifier into a student (``mobilekd.weights.tflite_import`` reads it,
``mobilekd.weights.tflite_check`` checks it against the LiteRT interpreter); ``student_with_weights`` is
``--student-weights`` (``.tflite``, or ``.safetensors`` / ``.pth`` state dicts).
"""

from __future__ import annotations

import os

from safetensors.torch import save_file

from mobilekd.errors import ModelError
from mobilekd.io import atomic_path, require_file, sha256_file
from mobilekd.models.embedding_net import EmbeddingNet, ModelSpec, create_model
from mobilekd.models.pretrained import PRETRAINED_ARCH
from mobilekd.models.registry import STUDENTS, build_backbone, default_preprocess
from mobilekd.models.state_dicts import load_checked, read_state_dict
from mobilekd.weights import tflite_check
from mobilekd.weights.tflite_import import load_into, read_classifier


def tf_arch(arch: str) -> str:
    """The TF-compatible student an ``--arch`` names: ``mobilenetv1_025`` -> ``tf_mobilenetv1_025``."""
    name = arch if arch.startswith("tf_") else f"tf_{arch}"
    if name not in STUDENTS:
        choices = sorted(a for a in STUDENTS if a.startswith("tf_"))
        raise ModelError(f"--arch {arch!r} has no TF-compatible student to receive .tflite weights; use one of "
                         f"{', '.join(a[3:] for a in choices)} (or their tf_ names)")
    return name


def import_tflite(path: str | os.PathLike, arch: str, embed_dim: int = 0, size: int | None = None,
                  head_bn: bool = False, data: str | None = None, threads: int = 1):
    """A student with the ImageNet weights of a ``.tflite`` classifier (``mobilekd.weights.tflite_import``), checked
    against the LiteRT interpreter (``mobilekd.weights.tflite_check``; float files must match, quantised files report
    their agreement). Returns ``(EmbeddingNet, metadata for model.json)``; BatchNorm stays folded
    (``spec.bn_folded``) until training unfolds it (``mobilekd.weights.bn_unfold``)."""
    arch = tf_arch(arch)
    if size is not None:  # the sizes distill refuses (ModelError), before the file is read and self-checked
        create_model(arch, embed_dim=0, size=size)
    classifier = read_classifier(path)
    backbone = build_backbone(arch, num_classes=classifier.num_classes)
    load_into(classifier, backbone, arch)
    photos, where = tflite_check.sample_photos(data)
    check = {"photos": where}
    if photos:
        check.update(tflite_check.compare(classifier, backbone, photos, threads))
        if not classifier.quantized:
            check["passed"] = check["min_cosine"] >= tflite_check.FLOAT_MIN_COSINE and check["top1_agreement"] == 1.0
            if not check["passed"]:
                raise ModelError(f"{path}: self-check failed against the LiteRT interpreter on {where}: min cosine "
                                 f"{check['min_cosine']:.6f} (needs >= {tflite_check.FLOAT_MIN_COSINE}), top-1 agreement "
                                 f"{check['top1_agreement']:.2f} (needs 1.00); nothing written")
    backbone.reset_classifier(0)
    spec = ModelSpec(arch, embed_dim, head_bn, True, False, default_preprocess(arch, size or classifier.input_size),
                     bn_folded=True)
    model = EmbeddingNet(spec, backbone)
    source = {"file": os.path.basename(str(path)), "sha256": classifier.sha256, "weights": classifier.weight_dtype,
              "input": classifier.input_dtype, "input_size": classifier.input_size,
              "classes": classifier.num_classes}
    return model, {"source": source, "bn_folded": True, "self_check": check}


def student_with_weights(path: str | os.PathLike, arch: str, embed_dim: int = 0, size: int | None = None,
                         head_bn: bool = False, data: str | None = None, threads: int = 1):
    """``--student-weights``: the student ``arch`` with the backbone weights of ``path`` -- a ``.tflite``
    classifier (imported and self-checked, ``arch`` becomes its TF-compatible network) or a timm-style
    ``.safetensors`` / ``.pth`` state dict (classifier entries ignored). Returns ``(EmbeddingNet, metadata)``."""
    path = require_file(path, "--student-weights file", ModelError)
    if path.suffix.lower() == ".tflite":
        return import_tflite(path, arch, embed_dim, size, head_bn, data, threads)
    if path.suffix.lower() not in (".safetensors", ".pth", ".pt", ".bin"):
        raise ModelError(f"--student-weights takes a .tflite, .safetensors or .pth file, not {path.name}")
    state, meta = read_state_dict(path)
    file_arch = meta.get("arch")
    if file_arch and file_arch not in (arch, PRETRAINED_ARCH.get(arch)):
        raise ModelError(f"{path} holds weights for {file_arch}, not for --student {arch}")
    model = create_model(file_arch or arch, embed_dim=embed_dim, size=size, head_bn=head_bn)
    model.spec.bn_folded = meta.get("bn_folded") == "true"
    state = {k: v for k, v in state.items() if not k.startswith("classifier.")}
    load_checked(model.backbone, state, path, model.spec.arch)
    return model, {"source": {"file": path.name, "sha256": sha256_file(path)}, "bn_folded": model.spec.bn_folded}


def save_backbone(model, path: str | os.PathLike) -> None:
    """The backbone alone as safetensors, with the arch and BN state in its header (the shipped-asset format)."""
    state = {k: v.detach().contiguous() for k, v in model.backbone.state_dict().items()}
    with atomic_path(path) as tmp:
        save_file(state, tmp, metadata={"arch": model.spec.arch, "bn_folded": str(model.spec.bn_folded).lower()})
