"""TFLite (LiteRT) export, no TensorFlow:
``python -m export.tflite CKPT [--quantize {fp32,fp16,dynamic,int8}] [--calib DATA] [--out DIR]``.

Route (see ../shared/notes/export.md section 3):

* fp32: ``litert_torch.convert`` of the student, wrapped by ``litert_torch.to_channel_last_io`` for the
  default NHWC float input (batch 1, what MediaPipe's Image Embedder and Android code feed); ``--layout
  NCHW`` converts the network as is.
* fp16 / dynamic / int8: ai-edge-quantizer on that float file --
  fp16: weight-only float16 (``FLOAT_CASTING``, float32 compute and I/O);
  dynamic: ``dynamic_wi8_afp32`` (int8 weights, activations quantized on the fly, float I/O);
  int8: ``static_wi8_ai8`` full-integer (int8 per-channel weights, int8 per-tensor activations), calibrated
  on real images with the global min/max of every tensor (``calibrate_min_max``). The file keeps float32 input
  and output tensors by default (one QUANTIZE / DEQUANTIZE op at the ends, what MediaPipe and plain Android code
  feed); ``--integer-io`` makes them int8, their scale/zero point in model.json, for integer-only runtimes.
  ``--float-convs N`` (shared with export.onnx) keeps the first N convolutions and every op before them in
  float: the int8 graph starts after them, so the input and the most sensitive early layers are not rounded
  (benchmarks/results/int8_cub/).
  Before conversion the weights are put on the int8 grid by ``export.rounding`` (each weight rounded up or
  down to keep its layer's output on the calibration images, AdaRound's objective; ``--weight-rounding
  nearest`` leaves the quantizer's round-to-nearest).
  (litert-torch's PT2E quantizer is the alternative int8 route; measured worse on embedding fidelity and not
  kept -- see benchmarks/results/archive/omniglot_abs1/export_parity.md.)
* NHWC files with float32 input (every precision unless ``--integer-io``) of a per-channel student take
  ``(pixel - 127.5) / 127.5`` with the student's own normalisation folded into the graph (``mobilekd.runtime.normalization``), so MediaPipe's Image Embedder, which allows
  one scalar mean/std only, can load them; ``--keep-normalization`` keeps the student's input. Their
  MediaPipe metadata is written by ``export.embedder_metadata``.

Parity runs the file through ``mobilekd.runtime.runners`` (``litert-xnnpack``: the ``ai_edge_litert`` interpreter).
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import io
import logging
import os
import warnings
from pathlib import Path

import numpy as np

from export.common import BuildResult, ExportJob, Format, export_main
from export.onnx import add_float_convs, float_convs_hint, read_float_convs
from export.rounding import add_weight_rounding, file_model, read_weight_rounding
from mobilekd.errors import MobileKDError, cli_entry
from mobilekd.runtime.contract import TensorSpec
from mobilekd.runtime.normalization import FoldedNormalization, is_per_channel, renormalize, same_normalization, scalar_preprocess
from mobilekd.runtime.runners import to_layout

SIGNATURE = "serving_default"


# Library noise of a conversion that is known to be harmless, silenced by ``quiet_conversion`` (anything else
# still reaches the user): logger name -> the start of its harmless messages.
HARMLESS_LOG_MESSAGES = {
    # torchao's CUDA-only kernels (MX formats, CUTLASS sm90a) do not load on a CPU machine; nothing uses them
    "torchao": ("Failed to load ",),
    # torchao registers an Enum with torch's pytree: a deprecation addressed to torchao, not to the user
    "torch.utils._pytree": ("%s is an Enum subclass and is now natively supported",),
}
# warnings raised inside the converter: (category, message regex)
HARMLESS_WARNINGS = ((FutureWarning, r"`isinstance\(treespec, LeafSpec\)` is deprecated"),)
# TensorFlow/absl C++ logging of the converter (read by the library from the environment): 1 drops its INFO
# lines ("Estimated count of arithmetic ops", and absl's "All log messages before absl::InitializeLog()"), keeps
# its warnings and errors
CONVERTER_LOG_LEVEL = ("TF_CPP_MIN_LOG_LEVEL", "1")


class _DropMessages(logging.Filter):
    def __init__(self, prefixes: tuple[str, ...]):
        super().__init__()
        self.prefixes = prefixes

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith(self.prefixes)


@contextlib.contextmanager
def quiet_conversion():
    """Drop the known-harmless noise of importing and running the converter and quantizer (see
    ``HARMLESS_LOG_MESSAGES``, ``HARMLESS_WARNINGS``, ``CONVERTER_LOG_LEVEL``); other warnings and log lines pass."""
    filters = [(logging.getLogger(name), _DropMessages(prefixes)) for name, prefixes in HARMLESS_LOG_MESSAGES.items()]
    variable, level = CONVERTER_LOG_LEVEL
    previous = os.environ.get(variable)
    for logger, drop in filters:
        logger.addFilter(drop)
    if previous is None:  # a level the user set is kept
        os.environ[variable] = level
    try:
        with warnings.catch_warnings():
            for category, message in HARMLESS_WARNINGS:
                warnings.filterwarnings("ignore", message=message, category=category)
            yield
    finally:
        for logger, drop in filters:
            logger.removeFilter(drop)
        if previous is None:
            os.environ.pop(variable, None)


def _quiet_litert():
    try:
        from litert_torch import progress

        progress.console.quiet = True
    except Exception:  # progress output is cosmetic
        pass


def file_preprocess(job: ExportJob):
    """The input normalisation of the file: the model's own, or -- for an NHWC file with float32 input of a
    per-channel student, unless ``--keep-normalization`` -- the scalar (127.5, 127.5) with the model's folded in
    (``mobilekd.runtime.normalization``; MediaPipe's Image Embedder accepts only one mean/std)."""
    pre = job.model.preprocess
    keep, integer_io = job.options.get("keep_normalization", False), job.options.get("integer_io", False)
    if keep or job.layout != "NHWC" or integer_io or not is_per_channel(pre.mean, pre.std):
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


def signature_input(path: Path) -> tuple[str, str]:
    """(signature key, input name) of a .tflite file: what ai-edge-quantizer's calibration data is keyed by."""
    from ai_edge_litert.interpreter import Interpreter

    signatures = Interpreter(model_path=str(path)).get_signature_list()
    key = SIGNATURE if SIGNATURE in signatures else next(iter(signatures))
    return key, signatures[key]["inputs"][0]


def calibrate_min_max(qt, fp32: Path, samples: list[np.ndarray], threads: int = 1) -> dict:
    """Calibration ranges: the global min/max of every tensor over ``samples`` (batch-1 inputs).

    Not ``Quantizer.calibrate`` over the whole list: it merges per-sample ranges with a moving average, so with
    batch-1 images each range follows the last ~20 images and clips the rest (measurements:
    benchmarks/results/int8_calibration/). Global min/max is ONNX Runtime's MinMax statistic; each sample
    is calibrated on its own and the ranges merged with the quantizer's own ``qsv_utils.min_max_update``."""
    from ai_edge_quantizer.utils import qsv_utils

    key, name = signature_input(fp32)
    ranges: dict = {}
    for sample in samples:
        with contextlib.redirect_stderr(io.StringIO()):  # a progress bar per sample
            one = qt.calibrate({key: [{name: sample}]}, num_threads=max(1, threads))
        ranges = {tensor: qsv_utils.min_max_update(ranges.get(tensor, {}), qsv) for tensor, qsv in one.items()}
    return ranges


def graph_ops(fp32: Path) -> list[tuple[str, str]]:
    """(op name, output tensor name) of every op of a .tflite file, in execution order."""
    from ai_edge_litert.interpreter import Interpreter

    interpreter = Interpreter(model_path=str(fp32))
    tensors = interpreter.get_tensor_details()
    return [(op["op_name"], tensors[op["outputs"][0]]["name"])
            for op in interpreter._get_ops_details()]  # no public op listing in ai_edge_litert


def leading_ops(ops: list[tuple[str, str]], convs: int) -> list[tuple[str, str]]:
    """The ops up to and including the ``convs``-th convolution (fused activations included): the input's
    normalisation, padding, the stem and the first blocks -- whatever the architecture calls them."""
    seen = 0
    for i, (op, _) in enumerate(ops):
        seen += op in ("CONV_2D", "DEPTHWISE_CONV_2D")
        if seen == convs:
            return ops[:i + 1]
    raise MobileKDError(f"--float-convs {convs}: the model has only {seen} convolutions")


# the ops F.normalize (mobilekd.models.embedding_net) converts to, after the pooling / head of the embedding
L2_NORMALIZATION_OPS = ("ABS", "MUL", "SQUARE", "SUM", "SQRT", "RSQRT", "RESHAPE", "MAXIMUM", "DIV",
                        "L2_NORMALIZATION")


def l2_tail(ops: list[tuple[str, str]]) -> list[tuple[str, str]]:
    """The trailing ops of the graph that compute its L2 normalisation (``L2_NORMALIZATION_OPS``, up to the
    DIV / RSQRT / L2_NORMALIZATION that applies it), or [] when the graph does not end in one.

    They stay float in the int8 file: in int8, SQRT, MAXIMUM and DIV have no XNNPACK kernel and fall back to
    LiteRT's reference kernels between three delegate partitions (``benchmarks.tflite_ops``), and a float norm
    of the dequantized pooled vector is exact where an int8 one rounds each step."""
    start = len(ops)
    while start and ops[start - 1][0] in L2_NORMALIZATION_OPS:
        start -= 1
    tail = ops[start:]
    return tail if any(op in ("DIV", "RSQRT", "L2_NORMALIZATION") for op, _ in tail) else []


def keep_float(qt, ops: list[tuple[str, str]]) -> int:
    """Leave ``ops`` in float (ai-edge-quantizer ``NO_QUANTIZE`` for their output tensor); returns how many."""
    import re

    from ai_edge_quantizer.recipe_manager import AlgorithmName

    for op, name in ops:
        qt.update_quantization_recipe(regex=re.escape(name), operation_name=op, algorithm_key=AlgorithmName.NO_QUANTIZE)
    return len(ops)


def int8_recipe(qt, job: ExportJob, fp32: Path) -> dict:
    """``static_wi8_ai8`` on ``qt``, with float32 I/O unless ``--integer-io`` (the folded normalisation kept float
    before the QUANTIZE op) and the first ``--float-convs`` convolutions kept float; returns model.json's
    quantization record."""
    from ai_edge_quantizer import recipe
    from ai_edge_quantizer.recipe_manager import AlgorithmName

    qt.load_quantization_recipe(recipe.static_wi8_ai8())
    io_kind = "int8 input and output"
    ops = graph_ops(fp32)
    if not job.options.get("integer_io", False):
        for boundary in ("INPUT", "OUTPUT"):
            qt.update_quantization_recipe(regex=".*", operation_name=boundary, algorithm_key=AlgorithmName.NO_QUANTIZE)
        # the folded normalisation (mobilekd.runtime.normalization) runs before the QUANTIZE op, in float, so the int8
        # graph sees exactly what the unfolded int8 file would (its own ops, not the wrapped model's)
        folded = keep_float(qt, [o for o in ops if f"{FoldedNormalization.__name__}_wrapped;" in o[1]])
        io_kind = "float32 input and output" + (f" ({folded} normalisation ops in float)" if folded else "")
    float_convs = job.options.get("float_convs", 0)
    leading = leading_ops(ops, float_convs) if float_convs else []
    keep_float(qt, leading)
    tail = l2_tail(ops) if job.model.spec.normalize else []
    keep_float(qt, tail)
    return {"scheme": "int8-static" + (f"+float-convs-{float_convs}" if leading else ""),
            "weights": "int8 symmetric per-channel",
            "activations": f"int8 asymmetric per-tensor (global min-max calibration); {io_kind}"
                           + ("; L2 normalisation in float32" if tail else ""),
            "float_ops": [op for op, _ in leading], "float_tail_ops": [op for op, _ in tail],
            "tool": "ai_edge_quantizer recipe static_wi8_ai8"}


def quantize(job: ExportJob, fp32: Path, dst: Path, preprocess=None) -> dict:
    """Quantize the float file ``fp32`` into ``dst``; ``preprocess``: the file's input normalisation, in which
    the calibration images are fed (it differs from the model's when the normalisation is folded)."""
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
        info = int8_recipe(qt, job, fp32)
        samples = job.calib_batches()
        if preprocess is not None and not same_normalization(preprocess, job.model.preprocess):
            samples = [to_layout(renormalize(job.calib[i:i + 1], job.model.preprocess, preprocess), job.layout)
                       for i in range(len(job.calib))]
        calibration = calibrate_min_max(qt, fp32, samples, job.threads)
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
    """The TFLite file of ``job`` in ``work``, without the libraries' known-harmless noise."""
    with quiet_conversion():
        return _convert(job, work)


def _convert(job: ExportJob, work: Path) -> BuildResult:
    from ai_edge_litert.interpreter import Interpreter

    fp32 = work / "fp32.tflite"
    preprocess = file_preprocess(job)
    # int8: the float graph the quantizer reads holds int8-grid weights rounded for the least output error
    # (export.rounding); parity still compares the file with the original float student
    model, rounding = file_model(job)
    exporter = export_fp32(dataclasses.replace(job, model=model), fp32, preprocess)
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
        info = quantize(job, fp32, final, preprocess)
        fp32.unlink(missing_ok=True)
    if rounding:
        info["weight_rounding"] = rounding
    interpreter = Interpreter(model_path=str(final))
    inputs, outputs = interpreter.get_input_details(), interpreter.get_output_details()
    if len(inputs) != 1 or len(outputs) != 1:
        raise MobileKDError(f"converted TFLite model has {len(inputs)} inputs / {len(outputs)} outputs, expected 1/1")
    if job.precision == "int8" and job.options.get("integer_io", False):
        notes.append("int8 I/O (--integer-io): MediaPipe's Image Embedder accepts only float32/uint8 tensors, so "
                     "this file is for LiteRT/Interpreter callers that quantize the normalised input with "
                     "input.quantization")
    from export.embedder_metadata import embed_tflite_metadata

    metadata = embed_tflite_metadata(final, job, inputs[0], notes, preprocess)  # float32 NHWC only, else says why
    # an int8 file's output is not declared unit-norm: with --integer-io it is on the int8 grid, and one rule for
    # every int8 file keeps callers (the parity core, the Android core) renormalising before inner-product search
    unit_norm = bool(job.model.spec.normalize) and job.precision != "int8"
    return BuildResult("model.tflite", _tensor_spec(inputs[0], job.layout),
                       _tensor_spec(outputs[0], l2=unit_norm), info, exporter, notes,
                       {"mediapipe_metadata": metadata}, preprocess)


def tensor_dtypes(path: Path) -> dict[str, int]:
    """Count of tensors per dtype in a .tflite file (the int8 test checks that int8 tensors exist)."""
    from ai_edge_litert.interpreter import Interpreter

    counts: dict[str, int] = {}
    for detail in Interpreter(model_path=str(path)).get_tensor_details():
        name = np.dtype(detail["dtype"]).name
        counts[name] = counts.get(name, 0) + 1
    return counts


def add_options(parser: argparse.ArgumentParser) -> None:
    add_float_convs(parser)
    parser.add_argument("--keep-normalization", action="store_true",
                        help="keep the student's per-channel mean/std as the file's input normalisation (default: "
                             "fold it into the graph of float NHWC files so the input is (pixel - 127.5) / 127.5, "
                             "which MediaPipe's Image Embedder requires)")
    add_weight_rounding(parser)
    parser.add_argument("--integer-io", action="store_true",
                        help="int8: int8 input and output tensors (scale/zero point in model.json) for integer-only "
                             "runtimes; default float32 I/O with int8 inside, which MediaPipe can load")


def read_options(args: argparse.Namespace, precision: str) -> dict:
    if args.integer_io and precision != "int8":
        raise MobileKDError("--integer-io applies to --quantize int8 only")
    return {**read_float_convs(args, precision), **read_weight_rounding(args, precision),
            "keep_normalization": bool(args.keep_normalization), "integer_io": bool(args.integer_io)}


FORMAT = Format("tflite", ".tflite", convert, ("litert-torch", "ai-edge-quantizer", "ai-edge-litert"),
                ("fp32", "fp16", "dynamic", "int8"), "fp32", "NHWC", __doc__.splitlines()[0], calibrated=True,
                add_options=add_options, read_options=read_options, gate_hint=float_convs_hint)


@cli_entry
def main(argv: list[str] | None = None) -> int:
    return export_main(FORMAT, argv)


if __name__ == "__main__":
    raise SystemExit(main())
