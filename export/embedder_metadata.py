"""TFLite model metadata for MediaPipe's Image Embedder (and other metadata readers), written with MediaPipe's
own ``MetadataWriter`` (``mediapipe.tasks.python.metadata.metadata_writers.metadata_writer``; the optional
``mediapipe`` package, ``pip install 'mobilekd[litert]'``).

MediaPipe Tasks' Image Embedder (``tasks/cc/vision/utils/image_tensor_specs.cc``) needs a 4-D NHWC batch-1
RGB input of dtype uint8 or float32, and for float32 a ``NormalizationOptions`` process unit saying how pixels
were normalised: ``x = (pixel - mean) / std`` with ``pixel`` in 0..255 -- the same units as the checkpoint's
``mobilekd.preprocess.Preprocess``, so its mean/std are written as they are.

What MediaPipe does with an image (``image_preprocessing_graph.cc``, ``image_to_tensor_converter_opencv.cc``,
CPU): the whole image (no region of interest given) is stretched to the model's input size, aspect ratio
not kept, with ``cv::warpPerspective(INTER_LINEAR, BORDER_REPLICATE)`` -- plain bilinear, no antialiasing,
corner-aligned -- then scaled to ``[(0 - mean) / std, (255 - mean) / std]`` with ONE scalar mean/std.
**Per-channel normalisation is refused** ("Per-channel image normalization is not available.",
kUnimplemented). So ``export.tflite`` folds a per-channel student's mean/std (ImageNet's, every mobilekd
student's default) into the graph of float NHWC files: the file takes ``(pixel - 127.5) / 127.5`` and its
metadata says so (model.json's ``preprocess`` too). With ``--keep-normalization`` the file keeps the
per-channel mean/std and gets exact per-channel metadata, which the TFLite metadata schema and other readers
support but MediaPipe's Image Embedder refuses; model.json says so (``build.mediapipe_metadata.image_embedder``).

Only files whose input is float32 NHWC get metadata: int8 I/O files (``--quantize int8``) are not accepted by
MediaPipe at all, and an NCHW input cannot be described as an image to it.
"""

from __future__ import annotations

import importlib.util
import json
import os
from pathlib import Path

from mobilekd.errors import MobileKDError
from mobilekd.runtime.normalization import is_per_channel

INSTALL_HINT = "pip install 'mobilekd[litert]'  (adds mediapipe)"
INPUT_NAME = "image"
OUTPUT_NAME = "embedding"
PER_CHANNEL_REASON = ("MediaPipe's image preprocessing supports one mean/std for all channels only "
                      "(\"Per-channel image normalization is not available.\"); this model normalises per "
                      "channel, so MediaPipe's ImageEmbedder refuses it. The metadata is still the exact "
                      "per-channel NormalizationOptions for other metadata readers")


_VERSION_MODULE = "mediapipe.tasks.cc.metadata.python"


def minimum_parser_version(metadata_buffer: bytes) -> str:
    """Python port of MediaPipe's ``GetMinimumMetadataParserVersion`` (``tasks/cc/metadata/metadata_version.cc``):
    the oldest metadata parser that understands every field used in a ``ModelMetadata`` flatbuffer."""
    from mediapipe.tasks.metadata import metadata_schema_py_generated as fb

    root = fb.ModelMetadata.GetRootAsModelMetadata(bytearray(metadata_buffer), 0)
    metadata = fb.ModelMetadataT.InitFromObj(root)
    found = [(1, 0, 0)]

    def files(items):
        for item in items or []:
            if item.type == fb.AssociatedFileType.VOCABULARY:
                found.append((1, 0, 1))
            if item.type == fb.AssociatedFileType.SCANN_INDEX_FILE:
                found.append((1, 4, 0))
            if item.version is not None:
                found.append((1, 4, 1))

    def units(items):
        tokenizers = {fb.ProcessUnitOptions.BertTokenizerOptions: (1, 1, 0),
                      fb.ProcessUnitOptions.SentencePieceTokenizerOptions: (1, 1, 0),
                      fb.ProcessUnitOptions.RegexTokenizerOptions: (1, 2, 1)}
        found.extend(tokenizers[u.optionsType] for u in items or [] if u.optionsType in tokenizers)

    for subgraph in metadata.subgraphMetadata or []:
        for tensor in (subgraph.inputTensorMetadata or []) + (subgraph.outputTensorMetadata or []):
            files(tensor.associatedFiles)
            units(tensor.processUnits)
            if tensor.content is not None and \
                    tensor.content.contentPropertiesType == fb.ContentProperties.AudioProperties:
                found.append((1, 3, 0))
        files(subgraph.associatedFiles)
        for process_units in (subgraph.inputProcessUnits, subgraph.outputProcessUnits):
            if process_units is not None:
                found.append((1, 1, 0))
                units(process_units)
        if subgraph.inputTensorGroups is not None or subgraph.outputTensorGroups is not None:
            found.append((1, 2, 0))
        if subgraph.customMetadata is not None:
            found.append((1, 5, 0))
    files(metadata.associatedFiles)
    return ".".join(str(v) for v in max(found))


def _install_version_stand_in() -> None:
    """mediapipe 1.2.3's wheel ships ``mediapipe/tasks/python/metadata/metadata.py`` (MetadataWriter's populator)
    but not the native ``mediapipe.tasks.cc.metadata.python._pywrap_metadata_version`` it imports, so the
    module cannot be imported at all. Provide that one function (``minimum_parser_version``) under its name;
    a wheel that has the native module keeps using it."""
    import importlib.util
    import sys
    import types

    if f"{_VERSION_MODULE}._pywrap_metadata_version" in sys.modules:
        return
    try:
        if importlib.util.find_spec(f"{_VERSION_MODULE}._pywrap_metadata_version") is not None:
            return
    except ImportError:  # a parent package is missing: the 1.2.3 layout
        pass
    stand_in = types.ModuleType("_pywrap_metadata_version")
    stand_in.GetMinimumMetadataParserVersion = minimum_parser_version
    package = types.ModuleType(_VERSION_MODULE)
    package.__path__ = []
    package._pywrap_metadata_version = stand_in
    sys.modules[_VERSION_MODULE] = package
    sys.modules[f"{_VERSION_MODULE}._pywrap_metadata_version"] = stand_in


def _writer_module():
    """MediaPipe's metadata_writer module, or ``None`` when mediapipe is not installed."""
    if importlib.util.find_spec("mediapipe") is None:
        return None
    _install_version_stand_in()
    from mediapipe.tasks.python.metadata.metadata_writers import metadata_writer

    return metadata_writer


def mediapipe_version() -> str | None:
    import importlib.metadata

    try:
        return importlib.metadata.version("mediapipe")
    except importlib.metadata.PackageNotFoundError:
        return None


def inline_buffers(model: bytes) -> bytes:
    """``model`` with every weight buffer stored inside the flatbuffer.

    ai-edge-quantizer writes some files (fp16 weight casting) with their buffers appended *after* the
    flatbuffer, each ``Buffer`` holding an ``offset``/``size`` into the file instead of ``data``. MediaPipe's
    MetadataWriter re-serialises the flatbuffer alone, so the appended bytes would be lost ("Constant buffer
    N specified an out of range offset" when loading). Files without offset buffers are returned unchanged."""
    from mediapipe.tasks.metadata import schema_py_generated as schema_fb

    root = schema_fb.Model.GetRootAsModel(bytearray(model), 0)
    if not any(root.Buffers(i).Offset() > 1 for i in range(root.BuffersLength())):
        return model
    import flatbuffers
    import numpy as np

    unpacked = schema_fb.ModelT.InitFromObj(root)
    for buffer in unpacked.buffers or []:
        if buffer.offset and buffer.offset > 1:
            if buffer.offset + buffer.size > len(model):
                raise MobileKDError(f"TFLite buffer at offset {buffer.offset} (+{buffer.size} bytes) lies "
                                    f"outside the {len(model)}-byte file")
            buffer.data = np.frombuffer(model, np.uint8, buffer.size, buffer.offset).copy()
            buffer.offset, buffer.size = 0, 0
    builder = flatbuffers.Builder(len(model) + 1024)
    builder.Finish(unpacked.Pack(builder), file_identifier=b"TFL3")
    return bytes(builder.Output())


def add_embedder_metadata(model: bytes, size: int, mean, std, name: str, description: str = "",
                          embedding_name: str = OUTPUT_NAME) -> bytes:
    """``model`` (a .tflite file's bytes) with MediaPipe image-embedder metadata: general info, an RGB image
    input with ``NormalizationOptions(mean, std)`` (0..255 pixel units) and a feature output ``embedding_name``.

    Raises ``MobileKDError`` if mediapipe is not installed or the model's input is not a float32 [1, size,
    size, 3] tensor."""
    writer_module = _writer_module()
    if writer_module is None:
        raise MobileKDError(f"MediaPipe metadata needs the mediapipe package: {INSTALL_HINT}")
    from mediapipe.tasks.metadata import schema_py_generated as schema_fb
    from mediapipe.tasks.python.metadata.metadata_writers import writer_utils

    buffer = bytearray(inline_buffers(model))
    subgraph = writer_utils.get_subgraph(buffer)
    if subgraph.InputsLength() != 1 or subgraph.OutputsLength() != 1:
        raise MobileKDError(f"MediaPipe metadata needs 1 input and 1 output, the model has "
                            f"{subgraph.InputsLength()}/{subgraph.OutputsLength()}")
    tensor = subgraph.Tensors(subgraph.Inputs(0))
    shape = [int(d) for d in tensor.ShapeAsNumpy()]
    if shape != [1, size, size, 3]:
        raise MobileKDError(f"MediaPipe metadata needs an NHWC [1, {size}, {size}, 3] input, the model's is {shape}")
    if tensor.Type() != schema_fb.TensorType.FLOAT32:
        raise MobileKDError("MediaPipe metadata with NormalizationOptions needs a float32 input tensor")
    mean, std = [float(v) for v in mean], [float(v) for v in std]
    if len(mean) != 3 or len(std) != 3 or min(std) <= 0:
        raise MobileKDError(f"mean/std must be 3 values each with std > 0, got {mean} / {std}")
    writer = writer_module.MetadataWriter.create(buffer)
    writer.add_general_info(name, description or None)
    writer.add_image_input(norm_mean=mean, norm_std=std, color_space_type=writer.color_space_types.RGB,
                           name=INPUT_NAME, description=f"RGB image, {size}x{size}, (pixel - mean) / std")
    writer.add_feature_output(name=embedding_name, description="image embedding")
    content, _ = writer.populate()
    return bytes(content)


def read_embedder_metadata(model: bytes) -> dict | None:
    """What a model file's metadata says: {name, description, input: {name, mean, std, color_space},
    output: {name}}, or ``None`` when it has none. Needs mediapipe."""
    if _writer_module() is None:
        raise MobileKDError(f"reading MediaPipe metadata needs the mediapipe package: {INSTALL_HINT}")
    from mediapipe.tasks.python.metadata import metadata

    try:
        displayer = metadata.MetadataDisplayer.with_model_buffer(bytearray(model))
    except ValueError:  # "The model does not have metadata."
        return None
    data = json.loads(displayer.get_metadata_json())
    subgraph = data["subgraph_metadata"][0]
    tensor_in, tensor_out = subgraph["input_tensor_metadata"][0], subgraph["output_tensor_metadata"][0]
    norm = next((u["options"] for u in tensor_in.get("process_units", [])
                 if u.get("options_type") == "NormalizationOptions"), {})
    return {"name": data.get("name"), "description": data.get("description"),
            "input": {"name": tensor_in.get("name"), "mean": norm.get("mean"), "std": norm.get("std"),
                      "color_space": tensor_in.get("content", {}).get("content_properties", {})
                      .get("color_space")},
            "output": {"name": tensor_out.get("name")}}


def embed_tflite_metadata(path: Path, job, input_detail: dict, notes: list[str], preprocess=None) -> dict:
    """The export hook (``export.tflite.convert``): rewrite ``path`` with metadata when its input is float32
    NHWC, and return what model.json records under ``build.mediapipe_metadata``. Appends to ``notes`` why
    metadata was not written, or why MediaPipe's ImageEmbedder will refuse the file. ``preprocess``: the file's
    input normalisation (default: the model's)."""
    import numpy as np

    dtype = np.dtype(input_detail["dtype"]).name
    if dtype != "float32":
        reason = (f"input is {dtype}: MediaPipe's NormalizationOptions metadata describes float32 inputs and its "
                  "ImageEmbedder accepts only float32/uint8 input tensors")
    elif job.layout != "NHWC":
        reason = "input layout is NCHW: MediaPipe's ImageEmbedder needs an NHWC [1, H, W, 3] image tensor"
    else:
        reason = None
    if reason is not None:
        notes.append(f"no MediaPipe metadata: {reason}")
        return {"embedded": False, "reason": reason}
    version = mediapipe_version()
    if _writer_module() is None:
        reason = f"mediapipe is not installed: {INSTALL_HINT}"
        notes.append(f"no MediaPipe metadata: {reason}")
        print(f"note: MediaPipe metadata not written ({reason})", flush=True)
        return {"embedded": False, "reason": reason}
    pre = preprocess or job.model.preprocess
    spec = job.model.spec
    path = Path(path)
    content = add_embedder_metadata(
        path.read_bytes(), pre.size, pre.mean, pre.std, f"mobilekd {spec.arch} {job.model.embed_dim}-d",
        f"mobilekd image embedding student ({spec.arch}, {job.model.embed_dim}-d, "
        f"{'L2-normalised' if spec.normalize else 'not L2-normalised'}) from {job.checkpoint.name}")
    tmp = path.with_name(path.name + ".metadata")
    tmp.write_bytes(content)
    os.replace(tmp, path)  # a new file: an interpreter may still map the old one
    record = {"embedded": True, "writer": f"mediapipe {version} MetadataWriter", "input_name": INPUT_NAME,
              "output_name": OUTPUT_NAME, "norm_mean": [float(v) for v in pre.mean],
              "norm_std": [float(v) for v in pre.std], "image_embedder": not is_per_channel(pre.mean, pre.std)}
    if not record["image_embedder"]:
        record["image_embedder_reason"] = PER_CHANNEL_REASON
        notes.append(f"MediaPipe metadata embedded, but {PER_CHANNEL_REASON}")
        print("note: MediaPipe metadata embedded, but MediaPipe's ImageEmbedder refuses per-channel mean/std "
              f"{list(pre.mean)} / {list(pre.std)} (see build.mediapipe_metadata in model.json)", flush=True)
    return record


# ------------------------------------------------------------------------------------------ interoperability


def model_pixels(image, preprocess) -> "np.ndarray":
    """An RGB PIL image as the uint8 [size, size, 3] pixels the model sees: its evaluation view, resized
    (``mobilekd.data.views.render_evaluation`` before normalisation)."""
    import numpy as np

    from mobilekd.data.views import evaluation_view, resize_view

    return np.asarray(resize_view(image, evaluation_view(*image.size, preprocess), preprocess), dtype=np.uint8)


def mediapipe_embeddings(model_path: Path, images, l2_normalize: bool = False, roi=None) -> "np.ndarray":
    """Embed uint8 RGB HWC arrays with MediaPipe Tasks' ``ImageEmbedder`` (CPU, ``quantize=False``): [N, D].
    ``roi`` (left, top, right, bottom in 0..1, per image or one for all) becomes its region of interest."""
    import numpy as np
    import mediapipe as mp
    from mediapipe.tasks.python.components.containers.rect import RectF
    from mediapipe.tasks.python.core.base_options import BaseOptions
    from mediapipe.tasks.python.vision.core.image_processing_options import ImageProcessingOptions
    from mediapipe.tasks.python.vision.image_embedder import ImageEmbedder, ImageEmbedderOptions

    options = ImageEmbedderOptions(base_options=BaseOptions(model_asset_path=str(model_path)),
                                   l2_normalize=l2_normalize, quantize=False)
    out = []
    with ImageEmbedder.create_from_options(options) as embedder:
        for i, pixels in enumerate(images):
            box = roi[i] if roi is not None and not isinstance(roi[0], (int, float)) else roi
            processing = ImageProcessingOptions(RectF(left=box[0], top=box[1], right=box[2], bottom=box[3])) \
                if box is not None else None
            image = mp.Image(image_format=mp.ImageFormat.SRGB, data=np.ascontiguousarray(pixels, dtype=np.uint8))
            result = embedder.embed(image, processing)
            out.append(np.asarray(result.embeddings[0].embedding, dtype=np.float32).reshape(-1))
    return np.stack(out)


def compare_with_mediapipe(export_dir: Path, images, threads: int = 1) -> dict:
    """Run an exported .tflite through MediaPipe's ImageEmbedder and through our LiteRT interpreter path
    (``mobilekd.runtime.runners``, model.json's preprocessing) on the same pixels.

    ``images``: RGB PIL images. ``same_pixels``: both get ``model_pixels(image)`` (already at the input size,
    so MediaPipe's resize is the identity). ``mediapipe_resize``: MediaPipe gets the original image with the
    central square as region of interest and resizes it itself (OpenCV bilinear, no antialiasing), our path
    Pillow's antialiased bilinear resize -- what an app that hands MediaPipe camera frames gets."""
    import numpy as np

    from mobilekd.data.views import evaluation_view, normalize
    from mobilekd.runtime.contract import ModelContract
    from mobilekd.runtime.runners import open_runtime

    export_dir = Path(export_dir)
    contract = ModelContract.from_dict(json.loads((export_dir / "model.json").read_text()))
    path = export_dir / contract.model_file
    pre = contract.preprocess
    pixels = [model_pixels(image, pre) for image in images]
    ours = open_runtime(path, contract, threads)(
        np.stack([normalize(p.astype(np.float32), pre).numpy() for p in pixels]))
    l2 = not contract.output.l2_normalized

    def compare(theirs):  # ours is unit-norm (model.json's l2_normalized, or dequantize_output)
        theirs = theirs / np.maximum(np.linalg.norm(theirs, axis=1, keepdims=True), 1e-12)
        cos = np.sum(theirs * ours, axis=1)
        return {"mean_cos": float(cos.mean()), "min_cos": float(cos.min()),
                "max_abs_diff": float(np.abs(theirs - ours).max())}

    same = mediapipe_embeddings(path, pixels, l2)
    native = mediapipe_embeddings(path, [np.asarray(image) for image in images], l2,
                                  [evaluation_view(*image.size, pre).box for image in images])
    return {"images": len(images), "size": pre.size, "same_pixels": compare(same),
            "mediapipe_resize": compare(native)}


def main(argv: list[str] | None = None) -> int:
    """``python -m export.embedder_metadata EXPORT_DIR --data DATA [--images 50]``: MediaPipe vs LiteRT."""
    import argparse

    from export.parity import choose_images
    from mobilekd.data.image_sets import load_image_set

    parser = argparse.ArgumentParser(prog="python -m export.embedder_metadata", description=main.__doc__)
    parser.add_argument("export_dir", help="a tflite export folder (model.tflite + model.json)")
    parser.add_argument("--data", required=True, help="images to embed")
    parser.add_argument("--split", default="test", choices=("train", "test", "all"))
    parser.add_argument("--images", type=int, default=50)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)
    subset = choose_images(load_image_set(args.data, args.split), args.images, args.seed, whole_classes=False)
    report = compare_with_mediapipe(Path(args.export_dir), [subset.load_image(i) for i in range(len(subset))],
                                    args.threads)
    print(json.dumps(report, indent=1))
    return 0


if __name__ == "__main__":
    from mobilekd.errors import cli_entry

    raise SystemExit(cli_entry(main)())
