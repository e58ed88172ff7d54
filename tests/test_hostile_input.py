"""Hostile-but-realistic input (issue 14): a second writer, broken images, unwritable outputs, mistyped
config values, non-finite options, 16-bit images -- each one clear ``error:`` line and exit 2 before any
work, never a traceback, a lost run or a silently different result."""

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from mobilekd.config import Config
from mobilekd.data.image_sets import load_image_set
from mobilekd.distill import main as distill_main
from mobilekd.engine import Trainer
from mobilekd.errors import MobileKDError
from mobilekd.models import create_model, save_model
from conftest import tiny_config

ROOT = str(Path(__file__).resolve().parents[1])
# a metric-only run: no teacher to load, 1 step -- what is tested happens before or right after training
FAST = ["--student-size", "32", "--embed-dim", "8", "--teacher", "none", "--absolute-weight", "0", "--views", "1",
        "--epochs", "1", "--steps-per-epoch", "1", "--batch-classes", "2", "--images-per-class", "2",
        "--threads", "1", "--no-progress", "--preload", "32"]


def one_error_line(capsys) -> str:
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), lines
    return lines[0]


# ------------------------------------------------------------------------------------- 1. one run per folder

# the other writer: takes the locks and waits (mobilekd/io.py loaded alone, so it starts without torch)
HOLD = ("import importlib.util, sys\n"
        "spec = importlib.util.spec_from_file_location('io_alone', 'mobilekd/io.py')\n"
        "io = importlib.util.module_from_spec(spec); spec.loader.exec_module(io)\n"
        "for folder in sys.argv[1:]: io.lock_folder(folder, beside=folder.endswith('export'))\n"
        "print('held', flush=True); sys.stdin.read()")


def test_a_second_writer_is_refused_naming_the_holder_and_a_killed_holder_frees_the_folder(folder_dataset,
                                                                                            tmp_path, capsys):
    from mobilekd.io import lock_folder, unlock_folder

    out, cache, export = tmp_path / "run", tmp_path / "cache", tmp_path / "export"
    checkpoint = save_model(create_model("mobilenetv1_025", embed_dim=8, size=32), tmp_path / "ckpt")
    holder = subprocess.Popen([sys.executable, "-c", HOLD, str(out), str(cache), str(export)], cwd=ROOT,
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
                              env={**os.environ, "PYTHONPATH": ROOT})
    try:
        assert holder.stdout.readline().strip() == "held"  # the other process owns all three folders now
        assert distill_main(["--data", str(folder_dataset), "--out", str(out), *FAST]) == 2
        line = one_error_line(capsys)
        assert f"pid {holder.pid}" in line and "in use by another run" in line and "since" in line
        assert not (out / "model.safetensors").exists()

        from mobilekd.embed import main as embed_main
        assert embed_main(["--data", str(folder_dataset), "--teacher-cache", str(cache), "--views", "1"]) == 2
        assert f"pid {holder.pid}" in one_error_line(capsys)

        from export.onnx import main as onnx_main
        assert onnx_main([str(checkpoint), "--out", str(export)]) == 2
        assert f"pid {holder.pid}" in one_error_line(capsys)
    finally:
        holder.kill()  # kill -9: the OS releases the lock, no stale lock file blocks the next run
        holder.wait()
    lock_folder(out)
    unlock_folder(out)
    assert distill_main(["--data", str(folder_dataset), "--out", str(out), *FAST]) == 0
    assert not (out / ".mobilekd.lock").exists()  # released at the end of the run


# ------------------------------------------------------------------------------------- 2. broken images


def _break(path: Path) -> None:
    path.write_bytes(b"this is not an image")


@pytest.mark.parametrize("preload", ["32", "0"])
def test_every_unreadable_image_of_both_splits_is_listed_before_training(folder_dataset, tmp_path, capsys,
                                                                         preload):
    broken = [folder_dataset / "class_0" / "1.png", folder_dataset / "class_6" / "2.png",
              folder_dataset / "class_7" / "3.png", folder_dataset / "class_7" / "4.png"]  # train + test split
    for path in broken:
        _break(path)
    out = tmp_path / "run"
    argv = ["--data", str(folder_dataset), "--out", str(out), *FAST, "--preload", preload, "--eval-every", "5"]
    assert distill_main(argv) == 2
    line = one_error_line(capsys)
    assert "4 unreadable image(s)" in line and str(broken[0]) in line and "--skip-bad-images" in line
    listed = (out / "unreadable_images.txt").read_text()
    assert all(str(path) in listed for path in broken)
    assert not (out / "model.safetensors").exists()  # nothing trained

    assert distill_main(argv + ["--skip-bad-images"]) == 0
    assert json.loads((out / "model.json").read_text())["skipped_images"] == 4
    assert json.loads((out / "metrics.json").read_text())["skipped_images"] == 4


def test_export_parity_images_are_all_checked_at_once(folder_dataset, tmp_path, capsys):
    from export.onnx import main as onnx_main

    for path in (folder_dataset / "class_6" / "0.png", folder_dataset / "class_7" / "5.png"):  # test split
        _break(path)
    checkpoint = save_model(create_model("mobilenetv1_025", embed_dim=8, size=32), tmp_path / "ckpt")
    assert onnx_main([str(checkpoint), "--data", str(folder_dataset), "--out", str(tmp_path / "x")]) == 2
    line = one_error_line(capsys)
    assert "2 unreadable image(s)" in line and "class_7/5.png" in line
    assert "class_7/5.png" in Path(line.split("full list in ")[1].split(". ")[0]).read_text()


def test_skip_bad_images_is_a_config_file_key(tmp_path):
    config = tmp_path / "c.yaml"
    config.write_text("skip_bad_images: true\n")
    assert Config.from_args(["--data", "x", "--config", str(config)]).skip_bad_images is True


# ------------------------------------------------------------------------------------- 3. output destinations


def test_unwritable_or_invalid_destinations_fail_before_the_work(folder_dataset, tmp_path, capsys, monkeypatch):
    a_file = tmp_path / "file"
    a_file.write_text("x")
    for out, message in (("/proc/x", "not writable"), (f"{a_file}/sub", "is a file, not a folder")):
        assert distill_main(["--data", str(folder_dataset), "--out", out, *FAST]) == 2
        assert message in one_error_line(capsys)

    import benchmarks.latency
    import benchmarks.recall
    from benchmarks.report import main as report_main

    def no_work(*args, **kwargs):
        raise AssertionError("measured before checking --out")

    monkeypatch.setattr(benchmarks.latency, "benchmark", no_work)
    monkeypatch.setattr(benchmarks.recall, "evaluate", no_work)
    assert benchmarks.latency.main(["mobilenetv1_025", "--out", "/proc/x/lat.json"]) == 2
    assert "not writable" in one_error_line(capsys)
    assert benchmarks.recall.main(["mobilenetv1_025", "--data", str(folder_dataset), "--out", "/proc/x/r.json"]) == 2
    assert "not writable" in one_error_line(capsys)
    assert report_main([str(a_file), "--out", str(a_file)]) == 2
    assert "is a file" in one_error_line(capsys)

    from export.onnx import main as onnx_main
    checkpoint = save_model(create_model("mobilenetv1_025", embed_dim=8, size=32), tmp_path / "ckpt")
    assert onnx_main([str(checkpoint), "--out", "/proc/x"]) == 2
    assert "not writable" in one_error_line(capsys)


# ------------------------------------------------------------------------------------- 4. config value types


def test_config_values_are_coerced_when_unambiguous_and_refused_otherwise(tmp_path):
    config = tmp_path / "c.yaml"
    config.write_text("lr: 1e-3\nepochs: '5'\nflip: 'false'\nteacher_size: null\ndomain: a=b\n")
    values = Config.from_args(["--data", "x", "--config", str(config)])
    assert values.lr == 0.001 and values.epochs == 5 and values.flip is False
    assert values.teacher_size is None and values.domain == ["a=b"]

    for text, key, expected in (('epochs: "two"\n', "epochs", "an integer"), ("lr: [1]\n", "lr", "a number"),
                                ("flip: maybe\n", "flip", "true or false"), ("epochs: 2.5\n", "epochs", "an integer")):
        config.write_text(text)
        with pytest.raises(MobileKDError, match=rf"'{key}'.*is not {expected}"):
            Config.from_args(["--data", "x", "--config", str(config)])

    binary = tmp_path / "binary.yaml"
    binary.write_bytes(bytes(range(256)) * 4)
    with pytest.raises(MobileKDError, match="not a text file"):
        Config.from_args(["--data", "x", "--config", str(binary)])


# ------------------------------------------------------------------------------------- 6. values that crash later


@pytest.mark.parametrize("flag,value", [("--lr", "nan"), ("--lr", "inf"), ("--weight-decay", "inf"),
                                        ("--kl-temperature", "nan")])
def test_non_finite_numbers_are_refused(flag, value):
    with pytest.raises(MobileKDError, match=rf"{flag} must be a finite number"):
        Config.from_args(["--data", "x", f"{flag}={value}"])


def test_too_small_inputs_and_zero_batches_are_refused(folder_dataset, tmp_path, capsys):
    assert distill_main(["--data", str(folder_dataset), "--out", str(tmp_path / "r"), *FAST[2:],
                         "--student-size", "4"]) == 2
    assert "at least 32 px" in one_error_line(capsys)

    from benchmarks.recall import main as recall_main
    assert recall_main(["mobilenetv1_025", "--data", str(folder_dataset), "--batch-size", "0"]) == 2
    assert "--batch-size must be >= 1" in one_error_line(capsys)


# ------------------------------------------------------------------------------------- 7. the non-finite stop


def test_a_loss_that_explodes_in_the_first_epoch_names_no_checkpoint(folder_dataset, tmp_path):
    config = tiny_config(folder_dataset, tmp_path / "r", epochs=1, lr=1e30, warmup_epochs=0, teacher=None,
                         absolute_weight=0.0, relative_weight=0.0, preload=32)
    with pytest.raises(MobileKDError, match="became") as error:
        Trainer(config).run()
    assert "no checkpoint was written" in str(error.value) and "last good checkpoint" not in str(error.value)


# ------------------------------------------------------------------------------------- 8. 16-bit images


def test_sixteen_bit_pngs_are_scaled_not_saturated(tmp_path):
    ramp = np.linspace(0, 65535, 64 * 32).round().astype(np.uint16).reshape(32, 64)
    path = tmp_path / "deep" / "c0" / "a.png"
    path.parent.mkdir(parents=True)
    Image.fromarray(ramp).save(path)
    assert Image.open(path).mode in ("I;16", "I")  # really a 16-bit file
    (tmp_path / "deep" / "c0" / "b.png").write_bytes(path.read_bytes())
    image = np.asarray(load_image_set(tmp_path / "deep").load_image(0))
    assert image.shape == (32, 64, 3) and image.dtype == np.uint8
    expected = np.rint(ramp / 257.0).astype(np.uint8)
    assert np.abs(image[..., 0].astype(int) - expected).max() <= 1
    assert math.isclose(image.mean(), 127.5, abs_tol=1.0)  # saturated decoding gave ~255


# ------------------------------------------------------------------------------------- 10. reused teacher cache


def test_a_reused_teacher_cache_gives_the_same_training_as_building_it(folder_dataset, tmp_path):
    built = Trainer(tiny_config(folder_dataset, tmp_path / "built", epochs=1, eval_every=10)).run()
    reused = Trainer(tiny_config(folder_dataset, tmp_path / "reused", epochs=1, eval_every=10,
                                 teacher_cache=str(tmp_path / "built" / "teacher_cache"))).run()
    assert built and reused
    losses = [[h["loss"] for h in json.loads((tmp_path / run / "history.json").read_text())]
              for run in ("built", "reused")]
    assert losses[0] == losses[1]
