"""Load what the user named (a checkpoint, a model name, an .onnx / .tflite / .mlpackage) and run it.

``load_target`` turns a command-line MODEL into a ``Target`` (kind, preprocessing, contract, size on disk,
the PyTorch model when there is one); ``make_runner`` gives a ``Runner`` for one runtime at a fixed thread
count, whose ``run`` takes preprocessed NCHW float32 pixels and returns float32 embeddings [N, D] --
quantizing the input and de-quantizing the output of int8 models with the tensor's own parameters.

Runtimes: ``torch-eager``, ``torch-compile`` (checkpoints and names), ``onnxruntime-cpu`` (+ one entry per
other execution provider installed, e.g. ``onnxruntime-cuda``), ``litert-xnnpack`` (ai-edge-litert
Interpreter, default op resolver = XNNPACK), ``coreml`` (macOS only; elsewhere ``NotRunnable``).
"""

from __future__ import annotations

import copy
import json
import sys
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from export.common import path_size
from export.contract import dequantize, quantize
from mobilekd.errors import MobileKDError, ModelError
from mobilekd.preprocess import Preprocess

EXPORTED = {".onnx": "onnx", ".tflite": "tflite", ".mlpackage": "coreml"}
EXTRA = {"onnx": "pip install onnxruntime (a mobilekd core dependency: pip install mobilekd)",
         "tflite": "pip install mobilekd[litert]", "coreml": "pip install mobilekd[export]"}


class NotRunnable(MobileKDError):
    """This runtime cannot run here (wrong OS, compiler missing...): reported, not fatal."""


@dataclass
class Target:
    spec: str  # what the user typed
    label: str
    kind: str  # checkpoint | name | onnx | tflite | coreml
    path: Path | None
    preprocess: Preprocess
    precision: str = "fp32"
    contract: object | None = None  # export.contract.ModelContract
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
        if self.kind == "onnx":
            return ["onnxruntime-cpu"] + [f"onnxruntime-{p}" for p in _extra_ort_providers()]
        if self.kind == "tflite":
            return ["litert-xnnpack"]
        return ["coreml"]

    def describe(self) -> dict:
        model = self.torch_model
        return {"label": self.label, "spec": self.spec, "kind": self.kind,
                "path": str(self.path) if self.path else None, "precision": self.precision,
                "file_bytes": self.file_bytes, "input_size": self.preprocess.size,
                "embed_dim": int(getattr(model, "embed_dim", 0)) or (self.contract.embed_dim if self.contract else None),
                "arch": getattr(getattr(model, "spec", None), "arch", None), "notes": list(self.notes)}


def _extra_ort_providers() -> list[str]:
    try:
        import onnxruntime as ort
    except ImportError:
        return []
    names = {"CUDAExecutionProvider": "cuda", "TensorrtExecutionProvider": "tensorrt",
             "CoreMLExecutionProvider": "coreml", "DmlExecutionProvider": "directml", "OpenVINOExecutionProvider": "openvino"}
    return [names[p] for p in ort.get_available_providers() if p in names]


def default_label(spec: str) -> str:
    path = Path(spec)
    if path.suffix.lower() in EXPORTED:
        return f"{path.parent.name}/{path.name}" if path.parent.name else path.name
    if path.exists():
        return path.resolve().name
    return spec


def find_contract(path: Path):
    """The ``model.json`` (export contract) describing an exported file: ``<file>.json`` or ``model.json``
    beside it whose ``model_file`` names it. None when there is none."""
    from export.contract import FORMAT, ModelContract

    for candidate in (path.with_suffix(".json"), path.parent / "model.json"):
        if not candidate.is_file():
            continue
        try:
            data = json.loads(candidate.read_text())
        except (OSError, json.JSONDecodeError) as error:
            raise ModelError(f"{candidate} (contract of {path.name}) is not valid JSON: {error}") from None
        if not isinstance(data, dict) or data.get("format") != FORMAT:
            continue
        if data.get("model_file") not in (path.name, None) and candidate.name == "model.json":
            continue
        return ModelContract.from_dict(data)
    return None


def load_target(spec: str, size: int | None = None, label: str | None = None) -> Target:
    """What ``spec`` names, loaded far enough to know its preprocessing; ModelError if it cannot be."""
    path = Path(spec).expanduser()
    suffix = path.suffix.lower()
    label = label or default_label(spec)
    if suffix in EXPORTED:
        if not path.exists():
            raise ModelError(f"model file not found: {path}")
        kind = EXPORTED[suffix]
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
        from mobilekd.models import is_checkpoint, load_model

        if not is_checkpoint(path):
            raise ModelError(f"{path} is neither a mobilekd checkpoint folder (model.json + model.safetensors) "
                             "nor an .onnx / .tflite / .mlpackage file")
        model = load_model(path).eval()
        preprocess = model.preprocess.with_size(size) if size else model.preprocess
        weights = path / "model.safetensors" if path.is_dir() else path
        return Target(spec, label, "checkpoint", path, preprocess, model=model, file_bytes=path_size(weights))
    if any(sep in spec for sep in ("/", "\\")):
        raise ModelError(f"model not found: {spec} (no such file or folder)")
    from mobilekd.teachers import resolve_teacher

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


def _qparams(quantization) -> tuple[float, int] | None:
    """(scale, zero_point) from a tensor-details tuple/dict or a contract dict; None if not quantized."""
    if quantization is None:
        return None
    if isinstance(quantization, dict):
        scale, zero = quantization.get("scale"), quantization.get("zero_point", 0)
    else:
        scale, zero = quantization
    scale = float(np.asarray(scale).reshape(-1)[0]) if np.size(scale) else 0.0
    return (scale, int(np.asarray(zero).reshape(-1)[0]) if np.size(zero) else 0) if scale else None


class Runner:
    """One model on one runtime at a fixed thread count. ``run``: NCHW float32 -> float32 [N, D]."""

    runtime = "?"
    device = "cpu"

    def __init__(self, threads: int):
        self.threads = threads

    def run(self, x: np.ndarray) -> np.ndarray:  # pragma: no cover - interface
        raise NotImplementedError

    def run_batch(self, x: np.ndarray) -> np.ndarray:
        """Any batch size, looping where the model has a fixed batch of 1."""
        if getattr(self, "fixed_batch", None) == 1 and len(x) != 1:
            return np.concatenate([self.run(x[i:i + 1]) for i in range(len(x))])
        return self.run(x)


class TorchRunner(Runner):
    def __init__(self, model, threads: int, compiled: bool, example: np.ndarray):
        import torch

        super().__init__(threads)
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


class OrtRunner(Runner):
    def __init__(self, path: Path, threads: int, contract=None, provider: str = "cpu"):
        super().__init__(threads)
        try:
            import onnxruntime as ort
        except ImportError:
            raise MobileKDError(f"onnxruntime is not installed, cannot run {path.name}: {EXTRA['onnx']}") from None
        self.runtime = f"onnxruntime-{provider}"
        providers = {"cpu": ["CPUExecutionProvider"], "cuda": ["CUDAExecutionProvider", "CPUExecutionProvider"],
                     "tensorrt": ["TensorrtExecutionProvider", "CPUExecutionProvider"]}.get(
            provider, [f"{provider}ExecutionProvider", "CPUExecutionProvider"])
        self.device = "cpu" if provider == "cpu" else provider
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        # no busy-waiting after a run: with interleaved runtimes a spinning pool would steal the next one's CPU
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        try:
            self.session = ort.InferenceSession(str(path), options, providers=providers)
        except Exception as error:  # onnxruntime has its own exception classes
            raise ModelError(f"onnxruntime cannot load {path}: {str(error).strip().splitlines()[0][:300]}") from None
        inputs = self.session.get_inputs()
        if len(inputs) != 1:
            raise ModelError(f"{path}: an image embedder has one input, this model has {len(inputs)}")
        self.input = inputs[0]
        shape = self.input.shape
        self.nhwc = (contract.input.layout == "NHWC") if contract else (len(shape) == 4 and shape[-1] == 3)
        self.fixed_batch = shape[0] if isinstance(shape[0], int) else None
        self.input_dtype = {"tensor(float)": np.float32, "tensor(uint8)": np.uint8,
                            "tensor(int8)": np.int8}.get(self.input.type, np.float32)
        self.in_q = _qparams(contract.input.quantization) if contract else None
        self.out_q = _qparams(contract.output.quantization) if contract else None
        spatial = shape[1:3] if self.nhwc else shape[2:4]
        self.input_hw = tuple(spatial) if all(isinstance(s, int) for s in spatial) else None

    def run(self, x: np.ndarray) -> np.ndarray:
        if self.nhwc:
            x = x.transpose(0, 2, 3, 1)
        if self.input_dtype != np.float32:
            if self.in_q is None:
                raise ModelError(f"{self.input.name} is {self.input_dtype.__name__} but no quantization is known")
            x = quantize(x, *self.in_q, self.input_dtype)
        out = self.session.run(None, {self.input.name: np.ascontiguousarray(x)})[0]
        if out.dtype != np.float32:
            out = dequantize(out, *self.out_q) if self.out_q else out.astype(np.float32)
        return out.reshape(len(out), -1)


class LiteRtRunner(Runner):
    runtime = "litert-xnnpack"

    def __init__(self, path: Path, threads: int, contract=None):
        super().__init__(threads)
        try:
            from ai_edge_litert.interpreter import Interpreter
        except ImportError:
            raise MobileKDError(f"ai-edge-litert is not installed, cannot run {path.name}: {EXTRA['tflite']}") from None
        try:  # default op resolver (AUTO) applies the XNNPACK delegate
            self.interpreter = Interpreter(model_path=str(path), num_threads=threads)
            self.interpreter.allocate_tensors()
        except Exception as error:  # LiteRT raises ValueError / RuntimeError with long texts
            raise ModelError(f"LiteRT cannot load {path}: {str(error).strip().splitlines()[0][:300]}") from None
        inputs, outputs = self.interpreter.get_input_details(), self.interpreter.get_output_details()
        if len(inputs) != 1:
            raise ModelError(f"{path}: an image embedder has one input, this model has {len(inputs)}")
        self.inp, self.out = inputs[0], outputs[0]
        shape = [int(s) for s in self.inp["shape"]]
        self.nhwc = (contract.input.layout == "NHWC") if contract else (len(shape) == 4 and shape[-1] in (1, 3))
        self.fixed_batch = shape[0]
        self.input_hw = tuple(shape[1:3] if self.nhwc else shape[2:4])
        self.in_dtype = np.dtype(self.inp["dtype"])
        # the tensor's own quantization parameters win over the contract's (they are what the kernels use)
        self.in_q = _qparams(self.inp.get("quantization")) or (_qparams(contract.input.quantization) if contract else None)
        self.out_q = _qparams(self.out.get("quantization")) or (_qparams(contract.output.quantization) if contract else None)

    def run(self, x: np.ndarray) -> np.ndarray:
        if self.nhwc:
            x = x.transpose(0, 2, 3, 1)
        if self.in_dtype != np.float32:
            if self.in_q is None:
                raise ModelError(f"input is {self.in_dtype} but has no quantization parameters")
            x = quantize(x, *self.in_q, self.in_dtype)
        self.interpreter.set_tensor(self.inp["index"], np.ascontiguousarray(x))
        self.interpreter.invoke()
        out = self.interpreter.get_tensor(self.out["index"])
        if out.dtype != np.float32:
            out = dequantize(out, *self.out_q) if self.out_q else out.astype(np.float32)
        return out.reshape(len(out), -1)


class CoreMLRunner(Runner):
    runtime = "coreml"

    def __init__(self, path: Path, threads: int, contract=None):
        super().__init__(threads)
        if sys.platform != "darwin":
            raise NotRunnable("Core ML models (.mlpackage) run only on macOS: not runnable here")
        try:
            import coremltools as ct
        except ImportError:
            raise MobileKDError(f"coremltools is not installed, cannot run {path.name}: {EXTRA['coreml']}") from None
        try:
            self.model = ct.models.MLModel(str(path))
        except Exception as error:
            raise ModelError(f"coremltools cannot load {path}: {error}") from None
        spec = self.model.get_spec()
        self.input_name = contract.input.name if contract else spec.description.input[0].name
        self.nhwc = bool(contract and contract.input.layout == "NHWC")
        self.fixed_batch = 1
        self.input_hw = None

    def run(self, x: np.ndarray) -> np.ndarray:
        if self.nhwc:
            x = x.transpose(0, 2, 3, 1)
        out = self.model.predict({self.input_name: x})
        return np.asarray(next(iter(out.values())), dtype=np.float32).reshape(len(x), -1)


def make_runner(target: Target, runtime: str, threads: int, example: np.ndarray | None = None) -> Runner:
    """A ready runner (session created, compiled where needed). NotRunnable / MobileKDError otherwise."""
    if runtime in ("torch-eager", "torch-compile"):
        if target.model is None:
            raise NotRunnable(f"{target.label} has no PyTorch model")
        if example is None:
            example = np.zeros((1, 3, target.preprocess.size, target.preprocess.size), np.float32)
        return TorchRunner(target.model, threads, runtime == "torch-compile", example)
    if runtime.startswith("onnxruntime-"):
        return OrtRunner(target.path, threads, target.contract, runtime.split("-", 1)[1])
    if runtime == "litert-xnnpack":
        return LiteRtRunner(target.path, threads, target.contract)
    if runtime == "coreml":
        return CoreMLRunner(target.path, threads, target.contract)
    raise MobileKDError(f"unknown runtime {runtime!r}")


def input_hw(target: Target, runner: Runner | None = None, size: tuple[int, int] | None = None) -> tuple[int, int]:
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


# -------------------------------------------------------------------------------- embedding (for recall)


class RunnerEmbedder:
    """Duck-typed like a mobilekd model for ``mobilekd.embed.embed_image_set``: ``preprocess``,
    ``embed_dim``, ``eval()``, and ``__call__(pixels NCHW tensor) -> L2-normalised [N, D] tensor``."""

    def __init__(self, target: Target, runner: Runner):
        self.target, self.runner = target, runner
        self.preprocess = target.preprocess
        self.embed_dim = target.contract.embed_dim if target.contract else None

    def eval(self):
        return self

    def __call__(self, pixels):
        import torch
        import torch.nn.functional as F

        out = self.runner.run_batch(pixels.detach().cpu().numpy().astype(np.float32))
        return F.normalize(torch.from_numpy(np.asarray(out, np.float32)), dim=1)


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
