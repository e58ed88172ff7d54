"""Views: which part of an image a model sees, reproducible from (seed, image index, view id).

A view is a crop box in the image's normalised coordinates plus a horizontal flip. Because it is a pure
function of ``(seed, index, view_id)``, the teacher and the student can render *the same* view at their own
resolutions -- on the same step, or hours apart through a teacher-embedding cache. Consistent views matter:
with teacher targets for the centre crop while the student sees random crops, distillation did not beat the
student alone (../shared/notes/calibration.md; Beyer et al., "Knowledge distillation: A good teacher is
patient and consistent", CVPR 2022).

View 0 of training is the central square, no flip; other ids are random-resized crops. How a model is
*evaluated* is its own contract's: ``evaluation_view`` (the central square of side ``preprocess.crop`` x
min(W, H)) -- the one definition shared by training evaluation, benchmarks, compat, export parity, the MediaPipe
metadata check and the Android core (``Preprocessor.kt``).
"""

from __future__ import annotations

import io
import math
from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image

from mobilekd.preprocess import Preprocess


@dataclass(frozen=True)
class View:
    box: tuple[float, float, float, float]  # left, top, right, bottom in [0, 1]
    flip: bool = False


@dataclass(frozen=True)
class ViewSampler:
    """timm/torchvision RandomResizedCrop box sampling (area ``scale``, aspect ``ratio``) + flip."""

    seed: int = 0
    scale: tuple[float, float] = (0.35, 1.0)
    ratio: tuple[float, float] = (3 / 4, 4 / 3)
    flip: bool = True
    eval_crop: float = 1.0

    def __call__(self, width: int, height: int, index: int, view_id: int) -> View:
        if view_id == 0:
            return center_view(width, height, self.eval_crop)
        rng = np.random.default_rng([self.seed, index, view_id])
        area = width * height
        for _ in range(10):
            target = area * rng.uniform(*self.scale)
            aspect = math.exp(rng.uniform(math.log(self.ratio[0]), math.log(self.ratio[1])))
            w = math.sqrt(target * aspect)
            h = math.sqrt(target / aspect)
            if w <= width and h <= height:
                left = rng.uniform(0, width - w)
                top = rng.uniform(0, height - h)
                break
        else:  # fall back to the central box of the clamped aspect (as torchvision does)
            w, h = float(width), float(height)
            left = top = 0.0
        flip = bool(self.flip and rng.random() < 0.5)
        return View((left / width, top / height, (left + w) / width, (top + h) / height), flip)


def center_view(width: int, height: int, crop: float = 1.0) -> View:
    side = crop * min(width, height)
    left = (width - side) / 2
    top = (height - side) / 2
    return View((left / width, top / height, (left + side) / width, (top + side) / height), False)


def evaluation_view(width: int, height: int, preprocess: Preprocess) -> View:
    """THE evaluation view of a model with contract ``preprocess``: the central square whose side is
    ``preprocess.crop`` x min(width, height), no flip (timm's ``crop_pct``; 1.0 for mobilekd's students)."""
    return center_view(width, height, preprocess.crop)


def render_evaluation(image: Image.Image, preprocess: Preprocess) -> torch.Tensor:
    """The model input of ``image`` under ``evaluation_view``: float32 CHW."""
    return render(image, evaluation_view(*image.size, preprocess), preprocess)


@dataclass(frozen=True)
class Degradation:
    """The cross-quality view (Yu et al. 2019): the student sees a low-resolution and/or JPEG-compressed
    image while the teacher sees the clean one. ``resolution``: down-sample to this many pixels and back;
    ``jpeg_quality``: re-encode at this JPEG quality (1-95)."""

    resolution: int | None = None
    jpeg_quality: int | None = None

    def __call__(self, image: Image.Image) -> Image.Image:
        size = image.size
        if self.resolution:
            image = image.resize((self.resolution, self.resolution), Image.BILINEAR).resize(size, Image.BILINEAR)
        if self.jpeg_quality:
            buffer = io.BytesIO()
            image.save(buffer, format="JPEG", quality=int(self.jpeg_quality))
            image = Image.open(io.BytesIO(buffer.getvalue())).convert("RGB")
        return image


def render(image: Image.Image, view: View, preprocess: Preprocess,
           degradation: Degradation | None = None) -> torch.Tensor:
    """Crop ``view`` out of ``image``, resize to the model's input and normalise: float32 CHW."""
    out = resize_view(image, view, preprocess)
    if view.flip:
        out = out.transpose(Image.FLIP_LEFT_RIGHT)
    if degradation is not None:
        out = degradation(out)
    return normalize(np.asarray(out, dtype=np.float32), preprocess)


def resize_view(image: Image.Image, view: View, preprocess: Preprocess) -> Image.Image:
    """``view``'s box of ``image`` resized to ``preprocess.size`` square (Pillow, which antialiases when
    shrinking), before the flip and the normalisation."""
    width, height = image.size
    left, top, right, bottom = view.box
    resample = {"bilinear": Image.BILINEAR, "bicubic": Image.BICUBIC}[preprocess.interpolation]
    return image.resize((preprocess.size, preprocess.size), resample,
                        box=(left * width, top * height, right * width, bottom * height))


def normalize(pixels_hwc: np.ndarray, preprocess: Preprocess) -> torch.Tensor:
    mean = np.asarray(preprocess.mean, dtype=np.float32)
    std = np.asarray(preprocess.std, dtype=np.float32)
    return torch.from_numpy(((pixels_hwc - mean) / std).transpose(2, 0, 1).copy())
