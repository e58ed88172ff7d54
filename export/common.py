"""Shared plumbing of the exporters: options, checkpoint/data resolution, the build -> parity -> publish flow.

Every exporter (``export.onnx``, ``export.tflite``, ``export.coreml``) is a ``Format``: a ``convert`` that writes
the model file into a private work folder, its own command-line options (``add_options`` / ``read_options``,
kept in ``ExportJob.options``: this module names no format's flag), and a ``structural_check`` for files whose
runtime cannot run here (Core ML off macOS). The file is run through ``mobilekd.runtime.runners``, the one runner every
consumer of exported files uses. ``run_export`` does the rest identically for all of them:

1. load the checkpoint (``mobilekd.models.load_model``; wrong arch / damaged weights -> one clear error),
2. check the output folder before any work (new, empty or a previous export; never the checkpoint or a folder
   holding files the exporter did not write), load the parity images (``--data`` or the test split of the
   checkpoint's ``config.data``) and, for int8, the calibration images (``--calib`` or its training split),
3. build into ``.<out>.<random>`` beside ``--out``, measure parity through the runtime, write ``model.json``,
4. publish by renaming the folder to ``--out`` only if the gate passed (or ``--force``: kept and marked
   failing); a marker file (``MARKER``) in it lists what the exporter wrote, so a later export may replace it.
   A failing gate leaves nothing in ``--out`` and exits 1; bad input exits 2 (``cli_entry``).
"""

from __future__ import annotations

import argparse
import importlib.metadata
import json
import shutil
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np

from mobilekd.errors import MobileKDError, ModelError
from mobilekd.io import (check_replaceable, check_writable_dir, lock_folder, mark_owned, replace_folder,
                         sha256_file, write_json)
from mobilekd.runtime.contract import ModelContract, TensorSpec
from mobilekd.runtime.runners import runtimes_for, to_layout

# --quantize value -> model.json precision. One vocabulary for every format, the precision model.json records and
# the default folder (CHECKPOINT/export/<runtime>-<precision>) is named by; "none" (ONNX's and TFLite's old name
# for fp32) and "dynamic-int8" stay accepted as aliases.
PRECISION = {"none": "fp32", "fp32": "fp32", "fp16": "fp16", "dynamic": "dynamic", "dynamic-int8": "dynamic",
             "int8": "int8"}
GATE_FAILED = 1


class ExportArgumentParser(argparse.ArgumentParser):
    """argparse whose errors are one ``error: ...`` line and exit code 2 (through ``cli_entry``)."""

    def error(self, message):  # noqa: D401 -- argparse API
        raise MobileKDError(f"{self.prog}: {message}")


def add_parity_options(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("parity")
    group.add_argument("--data", help="held-out images for parity (default: the checkpoint's config.data)")
    group.add_argument("--split", default="test", choices=("train", "test", "all"),
                       help="split of --data used for parity (default: test, class-disjoint from training)")
    # 3000 covers the whole test split of CUB-100 (2,953) and Omniglot-small (1,360): on 1,000-image subsets the
    # 1-point Recall@1 gate moved by more than a point between files of equal mean cosine
    group.add_argument("--parity-images", type=int, default=3000,
                       help="at most this many parity images, whole classes, seeded (default 3000; 0 = all)")
    group.add_argument("--teacher", help="also compare with this teacher (name, checkpoint, .onnx or .npz)")
    group.add_argument("--teacher-size", type=int,
                       help="teacher input size (default: the checkpoint's config.teacher_size when it names the "
                            "same teacher, else the teacher's own)")
    group.add_argument("--min-mean-cos", type=float, help="gate: minimum mean cosine vs the float student")
    group.add_argument("--min-cos", type=float, help="gate: minimum per-image cosine vs the float student")
    group.add_argument("--max-r1-drop", type=float, help="gate: maximum Recall@1 drop (points) vs float")
    group.add_argument("--min-topk-overlap", type=float,
                       help="gate: minimum mean top-10 neighbour overlap with the float student, 0..1")
    group.add_argument("--max-noise-ratio", type=float,
                       help="gate: maximum noise-to-spread ratio (mean squared distance to the float embedding / "
                            "mean squared distance between float embeddings of different images)")
    group.add_argument("--threads", type=int, default=1, help="CPU threads for torch and the runtimes (default 1)")
    group.add_argument("--seed", type=int, default=0, help="seed for choosing parity/calibration images")


def build_parser(fmt: "Format") -> ExportArgumentParser:
    """The options every exporter shares, then the format's own (``fmt.add_options``)."""
    runtime, default_quantize = fmt.runtime, fmt.default_quantize
    parser = ExportArgumentParser(prog=f"python -m export.{runtime}", description=fmt.description)
    parser.add_argument("checkpoint", help="student checkpoint folder (model.json + model.safetensors)")
    parser.add_argument("--quantize", default=default_quantize, choices=fmt.quantize_choices,
                        type=lambda value: PRECISION.get(value, value),
                        help=f"precision (default {default_quantize}; none: an alias of fp32)")
    parser.add_argument("--out", help=f"output folder (default CHECKPOINT/export/{runtime}-<precision>)")
    parser.add_argument("--size", type=int, help="input size in pixels (default: the checkpoint's)")
    parser.add_argument("--layout", default=fmt.default_layout, choices=("NHWC", "NCHW"),
                        help=f"input layout (default {fmt.default_layout})")
    parser.add_argument("--calib", help="calibration images for int8 (default: the training split of config.data)")
    parser.add_argument("--calib-images", type=int, default=128, help="number of calibration images (default 128)")
    if fmt.add_options is not None:
        fmt.add_options(parser)
    parser.add_argument("--force", action="store_true",
                        help="write the file even if it fails its gate (marked failing in model.json; exit 1)")
    add_parity_options(parser)
    return parser


def export_main(fmt: "Format", argv: list[str] | None = None) -> int:
    """``python -m export.<format>``: parse the shared and the format's own options, then ``run_export``."""
    return run_export(fmt, build_parser(fmt).parse_args(argv))


# ------------------------------------------------------------------------------------------ the job


@dataclass
class ExportJob:
    checkpoint: Path
    model: object  # mobilekd.models.EmbeddingNet, eval mode, preprocess at the export size
    meta: dict
    precision: str
    layout: str
    out: Path
    calib: np.ndarray | None = None  # NCHW float32 calibration images
    calib_info: dict | None = None
    threads: int = 1
    options: dict = field(default_factory=dict)  # the format's own options (its ``read_options``)
    notes: list[str] = field(default_factory=list)

    @property
    def size(self) -> int:
        return self.model.preprocess.size

    def input_shape(self) -> list[int]:
        s = self.size
        return [1, s, s, 3] if self.layout == "NHWC" else [1, 3, s, s]

    def calib_batches(self) -> list[np.ndarray]:
        """Calibration images one by one, [1, ...] in the exported input layout."""
        assert self.calib is not None
        return [to_layout(self.calib[i:i + 1], self.layout) for i in range(len(self.calib))]


@dataclass
class BuildResult:
    """What a Format's ``convert`` produced in the work folder."""

    model_file: str
    input: TensorSpec
    output: TensorSpec
    quantization: dict
    exporter: str
    notes: list[str] = field(default_factory=list)
    build: dict = field(default_factory=dict)  # extra model.json build fields (tflite: mediapipe_metadata)
    preprocess: object | None = None  # the file's own input normalisation when it differs from the model's


@dataclass
class Format:
    """One exporter: its runtime name and file extension, ``convert``, the packages recorded in model.json, its
    command line (precisions, default layout, its own options) and, where its runtime may be missing, a
    ``structural_check``."""

    runtime: str
    extension: str
    convert: Callable[[ExportJob, Path], BuildResult]
    tools: tuple[str, ...]
    quantize_choices: tuple[str, ...]
    default_quantize: str
    default_layout: str
    description: str
    calibrated: bool = False  # int8 calibrates activations on real images
    structural_check: Callable[[Path, ModelContract], dict] | None = None
    add_options: Callable[[argparse.ArgumentParser], None] | None = None  # the format's own flags
    read_options: Callable[[argparse.Namespace, str], dict] | None = None  # (args, precision) -> job.options
    gate_hint: Callable[[ExportJob], str] | None = None  # advice after a failed gate


# ------------------------------------------------------------------------------------------ helpers


def path_size(path: Path) -> int:
    path = Path(path)
    return path.stat().st_size if path.is_file() else sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def tool_versions(packages: tuple[str, ...]) -> dict[str, str]:
    versions = {}
    for name in ("mobilekd", "torch", "numpy", *packages):
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            versions[name] = "not installed"
    return versions


def read_checkpoint_meta(checkpoint: Path) -> dict:
    try:
        return json.loads((checkpoint / "model.json").read_text())
    except (OSError, json.JSONDecodeError) as error:
        raise ModelError(f"cannot read {checkpoint / 'model.json'}: {error}") from None


def load_student(checkpoint: str, size: int | None, threads: int):
    """The float student (eval mode, preprocess at ``size``) and its checkpoint model.json."""
    import torch

    from mobilekd.models import load_model

    torch.set_num_threads(max(1, threads))
    path = Path(checkpoint)
    if not path.exists():
        raise ModelError(f"checkpoint not found: {path}")
    if not path.is_dir():
        raise ModelError(f"{path} is not a checkpoint folder (expected a folder with model.json and "
                         "model.safetensors)")
    model = load_model(path)  # weights of another architecture: a ModelError naming it
    if size is not None:
        if size < 8:
            raise MobileKDError(f"--size must be >= 8, got {size}")
        model.spec.preprocess = model.preprocess.with_size(size)
    model.eval()
    return model, read_checkpoint_meta(path)


def resolve_parity_data(args, checkpoint: Path, meta: dict):
    """(--data or the checkpoint's config.data, train fraction)."""
    from export.parity import resolve_data_path

    config = meta.get("config") or {}
    data = args.data or resolve_data_path(config.get("data"), checkpoint)
    if not data:
        raise MobileKDError(f"no parity data: {checkpoint / 'model.json'} has no config.data (not made by "
                            "python -m mobilekd.distill?); pass --data DATA")
    return data, float(config.get("train_fraction", 0.5))


def check_parity_options(args) -> None:
    """Parity numbers a run cannot mean, refused before any work: a negative --parity-images (0 means all) or
    a --teacher-size below 1 would otherwise silently mean "all images" / "the teacher's own size"."""
    if args.parity_images < 0:
        raise MobileKDError(f"--parity-images must be >= 0 (0 = all), got {args.parity_images}")
    if args.teacher_size is not None and args.teacher_size < 1:
        raise MobileKDError(f"--teacher-size must be a positive pixel count, got {args.teacher_size}")
    if args.threads < 1:
        raise MobileKDError(f"--threads must be >= 1, got {args.threads}")


def resolve_teacher_option(args, meta: dict):
    if not args.teacher:
        return None
    from mobilekd.models.resolve import resolve_teacher

    config = meta.get("config") or {}
    size = args.teacher_size or (config.get("teacher_size") if config.get("teacher") == args.teacher else None)
    teacher = resolve_teacher(args.teacher, size=size, threads=args.threads)
    return teacher


def load_parity(args, model, checkpoint: Path, meta: dict):
    from export.parity import load_parity_data

    data, train_fraction = resolve_parity_data(args, checkpoint, meta)
    teacher = resolve_teacher_option(args, meta)
    return load_parity_data(data, model.preprocess, args.parity_images, args.split, train_fraction, teacher,
                            args.teacher, args.seed)


def gates_from_args(args, precision: str):
    from export.parity import gates_for

    for name in ("min_mean_cos", "min_cos"):
        value = getattr(args, name)
        if value is not None and not -1.0 <= value <= 1.0:
            raise MobileKDError(f"--{name.replace('_', '-')} must be a cosine in [-1, 1], got {value}")
    if args.min_topk_overlap is not None and not 0.0 <= args.min_topk_overlap <= 1.0:
        raise MobileKDError(f"--min-topk-overlap must be a fraction in [0, 1], got {args.min_topk_overlap}")
    if args.max_noise_ratio is not None and not args.max_noise_ratio >= 0.0:
        raise MobileKDError(f"--max-noise-ratio must be >= 0, got {args.max_noise_ratio}")
    return gates_for(precision, min_mean_cos=args.min_mean_cos, min_cos=args.min_cos, max_r1_drop=args.max_r1_drop,
                     min_topk_overlap=args.min_topk_overlap, max_noise_ratio=args.max_noise_ratio)


MARKER, TOOL = ".mobilekd-export.json", "mobilekd-export"  # lists what the exporter wrote in --out


def legacy_export(folder: Path) -> set[str]:
    """The entries of an export made before the marker existed: exactly a mobilekd-export model.json and the
    model file it names (empty when the folder is anything else)."""
    try:
        data = json.loads((folder / "model.json").read_text())
    except (OSError, ValueError):
        return set()
    names = {p.name for p in folder.iterdir()}
    if not isinstance(data, dict) or data.get("format") != "mobilekd-export/1" or \
            names != {"model.json", data.get("model_file")}:
        return set()
    return names


def check_out_folder(out: Path, checkpoint: Path | None = None) -> None:
    """--out must be creatable/writable, and if it exists be empty or hold only what an export wrote there (its
    marker, ``MARKER``, lists it): that is replaced; a checkpoint, a run folder or the user's files never are."""
    if checkpoint is not None:
        ckpt, target = checkpoint.resolve(), out.resolve()
        if target == ckpt or target in ckpt.parents:
            raise MobileKDError(f"--out {out} is {'the' if target == ckpt else 'a folder holding the'} checkpoint "
                                f"{checkpoint}: exporting there would replace its model.safetensors, training "
                                "state and history; choose another folder (default: CHECKPOINT/export/...)")
    check_replaceable(out, MARKER, TOOL, "--out", legacy=legacy_export)
    check_writable_dir(out.parent, f"--out {out}: its folder")  # the work folder is made beside --out, then renamed onto it


def publish(work: Path, out: Path) -> None:
    """Mark the finished work folder as the exporter's and move it to ``out`` (replacing a previous export
    there, checked again just before) with renames only."""
    mark_owned(work, MARKER, TOOL)
    check_replaceable(out, MARKER, TOOL, "--out", legacy=legacy_export)
    replace_folder(work, out)


def default_out(checkpoint: Path, runtime: str, precision: str, layout: str, default_layout: str) -> Path:
    suffix = "" if layout == default_layout else f"-{layout.lower()}"
    return checkpoint / "export" / f"{runtime}-{precision}{suffix}"


# ------------------------------------------------------------------------------------------ the flow


def run_export(fmt: Format, args) -> int:
    from export.parity import calibration_images, compute_parity, embed_torch, format_report

    precision = PRECISION[args.quantize]
    options = fmt.read_options(args, precision) if fmt.read_options is not None else {}
    gates = gates_from_args(args, precision)
    if args.calib_images < 1:
        raise MobileKDError(f"--calib-images must be >= 1, got {args.calib_images}")
    check_parity_options(args)
    model, meta = load_student(args.checkpoint, args.size, args.threads)
    checkpoint = Path(args.checkpoint)
    out = Path(args.out) if args.out else default_out(checkpoint, fmt.runtime, precision, args.layout,
                                                     fmt.default_layout)
    check_out_folder(out, checkpoint)
    lock_folder(out, beside=True)  # one export per --out at a time; released when this process ends
    job = ExportJob(checkpoint, model, meta, precision, args.layout, out, threads=args.threads, options=options)

    runtime = runtimes_for(fmt.extension)[0]
    unavailable = runtime.why_unavailable()
    if unavailable and fmt.structural_check is None:
        raise MobileKDError(f"cannot measure parity of {fmt.extension} files: {unavailable}")
    parity_data = None if unavailable else load_parity(args, model, checkpoint, meta)
    if precision == "int8" and fmt.calibrated:
        config = meta.get("config") or {}
        from export.parity import resolve_data_path

        job.calib, job.calib_info = calibration_images(
            model.preprocess, args.calib_images, args.calib, resolve_data_path(config.get("data"), checkpoint),
            float(config.get("train_fraction", 0.5)), args.seed)

    out.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        print(f"export {fmt.runtime} {precision} ({args.layout}, {job.size}px) from {checkpoint}", flush=True)
        result = fmt.convert(job, work)
        model_path = work / result.model_file
        contract = ModelContract(
            model_file=result.model_file, runtime=fmt.runtime, precision=precision, input=result.input,
            output=result.output, preprocess=result.preprocess or model.preprocess, embed_dim=int(model.embed_dim),
            source={"checkpoint": str(checkpoint.resolve()), "arch": model.spec.arch,
                    "sha256": sha256_file(checkpoint / "model.safetensors")},
            model_sha256=sha256_file(model_path),
            quantization={**result.quantization, "calibration": job.calib_info},
            build={"tools": tool_versions(fmt.tools), "exporter": result.exporter,
                   "notes": job.notes + result.notes, **result.build})
        ModelContract.from_dict(contract.to_dict())  # never write a model.json that export.check or the app rejects
        if unavailable:
            report = fmt.structural_check(model_path, contract)
        else:  # fed the float model's pixels; the runner converts them where the file folds another normalisation
            runner = runtime.open(model_path, contract, args.threads, pixels=model.preprocess)
            reference = embed_torch(model, parity_data.pixels)
            report = compute_parity(runner, model, parity_data, gates, reference)
        report["file_bytes"] = path_size(model_path)
        passed = bool(report["passed"])
        if not passed and args.force:
            report["forced"] = True
        contract.parity = report
        print(format_report(report, f"{fmt.runtime} {precision}: {model_path.name} "
                                    f"{report['file_bytes'] / 1e6:.3f} MB"), flush=True)
        if not passed and not args.force:
            hint = ""
            if precision in ("int8", "dynamic"):
                hint = (f"; `python -m benchmarks.int8_sensitivity {checkpoint}` shows where int8 loses fidelity"
                        + (fmt.gate_hint(job) if fmt.gate_hint is not None else ""))
            print(f"error: {fmt.runtime} {precision} export failed its parity gate "
                  f"({'; '.join(report['failures'])}); nothing written to {out} (use --force to keep it){hint}",
                  file=sys.stderr)
            return GATE_FAILED
        write_json(work / "model.json", contract.to_dict())
        publish(work, out)
    finally:
        if work.exists():
            shutil.rmtree(work, ignore_errors=True)
    if not passed:
        print(f"error: {fmt.runtime} {precision} failed its parity gate; written to {out} because of --force "
              "and marked failing in model.json", file=sys.stderr)
        return GATE_FAILED
    print(f"wrote {out / contract.model_file} and {out / 'model.json'}")
    return 0
