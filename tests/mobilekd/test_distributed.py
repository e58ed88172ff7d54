"""A real 2-process torchrun (gloo, CPU) distillation against the same run in one process."""

import json
import os
import shutil
import subprocess
import sys

import pytest


def _distill_args(data, out):
    return ["-m", "mobilekd.distill", "--data", str(data), "--out", str(out), "--student-size", "32",
            "--embed-dim", "16", "--teacher-size", "32", "--views", "2", "--epochs", "2", "--batch-classes", "4",
            "--images-per-class", "4", "--steps-per-epoch", "3", "--metric-loss", "none", "--absolute-weight", "1",
            "--eval-every", "1", "--no-progress", "--threads", "1", "--head-bn"]


@pytest.mark.skipif(shutil.which("torchrun", path=os.path.dirname(sys.executable)) is None,
                    reason="torchrun not installed beside this python")
@pytest.mark.slow  # two torchrun worker processes and a reference run: 26-47 s on 2 cores
def test_two_process_gloo_run_matches_one_process(folder_dataset, tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    single = subprocess.run([sys.executable, *_distill_args(folder_dataset, tmp_path / "one")],
                            capture_output=True, text=True, timeout=300, env=env)
    assert single.returncode == 0, single.stderr[-2000:]
    torchrun = os.path.join(os.path.dirname(sys.executable), "torchrun")
    double = subprocess.run([torchrun, "--standalone", "--nproc_per_node", "2",
                             *_distill_args(folder_dataset, tmp_path / "two")],
                            capture_output=True, text=True, timeout=300, env=env)
    assert double.returncode == 0, double.stderr[-3000:]
    one = json.loads((tmp_path / "one" / "history.json").read_text())
    two = json.loads((tmp_path / "two" / "history.json").read_text())
    assert [h["epoch"] for h in two] == [1, 2]
    # same global batches split over two ranks, gradients averaged by DDP: the per-sample absolute loss
    # differs only through per-rank BatchNorm statistics
    for a, b in zip(one, two):
        assert b["loss_absolute"] == pytest.approx(a["loss_absolute"], rel=0.05)
    manifest = json.loads((tmp_path / "two" / "teacher_cache" / "manifest.json").read_text())
    assert manifest["complete"] and len(list((tmp_path / "two" / "teacher_cache" / "chunks").iterdir())) == 1
    assert (tmp_path / "two" / "model.safetensors").is_file()
