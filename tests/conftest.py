import os

# The tests never need the Hugging Face hub: without internet, look-ups then fail at once instead of after the
# hub's retries. Set here for the test session (`import mobilekd` leaves the environment alone).
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import mobilekd  # noqa: E402,F401  (torchvision workaround before anything imports timm)
import numpy as np  # noqa: E402
import pytest  # noqa: E402
from PIL import Image  # noqa: E402

SHARED = os.path.join(os.path.dirname(__file__), "..", "..", "shared")


def make_image(path, seed: int, size=(24, 20), label_color=None):
    """A small real PNG/JPEG file: a class colour plus noise, so classes are separable."""
    rng = np.random.default_rng(seed)
    base = np.array(label_color if label_color is not None else rng.integers(0, 255, 3), dtype=np.float32)
    pixels = np.clip(base + rng.normal(0, 25, (size[1], size[0], 3)), 0, 255).astype(np.uint8)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    Image.fromarray(pixels).save(path)


def write_noise_classes(root, classes: int = 6, per_class: int = 4, size=(48, 40)):
    """ROOT/class<c>/<i>.png: a random colour per class plus strong noise (the export tests' parity data);
    the same pixels for the same arguments."""
    rng = np.random.default_rng(0)
    for c in range(classes):
        base = rng.integers(0, 256, 3)
        os.makedirs(os.path.join(root, f"class{c}"), exist_ok=True)
        for i in range(per_class):
            pixels = np.clip(base + rng.normal(0, 40, (size[1], size[0], 3)), 0, 255).astype(np.uint8)
            Image.fromarray(pixels).save(os.path.join(root, f"class{c}", f"{i}.png"))
    return root


CLASS_COLORS = [(220, 30, 30), (30, 220, 30), (30, 30, 220), (220, 220, 30), (30, 220, 220), (220, 30, 220),
                (128, 128, 128), (250, 150, 50)]


@pytest.fixture
def folder_dataset(tmp_path):
    """ROOT/<class>/<image>.png, 8 classes x 6 images."""
    root = tmp_path / "folder"
    for c, color in enumerate(CLASS_COLORS):
        for i in range(6):
            make_image(str(root / f"class_{c}" / f"{i}.png"), seed=c * 100 + i, label_color=color)
    return root


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path_factory, monkeypatch):
    """Teacher weights are cached per test session, never in the user's home."""
    cache = tmp_path_factory.getbasetemp() / "mobilekd-cache"
    monkeypatch.setenv("MOBILEKD_CACHE", str(cache))
