"""Every format x precision of one student, through the real exporters, as one parity table.

    python -m benchmarks.export_matrix CKPT [--teacher T] [--parity-images 3000] [--exports DIR] \\
        [--results benchmarks/results/export_matrix/export_matrix]

Runs ``export.onnx`` (fp32, fp16, int8, int8 ``--float-convs 2``), ``export.tflite`` (fp32, fp16, dynamic, int8
with float I/O, with ``--integer-io`` and with ``--float-convs 2``) and ``export.coreml``
(fp32, fp16, int8) on CKPT with ``--force`` (so a file that fails its gate is kept, marked failing, and still
measured) and the same parity images, then tabulates what each ``model.json`` recorded: file size, mean/min
cosine, top-10 neighbour overlap and noise-to-spread ratio vs the float student, Recall@1 exported vs
float, cross-model Recall@1 against the teacher's gallery and mean cosine to the teacher (when the dims
match), the gate verdict and the wall time of the export. Nothing is computed here that the exporters did not measure: the table is their
parity reports side by side. Writes ``RESULTS.md`` and ``RESULTS.json`` (with the machine description).

Pass a teacher as an ``.npz`` of precomputed embeddings (``python -m mobilekd.compat embed``) to embed it
once instead of once per export.
"""

from __future__ import annotations

import argparse
import importlib
import json
import sys
import time
from pathlib import Path

from benchmarks import command_line, comma_choices, publish
from mobilekd.errors import MobileKDError, cli_entry

# a variant is a --quantize value, optionally "+flag" or "+flag=value" for one more exporter option
MATRIX = {"onnx": ("fp32", "fp16", "int8", "int8+float-convs=2"),
          "tflite": ("fp32", "fp16", "dynamic", "int8", "int8+integer-io", "int8+float-convs=2"),
          "coreml": ("fp32", "fp16", "int8")}
PRECISION = {"none": "fp32", "fp32": "fp32", "fp16": "fp16", "dynamic": "dynamic int8", "int8": "int8",
             "int8+integer-io": "int8, int8 I/O", "int8+float-convs=2": "int8, first 2 convs float"}


def variant_args(variant: str) -> tuple[str, list[str]]:
    """``"int8+float-convs=2"`` -> ``("int8", ["--float-convs", "2"])``."""
    quantize, _, option = variant.partition("+")
    flag, _, value = option.partition("=")
    return quantize, ([f"--{flag}"] + ([value] if value else []) if flag else [])


def _fmt(value, spec: str, missing: str = "n/a") -> str:
    return missing if value is None else format(value, spec)


def row_of(runtime: str, quantize: str, manifest: dict, seconds: float, code: int) -> dict:
    parity = manifest.get("parity") or {}
    vs_float = parity.get("vs_float") or {}
    vs_teacher = parity.get("vs_teacher") or {}
    return {"format": runtime, "precision": PRECISION[quantize], "quantization": manifest.get("quantization", {})
            .get("scheme"), "file_mb": (parity.get("file_bytes") or 0) / 1e6, "scope": parity.get("scope"),
            "mean_cos": vs_float.get("mean_cos"), "min_cos": vs_float.get("min_cos"),
            "top10_overlap": vs_float.get("top10_overlap"), "noise_ratio": vs_float.get("noise_ratio"),
            "float_pairwise_cos": vs_float.get("float_pairwise_cos"), "r1_float": vs_float.get("r1_float"),
            "r1_exported": vs_float.get("r1_exported"), "r1_drop": vs_float.get("r1_drop"),
            "r1_drop_ci95": vs_float.get("r1_drop_ci95"),
            "cross_r1_float": vs_teacher.get("cross_r1_float"),
            "cross_r1_exported": vs_teacher.get("cross_r1_exported"),
            "teacher_cos": vs_teacher.get("mean_cos_exported"), "r1_teacher": vs_teacher.get("r1_teacher"),
            "teacher_note": vs_teacher.get("reason"), "passed": bool(parity.get("passed")),
            "failures": parity.get("failures", []), "runtime_parity": parity.get("runtime_parity"),
            "exit_code": code, "seconds": round(seconds, 1), "images": parity.get("images")}


def markdown(rows: list[dict]) -> str:
    head = ("| Format | Precision | File MB | mean cos | min cos | top-10 overlap | noise/spread "
            "| R@1 float -> exported | cross R@1 vs teacher gallery (float -> exported) | cos to teacher | gate "
            "| export s |")
    lines = [head, "|" + "---|" * 12]
    for r in rows:
        if r.get("error"):
            lines.append(f"| {r['format']} | {r['precision']} | | error: {r['error']} |||||||| |")
            continue
        if r["scope"] == "structural":
            measured = "not measured (Core ML runs on macOS only) | | | |"
        else:
            interval = r.get("r1_drop_ci95")
            drop = (f" (drop {r['r1_drop']:+.2f}, 95% {interval[0]:+.2f}..{interval[1]:+.2f})"
                    if interval and r.get("r1_drop") is not None and r["r1_exported"] != r["r1_float"] else "")
            measured = (f"{_fmt(r['mean_cos'], '.6f')} | {_fmt(r['min_cos'], '.4f')} | {_fmt(r['top10_overlap'], '.3f')} "
                        f"| {_fmt(r.get('noise_ratio'), '.2g')} | {_fmt(r['r1_float'], '.2f')} -> {_fmt(r['r1_exported'], '.2f')}{drop}")
        cross = (f"{_fmt(r['cross_r1_float'], '.2f')} -> {_fmt(r['cross_r1_exported'], '.2f')}"
                 if r.get("cross_r1_exported") is not None else "n/a")
        gate = ("PASS" if r["passed"] else "**FAIL**") + (" (structural)" if r["scope"] == "structural" else "")
        lines.append(f"| {r['format']} | {r['precision']} | {r['file_mb']:.3f} | {measured} | {cross} "
                     f"| {_fmt(r['teacher_cos'], '.4f')} | {gate} | {r['seconds']:.0f} |")
    failures = [f"- {r['format']} {r['precision']}: {'; '.join(r['failures'])}" for r in rows
                if not r.get("error") and r["failures"]]
    return "\n".join(lines) + ("\n\nGate failures:\n" + "\n".join(failures) if failures else "") + "\n"


@cli_entry
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.export_matrix", description=__doc__.split("\n\n")[0])
    parser.add_argument("checkpoint")
    parser.add_argument("--teacher", help="teacher for the cross-model columns (an .npz embeds it only once)")
    parser.add_argument("--parity-images", type=int, default=3000)
    parser.add_argument("--calib-images", type=int, default=128)
    parser.add_argument("--formats", default="onnx,tflite,coreml")
    parser.add_argument("--exports", help="folder for the exported files (default CKPT/export-matrix)")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--results", default="benchmarks/results/export_matrix/export_matrix")
    args = parser.parse_args(argv)
    formats = comma_choices(args.formats, MATRIX, "format")
    checkpoint = Path(args.checkpoint)
    if not (checkpoint / "model.json").is_file():
        raise MobileKDError(f"{checkpoint} is not a checkpoint folder (no model.json)")
    exports = Path(args.exports) if args.exports else checkpoint / "export-matrix"
    from benchmarks.machine import describe

    rows = []
    for runtime in formats:
        module = importlib.import_module(f"export.{runtime}")
        for variant in MATRIX[runtime]:
            quantize, extra = variant_args(variant)
            out = exports / f"{runtime}-{variant.replace('+', '-').replace('=', '')}"
            cli = [str(checkpoint), "--quantize", quantize, *extra, "--out", str(out),
                   "--force", "--threads",
                   str(args.threads), "--parity-images", str(args.parity_images), "--calib-images",
                   str(args.calib_images)] + (["--teacher", args.teacher] if args.teacher else [])
            print(f"== {runtime} {variant}", flush=True)
            start = time.perf_counter()
            code = module.main(cli)
            seconds = time.perf_counter() - start
            if code not in (0, 1) or not (out / "model.json").is_file():
                rows.append({"format": runtime, "precision": PRECISION[variant], "exit_code": code,
                             "error": f"export exited {code} (see its error line above)"})
                continue
            rows.append(row_of(runtime, variant, json.loads((out / "model.json").read_text()), seconds, code))
    command = command_line("benchmarks.export_matrix", argv)
    spec = json.loads((checkpoint / "model.json").read_text()).get("spec", {})
    teacher_note = next((r["teacher_note"] for r in rows if r.get("teacher_note")), None)
    r1_teacher = next((r["r1_teacher"] for r in rows if r.get("r1_teacher") is not None), None)
    images = next((r["images"] for r in rows if r.get("images")), None)
    text = (f"# Export parity matrix: {checkpoint.name}\n\nCommand: `{command}`\n\n"
            f"Student: `{spec.get('arch')}`, {spec.get('embed_dim')}-d, {spec.get('preprocess', {}).get('size')} px; "
            f"parity on {images} held-out images; teacher: {args.teacher or 'none'}"
            + (f" (its own R@1 on them: {r1_teacher:.2f})" if r1_teacher is not None else "") + ".\n"
            + (f"\nTeacher columns: {teacher_note}\n" if teacher_note else "") + "\n" + markdown(rows))
    publish(args.results, text, {"command": command, "machine": describe(), "checkpoint": str(checkpoint),
                                 "rows": rows})
    return 0


if __name__ == "__main__":
    sys.exit(main())
