"""The model names mobilekd knows: students, teachers and ``timm:<name>``, and the timm network behind each.

* students: ``mobilenetv1_025`` (MobileNetV1, width 0.25 -- the seed's student), ``mobilenetv2_035``,
  ``mobilenetv2_050``, ``mobilenetv3_small_050``, ``lcnet_035``, ``lcnet_050`` (symmetric padding, from
  scratch), ``efficientnet_lite_025`` / ``efficientnet_lite_035`` (EfficientNet-Lite at width 0.25 / 0.35,
  TF-Lite preprocessing, weight-selected from ImageNet Lite0 with ``--init-from efficientnet_lite0``: see
  ``mobilekd.weights.selection``); and the TensorFlow-compatible ``tf_mobilenetv1_025/050/075``,
  ``tf_mobilenetv2_100`` (timm's convention: TF "SAME" padding, ReLU6, BN eps 1e-3, input
  ``(x - 127.5) / 127.5``) that compute the same function as Google's ImageNet ``.tflite`` classifiers
  (``mobilekd.weights.tflite_import``);
* teachers with real ImageNet weights from PyPI wheels: ``efficientnet_lite0/1/2`` (timm
  ``tf_efficientnet_lite0..2``; see ``mobilekd.models.pretrained``);
* ``timm:<name>``: any timm model (``pretrained=True`` needs the Hugging Face hub).
"""

from __future__ import annotations

import timm
from torch import nn

from mobilekd.errors import ModelError
from mobilekd.models.pretrained import load_efficientnet_lite, load_shipped_weights
from mobilekd.preprocess import (IMAGENET_MEAN, IMAGENET_STD, TF_LITE_MEAN, TF_LITE_STD, TF_MOBILENET_MEAN,
                                 TF_MOBILENET_STD, Preprocess)


def _mobilenetv1_025(**kwargs) -> nn.Module:
    # timm has no registered 0.25 variant, and create_model("mobilenetv1_100", channel_multiplier=0.25)
    # raises a TypeError; the generator takes the multiplier directly (213k params, 256-d features).
    from timm.models.efficientnet import _gen_mobilenet_v1

    return _gen_mobilenet_v1("mobilenetv1_100", 0.25, **kwargs)


def _tf_mobilenet(version: int, width: float):
    """A TensorFlow-compatible MobileNet (timm's ``tf_`` convention): TF "SAME" padding (the extra row/column of
    a stride-2 layer at the bottom/right), ReLU6 (timm's default for both generators), BN eps 1e-3 as TF-slim."""
    from timm.models.efficientnet import _gen_mobilenet_v1, _gen_mobilenet_v2

    generator = _gen_mobilenet_v1 if version == 1 else _gen_mobilenet_v2

    def build(**kwargs) -> nn.Module:
        return generator(f"mobilenetv{version}_100", width, pad_type="same", bn_eps=1e-3, **kwargs)

    return build


def _efficientnet_lite(width: float):
    """EfficientNet-Lite at ``width`` x Lite0's channels, depth 1.0, built like timm's ``tf_efficientnet_lite0``
    (TF "SAME" padding, BN eps 1e-3, ReLU6) so every tensor has a same-named counterpart in the ImageNet Lite0
    for ``--init-from efficientnet_lite0``. timm rounds channels to multiples of 8 and keeps the family's fixed
    32-channel stem and 1280-channel head conv (at width 0.25 the head is 105k of 359k parameters; the pooled
    features are 1280-d like the Lite teachers')."""

    def build(**kwargs) -> nn.Module:
        from timm.models._efficientnet_builder import BN_EPS_TF_DEFAULT
        from timm.models.efficientnet import _gen_efficientnet_lite

        return _gen_efficientnet_lite("tf_efficientnet_lite0", channel_multiplier=width, depth_multiplier=1.0,
                                      bn_eps=BN_EPS_TF_DEFAULT, pad_type="same", **kwargs)

    return build


TF_MOBILENET = (TF_MOBILENET_MEAN, TF_MOBILENET_STD)
# name -> (timm name or builder, default input size[, preprocessing (mean, std)]); without the third entry the
# mean/std follow from the family (ImageNet for students, TF-Lite's for teachers, the pretrained cfg for
# timm:<name>): see default_preprocess
STUDENTS = {
    "mobilenetv1_025": (_mobilenetv1_025, 224),
    "tf_mobilenetv1_025": (_tf_mobilenet(1, 0.25), 224, TF_MOBILENET),
    "tf_mobilenetv1_050": (_tf_mobilenet(1, 0.5), 224, TF_MOBILENET),
    "tf_mobilenetv1_075": (_tf_mobilenet(1, 0.75), 224, TF_MOBILENET),
    "tf_mobilenetv2_100": (_tf_mobilenet(2, 1.0), 224, TF_MOBILENET),
    "mobilenetv2_035": ("mobilenetv2_035", 224),
    "mobilenetv2_050": ("mobilenetv2_050", 224),
    "mobilenetv3_small_050": ("mobilenetv3_small_050", 224),
    "lcnet_035": ("lcnet_035", 224),
    "lcnet_050": ("lcnet_050", 224),
    # the Lite teachers' family at MobileNet-0.25 size, for weight selection from ImageNet Lite0 (--init-from)
    "efficientnet_lite_025": (_efficientnet_lite(0.25), 224, (TF_LITE_MEAN, TF_LITE_STD)),
    "efficientnet_lite_035": (_efficientnet_lite(0.35), 224, (TF_LITE_MEAN, TF_LITE_STD)),
}
TEACHERS = {
    "efficientnet_lite0": ("tf_efficientnet_lite0", 224),
    "efficientnet_lite1": ("tf_efficientnet_lite1", 240),
    "efficientnet_lite2": ("tf_efficientnet_lite2", 260),
}

def default_preprocess(arch: str, size: int | None = None) -> Preprocess:
    if arch in TEACHERS:
        return Preprocess(size or TEACHERS[arch][1], TF_LITE_MEAN, TF_LITE_STD)
    if arch in STUDENTS:
        mean, std = STUDENTS[arch][2] if len(STUDENTS[arch]) > 2 else (IMAGENET_MEAN, IMAGENET_STD)
        return Preprocess(size or STUDENTS[arch][1], mean, std)
    if arch.startswith("timm:"):
        cfg = timm.get_pretrained_cfg(arch[5:])
        mean = tuple(255 * m for m in cfg.mean) if cfg else IMAGENET_MEAN
        std = tuple(255 * s for s in cfg.std) if cfg else IMAGENET_STD
        return Preprocess(size or (cfg.input_size[-1] if cfg else 224), mean, std,
                          crop=cfg.crop_pct if cfg else 1.0)
    raise ModelError(unknown_model_message(arch))


def unknown_model_message(name: str) -> str:
    return (f"unknown model {name!r}: use a student ({', '.join(STUDENTS)}), a teacher ({', '.join(TEACHERS)}), "
            f"'timm:<timm model name>', a mobilekd checkpoint folder, an .onnx file or an embeddings file")


def build_backbone(arch: str, pretrained: bool = False, num_classes: int = 0) -> nn.Module:
    """The timm network behind ``arch`` with ``num_classes`` outputs (0 = pooled features)."""
    if arch in STUDENTS:
        builder = STUDENTS[arch][0]
        if callable(builder):
            model = builder(num_classes=num_classes)
        else:
            model = timm.create_model(builder, pretrained=False, num_classes=num_classes)
        if pretrained:
            load_shipped_weights(arch, model)
        return model
    if arch in TEACHERS:
        model = timm.create_model(TEACHERS[arch][0], pretrained=False, num_classes=1000 if pretrained else num_classes)
        if pretrained:
            model.load_state_dict(load_efficientnet_lite(arch))
            if num_classes != 1000:
                model.reset_classifier(num_classes)
        return model
    if arch.startswith("timm:"):
        try:
            return timm.create_model(arch[5:], pretrained=pretrained, num_classes=num_classes)
        except RuntimeError as error:  # unknown model, or no weights / no hub
            raise ModelError(f"timm could not create {arch[5:]!r} (pretrained={pretrained}): {error}") from None
        except Exception as error:  # huggingface_hub offline / connection errors
            raise ModelError(f"timm could not fetch weights for {arch[5:]!r}: {type(error).__name__}: {error}. "
                             "Offline machines: set pretrained off or use a local checkpoint (and HF_HUB_OFFLINE=1 "
                             "to fail at once instead of after the hub's retries)") from None
    raise ModelError(unknown_model_message(arch))
