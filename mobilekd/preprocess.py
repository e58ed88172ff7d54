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

from dataclasses import asdict, dataclass

IMAGENET_MEAN = (123.675, 116.28, 103.53)
IMAGENET_STD = (58.395, 57.12, 57.375)
TF_LITE_MEAN = (127.0, 127.0, 127.0)
TF_LITE_STD = (128.0, 128.0, 128.0)
# Google's TF MobileNet classifiers (TF-slim, tflite): (x - 127.5) / 127.5, i.e. [-1, 1]
TF_MOBILENET_MEAN = (127.5, 127.5, 127.5)
TF_MOBILENET_STD = (127.5, 127.5, 127.5)


@dataclass(frozen=True)
class Preprocess:
    size: int = 224
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    crop: float = 1.0
    interpolation: str = "bilinear"
    channels: str = "RGB"

    def __post_init__(self):
        if self.size < 8:
            raise ValueError(f"input size must be >= 8, got {self.size}")
        if not 0.0 < self.crop <= 1.0:
            raise ValueError(f"crop must be in (0, 1], got {self.crop}")

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> "Preprocess":
        data = dict(data)
        for key in ("mean", "std"):
            if key in data:
                data[key] = tuple(float(v) for v in data[key])
        return cls(**data)

    def with_size(self, size: int) -> "Preprocess":
        return Preprocess(size, self.mean, self.std, self.crop, self.interpolation, self.channels)
