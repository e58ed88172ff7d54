"""The bodies of the ship's stages: each calls one existing tool (training, an exporter, a benchmark, the report,
the Android folder writer) with the arguments a user would type, and records that command.

Every function takes the ``Plan`` (``ship.plan``: the checked options), the ``Layout`` (``ship.bundle``) and the
``Stages`` recorder, and writes only into its own folder of the work (``OUT.work/``).
"""

from __future__ import annotations

import contextlib
import io
import json
import re
import shlex
import shutil
import sys
from pathlib import Path

from mobilekd.errors import MobileKDError
from mobilekd.io import sha256_file
from ship.stages import key_hash

GATE_FLAGS = ("min_mean_cos", "min_cos", "max_r1_drop", "min_topk_overlap", "max_noise_ratio")


def command(module: str, argv: list) -> str:
    """``python -m MODULE ARGS`` as a user would type it again."""
    return f"python -m {module} " + " ".join(shlex.quote(str(a)) for a in argv)


# ------------------------------------------------------------------------------------------ train


def train(plan, layout, stages) -> None:
    """Distil the student with the recipe (``python -m mobilekd.distill --config ...``) into the work's
    checkpoint folder. An interrupted training of the same recipe and data resumes (``--resume``); one of another
    recipe or data (``checkpoint.key`` differs) is deleted first, so the ship trains afresh."""
    from mobilekd.distill import main as distill_main

    key, record = key_hash(train_key(plan)), layout.work / "checkpoint.key"
    if layout.checkpoint.exists() and (not record.is_file() or record.read_text() != key):
        shutil.rmtree(layout.checkpoint)
    record.write_text(key)
    argv = ["--config", plan.config, "--data", plan.data, "--out", str(layout.checkpoint),
            "--threads", str(plan.threads), "--resume"]
    if plan.unlabeled:
        argv += ["--unlabeled", plan.unlabeled]
    stages.ran(command("mobilekd.distill", argv))
    distill_main.__wrapped__(argv)  # the undecorated main: an error reaches the ship's one error line


def check_no_regression(plan) -> None:
    """The first gate: a student whose training left it below the student it started from (``below_untrained``
    in its model.json: lower test R@1) is not shipped, unless ``--allow-regression``."""
    meta = json.loads((plan.checkpoint / "model.json").read_text())
    if not meta.get("below_untrained") or plan.allow_regression:
        return
    after, before = meta["metrics"], meta["untrained_metrics"]
    raise MobileKDError(f"training made the student worse: test R@1 {after['R@1']:.2f} after it, "
                        f"{before['R@1']:.2f} before it ({plan.checkpoint}). Distil on the photos the app will "
                        "search too (--gallery or --unlabeled DIR: the measured fix, docs/distillation.md), or "
                        "pass --allow-regression to ship it anyway")


def train_key(plan) -> dict:
    """What the trained student depends on: the recipe's options, the data and the unlabeled photos. Not the
    thread count: with the default ``--threads 0`` it follows the machine's load, and a resumed training keeps its own."""
    from mobilekd.config import read_config_file

    key = {"recipe": read_config_file(plan.config), "data": plan.data_fingerprint}
    if plan.unlabeled:
        key["unlabeled"] = plan.unlabeled_fingerprint
    return key


# ------------------------------------------------------------------------------------------ export


def qat(plan, layout, stages) -> None:
    """``python -m export.qat CKPT --out QAT`` (quantization-aware distillation) into the work folder: the
    checkpoint the int8 files are exported from. A previous, unfinished one is started again."""
    from export.qat import main as qat_main

    if layout.qat_checkpoint.exists():
        shutil.rmtree(layout.qat_checkpoint)
    argv = [str(plan.checkpoint), "--out", str(layout.qat_checkpoint), "--calib-images", str(plan.calib_images),
            "--threads", str(plan.threads)]
    stages.ran(command("export.qat", argv))
    qat_main.__wrapped__(argv)


def export_source(plan, layout, precision: str) -> Path:
    """The checkpoint a file is exported from: the quantization-aware one for int8 under ``--qat``."""
    return layout.qat_checkpoint if plan.qat and precision == "int8" else plan.checkpoint


def export(plan, layout, stages, fmt: str, precision: str) -> None:
    """``python -m export.<fmt> CKPT --quantize <precision>`` into the work's export folder; a failing parity
    gate stops the ship (one error line naming the file and its failures)."""
    import importlib

    from export.common import export_main

    module = importlib.import_module(f"export.{fmt}")
    out = layout.export(f"{fmt}-{precision}")
    argv = [str(export_source(plan, layout, precision)), "--out", str(out), "--quantize", precision, "--data", plan.data,
            "--threads", str(plan.threads)]
    if precision == "int8":
        argv += ["--calib-images", str(plan.calib_images)]
        if plan.float_convs and fmt in ("onnx", "tflite"):
            argv += ["--float-convs", str(plan.float_convs)]
    for name in GATE_FLAGS:
        if plan.gates.get(name) is not None:
            argv += [f"--{name.replace('_', '-')}", str(plan.gates[name])]
    stages.ran(command(f"export.{fmt}", argv))
    captured = io.StringIO()
    with contextlib.redirect_stderr(captured):
        code = export_main(module.FORMAT, argv)
    lines = captured.getvalue().splitlines()
    errors = [line for line in lines if line.startswith("error:")]
    for line in lines:
        if line not in errors:
            print(line, file=sys.stderr)
    if code != 0:
        found = re.search(r"failed its parity gate \((.*)\); nothing written", " ".join(errors))
        reason = found.group(1) if found else "; ".join(e.removeprefix("error: ") for e in errors)
        raise MobileKDError(f"{fmt} {precision} failed its parity gate ({reason}); the ship stopped and nothing "
                            f"was published to {plan.out} (the work so far is kept in {layout.work}; re-running "
                            "resumes it)")


def export_key(plan, fmt: str, precision: str, checkpoint_sha: str) -> dict:
    return {"format": fmt, "precision": precision, "checkpoint": checkpoint_sha, "data": plan.data_fingerprint,
            "qat": plan.qat and precision == "int8",
            "calib_images": plan.calib_images, "float_convs": plan.float_convs, "gates": plan.gates}


def model_file(folder: Path) -> Path:
    """The model file of an export folder (named by its model.json)."""
    return folder / json.loads((folder / "model.json").read_text())["model_file"]


# ------------------------------------------------------------------------------------------ measure


def labels(plan, exports: list[tuple[str, str]]) -> dict[str, str]:
    """Row labels, one vocabulary for the latency and recall JSONs (the report matches rows by them)."""
    names = {"float": "student float (torch)"}
    if plan.teacher:
        names["teacher"] = f"teacher {Path(str(plan.teacher)).name}" + \
            (f" ({plan.teacher_size} px)" if plan.teacher_size else "")
    for fmt, precision in exports:
        names[f"{fmt}-{precision}"] = f"{fmt} {precision}"
    return names


def runnable(plan, exports):
    """The exports whose runtime runs here (Core ML off macOS has a structural check only)."""
    return [(fmt, precision) for fmt, precision in exports if fmt not in plan.structural_only]


def latency(plan, layout, stages, exports) -> None:
    """Latency of the float checkpoint and every runnable exported file, 1 thread, interleaved
    (``benchmarks.latency.benchmark``)."""
    from benchmarks import write_result
    from benchmarks.latency import benchmark

    names = labels(plan, exports)
    specs = [str(plan.checkpoint)] + [str(model_file(layout.export(f"{f}-{p}"))) for f, p in runnable(plan, exports)]
    tags = [names["float"]] + [names[f"{f}-{p}"] for f, p in runnable(plan, exports)]
    out = layout.results / "latency.json"
    stages.ran(command("benchmarks.latency", [*specs, "--threads", "1", "--runs", plan.latency_runs,
                                              "--no-compile", "--labels", ",".join(tags), "--out", out]))
    result = benchmark(specs, [1], runs=plan.latency_runs, compile=False, labels=tags, progress=False)
    failed = [f"{e['model']}: {e['error']}" for e in result["errors"]]
    if failed:
        raise MobileKDError("latency could not be measured: " + "; ".join(failed))
    layout.results.mkdir(parents=True, exist_ok=True)
    write_result(out, result)


def recall(plan, layout, stages, exports) -> None:
    """Retrieval quality on the test split of the teacher, the float student and every runnable exported file
    (``benchmarks.recall.evaluate``), their embeddings saved for the report's retrieval grids."""
    from benchmarks import write_result
    from benchmarks.recall import evaluate

    names = labels(plan, exports)
    embeddings = layout.embeddings
    if embeddings.exists():
        shutil.rmtree(embeddings)
    runs = []  # (specs, labels, size): the teacher at its training size, the student and files at their own
    if plan.teacher:
        runs.append(([str(plan.teacher)], [names["teacher"]], plan.teacher_size))
    files = [str(model_file(layout.export(f"{f}-{p}"))) for f, p in runnable(plan, exports)]
    runs.append(([str(plan.checkpoint), *files], [names["float"]] + [names[f"{f}-{p}"]
                                                                    for f, p in runnable(plan, exports)], None))
    merged = None
    for specs, tags, size in runs:
        argv = [*specs, "--data", plan.data, "--labels", ",".join(tags), "--threads", plan.threads,
                "--save-embeddings", embeddings] + (["--size", size] if size else [])
        stages.ran(command("benchmarks.recall", argv))
        result = evaluate(specs, plan.data, "test", labels=tags, threads=plan.threads, progress=False, size=size,
                          save_embeddings=str(embeddings))
        if result["errors"]:
            raise MobileKDError("recall could not be measured: " +
                                "; ".join(f"{e['model']}: {e['error']}" for e in result["errors"]))
        if merged is None:
            merged = result
        else:
            merged["results"] += result["results"]
    layout.results.mkdir(parents=True, exist_ok=True)
    write_result(layout.results / "recall.json", merged)


# ------------------------------------------------------------------------------------------ report, android


def report(plan, layout, stages, exports) -> None:
    """``report/index.html`` + ``report/report.md`` (``benchmarks.html_report.write_html_report``)."""
    from benchmarks.html_report import write_html_report

    names = labels(plan, exports)
    recall_result = json.loads((layout.results / "recall.json").read_text())
    latency_result = json.loads((layout.results / "latency.json").read_text())
    history_file = plan.checkpoint / "history.json"
    history = json.loads(history_file.read_text()) if history_file.is_file() else None
    quantized = next((names[f"{f}-{p}"] for f, p in runnable(plan, exports) if p == "int8"), None)
    argv = ["--recall", layout.results / "recall.json", "--latency", layout.results / "latency.json",
            "--embeddings", layout.embeddings, "--data", plan.data, "--float", names["float"], "--out", layout.report]
    argv += (["--history", history_file] if history else []) + (["--quantized", quantized] if quantized else [])
    argv += ["--teacher", names["teacher"]] if plan.teacher else []
    stages.ran(command("benchmarks.html_report", argv))
    write_html_report(layout.report, recall=recall_result, latency=latency_result, embeddings_dir=layout.embeddings,
                      data=plan.data, split="test", history=history, teacher=names.get("teacher"),
                      float_student=names["float"], quantized=quantized, title=plan.title)


def android_source(exports) -> tuple[str, str] | None:
    """The export the Android folder is made from: the TFLite int8 file, else the TFLite fp32 one."""
    for wanted in (("tflite", "int8"), ("tflite", "fp32")):
        if wanted in exports:
            return wanted
    return None


def android(plan, layout, stages, exports) -> None:
    """``android/``: exactly what android_demo reads from its assets (``export.android.write_android_folder``),
    with the gallery's embeddings when ``--gallery`` is given."""
    from export.android import write_android_folder

    fmt, precision = android_source(exports)
    source = layout.export(f"{fmt}-{precision}")
    if layout.android.exists():
        shutil.rmtree(layout.android)
    argv = [source, "--out", layout.android, "--threads", plan.threads]
    if plan.gallery:
        argv += ["--gallery", plan.gallery, "--gallery-precision", plan.gallery_precision]
    stages.ran(command("export.android", argv))
    write_android_folder(source, layout.android, gallery=plan.gallery, gallery_precision=plan.gallery_precision,
                         threads=plan.threads)


def checkpoint_sha(checkpoint: Path) -> str:
    return sha256_file(checkpoint / "model.safetensors")
