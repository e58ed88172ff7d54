"""benchmarks.train_speed judges a faster setting by its gradients too (float64 NCHW reference)."""

from benchmarks.train_speed import gradient_error


def test_eager_float32_gradients_match_float64():
    assert gradient_error("mobilenetv1_025", "eager", size=32, batch=12) < 1e-3


def test_bf16_autocast_is_measured_as_different():
    # bf16 has an 8-bit mantissa: its gradients must show a clearly larger error than float32 eager
    assert gradient_error("mobilenetv1_025", "bf16", size=32, batch=12) > 1e-2


def test_engine_mode_needs_a_teacher_cache(tmp_path, capsys):
    from benchmarks.train_speed import main

    assert main(["--engine-cache", str(tmp_path / "none"), "--data", str(tmp_path)]) != 0
    assert "needs --data and a teacher cache folder" in capsys.readouterr().err
    assert main(["--engine-cache", str(tmp_path), "--data", str(tmp_path), "--sizes", "128,big"]) != 0
    assert "--sizes and --threads take comma-separated integers" in capsys.readouterr().err
