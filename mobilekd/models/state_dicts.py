"""The one reader of state-dict files and the one check that a state dict fits a network."""

from __future__ import annotations

import os
from pathlib import Path

import torch
from torch import nn

from mobilekd.errors import ModelError, loader_reason


def read_state_dict(path: str | os.PathLike, unwrap: tuple[str, ...] = ("state_dict",),
                    device: str = "cpu") -> tuple[dict[str, torch.Tensor], dict]:
    """``(tensors, header metadata)`` of a ``.safetensors`` file, or ``(tensors, {})`` of a ``torch.save`` file
    (``.pth``/``.pt``/``.bin``, read with ``weights_only=True``: no pickled code runs). A ``torch.save`` dict
    holding a dict under the first present key of ``unwrap`` (e.g. ``state_dict``) is unwrapped to it."""
    from safetensors import safe_open

    path = Path(path)
    if path.is_dir():
        raise ModelError(f"{path} is a directory, not a weights file")
    if not path.exists():
        raise ModelError(f"weights file not found: {path}")
    try:
        if path.suffix == ".safetensors":
            with safe_open(str(path), "pt", device=device) as handle:
                return {key: handle.get_tensor(key) for key in handle.keys()}, dict(handle.metadata() or {})
        state = torch.load(path, map_location=device, weights_only=True)
    except Exception as error:  # damaged files raise many types
        raise ModelError(f"cannot read weights {path}: not a weights file (.safetensors or a torch.save state "
                         f"dict), or a damaged one ({loader_reason(error)})") from None
    for key in unwrap:
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
            break
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ModelError(f"{path} is not a state dict of tensors")
    return state, {}


def load_checked(module: nn.Module, state: dict[str, torch.Tensor], source, target: str,
                 optional_prefix: str | None = None) -> None:
    """Load ``state`` into ``module``; a ModelError "SOURCE does not fit TARGET" names the first wrong shape or
    the missing / unexpected keys (missing keys under ``optional_prefix``, e.g. a classifier, are allowed)."""
    try:
        missing, unexpected = module.load_state_dict(state, strict=False)
    except RuntimeError as error:  # tensor shapes that do not fit the architecture
        raise ModelError(f"{source} does not fit {target}: {str(error).splitlines()[-1].strip()}") from None
    if optional_prefix:
        missing = [k for k in missing if not k.startswith(optional_prefix)]
    if missing or unexpected:
        raise ModelError(f"{source} does not fit {target}: missing {missing[:3]}, unexpected {unexpected[:3]}")
