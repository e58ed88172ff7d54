"""Input normalisation folded into an exported graph.

Mobile image APIs normalise with ONE scalar for all channels: MediaPipe's Image Embedder
(``NormalizationOptions`` with per-channel values is refused) and Core ML's ``ImageType`` (one ``scale``, a bias
per channel). A student trained with per-channel mean/std (ImageNet's, mobilekd's default) is exported as
``model(x * scale + shift)``: the file takes ``(pixel - 127.5) / 127.5`` and converts it to the student's own
normalisation inside the graph with one multiply-add per channel, kept in float -- exact, not approximated.
"""

from __future__ import annotations

import numpy as np
import torch

from mobilekd.preprocess import Preprocess

SCALAR_MEAN, SCALAR_STD = (127.5,) * 3, (127.5,) * 3


def is_per_channel(mean, std) -> bool:
    return len(set(float(m) for m in mean)) > 1 or len(set(float(s) for s in std)) > 1


def scalar_preprocess(pre: Preprocess) -> Preprocess:
    """``pre`` with the scalar (127.5, 127.5) normalisation instead of its mean/std."""
    return Preprocess(pre.size, SCALAR_MEAN, SCALAR_STD, pre.crop, pre.interpolation, pre.channels)


def same_normalization(a: Preprocess, b: Preprocess) -> bool:
    return tuple(a.mean) == tuple(b.mean) and tuple(a.std) == tuple(b.std)


def renormalize(pixels: np.ndarray, src: Preprocess, dst: Preprocess) -> np.ndarray:
    """NCHW inputs normalised with ``src`` -> the same pixels normalised with ``dst``:
    ``((x * std_src + mean_src) - mean_dst) / std_dst`` per channel."""
    shape = (1, 3, 1, 1)
    src_mean, src_std, dst_mean, dst_std = (np.asarray(v, np.float32).reshape(shape)
                                            for v in (src.mean, src.std, dst.mean, dst.std))
    return ((pixels * src_std + src_mean - dst_mean) / dst_std).astype(np.float32)


class FoldedNormalization(torch.nn.Module):
    """``model(x * scale + shift)``: NCHW inputs normalised with ``src`` mean/std become the model's ``dst``
    ones inside the graph."""

    def __init__(self, model: torch.nn.Module, src: Preprocess, dst: Preprocess):
        super().__init__()
        src_std, dst_std = torch.tensor(src.std), torch.tensor(dst.std)
        self.model = model
        self.register_buffer("scale", (src_std / dst_std).view(1, 3, 1, 1))
        self.register_buffer("shift", ((torch.tensor(src.mean) - torch.tensor(dst.mean)) / dst_std).view(1, 3, 1, 1))

    def forward(self, x):
        return self.model(x * self.scale + self.shift)
