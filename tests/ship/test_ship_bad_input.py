"""Every bad input of ``mobilekd ship`` ends with one ``error:`` line, a non-zero exit, no traceback, and nothing
half-written: ``OUT`` is never created (or a previous bundle there is left as it was)."""

import fcntl
import json
import os
import sys

import pytest

from mobilekd.io import mark_owned
from ship.bundle import MARKER, TOOL
from ship.command import main

FAST = ["--formats", "onnx", "--precisions", "fp32", "--threads", "1", "--latency-runs", "2"]


def refused(argv, capsys, *expected: str) -> str:
    """Run ``mobilekd ship ARGV``; assert exit 2 with exactly one ``error:`` line containing ``expected``."""
    assert main(argv) == 2
    err = capsys.readouterr().err
    errors = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, err
    assert "Traceback" not in err
    for text in expected:
        assert text in errors[0], errors[0]
    return errors[0]


def nothing_written(out) -> bool:
    return not out.exists() and not out.with_name(out.name + ".work").exists()


def test_missing_data(noise_student, tmp_path, capsys):
    out = tmp_path / "out"
    refused(["--from", str(noise_student["ckpt"]), "--data", str(tmp_path / "no-photos"), "--out", str(out), *FAST],
            capsys, "no-photos")
    assert nothing_written(out)
    refused(["--data", str(tmp_path / "no-photos"), "--out", str(out), *FAST], capsys, "no-photos")
    assert nothing_written(out)


def test_missing_unlabeled_photos(folder_dataset, tmp_path, capsys):
    out = tmp_path / "out"
    refused(["--data", str(folder_dataset), "--unlabeled", str(tmp_path / "no-gallery"), "--out", str(out), *FAST],
            capsys, "--unlabeled", "no-gallery")
    assert nothing_written(out)


def test_data_with_too_few_images(tmp_path, capsys):
    from conftest import make_image

    make_image(str(tmp_path / "photos" / "only" / "one.png"), seed=0)
    out = tmp_path / "out"
    refused(["--data", str(tmp_path / "photos"), "--out", str(out), *FAST], capsys)
    assert nothing_written(out)


@pytest.mark.parametrize("case", ["missing", "empty folder", "a file", "broken model.json"])
def test_from_that_is_not_a_checkpoint(case, tmp_path, capsys):
    source = tmp_path / "ckpt"
    if case == "empty folder":
        source.mkdir()
    elif case == "a file":
        source.write_text("weights?")
    elif case == "broken model.json":
        source.mkdir()
        (source / "model.json").write_text("{not json")
    out = tmp_path / "out"
    refused(["--from", str(source), "--out", str(out), *FAST], capsys, "--from", str(source))
    assert nothing_written(out)


def test_from_and_config_together(noise_student, tmp_path, capsys):
    refused(["--from", str(noise_student["ckpt"]), "--config", "cub", "--out", str(tmp_path / "o"), *FAST], capsys,
            "--from", "--config")


@pytest.mark.parametrize("options, expected", [
    (["--formats", "tflite,pdf"], "pdf"),
    (["--precisions", "int4"], "int4"),
    (["--formats", "onnx", "--precisions", "dynamic"], "onnx files come in"),
    (["--threads", "-1"], "--threads"),
    (["--latency-runs", "1"], "--latency-runs"),
    (["--min-mean-cos", "1.5"], "--min-mean-cos"),
    (["--formats", "onnx", "--gallery", "photos"], "--gallery needs a TFLite file"),
    (["--precisions", "fp32", "--qat"], "add int8 to --precisions"),
    (["--precisions", "int8", "--qat"], "records none"),  # the noise student was not distilled
    (["--unlabeled", "photos"], "--from ships a trained checkpoint"),
])
def test_options_no_ship_could_mean(options, expected, noise_student, tmp_path, capsys):
    out = tmp_path / "out"
    refused(["--from", str(noise_student["ckpt"]), "--out", str(out), *FAST, *options], capsys, expected)
    assert nothing_written(out)


def test_a_format_whose_packages_are_missing(noise_student, tmp_path, capsys, monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "onnxruntime" else real(name, *a))
    out = tmp_path / "out"
    refused(["--from", str(noise_student["ckpt"]), "--out", str(out), *FAST], capsys,
            "--formats onnx", "onnxruntime is not installed", "pip install")
    assert nothing_written(out)


@pytest.mark.skipif(sys.platform == "darwin", reason="Core ML predicts on macOS")
def test_coreml_off_macos_is_said_to_be_structural_only():
    pytest.importorskip("coremltools")
    from ship.plan import structural_only

    assert structural_only([("coreml", "fp32"), ("onnx", "fp32")]) == {"coreml"}


def test_an_unwritable_out(noise_student, tmp_path, capsys):
    (tmp_path / "a-file").write_text("x")
    refused(["--from", str(noise_student["ckpt"]), "--out", str(tmp_path / "a-file" / "out"), *FAST], capsys,
            "is a file, not a folder")
    if os.path.isdir("/proc/self"):  # a folder no one can create files in, even root
        refused(["--from", str(noise_student["ckpt"]), "--out", "/proc/self/mobilekd-out", *FAST], capsys,
                "not writable")


def test_an_out_holding_other_files_is_not_replaced(noise_student, tmp_path, capsys):
    out = tmp_path / "out"
    out.mkdir()
    (out / "thesis.tex").write_text("mine")
    refused(["--from", str(noise_student["ckpt"]), "--out", str(out), *FAST], capsys, "thesis.tex", "refusing")
    assert [p.name for p in out.iterdir()] == ["thesis.tex"]
    assert not out.with_name("out.work").exists()


def test_a_second_ship_into_the_same_out_while_one_runs(noise_student, tmp_path, capsys):
    out = tmp_path / "out"
    lock = tmp_path / ".mobilekd.out.lock"  # what a running ship holds (mobilekd.io.lock_folder, beside=True)
    fd = os.open(lock, os.O_RDWR | os.O_CREAT)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        os.write(fd, json.dumps({"pid": 4242, "host": "here", "command": "mobilekd ship --out out"}).encode())
        refused(["--from", str(noise_student["ckpt"]), "--out", str(out), *FAST], capsys, "in use by another run",
                "pid 4242")
    finally:
        os.close(fd)
    assert nothing_written(out)


def test_a_failing_gate_stops_before_anything_is_published(noise_student, tmp_path, capsys):
    out = tmp_path / "out"
    out.mkdir()  # a previous bundle: it must survive the failed ship unchanged
    (out / "MODEL_CARD.md").write_text("the previous bundle")
    mark_owned(out, MARKER, TOOL)
    # fp32 ONNX matches the float model exactly (R@1 drop 0), so a maximum drop of -1 cannot pass
    line = refused(["--from", str(noise_student["ckpt"]), "--out", str(out), *FAST, "--max-r1-drop", "-1"], capsys,
                   "onnx fp32 failed its parity gate", "Recall@1 drop", "nothing was published")
    assert str(out) in line
    assert sorted(p.name for p in out.iterdir()) == [MARKER, "MODEL_CARD.md"]
    assert (out / "MODEL_CARD.md").read_text() == "the previous bundle"
    assert not (out.with_name("out.work") / "exports" / "onnx-fp32" / "model.onnx").exists()


def test_a_student_that_training_made_worse_is_not_shipped(noise_student, tmp_path, capsys):
    import shutil

    ckpt = tmp_path / "worse"
    shutil.copytree(noise_student["ckpt"], ckpt)
    meta = json.loads((ckpt / "model.json").read_text())
    meta.update(metrics={"R@1": 40.0, "MAP@R": 9.0}, untrained_metrics={"R@1": 50.0, "MAP@R": 10.0},
                below_untrained=True)
    (ckpt / "model.json").write_text(json.dumps(meta))
    out = tmp_path / "out"
    refused(["--from", str(ckpt), "--out", str(out), *FAST], capsys, "made the student worse", "40.00", "50.00",
            "--allow-regression")
    assert not out.exists()
