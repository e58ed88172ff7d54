"""Checkpoints: ``model.safetensors`` + ``model.json`` (format, ``ModelSpec``, embedding size, metadata)."""

from __future__ import annotations

import json
import os
from pathlib import Path

from safetensors.torch import save_file

from mobilekd.errors import ModelError
from mobilekd.io import atomic_path, write_json
from mobilekd.models.embedding_net import EmbeddingNet, ModelSpec
from mobilekd.models.state_dicts import load_checked, read_state_dict

CHECKPOINT_FORMAT = "mobilekd-model/1"


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
    state, _ = read_state_dict(weights_path, unwrap=(), device=map_location)
    load_checked(model, state, weights_path, f"{spec.arch} (embed_dim {spec.embed_dim})")
    return model
