"""TFLite exports carry MediaPipe image-embedder metadata, and MediaPipe's own ImageEmbedder runs them.

Two random-weight MobileNetV1-0.25 students (32 px, 32-d): one normalised with a single mean/std (127/128,
what MediaPipe's image preprocessing supports), one with ImageNet's per-channel mean/std (every mobilekd
student's default, which MediaPipe refuses: the session's ``noise_student``, whose default fp32 and int8 files
test_export.py checks too -- ``exported`` makes each once). Data: 6 classes x 4 coloured-noise PNGs of 48x40
(central crop 40x40, resized to 32). Every export runs in-process through the real converters; the MediaPipe tests run
``mediapipe.tasks.python.vision.ImageEmbedder`` on the exported files and compare with the LiteRT
interpreter path that export parity uses.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import NOISE_DIM, NOISE_SIZE, TFLITE_INT8, TFLITE_INT8_INTEGER_IO
from mobilekd.models import create_model, save_model
from mobilekd.preprocess import IMAGENET_MEAN, IMAGENET_STD, TF_LITE_MEAN, TF_LITE_STD, Preprocess

pytest.importorskip("ai_edge_litert", reason="LiteRT is not installed: pip install 'mobilekd[litert]'")
pytest.importorskip("litert_torch", reason="litert-torch is not installed: pip install 'mobilekd[litert]'")
pytest.importorskip("mediapipe", reason="mediapipe is not installed: pip install 'mobilekd[litert]' (MediaPipe "
                                        "metadata and ImageEmbedder interoperability are not tested)")

SIZE, DIM = NOISE_SIZE, NOISE_DIM
# These tests are about MediaPipe metadata and interop, not fidelity: the random-weight students' embeddings
# crowd together (mean cosine ~0.9999 between images), which the retrieval gates rightly refuse for int8.
LOOSE_GATES = ("--max-r1-drop", 100, "--max-noise-ratio", 1, "--min-topk-overlap", 0)


@pytest.fixture(scope="module")
def workspace(tmp_path_factory, noise_student):
    root = tmp_path_factory.mktemp("export-mediapipe")
    data = noise_student["data"]
    imagenet = noise_student["ckpt"]
    assert json.loads((imagenet / "model.json").read_text())["spec"]["preprocess"]["mean"] == list(IMAGENET_MEAN)
    torch.manual_seed(0)  # the same weights as the ImageNet-normalised student
    model = create_model("mobilenetv1_025", embed_dim=DIM, size=SIZE)
    model.spec.preprocess = Preprocess(SIZE, TF_LITE_MEAN, TF_LITE_STD)
    scalar = save_model(model, root / "student-scalar", {"config": {"data": str(data), "train_fraction": 0.5}})
    return {"root": root, "data": data, "scalar": scalar, "imagenet": imagenet}


def export(workspace, student: str, out: str, *argv) -> Path:
    from export.tflite import main

    folder = workspace["root"] / out
    assert main([str(workspace[student]), "--out", str(folder), *map(str, argv)]) == 0
    return folder


def manifest(folder: Path) -> dict:
    return json.loads((folder / "model.json").read_text())


def images(workspace) -> list:
    from mobilekd.data.image_sets import load_image_set

    subset = load_image_set(str(workspace["data"]), "all")
    return [subset.load_image(i) for i in range(len(subset))]


def metadata_of(folder: Path) -> dict | None:
    from export.embedder_metadata import read_embedder_metadata

    return read_embedder_metadata((folder / "model.tflite").read_bytes())


# ------------------------------------------------------------------------------------------ metadata


@pytest.mark.slow  # default-run budget: metadata parsing/refusals stay in test_metadata_parser_version_and_refusals
def test_metadata_holds_the_checkpoints_mean_std(workspace, capsys):
    from mobilekd.io import sha256_file

    folder = export(workspace, "imagenet", "imagenet-fp32-kept", "--keep-normalization")
    info = manifest(folder)
    meta = metadata_of(folder)
    # per-channel values, straight from the checkpoint's Preprocess (0..255 units), in RGB order
    assert meta["input"]["mean"] == pytest.approx(list(IMAGENET_MEAN)) == info["preprocess"]["mean"]
    assert meta["input"]["std"] == pytest.approx(list(IMAGENET_STD)) == info["preprocess"]["std"]
    assert meta["input"]["color_space"] == "RGB" and meta["output"]["name"] == "embedding"
    record = info["build"]["mediapipe_metadata"]
    assert record["embedded"] is True and record["norm_mean"] == list(IMAGENET_MEAN)
    # the contract's sha256 is of the final file, metadata included, and parity ran on that file
    assert info["model_sha256"] == sha256_file(folder / "model.tflite") and info["parity"]["passed"]
    # MediaPipe cannot use per-channel normalisation: model.json says so ...
    assert record["image_embedder"] is False and "Per-channel" in record["image_embedder_reason"]
    assert "refuses per-channel" in capsys.readouterr().out
    # ... and MediaPipe indeed refuses the file
    from export.embedder_metadata import mediapipe_embeddings

    with pytest.raises(Exception, match="Per-channel image normalization is not available"):
        mediapipe_embeddings(folder / "model.tflite", [np.zeros((SIZE, SIZE, 3), np.uint8)])


def test_per_channel_student_is_folded_and_runs_in_mediapipe(workspace, exported):
    """Default export of an ImageNet-normalised student: mean/std folded into the graph, the file takes
    (pixel - 127.5) / 127.5, MediaPipe's ImageEmbedder loads it and matches the float PyTorch student."""
    from export.check import main as check

    folder = exported("tflite")  # the ImageNet-normalised student's default export
    info = manifest(folder)
    assert info["preprocess"]["mean"] == [127.5] * 3 and info["preprocess"]["std"] == [127.5] * 3
    assert "folded" in info["build"]["exporter"] and info["parity"]["passed"]
    assert info["parity"]["vs_float"]["mean_cos"] > 0.9999
    record = info["build"]["mediapipe_metadata"]
    assert record["image_embedder"] is True and record["norm_mean"] == [127.5] * 3
    assert metadata_of(folder)["input"]["mean"] == pytest.approx([127.5] * 3)

    assert mediapipe_cosines_to_student(workspace, "imagenet", folder).min() > 0.9999
    # export.check compares the file with its checkpoint through the same renormalisation
    assert check([str(folder), "--against", str(workspace["imagenet"])]) == 0


def mediapipe_cosines_to_student(workspace, student: str, folder: Path) -> np.ndarray:
    """Per-image cosine between MediaPipe's ImageEmbedder on ``folder``'s .tflite and the float PyTorch
    ``student``, both given the same model-sized pixels."""
    from export.embedder_metadata import mediapipe_embeddings, model_pixels
    from mobilekd.data.views import normalize
    from mobilekd.models import load_model

    model = load_model(workspace[student]).eval()
    pixels = [model_pixels(image, model.preprocess) for image in images(workspace)]
    with torch.no_grad():
        reference = model(torch.stack([normalize(p.astype(np.float32), model.preprocess) for p in pixels])).numpy()
    theirs = mediapipe_embeddings(folder / "model.tflite", pixels)
    return np.sum(theirs / np.linalg.norm(theirs, axis=1, keepdims=True) * reference, axis=1)


def quantize_op_scale(path: Path) -> tuple[list[str], float]:
    """The op names up to the first QUANTIZE, and that QUANTIZE's output scale."""
    from ai_edge_litert.interpreter import Interpreter

    from export.tflite import graph_ops

    ops = graph_ops(path)
    names = [op for op, _ in ops]
    if "QUANTIZE" not in names:
        raise AssertionError(f"no QUANTIZE op in {path}")
    first = names.index("QUANTIZE")
    scales = {t["name"]: t["quantization"][0] for t in Interpreter(model_path=str(path)).get_tensor_details()}
    return names[:first + 1], float(scales[ops[first][1]])


@pytest.mark.slow  # default-run budget: TFLite int8 stays in test_export (test_int8_calibration_uses_global_min_max)
def test_int8_of_a_per_channel_student_folds_in_float_and_runs_in_mediapipe(workspace, exported):
    """int8 with float I/O: the folded normalisation stays float before the QUANTIZE op, calibrated on the
    file's own (scalar) input, so the int8 graph quantizes the same tensor as the unfolded --keep-normalization
    file; MediaPipe's ImageEmbedder loads it and matches the float student."""
    folded = exported("tflite", *TFLITE_INT8)
    kept = export(workspace, "imagenet", "imagenet-int8-kept", *TFLITE_INT8, "--keep-normalization")
    ops, scale = quantize_op_scale(folded / "model.tflite")
    kept_ops, kept_scale = quantize_op_scale(kept / "model.tflite")
    assert ops == ["MUL", "ADD", "QUANTIZE"] and kept_ops == ["QUANTIZE"]
    assert scale == pytest.approx(kept_scale, rel=1e-4)
    info = manifest(folded)
    assert info["preprocess"]["mean"] == [127.5] * 3 and info["build"]["mediapipe_metadata"]["image_embedder"]

    cos = mediapipe_cosines_to_student(workspace, "imagenet", folded)
    assert cos.mean() > 0.99 and cos.mean() == pytest.approx(info["parity"]["vs_float"]["mean_cos"], abs=2e-3)


def test_metadata_parser_version_and_refusals(tmp_path):
    import flatbuffers
    import litert_torch
    from mediapipe.tasks.metadata import metadata_schema_py_generated as fb

    from export.embedder_metadata import add_embedder_metadata, minimum_parser_version
    from mobilekd.errors import MobileKDError

    def version(**subgraph_fields) -> str:
        subgraph = fb.SubGraphMetadataT()
        for key, value in subgraph_fields.items():
            setattr(subgraph, key, value)
        model = fb.ModelMetadataT()
        model.subgraphMetadata = [subgraph]
        builder = flatbuffers.Builder(0)
        builder.Finish(model.Pack(builder), b"M001")
        return minimum_parser_version(bytes(builder.Output()))

    # the rules of MediaPipe's metadata_version.cc, which the 1.2.3 wheel does not ship
    assert version() == "1.0.0"
    assert version(inputProcessUnits=[fb.ProcessUnitT()]) == "1.1.0"
    assert version(outputTensorGroups=[fb.TensorGroupT()]) == "1.2.0"
    assert version(customMetadata=[fb.CustomMetadataT()]) == "1.5.0"

    net = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.Flatten())
    litert_torch.convert(litert_torch.to_channel_last_io(net, args=[0]).eval(),
                         (torch.randn(1, SIZE, SIZE, 3),)).export(str(tmp_path / "tiny.tflite"))
    tiny = (tmp_path / "tiny.tflite").read_bytes()
    with pytest.raises(MobileKDError, match="needs an NHWC"):
        add_embedder_metadata(tiny, SIZE + 1, [0] * 3, [1] * 3, "x")
    with pytest.raises(MobileKDError, match="std > 0"):
        add_embedder_metadata(tiny, SIZE, [0] * 3, [1, 0, 1], "x")
    from export.embedder_metadata import read_embedder_metadata

    assert read_embedder_metadata(tiny) is None
    written = read_embedder_metadata(add_embedder_metadata(tiny, SIZE, [1, 2, 3], [4, 5, 6], "x"))
    assert written["input"]["mean"] == [1, 2, 3] and written["input"]["std"] == [4, 5, 6]


@pytest.mark.slow  # default-run budget (issue 14): covered in make test-slow
def test_integer_io_and_nchw_get_no_metadata(workspace, exported):
    int8 = exported("tflite", *TFLITE_INT8_INTEGER_IO)  # test_export.py's int8 I/O file
    record = manifest(int8)["build"]["mediapipe_metadata"]
    assert record["embedded"] is False and "int8" in record["reason"] and metadata_of(int8) is None
    nchw = export(workspace, "scalar", "scalar-nchw", "--layout", "NCHW")
    record = manifest(nchw)["build"]["mediapipe_metadata"]
    assert record["embedded"] is False and "NCHW" in record["reason"] and metadata_of(nchw) is None


@pytest.mark.slow  # default-run budget (issue 14): covered in make test-slow
def test_export_without_mediapipe_says_what_to_install(workspace, monkeypatch, capsys):
    with monkeypatch.context() as patch:
        patch.setitem(sys.modules, "mediapipe", None)  # import mediapipe -> ImportError, find_spec -> None
        folder = export(workspace, "scalar", "scalar-no-mediapipe")
    info = manifest(folder)
    record = info["build"]["mediapipe_metadata"]
    assert record == {"embedded": False, "reason": record["reason"]}
    assert "mediapipe is not installed" in record["reason"] and "mobilekd[litert]" in record["reason"]
    assert any("no MediaPipe metadata" in note for note in info["build"]["notes"])
    assert "MediaPipe metadata not written" in capsys.readouterr().out
    assert metadata_of(folder) is None and info["parity"]["passed"]
    # and without metadata MediaPipe cannot run the file: the metadata is what makes it work
    from export.embedder_metadata import mediapipe_embeddings

    with pytest.raises(Exception, match="(?i)normalization"):
        mediapipe_embeddings(folder / "model.tflite", [np.zeros((SIZE, SIZE, 3), np.uint8)])


# ------------------------------------------------------------------------------------------ ImageEmbedder


SCALAR_INT8 = ("--quantize", "int8", "--calib-images", 8, *LOOSE_GATES)


# int8 of the folded ImageNet student (the file test_export.py checks) in the default run; fp32 of the scalar
# student (its own 127/128 in the metadata: one more TFLite conversion, moved out for the default-run budget),
# the weight-only fp16/dynamic files and the scalar student's int8, which MediaPipe reads through the same
# float32 input and metadata, with `pytest -m slow`
@pytest.mark.parametrize("student, options", [
    pytest.param("scalar", ("--quantize", "none"), marks=pytest.mark.slow, id="scalar-none"),
    pytest.param("imagenet", TFLITE_INT8, id="imagenet-int8"),
    pytest.param("scalar", ("--quantize", "fp16"), marks=pytest.mark.slow, id="scalar-fp16"),
    pytest.param("scalar", ("--quantize", "dynamic"), marks=pytest.mark.slow, id="scalar-dynamic"),
    pytest.param("scalar", SCALAR_INT8, marks=pytest.mark.slow, id="scalar-int8"),
])
def test_mediapipe_image_embedder_matches_litert(workspace, exported, student, options):
    from export.embedder_metadata import compare_with_mediapipe

    if student == "imagenet":
        folder = exported("tflite", *options)
    else:
        folder = export(workspace, student, f"{student}-{options[1]}", *options)
    info = manifest(folder)
    assert info["build"]["mediapipe_metadata"]["image_embedder"] is True
    meta = metadata_of(folder)
    mean, std = ([127.0] * 3, [128.0] * 3) if student == "scalar" else ([127.5] * 3, [127.5] * 3)
    assert meta["input"]["mean"] == pytest.approx(mean) and meta["input"]["std"] == pytest.approx(std)

    report = compare_with_mediapipe(folder, images(workspace))
    assert report["images"] == 24
    # same pixels (already at the input size, so MediaPipe's resize is the identity): the same numbers
    assert report["same_pixels"]["min_cos"] > 0.9999, report
    # MediaPipe resizing the original itself (OpenCV bilinear vs Pillow's antialiased bilinear): close
    assert report["mediapipe_resize"]["mean_cos"] > 0.99, report


@pytest.mark.slow  # default-run budget (issue 14): covered in make test-slow
def test_mediapipe_head_name_and_a_wrong_model_is_caught(workspace):
    """The comparison can fail: another student's file through MediaPipe is far from this one's."""
    from export.embedder_metadata import mediapipe_embeddings, model_pixels
    from mobilekd.data.views import normalize
    from mobilekd.runtime.contract import ModelContract
    from mobilekd.runtime.runners import open_runtime

    folder = workspace["root"] / "scalar-none"
    if not folder.exists():
        folder = export(workspace, "scalar", "scalar-none")
    contract = ModelContract.from_dict(manifest(folder))
    pixels = [model_pixels(image, contract.preprocess) for image in images(workspace)]
    ours = open_runtime(folder / "model.tflite", contract)(
        np.stack([normalize(p.astype(np.float32), contract.preprocess).numpy() for p in pixels]))

    torch.manual_seed(7)
    other = create_model("mobilenetv1_025", embed_dim=DIM, size=SIZE)
    other.spec.preprocess = Preprocess(SIZE, TF_LITE_MEAN, TF_LITE_STD)
    save_model(other, workspace["root"] / "student-other",
               {"config": {"data": str(workspace["data"]), "train_fraction": 0.5}})
    workspace["other"] = workspace["root"] / "student-other"
    wrong = export(workspace, "other", "other-fp32")
    theirs = mediapipe_embeddings(wrong / "model.tflite", pixels)
    cos = np.sum(theirs / np.linalg.norm(theirs, axis=1, keepdims=True) * ours, axis=1)
    assert cos.mean() < 0.99

    import mediapipe as mp
    from mediapipe.tasks.python.core.base_options import BaseOptions
    from mediapipe.tasks.python.vision.image_embedder import ImageEmbedder, ImageEmbedderOptions

    options = ImageEmbedderOptions(base_options=BaseOptions(model_asset_path=str(folder / "model.tflite")),
                                   l2_normalize=False, quantize=False)
    with ImageEmbedder.create_from_options(options) as embedder:
        result = embedder.embed(mp.Image(image_format=mp.ImageFormat.SRGB, data=pixels[0]))
    assert result.embeddings[0].head_name == "embedding" and result.embeddings[0].embedding.shape == (DIM,)
