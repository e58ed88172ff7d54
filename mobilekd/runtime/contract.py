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
                  "calibration": {"images", "source", "seed"} | null, "float_ops": [...]}
    build         optional: {"tools": {package: version}, "exporter": str, "notes": [str]} -- how the file was
                  made (converter route, fallbacks taken, simplifier result)
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

from mobilekd.errors import MobileKDError
from mobilekd.preprocess import Preprocess

FORMAT = "mobilekd-export/1"
RUNTIMES = ("onnx", "tflite", "coreml")
PRECISIONS = ("fp32", "fp16", "dynamic", "int8")
LAYOUTS = ("NHWC", "NCHW")
DTYPES = ("float32", "float16", "uint8", "int8")
OPTIONAL = ("parity", "model_sha256", "quantization", "build")


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
        tensor_fields = {"name", "shape", "dtype", "layout", "quantization", "l2_normalized"}
        for side in ("input", "output"):
            extra = set(data[side]) - tensor_fields
            if extra:
                raise MobileKDError(f"model.json {side} has unknown field(s): {', '.join(sorted(extra))}")
        inp = TensorSpec(**data["input"])
        if inp.layout not in LAYOUTS:
            raise MobileKDError(f"model.json input.layout must be one of {LAYOUTS}")
        try:
            preprocess = Preprocess.from_dict(data["preprocess"])
        except (TypeError, ValueError) as error:  # an unknown key, a size < 8, a crop outside (0, 1]
            raise MobileKDError(f"model.json: bad preprocess ({error})") from None
        return cls(data["model_file"], data["runtime"], data["precision"], inp, TensorSpec(**data["output"]),
                   preprocess, int(data["embed_dim"]), data.get("source", {}),
                   data.get("parity"), data["format"], data.get("model_sha256"), data.get("quantization"),
                   data.get("build"))
