"""The model contract: ``model.json`` written beside every exported file (``model.onnx``, ``model.tflite``,
``model.mlpackage``). The Android app (android_demo/core), ``export.check`` and ``benchmarks`` read it; it is
the single source of truth for how to feed the model and read its output.

Schema (format ``mobilekd-export/1``), every field required unless marked optional:

    format        "mobilekd-export/1"
    model_file    file name of the model, relative to model.json
    runtime       "onnx" | "tflite" | "coreml"
    precision     "fp32" | "fp16" | "dynamic" | "int8"
    input         {name, shape [N,H,W,C] or [N,C,H,W], layout "NHWC"|"NCHW", dtype "float32"|"uint8"|"int8",
                   quantization: null | {scale, zero_point}}   -- quantization: real = scale * (q - zero_point)
    output        {name, shape [N, D], dtype "float32"|"int8"|"uint8", quantization: null | {scale, zero_point},
                   l2_normalized: bool}   -- false: the consumer must L2-normalise
    preprocess    mobilekd.preprocess.Preprocess as a dict: size, mean[3], std[3] (0..255 pixel units),
                  crop (central square side = crop * min(W, H)), interpolation "bilinear", channels "RGB".
                  Pixels: x = (pixel - mean) / std, after the crop and a bilinear resize to size x size
                  (Pillow's ``Image.resize(..., BILINEAR, box=crop_box)``, which antialiases when shrinking).
    embed_dim     int
    source        {checkpoint, arch, sha256 of model.safetensors}
    parity        optional: the parity report of export.parity / export.check ({"passed": bool, "gates": {...},
                  "vs_float": {...}, "vs_teacher": {...} | null, ...}); "scope": "runtime" when embeddings were
                  measured through the file's runtime, "structural" when only its structure could be checked
                  (Core ML on Linux) -- then no parity number is reported at all.
    model_sha256  optional: sha256 of the model file (of every file, in sorted order, for a .mlpackage folder)
    quantization  optional: how the weights/activations were quantized: {"scheme": "none" | "fp16-weights" |
                  "dynamic-int8" | "int8-static" | "int8-weights", "weights": ..., "activations": ...,
                  "calibration": {"images", "source", "seed"} | null, "float_ops": [...],
                  "float_tail_ops": [...] (TFLite int8: the L2 normalisation kept float32)}
    build         optional: {"tools": {package: version}, "exporter": str, "notes": [str]} -- how the file was
                  made (converter route, fallbacks taken, simplifier result)

``ModelContract.from_dict`` enforces what the Android reader (android_demo/core ``ModelContract.kt``) enforces --
types, every preprocess field, int8 tensors with their quantization, input.shape matching layout and
preprocess.size, output.shape matching embed_dim -- so a model.json the app would reject is rejected here too;
``file_disagreements`` compares it with the tensors of the model file itself.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

from mobilekd.errors import MobileKDError
from mobilekd.preprocess import Preprocess, PreprocessError

FORMAT = "mobilekd-export/1"
RUNTIMES = ("onnx", "tflite", "coreml")
PRECISIONS = ("fp32", "fp16", "dynamic", "int8")
LAYOUTS = ("NHWC", "NCHW")
DTYPES = ("float32", "float16", "uint8", "int8")
OPTIONAL = ("parity", "model_sha256", "quantization", "build")
# the Android reader's rules (android_demo/core ContractFields): fields each tensor must carry, what it can feed
TENSOR_FIELDS = ("name", "shape", "dtype", "layout", "quantization", "l2_normalized")
INPUT_REQUIRED = ("name", "shape", "dtype", "layout", "quantization")
OUTPUT_REQUIRED = ("name", "shape", "dtype", "quantization", "l2_normalized")
PREPROCESS_FIELDS = ("size", "mean", "std", "crop", "interpolation", "channels")
APP_INTERPOLATIONS = ("bilinear",)


def quantize(x, scale: float, zero_point: int, dtype: str):
    """real -> integer as the contract defines it: q = clip(round(real / scale + zero_point))."""
    import numpy as np

    info = np.iinfo(np.dtype(dtype))
    return np.clip(np.round(np.asarray(x) / scale + zero_point), info.min, info.max).astype(dtype)


def dequantize(q, scale: float, zero_point: int):
    """integer -> real: real = scale * (q - zero_point), float32."""
    import numpy as np

    return ((np.asarray(q).astype(np.float32) - zero_point) * scale).astype(np.float32)


@dataclass
class TensorSpec:
    name: str
    shape: list[int]
    dtype: str = "float32"
    layout: str | None = None  # inputs only
    quantization: dict | None = None  # {"scale": float, "zero_point": int}
    l2_normalized: bool | None = None  # outputs only

    def to_dict(self) -> dict:
        return {k: v for k, v in asdict(self).items() if v is not None or k == "quantization"}


@dataclass
class ModelContract:
    model_file: str
    runtime: str
    precision: str
    input: TensorSpec
    output: TensorSpec
    preprocess: Preprocess
    embed_dim: int
    source: dict = field(default_factory=dict)
    parity: dict | None = None
    format: str = FORMAT
    model_sha256: str | None = None
    quantization: dict | None = None
    build: dict | None = None

    def to_dict(self) -> dict:
        data = {"format": self.format, "model_file": self.model_file, "runtime": self.runtime,
                "precision": self.precision, "input": self.input.to_dict(), "output": self.output.to_dict(),
                "preprocess": self.preprocess.to_dict(), "embed_dim": self.embed_dim, "source": self.source}
        for key in OPTIONAL:
            if getattr(self, key) is not None:
                data[key] = getattr(self, key)
        return data

    @classmethod
    def from_dict(cls, data: dict) -> "ModelContract":
        """A model.json checked against the schema the Android reader enforces (one MobileKDError naming the
        field otherwise)."""
        if not isinstance(data, dict):
            raise MobileKDError("model.json must be a JSON object")
        required = ("format", "model_file", "runtime", "precision", "input", "output", "preprocess", "embed_dim")
        missing = [k for k in required if k not in data]
        if missing:
            raise MobileKDError(f"model.json is missing field(s): {', '.join(missing)}")
        unknown = sorted(set(data) - set(required) - {"source", *OPTIONAL})
        if unknown:
            raise MobileKDError(f"model.json has unknown field(s): {', '.join(unknown)}")
        if data["format"] != FORMAT:
            raise MobileKDError(f"model.json format {data['format']!r} is not {FORMAT!r}")
        if data["runtime"] not in RUNTIMES or data["precision"] not in PRECISIONS:
            raise MobileKDError(f"model.json: runtime must be one of {RUNTIMES}, precision one of {PRECISIONS}")
        if not isinstance(data["model_file"], str) or not data["model_file"].strip():
            raise MobileKDError(f"model.json model_file must be a file name, got {data['model_file']!r}")
        embed_dim = data["embed_dim"]
        if not _is_int(embed_dim) or embed_dim <= 0:
            raise MobileKDError(f"model.json embed_dim must be a positive integer, got {embed_dim!r}")
        pre = _preprocess(data["preprocess"])
        inp = _tensor(data["input"], "input", INPUT_REQUIRED, data["runtime"])
        out = _tensor(data["output"], "output", OUTPUT_REQUIRED, data["runtime"])
        _check_shapes(inp, out, pre.size, embed_dim)
        for key in ("source", *OPTIONAL):
            if data.get(key) is not None and not isinstance(data[key], str if key == "model_sha256" else dict):
                raise MobileKDError(f"model.json {key} must be {'a string' if key == 'model_sha256' else 'an object'}")
        return cls(data["model_file"], data["runtime"], data["precision"], inp, out, pre, int(embed_dim),
                   data.get("source") or {}, data.get("parity"), data["format"], data.get("model_sha256"),
                   data.get("quantization"), data.get("build"))


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _preprocess(data) -> Preprocess:
    """model.json preprocess: every field present, valid (``mobilekd.preprocess``), an interpolation the app has."""
    if not isinstance(data, dict):
        raise MobileKDError("model.json preprocess must be an object")
    missing = [k for k in PREPROCESS_FIELDS if k not in data]
    if missing:
        raise MobileKDError(f"model.json preprocess is missing field(s): {', '.join(missing)}")
    try:
        pre = Preprocess.from_dict(data)
    except PreprocessError as error:
        raise MobileKDError(f"model.json {error}") from None
    if pre.interpolation not in APP_INTERPOLATIONS:
        raise MobileKDError(f"model.json preprocess.interpolation {pre.interpolation!r} is not supported by the "
                            f"app (supported: {', '.join(APP_INTERPOLATIONS)})")
    return pre


def _tensor(data, side: str, required: tuple[str, ...], runtime: str) -> TensorSpec:
    """One tensor spec: its fields, types, dtype, and the quantization an integer tensor needs."""
    if not isinstance(data, dict):
        raise MobileKDError(f"model.json {side} must be an object")
    missing = [k for k in required if k not in data]
    extra = sorted(set(data) - set(TENSOR_FIELDS))
    if missing or extra:
        raise MobileKDError(f"model.json {side} is missing field(s) {missing} / has unknown field(s) {extra}")
    if not isinstance(data["name"], str) or not data["name"]:
        raise MobileKDError(f"model.json {side}.name must be a non-empty string, got {data['name']!r}")
    shape = data["shape"]
    if not isinstance(shape, list) or not all(_is_int(n) for n in shape):
        raise MobileKDError(f"model.json {side}.shape must be a list of integers, got {shape!r}")
    dtypes = DTYPES + (("image",) if side == "input" and runtime == "coreml" else ())  # Core ML ImageType
    if data["dtype"] not in dtypes:
        raise MobileKDError(f"model.json {side}.dtype must be one of {dtypes}, got {data['dtype']!r}")
    if side == "input" and data["layout"] not in LAYOUTS:
        raise MobileKDError(f"model.json input.layout must be one of {LAYOUTS}, got {data['layout']!r}")
    quant = data.get("quantization")
    if quant is not None:
        if not isinstance(quant, dict) or set(quant) != {"scale", "zero_point"} \
                or not isinstance(quant["scale"], (int, float)) or isinstance(quant["scale"], bool) \
                or not 0 < quant["scale"] < float("inf") or not _is_int(quant["zero_point"]):
            raise MobileKDError(f"model.json {side}.quantization must be {{scale > 0, zero_point integer}}, "
                                f"got {quant!r}")
    elif data["dtype"] in ("int8", "uint8"):
        raise MobileKDError(f"model.json {side}.dtype is {data['dtype']} but {side}.quantization is null")
    if data.get("l2_normalized") is not None and not isinstance(data["l2_normalized"], bool):
        raise MobileKDError(f"model.json {side}.l2_normalized must be true or false, got {data['l2_normalized']!r}")
    return TensorSpec(data["name"], list(shape), data["dtype"], data.get("layout"), quant, data.get("l2_normalized"))


def _check_shapes(inp: TensorSpec, out: TensorSpec, size: int, embed_dim: int) -> None:
    """input.shape agrees with layout and preprocess.size, output.shape with embed_dim (batch 1 or -1)."""
    image = [size, size, 3] if inp.layout == "NHWC" else [3, size, size]
    if len(inp.shape) != 4 or inp.shape[1:] != image or inp.shape[0] not in (1, -1):
        raise MobileKDError(f"model.json input.shape {inp.shape} does not match layout {inp.layout} and "
                            f"preprocess.size {size} (expected {[1, *image]})")
    if len(out.shape) != 2 or out.shape[1] != embed_dim:
        raise MobileKDError(f"model.json output.shape {out.shape} does not match embed_dim {embed_dim} "
                            f"(expected {[1, embed_dim]})")


def file_disagreements(contract: ModelContract, found_input: TensorSpec, found_output: TensorSpec) -> list[str]:
    """How model.json's tensors differ from the model file's own (names and shapes; a dynamic dimension of the
    file -- -1, None or a symbol -- matches any value), empty when they agree."""
    problems = []
    for side, want, got in (("input", contract.input, found_input), ("output", contract.output, found_output)):
        if got is None:
            continue
        if got.name is not None and got.name != want.name:
            problems.append(f"{side} name: model.json says {want.name!r}, the file has {got.name!r}")
        shape = list(got.shape or [])
        if shape and (len(shape) != len(want.shape) or any(
                isinstance(g, int) and g > 0 and g != w for g, w in zip(shape, want.shape))):
            problems.append(f"{side} shape: model.json says {want.shape}, the file has {shape}")
    return problems
