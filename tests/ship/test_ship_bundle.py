"""``mobilekd ship`` end to end on a tiny student: the bundle's tree, its manifest's hashes, the model card, and a
re-run that skips every stage whose inputs are unchanged.

The default suite ships the session's random-weight export student (conftest ``noise_student``) with ``--from``
as one ONNX fp32 file (its conversion is shared with the export tests); the slow test trains a tiny recipe and
ships TFLite int8 with android/ and a gallery."""

import json
import shutil

import pytest

from mobilekd.io import sha256_file
from ship.command import main
from ship.manifest import verify

SHIP = ["--formats", "onnx", "--precisions", "fp32", "--threads", "1", "--latency-runs", "2"]


@pytest.fixture(scope="module")
def shipped(noise_student, tmp_path_factory):
    """One ship of the noise student (ONNX fp32), published at ``out``, and what it printed."""
    import contextlib
    import io

    out = tmp_path_factory.mktemp("ship") / "bundle"
    argv = ["--from", str(noise_student["ckpt"]), "--out", str(out), *SHIP]
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        assert main(argv) == 0
    return {"out": out, "argv": argv, "printed": printed.getvalue(), "ckpt": noise_student["ckpt"]}


def test_the_bundle_holds_the_files_report_card_and_manifest(shipped):
    out = shipped["out"]
    for name in ("MODEL_CARD.md", "manifest.json", "onnx-fp32/model.onnx", "onnx-fp32/model.json",
                 "report/index.html", "report/report.md", "results/recall.json", "results/latency.json"):
        assert (out / name).is_file(), name
    assert not (out / "android").exists()  # no TFLite file asked for: no android/
    assert not list(out.parent.glob("bundle.work/bundle"))  # the staging folder was renamed onto OUT
    model = json.loads((out / "onnx-fp32" / "model.json").read_text())
    assert model["parity"]["passed"] is True
    html = (out / "report" / "index.html").read_text()
    assert "<img" in html and 'src="http' not in html  # one self-contained page


def test_progress_lines_show_each_stage_and_its_time(shipped):
    lines = shipped["printed"].splitlines()
    for number, name in enumerate(("source checkpoint", "export onnx-fp32", "latency", "recall", "report"), 1):
        assert any(line.startswith(f"[{number}/6] {name} ... ") and line.endswith(" s") for line in lines), name
    assert "| onnx fp32 |" in shipped["printed"] and "report/index.html" in shipped["printed"]


def test_the_manifest_hashes_every_file_and_names_its_source(shipped):
    out = shipped["out"]
    manifest = json.loads((out / "manifest.json").read_text())
    assert verify(out) == []
    files = {p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file()}
    assert set(manifest["files"]) == files - {"manifest.json", ".mobilekd-ship.json"}
    assert manifest["files"]["onnx-fp32/model.onnx"]["sha256"] == sha256_file(out / "onnx-fp32" / "model.onnx")
    assert manifest["source"]["sha256"] == sha256_file(shipped["ckpt"] / "model.safetensors")
    assert manifest["source"]["trained_by_this_ship"] is False
    assert manifest["commands"][0].startswith("mobilekd ship --from")
    assert any(c.startswith("python -m export.onnx ") and "--quantize fp32" in c for c in manifest["commands"])
    assert any(c.startswith("python -m benchmarks.recall ") for c in manifest["commands"])
    assert manifest["machine"]["cpu_model"]
    assert all(stage["seconds"] >= 0 and stage["start"] <= stage["end"] for stage in manifest["stages"].values())


def test_verify_finds_a_changed_missing_or_extra_file(shipped, tmp_path):
    copy = tmp_path / "copy"
    shutil.copytree(shipped["out"], copy)
    (copy / "onnx-fp32" / "model.onnx").write_bytes(b"not the model")
    (copy / "results" / "latency.json").unlink()
    (copy / "extra.txt").write_text("x")
    assert sorted(verify(copy)) == ["changed onnx-fp32/model.onnx", "missing results/latency.json",
                                    "not in the manifest: extra.txt"]


def test_the_model_card_states_use_data_metrics_gates_latency_limits(shipped):
    card = (shipped["out"] / "MODEL_CARD.md").read_text()
    for heading in ("## Intended use", "## Data", "## Teacher and student", "## Recipe", "## Metrics",
                    "## Files and their gates", "## Latency", "## Known limits", "## Licences"):
        assert heading in card, heading
    recall = json.loads((shipped["out"] / "results" / "recall.json").read_text())
    row = next(r for r in recall["results"] if r["model"] == "onnx fp32")
    low, high = row["symmetric"]["ci95"]["R@1"]
    assert f"{row['symmetric']['R@1']:.2f} [{low:.2f}, {high:.2f}]" in card  # the interval, from the recall JSON
    assert "| onnx-fp32/model.onnx | fp32 |" in card and "| PASS |" in card
    assert "not a phone" in card and "| train | 3 | 12 |" in card and "| test | 3 | 12 |" in card
    assert "class3, class4, class5" in card  # the classes it never saw


def test_a_rerun_skips_every_stage_and_republishes_the_same_files(shipped, capsys):
    before = json.loads((shipped["out"] / "manifest.json").read_text())["files"]
    assert main(shipped["argv"]) == 0
    printed = capsys.readouterr().out
    for name in ("source checkpoint", "export onnx-fp32", "latency", "recall", "report"):
        assert f"{name} ... skipped: inputs unchanged" in printed, name
    after = json.loads((shipped["out"] / "manifest.json").read_text())
    assert {k: v for k, v in after["files"].items() if k != "MODEL_CARD.md"} == \
        {k: v for k, v in before.items() if k != "MODEL_CARD.md"}
    assert after["stages"]["latency"]["skipped"] is True


def test_a_changed_option_rebuilds_its_stage_and_what_depends_on_it(shipped, capsys):
    argv = [*shipped["argv"][:-1], "3"]  # --latency-runs 3
    assert main(argv) == 0
    printed = capsys.readouterr().out
    assert "export onnx-fp32 ... skipped" in printed and "recall ... skipped" in printed
    assert "latency ... skipped" not in printed and "report ... skipped" not in printed
    assert json.loads((shipped["out"] / "results" / "latency.json").read_text())["settings"]["runs"] == 3
    assert verify(shipped["out"]) == []


@pytest.mark.slow
def test_a_tiny_recipe_trains_and_ships_tflite_int8_with_android_and_a_gallery(folder_dataset, tmp_path, capsys):
    recipe = tmp_path / "tiny.yaml"
    recipe.write_text("student: mobilenetv1_025\nstudent_size: 32\nembed_dim: 16\nteacher: efficientnet_lite0\n"
                      "teacher_size: 32\nviews: 2\nepochs: 2\nbatch_classes: 4\nimages_per_class: 3\n"
                      "steps_per_epoch: 4\neval_every: 1\nabsolute_weight: 1.0\nrelative_weight: 0.3\n"
                      "progress: false\n")
    out = tmp_path / "bundle"
    argv = ["--data", str(folder_dataset), "--config", str(recipe), "--out", str(out), "--formats", "tflite,onnx",
            "--precisions", "int8,fp32", "--threads", "1", "--latency-runs", "2", "--calib-images", "8",
            "--max-r1-drop", "100", "--max-noise-ratio", "1", "--min-topk-overlap", "0",
            "--gallery", str(folder_dataset / "class_0"), "--qat"]  # a 2-epoch 32 px student: loose gates
    assert main(argv) == 0
    for name in ("tflite-int8/model.tflite", "tflite-fp32/model.tflite", "onnx-int8/model.onnx",
                 "onnx-fp32/model.onnx", "android/model.tflite", "android/model.json", "report/index.html"):
        assert (out / name).is_file(), name
    assert any(p.is_file() for p in (out / "android" / "gallery").iterdir())
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["source"]["trained_by_this_ship"] is True and verify(out) == []
    assert any(c.startswith("python -m mobilekd.distill --config") for c in manifest["commands"])
    qat = [c for c in manifest["commands"] if c.startswith("python -m export.qat")]
    assert len(qat) == 1 and any(c.startswith("python -m export.tflite") and "qat-checkpoint" in c and "int8" in c
                                 for c in manifest["commands"])
    assert "train ... " in capsys.readouterr().out
    assert "quantization-aware" in (out / "MODEL_CARD.md").read_text()
    assert "## Licences" in (out / "MODEL_CARD.md").read_text()


@pytest.mark.slow
def test_coreml_off_macos_ships_with_its_structural_verdict_said_plainly(noise_student, tmp_path, capsys):
    pytest.importorskip("coremltools")
    import sys

    if sys.platform == "darwin":
        pytest.skip("Core ML runs on macOS: its files get full parity there")
    out = tmp_path / "bundle"
    assert main(["--from", str(noise_student["ckpt"]), "--out", str(out), "--formats", "coreml,onnx", *SHIP[2:]]) == 0
    printed = capsys.readouterr().out
    assert printed.startswith("note: coreml files get a structural check only here")
    card = (out / "MODEL_CARD.md").read_text()
    assert "| coreml-fp32/model.mlpackage | fp32 |" in card and "structural check only" in card
    assert "runtime parity not measured" in card
    recall = json.loads((out / "results" / "recall.json").read_text())
    assert [row["model"] for row in recall["results"]] == ["student float (torch)", "onnx fp32"]
    assert verify(out) == []
