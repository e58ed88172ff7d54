"""export.android: the android/ assets folder (model + prebuilt gallery) and its bad inputs.

The model is the session's shared fp32 TFLite export of the random-weight student (conftest ``exported``); the
gallery a few small PNGs in a flat folder and a sub-folder. The Kotlin reader of the same folder is checked by
tests/android_demo/test_core.py (slow).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import make_image

from export.android import (GALLERY_FIELDS, MARKER, dequantize_rows, main, quantize_rows, read_gallery,
                            search_gallery, write_android_folder)


@pytest.fixture(scope="module")
def photos(tmp_path_factory) -> Path:
    """5 photos: 3 at the top, 2 in a sub-folder, different sizes and colours."""
    root = tmp_path_factory.mktemp("photos")
    for i, (name, size) in enumerate([("a.png", (40, 30)), ("b.jpg", (200, 120)), ("c.png", (24, 60)),
                                      ("trip/d.png", (33, 33)), ("trip/e.jpg", (64, 48))]):
        make_image(str(root / name), seed=i, size=size)
    return root


def one_error_line(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: "), err
    return err[0]


def torch_embeddings(ckpt: Path, photos: Path, ids: list[str]) -> np.ndarray:
    """The checkpoint's own (PyTorch) embeddings of the photos' evaluation views: the reference the .tflite file
    must reproduce."""
    from mobilekd.data.views import render_evaluation
    from mobilekd.models import load_model

    model = load_model(ckpt).eval()
    batch = torch.stack([render_evaluation(Image.open(photos / i).convert("RGB"), model.spec.preprocess) for i in ids])
    with torch.no_grad():
        out = model(batch).numpy().astype(np.float64)
    return out / np.linalg.norm(out, axis=1, keepdims=True)


def test_int8_gallery_folder_matches_the_model_and_reads_back(exported, noise_student, photos, tmp_path):
    model_dir = exported("tflite")
    dest = tmp_path / "OUT" / "android"
    summary = write_android_folder(model_dir, dest, gallery=photos, progress=False)

    ids = ["a.png", "b.jpg", "c.png", "trip/d.png", "trip/e.jpg"]
    assert summary["gallery_count"] == 5 and summary["precision"] == "int8" and summary["dest"] == str(dest)
    assert summary["files"] == sorted(["model.tflite", "model.json", "gallery/gallery.json", "gallery/embeddings.i8",
                                       "gallery/scales.f32", *[f"gallery/thumbs/{i:06d}.jpg" for i in range(5)]])
    assert summary["bytes"] == sum((dest / f).stat().st_size for f in summary["files"])
    assert sorted(p.name for p in dest.iterdir()) == sorted([MARKER, "gallery", "model.json", "model.tflite"])
    assert (dest / "model.tflite").read_bytes() == (model_dir / "model.tflite").read_bytes()
    assert (dest / "model.json").read_bytes() == (model_dir / "model.json").read_bytes()
    contract = json.loads((dest / "model.json").read_text())
    assert summary["model_sha256"] == contract["model_sha256"]

    meta = json.loads((dest / "gallery" / "gallery.json").read_text())
    assert list(meta) == list(GALLERY_FIELDS) and meta["ids"] == ids and meta["embed_dim"] == contract["embed_dim"]
    assert (dest / "gallery" / "embeddings.i8").stat().st_size == 5 * meta["embed_dim"]
    assert (dest / "gallery" / "scales.f32").stat().st_size == 5 * 4
    for i, thumb in enumerate(meta["thumbnails"]):
        with Image.open(dest / "gallery" / thumb) as image:
            original = Image.open(photos / ids[i])
            assert image.format == "JPEG" and max(image.size) == min(96, max(original.size))

    back = read_gallery(dest / "gallery", contract["model_sha256"], contract["embed_dim"])
    vectors = back["vectors"]
    assert vectors.shape == (5, meta["embed_dim"]) and np.allclose(np.linalg.norm(vectors, axis=1), 1, atol=1e-6)
    # the stored rows are the model's embeddings of those very photos, in that order (int8: ~1e-2 per value)
    reference = torch_embeddings(noise_student["ckpt"], photos, ids)
    assert np.all(np.sum(vectors * reference, axis=1) > 0.999)
    assert np.abs(vectors - reference).max() < 0.02

    top, scores = search_gallery(vectors, vectors, k=3)
    assert [row[0] for row in top] == list(range(5)) and len(top[0]) == 3
    assert np.allclose([s[0] for s in scores], 1.0, atol=1e-6)


def test_fp16_gallery_and_rewriting_our_own_folder_through_the_cli(exported, photos, tmp_path, capsys):
    model_dir = exported("tflite")
    dest = tmp_path / "android"
    assert main([str(model_dir), "--out", str(dest), "--no-progress"]) == 0  # no gallery: the model only
    assert sorted(p.name for p in dest.iterdir()) == sorted([MARKER, "model.json", "model.tflite"])
    assert main([str(model_dir), "--out", str(dest), "--gallery", str(photos / "trip"), "--gallery-precision",
                 "fp16", "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert "gallery of 2 photos (fp16)" in out and f"cp -r {dest}/. android_demo/app/src/main/assets/" in out
    meta = json.loads((dest / "gallery" / "gallery.json").read_text())
    assert meta["precision"] == "fp16" and meta["scales"] is None and meta["ids"] == ["d.png", "e.jpg"]
    assert (dest / "gallery" / "embeddings.f16").stat().st_size == 2 * 2 * meta["embed_dim"]
    assert not (dest / "gallery" / "scales.f32").exists()
    assert [p.name for p in tmp_path.iterdir()] == ["android"]  # no temporary folder left behind
    read_gallery(dest / "gallery", meta["model_sha256"], meta["embed_dim"])


def test_quantisation_round_trip_and_tampered_galleries(tmp_path):
    from export.android import write_gallery
    from mobilekd.errors import DataError

    rng = np.random.default_rng(0)
    v = rng.standard_normal((40, 24)).astype(np.float32)
    v /= np.linalg.norm(v, axis=1, keepdims=True)
    for precision, tol in (("int8", 0.5 / 127 * 1.01), ("fp16", 1e-3)):
        values, scales = quantize_rows(v, precision)
        assert values.dtype == (np.int8 if precision == "int8" else np.float16)
        if precision == "int8":
            assert np.abs(values).max(axis=1).tolist() == [127] * 40  # every row uses the full range
        assert np.abs(dequantize_rows(values, scales) - v).max() < tol * 2
        top, _ = search_gallery(dequantize_rows(values, scales), v, k=1)
        assert [t[0] for t in top] == list(range(40))

    folder = tmp_path / "gallery"
    folder.mkdir()
    meta = write_gallery(folder, [f"p{i}.jpg" for i in range(40)], v, "ab" * 32, "model.tflite", "int8")
    assert np.allclose(read_gallery(folder, "ab" * 32, 24)["vectors"], dequantize_rows(*quantize_rows(v, "int8")))
    with pytest.raises(DataError, match="made by another model"):
        read_gallery(folder, "cd" * 32, 24)
    with pytest.raises(DataError, match="holds 24-d vectors"):
        read_gallery(folder, "ab" * 32, 16)
    (folder / "scales.f32").write_bytes((folder / "scales.f32").read_bytes()[:-4])
    with pytest.raises(DataError, match="expected 40 values"):
        read_gallery(folder)
    (folder / "gallery.json").write_text(json.dumps({**meta, "extra": 1}))
    with pytest.raises(DataError, match="exactly the fields"):
        read_gallery(folder)


def test_bad_input_says_what_and_writes_nothing(exported, noise_student, photos, tmp_path, capsys):
    model_dir = exported("tflite")
    out = tmp_path / "out"

    def fails(*argv) -> str:
        assert main([*map(str, argv), "--no-progress"]) == 2
        return one_error_line(capsys)

    assert "model folder not found" in fails(tmp_path / "missing", "--out", out)
    assert "not an export folder" in fails(photos, "--out", out)
    assert "is a file" in fails(photos / "a.png", "--out", out)
    assert "is a checkpoint, not an export folder" in fails(noise_student["ckpt"], "--out", out)
    onnx_like = tmp_path / "onnx_like"
    shutil.copytree(model_dir, onnx_like)
    meta = json.loads((onnx_like / "model.json").read_text())
    (onnx_like / "model.json").write_text(json.dumps({**meta, "runtime": "onnx", "model_file": "model.onnx"}))
    assert "is an export for onnx" in fails(onnx_like, "--out", out)
    (onnx_like / "model.json").write_text(json.dumps({**meta, "runtime": "tensorflow"}))
    assert f"{onnx_like}: " in fails(onnx_like, "--out", out)
    assert "invalid choice" in fails(model_dir, "--out", out, "--gallery-precision", "int4")
    assert "threads must be a positive integer" in fails(model_dir, "--out", out, "--threads", 0)

    changed = tmp_path / "changed"
    shutil.copytree(model_dir, changed)
    with open(changed / "model.tflite", "ab") as f:
        f.write(b"\0")
    assert "the file changed after export" in fails(changed, "--out", out)

    empty = tmp_path / "empty"
    empty.mkdir()
    assert "contains no images" in fails(model_dir, "--out", out, "--gallery", empty)
    assert "gallery folder not found" in fails(model_dir, "--out", out, "--gallery", tmp_path / "nope")
    broken = tmp_path / "broken"
    shutil.copytree(photos, broken)
    (broken / "trip" / "d.png").write_bytes(b"not a png")
    (broken / "z.jpg").write_bytes((photos / "b.jpg").read_bytes()[:100])
    line = fails(model_dir, "--out", out, "--gallery", broken)
    assert "2 of 6 images cannot be read" in line and "d.png" in line and "z.jpg" in line

    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("mine")
    assert "notes.txt" in fails(model_dir, "--out", foreign)
    assert (foreign / "notes.txt").read_text() == "mine" and [p.name for p in foreign.iterdir()] == ["notes.txt"]
    blocker = tmp_path / "blocker"
    blocker.write_text("x")
    assert "not a folder" in fails(model_dir, "--out", blocker / "android")
    assert "not a folder" in fails(model_dir, "--out", blocker)

    assert not out.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["blocker", "broken", "changed", "empty", "foreign",
                                                         "onnx_like"]
