"""export.qat: quantization-aware distillation of a tiny distilled student (the export tests' noise images)."""

from __future__ import annotations

import json

import pytest
import torch

from conftest import NOISE_SIZE


def _distilled(data, out, loss=("--kl-weight", "1")):
    from mobilekd.distill import main as distill_main

    assert distill_main(["--data", str(data), "--out", str(out), "--student-size", str(NOISE_SIZE),
                         "--embed-dim", "16", "--teacher", "efficientnet_lite0", "--teacher-size", "32",
                         "--views", "1", "--epochs", "1", "--steps-per-epoch", "2", "--batch-classes", "3",
                         "--images-per-class", "2", *loss, "--no-progress", "--threads", "1"]) == 0
    return out


@pytest.fixture(scope="module")
def distilled(tmp_path_factory, noise_student):
    return _distilled(noise_student["data"], tmp_path_factory.mktemp("qat") / "student")


def test_qat_run_leaves_weights_on_the_int8_grid_and_the_source_untouched(distilled, tmp_path):
    from export.qat import main
    from mobilekd.io import sha256_file
    from mobilekd.models import load_model

    before = sha256_file(distilled / "model.safetensors")
    out = tmp_path / "qat"
    assert main([str(distilled), "--out", str(out), "--epochs", "1", "--calib-images", "6"]) == 0
    assert sha256_file(distilled / "model.safetensors") == before
    record = json.loads((out / "model.json").read_text())["init_from"]
    assert record["rule"] == "export.qat" and record["sha256"] == before
    assert set(record["activation_ranges"]) >= {"input", "pool", "bn1"}
    assert all(low <= 0.0 <= high or low <= high for low, high in record["activation_ranges"].values())
    model = load_model(out)
    convs = [m for m in model.modules() if isinstance(m, torch.nn.Conv2d)]
    assert convs
    for conv in convs:  # what the quantizers store: w / (max|w| / 127) is an integer in every channel
        flat = conv.weight.detach().double().flatten(1)
        units = flat / (flat.abs().amax(1, keepdim=True).clamp_min(1e-12) / 127)
        assert torch.allclose(units, units.round(), atol=1e-3), conv
    for bn in (m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)):  # folded: a bias only
        assert torch.allclose(bn.weight, torch.ones_like(bn.weight)) and not bn.running_mean.any()


def test_any_loss_on_the_teachers_embeddings_gets_the_anchor(noise_student, tmp_path):
    """An RKD-only run (registry inputs "embeddings", no kl) is fine-tuned like a KL one."""
    from export.qat import main

    source = _distilled(noise_student["data"], tmp_path / "rkd", ("--rkd-distance-weight", "1"))
    assert main([str(source), "--out", str(tmp_path / "qat"), "--epochs", "1", "--calib-images", "6"]) == 0
    assert json.loads((tmp_path / "qat" / "model.json").read_text())["init_from"]["rule"] == "export.qat"


def test_simulation_rounds_like_int8():
    from export.qat import ActivationPoint, PerChannelInt8, activation_qparams

    assert activation_qparams(0.0, 6.0) == pytest.approx((6.0 / 255, -128))
    scale, zero = activation_qparams(-1.0, 1.0)
    assert scale == pytest.approx(2.0 / 255) and zero in (-1, 0)
    point = ActivationPoint("x")
    x = torch.linspace(0.0, 6.0, 1000)
    assert torch.equal(point(x), x)  # observing: unchanged
    point.observing = False
    q = point(x)
    assert len(torch.unique(q)) <= 256 and (q - x).abs().max() <= 6.0 / 255 / 2 + 1e-6
    w = torch.randn(4, 3, 3, 3)
    wq = PerChannelInt8()(w)
    scale = w.abs().flatten(1).amax(1) / 127
    assert torch.allclose(wq.flatten(1) / scale[:, None], (wq.flatten(1) / scale[:, None]).round(), atol=1e-4)


def test_bad_input(distilled, noise_student, tmp_path, capsys):
    from export.qat import main

    for argv, words in (([str(tmp_path / "missing"), "--out", str(tmp_path / "o")], "not a run folder"),
                        ([str(noise_student["ckpt"]), "--out", str(tmp_path / "o")], "no distillation with a teacher"),
                        ([str(distilled), "--out", str(distilled)], "never modifies"),
                        ([str(distilled), "--out", str(tmp_path / "o"), "--epochs", "0"], "--epochs")):
        assert main(argv) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith("error: ") and words in err[0], err
        assert not (tmp_path / "o").exists()
