"""Where int8 loses time against fp32, block by block: prefixes of one MobileNetV1 student, timed interleaved.

    python -m benchmarks.int8_blocks CKPT --out benchmarks/results/int8_speed/blocks [--rounds 200] [--threads 1]

LiteRT's Python API gives no per-op profile of an XNNPACK partition, so the student is cut instead: prefix k is
the stem and the first k depthwise-separable blocks, then a global average pool (k = 0..13). Each prefix is
exported by the TFLite exporter's own code (``export.tflite.export_fp32`` and ``quantize``: static int8, float
I/O, calibrated on the checkpoint's training images) and timed by one warm interpreter per file, every round
running all files in a shuffled order. Block k's cost is prefix k minus prefix k-1, for fp32 and for int8, so
the int8/fp32 ratio is attributed to the stem and to each block (its depthwise and pointwise convolutions at
that resolution and width). Writes ``OUT/int8_blocks.json`` and ``OUT/README.md``.
"""

from __future__ import annotations

import argparse
import dataclasses
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from benchmarks import command_line, markdown_table, write_result
from mobilekd.errors import MobileKDError, cli_entry
from mobilekd.io import atomic_path


def prefix_module(model, blocks: int):
    """The student's stem and first ``blocks`` depthwise-separable blocks, globally average-pooled."""
    import torch

    backbone = model.backbone
    layers = [block for stage in backbone.blocks for block in stage][:blocks]

    class Prefix(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.stem = torch.nn.Sequential(backbone.conv_stem, backbone.bn1)
            self.layers = torch.nn.Sequential(*layers)
            self.preprocess = model.preprocess
            self.spec = dataclasses.replace(model.spec, normalize=False)  # no L2 tail for the exporter to keep float

        def forward(self, x):
            return self.layers(self.stem(x)).mean(dim=(2, 3))

    return Prefix().eval()


def describe_blocks(model) -> list[str]:
    """A label per block: its depthwise stride, input width and spatial size at the model's input size."""
    size, labels = model.preprocess.size // 2, []
    for stage in model.backbone.blocks:
        for block in stage:
            stride = block.conv_dw.stride[0]
            size //= stride
            labels.append(f"dw s{stride} {block.conv_dw.in_channels}ch -> pw {block.conv_pw.out_channels}ch @ {size}px")
    return labels


def export_prefixes(checkpoint: str, work: Path, calib_count: int, threads: int,
                    max_blocks: int | None = None) -> tuple[list[dict], list[str]]:
    """fp32 and int8 ``.tflite`` files of every prefix, in ``work``."""
    from export.common import ExportJob, read_checkpoint_meta
    from export.parity import calibration_images
    from export.tflite import export_fp32, quantize, quiet_conversion
    from mobilekd.models import load_model

    model = load_model(checkpoint).eval()
    meta = read_checkpoint_meta(Path(checkpoint))
    config = meta.get("config") or {}
    calib, _ = calibration_images(model.preprocess, calib_count, train_data=config.get("data"),
                                  train_fraction=float(config.get("train_fraction") or 0.5))
    labels = describe_blocks(model)[:max_blocks]
    files = []
    for k in range(len(labels) + 1):
        job = ExportJob(Path(checkpoint), prefix_module(model, k), meta, "int8", "NHWC", work, calib=calib,
                        threads=threads)
        fp32, int8 = work / f"prefix{k:02d}_fp32.tflite", work / f"prefix{k:02d}_int8.tflite"
        with quiet_conversion():
            export_fp32(job, fp32)
            quantize(job, fp32, int8)
        files.append({"blocks": k, "fp32": fp32, "int8": int8})
        print(f"exported prefix {k}/{len(labels)}", file=sys.stderr, flush=True)
    return files, labels


def time_files(paths: list[Path], threads: int, rounds: int, warmup: int) -> list[float]:
    """Median ms of each file: one warm interpreter each, every round runs them all in a shuffled order."""
    from ai_edge_litert.interpreter import Interpreter

    runners = []
    for path in paths:
        interpreter = Interpreter(model_path=str(path), num_threads=threads)
        interpreter.allocate_tensors()
        detail = interpreter.get_input_details()[0]
        interpreter.set_tensor(detail["index"], np.random.default_rng(0).random(detail["shape"], np.float32))
        runners.append(interpreter)
    times = [[] for _ in paths]
    order = list(range(len(paths)))
    rng = random.Random(0)
    for round_ in range(warmup + rounds):
        rng.shuffle(order)
        for i in order:
            start = time.perf_counter()
            runners[i].invoke()
            if round_ >= warmup:
                times[i].append((time.perf_counter() - start) * 1e3)
    return [statistics.median(t) for t in times]


def block_rows(files: list[dict], medians: dict, labels: list[str]) -> list[dict]:
    rows = []
    for k, entry in enumerate(files):
        fp32, int8 = medians[str(entry["fp32"])], medians[str(entry["int8"])]
        prev = (medians[str(files[k - 1]["fp32"])], medians[str(files[k - 1]["int8"])]) if k else (0.0, 0.0)
        d32, d8 = fp32 - prev[0], int8 - prev[1]
        rows.append({"part": "stem (3x3 conv, pool)" if k == 0 else f"block {k}: {labels[k - 1]}",
                     "prefix_fp32_ms": round(fp32, 4), "prefix_int8_ms": round(int8, 4),
                     "fp32_ms": round(d32, 4), "int8_ms": round(d8, 4),
                     "int8_over_fp32": round(d8 / d32, 2) if d32 > 0.005 else None})
    return rows


@cli_entry
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.int8_blocks", description=__doc__.splitlines()[0])
    parser.add_argument("checkpoint", help="a MobileNetV1 student's run folder")
    parser.add_argument("--out", required=True)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--rounds", type=int, default=200)
    parser.add_argument("--warmup", type=int, default=20)
    parser.add_argument("--calib-images", type=int, default=32)
    parser.add_argument("--max-blocks", type=int, help="only the first N blocks (default: all)")
    args = parser.parse_args(argv)
    if args.rounds < 2:
        raise MobileKDError("--rounds must be >= 2")
    from benchmarks.machine import describe

    with tempfile.TemporaryDirectory() as work:
        files, labels = export_prefixes(args.checkpoint, Path(work), args.calib_images, args.threads,
                                        args.max_blocks)
        paths = [entry[p] for entry in files for p in ("fp32", "int8")]
        machine_before = describe()
        medians = dict(zip(map(str, paths), time_files(paths, args.threads, args.rounds, args.warmup)))
        rows = block_rows(files, medians, labels)
    command = command_line("benchmarks.int8_blocks", argv)
    write_result(Path(args.out) / "int8_blocks.json", {"command": command, "machine": machine_before,
                                                      "threads": args.threads, "rounds": args.rounds, "rows": rows})
    table = markdown_table(["part", "fp32 ms", "int8 ms", "int8/fp32", "prefix fp32 ms", "prefix int8 ms"],
                           [[r["part"], f"{r['fp32_ms']:.3f}", f"{r['int8_ms']:.3f}", r["int8_over_fp32"] or "-",
                             f"{r['prefix_fp32_ms']:.3f}", f"{r['prefix_int8_ms']:.3f}"] for r in rows])
    report = (f"# int8 vs fp32 TFLite, block by block\n\n**Command.** `{command}`\n\n**Machine.** "
              f"{machine_before.get('cpu_model')}; int8 dot-product instructions: "
              f"{', '.join(machine_before.get('simd', {}).get('int8_dot') or ['none'])}. {args.threads} thread(s), "
              f"median of {args.rounds} interleaved rounds.\n\n" + "\n".join(table) + "\n")
    with atomic_path(Path(args.out) / "README.md") as tmp:
        Path(tmp).write_text(report)
    print(report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
