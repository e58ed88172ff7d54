"""mobilekd.data.sampler.PKBatchSampler: P classes x K images per batch, the same batches for the same
(seed, epoch) -- what makes ``--resume`` exact -- and every image reachable."""

import numpy as np
import pytest

from mobilekd.data.sampler import RANDOM_VIEWS, PKBatchSampler
from mobilekd.errors import DataError, MobileKDError

# 5 classes of unequal size; class 3 has a single image (fewer than K)
LABELS = np.repeat(np.arange(5), [6, 4, 9, 1, 5])


def class_counts(batch, labels=LABELS) -> dict[int, int]:
    classes, counts = np.unique(labels[[i for i, _ in batch]], return_counts=True)
    return dict(zip(classes.tolist(), counts.tolist()))


def test_every_batch_is_p_distinct_classes_times_k_images():
    sampler = PKBatchSampler(LABELS, classes_per_batch=3, images_per_class=2, seed=0, num_batches=50)
    batches = list(sampler)
    assert len(batches) == len(sampler) == 50
    for batch in batches:
        assert len(batch) == 6
        assert sorted(class_counts(batch).values()) == [2, 2, 2]  # 3 distinct classes, 2 images each
        for start in range(0, 6, 2):  # images arrive grouped by class, K at a time
            group = [i for i, _ in batch[start:start + 2]]
            assert len(set(LABELS[group])) == 1
            if LABELS[group[0]] != 3:  # a class with >= K images is drawn without replacement
                assert len(set(group)) == 2
        assert all(v == 0 for _, v in batch)  # num_views=1: always view 0


def test_a_class_smaller_than_k_is_drawn_with_replacement():
    sampler = PKBatchSampler(LABELS, classes_per_batch=5, images_per_class=3, seed=0, num_batches=3)
    only_image = int(np.flatnonzero(LABELS == 3)[0])
    for batch in sampler:
        assert class_counts(batch) == {0: 3, 1: 3, 2: 3, 3: 3, 4: 3}
        assert [i for i, _ in batch if LABELS[i] == 3] == [only_image] * 3


def test_same_seed_and_epoch_give_the_same_batches_and_others_differ():
    def batches(seed, epoch=0):
        sampler = PKBatchSampler(LABELS, 2, 2, num_views=4, seed=seed)
        sampler.set_epoch(epoch)
        return list(sampler)

    first = batches(seed=3, epoch=2)
    assert first == batches(seed=3, epoch=2)  # a fresh sampler (a resumed run) draws the same keys
    assert first != batches(seed=3, epoch=1)
    assert first != batches(seed=4, epoch=2)
    assert len(first) == (len(LABELS)) // 4  # default: one pass over the labeled images


def test_every_image_and_view_is_drawn_over_epochs():
    sampler = PKBatchSampler(LABELS, classes_per_batch=2, images_per_class=2, num_views=3, seed=0)
    seen_images, seen_views = set(), set()
    for epoch in range(30):
        sampler.set_epoch(epoch)
        for batch in sampler:
            seen_images.update(i for i, _ in batch)
            seen_views.update(v for _, v in batch)
    assert seen_images == set(range(len(LABELS)))
    assert seen_views == {0, 1, 2}


def test_random_views_are_fresh_view_ids_never_the_evaluation_view():
    sampler = PKBatchSampler(LABELS, 2, 3, num_views=RANDOM_VIEWS, seed=0, num_batches=20)
    views = [v for batch in sampler for _, v in batch]
    assert min(views) >= 1 and max(views) < 2**31 - 1
    assert len(set(views)) > 0.9 * len(views)  # effectively never repeated


def test_label_free_data_gives_p_times_k_random_images():
    labels = np.full(30, -1)
    sampler = PKBatchSampler(labels, classes_per_batch=4, images_per_class=2, seed=0)
    batches = list(sampler)
    assert len(batches) == 30 // 8
    assert all(len(batch) == 8 and all(0 <= i < 30 for i, _ in batch) for batch in batches)
    assert len({i for batch in batches for i, _ in batch}) > 8  # not the same images every batch


def test_semi_supervised_batches_append_unlabeled_images_after_the_pk_block():
    labels = np.concatenate([LABELS, np.full(7, -1)])
    sampler = PKBatchSampler(labels, 2, 2, seed=0, unlabeled_per_batch=3)
    assert len(sampler) == len(LABELS) // 4  # counted on the labeled images only
    for batch in sampler:
        indices = [i for i, _ in batch]
        assert len(indices) == 7
        assert (labels[indices[:4]] >= 0).all() and sorted(class_counts(batch[:4], labels).values()) == [2, 2]
        assert (labels[indices[4:]] == -1).all()
    unlabeled_only = PKBatchSampler(np.full(10, -1), 2, 2, unlabeled_per_batch=3)
    assert unlabeled_only.unlabeled_per_batch == 0  # nothing labeled: plain P*K random images


@pytest.mark.parametrize("p, k, message", [
    (0, 2, r"batch must have >= 1 class and >= 1 image per class, got 0x2"),
    (2, 0, r"got 2x0"),
    (6, 2, r"6 classes per batch requested but the data has only 5"),
])
def test_impossible_batches_are_one_clear_data_error(p, k, message):
    with pytest.raises(DataError, match=message) as error:
        PKBatchSampler(LABELS, p, k)
    assert isinstance(error.value, MobileKDError)
