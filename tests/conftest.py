import os
from pathlib import Path

# The tests never need the Hugging Face hub: without internet, look-ups then fail at once instead of after the
# hub's retries. Set here for the test session (`import mobilekd` leaves the environment alone).
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import mobilekd  # noqa: E402,F401  (torchvision workaround before anything imports timm)
import numpy as np  # noqa: E402
import pytest  # noqa: E402
from PIL import Image  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent  # the repository
FIXTURES = Path(__file__).resolve().parent / "fixtures"
SHARED = os.path.join(os.path.dirname(__file__), "..", "..", "shared")


def tiny_config(data, out, **overrides):
    """A distillation Config that trains in seconds: 32 px student, 16-d, Lite0 teacher at 32 px, 3 short epochs."""
    from mobilekd.config import Config

    values = dict(data=str(data), out=str(out), student="mobilenetv1_025", student_size=32, embed_dim=16,
                  teacher="efficientnet_lite0", teacher_size=32, views=2, epochs=3, batch_classes=4,
                  images_per_class=3, steps_per_epoch=4, eval_every=1, absolute_weight=1.0, relative_weight=0.3,
                  relative_reduction="mean_sq", progress=False, threads=1, preload=64)
    values.update(overrides)
    return Config(**values)


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


# ------------------------------------------------------------------------------------------ shared exports

NOISE_SIZE, NOISE_DIM = 32, 32
# The int8 TFLite exports several modules check, as ``exported("tflite", *TFLITE_INT8...)`` options. The random-weight
# student maps all images to nearly the same direction, so the int8 output grid (scale ~1/128) creates
# nearest-neighbour ties and Recall@1 on 12 images is noise: those files gate on cosine, not on Recall@1.
TFLITE_INT8 = ("--quantize", "int8", "--calib-images", 8, "--max-r1-drop", 100)
TFLITE_INT8_INTEGER_IO = (*TFLITE_INT8, "--integer-io")


@pytest.fixture(scope="session")
def noise_student(tmp_path_factory):
    """The export tests' student, made once per session: a random-weight MobileNetV1-0.25 (seed 0, 32 px, 32-d,
    ImageNet mean/std) whose ``config.data`` names 6 classes x 4 coloured-noise PNGs (``write_noise_classes``:
    first 3 classes = train split = calibration, last 3 = test split = parity)."""
    import torch

    from mobilekd.models import create_model, save_model

    root = tmp_path_factory.mktemp("noise-student")
    data = write_noise_classes(root / "images")
    torch.manual_seed(0)
    ckpt = save_model(create_model("mobilenetv1_025", embed_dim=NOISE_DIM, size=NOISE_SIZE), root / "student",
                      {"config": {"data": str(data), "train_fraction": 0.5}})
    return {"root": root, "data": data, "ckpt": ckpt}


@pytest.fixture(scope="session")
def exported(noise_student):
    """``exported(fmt, *options)``: the folder of ``python -m export.<fmt> STUDENT *options`` for ``noise_student``,
    exported (exit 0 asserted) the first time a test asks for it and reused by every later test of the session
    -- a TFLite conversion and its parity run take seconds to minutes, and several modules check the same file."""
    import importlib

    made = {}

    def get(fmt: str, *options) -> Path:
        key = (fmt, *map(str, options))
        if key not in made:
            folder = noise_student["root"] / "exports" / "_".join(k.lstrip("-") for k in key)
            main = importlib.import_module(f"export.{fmt}").main
            assert main([str(noise_student["ckpt"]), "--out", str(folder), *key[1:]]) == 0, key
            made[key] = folder
        return made[key]

    return get


@pytest.fixture(scope="session", autouse=True)
def _one_conversion_per_graph(tmp_path_factory):
    """The float conversion of ``export.tflite`` (``litert_torch.convert``: ~15 s on this 2-core machine, most of
    the TFLite tests' time) and of ``export.onnx`` (``torch.onnx.export``, ~5 s) runs once per distinct float
    graph in a session; a later export of the same graph -- same weights, model spec, input layout and size,
    same normalisation folded into the graph (if any) -- gets a copy of that conversion's file and goes on
    through its own quantization, metadata, parity and checks. The key holds everything the two ``export_fp32``
    functions read from the job, so a different graph is always converted for real; the model's own
    preprocessing is not in its graph (e.g. the scalar-normalised student and the ImageNet one exported with
    --keep-normalization, same weights, share one conversion), and each export's parity run checks the file."""
    import hashlib
    import json
    import shutil

    try:
        import export.onnx as onnx_format
        import export.tflite as tflite_format
    except ImportError:  # the export extras are not installed: nothing to share
        yield
        return
    cache = tmp_path_factory.mktemp("fp32-conversions")
    made: dict = {}

    def shared(fmt, real):
        def export_fp32(job, path, *preprocess):
            digest = hashlib.sha256()
            for name, tensor in sorted(job.model.state_dict().items()):
                digest.update(name.encode())
                digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
            spec = {k: v for k, v in job.model.spec.to_dict().items() if k != "preprocess"}
            # the model's own normalisation is not in its graph; it is only when export_fp32 folds another
            # input normalisation in front of it (export.tflite: a preprocess that differs from the model's)
            folded = [[repr(job.model.preprocess), repr(p)] for p in preprocess if p is not None
                      and p != job.model.preprocess]
            digest.update(json.dumps([fmt, spec, job.layout, job.input_shape(), folded],
                                     sort_keys=True, default=str).encode())
            key = digest.hexdigest()
            if key not in made:
                file = cache / f"{key}{path.suffix}"
                made[key] = (real(job, file, *preprocess), file)
            shutil.copyfile(made[key][1], path)
            result = made[key][0]
            return (result[0], list(result[1])) if isinstance(result, tuple) else result  # notes: a fresh list

        return export_fp32

    with pytest.MonkeyPatch.context() as patch:
        for fmt in (onnx_format, tflite_format):
            patch.setattr(fmt, "export_fp32", shared(fmt.__name__, fmt.export_fp32))
        yield
