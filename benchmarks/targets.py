"""Benchmark targets: load what the user named (a checkpoint, a model name, an .onnx / .tflite / .mlpackage)
and run it on one runtime.

``load_target`` turns a command-line MODEL into a ``Target`` (kind, preprocessing, contract, size on disk,
the PyTorch model when there is one); ``make_runner`` gives a runner for one runtime at a fixed thread count,
whose ``run`` takes preprocessed NCHW float32 pixels and returns float32 embeddings [N, D].

Runtimes: ``torch-eager``, ``torch-compile`` (checkpoints and names), and for exported files the registry of
``mobilekd.runtime.runners`` -- the one runner export parity uses too: ``onnxruntime-cpu`` (+ one entry per other
execution provider installed, e.g. ``onnxruntime-cuda``), ``litert-xnnpack`` (ai-edge-litert Interpreter,
default op resolver = XNNPACK), ``coreml`` (macOS only; elsewhere ``NotRunnable``).
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from export.common import path_size
from mobilekd.errors import MobileKDError, ModelError
from mobilekd.io import require_file
from mobilekd.preprocess import Preprocess
from mobilekd.runtime.runners import NotRunnable, file_kind, find_contract, open_runtime, runtimes_for

__all__ = ["NotRunnable", "Target", "load_target", "make_runner", "input_hw", "count_params_macs"]


@dataclass
class Target:
    spec: str  # what the user typed
    label: str
    kind: str  # checkpoint | name | onnx | tflite | coreml
    path: Path | None
    preprocess: Preprocess
    precision: str = "fp32"
    contract: object | None = None  # mobilekd.runtime.contract.ModelContract
    model: object | None = None  # mobilekd EmbeddingNet (checkpoints and names)
    source_model: object | None = None  # the checkpoint an exported file came from, when found
    file_bytes: int | None = None
    notes: list[str] = field(default_factory=list)

    @property
    def torch_model(self):
        return self.model if self.model is not None else self.source_model

    def runtimes(self, compile: bool = True) -> list[str]:
        if self.kind in ("checkpoint", "name"):
            return ["torch-eager"] + (["torch-compile"] if compile else [])
        # the default runtime of the file (reported as not runnable when it cannot run here) + any other available
        default, *others = runtimes_for(self.path)
        return [default.name] + [r.name for r in others if r.available()]

    def describe(self) -> dict:
        model = self.torch_model
        return {"label": self.label, "spec": self.spec, "kind": self.kind,
                "path": str(self.path) if self.path else None, "precision": self.precision,
                "file_bytes": self.file_bytes, "input_size": self.preprocess.size,
                "embed_dim": int(getattr(model, "embed_dim", 0)) or (self.contract.embed_dim if self.contract else None),
                "arch": getattr(getattr(model, "spec", None), "arch", None), "notes": list(self.notes)}


def default_label(spec: str) -> str:
    path = Path(spec)
    if file_kind(path):
        return f"{path.parent.name}/{path.name}" if path.parent.name else path.name
    if path.exists():
        return path.resolve().name
    return spec


def load_target(spec: str, size: int | None = None, label: str | None = None) -> Target:
    """What ``spec`` names, loaded far enough to know its preprocessing; ModelError if it cannot be."""
    path = Path(spec).expanduser()
    label = label or default_label(spec)
    kind = file_kind(path)
    if kind:
        if kind != "coreml":  # an .mlpackage is a folder
            require_file(path, "model file", ModelError)
        elif not path.exists():
            raise ModelError(f"model file not found: {path}")
        contract = find_contract(path)
        target = Target(spec, label, kind, path, Preprocess(), contract=contract, file_bytes=path_size(path))
        if contract is not None:
            target.preprocess = contract.preprocess
            target.precision = contract.precision
            checkpoint = (contract.source or {}).get("checkpoint")
            if checkpoint:
                target.source_model = _try_load_checkpoint(checkpoint, path.parent)
        else:
            target.notes.append("no model.json contract beside the file: ImageNet mean/std assumed")
        if size:
            target.notes.append("--size ignored: exported models have a fixed input shape")
        return target
    if path.exists():
        from mobilekd.models import check_input_size, is_checkpoint, load_model

        if not is_checkpoint(path):
            raise ModelError(f"{path} is neither a mobilekd checkpoint folder (model.json + model.safetensors) "
                             "nor an .onnx / .tflite / .mlpackage file")
        model = load_model(path).eval()
        preprocess = model.preprocess.with_size(check_input_size(model, size)) if size else model.preprocess
        weights = path / "model.safetensors" if path.is_dir() else path
        return Target(spec, label, "checkpoint", path, preprocess, model=model, file_bytes=path_size(weights))
    if any(sep in spec for sep in ("/", "\\")):
        raise ModelError(f"model not found: {spec} (no such file or folder)")
    from mobilekd.models.resolve import resolve_teacher

    model = resolve_teacher(spec, size=size)  # names: the real ImageNet weights, pooled features
    if not hasattr(model, "spec"):
        raise ModelError(f"{spec}: not a model that can be timed")
    return Target(spec, label, "name", None, model.preprocess, model=model)


def _try_load_checkpoint(checkpoint: str, base: Path):
    from mobilekd.models import is_checkpoint, load_model

    for candidate in (Path(checkpoint), base / checkpoint):
        try:
            if candidate.exists() and is_checkpoint(candidate):
                return load_model(candidate).eval()
        except MobileKDError:
            return None
    return None


# -------------------------------------------------------------------------------------------- runners


class TorchRunner:
    """A PyTorch model at a fixed thread count, eager or ``torch.compile``d: ``run``: NCHW float32 -> [N, D]."""

    device = "cpu"

    def __init__(self, model, threads: int, compiled: bool, example: np.ndarray):
        import torch

        self.threads = threads
        self.torch = torch
        self.runtime = "torch-compile" if compiled else "torch-eager"
        self.model = model.eval()
        torch.set_num_threads(threads)
        if compiled:
            # a fresh copy per thread count: inductor's C++ kernels bake the thread count in at compile time
            try:
                self.fn = torch.compile(copy.deepcopy(model).eval(), dynamic=False)
                self.run(example)
            except Exception as error:  # inductor raises many types (no compiler, unsupported op...)
                first = str(error).strip().splitlines()[0][:200] if str(error).strip() else ""
                raise NotRunnable(f"torch.compile does not work here: {type(error).__name__}: {first}") from None
        else:
            self.fn = self.model

    def run(self, x: np.ndarray) -> np.ndarray:
        torch = self.torch
        if torch.get_num_threads() != self.threads:
            torch.set_num_threads(self.threads)
        with torch.inference_mode():
            return self.fn(torch.from_numpy(x)).float().numpy()

    run_batch = run


def make_runner(target: Target, runtime: str, threads: int, example: np.ndarray | None = None):
    """A ready runner (session created, compiled where needed). NotRunnable / MobileKDError otherwise."""
    if runtime in ("torch-eager", "torch-compile"):
        if target.model is None:
            raise NotRunnable(f"{target.label} has no PyTorch model")
        if example is None:
            example = np.zeros((1, 3, target.preprocess.size, target.preprocess.size), np.float32)
        return TorchRunner(target.model, threads, runtime == "torch-compile", example)
    if target.path is None:
        raise NotRunnable(f"{target.label} is not an exported file: {runtime} does not apply")
    return open_runtime(target.path, target.contract, threads, runtime=runtime)


def input_hw(target: Target, runner=None, size: tuple[int, int] | None = None) -> tuple[int, int]:
    """The spatial input size to time: the exported file's fixed shape, else --size, else the model's own."""
    fixed = getattr(runner, "input_hw", None)
    if fixed:
        return int(fixed[0]), int(fixed[1])
    if target.contract is not None:
        shape = target.contract.input.shape
        return (shape[1], shape[2]) if target.contract.input.layout == "NHWC" else (shape[2], shape[3])
    if size:
        return size
    return target.preprocess.size, target.preprocess.size


def count_params_macs(model, hw: tuple[int, int]) -> tuple[int | None, int | None]:
    """Parameters and multiply-accumulates of one image (FLOPs counted by torch's FlopCounterMode / 2)."""
    if model is None:
        return None, None
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    params = sum(p.numel() for p in model.parameters())
    counter = FlopCounterMode(display=False)
    try:
        with counter, torch.inference_mode():
            model.eval()(torch.zeros(1, 3, *hw))
    except Exception:  # counting is best effort; timing does not depend on it
        return params, None
    return params, int(counter.get_total_flops() // 2)
