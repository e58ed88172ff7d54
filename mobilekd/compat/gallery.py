"""Embeddings of one data split by one model: computed by the model or read from an ``.npz``, matched by image id.

An ``.npz`` embedding file holds arrays ``keys`` [N] (the data set's image ids), ``embeddings`` [N, D] and
optionally ``labels`` [N] and ``meta`` (JSON: the model, data, split and size it came from). It is read by
``mobilekd.data.embeddings_npz.PrecomputedEmbeddings`` -- the reader black-box teachers use -- and validated by
``check_keyed_embeddings``, so a file a teacher accepts is a file compat accepts. Embeddings are matched to the
data set by image id; a file lacking ids, holding duplicates, or rows/ids of different counts is an error.
"""

from __future__ import annotations

import copy
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from mobilekd.data.embeddings_npz import PrecomputedEmbeddings, check_keyed_embeddings
from mobilekd.errors import MobileKDError
from mobilekd.io import atomic_path


@dataclass
class EmbeddingSet:
    """One model's L2-normalised embeddings of a list of images, in ``keys`` order."""

    name: str
    keys: list[str]
    embeddings: np.ndarray
    labels: np.ndarray | None = None

    def __post_init__(self):
        self.keys, self.embeddings = check_keyed_embeddings(self.keys, self.embeddings, self.name)

    @property
    def dim(self) -> int:
        return int(self.embeddings.shape[1])


def check_aligned(reference: EmbeddingSet, others: list[EmbeddingSet]) -> None:
    """Every set must embed the same images, in the same order, as ``reference`` (checked by id)."""
    for other in others:
        if len(other.keys) != len(reference.keys):
            raise MobileKDError(f"{other.name} has {len(other.keys)} embeddings but {reference.name} has "
                                f"{len(reference.keys)}: both must embed the same images")
        if other.keys != reference.keys:
            i = next(i for i, (a, b) in enumerate(zip(reference.keys, other.keys)) if a != b)
            what = "in a different order" if set(other.keys) == set(reference.keys) else "different images"
            raise MobileKDError(f"{other.name} and {reference.name} embed {what}: image #{i} is "
                                f"{other.keys[i]!r} vs {reference.keys[i]!r}")


def read_embedding_file(path: str | Path) -> EmbeddingSet:
    """An ``.npz`` with ``keys`` [N] and ``embeddings`` [N, D] (``labels`` [N] optional)."""
    file = PrecomputedEmbeddings(path)
    return EmbeddingSet(str(path), file.keys, file.embeddings.numpy(), file.labels)


def select_images(embeddings: EmbeddingSet, keys: list[str]) -> EmbeddingSet:
    """The rows for ``keys`` (by image id), in that order; every key must be present."""
    index = {k: i for i, k in enumerate(embeddings.keys)}
    missing = [k for k in keys if k not in index]
    if missing:
        raise MobileKDError(f"{embeddings.name} has no embedding for {len(missing)} of the {len(keys)} images "
                            f"(first {missing[0]!r}): it was computed for other images or another data set")
    rows = np.array([index[k] for k in keys], dtype=np.int64)
    # rows of a validated set need no second L2 normalisation (it would move last bits); the ids still must be unique
    subset = copy.copy(embeddings)
    subset.keys, subset.embeddings = list(keys), embeddings.embeddings[rows]
    check_keyed_embeddings(subset.keys, subset.embeddings, subset.name)
    subset.labels = embeddings.labels[rows] if embeddings.labels is not None else None
    return subset


def load_split(data: str, split: str, layout: str = "auto"):
    """The ImageSet of ``split`` (train / test / all) of a data set."""
    from mobilekd.data import load_image_set

    return load_image_set(data, split, layout)


def embed_model(spec: str, images, size: int | None = None, threads: int | None = None, batch_size: int = 64,
                progress: bool = False) -> EmbeddingSet:
    """``spec``'s embeddings of ``images`` (an ImageSet): looked up in an ``.npz`` or computed (view 0)."""
    if str(spec).lower().endswith(".npz"):
        return select_images(read_embedding_file(spec), images.keys)
    import torch

    from mobilekd.inference import embed_image_set
    from mobilekd.models.resolve import resolve_teacher

    if threads:
        torch.set_num_threads(threads)
    model = resolve_teacher(str(spec), size, threads)
    if getattr(model, "preprocess", None) is None:
        raise MobileKDError(f"{spec}: cannot embed images with this model")
    embeddings = embed_image_set(model, images, batch_size=batch_size, progress=progress, desc=f"embed {spec}")
    return EmbeddingSet(str(spec), images.keys, embeddings, np.asarray(images.labels))


def write_embedding_file(path: str | Path, embeddings: EmbeddingSet, extra: dict | None = None) -> Path:
    """Write ``embeddings`` as an ``.npz`` that ``read_embedding_file`` reads back (atomically)."""
    path = Path(path)
    if path.suffix != ".npz":
        raise MobileKDError(f"{path}: embedding files end in .npz")
    arrays = {"keys": np.array(embeddings.keys), "embeddings": embeddings.embeddings}
    if embeddings.labels is not None:
        arrays["labels"] = np.asarray(embeddings.labels)
    arrays["meta"] = np.array(json.dumps({"model": embeddings.name, **(extra or {})}))
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as handle:
            np.savez(handle, **arrays)
    return path
