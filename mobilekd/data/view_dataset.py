"""A torch Dataset that renders views of an ImageSet for one or more models (student, teacher)."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Mapping

import torch
from PIL import Image
from torch.utils.data import Dataset
from tqdm.auto import tqdm

from mobilekd.data.image_sets import ImageSet, check_split, unreadable_reason
from mobilekd.data.views import Degradation, ViewSampler, evaluation_view, render
from mobilekd.errors import DataError
from mobilekd.io import atomic_path
from mobilekd.preprocess import Preprocess

SHOWN = 3  # unreadable files named in the error; the full list goes to a file


class ViewDataset(Dataset):
    """Item ``(index, view_id)`` (or a bare index = view 0) -> dict of rendered inputs + label/index/view.

    ``preprocess`` maps an input name ('student', 'teacher', ...) to that model's preprocessing; every
    input of an item shows the same view. ``preload_side`` decodes all images once into memory, shrunk so
    the longer side is at most that many pixels (0 = decode from disk every time); that decode pass also
    records every unreadable file (``unreadable``), which ``check_readable`` reports before training starts. ``evaluation``: every item
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
        self._cache: list[Image.Image | None] | None = None
        self.unreadable: list[tuple[int, str]] = []  # (index, "path: reason") found by the preload pass
        if preload_side:
            self._cache = []
            for i in tqdm(range(len(images)), desc=f"decode {images.name}", disable=not progress, leave=False):
                try:
                    self._cache.append(self._shrink(images.load_image(i), preload_side))
                except DataError as error:
                    self._cache.append(None)
                    self.unreadable.append((i, unreadable_reason(error)))

    def find_unreadable(self, progress: bool = False) -> list[tuple[int, str]]:
        """Every image that does not decode: from the preload pass, or (no preload) a quick check of each."""
        if self._cache is not None:
            return list(self.unreadable)
        found = (self.images.check_image(i) for i in tqdm(range(len(self.images)), desc=f"check {self.images.name}",
                                                          disable=not progress, leave=False))
        return [(i, reason) for i, reason in enumerate(found) if reason is not None]

    def without(self, indices) -> "ViewDataset":
        """The same data set less the images at ``indices`` (labels re-numbered, decoded images kept)."""
        drop = set(int(i) for i in indices)
        keep = [i for i in range(len(self)) if i not in drop]
        other = ViewDataset(self.images.subset(keep), self.preprocess, self.views, self.degradation)
        other._cache = None if self._cache is None else [self._cache[i] for i in keep]
        return other

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
        if self._cache is None:
            return self.images.load_image(index)
        if self._cache[index] is None:  # found unreadable by the preload pass
            raise DataError(f"cannot read image {dict(self.unreadable)[index]}")
        return self._cache[index]

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


def check_readable(datasets: dict[str, ViewDataset], report: str | Path, skip: bool = False,
                   progress: bool = False) -> tuple[dict[str, ViewDataset], int]:
    """Check every image of ``datasets`` (name -> data set) before any work, and report them all at once.

    Any unreadable file is listed in ``report`` (one ``name<TAB>path: reason`` line each). Without ``skip``
    that is one DataError: the count, the first few files and where the full list is. With ``skip`` the data
    sets come back without those images (each labeled split must still hold 2 images per class), with the
    number skipped."""
    found = {name: dataset.find_unreadable(progress) for name, dataset in datasets.items()}
    lines = [f"{name}\t{reason}" for name, bad in found.items() for _, reason in bad]
    if not lines:
        return datasets, 0
    if not skip:
        raise unreadable_error(lines, report, "or pass --skip-bad-images to train without them")
    write_list(lines, report)
    kept = {}
    for name, dataset in datasets.items():
        kept[name] = dataset.without([i for i, _ in found[name]]) if found[name] else dataset
        if found[name] and kept[name].images.labeled:
            check_split(kept[name].images, 2, f"{name} split without its unreadable images")
    tqdm.write(f"warning: skipping {len(lines)} unreadable image(s) (--skip-bad-images); list in {report}")
    return kept, len(lines)


def write_list(lines: list[str], report: str | os.PathLike | None) -> Path:
    """Write ``lines`` to ``report`` atomically (None: a new file in the temp folder); return its path."""
    if report is None:
        handle, report = tempfile.mkstemp(prefix="mobilekd-unreadable-images-", suffix=".txt")
        os.close(handle)
    with atomic_path(report) as tmp:
        # surrogateescape: a file name that is not UTF-8 is written back as its own bytes
        Path(tmp).write_text("\n".join(lines) + "\n", encoding="utf-8", errors="surrogateescape")
    return Path(report)


def unreadable_error(lines: list[str], report: str | os.PathLike | None, remedy: str = "") -> DataError:
    """One error for all unreadable files (``name<TAB>path: reason`` lines): the count, the first few, and the
    file (written now) with the full list."""
    report = write_list(lines, report)
    shown = "; ".join(line.split("\t", 1)[-1] for line in lines[:SHOWN])
    more = f"; and {len(lines) - SHOWN} more" if len(lines) > SHOWN else ""
    return DataError(f"{len(lines)} unreadable image(s): {shown}{more}; full list in {report}. "
                     f"Fix or remove them{', ' + remedy if remedy else ''}")
