"""TFLite (LiteRT) export, no TensorFlow:
``python -m export.tflite CKPT [--quantize {none,fp16,dynamic,int8}] [--calib DATA] [--out DIR]``.

Route (see ../shared/notes/export.md section 3):

* fp32: ``litert_torch.convert`` of the student, wrapped by ``litert_torch.to_channel_last_io`` for the
  default NHWC float input (batch 1, what MediaPipe's Image Embedder and Android code feed); ``--layout
  NCHW`` converts the network as is.
* fp16 / dynamic / int8: ai-edge-quantizer on that float file --
  fp16: weight-only float16 (``FLOAT_CASTING``, float32 compute and I/O);
  dynamic: ``dynamic_wi8_afp32`` (int8 weights, activations quantized on the fly, float I/O);
  int8: ``static_wi8_ai8`` full-integer (int8 per-channel weights, int8 per-tensor activations, **int8
  input and output tensors**, their scale/zero point in model.json), calibrated on real images.
  (litert-torch's PT2E quantizer is the alternative int8 route; measured worse on embedding fidelity and not
  kept -- see benchmarks/results/export_parity.md.)
* Float NHWC files of a per-channel student take ``(pixel - 127.5) / 127.5`` with the student's own
  normalisation folded into the graph (``export.normalization``), so MediaPipe's Image Embedder, which allows
  one scalar mean/std only, can load them; ``--keep-normalization`` keeps the student's input. Their
  MediaPipe metadata is written by ``export.embedder_metadata``.

Everything is run through ``ai_edge_litert.interpreter.Interpreter`` for parity.
"""

from __future__ import annotations

import contextlib
import io
from pathlib import Path

import numpy as np

from export.common import BuildResult, ExportJob, Format, batch_one_runner, build_parser, run_export
from export.contract import ModelContract, TensorSpec
from export.normalization import FoldedNormalization, is_per_channel, scalar_preprocess
from mobilekd.errors import MobileKDError, cli_entry

SIGNATURE = "serving_default"


def _quiet_litert():
    try:
        from litert_torch import progress

        progress.console.quiet = True
    except Exception:  # progress output is cosmetic
        pass


def file_preprocess(job: ExportJob):
    """The input normalisation of the file: the model's own, or -- for a float NHWC file of a per-channel
    student, unless ``--keep-normalization`` -- the scalar (127.5, 127.5) with the model's folded in
    (``export.normalization``; MediaPipe's Image Embedder accepts only one mean/std)."""
    pre = job.model.preprocess
    if job.keep_normalization or job.layout != "NHWC" or job.precision == "int8" or \
            not is_per_channel(pre.mean, pre.std):
        return pre
    return scalar_preprocess(pre)


def export_fp32(job: ExportJob, path: Path, preprocess=None) -> str:
    import litert_torch
    import torch

    _quiet_litert()
    module = job.model
    if preprocess is not None and preprocess != job.model.preprocess:
        module = FoldedNormalization(job.model, preprocess, job.model.preprocess).eval()
    module = litert_torch.to_channel_last_io(module, args=[0]).eval() if job.layout == "NHWC" else module
    try:
        edge = litert_torch.convert(module, (torch.randn(*job.input_shape()),))
        edge.export(str(path))
    except Exception as error:  # the converter raises many types; name the failure
        raise MobileKDError(f"litert_torch.convert failed for {job.model.spec.arch}: {type(error).__name__}: "
                            f"{str(error).splitlines()[0][:500] if str(error) else ''}") from None
    return f"litert_torch.convert {'+ to_channel_last_io ' if job.layout == 'NHWC' else ''}".strip()


def _signature_input(path: Path) -> tuple[str, str]:
    from ai_edge_litert.interpreter import Interpreter

    signatures = Interpreter(model_path=str(path)).get_signature_list()
    key = SIGNATURE if SIGNATURE in signatures else next(iter(signatures))
    return key, signatures[key]["inputs"][0]


def quantize(job: ExportJob, fp32: Path, dst: Path) -> dict:
    from ai_edge_quantizer import quantizer, recipe
    from ai_edge_quantizer.recipe_manager import AlgorithmName

    qt = quantizer.Quantizer(str(fp32))
    calibration = None
    if job.precision == "fp16":
        qt.add_weight_only_config(regex=".*", operation_name="*", num_bits=16,
                                  algorithm_key=AlgorithmName.FLOAT_CASTING)
        info = {"scheme": "fp16-weights", "weights": "float16", "activations": "float32",
                "tool": "ai_edge_quantizer weight-only FLOAT_CASTING 16 bit"}
    elif job.precision == "dynamic":
        qt.load_quantization_recipe(recipe.dynamic_wi8_afp32())
        info = {"scheme": "dynamic-int8", "weights": "int8 per-channel", "activations": "float32 I/O, "
                "dynamically quantized", "tool": "ai_edge_quantizer recipe dynamic_wi8_afp32"}
    elif job.precision == "int8":
        qt.load_quantization_recipe(recipe.static_wi8_ai8())
        key, name = _signature_input(fp32)
        calibration = qt.calibrate({key: [{name: batch} for batch in job.calib_batches()]},
                                   num_threads=max(1, job.threads))
        info = {"scheme": "int8-static", "weights": "int8 symmetric per-channel",
                "activations": "int8 asymmetric per-tensor (min-max calibration); int8 input and output",
                "tool": "ai_edge_quantizer recipe static_wi8_ai8"}
    else:
        raise MobileKDError(f"TFLite export does not support --quantize {job.precision}")
    with contextlib.redirect_stdout(io.StringIO()):  # the quantizer prints a size summary
        result = qt.quantize(calibration)
    result.export_model(str(dst), overwrite=True)
    return info


def _tensor_spec(detail: dict, layout: str | None = None, l2: bool | None = None) -> TensorSpec:
    dtype = np.dtype(detail["dtype"]).name
    scale, zero = detail.get("quantization", (0.0, 0))
    quant = {"scale": float(scale), "zero_point": int(zero)} if dtype in ("int8", "uint8") else None
    return TensorSpec(detail["name"], [int(d) for d in detail["shape"]], dtype, layout, quant, l2)


def convert(job: ExportJob, work: Path) -> BuildResult:
    from ai_edge_litert.interpreter import Interpreter

    fp32 = work / "fp32.tflite"
    preprocess = file_preprocess(job)
    exporter = export_fp32(job, fp32, preprocess)
    notes = []
    if preprocess != job.model.preprocess:
        exporter += " + folded per-channel normalisation"
        notes.append(f"input normalisation: the student's per-channel mean/std {list(job.model.preprocess.mean)} / "
                     f"{list(job.model.preprocess.std)} is folded into the graph, so the file takes "
                     f"(pixel - 127.5) / 127.5 (one scalar, as MediaPipe's Image Embedder requires); "
                     "--keep-normalization keeps the student's")
    final = work / "model.tflite"
    if job.precision == "fp32":
        fp32.rename(final)
        info = {"scheme": "none"}
    else:
        info = quantize(job, fp32, final)
        fp32.unlink(missing_ok=True)
    interpreter = Interpreter(model_path=str(final))
    inputs, outputs = interpreter.get_input_details(), interpreter.get_output_details()
    if len(inputs) != 1 or len(outputs) != 1:
        raise MobileKDError(f"converted TFLite model has {len(inputs)} inputs / {len(outputs)} outputs, expected 1/1")
    if job.precision == "int8":
        notes.append("int8 I/O: MediaPipe's Image Embedder accepts only float32/uint8 tensors, so this file is "
                     "for LiteRT/Interpreter callers that quantize the normalised input with input.quantization")
    from export.embedder_metadata import embed_tflite_metadata

    metadata = embed_tflite_metadata(final, job, inputs[0], notes, preprocess)  # float32 NHWC only, else says why
    return BuildResult("model.tflite", _tensor_spec(inputs[0], job.layout),
                       _tensor_spec(outputs[0], l2=bool(job.model.spec.normalize)), info, exporter, notes,
                       {"mediapipe_metadata": metadata}, preprocess)


def make_runner(path: Path, contract: ModelContract, threads: int = 1):
    from ai_edge_litert.interpreter import Interpreter

    try:
        interpreter = Interpreter(model_path=str(path), num_threads=max(1, threads))
        interpreter.allocate_tensors()
    except Exception as error:  # the interpreter raises ValueError/RuntimeError on bad files
        raise MobileKDError(f"LiteRT cannot load {path}: {error}") from None
    inp, out = interpreter.get_input_details()[0], interpreter.get_output_details()[0]

    def run_one(x: np.ndarray) -> np.ndarray:
        interpreter.set_tensor(inp["index"], x)
        interpreter.invoke()
        return interpreter.get_tensor(out["index"]).copy()

    return batch_one_runner(run_one, contract)


def tensor_dtypes(path: Path) -> dict[str, int]:
    """Count of tensors per dtype in a .tflite file (the int8 test checks that int8 tensors exist)."""
    from ai_edge_litert.interpreter import Interpreter

    counts: dict[str, int] = {}
    for detail in Interpreter(model_path=str(path)).get_tensor_details():
        name = np.dtype(detail["dtype"]).name
        counts[name] = counts.get(name, 0) + 1
    return counts


FORMAT = Format("tflite", ".tflite", convert, make_runner, ("litert-torch", "ai-edge-quantizer", "ai-edge-litert"))


@cli_entry
def main(argv: list[str] | None = None) -> int:
    parser = build_parser("tflite", ("none", "fp16", "dynamic", "int8"), "none", "NHWC", __doc__.splitlines()[0])
    parser.add_argument("--keep-normalization", action="store_true",
                        help="keep the student's per-channel mean/std as the file's input normalisation (default: "
                             "fold it into the graph of float NHWC files so the input is (pixel - 127.5) / 127.5, "
                             "which MediaPipe's Image Embedder requires)")
    return run_export(FORMAT, parser.parse_args(argv), "NHWC")


if __name__ == "__main__":
    raise SystemExit(main())
