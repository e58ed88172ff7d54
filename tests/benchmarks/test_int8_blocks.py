"""benchmarks.int8_blocks: prefixes of a MobileNetV1 student, and each block's cost as a difference."""

import json

import pytest

from benchmarks import int8_blocks


def test_each_block_costs_its_prefix_minus_the_one_before():
    files = [{"fp32": f"f{k}", "int8": f"i{k}"} for k in range(3)]
    medians = {"f0": 0.10, "i0": 0.20, "f1": 0.30, "i1": 0.70, "f2": 0.302, "i2": 0.69}
    rows = int8_blocks.block_rows(files, medians, ["dw s1 8ch -> pw 16ch @ 64px", "dw s2 16ch -> pw 32ch @ 32px"])
    assert [r["part"].split(":")[0] for r in rows] == ["stem (3x3 conv, pool)", "block 1", "block 2"]
    assert rows[1]["fp32_ms"] == pytest.approx(0.2) and rows[1]["int8_ms"] == pytest.approx(0.5)
    assert rows[1]["int8_over_fp32"] == 2.5
    assert rows[2]["int8_over_fp32"] is None  # a block too cheap to measure gets no ratio, not noise


def test_prefixes_of_the_student_match_its_own_layers(noise_student):
    import torch

    from mobilekd.models import load_model

    model = load_model(noise_student["ckpt"]).eval()
    labels = int8_blocks.describe_blocks(model)
    assert len(labels) == 13 and labels[0].startswith("dw s1 8ch -> pw 16ch")
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        full = int8_blocks.prefix_module(model, 13)(x)
        pooled = model.backbone.forward_features(x).mean(dim=(2, 3))
    assert torch.allclose(full, pooled, atol=1e-5)  # prefix 13 is the whole backbone before its head


@pytest.mark.slow
def test_end_to_end_on_two_blocks(noise_student, tmp_path):
    assert int8_blocks.main([str(noise_student["ckpt"]), "--out", str(tmp_path), "--max-blocks", "1",
                             "--rounds", "3", "--warmup", "1", "--calib-images", "4"]) == 0
    result = json.loads((tmp_path / "int8_blocks.json").read_text())
    assert [r["part"][:5] for r in result["rows"]] == ["stem ", "block"] and result["machine"]
    assert (tmp_path / "README.md").read_text().startswith("# int8 vs fp32 TFLite, block by block")
