"""The one way to run an exported file (``.onnx``, ``.tflite``, ``.mlpackage``): a registry of runtimes.

Export parity (``export.parity``, ``export.check``), ``benchmarks`` and the black-box teacher
(``mobilekd.runtime.file_embedder``) all embed a file through this module, so they measure the same file the
same way. Like timm's ``@register_model``, a runtime is one decorated class::

    @register_runtime("onnxruntime-cpu", suffixes=(".onnx",), requires="onnxruntime", extra="pip install onnxruntime")
    class OrtRunner(Runner):
        def load(self): ...              # open the file (self.path, self.threads)
        def file_tensors(self): ...      # (input, output) TensorSpec read from the file
        def invoke(self, x): ...         # one call of the model on its own input -> raw output

and ``open_runtime(path, contract, threads)`` (or ``get_runtime(name).open(...)``) returns a ``Runner``.

The contract (``model.json``, ``mobilekd.runtime.contract``) drives every rule, in one place (``Runner``):

* layout: ``contract.input.layout`` (NHWC: the NCHW pixels are transposed);
* int8/uint8 input: quantized with ``contract.input.quantization``; int8/uint8 output: dequantized with
  ``contract.output.quantization`` (a contract that disagrees with the file's own tensors is refused);
* output: L2-normalised unless the contract says it already is (``l2_normalized``) and it is not quantized (a
  dequantized int8 unit vector is unit-norm only up to the int8 grid; the Android core renormalises it too).
* pixels normalised otherwise than the file expects (``pixels=``: the float student's normalisation when the
  file folds another one into its graph) are converted first (``mobilekd.runtime.normalization.renormalize``).

A file without a contract (a black-box ``.onnx`` teacher, a file given to ``benchmarks``) gets one from its own
tensors (``contract_from_file``): NHWC when the input's last dimension is 3, the tensors' quantization, ImageNet
mean/std at the file's input size unless a preprocess is given (the ``.json`` beside a teacher).
"""

from __future__ import annotations

import importlib
import json
import sys
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from mobilekd.errors import MobileKDError, ModelError
from mobilekd.preprocess import Preprocess
from mobilekd.runtime.contract import FORMAT, ModelContract, TensorSpec, dequantize, file_disagreements, quantize
from mobilekd.runtime.normalization import renormalize, same_normalization

# the model.json "runtime" of each file suffix (what exporters write)
FILE_KINDS = {".onnx": "onnx", ".tflite": "tflite", ".mlpackage": "coreml"}


class NotRunnable(MobileKDError):
    """This runtime cannot run here (wrong OS, execution provider missing...): reported, not fatal."""


def to_layout(x_nchw: np.ndarray, layout: str) -> np.ndarray:
    """NCHW images -> the given input layout, contiguous."""
    return np.ascontiguousarray(x_nchw.transpose(0, 2, 3, 1) if layout == "NHWC" else x_nchw)


def guess_layout(shape) -> str:
    """The layout of a 4-d image input without a contract: NHWC when the last dimension is 3 (RGB)."""
    return "NHWC" if len(shape) == 4 and shape[-1] == 3 else "NCHW"


def qparams(quantization) -> dict | None:
    """``{"scale", "zero_point"}`` from a runtime's tensor details (a (scale, zero) tuple or arrays); None when
    the tensor is not quantized (scale 0)."""
    if quantization is None:
        return None
    if isinstance(quantization, dict):
        scale, zero = quantization.get("scale"), quantization.get("zero_point", 0)
    else:
        scale, zero = quantization
    scale = float(np.asarray(scale).reshape(-1)[0]) if np.size(scale) else 0.0
    zero = int(np.asarray(zero).reshape(-1)[0]) if np.size(zero) else 0
    return {"scale": scale, "zero_point": zero} if scale else None


class Runner:
    """One exported file on one runtime at a fixed thread count.

    ``runner(pixels)``: NCHW float32 images [N, 3, H, W], preprocessed by the contract -> float32 [N, D] (batch-1
    files are looped here). ``runner.run(pixels)``: one call of the model (``prepare`` + ``invoke`` + ``finish``)
    on as many images as the file takes at once -- what ``benchmarks.latency`` times.
    A backend implements ``load``, ``file_tensors`` and ``invoke``; everything the contract decides is here.
    """

    name = "?"  # the registry name, set by register_runtime
    device = "cpu"

    def __init__(self, path: str | Path, contract: ModelContract | None = None, threads: int | None = 1,
                 pixels: Preprocess | None = None, preprocess: Preprocess | None = None, **options):
        self.path, self.threads, self.options = Path(path), threads, options
        self.load()
        found_input, found_output = self.file_tensors()
        if contract is None:
            contract = contract_from_file(self.path, found_input, found_output, preprocess)
        else:
            _check_agrees(self.path, contract, found_input, found_output)
        self.contract = contract
        self.layout = contract.input.layout
        shape = contract.input.shape
        self.fixed_batch = shape[0] if isinstance(shape[0], int) and shape[0] > 0 else None
        spatial = shape[1:3] if self.layout == "NHWC" else shape[2:4]
        self.input_hw = tuple(spatial) if all(isinstance(s, int) and s > 0 for s in spatial) else None
        self._pixels = None if pixels is None or same_normalization(pixels, contract.preprocess) else pixels

    # ----------------------------------------------------------------- what a backend implements
    def load(self) -> None:  # pragma: no cover - interface
        raise NotImplementedError

    def file_tensors(self) -> tuple[TensorSpec | None, TensorSpec | None]:  # pragma: no cover - interface
        """The input and output tensors as the file declares them (layout None: the file does not say)."""
        raise NotImplementedError

    def invoke(self, x: np.ndarray) -> np.ndarray:  # pragma: no cover - interface
        raise NotImplementedError

    @classmethod
    def unavailable(cls, **options) -> str | None:
        """Why this runtime cannot run here although its package imports (None: it can)."""
        return None

    # ----------------------------------------------------------------- the contract's rules
    def prepare(self, pixels: np.ndarray) -> np.ndarray:
        """NCHW float32 pixels -> the model's input: normalisation, layout, dtype (int8 via the contract)."""
        pixels = np.asarray(pixels, dtype=np.float32)
        if self._pixels is not None:
            pixels = renormalize(pixels, self._pixels, self.contract.preprocess)
        x = to_layout(pixels, self.layout)
        spec = self.contract.input
        if spec.dtype in ("int8", "uint8"):
            if not spec.quantization:
                raise ModelError(f"{self.path.name}: input is {spec.dtype} but no quantization is known")
            return quantize(x, spec.quantization["scale"], spec.quantization["zero_point"], spec.dtype)
        return x if spec.dtype in ("float32", "image") else x.astype(spec.dtype)

    def finish(self, raw: np.ndarray) -> np.ndarray:
        """Raw model output -> float32 [N, D] unit vectors (dequantized and renormalised where needed)."""
        return dequantize_output(raw, self.contract.output)

    def run(self, pixels: np.ndarray) -> np.ndarray:
        return self.finish(self.invoke(self.prepare(pixels)))

    def __call__(self, pixels: np.ndarray) -> np.ndarray:
        step = self.fixed_batch or len(pixels)
        if len(pixels) <= step:
            return self.run(pixels)
        return np.concatenate([self.run(pixels[i:i + step]) for i in range(0, len(pixels), step)])

    run_batch = __call__


def dequantize_output(y: np.ndarray, spec: TensorSpec) -> np.ndarray:
    """Raw model output -> float32 [N, D] unit vectors. A quantized output is L2-normalised only up to its
    int8 grid, so it is renormalised after dequantizing, like a model that does not normalise at all (the
    Android core's ``needsL2Normalize`` does the same): inner-product search on the raw dequantized vectors
    would rank by their norm errors."""
    y = np.asarray(y)
    quantized = spec.dtype in ("int8", "uint8")
    if quantized:
        if not spec.quantization:
            raise ModelError(f"output {spec.name} is {spec.dtype} but no quantization is known")
        y = dequantize(y, spec.quantization["scale"], spec.quantization["zero_point"])
    y = y.astype(np.float32).reshape(len(y), -1)
    if spec.l2_normalized is not True or quantized:
        y = y / np.maximum(np.linalg.norm(y, axis=1, keepdims=True), 1e-12)
    return y


def _check_agrees(path: Path, contract: ModelContract, found_input, found_output) -> None:
    """A model.json that does not describe this file (tensor names, shapes -- layout and size --, dtype or int8
    parameters differ) is refused: the runtime would fail on the first call with a long error of its own, and
    feeding int8 through the wrong scale gives plausible-looking, wrong embeddings."""
    problems = file_disagreements(contract, found_input, found_output)
    if problems:
        raise ModelError(f"model.json does not describe {path.name}: {'; '.join(problems)}")
    for side, want, got in (("input", contract.input, found_input), ("output", contract.output, found_output)):
        if got is None or got.dtype is None:
            continue
        if want.dtype != got.dtype and not (want.dtype == "image" or got.dtype == "image"):
            raise ModelError(f"{path.name}: model.json says {side} {want.dtype}, the file has {got.dtype}")
        if want.quantization and got.quantization and not (
                np.isclose(want.quantization["scale"], got.quantization["scale"], rtol=1e-5)
                and int(want.quantization["zero_point"]) == int(got.quantization["zero_point"])):
            raise ModelError(f"{path.name}: model.json {side}.quantization {want.quantization} differs from the "
                             f"file's {got.quantization}")


def contract_from_file(path: Path, found_input: TensorSpec, found_output: TensorSpec,
                       preprocess: Preprocess | None = None) -> ModelContract:
    """A contract for a file that has none, from its own tensors (see the module docstring)."""
    shape = list(found_input.shape)
    layout = found_input.layout or guess_layout(shape)
    if preprocess is None:
        size = shape[1] if layout == "NHWC" else shape[2] if len(shape) == 4 else None
        preprocess = Preprocess(size if isinstance(size, int) and size > 0 else 224)
    inp = TensorSpec(found_input.name, shape, found_input.dtype, layout, found_input.quantization)
    out = TensorSpec(found_output.name, list(found_output.shape), found_output.dtype,
                     quantization=found_output.quantization, l2_normalized=None)
    dim = out.shape[-1] if out.shape and isinstance(out.shape[-1], int) else 0
    precision = "int8" if inp.dtype in ("int8", "uint8") else "fp32"
    return ModelContract(path.name, file_kind(path) or "onnx", precision, inp, out, preprocess, int(dim))


def find_contract(path: Path) -> ModelContract | None:
    """The ``model.json`` contract describing an exported file: ``<file>.json`` or ``model.json`` beside it whose
    ``model_file`` names it. None when there is none (a ``<file>.json`` holding only ``preprocess`` -- a
    black-box teacher's -- is read by ``sidecar_preprocess``)."""
    for candidate in (path.with_suffix(".json"), path.parent / "model.json"):
        if not candidate.is_file():
            continue
        data = _read_json(candidate, path)
        if not isinstance(data, dict) or data.get("format") != FORMAT:
            continue
        if data.get("model_file") not in (path.name, None) and candidate.name == "model.json":
            continue
        return ModelContract.from_dict(data)
    return None


def sidecar_preprocess(path: Path) -> Preprocess | None:
    """``preprocess`` of the ``<file>.json`` beside a file without a full contract (README "Teachers")."""
    sidecar = path.with_suffix(".json")
    if not sidecar.is_file():
        return None
    data = _read_json(sidecar, path)
    if not isinstance(data, dict) or "preprocess" not in data:
        return None
    try:
        return Preprocess.from_dict(data["preprocess"])
    except (TypeError, ValueError) as error:
        raise ModelError(f"{sidecar}: bad preprocess ({error})") from None


def _read_json(candidate: Path, path: Path):
    try:
        return json.loads(candidate.read_text())
    except (OSError, json.JSONDecodeError) as error:
        raise ModelError(f"{candidate} (contract of {path.name}) is not valid JSON: {error}") from None


# ------------------------------------------------------------------------------------------ the registry


@dataclass(frozen=True)
class Runtime:
    """A registry entry: ``name``, the file ``suffixes`` it opens, the module it ``requires`` (with the
    ``extra`` that installs it), an optional ``platform`` (``sys.platform``), and its Runner class."""

    name: str
    suffixes: tuple[str, ...]
    requires: str
    extra: str
    runner: type
    platform: str | None = None
    options: dict = field(default_factory=dict)

    def why_unavailable(self) -> str | None:
        if self.platform and sys.platform != self.platform:
            where = {"darwin": "macOS", "linux": "Linux", "win32": "Windows"}.get(self.platform, self.platform)
            return f"{self.name} ({', '.join(self.suffixes)}) runs only on {where}: not runnable here"
        try:
            importlib.import_module(self.requires)
        except ImportError:
            return f"{self.requires} is not installed: {self.extra}"
        return self.runner.unavailable(**self.options)

    def available(self) -> bool:
        return self.why_unavailable() is None

    def open(self, path: str | Path, contract: ModelContract | None = None, threads: int | None = 1,
             pixels: Preprocess | None = None, preprocess: Preprocess | None = None) -> Runner:
        """A ready Runner for ``path``. ``pixels``: the normalisation of the pixels the caller will feed, when
        it is not the contract's; ``preprocess``: for a file without contract. NotRunnable when this runtime
        cannot run here, ModelError when the file cannot be loaded."""
        reason = self.why_unavailable()
        if reason:
            raise NotRunnable(reason)
        return self.runner(path, contract, threads, pixels, preprocess, **self.options)


RUNTIMES: dict[str, Runtime] = {}


def register_runtime(name: str, suffixes: tuple[str, ...], requires: str, extra: str, platform: str | None = None,
                     **options):
    """Class decorator: register a Runner subclass as runtime ``name`` (stack it to register one class under
    several names with different ``options``, e.g. ONNX Runtime's execution providers)."""

    def wrap(cls):
        if name in RUNTIMES:
            raise ValueError(f"runtime {name!r} is registered twice")
        RUNTIMES[name] = Runtime(name, tuple(s.lower() for s in suffixes), requires, extra,
                                 type(cls.__name__, (cls,), {"name": name}), platform, dict(options))
        return cls

    return wrap


def get_runtime(name: str) -> Runtime:
    try:
        return RUNTIMES[name]
    except KeyError:
        raise MobileKDError(f"unknown runtime {name!r}; known: {', '.join(RUNTIMES)}") from None


def runtimes_for(path: str | Path) -> list[Runtime]:
    """The runtimes that open ``path``'s suffix (or ``path`` given as a suffix, ".onnx"), in registration order
    (the first is the default)."""
    suffix = Path(path).suffix.lower() or str(path).lower()
    return [r for r in RUNTIMES.values() if suffix in r.suffixes]


def file_kind(path: str | Path) -> str | None:
    """What kind of exported file ``path`` is (model.json's ``runtime``: "onnx", "tflite", "coreml"; the bare
    suffix for the files of a newly registered runtime); None when no registered runtime opens it."""
    if not runtimes_for(path):
        return None
    suffix = Path(path).suffix.lower()
    return FILE_KINDS.get(suffix, suffix.lstrip("."))


def open_runtime(path: str | Path, contract: ModelContract | None = None, threads: int | None = 1,
                 pixels: Preprocess | None = None, preprocess: Preprocess | None = None,
                 runtime: str | None = None) -> Runner:
    """``path`` on ``runtime`` (default: the first registered for its suffix); contract default: the model.json
    beside the file (``find_contract``), else one made from the file itself, with ``preprocess`` (default: the
    ``<file>.json`` beside it, ``sidecar_preprocess``; else the file's input size with ImageNet mean/std)."""
    path = Path(path)
    entries = [get_runtime(runtime)] if runtime else runtimes_for(path)
    if not entries:
        raise ModelError(f"{path.name}: no runtime opens {path.suffix or 'files without a suffix'} files "
                         f"(known: {', '.join(sorted({s for r in RUNTIMES.values() for s in r.suffixes}))})")
    if contract is None:
        contract = find_contract(path)
        if contract is None and preprocess is None:
            preprocess = sidecar_preprocess(path)
    return entries[0].open(path, contract, threads, pixels, preprocess)


# ------------------------------------------------------------------------------------------ the runtimes


ORT_EXTRA = "pip install onnxruntime (a mobilekd core dependency: pip install mobilekd)"
ORT_DTYPES = {"tensor(float)": "float32", "tensor(float16)": "float16", "tensor(uint8)": "uint8",
              "tensor(int8)": "int8"}


@register_runtime("onnxruntime-openvino", (".onnx",), "onnxruntime", ORT_EXTRA, provider="OpenVINOExecutionProvider")
@register_runtime("onnxruntime-directml", (".onnx",), "onnxruntime", ORT_EXTRA, provider="DmlExecutionProvider")
@register_runtime("onnxruntime-coreml", (".onnx",), "onnxruntime", ORT_EXTRA, provider="CoreMLExecutionProvider")
@register_runtime("onnxruntime-tensorrt", (".onnx",), "onnxruntime", ORT_EXTRA, provider="TensorrtExecutionProvider")
@register_runtime("onnxruntime-cuda", (".onnx",), "onnxruntime", ORT_EXTRA, provider="CUDAExecutionProvider")
@register_runtime("onnxruntime-cpu", (".onnx",), "onnxruntime", ORT_EXTRA, provider="CPUExecutionProvider")
class OrtRunner(Runner):
    """ONNX Runtime, one execution provider (CPU as the fallback for ops it lacks)."""

    @classmethod
    def unavailable(cls, provider: str = "CPUExecutionProvider", **options) -> str | None:
        import onnxruntime as ort

        if provider not in ort.get_available_providers():
            return f"onnxruntime has no {provider} here"
        return None

    def load(self) -> None:
        import onnxruntime as ort

        provider = self.options.get("provider", "CPUExecutionProvider")
        self.device = "cpu" if provider == "CPUExecutionProvider" else self.name.split("-", 1)[1]
        options = ort.SessionOptions()
        options.intra_op_num_threads = max(0, self.threads or 0)  # 0: onnxruntime's default (all cores)
        options.inter_op_num_threads = 1
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        # no busy-waiting after a run: with interleaved runtimes a spinning pool would steal the next one's CPU
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        providers = [provider] + (["CPUExecutionProvider"] if provider != "CPUExecutionProvider" else [])
        try:
            self.session = ort.InferenceSession(str(self.path), options, providers=providers)
        except Exception as error:  # onnxruntime has its own exception classes
            raise ModelError(f"onnxruntime cannot load {self.path}: "
                             f"{str(error).strip().splitlines()[0][:300] if str(error).strip() else error}") from None
        inputs = self.session.get_inputs()
        if len(inputs) != 1:
            raise ModelError(f"{self.path}: an image embedder has one input, this model has {len(inputs)}")
        self.input_name = inputs[0].name

    def file_tensors(self):
        inp, out = self.session.get_inputs()[0], self.session.get_outputs()[0]
        return (TensorSpec(inp.name, list(inp.shape), ORT_DTYPES.get(inp.type)),
                TensorSpec(out.name, list(out.shape), ORT_DTYPES.get(out.type)))

    def invoke(self, x: np.ndarray) -> np.ndarray:
        return self.session.run(None, {self.input_name: x})[0]


@register_runtime("litert-xnnpack", (".tflite",), "ai_edge_litert.interpreter", "pip install mobilekd[litert]")
class LiteRtRunner(Runner):
    """The LiteRT interpreter (``ai_edge_litert``); its default op resolver applies the XNNPACK delegate."""

    def load(self) -> None:
        from ai_edge_litert.interpreter import Interpreter

        try:
            self.interpreter = Interpreter(model_path=str(self.path), num_threads=self.threads or None)
            self.interpreter.allocate_tensors()
        except Exception as error:  # LiteRT raises ValueError / RuntimeError with long texts
            raise ModelError(f"LiteRT cannot load {self.path}: "
                             f"{str(error).strip().splitlines()[0][:300] if str(error).strip() else error}") from None
        inputs, outputs = self.interpreter.get_input_details(), self.interpreter.get_output_details()
        if len(inputs) != 1:
            raise ModelError(f"{self.path}: an image embedder has one input, this model has {len(inputs)}")
        self.inp, self.out = inputs[0], outputs[0]

    def file_tensors(self):
        def spec(detail):
            return TensorSpec(detail["name"], [int(s) for s in detail["shape"]], np.dtype(detail["dtype"]).name,
                              quantization=qparams(detail.get("quantization")))

        return spec(self.inp), spec(self.out)

    def invoke(self, x: np.ndarray) -> np.ndarray:
        self.interpreter.set_tensor(self.inp["index"], x)
        self.interpreter.invoke()
        return self.interpreter.get_tensor(self.out["index"]).copy()


@register_runtime("coreml", (".mlpackage",), "coremltools", "pip install mobilekd[export]", platform="darwin")
class CoreMLRunner(Runner):
    """Core ML ``MLModel.predict`` (macOS only). An ImageType input (model.json ``input.dtype`` "image") takes raw
    0..255 RGB pixels, handed over as a PIL image."""

    def load(self) -> None:
        import coremltools as ct

        try:
            self.model = ct.models.MLModel(str(self.path))
        except Exception as error:  # coremltools raises many types
            raise ModelError(f"coremltools cannot load {self.path}: {error}") from None
        description = self.model.get_spec().description
        self.input_name, self.output_name = description.input[0].name, description.output[0].name
        self.image = description.input[0].type.WhichOneof("Type") == "imageType"

    def file_tensors(self):
        description = self.model.get_spec().description
        inp = description.input[0].type
        shape = ([1, 3, int(inp.imageType.height), int(inp.imageType.width)] if self.image
                 else [int(s) for s in inp.multiArrayType.shape])
        out = [int(s) for s in description.output[0].type.multiArrayType.shape]
        return (TensorSpec(self.input_name, shape, "image" if self.image else "float32"),
                TensorSpec(self.output_name, out, "float32"))

    def invoke(self, x: np.ndarray) -> np.ndarray:
        count = len(x)
        if self.image:
            from PIL import Image

            x = Image.fromarray(np.clip(np.round(x[0].transpose(1, 2, 0)), 0, 255).astype(np.uint8))
        out = self.model.predict({self.input_name: x})[self.output_name]
        return np.asarray(out, dtype=np.float32).reshape(count, -1)
