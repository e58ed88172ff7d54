"""Teachers given only as an embedding function: an ONNX file, or a file of precomputed embeddings.

* ``OnnxEmbedder``: runs any ONNX image embedder with onnxruntime (a black-box teacher). Its preprocessing
  comes from a ``<model>.json`` beside it (the file ``export`` writes, key ``preprocess``), else from the
  model's static input size with ImageNet mean/std. NCHW or NHWC inputs are detected from the shape.
* ``PrecomputedEmbeddings``: a ``.npz`` with arrays ``keys`` (image keys as the data set names them, e.g.
  ``Black_footed_Albatross/0000.jpg``) and ``embeddings`` [N, D]. Only one view per image exists, so such a
  teacher supports view 0 only (no random crops for the student either: consistency first).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from mobilekd.errors import ModelError
from mobilekd.preprocess import Preprocess


class OnnxEmbedder:
    def __init__(self, path: str | Path, threads: int | None = None):
        import onnxruntime as ort

        self.path = Path(path)
        options = ort.SessionOptions()
        if threads:
            options.intra_op_num_threads = threads
        try:
            self.session = ort.InferenceSession(str(self.path), options, providers=["CPUExecutionProvider"])
        except Exception as error:  # onnxruntime raises its own exception classes
            raise ModelError(f"onnxruntime cannot load {self.path}: {error}") from None
        inputs = self.session.get_inputs()
        if len(inputs) != 1:
            raise ModelError(f"{self.path}: an image embedder has one input, this model has {len(inputs)}")
        self.input_name = inputs[0].name
        shape = inputs[0].shape
        self.channels_last = len(shape) == 4 and shape[-1] == 3
        sidecar = self.path.with_suffix(".json")
        if sidecar.is_file() and "preprocess" in json.loads(sidecar.read_text()):
            self.preprocess = Preprocess.from_dict(json.loads(sidecar.read_text())["preprocess"])
        else:
            size = shape[1] if self.channels_last else shape[2]
            self.preprocess = Preprocess(size if isinstance(size, int) else 224)
        out = self.session.get_outputs()[0]
        self.embed_dim = out.shape[-1] if isinstance(out.shape[-1], int) else None

    def __call__(self, pixels: torch.Tensor) -> torch.Tensor:
        x = pixels.detach().cpu().numpy().astype(np.float32)
        if self.channels_last:
            x = x.transpose(0, 2, 3, 1)
        out = self.session.run(None, {self.input_name: np.ascontiguousarray(x)})[0]
        return F.normalize(torch.from_numpy(np.asarray(out, dtype=np.float32)).reshape(len(x), -1), dim=1)

    def eval(self):  # duck-typed like an nn.Module teacher
        return self


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
