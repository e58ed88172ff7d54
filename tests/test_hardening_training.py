"""Hardening of training runs and weight imports: a finished run is not replaced without --overwrite, a resumed
run refuses a learning rate it would ignore, imports refuse sizes distill refuses, and hostile data, options,
state files and destinations (full or read-only disks, over-long names, devices and FIFOs named like images)
end in one ``error:`` line (exit 2) with nothing half-written and nothing deleted."""

from __future__ import annotations

import errno
import os
import shutil
import threading

import numpy as np
import pytest
import torch

from mobilekd.distill import main as distill_main
from conftest import SHARED, make_image

FAST = ["--student-size", "32", "--embed-dim", "8", "--teacher", "none", "--absolute-weight", "0", "--views", "1",
        "--epochs", "1", "--steps-per-epoch", "1", "--batch-classes", "2", "--images-per-class", "2",
        "--threads", "1", "--no-progress", "--preload", "32"]
TFLITE = os.path.join(os.environ.get("MOBILEKD_SHARED", SHARED), "weights", "mobilenet_v1_0.25_224.tflite")
needs_tflite = pytest.mark.skipif(not os.path.isfile(TFLITE), reason="../shared/weights is not present")


def one_error_line(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: "), err
    return err[0]


def snapshot(folder) -> dict:
    """relative path -> bytes of every file under ``folder`` (but the folder lock, which a failed in-process run
    holds until the process exits)."""
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*"))
            if p.is_file() and p.name != ".mobilekd.lock"}


def distill(data, out, *extra) -> int:
    return distill_main(["--data", str(data), "--out", str(out), *FAST, *map(str, extra)])


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
    """A folder as a finished ``mobilekd.distill`` run leaves it (1 metric-only step at lr 0.002), and its data."""
    root = tmp_path_factory.mktemp("finished")
    for c in range(4):
        for i in range(3):
            make_image(str(root / "data" / f"class_{c}" / f"{i}.png"), seed=c * 10 + i, label_color=(60 * c, 40, 9))
    assert distill(root / "data", root / "run", "--lr", "0.002") == 0
    return root / "data", root / "run"


@pytest.fixture
def run_copy(finished_run, tmp_path):
    data, run = finished_run
    shutil.copytree(run, tmp_path / "run")
    return data, tmp_path / "run"


# ------------------------------------------------------------------------------ 1. --out of another run


def test_a_finished_run_is_not_replaced_without_overwrite(run_copy, capsys):
    data, run = run_copy
    before = snapshot(run)
    assert distill(data, run, "--seed", "1") == 2
    line = one_error_line(capsys)
    assert "--overwrite" in line and "--resume" in line
    assert snapshot(run) == before


def test_overwrite_replaces_only_the_runs_files(run_copy, capsys):
    data, run = run_copy
    (run / "notes.txt").write_text("mine")
    old = (run / "model.safetensors").read_bytes()
    assert distill(data, run, "--seed", "1") == 2  # a file the run did not write: refused without --overwrite
    assert "notes.txt" in one_error_line(capsys)
    assert distill(data, run, "--seed", "1", "--overwrite") == 0
    assert (run / "notes.txt").read_text() == "mine"
    assert (run / "model.safetensors").read_bytes() != old


def test_a_users_config_json_is_never_replaced(folder_dataset, tmp_path, capsys):
    out = tmp_path / "out"
    out.mkdir()
    (out / "config.json").write_text('{"mine": 1}\n')
    for extra in ([], ["--overwrite"]):
        assert distill(folder_dataset, out, *extra) == 2
        assert "config.json" in one_error_line(capsys)
        assert snapshot(out) == {"config.json": b'{"mine": 1}\n'}


def test_a_run_nested_in_out_is_neither_refused_nor_touched(run_copy, tmp_path):
    """A run inside ``--out`` (a pre-training stage: benchmarks/distill_cub.py's ``OUT/stage1``) is a run's folder,
    not the user's files."""
    data, run = run_copy
    outer = tmp_path / "outer"
    outer.mkdir()
    shutil.move(run, outer / "stage1")
    before = snapshot(outer / "stage1")
    assert distill(data, outer) == 0
    assert snapshot(outer / "stage1") == before


def test_overwrite_is_a_config_file_key(tmp_path):
    from mobilekd.config import Config

    (tmp_path / "c.yaml").write_text("overwrite: true\n")
    assert Config.from_dict(Config.from_file(tmp_path / "c.yaml")).overwrite is True
    assert Config().overwrite is False


# ------------------------------------------------------------------------------ 2. --resume --lr


def test_resume_with_another_lr_is_refused(run_copy, capsys):
    data, run = run_copy
    before = snapshot(run)
    assert distill(data, run, "--resume", "--epochs", "2", "--lr", "0.05") == 2
    assert "lr" in one_error_line(capsys)
    assert snapshot(run) == before


# ------------------------------------------------------------------------------ 3. weights import --size


def _some_file(tmp_path):
    """A file named like a classifier: the refusals below come before it is read."""
    (tmp_path / "m.tflite").write_bytes(b"TFL3 not read")
    return str(tmp_path / "m.tflite")


def test_weights_import_refuses_the_sizes_distill_refuses(tmp_path, capsys):
    from mobilekd.weights import main as weights_main

    assert weights_main(["import", _some_file(tmp_path), "--arch", "mobilenetv1_025", "--out", str(tmp_path / "w"),
                         "--size", "8"]) == 2
    assert "too small" in one_error_line(capsys)
    assert not (tmp_path / "w").exists()


# ------------------------------------------------------------------------------ 4. tracebacks -> one line


def test_a_non_utf8_image_name_trains_with_a_teacher_cache(folder_dataset, tmp_path):
    """Linux file names are bytes: one that is not UTF-8 is an image like any other (the teacher cache's
    fingerprint failed on it)."""
    bad = os.path.join(os.fsencode(folder_dataset / "class_0"), b"caf\xe9.png")
    shutil.copyfile(folder_dataset / "class_0" / "0.png", bad)
    assert distill(folder_dataset, tmp_path / "out", "--teacher", "efficientnet_lite0", "--teacher-size", "32",
                   "--absolute-weight", "1") == 0
    assert (tmp_path / "out" / "teacher_cache").is_dir()


def test_an_unreadable_non_utf8_image_is_listed_in_one_error_line(folder_dataset, tmp_path, capsys):
    bad = os.path.join(os.fsencode(folder_dataset / "class_0"), b"caf\xe9.png")
    with open(bad, "wb") as handle:
        handle.write(b"not an image")
    assert distill(folder_dataset, tmp_path / "out") == 2
    assert "1 unreadable image" in one_error_line(capsys)
    assert bad in (tmp_path / "out" / "unreadable_images.txt").read_bytes()


def _cub(root, images: bytes, labels: bytes):
    for i in (1, 2):
        make_image(str(root / "images" / f"{i}.png"), seed=i)
    (root / "images.txt").write_bytes(images)
    (root / "image_class_labels.txt").write_bytes(labels)
    return root


@pytest.mark.parametrize("layout", ["cub_label", "cub_binary", "sop_class", "cars_no_annotations"])
def test_malformed_layout_files_are_one_error_line(layout, tmp_path, capsys):
    root = tmp_path / "data"
    root.mkdir()
    if layout == "cub_label":
        _cub(root, b"1 1.png\n2 2.png\n", b"1 bird\n2 1\n")
    elif layout == "cub_binary":
        _cub(root, b"1 \xff\xfe\x00\x81.png\n", b"1 1\n")
    elif layout == "sop_class":
        (root / "Ebay_train.txt").write_text("image_id class_id super_class_id path\n1 abc 1 a/1.png\n")
    else:
        from scipy.io import savemat

        savemat(str(root / "cars_annos.mat"), {"class_names": np.array(["a", "b"], dtype=object)})
    assert distill(root, tmp_path / "out") == 2
    one_error_line(capsys)


def _guard_special_files(monkeypatch):
    """Opening a device or a FIFO as an image fails the test (an unbounded read, or a hang) instead of
    happening."""
    import builtins
    import stat

    real_open = builtins.open

    def guarded(file, *args, **kwargs):
        if isinstance(file, (str, bytes, os.PathLike)) and os.path.exists(file) \
                and not stat.S_ISREG(os.stat(file).st_mode) and not os.path.isdir(file):
            raise AssertionError(f"opened the special file {file}")
        return real_open(file, *args, **kwargs)

    monkeypatch.setattr(builtins, "open", guarded)


def test_a_device_or_fifo_named_like_an_image_is_refused_unopened(folder_dataset, tmp_path, capsys, monkeypatch):
    os.symlink("/dev/zero", folder_dataset / "class_0" / "zero.png")
    os.mkfifo(folder_dataset / "class_1" / "pipe.png")
    _guard_special_files(monkeypatch)
    done = {}
    worker = threading.Thread(target=lambda: done.update(rc=distill(folder_dataset, tmp_path / "out")), daemon=True)
    worker.start()
    worker.join(60)
    if worker.is_alive():  # unblock the hung open() of the FIFO so the thread can end
        with open(os.open(folder_dataset / "class_1" / "pipe.png", os.O_WRONLY | os.O_NONBLOCK), "wb"):
            pass
    assert done.get("rc") == 2
    line = one_error_line(capsys)
    assert "zero.png" in line and "pipe.png" in line and "not a regular file" in line


def test_an_oversized_image_file_is_not_read_whole(folder_dataset, monkeypatch):
    from mobilekd.data import image_sets

    monkeypatch.setattr(image_sets, "MAX_IMAGE_BYTES", 100)
    images = image_sets.load_image_set(folder_dataset)
    assert "larger than" in images.check_image(0)


@pytest.mark.parametrize("flags", [["--seed", "-1"], ["--seed", str(2 ** 70)], ["--device", "tpu"],
                                   ["--device", "cuda:x"]])
def test_out_of_range_seed_and_unknown_device_are_one_error_line(flags, folder_dataset, tmp_path, capsys):
    assert distill(folder_dataset, tmp_path / "out", *flags) == 2
    assert flags[0] in one_error_line(capsys)
    assert not (tmp_path / "out").exists()


def test_out_of_range_seed_from_yaml_is_refused(folder_dataset, tmp_path, capsys):
    (tmp_path / "c.yaml").write_text(f"seed: {2 ** 70}\n")
    assert distill_main(["--config", str(tmp_path / "c.yaml"), "--data", str(folder_dataset),
                         "--out", str(tmp_path / "out"), *FAST]) == 2
    assert "--seed" in one_error_line(capsys)


def _truncate(path):
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


class NotAState:  # a pickled object of a class weights_only=True refuses to build
    pass


def _foreign_pickle(path):
    torch.save({"epoch": NotAState()}, path)


@pytest.mark.parametrize("damage", [_truncate, _foreign_pickle])
def test_resume_from_a_damaged_state_file_is_one_error_line(damage, run_copy, capsys):
    data, run = run_copy
    damage(run / "train_state.pt")
    before = snapshot(run)
    assert distill(data, run, "--resume", "--epochs", "2") == 2
    line = one_error_line(capsys)
    assert "train_state.pt" in line and "damaged" in line and "weights_only" not in line
    assert snapshot(run) == before


def _no_space(*args, **kwargs):
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


@pytest.mark.parametrize("target", ["torch.save", "mobilekd.models.checkpoint.save_file"])
def test_a_full_disk_while_saving_is_one_error_line_and_leaves_no_temporary_file(target, folder_dataset, tmp_path,
                                                                                  capsys, monkeypatch):
    monkeypatch.setattr(target, _no_space)
    out = tmp_path / "out"
    assert distill(folder_dataset, out) == 2
    assert "No space left" in one_error_line(capsys)
    assert not [p for p in out.iterdir() if p.name.endswith(".tmp")]


def test_an_out_name_over_255_bytes_is_one_error_line(folder_dataset, tmp_path, capsys):
    assert distill(folder_dataset, tmp_path / ("a" * 300) / "run") == 2
    assert "too long" in one_error_line(capsys)


def test_weights_import_into_a_file_is_refused_before_the_work(tmp_path, capsys):
    from mobilekd.weights import main as weights_main

    (tmp_path / "taken").write_text("mine")
    assert weights_main(["import", _some_file(tmp_path), "--arch", "mobilenetv1_025",
                         "--out", str(tmp_path / "taken")]) == 2
    assert "not a folder" in one_error_line(capsys)
    assert (tmp_path / "taken").read_text() == "mine"


def test_weights_import_on_a_read_only_file_system_is_one_error_line(tmp_path, capsys, monkeypatch):
    import tempfile

    from mobilekd.weights import main as weights_main

    model = _some_file(tmp_path)

    def read_only(*args, **kwargs):
        raise OSError(errno.EROFS, os.strerror(errno.EROFS))

    monkeypatch.setattr(tempfile, "mkstemp", read_only)
    monkeypatch.setattr(tempfile, "TemporaryFile", read_only)
    assert weights_main(["import", model, "--arch", "mobilenetv1_025", "--out", str(tmp_path / "w")]) == 2
    assert "Read-only" in one_error_line(capsys)
    assert [p.name for p in tmp_path.iterdir()] == ["m.tflite"]


@needs_tflite
def test_weights_import_on_a_full_disk_is_one_error_line(tmp_path, capsys, monkeypatch):
    from mobilekd.weights import main as weights_main

    monkeypatch.setattr("mobilekd.models.checkpoint.save_file", _no_space)
    assert weights_main(["import", TFLITE, "--arch", "mobilenetv1_025", "--out", str(tmp_path / "w")]) == 2
    assert "No space left" in one_error_line(capsys)
    assert not (tmp_path / "w").exists() or not list((tmp_path / "w").iterdir())
