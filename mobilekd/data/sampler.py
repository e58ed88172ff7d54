"""Batch samplers that yield ``(image index, view id)`` keys, deterministic per (seed, epoch).

Determinism per epoch is what makes ``--resume`` exact: a run restarted at epoch e draws the same batches
as one that never stopped. (pytorch-metric-learning's ``MPerClassSampler`` draws from numpy's global RNG
and yields indices only, so it can neither resume exactly nor carry view ids.)
"""

from __future__ import annotations

import numpy as np
from torch.utils.data import Sampler

from mobilekd.errors import DataError

RANDOM_VIEWS = 0  # num_views value meaning "a fresh random view every time"


def _draw_views(rng: np.random.Generator, count: int, num_views: int) -> np.ndarray:
    if num_views == RANDOM_VIEWS:
        return rng.integers(1, 2**31 - 1, size=count)
    return rng.integers(0, num_views, size=count)


class PKBatchSampler(Sampler):
    """P classes x K images per class in every batch (class-balanced), ``num_batches`` per epoch.

    A class with fewer than K images is sampled with replacement. When all labels are -1 (label-free data),
    batches are P*K random images. When labeled and unlabeled images are mixed (semi-supervised), every
    batch is P x K labeled images followed by ``unlabeled_per_batch`` random unlabeled ones.
    """

    def __init__(self, labels: np.ndarray, classes_per_batch: int, images_per_class: int, num_views: int = 1,
                 seed: int = 0, num_batches: int | None = None, unlabeled_per_batch: int = 0):
        self.labels = np.asarray(labels)
        self.P, self.K = int(classes_per_batch), int(images_per_class)
        self.num_views = int(num_views)
        self.seed = int(seed)
        self.epoch = 0
        self.unlabeled = np.flatnonzero(self.labels < 0)
        self.labeled = len(self.unlabeled) < len(self.labels)
        self.unlabeled_per_batch = int(unlabeled_per_batch) if len(self.unlabeled) and self.labeled else 0
        if self.P < 1 or self.K < 1:
            raise DataError(f"batch must have >= 1 class and >= 1 image per class, got {self.P}x{self.K}")
        if self.labeled:
            classes = np.unique(self.labels[self.labels >= 0])
            self.class_members = [np.flatnonzero(self.labels == c) for c in classes]
            if self.P > len(classes):
                raise DataError(f"{self.P} classes per batch requested but the data has only {len(classes)}")
        batch = self.P * self.K
        counted = len(self.labels) - len(self.unlabeled) if self.labeled else len(self.labels)
        self.num_batches = int(num_batches) if num_batches else max(1, counted // batch)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return self.num_batches

    def __iter__(self):
        rng = np.random.default_rng([self.seed, self.epoch, 7919])  # self.seed: run_seed(seed, "sampler", domain)
        for _ in range(self.num_batches):
            if self.labeled:
                chosen = rng.choice(len(self.class_members), size=self.P, replace=False)
                indices = np.concatenate([
                    rng.choice(self.class_members[c], size=self.K, replace=len(self.class_members[c]) < self.K)
                    for c in chosen])
                if self.unlabeled_per_batch:
                    extra = rng.choice(self.unlabeled, size=self.unlabeled_per_batch,
                                       replace=len(self.unlabeled) < self.unlabeled_per_batch)
                    indices = np.concatenate([indices, extra])
            else:
                indices = rng.choice(len(self.labels), size=self.P * self.K, replace=len(self.labels) < self.P * self.K)
            views = _draw_views(rng, len(indices), self.num_views)
            yield [(int(i), int(v)) for i, v in zip(indices, views)]
