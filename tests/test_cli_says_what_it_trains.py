"""The command lines say what they train and measure (issue: the CLI's hidden absolute loss, evaluation without
training, the teacher's test pass cached, benchmark defaults, one precision vocabulary, honest latency floors,
quiet exports)."""

from __future__ import annotations

import json

import pytest
import yaml

import mobilekd.engine
from mobilekd.config import PACKAGED_CONFIGS, Config
from mobilekd.distill import main as distill_main
from mobilekd.losses import loss_specs
from conftest import tiny_config


def _configs_trained_by_distill(monkeypatch, argv) -> Config:
    """The Config ``python -m mobilekd.distill ARGV`` would train (the engine's ``train`` replaced)."""
    seen = []
    monkeypatch.setattr(mobilekd.engine, "train", lambda config: seen.append(config) or {"test": {"R@1": 1.0}})
    assert distill_main(argv) == 0
    return seen[0]


def test_distill_cli_yaml_and_api_share_the_absolute_loss_default(monkeypatch, tmp_path):
    config = _configs_trained_by_distill(monkeypatch, ["--data", "D", "--out", str(tmp_path / "r")])
    assert config.absolute_weight == Config().absolute_weight == 0.0
    assert Config.from_dict({"data": "D"}).absolute_weight == 0.0


@pytest.mark.parametrize("name", sorted(p.stem for p in PACKAGED_CONFIGS.glob("*.yaml")))
def test_every_shipped_recipe_states_every_loss_weight(name, monkeypatch, tmp_path):
    keys = yaml.safe_load((PACKAGED_CONFIGS / f"{name}.yaml").read_text())
    assert {spec.weight_key for spec in loss_specs()} <= set(keys)
    config = _configs_trained_by_distill(monkeypatch, ["--config", name, "--out", str(tmp_path / "r")])
    assert config.absolute_weight == 0.0
    trained = {spec.name for spec in config.active_losses()}
    assert trained == ({"kl"} if name == "cub" else {"kl", "metric"})


def test_a_run_prints_its_losses_and_weights_when_it_starts(folder_dataset, tmp_path, capsys):
    mobilekd.engine.Trainer(tiny_config(folder_dataset, tmp_path / "r", teacher="none", absolute_weight=0.0,
                                        relative_weight=0.0, metric_weight=0.5))
    assert "losses: metric x 0.5 (normalized_softmax)\n" in capsys.readouterr().out
    line = Config(data="D", metric_weight=0.1, kl_weight=1.0).losses_line()
    assert line == "losses: metric x 0.1 (normalized_softmax), kl x 1.0 (temperature 0.1)"


# ------------------------------------------------------------------ python -m mobilekd.evaluate
def test_evaluate_a_checkpoint_and_its_exported_file_without_training(noise_student, exported, tmp_path, capsys):
    from mobilekd.evaluate import main as evaluate_main

    data, out = str(noise_student["data"]), tmp_path / "m.json"
    assert evaluate_main([str(noise_student["ckpt"]), "--data", data, "--out", str(out), "--threads", "1",
                          "--no-progress"]) == 0
    printed = capsys.readouterr().out
    assert "| model | R@1 | R@2 | R@4 | R@8 | MAP@R |" in printed
    saved = json.loads(out.read_text())
    assert saved["test"]["queries"] == 12 and f"{saved['test']['MAP@R']:.2f}" in printed
    onnx = exported("onnx") / "model.onnx"
    assert evaluate_main([str(onnx), "--data", data, "--threads", "1", "--no-progress"]) == 0
    row = capsys.readouterr().out.splitlines()[-1]
    assert row.startswith(f"| {onnx} |") and f"{saved['test']['MAP@R']:.2f}" in row  # fp32: same retrieval


def test_evaluate_a_pretrained_model_name_is_the_zero_shot_arm(folder_dataset, tmp_path, capsys):
    from mobilekd.engine import evaluate_untrained
    from mobilekd.evaluate import main as evaluate_main

    assert evaluate_main(["mobilenetv1_025", "--pretrained", "--size", "32", "--data", str(folder_dataset),
                          "--threads", "1", "--no-progress", "--preload", "64"]) == 0
    row = capsys.readouterr().out.strip().splitlines()[-1]
    zero_shot = evaluate_untrained(Config(data=str(folder_dataset), student="mobilenetv1_025", pretrained=True,
                                          student_size=32, teacher=None, out=str(tmp_path / "z"), threads=1,
                                          progress=False, preload=64))
    assert row == "| mobilenetv1_025 | " + " | ".join(f"{zero_shot[k]:.2f}" for k in
                                                       ("R@1", "R@2", "R@4", "R@8", "MAP@R")) + " |"


@pytest.mark.parametrize("argv, message", [
    (["missing.onnx"], "model file not found: missing.onnx"),
    (["no_such_model"], "unknown model 'no_such_model'"),
    (["mobilenetv1_025", "--size", "0"], "--size must be >= 1"),
])
def test_evaluate_bad_input_is_one_error_line(argv, message, folder_dataset, tmp_path, capsys):
    from mobilekd.evaluate import main as evaluate_main

    out = tmp_path / "m.json"
    assert evaluate_main([*argv, "--data", str(folder_dataset), "--out", str(out), "--threads", "1"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and message in err and err.count("\n") == 1 and not out.exists()


# ------------------------------------------------------------------ the teacher's test pass, cached
def test_a_second_run_reuses_the_teachers_test_embeddings(folder_dataset, tmp_path, monkeypatch, capsys):
    import numpy as np

    import mobilekd.engine.evaluation as evaluation

    calls = []
    real = evaluation.embed_image_set
    monkeypatch.setattr(evaluation, "embed_image_set", lambda *a, **k: calls.append(k.get("desc")) or real(*a, **k))
    small = dict(epochs=1, steps_per_epoch=1)
    first = mobilekd.engine.train(tiny_config(folder_dataset, tmp_path / "r1", **small))
    assert calls.count("eval teacher (main)") == 1
    cache = tmp_path / "r1" / "teacher_cache"
    assert (cache / "teacher_test.npz").is_file()
    calls.clear()
    second = mobilekd.engine.train(tiny_config(folder_dataset, tmp_path / "r2", teacher_cache=str(cache), **small))
    assert calls == ["eval student (main)"] and second["teacher"] == first["teacher"]
    assert f"teacher test embeddings: reusing {cache / 'teacher_test.npz'}" in capsys.readouterr().out

    # made from something else (here: other images): ignored, said so, embedded again and replaced
    with np.load(cache / "teacher_test.npz") as saved:
        identity = json.loads(str(saved["identity"]))
        np.savez(cache / "teacher_test.npz", embeddings=saved["embeddings"],
                 identity=np.array(json.dumps({**identity, "data_fingerprint": "other"})))
    calls.clear()
    third = mobilekd.engine.train(tiny_config(folder_dataset, tmp_path / "r3", teacher_cache=str(cache), **small))
    assert calls == ["eval student (main)", "eval teacher (main)"] and third["teacher"] == first["teacher"]
    assert "were made with another data_fingerprint: embedding the test split again" in capsys.readouterr().out


# ------------------------------------------------------------------ benchmarks.distill_cub: where and what
@pytest.mark.parametrize("title", [None, "Birds of paradise"])
def test_distill_cub_reports_into_its_run_folder_titled_by_its_data(title, tmp_path, monkeypatch):
    from benchmarks import distill_cub

    monkeypatch.setattr(distill_cub, "run_arm", lambda args, arm, seed, teacher_tests=None: {
        "test": {"R@1": 10.0, "MAP@R": 5.0, "queries": 5}, "teacher": {"R@1": 50.0, "MAP@R": 25.0}})
    monkeypatch.setattr(distill_cub, "build_cache", lambda config, folder: None)
    data = tmp_path / "garden_birds"
    data.mkdir()
    runs = tmp_path / "runs"
    assert distill_cub.main(["--data", str(data), "--out", str(runs), "--arms", "alone,kl",
                             *(["--title", title] if title else [])]) == 0
    report = (runs / "distill_cub.md").read_text()
    assert report.startswith(f"# Distillation on {title or 'garden_birds'} ") and "CUB-100" not in report
    assert json.loads((runs / "distill_cub.json").read_text())["rows"]


# ------------------------------------------------------------------ one precision vocabulary
@pytest.mark.parametrize("runtime", ["onnx", "tflite", "coreml"])
def test_every_exporter_speaks_one_precision_vocabulary(runtime):
    import importlib

    from export.common import build_parser

    fmt = importlib.import_module(f"export.{runtime}").FORMAT
    parser = build_parser(fmt)
    assert fmt.default_quantize == "fp32" and parser.parse_args(["CKPT"]).quantize == "fp32"
    assert {"fp32", "fp16", "int8"} <= set(fmt.quantize_choices) and "none" not in fmt.quantize_choices
    for word, precision in (("fp32", "fp32"), ("none", "fp32"), ("fp16", "fp16"), ("int8", "int8")):
        assert parser.parse_args(["CKPT", "--quantize", word]).quantize == precision  # old spellings: aliases
    if "dynamic" in fmt.quantize_choices:
        assert parser.parse_args(["CKPT", "--quantize", "dynamic-int8"]).quantize == "dynamic"


# ------------------------------------------------------------------ benchmarks.latency: only meaningful floors
def test_latency_reports_no_int8_floor_from_a_slow_int_mm_fallback():
    from benchmarks.latency import floor_fields, format_results

    macs, median = 5_000_000, 2.0
    slow = {"fp32": {"1": 40.0}, "int8": {"1": 1.2}}  # torch._int_mm's CPU fallback: ~1 GOPS
    fields = floor_fields(macs, median, "int8", slow, 1)
    assert fields["floor_ratio"] is None and "floor_ms" not in fields
    assert fields["floor_note"] == ("int8 floor: not measured meaningfully (torch._int_mm peak 1.2 GOPS below fp32 "
                                    "40.0 GFLOPS at 1 thread(s))")
    fp32 = floor_fields(macs, median, "fp32", slow, 1)
    assert fp32["floor_ms"] == pytest.approx(0.25) and fp32["floor_ratio"] == pytest.approx(8.0)
    fast = floor_fields(macs, median, "int8", {"fp32": {"1": 40.0}, "int8": {"1": 100.0}}, 1)
    assert fast["floor_ratio"] == pytest.approx(20.0) and fast["floor_precision"] == "int8"
    assert floor_fields(macs, median, "int8", {"fp32": {"1": 40.0}}, 1)["floor_ratio"] is None  # no _int_mm

    row = {"model": "m", "runtime": "litert-xnnpack", "threads": 1, "median_ms": median, **fields}
    text = format_results({"results": [row, dict(row, threads=2)], "not_runnable": []})
    assert "| - |" in text and "0.0" not in text.split("\n")[2]  # no ratio of 0.0
    assert text.count("int8 floor: not measured meaningfully") == 1


# ------------------------------------------------------------------ a quiet TFLite export
HARMLESS_NOISE = ("Failed to load", "_C_mxfp8", "is an Enum subclass", "LeafSpec", "absl::InitializeLog",
                  "Estimated count of arithmetic ops")


def test_quiet_conversion_drops_only_the_known_noise(caplog):
    import logging
    import warnings

    pytest.importorskip("litert_torch")
    from export.tflite import quiet_conversion

    caplog.clear()  # importing litert_torch above, outside a conversion, logged what it logs
    with warnings.catch_warnings(record=True) as caught, caplog.at_level(logging.WARNING):
        warnings.simplefilter("always")
        with quiet_conversion():
            _library_noise_and_real_problems()
    assert [str(w.message) for w in caught] == ["a real problem"]
    assert [r.getMessage() for r in caplog.records] == ["a real torchao warning"]
    logging.getLogger("torchao").warning("Failed to load again")  # outside the conversion: untouched
    assert caplog.records[-1].getMessage() == "Failed to load again"


def _library_noise_and_real_problems():
    import logging
    import warnings

    warnings.warn("`isinstance(treespec, LeafSpec)` is deprecated, use ...", FutureWarning)
    warnings.warn("a real problem", UserWarning)
    logging.getLogger("torchao").warning("Failed to load /x/torchao/_C_mxfp8.so: Could not load this library")
    logging.getLogger("torchao").warning("a real torchao warning")
    logging.getLogger("torch.utils._pytree").warning(
        "%s is an Enum subclass and is now natively supported by torch.compile", "<enum 'KernelPreference'>")


@pytest.mark.slow  # a real conversion in a fresh process (the import-time noise): ~35 s on 2 cores
def test_a_tflite_export_prints_no_known_library_noise(noise_student, tmp_path):
    import os
    import subprocess
    import sys

    pytest.importorskip("litert_torch")
    env = {k: v for k, v in os.environ.items() if k != "TF_CPP_MIN_LOG_LEVEL"}
    result = subprocess.run([sys.executable, "-m", "export.tflite", str(noise_student["ckpt"]), "--out",
                             str(tmp_path / "t"), "--threads", "1"], capture_output=True, text=True, timeout=600,
                            env=env)
    assert result.returncode == 0, result.stderr
    assert not [line for line in result.stderr.splitlines() if any(n in line for n in HARMLESS_NOISE)], result.stderr
