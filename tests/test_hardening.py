"""Hardening (data loss and accepted lies): an exporter never deletes what it did not write, a teacher cache of
other data is not silently rebuilt, ``export.check`` validates model.json against the file and the Android
reader's schema, a checkpoint's preprocessing and a teacher cache are validated on load -- each refusal one
``error:`` line (exit 2), never a traceback."""

from __future__ import annotations

import importlib
import json
import shutil

import numpy as np
import pytest
import torch

from mobilekd.errors import MobileKDError, ModelError


def one_error_line(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: "), err
    return err[0]


def export_main(fmt: str, *argv) -> int:
    return importlib.import_module(f"export.{fmt}").main([str(a) for a in argv])


def snapshot(folder) -> dict:
    """relative path -> bytes of every file under ``folder``."""
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


# ------------------------------------------------------------------------------------- 1. data loss


@pytest.fixture
def training_run(noise_student, tmp_path):
    """A run folder as ``mobilekd.distill`` leaves it: the checkpoint plus its training state and cache."""
    run = tmp_path / "run"
    shutil.copytree(noise_student["ckpt"], run)
    for name, text in (("train_state.pt", "state"), ("history.json", "[]"), ("metrics.json", "{}"),
                       ("config.json", "{}")):
        (run / name).write_text(text)
    (run / "teacher_cache").mkdir()
    (run / "teacher_cache" / "embeddings.npy").write_bytes(b"rows")
    return run


@pytest.mark.parametrize("fmt", ["onnx", "tflite", "coreml"])
def test_export_into_the_checkpoint_folder_is_refused_and_deletes_nothing(fmt, training_run, capsys):
    before = snapshot(training_run)
    assert export_main(fmt, training_run, "--out", training_run) == 2
    assert "checkpoint" in one_error_line(capsys)
    assert snapshot(training_run) == before


def test_export_into_a_parent_of_the_checkpoint_is_refused(training_run, capsys):
    before = snapshot(training_run.parent)
    assert export_main("onnx", training_run, "--out", training_run.parent) == 2
    one_error_line(capsys)
    assert snapshot(training_run.parent) == before


def test_export_never_deletes_the_users_files(noise_student, tmp_path, capsys):
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("my notes")
    (mine / "model.json").write_text('{"mine": true}')
    assert export_main("onnx", noise_student["ckpt"], "--out", mine) == 2
    line = one_error_line(capsys)
    assert "notes.txt" in line and "refusing" in line
    assert snapshot(mine) == {"notes.txt": b"my notes", "model.json": b'{"mine": true}'}
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".mine")]  # no work folder left behind


def test_export_replaces_only_its_own_previous_export(noise_student, exported, tmp_path, capsys):
    from export.common import check_out_folder

    out = tmp_path / "onnx"
    shutil.copytree(exported("onnx"), out)  # the session's export (into a new folder), moved here
    marker = json.loads((out / ".mobilekd-export.json").read_text())
    assert sorted(marker["files"]) == ["model.json", "model.onnx"]
    first = json.loads((out / "model.json").read_text())
    assert export_main("onnx", noise_student["ckpt"], "--out", out) == 0  # its own export: replaced
    assert sorted(p.name for p in out.iterdir()) == [".mobilekd-export.json", "model.json", "model.onnx"]
    assert json.loads((out / "model.json").read_text())["model_sha256"] == first["model_sha256"]
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".onnx.")]  # no temp or old folder left

    (out / ".mobilekd-export.json").unlink()
    check_out_folder(out)  # an export made before the marker existed (model.json + its model file) is replaceable
    (tmp_path / "empty").mkdir()
    check_out_folder(tmp_path / "empty")
    capsys.readouterr()
    (out / "notes.txt").write_text("added by the user")  # now it holds something the exporter did not write
    assert export_main("onnx", noise_student["ckpt"], "--out", out) == 2
    assert "notes.txt" in one_error_line(capsys)
    assert (out / "notes.txt").read_text() == "added by the user" and (out / "model.onnx").is_file()


def _embed_args(data, cache, *extra):
    return ["--data", str(data), "--teacher", "efficientnet_lite0", "--views", "1", "--teacher-cache", str(cache),
            "--no-progress", "--threads", "1", *extra]


def test_embed_refuses_a_cache_of_other_data_or_teacher_size_unless_rebuild(folder_dataset, tmp_path, capsys):
    from mobilekd.embed import main as embed_main

    cache = tmp_path / "cache"
    assert embed_main(_embed_args(folder_dataset, cache, "--teacher-size", "32")) == 0
    before = snapshot(cache)
    capsys.readouterr()
    assert embed_main(_embed_args(folder_dataset, cache, "--teacher-size", "48")) == 2
    line = one_error_line(capsys)
    assert "transform.preprocess.size 32 -> 48" in line and "--rebuild" in line
    assert snapshot(cache) == before

    other = tmp_path / "other"
    shutil.copytree(folder_dataset, other)
    (other / "class_0" / "0.png").unlink()
    assert embed_main(_embed_args(other, cache, "--teacher-size", "32")) == 2
    assert "data_fingerprint" in one_error_line(capsys)
    assert snapshot(cache) == before

    assert embed_main(_embed_args(folder_dataset, cache, "--teacher-size", "48", "--rebuild")) == 0
    capsys.readouterr()
    manifest = json.loads((cache / "manifest.json").read_text())
    assert manifest["transform"]["preprocess"]["size"] == 48 and manifest["complete"]

    (cache / "chunks" / "0").unlink()  # damaged: says complete, a chunk was never written
    assert embed_main(_embed_args(folder_dataset, cache, "--teacher-size", "48")) == 2
    assert "never written" in one_error_line(capsys)
    assert embed_main(_embed_args(folder_dataset, cache, "--teacher-size", "48", "--rebuild")) == 0
    assert (cache / "chunks" / "0").exists()


# ------------------------------------------------------------------------------------- 2. lies accepted


@pytest.fixture
def onnx_export(exported, tmp_path):
    """A private copy of the session's fp32 ONNX export, to be edited."""
    folder = tmp_path / "export"
    shutil.copytree(exported("onnx"), folder)
    return folder


def _edit_contract(folder, edit) -> None:
    data = json.loads((folder / "model.json").read_text())
    edit(data)
    (folder / "model.json").write_text(json.dumps(data))


@pytest.mark.parametrize("edit, words", [
    (lambda d: d["input"].update(shape=[1, 3, 64, 64]), "input.shape"),
    (lambda d: (d["input"].update(shape=[1, 3, 64, 64]), d["preprocess"].update(size=64)), "input shape"),
    (lambda d: d["input"].update(name="pixels"), "input name"),
    (lambda d: d["preprocess"].update(channels="XYZ"), "channels"),
    (lambda d: d["output"].update(shape=[1, 7]), "output.shape"),
    (lambda d: d["input"].update(dtype="int8"), "quantization"),
    (lambda d: d.update(embed_dim=0), "embed_dim"),
    (lambda d: d["preprocess"].update(size="32"), "size"),
    (lambda d: d["preprocess"].pop("crop"), "crop"),
    (lambda d: d["output"].update(l2_normalized="yes"), "l2_normalized"),
], ids=["shape-vs-size", "shape-vs-file", "name", "channels", "output-dim", "int8-no-quant", "embed-dim",
        "size-str", "missing-crop", "l2-str"])
def test_check_refuses_a_model_json_that_lies_about_the_file(onnx_export, noise_student, edit, words, capsys):
    _edit_contract(onnx_export, edit)
    assert export_main("check", onnx_export, "--against", noise_student["ckpt"]) == 2
    assert words in one_error_line(capsys)


def test_check_still_passes_the_true_contract(onnx_export, noise_student, capsys):
    assert export_main("check", onnx_export, "--against", noise_student["ckpt"]) == 0
    assert "PASS" in capsys.readouterr().out


BAD_PREPROCESS = [("size", 100000), ("size", 32.5), ("size", "32"), ("size", True), ("interpolation", "lanczos-9000"),
                  ("std", [58.0, 57.0]), ("std", [58.0, 0.0, 57.0]), ("mean", [1.0, "a", 2.0]),
                  ("channels", "XYZ"), ("crop", 0.0), ("shear", 0.1)]


@pytest.mark.parametrize("field, value", BAD_PREPROCESS, ids=[f"{f}={v}" for f, v in BAD_PREPROCESS])
def test_checkpoint_with_impossible_preprocessing_is_refused_naming_the_field(noise_student, tmp_path, field, value):
    from mobilekd.models import load_model

    ckpt = tmp_path / "ckpt"
    shutil.copytree(noise_student["ckpt"], ckpt)
    meta = json.loads((ckpt / "model.json").read_text())
    meta["spec"]["preprocess"][field] = value
    (ckpt / "model.json").write_text(json.dumps(meta))
    with pytest.raises(ModelError, match=f"preprocess.{field}"):
        load_model(ckpt)


def test_export_of_a_checkpoint_with_impossible_preprocessing_is_one_error_line(noise_student, tmp_path, capsys):
    ckpt = tmp_path / "ckpt"
    shutil.copytree(noise_student["ckpt"], ckpt)
    meta = json.loads((ckpt / "model.json").read_text())
    meta["spec"]["preprocess"]["size"] = 100000
    (ckpt / "model.json").write_text(json.dumps(meta))
    assert export_main("onnx", ckpt, "--out", tmp_path / "out") == 2
    line = one_error_line(capsys)
    assert "preprocess.size" in line and "4096" in line
    assert not (tmp_path / "out").exists()


# a hand-made cache: 10 images x 2 views x 4 dims in chunks of 4 (markers 0, 4, 8), as TeacherCache.build leaves it
N, V, D, CHUNK = 10, 2, 4, 4


def make_cache(folder, rows=None, **manifest):
    from mobilekd.teacher_cache import FORMAT

    folder.mkdir()
    (folder / "chunks").mkdir()
    for start in range(0, N, CHUNK):
        (folder / "chunks" / str(start)).touch()
    rows = np.ones((N, V, D), np.float32) / 2 if rows is None else rows
    np.save(folder / "embeddings.npy", rows)
    (folder / "manifest.json").write_text(json.dumps({"format": FORMAT, "views": V, "images": N,
                                                      "shape": [N, V, D], "dtype": "float32", "chunk": CHUNK,
                                                      "complete": True, **manifest}))
    return folder


def test_a_sound_cache_opens_and_reads(tmp_path):
    from mobilekd.teacher_cache import TeacherCache

    cache = TeacherCache.open(make_cache(tmp_path / "c"))
    assert cache(torch.tensor([0, 9]), torch.tensor([1, 0])).shape == (2, D)


def test_cache_with_non_finite_rows_fails_when_they_are_used(tmp_path):
    from mobilekd.teacher_cache import TeacherCache

    rows = np.ones((N, V, D), np.float32)
    rows[5, 1, 2] = np.nan
    rows[9, 0, 0] = np.inf
    cache = TeacherCache.open(make_cache(tmp_path / "c", rows))
    assert torch.isfinite(cache(torch.tensor([0, 1]), torch.tensor([0, 1]))).all()  # chunk 0 is sound
    with pytest.raises(MobileKDError, match="non-finite"):
        cache(torch.tensor([0, 5]), torch.tensor([0, 0]))  # image 5's chunk holds a NaN, in another view
    with pytest.raises(MobileKDError, match="non-finite"):
        cache(torch.tensor([9]), torch.tensor([0]))


def _truncate(folder):
    data = (folder / "embeddings.npy").read_bytes()
    (folder / "embeddings.npy").write_bytes(data[:len(data) // 2])


def _object_dtype(folder):
    np.save(folder / "embeddings.npy", np.array([[["a"] * D] * V] * N, dtype=object), allow_pickle=True)


DAMAGE = {
    "chunks-missing": (lambda f: (f / "chunks" / "4").unlink(), "chunk"),
    "truncated-npy": (_truncate, "embeddings.npy"),
    "manifest-not-json": (lambda f: (f / "manifest.json").write_text("{not json"), "manifest.json"),
    "manifest-not-object": (lambda f: (f / "manifest.json").write_text("[1, 2]"), "manifest.json"),
    "manifest-no-shape": (lambda f: _edit_contract_file(f / "manifest.json", lambda m: m.pop("shape")), "shape"),
    "object-dtype": (_object_dtype, "embeddings.npy"),
    "float64": (lambda f: np.save(f / "embeddings.npy", np.ones((N, V, D))), "float32"),
    "wrong-dim": (lambda f: np.save(f / "embeddings.npy", np.ones((N, V, D + 3), np.float32)), "shape"),
    "two-dims": (lambda f: np.save(f / "embeddings.npy", np.ones((N, V), np.float32)), "shape"),
}


def _edit_contract_file(path, edit):
    data = json.loads(path.read_text())
    edit(data)
    path.write_text(json.dumps(data))


@pytest.mark.parametrize("name", list(DAMAGE))
def test_damaged_cache_is_refused_on_open_with_one_clear_error(tmp_path, name):
    from mobilekd.teacher_cache import TeacherCache

    damage, words = DAMAGE[name]
    folder = make_cache(tmp_path / "c")
    damage(folder)
    with pytest.raises(MobileKDError, match=words):
        TeacherCache.open(folder)


def test_cache_of_another_embedding_dimension_than_the_teacher_is_refused(tmp_path):
    from mobilekd.teacher_cache import TeacherCache

    folder = make_cache(tmp_path / "c")
    with pytest.raises(MobileKDError, match="4-d.*teacher embeds to 16"):
        TeacherCache.open(folder, {"views": V, "embed_dim": 16})
