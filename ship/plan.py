"""The checked options of one ship (``Plan``): every bad input is refused here, before any work and before
anything is written -- missing data, an unknown format or precision, a format whose packages are missing, a
``--from`` that is not a checkpoint, a recipe that does not parse."""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass, field
from pathlib import Path

from mobilekd.errors import DataError, MobileKDError, ModelError

# format -> the packages its exporter and runtime import (the extras that install them)
FORMAT_PACKAGES = {"onnx": (("onnx", "onnxruntime", "onnxscript"), "mobilekd[export]"),
                   "tflite": (("litert_torch", "ai_edge_quantizer", "ai_edge_litert"), "mobilekd[litert]"),
                   "coreml": (("coremltools",), "mobilekd[export]")}
DEFAULT_RECIPE = "cub"  # the measured recipe of the shipped ImageNet student (mobilekd/configs/cub.yaml)


@dataclass
class Plan:
    out: Path
    data: str
    config: str | None  # the recipe (None: --from, no training)
    source: Path | None  # --from
    checkpoint: Path  # the student that is exported: --from, or the work's trained checkpoint
    exports: list[tuple[str, str]]  # (format, precision)
    threads: int
    calib_images: int
    latency_runs: int
    float_convs: int
    gates: dict
    gallery: str | None
    gallery_precision: str
    teacher: str | None
    teacher_size: int | None
    layout: str = "auto"
    train_fraction: float = 0.5
    data_fingerprint: str = ""
    structural_only: set = field(default_factory=set)
    title: str = "mobilekd model report"
    argv: list = field(default_factory=list)  # the ship command's own arguments (for the manifest)
    qat: bool = False  # int8 files come from a quantization-aware fine-tuning (export.qat) of the checkpoint
    unlabeled: str | None = None  # unlabeled photos the train stage distils on besides the data (--unlabeled)
    unlabeled_fingerprint: str = ""
    allow_regression: bool = False  # ship a student that ended below its starting point (steps.check_no_regression)


def missing_package(fmt: str) -> str | None:
    packages, extra = FORMAT_PACKAGES[fmt]
    for name in packages:
        try:
            if importlib.util.find_spec(name) is None:
                raise ImportError(name)
        except (ImportError, ValueError):
            return f"--formats {fmt}: the package {name} is not installed (pip install '{extra}')"
    return None


def parse_exports(formats: str, precisions: str) -> list[tuple[str, str]]:
    """(format, precision) pairs, checked against what each exporter builds and what is installed."""
    import importlib

    from benchmarks import comma_choices

    chosen = comma_choices(formats, tuple(FORMAT_PACKAGES), "format")
    wanted = comma_choices(precisions, ("int8", "fp32", "fp16", "dynamic"), "precision")
    if not chosen or not wanted:
        raise MobileKDError("--formats and --precisions must name at least one format and one precision")
    pairs = []
    for fmt in chosen:
        problem = missing_package(fmt)
        if problem:
            raise MobileKDError(problem)
        choices = importlib.import_module(f"export.{fmt}").FORMAT.quantize_choices
        for precision in wanted:
            if precision not in choices:
                raise MobileKDError(f"--precisions {precision}: {fmt} files come in {', '.join(choices)} only")
            pairs.append((fmt, precision))
    return pairs


def structural_only(exports) -> set[str]:
    """Formats whose runtime cannot run here: Core ML predicts on macOS only, so elsewhere its files get a
    structural check (inputs, outputs, weight precision) and no parity, latency or recall numbers."""
    from mobilekd.runtime.runners import runtimes_for

    found = set()
    for fmt, _ in exports:
        extension = {"onnx": ".onnx", "tflite": ".tflite", "coreml": ".mlpackage"}[fmt]
        if runtimes_for(extension)[0].why_unavailable():
            found.add(fmt)
    return found


def source_checkpoint(path: str) -> tuple[Path, dict]:
    """``--from``: a real checkpoint (its model.json and weights load), and its model.json."""
    import json

    from mobilekd.models import load_model

    folder = Path(path).expanduser()
    if not folder.exists():
        raise ModelError(f"--from {folder}: no such checkpoint folder")
    if not folder.is_dir() or not (folder / "model.json").is_file():
        raise ModelError(f"--from {folder} is not a checkpoint (expected a folder with model.json and "
                         "model.safetensors, as written by python -m mobilekd.distill)")
    try:
        load_model(folder)
    except ModelError as error:
        raise ModelError(f"--from {folder}: {error}") from None
    return folder.absolute(), json.loads((folder / "model.json").read_text())


def recipe_config(config: str, data: str | None, checkpoint: Path, threads: int):
    """The distillation Config the train stage will run (parsed and validated now: a bad recipe fails first)."""
    from mobilekd.config import Config

    argv = ["--config", config, "--out", str(checkpoint), "--threads", str(threads)]
    argv += ["--data", data] if data else []
    return Config.from_args(argv, "mobilekd ship --config", "the ship's recipe")


def check_data(data: str | None, layout: str, train_fraction: float) -> str:
    """The data's fingerprint (image names, labels and sizes); a missing or unusable data set is one error."""
    from mobilekd.data import load_image_set
    from mobilekd.teacher_cache import data_fingerprint

    if not data:
        raise DataError("no data: pass --data DIR (a folder of class folders of photos; see docs/data.md)")
    for split in ("train", "test"):
        load_image_set(data, split, layout, train_fraction)  # both splits usable (>= 2 images per class)
    return data_fingerprint(load_image_set(data, "all", layout))


def unlabeled_fingerprint(folder: str | None) -> str:
    """The unlabeled photos' fingerprint (names and sizes): a changed folder retrains; an empty one is an error."""
    if not folder:
        return ""
    from mobilekd.data import load_image_set
    from mobilekd.teacher_cache import data_fingerprint

    return data_fingerprint(load_image_set(folder, layout="unlabeled"))


def title_for(data: str, arch: str) -> str:
    return f"{arch} on {Path(data).name}"
