"""A torch Dataset that renders views of an ImageSet for one or more models (student, teacher)."""

from __future__ import annotations

from typing import Mapping

import torch
from PIL import Image
from torch.utils.data import Dataset
from tqdm.auto import tqdm

from mobilekd.data.datasets import ImageSet
from mobilekd.data.views import Degradation, ViewSampler, evaluation_view, render
from mobilekd.preprocess import Preprocess


class ViewDataset(Dataset):
    """Item ``(index, view_id)`` (or a bare index = view 0) -> dict of rendered inputs + label/index/view.

    ``preprocess`` maps an input name ('student', 'teacher', ...) to that model's preprocessing; every
    input of an item shows the same view. ``preload_side`` decodes all images once into memory, shrunk so
    the longer side is at most that many pixels (0 = decode from disk every time); decoding up front also
    finds a corrupt file before training starts rather than in the middle of an epoch. ``evaluation``: every item
    is each input's own evaluation view (``evaluation_view`` of its Preprocess), whatever the view id.
    """

    def __init__(self, images: ImageSet, preprocess: Mapping[str, Preprocess], views: ViewSampler | None = None,
                 degradation: Mapping[str, Degradation] | None = None, preload_side: int = 0,
                 progress: bool = True, evaluation: bool = False):
        self.images = images
        self.evaluation = evaluation
        self.preprocess = dict(preprocess)
        self.views = views or ViewSampler()
        self.degradation = dict(degradation or {})
        self._cache: list[Image.Image] | None = None
        if preload_side:
            self._cache = [self._shrink(images.load_image(i), preload_side)
                           for i in tqdm(range(len(images)), desc=f"decode {images.name}", disable=not progress,
                                         leave=False)]

    def with_inputs(self, preprocess: Mapping[str, Preprocess], evaluation: bool | None = None) -> "ViewDataset":
        """The same images, views and decoded-image cache, rendered for other inputs (``evaluation``: see the
        class; None keeps this dataset's)."""
        other = ViewDataset(self.images, preprocess, self.views, self.degradation,
                            evaluation=self.evaluation if evaluation is None else evaluation)
        other._cache = self._cache
        return other

    @staticmethod
    def _shrink(image: Image.Image, side: int) -> Image.Image:
        if max(image.size) > side:
            image = image.copy()
            image.thumbnail((side, side), Image.BILINEAR)
        return image

    def __len__(self) -> int:
        return len(self.images)

    def image(self, index: int) -> Image.Image:
        return self._cache[index] if self._cache is not None else self.images.load_image(index)

    def __getitem__(self, key):
        index, view_id = key if isinstance(key, (tuple, list)) else (int(key), 0)
        image = self.image(index)
        if self.evaluation:
            item = {name: render(image, evaluation_view(*image.size, pp), pp, self.degradation.get(name))
                    for name, pp in self.preprocess.items()}
        else:
            view = self.views(image.size[0], image.size[1], index, view_id)
            item = {name: render(image, view, pp, self.degradation.get(name)) for name, pp in self.preprocess.items()}
        item.update(index=index, view=view_id, label=int(self.images.labels[index]))
        return item
