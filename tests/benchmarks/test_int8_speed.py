"""int8 speed, explained: SIMD features from real /proc/cpuinfo text, XNNPACK delegation of a graph, the
int8/fp32 pairing of results, and (slow) every node of the int8 TFLite file delegated + the five-variant run."""

import json
from pathlib import Path

import pytest

from conftest import ROOT, TFLITE_INT8, TFLITE_INT8_INTEGER_IO

CPUINFO = Path(ROOT) / "tests" / "fixtures" / "cpuinfo"


# ------------------------------------------------------------------------------------------------ SIMD


@pytest.mark.parametrize("name, isa, present, absent, dot", [
    ("x86_amd_epyc_avx2_no_vnni", "x86", {"avx2", "fma"}, {"avx512f", "avx512_vnni", "avx_vnni", "amx_int8"}, []),
    ("x86_xeon_8269cy_avx512_vnni", "x86", {"avx2", "fma", "avx512f", "avx512_vnni"}, {"avx_vnni", "amx_int8"},
     ["AVX-512 VNNI"]),
    ("arm_cortex_a55_asimddp", "arm", {"asimd", "asimddp"}, {"i8mm", "sve"}, ["dotprod (SDOT)"]),
    ("arm_neoverse_v2_asimddp_i8mm", "arm", {"asimd", "asimddp", "i8mm", "sve2"}, set(),
     ["dotprod (SDOT)", "i8mm (SMMLA)"]),
])
def test_simd_features_of_real_cpuinfo(name, isa, present, absent, dot):
    from benchmarks.machine import simd_features

    simd = simd_features((CPUINFO / f"{name}.txt").read_text(), "phone")
    assert simd["isa"] == isa and simd["where"] == "phone" and simd["int8_dot"] == dot
    assert {f for f, has in simd["features"].items() if has} >= present
    assert not {f for f, has in simd["features"].items() if has} & absent


def test_simd_feature_counts_only_when_every_core_has_it():
    """A big.LITTLE listing where one core lacks i8mm: i8mm is not claimed; no cpuinfo at all: isa None."""
    from benchmarks.machine import simd_features

    big = (CPUINFO / "arm_neoverse_v2_asimddp_i8mm.txt").read_text()
    little = (CPUINFO / "arm_cortex_a55_asimddp.txt").read_text()
    mixed = simd_features(big + little)
    assert mixed["features"]["asimddp"] and not mixed["features"]["i8mm"]
    assert simd_features("")["isa"] is None and simd_features("")["features"] == {}


def test_machine_description_carries_host_simd():
    from benchmarks.machine import describe

    simd = describe()["simd"]
    assert simd["where"] == "host" and set(simd) == {"where", "isa", "features", "int8_dot"}


# ------------------------------------------------------------------------------------------ delegation


def _op(index, op, inputs, outputs):
    return {"index": index, "op": op, "inputs": inputs, "outputs": outputs}


# The tail of the int8 file before the fix (cub128, 40 nodes): the L2 normalisation in int8 split XNNPACK into
# three partitions around SQRT, MAXIMUM and DIV. Tensors: 0 input, 10.. activations, 50.. constants.
OLD_TAIL = [
    _op(0, "QUANTIZE", [0], [10]), _op(1, "CONV_2D", [10, 50, 51], [11]), _op(2, "MEAN", [11, 52], [12]),
    _op(3, "DEQUANTIZE", [12], [13]), _op(4, "ABS", [13], [14]), _op(5, "QUANTIZE", [14], [15]),
    _op(6, "MUL", [15, 15], [16]), _op(7, "SUM", [16, 53], [17]), _op(8, "SQRT", [17], [18]),
    _op(9, "RESHAPE", [18, 54], [19]), _op(10, "QUANTIZE", [19], [20]), _op(11, "MAXIMUM", [20, 55], [21]),
    _op(12, "DIV", [12, 21], [22]), _op(13, "DEQUANTIZE", [22], [23]),
    _op(14, "DELEGATE", [0, 50, 51, 52, 53], [12, 17]), _op(15, "DELEGATE", [54, 18], [20]),
    _op(16, "DELEGATE", [22], [23]),
]
DTYPES = {**{t: "int8" for t in range(10, 23)}, 0: "float32", 13: "float32", 14: "float32", 23: "float32"}


def test_delegation_summary_finds_the_fallback_ops():
    from benchmarks.tflite_ops import format_delegation, partition_members, summarize

    assert partition_members(OLD_TAIL, OLD_TAIL[14]) == set(range(8))
    assert partition_members(OLD_TAIL, OLD_TAIL[15]) == {9, 10}
    report = summarize(OLD_TAIL, DTYPES)
    assert (report["total_nodes"], report["xnnpack_nodes"], report["partitions"]) == (14, 11, 3)
    assert report["fallback_ops"] == {"SQRT/int8": 1, "MAXIMUM/int8": 1, "DIV/int8": 1}
    assert report["op_counts"]["QUANTIZE"] == 3 and "DELEGATE" not in report["op_counts"]
    assert "11/14 nodes on XNNPACK (3 partition(s)); fallback: DIV/int8 x1" in format_delegation("old", report)
    whole = summarize(OLD_TAIL[:14] + [_op(14, "DELEGATE", [0, 50, 51, 52, 53, 54, 55], [23])], DTYPES)
    assert whole["xnnpack_nodes"] == whole["total_nodes"] == 14 and whole["fallback_ops"] == {}
    undelegated = summarize(OLD_TAIL[:14], DTYPES)
    assert undelegated["xnnpack_nodes"] == 0 and undelegated["partitions"] == 0


def test_l2_tail_is_the_trailing_normalisation():
    from export.tflite import l2_tail

    ops = [("CONV_2D", "a"), ("MEAN", "b"), ("ABS", "c"), ("MUL", "d"), ("SUM", "e"), ("SQRT", "f"),
           ("RESHAPE", "g"), ("MAXIMUM", "h"), ("DIV", "i")]
    assert [op for op, _ in l2_tail(ops)] == ["ABS", "MUL", "SUM", "SQRT", "RESHAPE", "MAXIMUM", "DIV"]
    assert l2_tail(ops[:2]) == [] and l2_tail(ops[:-1]) == []  # no normalisation: nothing kept float
    fc = [("FULLY_CONNECTED", "x"), ("MUL", "y"), ("RESHAPE", "z")]  # a head's ops without a division
    assert l2_tail(fc) == []


# ----------------------------------------------------------------------------------------- ratios, adb


def test_precision_ratios_pair_files_of_one_checkpoint():
    from benchmarks.latency import explain_lines, precision_ratios

    models = [{"label": "fp32", "kind": "tflite", "source_sha256": "a"},
              {"label": "int8", "kind": "tflite", "source_sha256": "a"},
              {"label": "other-int8", "kind": "tflite", "source_sha256": "b"}]
    rows = [{"model": m, "runtime": "litert-xnnpack", "threads": th, "precision": p, "median_ms": ms,
             "device": "cpu"} for m, p, th, ms in
            [("fp32", "fp32", 1, 0.8), ("int8", "int8", 1, 1.2), ("fp32", "fp32", 2, 0.5), ("int8", "int8", 2, 0.5),
             ("other-int8", "int8", 1, 1.0)]]
    rows.append({"model": "int8", "runtime": "benchmark_model-xnnpack", "threads": 1, "precision": "int8",
                 "median_ms": None, "mean_ms": 2.0, "device": "android:Pixel"})
    ratios = precision_ratios({"models": models, "results": rows})
    assert [(r["threads"], r["where"], round(r["ratio"], 3)) for r in ratios] == [(1, "host", 1.5), (2, "host", 1.0)]
    text = "\n".join(explain_lines({"models": models, "results": rows, "precision_ratios": ratios}))
    assert "int8/fp32 [host, litert-xnnpack, 1 thread(s)]: int8 1.200 ms / fp32 0.800 ms = 1.50" in text


def test_benchmark_model_delegation_line_is_parsed():
    from benchmarks.latency import parse_benchmark_model_output

    text = ("INFO: Created TensorFlow Lite XNNPACK delegate for CPU.\n"
            "VERBOSE: Replacing 29 out of 31 node(s) with delegate (TfLiteXNNPackDelegate) node, yielding 4 "
            "partitions for the whole graph.\n"
            "Inference timings in us: Init: 3520, First inference: 2051, Warmup (avg): 1213.4, Inference (avg): 1179.85\n")
    parsed = parse_benchmark_model_output(text)
    assert (parsed["delegated_nodes"], parsed["total_nodes"], parsed["partitions"]) == (29, 31, 4)
    assert parsed["delegate"] == "TfLiteXNNPackDelegate"
    assert "delegated_nodes" not in parse_benchmark_model_output(text.split("\n", 2)[2])


def test_int8_speed_refuses_bad_input(tmp_path, capsys):
    from benchmarks.int8_speed import main

    assert main([str(tmp_path), "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and "checkpoint" in err[0]
    assert not (tmp_path / "out").exists()


# ------------------------------------------------------------------------------------------------ slow


@pytest.mark.slow  # two int8 TFLite exports (shared with tests/export)
def test_int8_tflite_runs_every_node_on_xnnpack(exported):
    """The int8 files (float I/O and --integer-io) keep the L2 normalisation in float: no op falls back."""
    from benchmarks.tflite_ops import delegation

    for options in (TFLITE_INT8, TFLITE_INT8_INTEGER_IO):
        folder = exported("tflite", *options)
        report = delegation(folder / "model.tflite")
        assert report["fallback_ops"] == {} and report["xnnpack_nodes"] == report["total_nodes"], report
        assert report["partitions"] == 1 and report["op_counts"].get("DIV") == 1
        info = json.loads((folder / "model.json").read_text())["quantization"]
        assert info["float_tail_ops"][-1] == "DIV" and "L2 normalisation in float32" in info["activations"]


@pytest.mark.slow  # five exports and an interleaved timing run of a 32 px student
def test_int8_speed_times_five_variants(noise_student, tmp_path):
    from benchmarks.int8_speed import VARIANTS, main

    out, files = tmp_path / "result", tmp_path / "files"
    assert main([str(noise_student["ckpt"]), "--out", str(out), "--files", str(files), "--threads", "1",
                 "--rounds", "3", "--warmup", "1", "--export-args", "--calib-images 8 --max-r1-drop 100"]) == 0
    result = json.loads((out / "int8_speed.json").read_text())
    assert [r["model"] for r in result["results"]] and {r["model"] for r in result["results"]} == set(VARIANTS)
    assert all(r["runs"] == 3 for r in result["results"])
    models = {m["label"]: m for m in result["models"]}
    assert models["int8"]["xnnpack"]["fallback_ops"] == {} and models["int8-io"]["precision"] == "int8"
    assert {(r["model"], r["threads"]) for r in result["precision_ratios"]} == \
        {(v, 1) for v in VARIANTS if v != "fp32"}
    text = (out / "README.md").read_text()
    assert "**Question.**" in text and "**Verdict.**" in text and "benchmarks.int8_speed" in text
    assert result["machine"]["simd"]["where"] == "host" and result["git_commit"] is not None
