"""Is int8 TFLite faster than fp32 here, and why: five TFLite files of one checkpoint, timed interleaved.

    python -m benchmarks.int8_speed CKPT --out benchmarks/results/int8_speed [--threads 1,2] [--rounds 300]
        [--warmup 20] [--files DIR] [--export-args "--calib-images 128"]

Exports CKPT with ``export.tflite`` as fp32, fp16 (weight-only), dynamic-range int8, static int8 with float32
I/O (the default int8 file) and static int8 with int8 I/O (``--integer-io``) -- each through its own parity gate
-- then times the five files with ``benchmarks.latency.benchmark``: one warm interpreter per file x thread count,
and every round runs each of them once in a shuffled order (round robin), so load elsewhere on the machine
spreads over all variants instead of biasing one. Per file it records the XNNPACK delegation
(``benchmarks.tflite_ops``) and each variant's median over fp32's at the same thread count; the machine
description holds the CPU's SIMD features (VNNI / AVX-512 / AMX: what makes int8 dot products fast on x86).
Writes ``DIR/README.md`` (question, command, machine, verdict, tables) and ``DIR/int8_speed.json``.
``--files DIR`` keeps the exported files there and reuses a variant whose ``model.json`` is already there;
without it they go to a temporary folder that is removed.
"""

from __future__ import annotations

import argparse
import shlex
import sys
import tempfile
from pathlib import Path

from benchmarks import command_line, markdown_table, write_result
from benchmarks.latency import benchmark, parse_threads
from mobilekd.errors import MobileKDError, cli_entry
from mobilekd.io import atomic_path, check_writable_file

# variant -> export.tflite options; the labels are the variants' names in every table
VARIANTS = {"fp32": [], "fp16": ["--quantize", "fp16"], "dynamic": ["--quantize", "dynamic"],
            "int8": ["--quantize", "int8"], "int8-io": ["--quantize", "int8", "--integer-io"]}
DESCRIPTION = {"fp32": "float32", "fp16": "float16 weights, float32 compute",
               "dynamic": "dynamic-range int8 (int8 weights, activations quantized at run time)",
               "int8": "static int8, float32 input/output", "int8-io": "static int8, int8 input/output"}
QUESTION = ("On this CPU, is the int8 TFLite file faster than fp32, and why (or why not)? Which ops does XNNPACK "
            "run, which fall back, and does the CPU have an int8 dot-product instruction (VNNI on x86)?")


def export_variants(checkpoint: Path, folder: Path, threads: int, extra: list[str]) -> dict[str, Path]:
    """Each variant's ``model.tflite`` under ``folder/<variant>``, exported unless its ``model.json`` is there.
    Exported with ``--force``: a variant that fails its parity gate is still timed (its model.json says so)."""
    from export.tflite import main as export_tflite

    files = {}
    for variant, options in VARIANTS.items():
        out = folder / variant
        if not (out / "model.json").is_file():
            print(f"== export {variant}", file=sys.stderr, flush=True)
            code = export_tflite([str(checkpoint), *options, "--threads", str(threads), "--out", str(out), "--force",
                                  *extra])
            if code not in (0, 1) or not (out / "model.json").is_file():  # 1: written, its gate failed
                raise MobileKDError(f"export.tflite {' '.join(options) or 'fp32'} exited {code} (see its error above)")
        files[variant] = out / "model.tflite"
    return files


def _ms(record: dict) -> float:
    return record["median_ms"]


def latency_rows(result: dict) -> list[list]:
    """Per thread count and variant: median, p90, ratio to fp32, XNNPACK nodes, fallback ops."""
    models = {m["label"]: m for m in result["models"]}
    fp32 = {r["threads"]: _ms(r) for r in result["results"] if r["model"] == "fp32"}
    rows = []
    for r in sorted(result["results"], key=lambda r: (r["threads"], list(VARIANTS).index(r["model"]))):
        xnn = models[r["model"]].get("xnnpack", {})
        fallback = ", ".join(f"{k} x{n}" for k, n in sorted(xnn.get("fallback_ops", {}).items())) or "none"
        ratio = f"{_ms(r) / fp32[r['threads']]:.2f}" if r["threads"] in fp32 else "-"
        rows.append([r["threads"], r["model"], f"{_ms(r):.3f}", f"{r['p90_ms']:.3f}", ratio,
                     f"{xnn.get('xnnpack_nodes', '?')}/{xnn.get('total_nodes', '?')}", fallback])
    return rows


def verdict(result: dict) -> str:
    """What the numbers say, sentence by sentence, each from a measured value of ``result``."""
    simd = result["machine"].get("simd", {})
    dot = ", ".join(simd.get("int8_dot", [])) or "none (no VNNI / AVX-VNNI / AMX)" if simd.get("isa") == "x86" \
        else ", ".join(simd.get("int8_dot", [])) or "none"
    lines = [f"CPU int8 dot-product instructions: {dot}."]
    by_threads: dict[int, dict[str, float]] = {}
    for r in result["results"]:
        by_threads.setdefault(r["threads"], {})[r["model"]] = _ms(r)
    for threads, times in sorted(by_threads.items()):
        fastest = min(times, key=times.get)
        ratio = (f"; int8/fp32 = {times['int8'] / times['fp32']:.2f}" if {"int8", "fp32"} <= set(times) else "")
        lines.append(f"{threads} thread(s): fastest {fastest} ({times[fastest]:.3f} ms median){ratio}.")
    int8 = next((m.get("xnnpack") for m in result["models"] if m["label"] == "int8"), None)
    if int8 and "total_nodes" in int8:
        lines.append(f"XNNPACK runs {int8['xnnpack_nodes']} of the int8 file's {int8['total_nodes']} nodes "
                     f"({int8['partitions']} partition(s))"
                     + (f"; fallback: {', '.join(int8['fallback_ops'])}." if int8["fallback_ops"] else "."))
    return " ".join(lines)


def readme(result: dict, command: str) -> str:
    machine = result["machine"]
    simd = machine.get("simd", {})
    present = ", ".join(k for k, v in simd.get("features", {}).items() if v) or "none listed"
    settings = result["settings"]
    table = markdown_table(["threads", "variant", "median ms", "p90 ms", "/ fp32", "XNNPACK nodes", "fallback ops"],
                           latency_rows(result))
    variants = "\n".join(f"- `{v}`: {DESCRIPTION[v]}" for v in VARIANTS)
    return (f"# int8 vs fp32 TFLite speed, explained\n\n**Question.** {QUESTION}\n\n"
            f"**Command.** `{command}`\n\n"
            f"**Machine.** {machine.get('cpu_model')} x{machine.get('usable_cores')} ({machine.get('arch')}); "
            f"SIMD: {present}; load average before/after {result['load_average']['before']} / "
            f"{result['load_average']['after']}. Host measurement (LiteRT XNNPACK, batch 1), "
            f"{settings['runs']} interleaved rounds after {settings['warmup']} warm-up runs.\n\n"
            f"**Verdict.** {verdict(result)}\n\n**Variants.**\n\n{variants}\n\n" + "\n".join(table) + "\n\n"
            "**Data files.** `int8_speed.json` (`benchmarks.write_result`: machine, git commit, every timing, "
            "the XNNPACK delegation of each file and `precision_ratios`).\n")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.int8_speed", description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("checkpoint", help="mobilekd checkpoint folder")
    parser.add_argument("--out", required=True, help="results folder: README.md and int8_speed.json")
    parser.add_argument("--threads", default="1,2", help="comma-separated thread counts (default 1,2)")
    parser.add_argument("--rounds", type=int, default=300, help="interleaved timed rounds (default 300)")
    parser.add_argument("--warmup", type=int, default=20, help="warm-up runs per file x threads (default 20)")
    parser.add_argument("--files", help="keep the exported files here (reused when present); default: a temp folder")
    parser.add_argument("--export-args", default="", help="more export.tflite options for every variant, one "
                                                          "quoted string, e.g. \"--calib-images 128\"")
    parser.add_argument("--export-threads", type=int, default=1, help="threads of the exports (default 1)")
    return parser


@cli_entry
def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    checkpoint = Path(args.checkpoint)
    if not (checkpoint / "model.json").is_file():
        raise MobileKDError(f"{checkpoint} is not a mobilekd checkpoint folder (no model.json)")
    if args.rounds < 2 or args.warmup < 0:
        raise MobileKDError("--rounds must be >= 2 and --warmup >= 0")
    out = Path(args.out)
    check_writable_file(out / "int8_speed.json")  # before the exports and the measurement, not after them
    threads = parse_threads(args.threads)
    try:
        extra = shlex.split(args.export_args)
    except ValueError as error:
        raise MobileKDError(f"--export-args: {error}") from None
    with tempfile.TemporaryDirectory(prefix="int8_speed-") as scratch:
        files = export_variants(checkpoint, Path(args.files) if args.files else Path(scratch),
                                args.export_threads, extra)
        result = benchmark([str(f) for f in files.values()], threads, args.rounds, args.warmup, compile=False,
                           labels=list(files))
    if len(result["results"]) != len(files) * len(threads):
        problems = [f"{e['model']}: {e.get('error') or e.get('reason')}" for e in result["errors"] + result["not_runnable"]]
        raise MobileKDError("not every variant could be timed: " + ("; ".join(problems) or "unknown reason"))
    command = command_line("benchmarks.int8_speed", argv)
    result.update(kind="int8_speed", command=command, checkpoint=str(checkpoint))
    text = readme(result, command)
    write_result(out / "int8_speed.json", result)
    with atomic_path(out / "README.md") as tmp:
        Path(tmp).write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
