"""export.qat: BatchNorm folding is exact, QAT writes a loadable checkpoint of the same architecture whose
weights sit on the int8 grid, and bad input is one error line."""

from __future__ import annotations

import json

import pytest
import torch

from conftest import write_noise_classes
from mobilekd.models import create_model, load_model, save_model

SIZE = 32


@pytest.fixture(scope="module")
def student(tmp_path_factory):
    root = tmp_path_factory.mktemp("qat")
    data = write_noise_classes(root / "images")
    torch.manual_seed(0)
    model = create_model("mobilenetv1_025", embed_dim=16, size=SIZE)
    with torch.no_grad():  # non-trivial BatchNorm statistics, so folding has something to fold
        for module in model.modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                module.running_mean.uniform_(-0.5, 0.5), module.running_var.uniform_(0.5, 2.0)
                module.weight.uniform_(0.5, 1.5), module.bias.uniform_(-0.2, 0.2)
    return save_model(model, root / "student", {"config": {"data": str(data), "train_fraction": 0.5}})


def test_fold_batchnorm_is_exact(student):
    from export.qat import fold_batchnorm

    model = load_model(student).eval()
    folded = fold_batchnorm(model)
    x = torch.randn(3, 3, SIZE, SIZE)
    with torch.no_grad():
        torch.testing.assert_close(folded(x), model(x), atol=1e-5, rtol=1e-4)
    bns = [m for m in folded.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    assert bns and all(torch.all(m.weight == 1) and torch.all(m.running_mean == 0) for m in bns)
    assert set(folded.state_dict()) == set(model.state_dict())  # same keys: saves as the same architecture


def test_qat_writes_an_int8_grid_checkpoint(student, tmp_path, capsys):
    from export.qat import main, quantize_weight

    out = tmp_path / "qat"
    assert main([str(student), "--out", str(out), "--epochs", "2", "--images", "8", "--batch-size", "8",
                 "--parity-images", "0", "--threads", "1"]) == 0
    model = load_model(out)
    assert model.spec.arch == "mobilenetv1_025" and model.embed_dim == 16
    for module in model.modules():
        if isinstance(module, (torch.nn.Conv2d, torch.nn.Linear)):
            torch.testing.assert_close(quantize_weight(module.weight.data), module.weight.data, atol=1e-7, rtol=0)
    meta = json.loads((out / "model.json").read_text())
    record = meta["qat"]
    assert record["epochs"] == 2 and len(record["loss_history"]) == 2 and record["train_views"] == 16
    assert 0 < record["vs_original_test"]["mean_cos"] <= 1 and "r1_qat" in record["vs_original_test"]
    assert meta["config"]["data"]  # exporters still find the data
    assert not (tmp_path / "qat.qat-state.pt").exists()  # the resume state is gone once finished
    assert "QAT float vs original" in capsys.readouterr().out


def test_qat_bad_input(student, tmp_path, capsys):
    from export.qat import main

    assert main([str(student), "--out", str(student)]) == 2
    assert "must differ" in capsys.readouterr().err
    assert main([str(tmp_path / "missing"), "--out", str(tmp_path / "x")]) == 2
    assert "checkpoint not found" in capsys.readouterr().err
    assert main([str(student), "--out", str(tmp_path / "y"), "--epochs", "0"]) == 2
    assert "--epochs" in capsys.readouterr().err
