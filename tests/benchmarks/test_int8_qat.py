"""benchmarks.int8_qat: rows against the float student, on hand-made embeddings with known answers."""

from __future__ import annotations

import json

import numpy as np
import pytest

from conftest import make_image

# 6 classes x 2 images (the test split: the last 3 classes); each class one direction, its 2nd image tilted
FLOAT = (np.repeat(np.eye(6, dtype=np.float32), 2, axis=0) + 0.1 * np.tile([[0], [1]], (6, 6)) * np.roll(
    np.repeat(np.eye(6, dtype=np.float32), 2, axis=0), 1, axis=1)).astype(np.float32)
SHUFFLED = FLOAT[[6, 7, 8, 9, 10, 11, 0, 1, 2, 3, 4, 5]][:, ::-1].copy()  # every row another class's, mirrored


def _data(root):
    keys = []
    for c in "ABCDEF":
        for i in (1, 2):
            make_image(str(root / c / f"{i}.png"), seed=ord(c) * 10 + i, size=(40, 40))
            keys.append(f"{c}/{i}.png")
    return keys


def test_rows_compare_every_file_with_the_float_student(tmp_path, capsys):
    from benchmarks.int8_qat import main

    keys = _data(tmp_path / "data")
    files = {"float": FLOAT, "ptq_t": FLOAT[[1, 0, 3, 2, 5, 4, 7, 6, 9, 8, 11, 10]] * 2, "ptq_o": SHUFFLED,
             "qat_t": FLOAT * 3, "qat_o": FLOAT}
    for name, embeddings in files.items():
        np.savez(tmp_path / f"{name}.npz", keys=np.array(keys), embeddings=embeddings)
    out = tmp_path / "results"
    argv = ["--float", str(tmp_path / "float.npz"), "--ptq", str(tmp_path / "ptq_t.npz"), str(tmp_path / "ptq_o.npz"),
            "--qat", str(tmp_path / "qat_t.npz"), str(tmp_path / "qat_o.npz"), "--data", str(tmp_path / "data"),
            "--seed", "3", "--student-size", "32", "--out", str(out)]
    assert main(argv) == 0
    rows = {(r["method"], r["runtime"]): r for r in json.loads((out / "summary.json").read_text())["rows"]}
    assert set(rows) == {("ptq", "tflite"), ("ptq", "onnx"), ("qat", "tflite"), ("qat", "onnx")}
    assert rows[("qat", "tflite")]["mean_cos"] == pytest.approx(1.0) and rows[("qat", "onnx")]["top10_overlap"] == 1
    assert rows[("ptq", "onnx")]["mean_cos"] < 0.5 and rows[("ptq", "tflite")]["mean_cos"] < 0.999
    assert rows[("qat", "tflite")]["r1_int8"] == rows[("qat", "tflite")]["r1_float"] == 100.0
    assert all(r["seed"] == 3 and r["student_size"] == 32 for r in rows.values())
    assert all(r["cpu_model"] and "git_commit" in r for r in rows.values())  # each row says where it was measured
    assert main(argv) == 0  # a re-run replaces its own rows, it does not add to them
    assert len(json.loads((out / "summary.json").read_text())["rows"]) == 4
    assert "qat  tflite" in capsys.readouterr().out


def test_a_file_that_cannot_be_embedded_is_one_error(tmp_path, capsys):
    from benchmarks.int8_qat import main

    keys = _data(tmp_path / "data")
    np.savez(tmp_path / "float.npz", keys=np.array(keys), embeddings=FLOAT)
    assert main(["--float", str(tmp_path / "float.npz"), "--qat", str(tmp_path / "missing.tflite"),
                 str(tmp_path / "float.npz"), "--data", str(tmp_path / "data"), "--seed", "0",
                 "--student-size", "32", "--out", str(tmp_path / "results")]) != 0
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and "missing.tflite" in err[0], err
    assert not (tmp_path / "results").exists()
