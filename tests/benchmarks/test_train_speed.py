"""benchmarks.train_speed: images/s of a training step per setting, and whether the setting still computes the
same step (its whole-gradient error against float64 NCHW eager)."""

import json

import pytest

from benchmarks.train_speed import main


def test_tiny_run_reports_rates_and_tells_exact_settings_from_inexact_ones(tmp_path, capsys):
    """One real (tiny) benchmark run: every case gets a measured rate, and the gradient-error column separates
    a setting that computes the float32 step (eager) from one that does not (bf16 autocast, 8-bit mantissa):
    were autocast not applied, or the reference compared against the wrong parameters, the two would not
    differ by orders of magnitude."""
    out = tmp_path / "speed"
    assert main(["--sizes", "32", "--threads", "1", "--settings", "eager,bf16", "--batch", "4", "--steps", "1",
                 "--rounds", "1", "--warmup", "0", "--out", str(out)]) == 0
    result = json.loads(out.with_suffix(".json").read_text())
    assert [(r["size"], r["threads"], r["setting"]) for r in result["rows"]] == [(32, 1, "eager"), (32, 1, "bf16")]
    assert all(r["images_per_s_median"] > 0 and r["images_per_s_min"] > 0 for r in result["rows"])
    errors = result["gradient_error_vs_float64"]
    assert errors["eager"] < 1e-3 and errors["bf16"] > 1e-2 and errors["bf16"] > 100 * errors["eager"]
    table = out.with_suffix(".md").read_text()
    assert table in capsys.readouterr().out and "| 32 | 1 | bf16 |" in table
    assert f"{errors['bf16']:.1e} |" in table and "| 1.00x |" in table  # eager against itself


@pytest.mark.parametrize("argv, message", [
    (["--sizes", "16"], "--sizes must be >= 32"),
    (["--settings", "eager,fp8"], "fp8"),
])
def test_bad_options_exit_2(argv, message, capsys):
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("error:") and message in err


def test_engine_mode_needs_a_teacher_cache(tmp_path, capsys):
    assert main(["--engine-cache", str(tmp_path / "none"), "--data", str(tmp_path)]) != 0
    assert "needs --data and a teacher cache folder" in capsys.readouterr().err
    assert main(["--engine-cache", str(tmp_path), "--data", str(tmp_path), "--sizes", "128,big"]) != 0
    assert "--sizes and --threads take comma-separated integers" in capsys.readouterr().err
