"""Image data sets in the layouts users have, split by the deep-metric-learning class-disjoint protocol.

Supported layouts (detected from what ``--data`` points at, or forced with ``layout=``):

* ``folder``    -- ``ROOT/<class>/<image>`` (any depth below the class folder is ignored).
* ``cub``       -- CUB-200-2011: ``images.txt``, ``image_class_labels.txt``, ``classes.txt`` and ``images/``;
                   ids may be 1-based and space separated (official) or 0-based and ``", "`` separated
                   (the ``cub100-227`` copy).
* ``cars``      -- Cars-196 devkit: ``cars_annos.mat`` with the images beside it (folder form: use ``folder``).
* ``sop``       -- Stanford Online Products: ``Ebay_train.txt`` / ``Ebay_test.txt`` (already class-disjoint).
* ``zip``       -- a ``.zip`` whose members are ``.../<class>/<image>`` (e.g. Omniglot), read without unpacking.
* ``unlabeled`` -- every image below a folder, no labels (label -1), for label-free distillation.

Class-disjoint protocol: the classes, in the data set's own order, are split so the first half trains and
the second half is the retrieval test set (CUB: 100/100, Cars: 98/98, CUB-100 copy: 0-49/50-99, SOP: its
official files). Labels are re-numbered 0..C-1 inside each split.
"""

from __future__ import annotations

import io
import os
import re
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np
from PIL import Image, UnidentifiedImageError

from mobilekd.errors import DataError

MAX_IMAGE_BYTES = 1 << 30  # an image file larger than this is refused unread (a 1 GiB JPEG is not a photo)
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".gif", ".tif", ".tiff")
LAYOUTS = ("auto", "folder", "cub", "cars", "sop", "zip", "unlabeled")
SPLITS = ("train", "test", "all")


class ImageSource:
    """Where image bytes come from: a folder or a zip archive (opened lazily, once per process)."""

    def __init__(self, root: str | os.PathLike):
        self.root = str(root)
        self.is_zip = self.root.lower().endswith(".zip")
        self._zip: zipfile.ZipFile | None = None
        self._zip_pid: int | None = None

    def read(self, key: str) -> bytes:
        if self.is_zip:
            if self._zip is None or self._zip_pid != os.getpid():  # zip handles do not survive fork
                self._zip = zipfile.ZipFile(self.root)
                self._zip_pid = os.getpid()
            if self._zip.getinfo(key).file_size > MAX_IMAGE_BYTES:
                raise OSError(f"larger than {MAX_IMAGE_BYTES} bytes")
            return self._zip.read(key)
        return read_regular_file(os.path.join(self.root, key), MAX_IMAGE_BYTES)

    def describe(self, key: str) -> str:
        return f"{self.root}:{key}" if self.is_zip else os.path.join(self.root, key)

    def __getstate__(self):  # picklable for DataLoader workers
        return {"root": self.root, "is_zip": self.is_zip, "_zip": None, "_zip_pid": None}


def read_regular_file(path: str, limit: int) -> bytes:
    """The bytes of the regular file ``path``; an OSError for anything else (a FIFO would block ``open`` forever,
    a device such as ``/dev/zero`` never ends) and for a file over ``limit`` bytes. Opened non-blocking and
    checked with ``fstat`` on the open descriptor, so a FIFO never blocks and nothing is read before the check."""
    import stat

    nonblocking = getattr(os, "O_NONBLOCK", 0)  # POSIX; elsewhere there are no FIFOs to open by name
    fd = os.open(path, os.O_RDONLY | nonblocking | getattr(os, "O_BINARY", 0))
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise OSError("not a regular file")
        if info.st_size > limit:
            raise OSError(f"larger than {limit} bytes")
        if nonblocking:
            os.set_blocking(fd, True)
        with os.fdopen(fd, "rb", closefd=False) as handle:
            data = handle.read(limit + 1)
    finally:
        os.close(fd)
    if len(data) > limit:
        raise OSError(f"larger than {limit} bytes")
    return data


@dataclass
class ImageSet:
    """A list of images with integer labels (-1 = unlabeled) and the class names behind the labels.

    Images normally come from one ``source``; a set joined with ``concat`` (labeled + unlabeled images) keeps
    one source per part in ``parts`` and the part of every image in ``part_of``.
    """

    source: ImageSource
    keys: list[str]
    labels: np.ndarray
    class_names: list[str] = field(default_factory=list)
    name: str = ""
    parts: list[ImageSource] | None = None
    part_of: np.ndarray | None = None

    def source_of(self, index: int) -> ImageSource:
        return self.source if self.parts is None else self.parts[int(self.part_of[index])]

    def concat(self, other: "ImageSet", name: str | None = None) -> "ImageSet":
        """This set followed by ``other`` (whose labels, if any, are offset past this set's classes)."""
        def pieces(images: ImageSet):
            if images.parts is None:
                return [images.source], np.zeros(len(images), dtype=np.int64)
            return images.parts, images.part_of

        parts_a, part_of_a = pieces(self)
        parts_b, part_of_b = pieces(other)
        offset = self.num_classes
        labels_b = np.where(other.labels >= 0, other.labels + offset, -1)
        return ImageSet(self.source, self.keys + other.keys, np.concatenate([self.labels, labels_b]),
                        self.class_names + other.class_names, name or f"{self.name}+{other.name}",
                        parts_a + parts_b, np.concatenate([part_of_a, part_of_b + len(parts_a)]))

    def __len__(self) -> int:
        return len(self.keys)

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def labeled(self) -> bool:
        return bool(len(self.labels)) and bool((self.labels >= 0).all())

    def load_image(self, index: int) -> Image.Image:
        """Decode one image as 8-bit RGB (see ``to_rgb8``); a corrupt or missing file raises DataError naming it."""
        return self._decode(index, to_rgb8)

    def check_image(self, index: int) -> str | None:
        """None if image ``index`` decodes, else why not (``path: reason``). Fast: a JPEG decodes at 1/8 scale
        (``draft``), which still reads every byte of it, so a truncated file is found."""
        def decode_small(image: Image.Image) -> None:
            image.draft("RGB", (64, 64))
            image.load()

        try:
            self._decode(index, decode_small)
        except DataError as error:
            return unreadable_reason(error)
        return None

    def _decode(self, index: int, convert):
        key, source = self.keys[index], self.source_of(index)
        try:
            with Image.open(io.BytesIO(source.read(key))) as image:
                return convert(image)
        except (OSError, KeyError, UnidentifiedImageError, ValueError, Image.DecompressionBombError) as error:
            raise DataError(f"{UNREADABLE}{source.describe(key)}: {error}") from None

    def subset(self, indices: Sequence[int], name: str | None = None) -> "ImageSet":
        """The given images, with labels re-numbered 0..C-1 in the order of the original classes."""
        indices = np.asarray(indices, dtype=np.int64)
        labels = self.labels[indices]
        part_of = None if self.part_of is None else self.part_of[indices]
        keys = [self.keys[i] for i in indices]
        if (labels < 0).any():
            return ImageSet(self.source, keys, labels, [], name or self.name, self.parts, part_of)
        used = np.unique(labels)
        remap = np.full(int(self.labels.max()) + 1, -1, dtype=np.int64)
        remap[used] = np.arange(len(used))
        return ImageSet(self.source, keys, remap[labels], [self.class_names[c] for c in used], name or self.name,
                        self.parts, part_of)

    def without_labels(self) -> "ImageSet":
        return ImageSet(self.source, list(self.keys), np.full(len(self), -1, dtype=np.int64), [],
                        self.name, self.parts, self.part_of)


UNREADABLE = "cannot read image "


def unreadable_reason(error: DataError) -> str:
    """``path: reason`` of an error raised by ``ImageSet.load_image``."""
    return str(error).removeprefix(UNREADABLE)


def to_rgb8(image: Image.Image) -> Image.Image:
    """``image`` as 8-bit RGB, scaling high-depth single-channel modes by their real range.

    Pillow's ``convert`` clips them instead: a 16-bit PNG (mode ``I;16``/``I``) comes out almost all white.
    Integer modes are scaled by their bit depth (16-bit: value / 257, i.e. 65535 -> 255); float (``F``)
    images are taken as 0..1 when every value lies there, else as 0..255, and clipped."""
    mode = image.mode
    if not (mode in ("I", "F") or mode.startswith("I;16")):
        return image.convert("RGB")
    values = np.asarray(image, dtype=np.float64)
    if mode == "F":
        scale = 255.0 if values.size and np.nanmin(values) >= 0 and np.nanmax(values) <= 1 else 1.0
    else:
        scale = 255.0 / (2 ** _bit_depth(image) - 1)
    gray = np.clip(np.rint(np.nan_to_num(values * scale)), 0, 255).astype(np.uint8)
    return Image.fromarray(gray).convert("RGB")


def _bit_depth(image: Image.Image) -> int:
    """Bits per sample of an integer single-channel image: 16 for ``I;16*`` and for PNG (whose only ``I``
    images are 16-bit greyscale), the file's BitsPerSample for TIFF, else the mode's 32."""
    if image.mode.startswith("I;16") or image.format == "PNG":
        return 16
    bits = getattr(image, "tag_v2", {}).get(258)  # TIFF BitsPerSample
    bits = bits[0] if isinstance(bits, tuple) else bits
    return int(bits) if bits else 32


# --------------------------------------------------------------------------------------------- layouts


def _is_image(name: str) -> bool:
    return name.lower().endswith(IMAGE_EXTENSIONS) and not os.path.basename(name).startswith(".")


def _from_class_keys(source: ImageSource, items: list[tuple[str, str]], name: str) -> ImageSet:
    """Build an ImageSet from (class name, key) pairs, classes sorted by name."""
    class_names = sorted({c for c, _ in items})
    index = {c: i for i, c in enumerate(class_names)}
    items = sorted(items, key=lambda item: (index[item[0]], item[1]))
    return ImageSet(source, [k for _, k in items], np.array([index[c] for c, _ in items], dtype=np.int64),
                    class_names, name)


def _unlistable(error: OSError) -> None:
    """``os.walk``'s onerror: a folder that cannot be listed is an error of its own, not "no images" (os.walk
    skips it silently by default)."""
    raise DataError(f"cannot read folder {error.filename}: {error.strerror or error}")


def read_folder(root: Path) -> ImageSet:
    """``ROOT/<class>/<image>``: every image below a class folder belongs to that class."""
    class_dirs = sorted(d for d in root.iterdir() if d.is_dir() and not d.name.startswith("."))
    if not class_dirs:
        raise DataError(f"{root} has no class folders (expected ROOT/<class>/<image>)")
    items = []
    for class_dir in class_dirs:
        files = [os.path.relpath(os.path.join(dirpath, f), root)
                 for dirpath, _, names in os.walk(class_dir, onerror=_unlistable) for f in names if _is_image(f)]
        if not files:
            raise DataError(f"class folder {class_dir} contains no images ({', '.join(IMAGE_EXTENSIONS)})")
        items += [(class_dir.name, f) for f in files]
    return _from_class_keys(ImageSource(root), items, root.name)


def read_zip(path: Path) -> ImageSet:
    """A zip whose members are ``.../<class>/<image>``; the class is the member's folder path."""
    try:
        with zipfile.ZipFile(path) as archive:
            names = [n for n in archive.namelist() if not n.endswith("/") and _is_image(n)]
    except zipfile.BadZipFile as error:
        raise DataError(f"{path} is not a readable zip file: {error}") from None
    if not names:
        raise DataError(f"{path} contains no images")
    items = [(os.path.dirname(n), n) for n in names]
    if any(c == "" for c, _ in items):
        raise DataError(f"{path}: images must sit in class folders inside the zip (.../<class>/<image>)")
    return _from_class_keys(ImageSource(path), items, path.stem)


def read_text(path: Path) -> str:
    """A layout file's text; DataError when it is not UTF-8 text."""
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError as error:
        raise DataError(f"{path} is not a UTF-8 text file (byte {error.start}: {error.reason})") from None
    except OSError as error:
        raise DataError(f"cannot read {path}: {error.strerror or error}") from None


def _int_id(value: str, where: str) -> int:
    """An integer class id of a layout file, or DataError naming where it stands."""
    try:
        return int(value)
    except ValueError:
        raise DataError(f"{where}: class id {value!r} is not an integer") from None


def _read_id_table(path: Path) -> list[tuple[str, str]]:
    """Lines of ``<id> <value>`` or ``<id>, <value>`` (both CUB variants)."""
    rows = []
    for number, line in enumerate(read_text(path).splitlines(), 1):
        if not line.strip():
            continue
        parts = re.split(r",\s*|\s+", line.strip(), maxsplit=1)
        if len(parts) != 2:
            raise DataError(f"{path}:{number}: expected '<id> <value>', got {line!r}")
        rows.append((parts[0], parts[1].strip()))
    return rows


def read_cub(root: Path) -> ImageSet:
    """CUB-200-2011 metadata files; images under ``images/``."""
    for required in ("images.txt", "image_class_labels.txt"):
        if not (root / required).is_file():
            raise DataError(f"{root} is missing {required} (CUB-200-2011 layout)")
    images = dict(_read_id_table(root / "images.txt"))
    labels = dict(_read_id_table(root / "image_class_labels.txt"))
    missing = set(images) - set(labels)
    if missing:
        raise DataError(f"{root / 'image_class_labels.txt'} has no label for image id {sorted(missing)[0]}")
    table = root / "image_class_labels.txt"
    labels = {image: _int_id(label, f"{table} (image id {image})") for image, label in labels.items()}
    class_ids = sorted(set(labels.values()))
    names = dict(_read_id_table(root / "classes.txt")) if (root / "classes.txt").is_file() else {}
    class_names = [names.get(str(c), str(c)) for c in class_ids]
    position = {c: i for i, c in enumerate(class_ids)}
    order = sorted(images, key=lambda i: (position[labels[i]], _id_order(i)))
    image_dir = root / "images" if (root / "images").is_dir() else root
    return ImageSet(ImageSource(image_dir), [images[i] for i in order],
                    np.array([position[labels[i]] for i in order], dtype=np.int64), class_names, root.name)


def _id_order(image_id: str):
    """Sort key of an image id: numeric ids by value (as before), any other text after them."""
    return (0, int(image_id), "") if image_id.lstrip("-").isdigit() else (1, 0, image_id)


def read_cars(root: Path) -> ImageSet:
    """Cars-196 ``cars_annos.mat`` (fields ``relative_im_path``, ``class``); all 16,185 images, 196 classes."""
    from scipy.io import loadmat

    try:
        mat = loadmat(str(root / "cars_annos.mat"))
    except Exception as error:  # scipy raises several types for a damaged .mat
        raise DataError(f"cannot read {root / 'cars_annos.mat'}: {error}") from None
    try:
        annotations = mat["annotations"][0]
        names = [str(np.asarray(n).ravel()[0]) for n in mat["class_names"].ravel()] if "class_names" in mat else []
        items = sorted(((int(np.asarray(a["class"]).ravel()[0]), str(np.asarray(a["relative_im_path"]).ravel()[0]))
                        for a in annotations))
    except (KeyError, IndexError, ValueError, TypeError) as error:
        raise DataError(f"{root / 'cars_annos.mat'} is not a Cars-196 annotation file (needs 'annotations' with "
                        f"'class' and 'relative_im_path' fields): {type(error).__name__} {error}") from None
    class_ids = sorted({c for c, _ in items})
    position = {c: i for i, c in enumerate(class_ids)}
    class_names = [names[c - 1] if c - 1 < len(names) else str(c) for c in class_ids]
    return ImageSet(ImageSource(root), [k for _, k in items],
                    np.array([position[c] for c, _ in items], dtype=np.int64), class_names, root.name)


def read_sop(root: Path, split: str) -> ImageSet:
    """Stanford Online Products: ``Ebay_train.txt`` / ``Ebay_test.txt`` (header, then id class super path)."""
    files = {"train": ["Ebay_train.txt"], "test": ["Ebay_test.txt"], "all": ["Ebay_train.txt", "Ebay_test.txt"]}
    items = []
    for filename in files[split]:
        path = root / filename
        if not path.is_file():
            raise DataError(f"{root} is missing {filename} (Stanford Online Products layout)")
        for number, line in enumerate(read_text(path).splitlines()[1:], 2):
            parts = line.split()
            if len(parts) != 4:
                raise DataError(f"{path}:{number}: expected 'image_id class_id super_class_id path'")
            items.append((_int_id(parts[1], f"{path}:{number}"), parts[3]))
    class_ids = sorted({c for c, _ in items})
    position = {c: i for i, c in enumerate(class_ids)}
    items.sort(key=lambda item: (position[item[0]], item[1]))
    return ImageSet(ImageSource(root), [k for _, k in items], np.array([position[c] for c, _ in items]),
                    [str(c) for c in class_ids], root.name)


def read_unlabeled(root: Path) -> ImageSet:
    """Every image below ``root`` (recursively), label -1."""
    if root.is_file() and root.suffix.lower() == ".zip":
        with zipfile.ZipFile(root) as archive:
            keys = sorted(n for n in archive.namelist() if _is_image(n))
    else:
        keys = sorted(os.path.relpath(os.path.join(d, f), root) for d, _, names in os.walk(root, onerror=_unlistable)
                      for f in names if _is_image(f))
    if not keys:
        raise DataError(f"{root} contains no images ({', '.join(IMAGE_EXTENSIONS)})")
    return ImageSet(ImageSource(root), keys, np.full(len(keys), -1, dtype=np.int64), [], root.name)


def detect_layout(path: Path) -> str:
    if path.is_file():
        if path.suffix.lower() == ".zip":
            return "zip"
        raise DataError(f"{path} is a file; --data expects a folder or a .zip of class folders")
    if (path / "images.txt").is_file() and (path / "image_class_labels.txt").is_file():
        return "cub"
    if (path / "cars_annos.mat").is_file():
        return "cars"
    if (path / "Ebay_train.txt").is_file() or (path / "Ebay_test.txt").is_file():
        return "sop"
    zips = sorted(p.name for p in path.glob("*.zip"))
    has_dirs = any(p.is_dir() and not p.name.startswith(".") for p in path.iterdir())
    if zips and not has_dirs:
        raise DataError(f"{path} holds zip files ({', '.join(zips)}): point --data at one of them")
    return "folder"


def load_image_set(path: str | os.PathLike, split: str = "all", layout: str = "auto",
                   train_fraction: float = 0.5, min_per_class: int = 2) -> ImageSet:
    """Load ``split`` ('train', 'test' or 'all') of the data set at ``path``.

    'train' is the first ``train_fraction`` of the classes, 'test' the rest (class-disjoint). Every class
    of a labeled split must hold at least ``min_per_class`` images (leave-one-out retrieval needs 2).
    """
    if split not in SPLITS:
        raise DataError(f"unknown split {split!r}; choose one of {', '.join(SPLITS)}")
    if layout not in LAYOUTS:
        raise DataError(f"unknown data layout {layout!r}; choose one of {', '.join(LAYOUTS)}")
    root = Path(path).expanduser()
    if not root.exists():
        raise DataError(f"data path does not exist: {root}")
    try:
        if layout == "auto":
            layout = detect_layout(root)
        if layout == "unlabeled":
            return read_unlabeled(root)
        if layout == "sop":
            images = read_sop(root, split)
        else:
            images = {"folder": read_folder, "cub": read_cub, "cars": read_cars, "zip": read_zip}[layout](root)
    except PermissionError as error:  # a listing or index file the user may not read
        raise DataError(f"cannot read {error.filename or root}: {error.strerror or error}") from None
    if split != "all" and layout != "sop":
        images = split_classes(images, split, train_fraction)
    check_split(images, min_per_class, f"{root} ({split} split)")
    return images


def split_classes(images: ImageSet, split: str, train_fraction: float = 0.5) -> ImageSet:
    """Class-disjoint split: the first ``train_fraction`` of the classes train, the rest test."""
    if not 0.0 < train_fraction < 1.0:
        raise DataError(f"train fraction must be in (0, 1), got {train_fraction}")
    num_train = int(round(images.num_classes * train_fraction))
    if num_train < 1 or num_train >= images.num_classes:
        raise DataError(f"{images.name}: {images.num_classes} classes cannot be split into train and test")
    chosen = images.labels < num_train if split == "train" else images.labels >= num_train
    return images.subset(np.flatnonzero(chosen), name=f"{images.name}:{split}")


def check_split(images: ImageSet, min_per_class: int, where: str) -> None:
    if len(images) == 0:
        raise DataError(f"{where} contains no images")
    counts = np.bincount(images.labels, minlength=images.num_classes)
    small = np.flatnonzero(counts < min_per_class)
    if len(small):
        names = ", ".join(f"{images.class_names[c]!r} ({counts[c]})" for c in small[:5])
        raise DataError(f"{where}: {len(small)} class(es) have fewer than {min_per_class} images: {names}")
