"""ONNX export: ``python -m export.onnx CKPT [--quantize {fp32,fp16,int8}] [--calib DATA] [--out DIR]``.

Route (see ../shared/notes/export.md section 2):

* fp32: ``torch.onnx.export(dynamo=True, external_data=False)`` with a fixed ``1x3xHxW`` (or ``1xHxWx3``
  with ``--layout NHWC``: a permute is put in front of the network) input named ``input`` and output
  ``embedding``; if the dynamo exporter fails, the legacy TorchScript exporter (``dynamo=False``, opset 17)
  is used and the failure is recorded in model.json ``build.notes`` and printed. Then ``onnx.checker`` and
  onnxslim (a failed simplification is recorded, and the unsimplified graph kept).
* fp16: weights stored as float16 initializers, each followed by a ``Cast`` to float32; compute and I/O stay
  float32 (ONNX Runtime's CPU provider has few fp16 kernels; ``onnxconverter-common``'s full fp16 conversion
  is not installed here). Halves the file, runs everywhere.
* int8: onnxruntime ``quant_pre_process(skip_symbolic_shape=True)`` (symbolic shape inference fails on
  dynamo graphs) then ``quantize_static`` QDQ, int8 activations and per-channel int8 weights, MinMax
  calibration on real images through a ``CalibrationDataReader``. The embedding head (the last
  Gemm/MatMul and the L2 normalisation after it) is kept float: its output is a unit vector that a single
  per-tensor int8 scale would coarsen. Before export the weights are put on the int8 grid by
  ``export.rounding`` (``--weight-rounding``, shared with export.tflite).
"""

from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path

import numpy as np

from export.common import BuildResult, ExportJob, Format, export_main
from export.rounding import add_weight_rounding, file_model, read_weight_rounding
from mobilekd.errors import MobileKDError, cli_entry
from mobilekd.runtime.contract import TensorSpec

INPUT, OUTPUT = "input", "embedding"


class _ChannelsLast:
    """Factory for an nn.Module taking NHWC and feeding the NCHW network (a single permute in the graph)."""

    @staticmethod
    def wrap(model):
        import torch

        class ChannelsLast(torch.nn.Module):
            def __init__(self, inner):
                super().__init__()
                self.inner = inner

            def forward(self, x):
                return self.inner(x.permute(0, 3, 1, 2))

        return ChannelsLast(model).eval()


def layout_module(job: ExportJob):
    return _ChannelsLast.wrap(job.model) if job.layout == "NHWC" else job.model


def export_fp32(job: ExportJob, path: Path) -> tuple[str, list[str]]:
    """Write the float32 ONNX graph to ``path``; returns (exporter description, notes)."""
    import onnx
    import torch

    module = layout_module(job)
    sample = (torch.randn(*job.input_shape()),)
    notes = []
    try:
        program = torch.onnx.export(module, sample, None, dynamo=True, external_data=False,
                                    input_names=[INPUT], output_names=[OUTPUT], verbose=False)
        program.save(str(path))
        exporter = f"torch.onnx.export(dynamo=True) opset {onnx.load(str(path)).opset_import[0].version}"
    except Exception as error:  # the dynamo exporter raises many types; record and use the legacy one
        message = f"dynamo ONNX export failed ({type(error).__name__}: {str(error).splitlines()[0][:300]}); " \
                  "used the legacy TorchScript exporter (dynamo=False, opset 17)"
        print(f"warning: {message}", flush=True)
        notes.append(message)
        try:
            torch.onnx.export(module, sample, str(path), dynamo=False, opset_version=17,
                              input_names=[INPUT], output_names=[OUTPUT])
        except Exception as error2:
            raise MobileKDError(f"ONNX export failed with both exporters: dynamo: {error}; legacy: "
                                f"{type(error2).__name__}: {error2}") from None
        exporter = "torch.onnx.export(dynamo=False) opset 17"
    model = onnx.load(str(path))
    try:
        onnx.checker.check_model(model, full_check=True)
    except onnx.checker.ValidationError as error:
        raise MobileKDError(f"the exported ONNX graph is invalid: {str(error).splitlines()[0]}") from None
    try:
        import onnxslim

        nodes = len(model.graph.node)
        slim = onnxslim.slim(model)
        onnx.checker.check_model(slim)
        onnx.save(slim, str(path))
        notes.append(f"onnxslim: {nodes} -> {len(slim.graph.node)} nodes")
    except Exception as error:  # simplification is an optimisation: keep the valid unsimplified graph
        message = f"onnxslim failed ({type(error).__name__}: {error}); kept the unsimplified graph"
        print(f"warning: {message}", flush=True)
        notes.append(message)
    return exporter, notes


def to_fp16_weights(src: Path, dst: Path) -> int:
    """float32 initializers -> float16 initializers + Cast(to=float32); returns how many were converted."""
    import onnx
    from onnx import helper, numpy_helper

    model = onnx.load(str(src))
    graph = model.graph
    casts, converted = [], 0
    for init in list(graph.initializer):
        if init.data_type != onnx.TensorProto.FLOAT or np.prod(init.dims, dtype=np.int64) < 16:
            continue  # scalars/eps constants stay float32
        array = numpy_helper.to_array(init)
        if np.abs(array).max(initial=0) > 65504:
            continue  # would overflow in fp16
        name = init.name
        half = numpy_helper.from_array(array.astype(np.float16), name=f"{name}__fp16")
        graph.initializer.remove(init)
        graph.initializer.append(half)
        casts.append(helper.make_node("Cast", [half.name], [name], to=onnx.TensorProto.FLOAT,
                                      name=f"{name}__cast"))
        converted += 1
    for i, node in enumerate(casts):
        graph.node.insert(i, node)
    onnx.checker.check_model(model)
    onnx.save(model, str(dst))
    return converted


def head_nodes(path: Path) -> list[str]:
    """Names of the last Gemm/MatMul and every node after it (the projection + L2 normalisation)."""
    import onnx

    nodes = list(onnx.load(str(path)).graph.node)
    last = max((i for i, n in enumerate(nodes) if n.op_type in ("Gemm", "MatMul")), default=None)
    return [] if last is None else [n.name for n in nodes[last:] if n.name]


def leading_nodes(path: Path, convs: int) -> list[str]:
    """Names of the nodes up to and including the ``convs``-th Conv and its activation (input normalisation,
    padding, the stem and the first blocks) -- what ``--float-convs`` keeps in float."""
    import onnx

    nodes = list(onnx.load(str(path)).graph.node)
    conv_index = [i for i, n in enumerate(nodes) if n.op_type == "Conv"]
    if len(conv_index) < convs:
        raise MobileKDError(f"--float-convs {convs}: the model has only {len(conv_index)} Conv nodes")
    end = conv_index[convs - 1] + 1
    if end < len(nodes) and nodes[end].op_type in ("Relu", "Clip", "HardSwish", "HardSigmoid", "Sigmoid"):
        end += 1  # the last kept conv's activation stays with it
    return [n.name for n in nodes[:end] if n.name]


def quantize_int8(job: ExportJob, fp32: Path, dst: Path) -> dict:
    from onnxruntime.quantization import (CalibrationDataReader, CalibrationMethod, QuantFormat, QuantType,
                                          quantize_static)
    from onnxruntime.quantization.shape_inference import quant_pre_process

    pre = fp32.with_name("pre.onnx")
    quant_pre_process(str(fp32), str(pre), skip_symbolic_shape=True)
    float_convs = job.options.get("float_convs", 0)
    exclude = head_nodes(pre) + (leading_nodes(pre, float_convs) if float_convs else [])

    class Reader(CalibrationDataReader):
        def __init__(self, batches):
            self.batches = iter(batches)

        def get_next(self):
            batch = next(self.batches, None)
            return None if batch is None else {INPUT: batch}

    quantize_static(str(pre), str(dst), Reader(job.calib_batches()), quant_format=QuantFormat.QDQ,
                    per_channel=True, activation_type=QuantType.QInt8, weight_type=QuantType.QInt8,
                    calibrate_method=CalibrationMethod.MinMax, nodes_to_exclude=exclude)
    pre.unlink(missing_ok=True)
    return {"scheme": "int8-static" + (f"+float-convs-{float_convs}" if float_convs else ""),
            "weights": "int8 symmetric per-channel", "activations":
            "int8 per-tensor (MinMax calibration), QDQ", "float_ops": exclude,
            "tool": "onnxruntime.quantization.quantize_static"}


def convert(job: ExportJob, work: Path) -> BuildResult:
    fp32 = work / "fp32.onnx"
    model, rounding = file_model(job)  # int8: weights on the int8 grid, rounded for the least output error
    exporter, notes = export_fp32(dataclasses.replace(job, model=model), fp32)
    final = work / "model.onnx"
    if job.precision == "fp32":
        fp32.rename(final)
        quant = {"scheme": "none"}
    elif job.precision == "fp16":
        count = to_fp16_weights(fp32, final)
        quant = {"scheme": "fp16-weights", "weights": f"float16 ({count} initializers, Cast to float32)",
                 "activations": "float32"}
    elif job.precision == "int8":
        quant = quantize_int8(job, fp32, final)
        if rounding:
            quant["weight_rounding"] = rounding
    else:
        raise MobileKDError(f"ONNX export does not support --quantize {job.precision}")
    fp32.unlink(missing_ok=True)
    dim = int(job.model.embed_dim)
    return BuildResult("model.onnx", TensorSpec(INPUT, job.input_shape(), "float32", job.layout),
                       TensorSpec(OUTPUT, [1, dim], "float32", l2_normalized=bool(job.model.spec.normalize)),
                       quant, exporter, notes)


def add_float_convs(parser: argparse.ArgumentParser) -> None:
    """``--float-convs N``: the int8 option of the formats with calibrated int8 activations (ONNX, TFLite)."""
    parser.add_argument("--float-convs", type=int, default=0, metavar="N",
                        help="int8: keep the first N convolutions (and every op before them) in float, so "
                             "the input and the most sensitive early layers are not rounded (default 0: "
                             "full integer)")


def read_float_convs(args: argparse.Namespace, precision: str) -> dict:
    if args.float_convs < 0 or (args.float_convs and precision != "int8"):
        raise MobileKDError("--float-convs takes N >= 0 and applies to --quantize int8 only")
    return {"float_convs": int(args.float_convs)}


def add_options(parser: argparse.ArgumentParser) -> None:
    add_float_convs(parser)
    add_weight_rounding(parser)


def read_options(args: argparse.Namespace, precision: str) -> dict:
    return {**read_float_convs(args, precision), **read_weight_rounding(args, precision)}


def float_convs_hint(job: ExportJob) -> str:
    if job.precision == "int8" and not job.options.get("float_convs"):
        return "; --float-convs 2 keeps the input and first layers float, which is often enough"
    return ""


FORMAT = Format("onnx", ".onnx", convert, ("onnx", "onnxruntime", "onnxscript", "onnxslim"), ("fp32", "fp16", "int8"),
                "fp32", "NCHW", __doc__.splitlines()[0], calibrated=True, add_options=add_options,
                read_options=read_options, gate_hint=float_convs_hint)


@cli_entry
def main(argv: list[str] | None = None) -> int:
    return export_main(FORMAT, argv)


if __name__ == "__main__":
    raise SystemExit(main())
