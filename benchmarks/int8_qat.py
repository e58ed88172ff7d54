"""Does quantization-aware distillation keep the float student's neighbours better than plain int8?

``python -m benchmarks.int8_qat --float RUN --ptq TFLITE ONNX --qat TFLITE ONNX --data DATA --seed S
--student-size 128 --out benchmarks/results/int8_qat`` embeds the test split with the float student (the
reference) and with every int8 file (``benchmarks.recall``), and appends one row per file to
``OUT/summary.json``: R@1 / MAP@R of the float student and of the file, the top-10 neighbour overlap and the
mean cosine with the float student's embeddings of the same images, and the git commit and CPU of that row's
measurement (the file's own ``git_commit`` / ``machine`` are those of its latest writer). The files come from ``export.tflite`` /
``export.onnx --quantize int8`` of RUN (ptq) and of ``export.qat RUN`` (qat).
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

import numpy as np

from benchmarks import write_result
from benchmarks.recall import evaluate
from export.parity import neighbour_overlap
from mobilekd.errors import MobileKDError, cli_entry


def compare(reference: np.ndarray, exported: np.ndarray) -> dict:
    """Top-10 overlap and mean cosine of ``exported`` with the float ``reference`` (renormalised rows)."""
    a = reference / np.linalg.norm(reference, axis=1, keepdims=True)
    b = exported / np.linalg.norm(exported, axis=1, keepdims=True)
    return {"top10_overlap": neighbour_overlap(a, b, 10), "mean_cos": float(np.mean(np.sum(a * b, axis=1)))}


def measure(float_run: str, files: dict[tuple[str, str], str], data: str, threads: int) -> list[dict]:
    """One row per (method, runtime) file, every metric against ``float_run`` on the same test images."""
    specs = [float_run, *files.values()]
    with tempfile.TemporaryDirectory() as work:
        result = evaluate(specs, data, threads=threads, save_embeddings=work)
        if result["errors"]:
            raise MobileKDError(f"{result['errors'][0]['model']}: {result['errors'][0]['error']}")
        rows = result["results"]
        load = lambda row: np.load(Path(work) / row["embeddings"])["embeddings"]  # noqa: E731
        reference, ref_metrics = load(rows[0]), rows[0]["symmetric"]
        out = []
        for (method, runtime), row in zip(files, rows[1:]):
            out.append({"method": method, "runtime": runtime, "file": row["spec"],
                        "r1_float": ref_metrics["R@1"], "r1_int8": row["symmetric"]["R@1"],
                        "map_r_float": ref_metrics["MAP@R"], "map_r_int8": row["symmetric"]["MAP@R"],
                        **compare(reference, load(row))})
    return out


@cli_entry
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.int8_qat", description=__doc__.splitlines()[0])
    parser.add_argument("--float", dest="float_run", required=True, help="the float student's run folder")
    parser.add_argument("--ptq", nargs=2, metavar=("TFLITE", "ONNX"), help="int8 files exported from --float")
    parser.add_argument("--qat", nargs=2, metavar=("TFLITE", "ONNX"), help="int8 files exported from export.qat")
    parser.add_argument("--data", required=True)
    parser.add_argument("--seed", type=int, required=True, help="the seed of the float run (recorded)")
    parser.add_argument("--student-size", type=int, required=True, help="input size (recorded)")
    parser.add_argument("--recipe", default="cub", help="the float run's recipe (recorded; rows are keyed by it)")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", default="benchmarks/results/int8_qat")
    args = parser.parse_args(argv)
    files = {(method, runtime): path for method, pair in (("ptq", args.ptq), ("qat", args.qat)) if pair
             for runtime, path in zip(("tflite", "onnx"), pair)}
    from benchmarks.machine import cpu_model, git_commit

    where = {"git_commit": git_commit(), "cpu_model": cpu_model()}  # per row: rows of several runs share the file
    rows = [{"student_size": args.student_size, "seed": args.seed, "recipe": args.recipe, "float_run": args.float_run,
             **row, **where} for row in measure(args.float_run, files, args.data, args.threads)]
    summary_path = Path(args.out) / "summary.json"
    previous = json.loads(summary_path.read_text())["rows"] if summary_path.is_file() else []
    key = lambda r: (r["student_size"], r.get("recipe", "cub"), r["seed"], r["method"], r["runtime"])  # noqa: E731
    keep = [r for r in previous if key(r) not in {key(r) for r in rows}]
    write_result(summary_path, {"question": __doc__.splitlines()[0], "rows": keep + rows})
    for row in rows:
        print(f"{row['method']:4s} {row['runtime']:6s} R@1 {row['r1_float']:.2f} -> {row['r1_int8']:.2f}  "
              f"MAP@R {row['map_r_float']:.2f} -> {row['map_r_int8']:.2f}  top-10 overlap "
              f"{row['top10_overlap']:.3f}  mean cos {row['mean_cos']:.5f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
