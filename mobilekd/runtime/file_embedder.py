"""A black-box teacher: any exported image embedder (``.onnx``, ``.tflite``) used like an EmbeddingNet.

It runs through ``mobilekd.runtime.runners`` -- the same runner export parity and ``benchmarks`` use. How to
feed it comes from its ``model.json`` contract when it has one, else from a ``<model>.json`` beside it (key
``preprocess``), else from the file's own input tensor with ImageNet mean/std.
"""

from __future__ import annotations

from pathlib import Path

import torch

from mobilekd.runtime.runners import open_runtime

# exported files a black-box teacher may be: single files (a teacher cache identifies the teacher by its sha256)
BLACK_BOX_SUFFIXES = (".onnx", ".tflite")


class FileEmbedder:
    """Duck-typed like an EmbeddingNet for ``mobilekd.inference``: ``preprocess``, ``embed_dim``, ``eval()`` and
    ``__call__(NCHW pixels) -> [N, D]`` unit vectors (the runner's, unchanged)."""

    def __init__(self, path: str | Path, threads: int | None = None, runtime: str | None = None, contract=None):
        self.path = Path(path)
        self.runner = open_runtime(self.path, contract, threads, runtime=runtime)
        self.preprocess = self.runner.contract.preprocess
        self.embed_dim = self.runner.contract.embed_dim or None

    def __call__(self, pixels: torch.Tensor) -> torch.Tensor:
        return torch.from_numpy(self.runner(pixels.detach().cpu().numpy()))

    def eval(self):  # duck-typed like an nn.Module teacher
        return self
