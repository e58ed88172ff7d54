"""What a run trains on, from its configuration: the training images (labeled split + unlabeled extras), the
identity of a split (what a teacher cache was built from) and the seeded view sampler.

Functions of a configuration object (``mobilekd.config.Config`` or anything with the same attributes), kept
here beside the data code rather than in the configuration, which only holds and checks values.
"""

from __future__ import annotations

import os

import numpy as np

from mobilekd.data.image_sets import ImageSet, load_image_set
from mobilekd.data.views import ViewSampler


def training_images(config) -> ImageSet:
    """The training split of ``config.data`` followed by the unlabeled images (label -1), if any: the order the
    teacher cache and the samplers index."""
    images = load_image_set(config.data, "train", config.layout, config.train_fraction)
    if not config.unlabeled:
        return images
    unlabeled = load_image_set(config.unlabeled, layout="unlabeled")
    if 0 < config.unlabeled_limit < len(unlabeled):
        unlabeled = unlabeled.subset(np.linspace(0, len(unlabeled) - 1, config.unlabeled_limit).round().astype(int))
    return images.concat(unlabeled.without_labels())


def data_identity(config, split: str = "train") -> dict:
    """What determines the images of ``split`` (recorded in, and checked against, a teacher cache's manifest)."""
    return {"path": os.path.abspath(config.data), "layout": config.layout, "split": split,
            "train_fraction": config.train_fraction}


def view_sampler(config) -> ViewSampler:
    """The training views of ``config``: random-resized crops of at least ``crop_scale`` and flips, seeded by
    the run's seed (the ``views`` phase of :mod:`mobilekd.engine.seeds`)."""
    return ViewSampler(config.seed, scale=(config.crop_scale, 1.0), flip=config.flip)
