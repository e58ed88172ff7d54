"""The preprocessing contract every model carries, so data, export and the app never guess it.

An image becomes a model input in three steps, identical in training, export parity and on the phone:

1. crop the central square whose side is ``crop`` x min(width, height) (training instead crops a sampled
   box, see ``mobilekd.data.views``),
2. resize it to ``size`` x ``size`` with bilinear interpolation,
3. ``x = (pixel - mean) / std`` per RGB channel, ``pixel`` in 0..255.

EfficientNet-Lite: mean 127, std 128 (its TF training used ``(x - 127) / 128``); ImageNet torchvision/timm
models: mean (123.675, 116.28, 103.53), std (58.395, 57.12, 57.375).
"""

from __future__ import annotations

import math
import numbers
from dataclasses import asdict, dataclass, fields

from mobilekd.errors import ModelError

IMAGENET_MEAN = (123.675, 116.28, 103.53)
IMAGENET_STD = (58.395, 57.12, 57.375)
TF_LITE_MEAN = (127.0, 127.0, 127.0)
TF_LITE_STD = (128.0, 128.0, 128.0)
# Google's TF MobileNet classifiers (TF-slim, tflite): (x - 127.5) / 127.5, i.e. [-1, 1]
TF_MOBILENET_MEAN = (127.5, 127.5, 127.5)
TF_MOBILENET_STD = (127.5, 127.5, 127.5)
MAX_SIZE = 4096  # larger inputs are a typo, not a model: 4096^2 x 3 floats is already 200 MB per image
INTERPOLATIONS = ("bilinear", "bicubic")  # what mobilekd.data.views renders
CHANNELS = ("RGB",)


class PreprocessError(ModelError, ValueError):
    """An impossible preprocessing (a ValueError too, for callers that wrap those with the file's name)."""


def _integer(value) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def _number(value) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool) and math.isfinite(value)


@dataclass(frozen=True)
class Preprocess:
    size: int = 224
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    crop: float = 1.0
    interpolation: str = "bilinear"
    channels: str = "RGB"

    def __post_init__(self):
        """Refuse what no image can be fed with, naming the field (a checkpoint's model.json is read here)."""
        if not _integer(self.size) or not 8 <= self.size <= MAX_SIZE:
            raise PreprocessError(f"preprocess.size must be an integer from 8 to {MAX_SIZE}, got {self.size!r}")
        for name in ("mean", "std"):
            values = getattr(self, name)
            if not isinstance(values, (tuple, list)) or len(values) != 3 or not all(_number(v) for v in values):
                raise PreprocessError(f"preprocess.{name} must be 3 finite numbers (R, G, B), got {values!r}")
        if not all(v > 0 for v in self.std):
            raise PreprocessError(f"preprocess.std must be positive, got {self.std!r}")
        if not _number(self.crop) or not 0.0 < self.crop <= 1.0:
            raise PreprocessError(f"preprocess.crop must be in (0, 1], got {self.crop!r}")
        if self.interpolation not in INTERPOLATIONS:
            raise PreprocessError(f"preprocess.interpolation must be one of {INTERPOLATIONS}, "
                                  f"got {self.interpolation!r}")
        if self.channels not in CHANNELS:
            raise PreprocessError(f"preprocess.channels must be one of {CHANNELS}, got {self.channels!r}")

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> "Preprocess":
        """From model.json; a missing field takes its default, an unknown or impossible one is refused."""
        if not isinstance(data, dict):
            raise PreprocessError(f"preprocess must be an object, got {data!r}")
        unknown = sorted(set(data) - {f.name for f in fields(cls)})
        if unknown:
            raise PreprocessError(f"unknown field(s) {', '.join(f'preprocess.{k}' for k in unknown)} (known: "
                                  f"{', '.join(f.name for f in fields(cls))})")
        data = dict(data)
        for key in ("mean", "std"):
            if isinstance(data.get(key), (list, tuple)) and all(_number(v) for v in data[key]):
                data[key] = tuple(float(v) for v in data[key])
        return cls(**data)

    def with_size(self, size: int) -> "Preprocess":
        return Preprocess(size, self.mean, self.std, self.crop, self.interpolation, self.channels)
