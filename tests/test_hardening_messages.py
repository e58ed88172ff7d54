"""Hardening (tracebacks and misleading messages): each hostile input below ends in one ``error:`` line naming
the real problem, exit 2 -- a model.json that lies about its file, zero batch sizes and sizes, unwritable or
full destinations, binary report inputs, a YAML alias bomb, an unreadable class folder, random bytes as weights,
a folder where a file belongs, and numbers that used to mean "off" or "all" silently."""

from __future__ import annotations

import errno
import json
import os
import shutil

import numpy as np
import pytest

from conftest import TFLITE_INT8_INTEGER_IO
from mobilekd.errors import MobileKDError


def one_error_line(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: "), err[:3]
    return err[0]


def latency(*argv) -> int:
    from benchmarks.latency import main

    return main([str(a) for a in argv])


def recall(*argv) -> int:
    from benchmarks.recall import main

    return main([str(a) for a in argv])


def compat(*argv) -> int:
    from mobilekd.compat.cli import main

    return main([str(a) for a in argv])


# ------------------------------------------------------------------------- 1. tracebacks


def _lying_copy(folder, tmp_path, edit):
    """A copy of an export folder whose model.json is edited by ``edit`` (consistent with itself)."""
    copy = tmp_path / "lying"
    shutil.copytree(folder, copy)
    data = json.loads((copy / "model.json").read_text())
    edit(data)
    (copy / "model.json").write_text(json.dumps(data))
    return copy / data["model_file"]


def _other_layout(data):
    n, a, b, c = data["input"]["shape"]
    data["input"].update(layout="NHWC", shape=[n, b, c, a]) if data["input"]["layout"] == "NCHW" else \
        data["input"].update(layout="NCHW", shape=[n, c, a, b])


def _other_size(data):
    size = data["preprocess"]["size"] * 2
    shape = data["input"]["shape"]
    data["input"]["shape"] = [1, size, size, 3] if data["input"]["layout"] == "NHWC" else [1, 3, size, size]
    data["preprocess"]["size"] = size


@pytest.mark.parametrize("lie", [_other_layout, _other_size], ids=["layout", "size"])
def test_benchmarks_refuse_a_model_json_that_lies_about_the_onnx_file(exported, noise_student, tmp_path, capsys,
                                                                       lie):
    model = _lying_copy(exported("onnx"), tmp_path, lie)
    assert latency(model, "--runs", 2, "--warmup", 0, "--quiet") == 2
    line = one_error_line(capsys)
    assert "model.json does not describe model.onnx" in line and "input shape" in line
    assert recall(model, "--data", noise_student["data"], "--quiet") == 2
    assert "model.json does not describe model.onnx" in one_error_line(capsys)


@pytest.mark.slow  # default-run budget: the same runner-open check is covered by the ONNX cases above
def test_benchmarks_refuse_a_lying_model_json_of_an_int8_io_tflite(exported, noise_student, tmp_path, capsys):
    model = _lying_copy(exported("tflite", *TFLITE_INT8_INTEGER_IO), tmp_path, _other_layout)
    assert recall(model, "--data", noise_student["data"], "--quiet") == 2
    assert "model.json does not describe model.tflite" in one_error_line(capsys)
    assert latency(model, "--runs", 2, "--warmup", 0, "--quiet") == 2
    assert "model.json does not describe model.tflite" in one_error_line(capsys)


def test_compat_embed_refuses_a_zero_batch_size_and_size(noise_student, tmp_path, capsys):
    out = tmp_path / "e.npz"
    base = ("embed", noise_student["ckpt"], "--data", noise_student["data"], "--out", out)
    assert compat(*base, "--batch-size", 0) == 2
    assert "--batch-size must be >= 1" in one_error_line(capsys)
    assert compat(*base, "--size", 0) == 2
    assert "--size must be a positive" in one_error_line(capsys)
    assert not out.exists()


def _read_only_file_system(monkeypatch):
    """Every new file fails as on a read-only mount (we run as root, so chmod would not stop a write)."""
    import tempfile

    def refuse(*args, **kwargs):
        raise OSError(errno.EROFS, os.strerror(errno.EROFS))

    monkeypatch.setattr(tempfile, "mkstemp", refuse)
    monkeypatch.setattr(tempfile, "TemporaryFile", refuse)


def test_compat_out_on_a_read_only_file_system_fails_before_the_work(noise_student, tmp_path, capsys, monkeypatch):
    import mobilekd.compat.cli as cli

    def no_work(*args, **kwargs):
        raise AssertionError("embedded before checking --out")

    _read_only_file_system(monkeypatch)
    monkeypatch.setattr(cli, "embed_model", no_work)
    monkeypatch.setattr(cli, "upgrade_check", no_work)
    assert compat("embed", noise_student["ckpt"], "--data", noise_student["data"], "--out", tmp_path / "e.npz") == 2
    line = one_error_line(capsys)
    assert "not writable" in line and "Read-only file system" in line
    assert compat("upgrade", "--old", "a.npz", "--new", "b.npz", "--data", noise_student["data"],
                  "--out", tmp_path / "up") == 2
    assert "Read-only file system" in one_error_line(capsys)
    assert not list(tmp_path.iterdir())


@pytest.mark.parametrize("code", [errno.EROFS, errno.ENOSPC, errno.EACCES])
def test_a_write_the_destination_refuses_is_one_error_and_leaves_nothing(tmp_path, code):
    from mobilekd.io import atomic_path

    target = tmp_path / "result.json"
    with pytest.raises(MobileKDError, match=f"cannot write {target}: {os.strerror(code)}"):
        with atomic_path(target) as tmp:
            open(tmp, "w").write("half")
            raise OSError(code, os.strerror(code))
    assert list(tmp_path.iterdir()) == []


def test_report_refuses_binary_and_wrong_format_files_in_one_line(tmp_path, capsys):
    from benchmarks.report import main as report_main

    binary = tmp_path / "result.json"
    binary.write_bytes(bytes(range(256)) * 4)
    assert report_main([str(binary), "--out", str(tmp_path / "r")]) == 2
    assert "not text" in one_error_line(capsys)
    for body in ({"kind": "latency", "machine": {"cpu": "x"}, "results": [{"model": "m"}]},
                 {"kind": "recall", "machine": {}, "results": "none"},
                 {"kind": "latency", "machine": [], "results": [], "models": []}):
        binary.write_text(json.dumps(body))
        assert report_main([str(binary), "--out", str(tmp_path / "r")]) == 2
        assert f"is not a {body['kind']} result" in one_error_line(capsys)
    assert report_main([str(tmp_path), "--out", str(tmp_path / "r")]) == 2
    assert "is a directory" in one_error_line(capsys)


# ------------------------------------------------------------------------- 2. misleading messages


def test_a_teacher_cache_the_disk_cannot_hold_is_refused_naming_needed_and_free_bytes(folder_dataset, tmp_path,
                                                                                    capsys, monkeypatch):
    import mobilekd.teacher_cache
    from mobilekd.embed import main as embed_main

    real = shutil.disk_usage
    monkeypatch.setattr(mobilekd.teacher_cache.shutil, "disk_usage",
                        lambda path: real(path)._replace(free=1000))
    cache = tmp_path / "cache"
    assert embed_main(["--data", str(folder_dataset), "--teacher", "efficientnet_lite0", "--teacher-size", "32",
                       "--views", "1", "--teacher-cache", str(cache), "--no-progress", "--threads", "1"]) == 2
    line = one_error_line(capsys)
    assert "needs" in line and "only 1,000 bytes are free" in line
    assert not cache.exists() or not [p for p in cache.rglob("*") if p.name != ".mobilekd.lock"]  # nothing made


BOMB = """epochs: [&a ["lol","lol","lol","lol","lol","lol","lol","lol","lol"],
 &b [*a,*a,*a,*a,*a,*a,*a,*a,*a], &c [*b,*b,*b,*b,*b,*b,*b,*b,*b], &d [*c,*c,*c,*c,*c,*c,*c,*c,*c],
 &e [*d,*d,*d,*d,*d,*d,*d,*d,*d], &f [*e,*e,*e,*e,*e,*e,*e,*e,*e], [*f,*f,*f,*f,*f,*f,*f,*f,*f]]
"""


def test_a_yaml_alias_bomb_is_refused_in_a_short_line(folder_dataset, tmp_path, capsys):
    from mobilekd.distill import main as distill_main

    bomb = tmp_path / "bomb.yaml"
    bomb.write_text(BOMB)
    assert len(BOMB) < 300
    assert distill_main(["--config", str(bomb), "--data", str(folder_dataset)]) == 2
    line = one_error_line(capsys)
    assert "aliases" in line and len(line) < 300


def test_an_error_echoes_at_most_200_characters_of_a_value(folder_dataset, tmp_path, capsys):
    from mobilekd.distill import main as distill_main

    config = tmp_path / "long.yaml"
    config.write_text(f"epochs: \"{'x' * 5000}\"\n")
    assert distill_main(["--config", str(config), "--data", str(folder_dataset)]) == 2
    line = one_error_line(capsys)
    assert "'epochs'" in line and "is not an integer" in line and len(line) < 300


def test_an_unreadable_class_folder_is_named_not_called_empty(folder_dataset, monkeypatch):
    from mobilekd.data import load_image_set
    from mobilekd.errors import DataError

    real = os.scandir

    def scandir(path="."):
        if str(path).endswith("class_3"):
            raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), str(path))
        return real(path)

    monkeypatch.setattr(os, "scandir", scandir)
    with pytest.raises(DataError) as error:
        load_image_set(folder_dataset)
    assert "cannot read folder" in str(error.value) and "class_3" in str(error.value)
    assert "no images" not in str(error.value)


def test_random_bytes_are_not_weights_and_no_unsafe_load_is_suggested(noise_student, tmp_path, capsys):
    from mobilekd.models import read_state_dict
    from mobilekd.teacher_cache import load_embeddings

    noise = np.random.default_rng(0).integers(0, 256, 4096, dtype=np.uint8).tobytes()
    for name in ("weights.pth", "embeddings.npz", "embeddings.npy"):
        (tmp_path / name).write_bytes(noise)
    with pytest.raises(MobileKDError) as error:
        read_state_dict(tmp_path / "weights.pth")
    assert "not a weights file" in str(error.value)
    assert recall(tmp_path / "embeddings.npz", "--data", noise_student["data"], "--quiet") == 2
    line = one_error_line(capsys)
    assert "not an embeddings file" in line
    with pytest.raises(MobileKDError) as cache_error:
        load_embeddings(tmp_path, {"shape": [1, 1, 1]})
    for message in (str(error.value), line, str(cache_error.value)):
        assert not any(word in message for word in ("weights_only", "allow_pickle", "pickle", "unsafe"))


def test_a_folder_where_a_file_belongs_is_called_a_folder(noise_student, folder_dataset, tmp_path, capsys):
    from mobilekd.distill import main as distill_main

    for name in ("model.onnx", "embeddings.npz", "config.yaml"):
        (tmp_path / name).mkdir()
    assert recall(tmp_path / "embeddings.npz", "--data", noise_student["data"], "--quiet") == 2
    assert "is a directory" in one_error_line(capsys)
    assert latency(tmp_path / "model.onnx", "--runs", 2, "--quiet") == 2
    assert "is a directory" in one_error_line(capsys)
    assert distill_main(["--config", str(tmp_path / "config.yaml"), "--data", str(folder_dataset)]) == 2
    assert "is a directory" in one_error_line(capsys)


def test_latency_refuses_sizes_below_one_and_below_the_models_minimum(noise_student, capsys):
    assert latency(noise_student["ckpt"], "--size", 0, 0, "--runs", 2, "--quiet", "--no-compile") == 2
    assert "--size H W must be positive" in one_error_line(capsys)
    assert latency(noise_student["ckpt"], "--size", 4, 4, "--runs", 2, "--quiet", "--no-compile") == 2
    assert "at least 32 px" in one_error_line(capsys)


def test_calibration_data_errors_name_calib_not_data(noise_student, tmp_path, capsys):
    from export.onnx import main as onnx_main

    a_file = tmp_path / "calib.bin"
    a_file.write_bytes(b"\x00" * 10)
    for calib in (a_file, tmp_path / "missing"):
        assert onnx_main([str(noise_student["ckpt"]), "--quantize", "int8", "--calib", str(calib),
                          "--out", str(tmp_path / "out")]) == 2
        line = one_error_line(capsys)
        assert "--calib" in line and "--data" not in line
    assert not (tmp_path / "out").exists()


def test_compat_upgrade_refuses_a_non_finite_or_out_of_range_tolerance(noise_student, capsys, monkeypatch):
    import mobilekd.compat.workflows as workflows

    def no_work(*args, **kwargs):
        raise AssertionError("embedded with a meaningless tolerance")

    monkeypatch.setattr(workflows, "embed_model", no_work)
    for tolerance in ("nan", "inf", "-1", "101"):
        assert compat("upgrade", "--old", noise_student["ckpt"], "--new", noise_student["ckpt"],
                      "--data", noise_student["data"], "--tolerance", tolerance) == 2
        assert "--tolerance must be in 0..100" in one_error_line(capsys)
    for flag in ("--old-size", "--new-size"):  # 0 would silently mean the model's own size
        assert compat("upgrade", "--old", noise_student["ckpt"], "--new", noise_student["ckpt"],
                      "--data", noise_student["data"], flag, "0") == 2
        assert f"{flag} must be a positive pixel count" in one_error_line(capsys)


def test_zero_or_negative_numbers_do_not_silently_mean_off_or_all(onnx_copy, noise_student, folder_dataset,
                                                                   tmp_path, capsys):
    from conftest import tiny_config
    from export.check import main as check_main

    with pytest.raises(MobileKDError, match="--teacher-size must be >= 1"):
        tiny_config(folder_dataset, tmp_path / "run", teacher_size=0).validate()
    for flag, value, words in (("--parity-images", -5, "--parity-images must be >= 0"),
                               ("--teacher-size", 0, "--teacher-size must be a positive"),
                               ("--threads", 0, "--threads must be >= 1")):
        assert check_main([str(onnx_copy), "--against", str(noise_student["ckpt"]), "--teacher",
                           "efficientnet_lite0", flag, str(value)]) == 2
        assert words in one_error_line(capsys)
    assert recall(noise_student["ckpt"], "--data", noise_student["data"], "--threads", -1, "--quiet") == 2
    assert "--threads must be >= 1" in one_error_line(capsys)
    assert recall(noise_student["ckpt"], "--data", noise_student["data"], "--size", 0, "--quiet") == 2
    assert "--size must be a positive" in one_error_line(capsys)
    assert compat("evaluate", "--transforms", tmp_path / "none", "--data", noise_student["data"],
                  "--random-seeds", -1) == 2
    assert "--random-seeds must be >= 0" in one_error_line(capsys)


@pytest.fixture
def onnx_copy(exported, tmp_path):
    folder = tmp_path / "export"
    shutil.copytree(exported("onnx"), folder)
    return folder


def test_a_folder_given_as_student_weights_is_called_a_folder(tmp_path):
    from mobilekd.errors import ModelError
    from mobilekd.weights import student_with_weights

    with pytest.raises(ModelError, match=r"--student-weights file .* is a directory, not a file"):
        student_with_weights(tmp_path, "mobilenetv1_025")


def test_weights_import_refuses_zero_threads(tmp_path, capsys):
    from mobilekd.weights import main as weights_main

    (tmp_path / "m.tflite").write_bytes(b"x")
    assert weights_main(["import", str(tmp_path / "m.tflite"), "--arch", "mobilenetv1_025",
                         "--out", str(tmp_path / "out"), "--threads", "0"]) == 2
    assert "--threads must be >= 1" in one_error_line(capsys)
    assert not (tmp_path / "out").exists()


def test_a_damaged_state_file_is_never_loaded_unsafely_for_the_teacher_projection(tmp_path):
    import pickle

    from mobilekd.engine.checkpoint import STATE_FILE, load_teacher_projections

    (tmp_path / STATE_FILE).write_bytes(pickle.dumps({"losses": object()}))  # a pickle weights_only refuses
    with pytest.raises(MobileKDError, match=r"is damaged or not a mobilekd training state \(it holds objects") as e:
        load_teacher_projections(tmp_path)
    assert "weights_only" not in str(e.value)
    (tmp_path / STATE_FILE).write_bytes(b"\x00" * 10)  # truncated
    with pytest.raises(MobileKDError, match="is damaged or not a mobilekd training state"):
        load_teacher_projections(tmp_path)
