"""Read Google's ImageNet MobileNet classifiers (``.tflite``) and place their weights into timm networks.

The files (TF-slim MobileNetV1 / V2, see ``../shared/weights/SOURCE.md``) are a chain of CONV_2D /
DEPTHWISE_CONV_2D ops with BatchNorm folded into each convolution's weights and bias, fused ReLU6, TF "SAME"
padding, then AVERAGE_POOL_2D, a 1x1 CONV_2D classifier (1001 classes, background at 0), SQUEEZE/RESHAPE and
SOFTMAX. The file is read with the TFLite flatbuffer schema that ``ai_edge_litert`` ships
(``schema_py_generated``): it gives, per op, the constant tensors *and* the options (stride, padding, fused
activation) that the interpreter's public API does not expose, so each layer is checked against the network
before a weight is copied.

Layouts: regular conv weights ``[out, kh, kw, in]`` (OHWI) -> torch ``[out, in, kh, kw]``; depthwise
``[1, kh, kw, C]`` -> ``[C, 1, kh, kw]``. Quantised tensors (uint8/int8 weights, int32 biases) are dequantised
as ``real = scale * (q - zero_point)`` (per tensor or per channel). The receiving network is timm's
TF-compatible MobileNet (``mobilekd.models``: ``tf_mobilenetv1_*``, ``tf_mobilenetv2_100``): its convolutions
have no bias, so each folded bias goes into the BatchNorm that follows, set to the identity
(``running_mean`` 0, ``running_var`` 1 - eps, ``weight`` 1): ``BN(x) = x + bias`` exactly.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from mobilekd.errors import ModelError
from mobilekd.io import require_file, sha256_file

# TFLite schema enums (tensorflow/compiler/mlir/lite/schema/schema.fbs)
_TYPES = {0: "float32", 1: "float16", 2: "int32", 3: "uint8", 9: "int8"}
_ACTIVATIONS = {0: "none", 1: "relu", 3: "relu6"}
_PADDING = {0: "SAME", 1: "VALID"}
# the ops that carry weights; a FULLY_CONNECTED classifier (what litert-torch writes for a Linear) is read as the
# 1x1 convolution it equals
CONV_OPS = {"CONV_2D": "conv", "DEPTHWISE_CONV_2D": "depthwise", "FULLY_CONNECTED": "dense"}


@dataclass
class TFLiteLayer:
    """One convolution of the file, dequantised to float32, in the file's layout."""

    name: str  # the weight tensor's name (TF-slim scope)
    kind: str  # conv | depthwise | dense
    weight: np.ndarray  # OHWI, [1, kh, kw, C] for depthwise, [out, 1, 1, in] for dense
    bias: np.ndarray
    stride: int
    padding: str  # SAME | VALID
    activation: str  # none | relu | relu6


@dataclass
class TFLiteClassifier:
    """The convolutions of a classifier file in execution order (the last one is the 1x1 classifier)."""

    path: str
    sha256: str
    layers: list[TFLiteLayer]
    input_size: int
    input_dtype: str  # float32 | uint8 | int8
    input_quantization: tuple[float, int] | None  # (scale, zero_point) of a quantised input
    weight_dtype: str  # float32 | uint8 | int8 (of the convolution weights)

    @property
    def quantized(self) -> bool:
        return self.weight_dtype != "float32"

    @property
    def num_classes(self) -> int:
        return int(self.layers[-1].weight.shape[0])


def read_classifier(path: str | Path) -> TFLiteClassifier:
    """Parse a ``.tflite`` classifier: every convolution's float weights/bias and options, the input's size,
    type and quantisation. Raises ModelError for a missing, truncated or non-TFLite file and for a quantised
    tensor without its scale / zero point."""
    path = require_file(path, "weights file", ModelError)
    data = path.read_bytes()
    model, graph, ops = _parse(path, data)

    def constant(index: int) -> np.ndarray:
        return _constant(path, data, model, graph.tensors[index])

    try:
        layers = [_conv_layer(op_name, op, graph, constant) for op_name, op in ops if op_name in CONV_OPS]
        first_weight = graph.tensors[next(op for name, op in ops if name in CONV_OPS).inputs[1]]
        source = graph.tensors[graph.inputs[0]]
    except ModelError:
        raise
    except StopIteration:
        raise ModelError(f"{path} holds no convolutions: not a MobileNet classifier") from None
    except Exception as error:
        raise ModelError(f"{path} is truncated or damaged: {type(error).__name__}: {error}") from None
    input_dtype, input_quant, size = _image_input(path, source)
    return TFLiteClassifier(str(path), sha256_file(path), layers, size, input_dtype, input_quant,
                            _TYPES.get(first_weight.type, str(first_weight.type)))


def _parse(path: Path, data: bytes):
    """(model, its first subgraph, [(op name, op)]) of a TFLite flatbuffer."""
    try:
        from ai_edge_litert import schema_py_generated as fb
    except ImportError:
        raise ModelError("reading .tflite files needs ai-edge-litert: pip install 'mobilekd[litert]'") from None
    if len(data) < 8 or not fb.Model.ModelBufferHasIdentifier(data, 0):
        raise ModelError(f"{path} is not a TFLite flatbuffer (no 'TFL3' identifier)")
    try:
        model = fb.ModelT.InitFromPackedBuf(data, 0)
        graph = model.subgraphs[0]
        codes = {value: key for key, value in vars(fb.BuiltinOperator).items() if not key.startswith("_")}
        ops = [(codes.get(max(model.operatorCodes[op.opcodeIndex].builtinCode,
                                  model.operatorCodes[op.opcodeIndex].deprecatedBuiltinCode), "?"), op)
               for op in graph.operators]
    except Exception as error:  # flatbuffers raises struct/index errors on a cut or damaged file
        raise ModelError(f"{path} is truncated or damaged: cannot parse its flatbuffer "
                         f"({type(error).__name__}: {error})") from None
    return model, graph, ops


def _constant(path: Path, data: bytes, model, tensor) -> np.ndarray:
    """A constant tensor as float32 (quantised values dequantised, per tensor or per channel)."""
    name = tensor.name.decode(errors="replace")
    dtype = _TYPES.get(tensor.type)
    buffer = model.buffers[tensor.buffer] if tensor.buffer < len(model.buffers) else None
    raw = buffer.data if buffer is not None else None
    if buffer is not None and raw is None and getattr(buffer, "offset", 0) > 1:  # data outside the flatbuffer
        raw = np.frombuffer(data, np.uint8, count=buffer.size, offset=buffer.offset)
    shape = [int(d) for d in tensor.shape]
    if dtype is None or raw is None or len(raw) != int(np.prod(shape)) * np.dtype(dtype).itemsize:
        raise ModelError(f"{path}: tensor {name!r} has no usable constant data "
                         f"(type {tensor.type}, shape {shape}): truncated or not a plain classifier")
    values = np.frombuffer(np.asarray(raw, np.uint8).tobytes(), dtype).reshape(shape)
    if dtype in ("float32", "float16"):
        return values.astype(np.float32)
    quant = tensor.quantization
    scale = None if quant is None or quant.scale is None else np.asarray(quant.scale, np.float64)
    zero = None if quant is None or quant.zeroPoint is None else np.asarray(quant.zeroPoint, np.float64)
    if scale is None or zero is None or len(scale) == 0:
        raise ModelError(f"{path}: {dtype} tensor {name!r} has no quantisation parameters (scale / zero point)")
    if len(scale) > 1:  # per-channel along quantizedDimension
        axis_shape = [1] * len(shape)
        axis_shape[quant.quantizedDimension] = len(scale)
        scale, zero = scale.reshape(axis_shape), zero.reshape(axis_shape)
    return (scale * (values.astype(np.float64) - zero)).astype(np.float32)


def _conv_layer(op_name: str, op, graph, constant) -> TFLiteLayer:
    """One convolution (or the final fully connected layer, as a 1x1 convolution) with its options."""
    options = op.builtinOptions
    weight_index = op.inputs[1]
    bias = constant(op.inputs[2]) if len(op.inputs) > 2 and op.inputs[2] >= 0 else None
    weight = constant(weight_index)
    dense = op_name == "FULLY_CONNECTED"
    if dense:
        weight = weight.reshape(weight.shape[0], 1, 1, -1)
    return TFLiteLayer(
        name=graph.tensors[weight_index].name.decode(errors="replace").split(";")[0],
        kind=CONV_OPS[op_name], weight=weight,
        bias=bias if bias is not None else np.zeros(weight.shape[3 if op_name == "DEPTHWISE_CONV_2D" else 0],
                                                    np.float32),
        stride=1 if dense else (int(options.strideH) if options.strideH == options.strideW else -1),
        padding="SAME" if dense else _PADDING.get(options.padding, str(options.padding)),
        activation=_activation(options.fusedActivationFunction, graph.tensors[op.outputs[0]]))


def _image_input(path: Path, source) -> tuple[str, tuple[float, int] | None, int]:
    """(dtype, (scale, zero point) of a quantised input or None, side) of the square RGB input tensor."""
    input_dtype = _TYPES.get(source.type, str(source.type))
    input_quant = None
    if input_dtype in ("uint8", "int8"):
        quant = source.quantization
        if quant is None or quant.scale is None or quant.zeroPoint is None:
            raise ModelError(f"{path}: the {input_dtype} input has no quantisation parameters (scale / zero point)")
        input_quant = (float(quant.scale[0]), int(quant.zeroPoint[0]))
    shape = [int(d) for d in source.shape]
    if len(shape) != 4 or shape[1] != shape[2] or shape[3] != 3:
        raise ModelError(f"{path}: input shape {shape} is not a square RGB image [1, H, W, 3]")
    return input_dtype, input_quant, shape[1]


def _activation(fused: int, output) -> str:
    """The op's activation. Older uint8 files fuse none and clamp through the output's quantisation instead: an
    output whose representable range is [0, 6] (zero point at the lowest code, scale 6/255) *is* ReLU6."""
    name = _ACTIVATIONS.get(fused, str(fused))
    quant = output.quantization
    if name != "none" or output.type not in (3, 9) or quant is None or quant.scale is None or quant.zeroPoint is None:
        return name
    low, high = (0, 255) if output.type == 3 else (-128, 127)
    scale, zero = float(quant.scale[0]), int(quant.zeroPoint[0])
    if zero == low and abs(scale * (high - zero) - 6.0) < 0.05:
        return "relu6"
    return name


def conv_bn_pairs(backbone: nn.Module) -> list[tuple[str, nn.Conv2d, nn.BatchNorm2d]]:
    """Each convolution of a timm MobileNet with the BatchNorm that follows it, in execution order (timm
    registers every conv right before its BN: stem, blocks' dw/pw/pwl, head)."""
    pairs, pending = [], None
    for name, module in backbone.named_modules():
        if isinstance(module, nn.Conv2d):
            pending = (name, module)
        elif isinstance(module, nn.BatchNorm2d) and pending is not None:
            pairs.append((*pending, module))
            pending = None
    return pairs


def _activation_of(bn: nn.Module) -> str:
    act = getattr(bn, "act", None)
    if act is None or isinstance(act, nn.Identity):
        return "none"
    return {nn.ReLU6: "relu6", nn.ReLU: "relu"}.get(type(act), type(act).__name__)


def _mismatch(classifier: TFLiteClassifier, arch: str, layer: TFLiteLayer | None, target: str, why: str) -> ModelError:
    where = f"layer {layer.name!r}" if layer is not None else "the file"
    return ModelError(f"{Path(classifier.path).name} does not fit {arch}: {where} -> {target}: {why}")


def load_into(classifier: TFLiteClassifier, backbone: nn.Module, arch: str) -> None:
    """Copy the file's weights into ``backbone`` (a timm TF-compatible MobileNet built with the file's number of
    classes): convolutions into the convs, folded biases into identity BatchNorms, the 1x1 classifier into the
    Linear. Every layer is checked first (kind, shape, stride, padding, activation); the first one that does
    not fit raises one ModelError naming it."""
    pairs = conv_bn_pairs(backbone)
    layers = classifier.layers
    head = getattr(backbone, "classifier", None)
    for position, (target_name, conv, bn) in enumerate(pairs):
        if position >= len(layers) - 1:
            raise _mismatch(classifier, arch, None, target_name,
                            f"the file has {len(layers) - 1} convolutions before its classifier, {arch} needs {len(pairs)}")
        layer = layers[position]
        depthwise = conv.groups > 1 and conv.groups == conv.in_channels == conv.out_channels
        kind = "depthwise" if depthwise else "conv"
        kh, kw = conv.kernel_size
        expected = (1, kh, kw, conv.out_channels) if depthwise else (conv.out_channels, kh, kw, conv.in_channels)
        problems = []
        if layer.kind != kind:
            problems.append(f"a {layer.kind} layer where {arch} has a {kind} convolution")
        elif tuple(layer.weight.shape) != expected:
            problems.append(f"weight shape {list(layer.weight.shape)}, expected {list(expected)}")
        if layer.stride != conv.stride[0]:
            problems.append(f"stride {layer.stride}, expected {conv.stride[0]}")
        if layer.padding != "SAME" and max(kh, kw) > 1:
            problems.append(f"{layer.padding} padding, the TF-compatible network pads SAME")
        if layer.activation != _activation_of(bn):
            problems.append(f"fused activation {layer.activation}, expected {_activation_of(bn)}")
        if problems:
            raise _mismatch(classifier, arch, layer, target_name, "; ".join(problems))
    if len(layers) != len(pairs) + 1:
        extra = layers[len(pairs)]
        raise _mismatch(classifier, arch, extra, "classifier",
                        f"the file has {len(layers) - 1} convolutions before its classifier, {arch} has {len(pairs)}")
    last = layers[-1]
    if head is None or not isinstance(head, nn.Linear):
        raise _mismatch(classifier, arch, last, "classifier", "the network was built without a classifier")
    if last.kind == "depthwise" or tuple(last.weight.shape[1:3]) != (1, 1) or last.weight.shape[3] != head.in_features:
        raise _mismatch(classifier, arch, last, "classifier",
                        f"weight shape {list(last.weight.shape)}, expected [{head.out_features}, 1, 1, {head.in_features}]")
    if last.weight.shape[0] != head.out_features:
        raise _mismatch(classifier, arch, last, "classifier",
                        f"{last.weight.shape[0]} classes, the network was built for {head.out_features}")
    with torch.no_grad():
        for layer, (_, conv, bn) in zip(layers, pairs):
            weight = layer.weight.transpose(3, 0, 1, 2) if layer.kind == "depthwise" else layer.weight.transpose(0, 3, 1, 2)
            conv.weight.copy_(torch.from_numpy(np.ascontiguousarray(weight)))
            set_identity_bn(bn, torch.from_numpy(layer.bias))
        head.weight.copy_(torch.from_numpy(np.ascontiguousarray(last.weight[:, 0, 0, :])))
        head.bias.copy_(torch.from_numpy(last.bias))


def set_identity_bn(bn: nn.BatchNorm2d, bias: torch.Tensor) -> None:
    """Folded BatchNorm: ``BN(x) = (x - 0) / sqrt((1 - eps) + eps) * 1 + bias = x + bias`` exactly."""
    bn.running_mean.zero_()
    bn.running_var.fill_(1.0 - bn.eps)
    bn.weight.fill_(1.0)
    bn.bias.copy_(bias)
