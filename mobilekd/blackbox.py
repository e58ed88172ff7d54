"""Teachers given only as an embedding function: an exported model file, or a file of precomputed embeddings.

* ``FileEmbedder``: any exported image embedder (``.onnx``, ``.tflite``) run through ``export.runtimes`` -- the
  same runner export parity and ``benchmarks`` use (a black-box teacher, or ``benchmarks.recall``'s exported
  file). How to feed it comes from its ``model.json`` contract when it has one, else from a ``<model>.json``
  beside it (key ``preprocess``), else from the file's own input tensor with ImageNet mean/std.
* ``PrecomputedEmbeddings``: a ``.npz`` with arrays ``keys`` (image keys as the data set names them, e.g.
  ``Black_footed_Albatross/0000.jpg``) and ``embeddings`` [N, D]. Only one view per image exists, so such a
  teacher supports view 0 only (no random crops for the student either: consistency first).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from mobilekd.errors import ModelError

# exported files a black-box teacher may be: single files (a teacher cache identifies the teacher by its sha256)
BLACK_BOX_SUFFIXES = (".onnx", ".tflite")


class FileEmbedder:
    """Duck-typed like an EmbeddingNet for ``mobilekd.embed``: ``preprocess``, ``embed_dim``, ``eval()`` and
    ``__call__(NCHW pixels) -> [N, D]`` unit vectors (the runner's, unchanged)."""

    def __init__(self, path: str | Path, threads: int | None = None, runtime: str | None = None, contract=None):
        from export.runtimes import open_runtime

        self.path = Path(path)
        self.runner = open_runtime(self.path, contract, threads, runtime=runtime)
        self.preprocess = self.runner.contract.preprocess
        self.embed_dim = self.runner.contract.embed_dim or None

    def __call__(self, pixels: torch.Tensor) -> torch.Tensor:
        return torch.from_numpy(self.runner(pixels.detach().cpu().numpy()))

    def eval(self):  # duck-typed like an nn.Module teacher
        return self


OnnxEmbedder = FileEmbedder  # the name before .tflite teachers


class PrecomputedEmbeddings:
    def __init__(self, path: str | Path):
        self.path = Path(path)
        try:
            with np.load(self.path, allow_pickle=False) as data:
                keys, embeddings = data["keys"], data["embeddings"]
        except (OSError, ValueError, KeyError) as error:
            raise ModelError(f"{self.path}: expected an .npz with arrays 'keys' and 'embeddings' ({error})") from None
        if embeddings.ndim != 2 or len(keys) != len(embeddings):
            raise ModelError(f"{self.path}: 'embeddings' must be [N, D] with one row per key")
        if not np.isfinite(embeddings).all():
            raise ModelError(f"{self.path}: embeddings contain NaN or infinite values")
        self.index = {str(k): i for i, k in enumerate(keys.tolist())}
        self.embeddings = F.normalize(torch.from_numpy(embeddings.astype(np.float32)), dim=1)
        self.embed_dim = int(embeddings.shape[1])
        self.preprocess = None  # needs no pixels

    def lookup(self, keys: list[str]) -> torch.Tensor:
        missing = [k for k in keys if k not in self.index]
        if missing:
            raise ModelError(f"{self.path} has no embedding for image {missing[0]!r} ({len(missing)} missing)")
        return self.embeddings[[self.index[k] for k in keys]]
