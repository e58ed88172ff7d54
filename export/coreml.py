"""Core ML export: ``python -m export.coreml CKPT [--quantize {fp32,fp16,int8}] [--out DIR]``.

Route (see ../shared/notes/export.md section 4): ``ct.convert(torch.jit.trace(model, x), convert_to="mlprogram",
minimum_deployment_target=iOS16)`` to an ``.mlpackage`` with a float32 ``input`` (``1x3xHxW``, or
``1xHxWx3`` with ``--layout NHWC``) and a float32 ``embedding`` output.

* fp32: ``compute_precision=FLOAT32``.
* fp16: float16 weights and compute, except the L2 normalisation (``reduce_l2_norm`` / ``real_div`` and the
  ops around them stay float32: the sum of squares can overflow fp16); I/O stays float32.
* int8: the fp16 program with every conv/linear weight linearly quantized to int8, symmetric per output
  channel (``coremltools.optimize.coreml.linear_quantize_weights``, ``weight_threshold=0``): W8 weights,
  fp16 activations. W8A8 (``coremltools.optimize.torch`` activation quantization, iOS17) is not built: its
  activation ranges could not be verified here (no Core ML runtime on Linux), and an unmeasured int8
  activation path is exactly the drift this exporter exists to refuse.

``--image-input``: the input is a Core ML ``ImageType`` (RGB, ``1x3xHxW``; an app hands it a ``CVPixelBuffer``
of 0..255 pixels) with ``scale = 1/127.5`` and ``bias = -1`` per channel; a per-channel student (ImageNet
mean/std) gets its own normalisation folded into the graph (``mobilekd.runtime.normalization``), so the result is exact.
model.json's ``input.dtype`` is then ``"image"`` and its ``preprocess`` mean 0 / std 1 (raw pixels).

Parity: Core ML runs only on macOS. On Linux the check is structural -- input/output names, shapes and dtypes,
and the precision of every stored weight -- and model.json says that runtime parity was not measured (no
cosine or Recall number is written). On macOS the same shared parity core runs ``MLModel.predict``.
"""

from __future__ import annotations

import argparse
import platform
import sys
from pathlib import Path

import numpy as np

from export.common import BuildResult, ExportJob, Format, export_main
from export.onnx import layout_module
from mobilekd.errors import MobileKDError, cli_entry
from mobilekd.preprocess import Preprocess
from mobilekd.runtime.contract import ModelContract, TensorSpec
from mobilekd.runtime.normalization import FoldedNormalization, scalar_preprocess

INPUT, OUTPUT = "input", "embedding"
NORM_OPS = ("reduce_l2_norm", "real_div", "maximum", "tile")  # F.normalize as lowered by coremltools
WEIGHT_DTYPE = {"fp32": "FLOAT32", "fp16": "FLOAT16", "int8": "INT8"}


def static_same_padding(module, sample):
    """A copy of ``module`` whose TF "SAME" convolutions (timm's ``Conv2dSame``, in the ``tf_`` students imported
    from Google's files) pad by fixed amounts: coremltools cannot convert the padding computed from the input
    shape at run time (it fails on an ``int`` op in the stem), and at a fixed input size the amounts are constants.
    Other modules are unchanged."""
    import copy
    import math

    import torch

    if not any(type(m).__name__ == "Conv2dSame" for m in module.modules()):
        return module
    module = copy.deepcopy(module)
    shapes = {}
    same = [m for m in module.modules() if type(m).__name__ == "Conv2dSame"]  # the copy's modules
    hooks = [m.register_forward_pre_hook(lambda m, args: shapes.__setitem__(m, args[0].shape[-2:])) for m in same]
    with torch.no_grad():
        module(sample)
    for hook in hooks:
        hook.remove()
    for parent in list(module.modules()):
        for name, conv in list(parent.named_children()):
            if conv not in shapes:
                continue
            pads = []
            for size, k, s, d in zip(shapes[conv], conv.kernel_size, conv.stride, conv.dilation):
                total = max((math.ceil(size / s) - 1) * s + (k - 1) * d + 1 - size, 0)
                pads.append((total // 2, total - total // 2))
            plain = torch.nn.Conv2d(conv.in_channels, conv.out_channels, conv.kernel_size, conv.stride, 0,
                                    conv.dilation, conv.groups, conv.bias is not None)
            plain.load_state_dict(conv.state_dict())
            (top, bottom), (left, right) = pads
            setattr(parent, name, torch.nn.Sequential(torch.nn.ZeroPad2d((left, right, top, bottom)), plain))
    return module


def convert(job: ExportJob, work: Path) -> BuildResult:
    import coremltools as ct
    import torch

    pre = job.model.preprocess
    image_input = job.options.get("image_input", False)
    if image_input:
        if job.layout != "NCHW":
            raise MobileKDError("--image-input makes a Core ML ImageType, which is NCHW: drop --layout NHWC")
        module = FoldedNormalization(job.model, scalar_preprocess(pre), pre).eval()
        input_type = ct.ImageType(name=INPUT, shape=tuple(job.input_shape()), scale=1 / 127.5, bias=[-1.0] * 3,
                                  color_layout=ct.colorlayout.RGB)
    else:
        module = layout_module(job)
        input_type = ct.TensorType(name=INPUT, shape=tuple(job.input_shape()), dtype=np.float32)
    sample = torch.randn(*job.input_shape())
    module = static_same_padding(module, sample)
    with torch.no_grad():
        traced = torch.jit.trace(module, sample)
    if job.precision == "fp32":
        precision = ct.precision.FLOAT32
    else:
        precision = ct.transform.FP16ComputePrecision(op_selector=lambda op: op.op_type not in NORM_OPS)
    try:
        mlmodel = ct.convert(traced, inputs=[input_type], outputs=[ct.TensorType(name=OUTPUT, dtype=np.float32)], convert_to="mlprogram",
                             minimum_deployment_target=ct.target.iOS16, compute_precision=precision)
    except Exception as error:  # coremltools raises NotImplementedError/ValueError naming the op
        raise MobileKDError(f"coremltools cannot convert {job.model.spec.arch}: {type(error).__name__}: "
                            f"{str(error).splitlines()[0][:500] if str(error) else ''}") from None
    info = {"scheme": "none"} if job.precision == "fp32" else {
        "scheme": "fp16-weights", "weights": "float16", "activations": "float16 (L2 normalisation float32)"}
    if job.precision == "int8":
        import coremltools.optimize.coreml as cto

        config = cto.OptimizationConfig(global_config=cto.OpLinearQuantizerConfig(
            mode="linear_symmetric", dtype="int8", granularity="per_channel", weight_threshold=0))
        mlmodel = cto.linear_quantize_weights(mlmodel, config=config)
        info = {"scheme": "int8-weights", "weights": "int8 symmetric per-channel (linear_quantize_weights)",
                "activations": "float16 (L2 normalisation float32)"}
    elif job.precision not in ("fp32", "fp16"):
        raise MobileKDError(f"Core ML export does not support --quantize {job.precision}")
    mlmodel.short_description = f"mobilekd {job.model.spec.arch} embedding ({job.precision})"
    mlmodel.save(str(work / "model.mlpackage"))
    dim = int(job.model.embed_dim)
    raw_pixels = Preprocess(pre.size, (0.0,) * 3, (1.0,) * 3, pre.crop, pre.interpolation, pre.channels)
    notes = ["ImageType input: RGB 0..255 pixels; Core ML applies scale 1/127.5, bias -1, and the student's "
             "normalisation is folded into the graph"] if image_input else []
    return BuildResult("model.mlpackage", TensorSpec(INPUT, job.input_shape(), "image" if image_input
                                                     else "float32", job.layout),
                       TensorSpec(OUTPUT, [1, dim], "float32", l2_normalized=bool(job.model.spec.normalize)),
                       info, "coremltools.convert(torch.jit.trace) mlprogram iOS16"
                       + (" + ImageType input" if image_input else ""), notes,
                       preprocess=raw_pixels if image_input else None)


def structure(path: Path) -> dict:
    """Inputs, outputs and stored weight precision of an .mlpackage, read from its spec (works on Linux)."""
    import coremltools as ct
    from coremltools.proto import MIL_pb2

    spec = ct.utils.load_spec(str(path))

    def feature(f) -> dict:
        if f.type.WhichOneof("Type") == "imageType":
            image = f.type.imageType
            space = ct.proto.FeatureTypes_pb2.ImageFeatureType.ColorSpace.Name(image.colorSpace)
            return {"name": f.name, "shape": [1, 3, int(image.height), int(image.width)], "dtype": f"IMAGE_{space}"}
        array = f.type.multiArrayType
        dtype = ct.proto.FeatureTypes_pb2.ArrayFeatureType.ArrayDataType.Name(array.dataType)
        return {"name": f.name, "shape": [int(s) for s in array.shape], "dtype": dtype}

    weights: dict[str, int] = {}
    ops: dict[str, int] = {}
    main = spec.mlProgram.functions["main"]
    for op in main.block_specializations[main.opset].operations:
        ops[op.type] = ops.get(op.type, 0) + 1
        for key, value in op.attributes.items():
            if not value.type.HasField("tensorType") or key not in ("val", "quantized_data", "data"):
                continue
            tensor = value.type.tensorType
            count = int(np.prod([d.constant.size for d in tensor.dimensions], dtype=np.int64))
            dtype = MIL_pb2.DataType.Name(tensor.dataType)
            if count >= 64 and dtype in ("FLOAT32", "FLOAT16", "INT8", "UINT8"):  # weights, not scalars
                weights[dtype] = weights.get(dtype, 0) + count
    return {"spec_version": int(spec.specificationVersion), "inputs": [feature(f) for f in spec.description.input],
            "outputs": [feature(f) for f in spec.description.output], "weight_elements": weights,
            "op_counts": ops}


def structural_check(path: Path, contract: ModelContract) -> dict:
    from export.parity import structural_report

    s = structure(path)
    weights = s["weight_elements"]
    total = sum(weights.values()) or 1
    expected = WEIGHT_DTYPE[contract.precision]
    share = weights.get(expected, 0) / total
    inp = s["inputs"][0] if len(s["inputs"]) == 1 else {}
    out = s["outputs"][0] if len(s["outputs"]) == 1 else {}
    image = contract.input.dtype == "image"
    checks = {
        f"one input named 'input', {'RGB image' if image else 'float32'}": inp.get("name") == contract.input.name
        and inp.get("dtype") == ("IMAGE_RGB" if image else "FLOAT32"),
        f"input shape {contract.input.shape}": inp.get("shape") == contract.input.shape,
        "one output named 'embedding', float32": out.get("name") == contract.output.name
                                                and out.get("dtype") == "FLOAT32",
        f"output shape {contract.output.shape}": out.get("shape") in (contract.output.shape, []),
        f">= 95% of weight elements stored as {expected}": share >= 0.95,
    }
    s["weight_share_expected"] = round(share, 4)
    reason = "Core ML predict() runs only on macOS; run python -m export.check there"
    return structural_report(checks, s, reason, f"no Core ML runtime on {platform.system() or sys.platform}")


def add_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--image-input", action="store_true",
                        help="Core ML ImageType input (RGB pixels, scale 1/127.5, bias -1; the student's own "
                             "normalisation folded into the graph) instead of a float32 tensor")


def read_options(args: argparse.Namespace, precision: str) -> dict:
    return {"image_input": bool(args.image_input)}


FORMAT = Format("coreml", ".mlpackage", convert, ("coremltools",), ("fp32", "fp16", "int8"), "fp32", "NCHW",
                __doc__.splitlines()[0], structural_check=structural_check, add_options=add_options,
                read_options=read_options)


@cli_entry
def main(argv: list[str] | None = None) -> int:
    return export_main(FORMAT, argv)


if __name__ == "__main__":
    raise SystemExit(main())
