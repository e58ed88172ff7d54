import os
import zipfile

import numpy as np
import pytest
from conftest import SHARED, make_image

from mobilekd.data import PKBatchSampler, ViewDataset, ViewSampler, load_image_set
from mobilekd.data.image_sets import read_unlabeled
from mobilekd.errors import DataError
from mobilekd.preprocess import Preprocess


def test_folder_layout_and_class_split(folder_dataset):
    everything = load_image_set(folder_dataset, "all")
    assert len(everything) == 48 and everything.num_classes == 8
    train = load_image_set(folder_dataset, "train")
    test = load_image_set(folder_dataset, "test")
    assert train.class_names == [f"class_{c}" for c in range(4)]
    assert test.class_names == [f"class_{c}" for c in range(4, 8)]
    assert set(train.labels) == {0, 1, 2, 3} and set(test.labels) == {0, 1, 2, 3}
    assert not set(train.keys) & set(test.keys)
    assert np.asarray(train.load_image(0)).shape == (20, 24, 3)


def _write_cub(root, official: bool):
    names = ["Albatross", "Auklet", "Cardinal", "Crow"]
    sep = " " if official else ", "
    base = 1 if official else 0
    image_lines, label_lines = [], []
    image_id = base
    for c, name in enumerate(names):
        folder = f"{c + 1:03d}.{name}" if official else name
        for i in range(3):
            rel = f"{folder}/{i:04d}.jpg"
            make_image(str(root / "images" / rel), seed=c * 10 + i)
            image_lines.append(f"{image_id}{sep}{rel}")
            label_lines.append(f"{image_id}{sep}{c + base}")
            image_id += 1
    (root / "images.txt").write_text("\n".join(image_lines) + "\n")
    (root / "image_class_labels.txt").write_text("\n".join(label_lines) + "\n")
    (root / "classes.txt").write_text("\n".join(f"{c + base}{sep}{n}" for c, n in enumerate(names)) + "\n")


@pytest.mark.parametrize("official", [True, False])
def test_cub_layouts(tmp_path, official):
    _write_cub(tmp_path, official)
    test = load_image_set(tmp_path, "test")
    assert test.class_names == ["Cardinal", "Crow"]
    assert len(test) == 6 and list(test.labels) == [0, 0, 0, 1, 1, 1]
    assert test.load_image(0).size == (24, 20)


def test_cars_devkit_layout(tmp_path):
    from scipy.io import savemat

    records = []
    for i in range(8):
        rel = f"car_ims/{i:06d}.jpg"
        make_image(str(tmp_path / rel), seed=i)
        records.append((rel, i // 2 + 1))  # classes 1..4, two images each
    dtype = [("relative_im_path", "O"), ("class", "O"), ("test", "O")]
    annotations = np.array([[(np.array([r]), np.array([[c]], dtype=np.uint8), np.array([[0]], dtype=np.uint8))
                             for r, c in records]], dtype=dtype)
    class_names = np.array([[np.array([f"Car {c}"]) for c in range(1, 5)]], dtype=object)
    savemat(str(tmp_path / "cars_annos.mat"), {"annotations": annotations, "class_names": class_names})
    train = load_image_set(tmp_path, "train")
    assert train.class_names == ["Car 1", "Car 2"] and len(train) == 4
    assert train.keys[0] == "car_ims/000000.jpg"


def test_sop_layout_uses_official_files(tmp_path):
    lines = {"train": [], "test": []}
    image_id = 1
    for split, classes in (("train", (1, 2)), ("test", (3, 4))):
        for c in classes:
            for i in range(2):
                rel = f"bicycle_final/{c}_{i}.JPG"
                make_image(str(tmp_path / rel), seed=image_id)
                lines[split].append(f"{image_id} {c} 1 {rel}")
                image_id += 1
    for split in lines:
        (tmp_path / f"Ebay_{split}.txt").write_text("image_id class_id super_class_id path\n" + "\n".join(lines[split]))
    test = load_image_set(tmp_path, "test")
    assert test.class_names == ["3", "4"] and len(test) == 4


def test_zip_layout_reads_without_unpacking(tmp_path, folder_dataset):
    archive = tmp_path / "chars.zip"
    with zipfile.ZipFile(archive, "w") as out:
        for root, _, files in os.walk(folder_dataset):
            for name in files:
                full = os.path.join(root, name)
                out.write(full, os.path.join("top", os.path.relpath(full, folder_dataset)))
    train = load_image_set(archive, "train")
    assert train.num_classes == 4 and train.class_names[0] == "top/class_0"
    assert train.load_image(3).size == (24, 20)


def test_unlabeled_folder(tmp_path):
    for i in range(5):
        make_image(str(tmp_path / "u" / f"sub{i % 2}" / f"{i}.png"), seed=i)
    images = load_image_set(tmp_path / "u", layout="unlabeled")
    assert len(images) == 5 and (images.labels == -1).all() and not images.labeled


@pytest.mark.skipif(not os.path.isdir(os.path.join(SHARED, "data", "cub100-227")), reason="../shared not present")
def test_shared_cub100_and_omniglot_protocol():
    cub = os.path.join(SHARED, "data", "cub100-227")
    train, test = load_image_set(cub, "train"), load_image_set(cub, "test")
    assert (len(train), len(test), train.num_classes, test.num_classes) == (2949, 2953, 50, 50)
    omniglot = load_image_set(os.path.join(SHARED, "data", "omniglot-small", "images_background_small1.zip"), "test")
    assert (len(omniglot), omniglot.num_classes) == (1360, 68)


def test_bundled_omniglot_protocol():
    from mobilekd.demo import BUNDLED_DATA

    train, test = load_image_set(BUNDLED_DATA, "train"), load_image_set(BUNDLED_DATA, "test")
    assert (train.num_classes, test.num_classes, len(train), len(test)) == (68, 68, 1360, 1360)


# ------------------------------------------------------------------ bad input


def test_wrong_path(tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        load_image_set(tmp_path / "nope", "train")


def test_empty_class(folder_dataset):
    (folder_dataset / "class_9").mkdir()
    with pytest.raises(DataError, match="class_9.*contains no images"):
        load_image_set(folder_dataset, "train")


def test_split_with_single_image_class(folder_dataset):
    for i in range(1, 6):
        os.remove(folder_dataset / "class_7" / f"{i}.png")
    with pytest.raises(DataError, match="fewer than 2 images.*class_7"):
        load_image_set(folder_dataset, "test")


def test_corrupt_image_is_named(folder_dataset):
    bad = folder_dataset / "class_2" / "3.png"
    bad.write_bytes(b"not a png")
    images = load_image_set(folder_dataset, "train")
    dataset = ViewDataset(images, {"x": Preprocess(16)}, preload_side=64, progress=False)
    (index, reason), = dataset.find_unreadable()  # the decode pass records it, for check_readable to report
    assert "class_2/3.png" in reason
    with pytest.raises(DataError, match=r"cannot read image .*class_2/3\.png"):
        dataset[index]


def test_zip_folder_points_at_zips(tmp_path):
    (tmp_path / "a.zip").write_bytes(b"")
    with pytest.raises(DataError, match="point --data at one of them"):
        load_image_set(tmp_path, "train")


# ------------------------------------------------------------------ sampling and views


def test_pk_sampler_is_balanced_and_deterministic():
    labels = np.repeat(np.arange(10), [3, 5, 7, 2, 9, 4, 4, 6, 8, 5])
    sampler = PKBatchSampler(labels, classes_per_batch=4, images_per_class=3, num_views=5, seed=1)
    batches = list(sampler)
    assert len(batches) == len(labels) // 12
    for batch in batches:
        indices = [i for i, _ in batch]
        classes, counts = np.unique(labels[indices], return_counts=True)
        assert len(classes) == 4 and (counts == 3).all()
        assert all(0 <= v < 5 for _, v in batch)
    assert batches == list(sampler)  # same epoch -> same batches
    sampler.set_epoch(1)
    assert batches != list(sampler)


def test_views_are_reproducible_and_shared_between_models(folder_dataset):
    images = load_image_set(folder_dataset, "train")
    dataset = ViewDataset(images, {"student": Preprocess(16), "teacher": Preprocess(32)},
                          ViewSampler(seed=3), progress=False)
    a, b = dataset[(2, 7)], dataset[(2, 7)]
    assert (a["student"] == b["student"]).all() and a["student"].shape == (3, 16, 16)
    assert a["teacher"].shape == (3, 32, 32)
    sampler = ViewSampler(seed=3)
    view = sampler(24, 20, 2, 7)
    assert view == sampler(24, 20, 2, 7) and view != sampler(24, 20, 2, 8)
    assert sampler(24, 20, 2, 0).box == pytest.approx((2 / 24, 0.0, 22 / 24, 1.0))  # view 0: centre square


def test_low_resolution_view_degrades_only_the_student(folder_dataset):
    from mobilekd.data import Degradation

    images = load_image_set(folder_dataset, "train")
    clean = ViewDataset(images, {"student": Preprocess(32)}, progress=False)[0]["student"]
    dataset = ViewDataset(images, {"student": Preprocess(32), "teacher": Preprocess(32)},
                          degradation={"student": Degradation(resolution=8)}, progress=False)
    item = dataset[0]
    assert (item["teacher"] == clean).all()
    assert not (item["student"] == clean).all()
    # down-sampling removes high frequencies: neighbouring pixels differ less
    assert item["student"].diff(dim=2).abs().mean() < clean.diff(dim=2).abs().mean()


def test_training_evaluation_and_parity_embed_the_same_evaluation_view(folder_dataset):
    """A contract with crop 0.875 (timm's crop_pct): training evaluation (``embed_image_set``, fresh and with the
    engine's decoded test set) feeds the model exactly the pixels export parity renders -- the central 87.5 %
    square, not the full centre square of training's view 0."""
    import torch

    from export.parity import render_images
    from mobilekd.inference import embed_image_set

    class Pixels:  # a "model" whose embedding is its input
        def __init__(self, preprocess):
            self.preprocess = preprocess

        def __call__(self, pixels):
            return pixels.flatten(1)

    images = load_image_set(folder_dataset, "test")
    pre = Preprocess(16, crop=0.875)
    parity = render_images(images, pre).reshape(len(images), -1)
    fresh = embed_image_set(Pixels(pre), images, progress=False)
    decoded = ViewDataset(images, {}, preload_side=64, progress=False)  # as the engine keeps its test set
    cached = embed_image_set(Pixels(pre), images, progress=False, decoded=decoded)
    np.testing.assert_array_equal(fresh, parity)
    np.testing.assert_array_equal(cached, parity)
    full_square = torch.stack([ViewDataset(images, {"x": pre}, progress=False)[i]["x"] for i in range(len(images))])
    assert not np.allclose(full_square.flatten(1).numpy(), parity)  # training's view 0 is another view
