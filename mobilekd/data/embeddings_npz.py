"""The ``.npz`` embedding-file reader: precomputed embeddings looked up by image key.

``PrecomputedEmbeddings``: a ``.npz`` with arrays ``keys`` (image keys as the data set names them, e.g.
``Black_footed_Albatross/0000.jpg``) and ``embeddings`` [N, D] (``labels`` [N] optional). As a teacher it has
one view per image, so it supports view 0 only (no random crops for the student either). It is also the one
reader of the embedding files ``mobilekd.compat`` writes, and ``check_keyed_embeddings`` the one validation of
such files and of computed embeddings.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np
import torch

from mobilekd.errors import ModelError, loader_reason


def check_embeddings(x, name: str = "embeddings") -> np.ndarray:
    """float32 [N, D], finite, no all-zero rows; returned L2-normalised (an all-zero row has no direction)."""
    x = np.asarray(x, dtype=np.float32)
    if x.ndim != 2 or x.shape[0] == 0 or x.shape[1] == 0:
        raise ModelError(f"{name}: embeddings must be a non-empty [N, D] array, got shape {x.shape}")
    bad = ~np.isfinite(x).all(axis=1)
    if bad.any():
        raise ModelError(f"{name}: {int(bad.sum())} embedding(s) contain NaN or infinite values "
                         f"(first at row {int(np.argmax(bad))})")
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    if (norms == 0).any():
        raise ModelError(f"{name}: {int((norms == 0).sum())} embedding(s) are all zeros "
                         f"(first at row {int(np.argmax(norms[:, 0] == 0))})")
    return np.ascontiguousarray(x / norms, dtype=np.float32)


def check_keyed_embeddings(keys, embeddings, name: str) -> tuple[list[str], np.ndarray]:
    """One embedding per image id: (keys as str, check_embeddings(embeddings)); ids must be unique, since a
    repeated id makes the lookup by id ambiguous."""
    embeddings = check_embeddings(embeddings, name)
    keys = [str(k) for k in keys]
    if len(keys) != len(embeddings):
        raise ModelError(f"{name}: {len(embeddings)} embeddings but {len(keys)} keys")
    if len(set(keys)) != len(keys):
        duplicate = next(k for k, count in Counter(keys).items() if count > 1)
        raise ModelError(f"{name}: image id {duplicate!r} occurs more than once")
    return keys, embeddings


class PrecomputedEmbeddings:
    """An ``.npz`` of L2-normalised embeddings looked up by image key (see the module docstring)."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        if self.path.is_dir():
            raise ModelError(f"{self.path} is a directory, not an embeddings .npz file")
        if not self.path.is_file():
            raise ModelError(f"embeddings file not found: {self.path}")
        try:
            with np.load(self.path, allow_pickle=False) as data:
                if "keys" not in data or "embeddings" not in data:
                    raise ModelError(f"{self.path}: expected an .npz with arrays 'keys' and 'embeddings' "
                                     f"(found {', '.join(data.files) or 'none'})")
                keys, embeddings = data["keys"], data["embeddings"]
                self.labels = data["labels"] if "labels" in data else None
        except (OSError, ValueError, EOFError) as error:  # random bytes: "pickled data", bad zip, truncated
            raise ModelError(f"{self.path}: not a readable .npz -- not an embeddings file (arrays 'keys' and "
                             f"'embeddings') or a damaged one ({loader_reason(error)})") from None
        self.keys, normalised = check_keyed_embeddings(np.atleast_1d(keys).tolist(), embeddings, str(self.path))
        self.index = {k: i for i, k in enumerate(self.keys)}
        self.embeddings = torch.from_numpy(normalised)
        self.embed_dim = int(normalised.shape[1])
        self.preprocess = None  # needs no pixels

    def lookup(self, keys: list[str]) -> torch.Tensor:
        missing = [k for k in keys if k not in self.index]
        if missing:
            raise ModelError(f"{self.path} has no embedding for image {missing[0]!r} ({len(missing)} missing)")
        return self.embeddings[[self.index[k] for k in keys]]
