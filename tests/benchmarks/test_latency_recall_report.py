"""benchmarks: latency harness per runtime, recall with known answers, report, adb parsing, bad input."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch

from conftest import ROOT as REPO, make_image

ROOT = str(REPO)

BENCHMARK_MODEL_SAMPLE = """\
STARTING!
Log parameter values verbosely: [0]
Min num runs: [50]
Num threads: [4]
Graph: [/data/local/tmp/mobilekd/model_int8.tflite]
#threads used for CPU inference: [4]
Use xnnpack: [1]
Loaded model /data/local/tmp/mobilekd/model_int8.tflite
INFO: Initialized TensorFlow Lite runtime.
INFO: Created TensorFlow Lite XNNPACK delegate for CPU.
XNNPACK delegate created.
Explicitly applied XNNPACK delegate, and the model graph will be completely executed by the delegate.
The input model file size (MB): 0.301
Initialized session in 3.52ms.
Running benchmark for at least 1 iterations and at least 0.5 seconds but terminate if exceeding 150 seconds.
count=412 first=2051 curr=1178 min=1101 max=2051 avg=1213.4 std=95

Running benchmark for at least 50 iterations and at least 1 seconds but terminate if exceeding 150 seconds.
count=845 first=1190 curr=1160 min=1093 max=1702 avg=1179.85 std=61

Inference timings in us: Init: 3520, First inference: 2051, Warmup (avg): 1213.4, Inference (avg): 1179.85
Note: as the benchmark tool itself affects memory footprint, the following is only APPROXIMATE to the actual memory footprint of the model at runtime. Take the information at your one's discretion.
Memory footprint delta from the start of the tool (MB): init=2.75 overall=4.125
Overall peak memory footprint (MB) via periodic monitoring: 9.42188
"""


@pytest.fixture(scope="module")
def tiny_models(tmp_path_factory):
    """A tiny checkpoint and its .onnx / .tflite exports, each with a model.json contract."""
    import torch

    from mobilekd.models import create_model, save_model
    from mobilekd.runtime.contract import ModelContract, TensorSpec

    base = tmp_path_factory.mktemp("bench_models")
    torch.manual_seed(0)
    model = create_model("mobilenetv1_025", embed_dim=32, size=32).eval()
    ckpt = save_model(model, base / "tiny")
    x = torch.randn(1, 3, 32, 32)
    paths = {"checkpoint": str(ckpt)}
    onnx_dir, tfl_dir = base / "onnx", base / "tflite"
    onnx_dir.mkdir()
    tfl_dir.mkdir()
    torch.onnx.export(model, (x,), str(onnx_dir / "model.onnx"), dynamo=False, opset_version=17,
                      input_names=["input"], output_names=["embedding"])
    paths["onnx"] = str(onnx_dir / "model.onnx")
    try:
        import litert_torch

        litert_torch.convert(model, (x,)).export(str(tfl_dir / "model.tflite"))
        paths["tflite"] = str(tfl_dir / "model.tflite")
    except ImportError:
        pass
    for runtime, folder, name in (("onnx", onnx_dir, "input"), ("tflite", tfl_dir, "serving_default_args_0")):
        contract = ModelContract(f"model.{runtime}", runtime, "fp32",
                                 TensorSpec(name, [1, 3, 32, 32], "float32", "NCHW", None),
                                 TensorSpec("embedding", [1, 32], "float32", None, None, True), model.preprocess, 32,
                                 {"checkpoint": str(ckpt), "arch": "mobilenetv1_025"})
        (folder / "model.json").write_text(json.dumps(contract.to_dict()))
    mlpackage = base / "model.mlpackage"
    mlpackage.mkdir()
    paths["coreml"] = str(mlpackage)
    return paths


@pytest.fixture(scope="module")
def latency_result(tiny_models):
    from benchmarks.latency import benchmark

    specs = [tiny_models[k] for k in ("checkpoint", "onnx", "tflite", "coreml") if k in tiny_models]
    return benchmark(specs, [1], runs=6, warmup=1, compile=False, peak_repeats=2, progress=False)


@pytest.mark.slow  # default-run budget (issue 14): covered in make test-slow
def test_latency_structure_per_runtime(latency_result, tiny_models):
    result = latency_result
    assert result["kind"] == "latency" and result["format"] == "mobilekd-bench/1"
    machine = result["machine"]
    assert machine["cpu_model"] and machine["usable_cores"] >= 1 and machine["libraries"]["torch"]
    assert machine["fingerprint"] and result["load_average"]["after"] is not None or os.name != "posix"
    runtimes = {r["runtime"] for r in result["results"]}
    expected = {"torch-eager", "onnxruntime-cpu"} | ({"litert-xnnpack"} if "tflite" in tiny_models else set())
    assert expected <= runtimes
    for row in result["results"]:
        assert row["runs"] == 6 and row["threads"] == 1 and row["embed_dim"] == 32
        for key in ("median_ms", "p90_ms", "min_ms", "mean_ms"):
            assert row[key] > 0
        assert row["min_ms"] <= row["median_ms"] <= row["p90_ms"]
        assert row["stdev_ms"] >= 0 and row["peak_mem_mb"] >= 0
        assert row["floor_ms"] > 0 and row["floor_ratio"] > 0
    assert result["peak_gops"]["fp32"]["1"] > 0
    models = {m["kind"]: m for m in result["models"]}
    assert models["checkpoint"]["params"] > 0 and models["checkpoint"]["macs"] > 0
    assert models["onnx"]["macs"] == models["checkpoint"]["macs"]  # counted on the source checkpoint
    assert models["onnx"]["file_bytes"] > 0
    if sys.platform != "darwin":
        assert [n["runtime"] for n in result["not_runnable"]] == ["coreml"]
        assert "macOS" in result["not_runnable"][0]["reason"]


@pytest.mark.slow  # default-run budget (issue 14): covered in make test-slow
def test_torch_compile_runner_or_clear_reason(tiny_models):
    from benchmarks.targets import NotRunnable, load_target, make_runner

    target = load_target(tiny_models["checkpoint"])
    assert target.runtimes(compile=True) == ["torch-eager", "torch-compile"]
    try:
        runner = make_runner(target, "torch-eager", 1)
    except NotRunnable:
        pytest.fail("eager must run")
    out = runner.run(np.zeros((1, 3, 32, 32), np.float32))
    assert out.shape == (1, 32) and np.allclose(np.linalg.norm(out, axis=1), 1, atol=1e-4)


@pytest.mark.slow  # default-run budget (issue 14): covered in make test-slow
def test_exported_runners_agree_with_checkpoint(tiny_models):
    from benchmarks.targets import load_target, make_runner

    x = np.random.default_rng(0).standard_normal((3, 3, 32, 32)).astype(np.float32)
    reference = make_runner(load_target(tiny_models["checkpoint"]), "torch-eager", 1).run_batch(x)
    for kind, runtime in (("onnx", "onnxruntime-cpu"), ("tflite", "litert-xnnpack")):
        if kind not in tiny_models:
            continue
        out = make_runner(load_target(tiny_models[kind]), runtime, 1).run_batch(x)  # batch of 3 on a batch-1 model
        assert out.shape == reference.shape
        assert np.allclose(out, reference, atol=1e-4)


def test_int8_quantize_roundtrip():
    from mobilekd.runtime.contract import dequantize as _dequantize, quantize as _quantize
    from mobilekd.runtime.runners import qparams

    scale, zero = qparams((0.05, -3)).values()
    q = _quantize(np.array([-1.0, 0.0, 1.0, 100.0], np.float32), scale, zero, np.int8)
    assert q.dtype == np.int8 and q[-1] == 127
    assert np.allclose(_dequantize(q[:3], scale, zero), [-1.0, 0.0, 1.0], atol=0.03)
    assert qparams((0.0, 0)) is None and qparams({"scale": 0.1, "zero_point": 2}) == {"scale": 0.1, "zero_point": 2}


# ------------------------------------------------------------------------------------------------ recall


def _tiny_set(root):
    """3 classes x 2 images; the hand-made embeddings below have known answers."""
    keys = []
    for c in "ABC":
        for i in (1, 2):
            make_image(str(root / c / f"{i}.png"), seed=ord(c) * 10 + i, size=(40, 40))
            keys.append(f"{c}/{i}.png")
    return keys


# A1, A2 close; B1 near B2 only; B2 closer to A1 than to B1 (one miss); C1, C2 close.
HAND = np.array([[1, 0, 0, 0], [1, 0, 0, 0.1], [0, 1, 0, 0], [0.7, 0.3, 0, 0], [0, 0, 1, 0], [0, 0, 1, 0.1]],
                np.float32)
LABELS = np.array([0, 0, 1, 1, 2, 2])


def test_recall_known_answers_api():
    from benchmarks.recall import recall_from_embeddings

    sym = recall_from_embeddings(HAND, LABELS)
    assert sym["R@1"] == pytest.approx(100 * 5 / 6)
    assert sym["R@4"] == pytest.approx(100.0)
    perfect = np.eye(4, dtype=np.float32)[LABELS]
    asym = recall_from_embeddings(HAND, LABELS, gallery=perfect)
    # queries vs a gallery where each class is one direction: B2 (mostly A) misses, the rest hit
    assert asym["R@1"] == pytest.approx(100 * 5 / 6)
    assert recall_from_embeddings(perfect, LABELS, gallery=perfect)["R@1"] == 100.0


@pytest.mark.slow  # default-run budget (issue 14): covered in make test-slow
def test_recall_cli_with_embeddings_and_exported_model(tmp_path, tiny_models, capsys):
    from benchmarks.recall import main

    data = tmp_path / "data"
    keys = _tiny_set(data)
    hand = tmp_path / "hand.npz"
    np.savez(hand, keys=np.array(keys), embeddings=HAND)
    perfect = tmp_path / "perfect.npz"
    np.savez(perfect, keys=np.array(keys), embeddings=np.eye(4, dtype=np.float32)[LABELS])
    out = tmp_path / "recall.json"
    code = main([str(hand), tiny_models["onnx"], "--data", str(data), "--split", "all",
                 "--gallery-model", str(perfect), "--out", str(out), "--quiet"])
    assert code == 0
    result = json.loads(out.read_text())
    rows = {r["model"]: r for r in result["results"]}
    assert rows["hand.npz"]["symmetric"]["R@1"] == pytest.approx(100 * 5 / 6)
    assert rows["hand.npz"]["asymmetric"]["R@1"] == pytest.approx(100 * 5 / 6)
    onnx_row = rows["onnx/model.onnx"]
    assert onnx_row["runtime"] == "onnxruntime-cpu" and onnx_row["embed_dim"] == 32
    assert 0 <= onnx_row["symmetric"]["R@1"] <= 100
    assert "asymmetric_error" in onnx_row  # 32-d queries vs a 4-d gallery: reported, not crashed
    assert "| hand.npz |" in capsys.readouterr().out


# ------------------------------------------------------------------------------------------------ report


@pytest.mark.slow  # default-run budget (issue 14): covered in make test-slow
def test_report_markdown_and_pngs(tmp_path, latency_result, tiny_models):
    from benchmarks.report import main

    lat = tmp_path / "latency.json"
    lat.write_text(json.dumps(latency_result))
    recall = {"format": "mobilekd-bench/1", "kind": "recall", "machine": latency_result["machine"],
              "data": {"path": "x", "split": "test", "images": 6, "classes": 3}, "results": [
                  {"model": m["label"], "symmetric": {"R@1": 50.0 + i, "R@2": 60.0, "R@4": 70.0, "R@8": 80.0,
                                                      "MAP@R": 30.0, "R-Precision": 40.0}}
                  for i, m in enumerate(latency_result["models"])]}
    rec = tmp_path / "recall.json"
    rec.write_text(json.dumps(recall))
    out = tmp_path / "report"
    labels = [m["label"] for m in latency_result["models"]]
    assert main([str(lat), str(rec), "--out", str(out), "--compare", f"{labels[0]}:{labels[1]}"]) == 0
    text = (out / "report.md").read_text()
    for heading in ("## Quality", "## Speed", "## Size", "## Comparisons", "## Plots"):
        assert heading in text
    for png in ("recall_vs_latency.png", "latency_by_threads.png"):
        assert (out / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.slow  # default-run budget (issue 14): covered in make test-slow
def test_report_refuses_mixed_machines(tmp_path, latency_result, capsys):
    from benchmarks.report import main

    other = json.loads(json.dumps(latency_result))
    other["machine"]["fingerprint"] = "another-one"
    other["machine"]["cpu_model"] = "Some ARM board"
    paths = []
    for i, data in enumerate((latency_result, other)):
        paths.append(tmp_path / f"r{i}.json")
        paths[-1].write_text(json.dumps(data))
    assert main([*map(str, paths), "--out", str(tmp_path / "rep")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "different machines" in err[0]
    assert main([*map(str, paths), "--out", str(tmp_path / "rep"), "--allow-mixed-machines"]) == 0
    assert "Some ARM board" in (tmp_path / "rep" / "report.md").read_text()


def test_report_compare_unknown_label_is_an_error(tmp_path, capsys):
    """--compare with labels no result has: one error line naming them and the labels there are, exit 2,
    and no report written (issue 14, defect 9: it used to exit 0 with an empty row)."""
    from benchmarks.report import main

    machine = {"cpu_model": "test cpu", "fingerprint": "f"}
    recall = {"kind": "recall", "machine": machine, "data": {"path": "x", "split": "test", "images": 6},
              "results": [{"model": name, "symmetric": {"R@1": 50.0}} for name in ("student", "teacher")]}
    rec = tmp_path / "recall.json"
    rec.write_text(json.dumps(recall))
    out = tmp_path / "rep"
    assert main([str(rec), "--out", str(out), "--compare", "studnet:teacher", "--compare", "teacher:nope"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error:")
    assert "studnet" in err[0] and "nope" in err[0] and "student, teacher" in err[0]
    assert not out.exists()
    assert main([str(rec), "--out", str(out), "--compare", "student:teacher"]) == 0
    assert "| teacher vs student |" in (out / "report.md").read_text()


def test_pareto_front():
    from benchmarks.report import pareto_front

    points = [(1.0, 50.0), (2.0, 60.0), (3.0, 55.0), (0.5, 40.0), (4.0, 70.0)]
    assert [points[i] for i in pareto_front(points)] == [(0.5, 40.0), (1.0, 50.0), (2.0, 60.0), (4.0, 70.0)]


# --------------------------------------------------------------------------------------------------- adb


def test_report_plot_names_models_in_a_key_not_among_the_points(tmp_path, monkeypatch):
    """The Recall@1-vs-latency plot draws no text among the points (close models' labels overlapped there):
    each model has its own marker and colour and one key entry below the axes, fastest first."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from benchmarks.report import recall_latency_plot

    figures = []
    monkeypatch.setattr(plt, "close", figures.append)  # keep the figure to inspect it
    points = [(1.00, 67.2, "fp32"), (1.01, 67.0, "int8", [66.0, 68.0]), (1.02, 67.1, "onnx"), (6.6, 67.2, "torch")]
    recall_latency_plot(points, tmp_path / "plot.png")
    assert (tmp_path / "plot.png").read_bytes()[:4] == b"\x89PNG"
    ax = figures[0].axes[0]
    assert not ax.texts  # no annotations at the points
    names = [t.get_text() for t in ax.get_legend().get_texts()]
    assert [n.split(":")[0] for n in names] == ["fp32", "int8", "onnx", "torch", "Pareto front"]
    assert "[66.0, 68.0]" in names[1]
    markers = {line.get_marker() for line in ax.lines if line.get_marker() not in ("None", "_")}  # not the caps
    assert len(markers) == 4


def test_report_names_two_runs_of_one_model_apart(tmp_path):
    """The same label measured in two latency files (a re-run) gives two named rows and two plot lines, not one
    zigzag series; the recall plot is drawn with numbered points (fast: synthetic results, no models)."""
    from benchmarks.machine import describe
    from benchmarks.report import build_report

    machine = describe()

    def latency(medians):
        rows = [{"model": label, "runtime": "litert-xnnpack", "threads": t, "median_ms": ms * t, "p90_ms": ms * t,
                 "min_ms": ms * t, "stdev_ms": 0.0} for label, ms in medians.items() for t in (1, 2)]
        models = [{"label": label, "kind": "tflite", "precision": "fp32"} for label in medians]
        return {"kind": "latency", "machine": machine, "results": rows, "models": models}

    results = [dict(latency({"fp32": 1.0, "int8": 1.3}), _file="run1.json"), dict(latency({"fp32": 1.5}), _file="run2.json"),
               {"kind": "recall", "machine": machine, "_file": "r.json", "data": {"path": "d", "split": "test", "images": 4},
                "results": [{"model": m, "symmetric": {"R@1": r}} for m, r in (("fp32", 60.0), ("int8", 59.5))]}]
    report = build_report(results, tmp_path, compare=["fp32:int8"]).read_text()
    assert "| fp32 (run1) | litert-xnnpack | cpu | 1 |" in report and "| fp32 (run2) | litert-xnnpack | cpu | 1 |" in report
    assert "| int8 | litert-xnnpack | cpu | 1 |" in report  # measured once: no file name
    for png in ("recall_vs_latency.png", "latency_by_threads.png"):
        assert (tmp_path / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_parse_benchmark_model_output():
    from benchmarks.latency import parse_benchmark_model_output

    parsed = parse_benchmark_model_output(BENCHMARK_MODEL_SAMPLE)
    assert parsed["mean_ms"] == pytest.approx(1.17985)
    assert parsed["init_ms"] == pytest.approx(3.52) and parsed["first_ms"] == pytest.approx(2.051)
    assert parsed["warmup_mean_ms"] == pytest.approx(1.2134)
    assert parsed["runs"] == 845  # the timed run, not the warm-up line
    assert parsed["min_ms"] == pytest.approx(1.093) and parsed["max_ms"] == pytest.approx(1.702)
    assert parsed["stdev_ms"] == pytest.approx(0.061)
    assert parsed["peak_mem_mb"] == pytest.approx(9.42188)
    assert parsed["mem_delta_overall_mb"] == pytest.approx(4.125)
    assert parsed["median_ms"] is None  # benchmark_model prints no percentiles


def test_parse_benchmark_model_failure():
    from benchmarks.latency import parse_benchmark_model_output
    from mobilekd.errors import MobileKDError

    with pytest.raises(MobileKDError, match="Inference timings"):
        parse_benchmark_model_output("STARTING!\nERROR: Failed to load model /data/local/tmp/x.tflite\n")


# ----------------------------------------------------------------------------------------------- bad input


def _one_error_line(capsys) -> str:
    err = [line for line in capsys.readouterr().err.strip().splitlines() if line.strip()]
    assert len(err) == 1, err
    assert err[0].startswith("error: ")
    return err[0]


def test_bad_model_files_exit_2(tmp_path, capsys):
    from benchmarks.latency import main

    assert main([str(tmp_path / "missing.onnx"), "--quiet"]) == 2
    assert "not found" in _one_error_line(capsys)
    broken = tmp_path / "broken.onnx"
    broken.write_bytes(b"this is not a protobuf")
    assert main([str(broken), "--quiet"]) == 2
    assert "onnxruntime cannot load" in _one_error_line(capsys)
    folder = tmp_path / "not_a_checkpoint"
    folder.mkdir()
    assert main([str(folder), "--quiet"]) == 2
    assert "checkpoint" in _one_error_line(capsys)


@pytest.mark.slow  # default-run budget (issue 14): covered in make test-slow
def test_missing_runtime_names_the_extra(tiny_models, monkeypatch, capsys):
    if "tflite" not in tiny_models:
        pytest.skip("litert not installed")
    from benchmarks.latency import main

    monkeypatch.setitem(sys.modules, "ai_edge_litert.interpreter", None)  # import fails as if not installed
    assert main([tiny_models["tflite"], "--quiet", "--runs", "2"]) == 2
    assert "pip install mobilekd[litert]" in _one_error_line(capsys)


@pytest.mark.slow  # default-run budget (issue 14): covered in make test-slow
def test_empty_data_folder_exit_2(tmp_path, tiny_models, capsys):
    from benchmarks.recall import main

    (tmp_path / "empty").mkdir()
    assert main([tiny_models["checkpoint"], "--data", str(tmp_path / "empty"), "--quiet"]) == 2
    assert "no class folders" in _one_error_line(capsys)


def test_threads_above_cores_warn_and_cap(capsys):
    from benchmarks.latency import parse_threads
    from mobilekd.errors import MobileKDError

    assert parse_threads("1,2,4,8", cores=2) == [1, 2]
    assert "capped to 2" in capsys.readouterr().err
    with pytest.raises(MobileKDError):
        parse_threads("1,x", cores=2)
    with pytest.raises(MobileKDError):
        parse_threads("0", cores=2)


@pytest.mark.slow  # default-run budget (issue 14): covered in make test-slow
def test_cli_entry_point_bad_model(tmp_path):
    done = subprocess.run([sys.executable, "-m", "benchmarks.latency", str(tmp_path / "nope.tflite"), "--quiet"],
                          cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 2
    lines = [line for line in done.stderr.strip().splitlines() if line.startswith("error:")]
    assert len(lines) == 1 and "not found" in lines[0]


def test_export_matrix_tabulates_parity_reports():
    """benchmarks.export_matrix only re-tabulates what model.json measured: runtime rows, structural rows
    (no numbers), failing gates listed, teacher columns only where the report has them."""
    from benchmarks.export_matrix import markdown, row_of

    runtime = {"quantization": {"scheme": "int8-static"},
               "parity": {"scope": "runtime", "passed": False, "failures": ["mean cosine 0.97 < 0.99"],
                          "file_bytes": 420000, "images": 100,
                          "vs_float": {"mean_cos": 0.97, "min_cos": 0.8, "top10_overlap": 0.2, "r1_float": 24.9,
                                       "r1_exported": 15.4, "r1_drop": 9.5},
                          "vs_teacher": {"applicable": True, "cross_r1_float": 30.0, "cross_r1_exported": 20.0,
                                         "mean_cos_exported": 0.8, "r1_teacher": 80.0}}}
    structural = {"quantization": {"scheme": "none"},
                  "parity": {"scope": "structural", "passed": True, "failures": [], "file_bytes": 1000000,
                             "runtime_parity": "not measured: macOS only", "vs_float": None, "vs_teacher": None}}
    rows = [row_of("tflite", "int8", runtime, 12.0, 1), row_of("coreml", "fp32", structural, 3.0, 0)]
    assert rows[0]["r1_drop"] == 9.5 and rows[0]["cross_r1_exported"] == 20.0 and not rows[0]["passed"]
    assert rows[1]["mean_cos"] is None and rows[1]["passed"]
    text = markdown(rows)
    lines = [line for line in text.splitlines() if line.startswith("| tflite") or line.startswith("| coreml")]
    assert all(line.count("|") == text.splitlines()[0].count("|") for line in lines)  # no ragged rows
    assert "0.970000" in lines[0] and "24.90 -> 15.40" in lines[0] and "30.00 -> 20.00" in lines[0]
    assert "**FAIL**" in lines[0] and "not measured" in lines[1] and "PASS (structural)" in lines[1]
    assert "tflite int8: mean cosine 0.97 < 0.99" in text


def test_int8_sensitivity_folds_batchnorm_exactly_and_rounds_to_the_int8_grid():
    from benchmarks.int8_sensitivity import int8_weights
    from export.rounding import fold_batchnorm
    from mobilekd.models import create_model

    torch.manual_seed(0)
    model = create_model("mobilenetv1_025", embed_dim=16, size=32).eval()
    with torch.no_grad():  # non-trivial statistics, so folding has something to fold
        for module in model.modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                module.running_mean.uniform_(-0.5, 0.5), module.running_var.uniform_(0.5, 2.0)
                module.weight.uniform_(0.5, 1.5), module.bias.uniform_(-0.2, 0.2)
    folded = fold_batchnorm(model)
    x = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(folded(x), model(x), atol=1e-5, rtol=1e-4)
    assert set(folded.state_dict()) == set(model.state_dict())
    assert all(torch.all(m.weight == 1) for m in folded.modules() if isinstance(m, torch.nn.BatchNorm2d))
    conv = folded.backbone.conv_stem
    int8_weights(conv)
    steps = conv.weight / (conv.weight.abs().flatten(1).amax(1).view(-1, 1, 1, 1) / 127)
    torch.testing.assert_close(steps, steps.round(), atol=1e-4, rtol=0)  # every weight on its channel's grid
    assert steps.abs().max() <= 127 + 1e-4


def test_int8_sensitivity_activation_model_rounds_to_256_levels_and_cleans_up():
    from benchmarks.int8_sensitivity import int8_activations
    from export.rounding import fold_batchnorm
    from mobilekd.models import create_model

    torch.manual_seed(0)
    model = fold_batchnorm(create_model("mobilenetv1_025", embed_dim=16, size=32).eval())
    calib, x = torch.randn(4, 3, 32, 32), torch.randn(2, 3, 32, 32) * 3  # x exceeds the calibrated range
    stem = model.backbone.bn1
    with torch.no_grad():
        calibrated = []
        probe = stem.register_forward_hook(lambda m, i, o: calibrated.append(o.detach()))
        model(calib)
        probe.remove()
        reference = model(x)
        with int8_activations(model, calib):
            seen = []  # registered after the rounding hook, so it sees the rounded output
            probe = stem.register_forward_hook(lambda m, i, o: seen.append(o.detach()))
            quantized = model(x)
            probe.remove()
        torch.testing.assert_close(model(x), reference)  # hooks removed afterwards
    assert not torch.allclose(quantized, reference)
    low, high = min(0.0, float(calibrated[0].min())), float(calibrated[0].max())
    steps = (seen[0] - low) / ((high - low) / 255)
    torch.testing.assert_close(steps, steps.round(), atol=1e-3, rtol=0)  # on the int8 grid
    assert steps.min() >= -1e-3 and steps.max() <= 255 + 1e-3  # clipped to the calibrated range


@pytest.mark.slow  # default-run budget (issue 14): covered in make test-slow
def test_demo_recipe_records_each_arm_with_its_command(tmp_path, capsys):
    from benchmarks.demo_recipe import main as demo_recipe

    results = tmp_path / "recipe"
    common = ["--runs", str(tmp_path / "runs"), "--results", str(results), "--threads", "1", "--no-progress"]
    assert demo_recipe(["zs32", "--zero-shot", "--student-size", "32", *common]) == 0
    assert demo_recipe(["zs40", "--zero-shot", "--student-size", "40", *common]) == 0
    recorded = json.loads(results.with_suffix(".json").read_text())
    assert list(recorded["rows"]) == ["zs32", "zs40"] and recorded["machine"]["usable_cores"] >= 1
    row = recorded["rows"]["zs32"]
    assert row["settings"]["student_size"] == 32 and row["seconds"] > 0
    assert 5 < row["test"]["R@1"] < 100 and row["command"].endswith("--no-progress")  # ImageNet features: above chance
    assert not [path for path in (tmp_path / "runs").rglob("*") if path.is_file()]  # zero-shot: nothing trained or saved
    table = results.with_suffix(".md").read_text()
    assert "| zs32 | 32 | 0 |" in table and row["command"] in table
    # a bad flag: one error line, exit 2, the results untouched
    assert demo_recipe(["bad", "--student-size", "0", *common]) == 2
    assert "--student-size must be >= 1" in capsys.readouterr().err
    assert list(json.loads(results.with_suffix(".json").read_text())["rows"]) == ["zs32", "zs40"]


def test_every_result_json_is_stamped_with_git_commit_and_machine(tmp_path):
    """write_result (the one result writer) stamps HEAD (+ "-dirty" with uncommitted changes) and the machine;
    outside a git checkout the commit is null, never a guess."""
    from benchmarks import write_report, write_result
    from benchmarks.machine import git_commit

    repo = tmp_path / "repo"
    repo.mkdir()
    git = ["git", "-C", str(repo), "-c", "user.name=t", "-c", "user.email=t@t"]
    subprocess.run(git + ["init", "-q"], check=True)
    (repo / "a.txt").write_text("1")
    subprocess.run(git + ["add", "a.txt"], check=True)
    subprocess.run(git + ["commit", "-qm", "a"], check=True)
    head = subprocess.run(git + ["rev-parse", "HEAD"], capture_output=True, text=True, check=True).stdout.strip()
    assert git_commit(repo) == head
    (repo / "new.txt").write_text("untracked output")  # an untracked file (e.g. a fresh result) is not "dirty"
    assert git_commit(repo) == head
    (repo / "a.txt").write_text("2")
    assert git_commit(repo) == head + "-dirty"
    (repo / "sub").mkdir()
    assert git_commit(repo / "sub") is None  # inside a checkout but not its top: not this package's checkout
    assert git_commit(tmp_path / "plain") is None  # no checkout at all

    write_result(tmp_path / "r.json", {"rows": [1]})
    data = json.loads((tmp_path / "r.json").read_text())
    assert data["rows"] == [1] and data["git_commit"] == git_commit(ROOT)
    assert data["machine"]["cpu_model"] and isinstance(data["machine"]["cpu_flags"], list)
    assert data["machine"]["usable_cores"] >= 1
    write_report(str(tmp_path / "t"), "# t\n", {"machine": {"cpu_model": "given"}})
    data = json.loads((tmp_path / "t.json").read_text())
    assert data["machine"] == {"cpu_model": "given"} and "git_commit" in data
    assert (tmp_path / "t.md").read_text() == "# t\n"


def test_publish_prints_and_writes_one_stamped_report(tmp_path, capsys):
    from benchmarks import markdown_table, publish

    table = markdown_table(["size", "ms"], [[128, 0.8], [224, 1.5]])
    assert table == ["| size | ms |", "|---|---|", "| 128 | 0.8 |", "| 224 | 1.5 |"]
    publish(None, "\n".join(table), {"rows": []})  # no prefix: printed only
    assert "| 224 | 1.5 |" in capsys.readouterr().out and not list(tmp_path.iterdir())
    publish(str(tmp_path / "study" / "speed"), "\n".join(table), {"rows": [1]})
    written = json.loads((tmp_path / "study" / "speed.json").read_text())
    assert written["rows"] == [1] and "git_commit" in written and "cpu" in json.dumps(written["machine"]).lower()
    assert (tmp_path / "study" / "speed.md").read_text() == "\n".join(table)
    assert sorted(p.name for p in (tmp_path / "study").iterdir()) == ["speed.json", "speed.md"]  # no temp files left


def test_recall_small_queries_against_the_gallery_one_checkpoint_embedded_larger(tmp_path, tiny_models, capsys):
    from benchmarks.recall import main, recall_from_embeddings

    data = tmp_path / "data"
    _tiny_set(data)
    ckpt = tiny_models["checkpoint"]
    saved = {}
    for size in ("32", "48"):  # the checkpoint's own size, and a larger one
        assert main([ckpt, "--data", str(data), "--split", "all", "--size", size, "--labels", f"s{size}",
                     "--save-embeddings", str(tmp_path / "emb"), "--quiet"]) == 0
        saved[size] = np.load(tmp_path / "emb" / f"s{size}.npz")
    assert not np.allclose(saved["32"]["embeddings"], saved["48"]["embeddings"])  # --size reaches the model
    out = tmp_path / "two.json"
    assert main([ckpt, "--data", str(data), "--split", "all", "--size", "32", "--gallery-model", ckpt,
                 "--gallery-size", "48", "--out", str(out), "--quiet"]) == 0
    result = json.loads(out.read_text())
    expected = recall_from_embeddings(saved["32"]["embeddings"], saved["32"]["labels"], saved["48"]["embeddings"])
    assert result["gallery"]["size"] == 48
    assert result["results"][0]["asymmetric"]["R@1"] == pytest.approx(expected["R@1"])
    assert result["results"][0]["asymmetric"]["MAP@R"] == pytest.approx(expected["MAP@R"])
    assert main([ckpt, "--data", str(data), "--gallery-size", "48"]) != 0
    assert "give --gallery-model too" in capsys.readouterr().err
