"""Latency, memory, size, parameters and MACs of checkpoints and exported models, per runtime x threads.

    python -m benchmarks.latency MODEL... [--threads 1,2,4] [--runs N] [--warmup N] [--size H W] [--out results.json]
    python -m benchmarks.latency model.tflite --adb [SERIAL] [--adb-binary benchmark_model] [--adb-gpu]

MODEL: a mobilekd checkpoint folder or a model name (PyTorch eager and ``torch.compile``), an ``.onnx``
(ONNX Runtime CPU EP, plus other installed EPs), a ``.tflite`` (ai-edge-litert with XNNPACK), an
``.mlpackage`` (Core ML: macOS only, otherwise listed as not runnable here).

Method: every runtime gets a fixed thread count (intra-op threads; ONNX Runtime with spinning off), its
own warm-up, then the timed runs are *interleaved*: each round runs every (model, runtime, threads) once in
a shuffled order, so a burst of load elsewhere on the machine widens the spread of all of them instead of
biasing one. Batch 1, random input of the model's shape. Per runner: median, p90, min, mean, stdev (ms).
Peak memory: rise of the process's resident-set high-water mark (``VmHWM``, reset through
``/proc/self/clear_refs``; elsewhere ``ru_maxrss``) while the session is created and warmed up -- PyTorch
weights are loaded before, so for ``torch-*`` it is the run-time working memory only.

Floor: the model's MACs x 2 / a peak FLOP/s of this CPU measured in the same run with a large matrix
multiply at the same thread count (fp32 ``torch.mm``; int8 ``torch._int_mm`` for int8 models), reported as
``floor_ms`` and ``floor_ratio`` = median / floor (1 = the model runs at matmul peak; depthwise-heavy
MobileNets are memory-bound and sit far above it). An int8 peak below the fp32 one (``torch._int_mm``'s slow
fallback on CPUs or builds without its fast kernel) makes no floor: int8 rows then have ``floor_ratio`` null and
a ``floor_note`` saying why, printed below the table.

Why int8 is (not) faster: every ``.tflite`` model gets ``xnnpack`` (``benchmarks.tflite_ops.delegation``: how
many of its nodes the XNNPACK delegate runs, in how many partitions, and which ops fall back to LiteRT's own
kernels), the machine description carries the CPU's SIMD features (``benchmarks.machine.simd_features``: AVX2,
AVX-512, VNNI, AMX; dotprod / i8mm of the phone with ``--adb``), and ``precision_ratios`` gives each quantized
file's median over the fp32 file of the same checkpoint, same runtime and threads, marked host or phone.
"""

from __future__ import annotations

import argparse
import re
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from benchmarks import RESULT_FORMAT, write_result
from benchmarks.machine import describe, load_average, simd_features
from benchmarks.targets import NotRunnable, count_params_macs, input_hw, load_target, make_runner
from benchmarks.tflite_ops import delegation, format_delegation
from mobilekd.errors import MobileKDError, cli_entry
from mobilekd.io import check_writable_file
from mobilekd.threads import usable_cores


def warn(message: str) -> None:
    print(f"warning: {message}", file=sys.stderr)


def parse_threads(text: str, cores: int | None = None) -> list[int]:
    """'1,2,4' -> [1, 2, 4]; counts above the usable cores are capped (with a warning), duplicates dropped."""
    cores = cores or usable_cores()
    try:
        values = [int(v) for v in str(text).split(",") if v.strip()]
    except ValueError:
        raise MobileKDError(f"--threads expects comma-separated integers like 1,2,4, got {text!r}") from None
    if not values or min(values) < 1:
        raise MobileKDError(f"--threads expects positive integers, got {text!r}")
    capped = [min(v, cores) for v in values]
    if capped != values:
        warn(f"thread count(s) {', '.join(str(v) for v in values if v > cores)} exceed the {cores} usable "
             f"core(s) of this machine: capped to {cores}")
    return list(dict.fromkeys(capped))


# ------------------------------------------------------------------------------------------------ memory


def _reset_peak_rss() -> bool:
    try:
        with open("/proc/self/clear_refs", "w") as handle:
            handle.write("5")
        return True
    except OSError:
        return False


def _peak_rss_mb() -> float:
    try:
        with open("/proc/self/status") as handle:
            for line in handle:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return rss / (1024 * 1024) if sys.platform == "darwin" else rss / 1024


def _rss_mb() -> float:
    try:
        with open("/proc/self/status") as handle:
            for line in handle:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return _peak_rss_mb()


# ------------------------------------------------------------------------------------------------- floor


def measure_peak(precision: str, threads: int, n: int = 1024, repeats: int = 8) -> float | None:
    """Peak GFLOP/s (fp32) or GOP/s (int8) of a square n x n matmul on ``threads`` threads, best of repeats."""
    import torch

    torch.set_num_threads(threads)
    if precision == "int8":
        if not hasattr(torch, "_int_mm"):
            return None
        a = torch.randint(-128, 127, (n, n), dtype=torch.int8)
        b = torch.randint(-128, 127, (n, n), dtype=torch.int8)
        op = lambda: torch._int_mm(a, b)  # noqa: E731
    else:
        a, b = torch.randn(n, n), torch.randn(n, n)
        op = lambda: torch.mm(a, b)  # noqa: E731
    try:
        op()
    except RuntimeError:
        return None
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        op()
        best = min(best, time.perf_counter() - start)
    return 2 * n ** 3 / best / 1e9


def int8_floor_problem(peaks: dict, threads: int) -> str | None:
    """Why the int8 peak at ``threads`` threads makes no floor, or None. ``torch._int_mm`` has a fast CPU kernel
    only on some builds and CPUs; elsewhere it runs a slow fallback (~1 GOP/s), which would put every int8 model
    "far below its floor". An int8 peak below the fp32 one is such a fallback, not this CPU's int8 peak."""
    int8, fp32 = peaks.get("int8", {}).get(str(threads)), peaks.get("fp32", {}).get(str(threads))
    if int8 is None:
        return "int8 floor: not measured (torch._int_mm does not run here)"
    if fp32 is not None and int8 < fp32:
        return (f"int8 floor: not measured meaningfully (torch._int_mm peak {int8:.1f} GOPS below fp32 {fp32:.1f} "
                f"GFLOPS at {threads} thread(s))")
    return None


def floor_fields(macs: int | None, median_ms: float, precision: str, peaks: dict, threads: int) -> dict:
    """``floor_ms`` / ``floor_precision`` / ``floor_ratio`` of one result, or for an int8 model whose peak is not
    meaningful ``floor_ratio`` None and ``floor_note`` saying why; nothing without MACs or a peak."""
    if precision == "int8":
        problem = int8_floor_problem(peaks, threads)
        if problem:
            return {"floor_ratio": None, "floor_note": problem}
    peak = peaks.get(precision, {}).get(str(threads))
    if not macs or not peak:
        return {}
    floor_ms = 2 * macs / (peak * 1e9) * 1e3
    return {"floor_ms": floor_ms, "floor_precision": precision, "floor_ratio": median_ms / floor_ms}


def stats_ms(times_ns: list[int]) -> dict:
    t = np.asarray(times_ns, dtype=np.float64) / 1e6
    return {"runs": int(len(t)), "median_ms": float(np.median(t)), "p90_ms": float(np.percentile(t, 90)),
            "min_ms": float(t.min()), "mean_ms": float(t.mean()),
            "stdev_ms": float(t.std(ddof=1)) if len(t) > 1 else 0.0}


# ------------------------------------------------------------------------------------------------- bench


def benchmark(specs: list[str], threads: list[int], runs: int = 30, warmup: int = 5,
              size: tuple[int, int] | None = None, compile: bool = True, labels: list[str] | None = None,
              seed: int = 0, peak_repeats: int = 8, progress: bool = True) -> dict:
    """Measure every (model, runtime, threads); returns the result dict (see module docstring)."""
    if runs < 2 or warmup < 0:
        raise MobileKDError("--runs must be >= 2 and --warmup >= 0")
    load_before = load_average()
    result = {"format": RESULT_FORMAT, "kind": "latency", "machine": describe(),
              "settings": {"threads": threads, "runs": runs, "warmup": warmup, "size": list(size) if size else None,
                           "batch": 1, "interleaved": True, "compile": compile},
              "models": [], "results": [], "not_runnable": [], "errors": []}
    say = (lambda m: print(m, file=sys.stderr)) if progress else (lambda m: None)

    targets = []
    for i, spec in enumerate(specs):
        try:
            targets.append(load_target(spec, size[0] if size and size[0] == size[1] else None,
                                       labels[i] if labels and i < len(labels) else None))
        except MobileKDError as error:
            result["errors"].append({"model": spec, "error": str(error)})

    # peaks first (the machine is at its quietest before the models run), once per thread count
    precisions = ["fp32"] + (["int8"] if any(t.precision == "int8" for t in targets) else [])
    peaks = {p: {str(th): measure_peak(p, th, repeats=peak_repeats) for th in threads} for p in precisions}
    result["peak_gops"] = peaks

    active = []  # (target, runtime, threads, runner, x, record)
    rng = np.random.default_rng(seed)
    for target in targets:
        info = target.describe()
        hw_seen = None
        for runtime in target.runtimes(compile):
            for th in threads:
                say(f"prepare {target.label} [{runtime}, {th} thread(s)]")
                _reset_peak_rss()
                before = _rss_mb()
                try:
                    hw = input_hw(target, None, size)
                    example = rng.standard_normal((1, 3, *hw)).astype(np.float32)
                    runner = make_runner(target, runtime, th, example)
                    hw = input_hw(target, runner, size)
                    x = rng.standard_normal((1, 3, *hw)).astype(np.float32)
                    out = None
                    for _ in range(max(1, warmup)):
                        out = runner.run(x)
                    if not np.isfinite(out).all():
                        raise MobileKDError("the model's output holds NaN or infinite values")
                except NotRunnable as error:
                    result["not_runnable"].append({"model": target.label, "runtime": runtime, "reason": str(error)})
                    break
                except MobileKDError as error:
                    result["errors"].append({"model": target.label, "runtime": runtime, "threads": th,
                                             "error": str(error)})
                    break
                except Exception as error:  # a runtime failing at inference: report, keep the others
                    result["errors"].append({"model": target.label, "runtime": runtime, "threads": th,
                                             "error": f"{type(error).__name__}: {str(error).strip()[:300]}"})
                    break
                peak = max(0.0, _peak_rss_mb() - before)
                hw_seen = hw
                record = {"model": target.label, "runtime": runtime, "device": runner.device, "threads": th,
                          "precision": target.precision, "input_hw": list(hw), "peak_mem_mb": round(peak, 2),
                          "embed_dim": int(out.shape[-1])}
                active.append((target, runtime, th, runner, x, record, []))
        hw = hw_seen or input_hw(target, None, size)
        params, macs = count_params_macs(target.torch_model, hw)
        info.update(params=params, macs=macs, macs_input_hw=list(hw),
                    macs_source="checkpoint" if target.model is not None else
                    ("source checkpoint in model.json" if target.source_model is not None else None))
        info.update(file_facts(target))
        result["models"].append(info)

    # interleaved timed rounds
    order = list(range(len(active)))
    say(f"timing {len(active)} runner(s) x {runs} interleaved round(s)")
    failed = set()
    for _ in range(runs):
        rng.shuffle(order)
        for i in order:
            if i in failed:
                continue
            runner, x, times = active[i][3], active[i][4], active[i][6]
            try:
                start = time.perf_counter_ns()
                runner.run(x)
                times.append(time.perf_counter_ns() - start)
            except Exception as error:
                failed.add(i)
                result["errors"].append({"model": active[i][0].label, "runtime": active[i][1],
                                         "threads": active[i][2], "error": f"{type(error).__name__}: {error}"})

    model_info = {m["label"]: m for m in result["models"]}
    for i, (target, runtime, th, runner, x, record, times) in enumerate(active):
        if i in failed or len(times) < 2:
            continue
        record.update(stats_ms(times))
        precision = "int8" if target.precision == "int8" else "fp32"
        record.update(floor_fields(model_info[target.label].get("macs"), record["median_ms"], precision, peaks, th))
        result["results"].append(record)
    result["precision_ratios"] = precision_ratios(result)
    result["load_average"] = {"before": load_before, "after": load_average()}
    return result


def file_facts(target) -> dict:
    """What pairs an exported file with its fp32 sibling (``source_sha256``: the checkpoint's weights) and, for
    a ``.tflite``, its XNNPACK delegation (``benchmarks.tflite_ops``; an error string if it cannot be read)."""
    contract = getattr(target, "contract", None)
    facts = {"source_sha256": ((contract.source or {}).get("sha256") if contract is not None else None)}
    if target.kind == "tflite":
        try:
            facts["xnnpack"] = delegation(target.path)
        except Exception as error:  # an unreadable graph must not stop the timing of the others
            facts["xnnpack"] = {"error": f"{type(error).__name__}: {str(error).strip()[:200]}"}
    return facts


def where(record: dict) -> str:
    """``phone`` for a result timed on an Android device (``--adb``), else ``host``."""
    return "phone" if str(record.get("device", "")).startswith("android:") else "host"


def precision_ratios(result: dict) -> list[dict]:
    """Each quantized file's latency over the fp32 file of the same checkpoint (same ``source_sha256``, file
    kind, runtime, threads and device): ``ratio`` < 1 means the quantized file is faster. Medians, or the means
    of ``benchmark_model`` (it prints no median)."""
    models = {m["label"]: m for m in result["models"]}

    def key(r):
        m = models.get(r["model"], {})
        return (m.get("source_sha256"), m.get("kind"), r["runtime"], r["threads"], r.get("device"))

    def ms(r):
        return r.get("median_ms") if r.get("median_ms") is not None else r.get("mean_ms")

    fp32 = {key(r): r for r in result["results"] if r.get("precision") == "fp32" and key(r)[0] and ms(r)}
    ratios = []
    for r in result["results"]:
        base = fp32.get(key(r))
        if r.get("precision") == "fp32" or base is None or not ms(r):
            continue
        ratios.append({"model": r["model"], "fp32_model": base["model"], "precision": r["precision"],
                       "runtime": r["runtime"], "threads": r["threads"], "where": where(r),
                       "ms": ms(r), "fp32_ms": ms(base), "ratio": ms(r) / ms(base)})
    return ratios


# --------------------------------------------------------------------------------------------------- adb

_TIMING = re.compile(r"Inference timings in us:\s*(.+)")
_COUNT = re.compile(r"count=(\d+)((?:\s+[a-z0-9_]+=[-+0-9.eE]+)+)")
_KV = re.compile(r"([A-Za-z0-9_]+)=([-+0-9.eE]+)")
# TFLite's log line when a delegate takes nodes, e.g. "Replacing 29 out of 31 node(s) with delegate
# (TfLiteXNNPackDelegate) node, yielding 4 partitions for the whole graph."
_REPLACED = re.compile(r"Replacing (\d+) out of (\d+) node\(s\) with delegate \((\w+)\) node, yielding (\d+) partitions")


def parse_benchmark_model_output(text: str) -> dict:
    """Parse TFLite ``benchmark_model`` stdout into milliseconds / MB.

    Uses ``Inference timings in us: Init: .., First inference: .., Warmup (avg): .., Inference (avg): ..``,
    the last ``count=.. first=.. curr=.. min=.. max=.. avg=.. std=..`` line (the timed run; the first one
    is the warm-up) and the memory lines. ``median_ms`` / ``p90_ms`` are None unless the tool printed
    percentiles (it prints mean/std/min/max).
    """
    match = _TIMING.search(text)
    if not match:
        tail = [line for line in text.strip().splitlines() if line.strip()][-1:] or ["(no output)"]
        raise MobileKDError(f"benchmark_model output has no 'Inference timings in us' line; last line: {tail[0][:200]}")
    parsed = {}
    for part in match.group(1).split(","):
        if ":" in part:
            key, value = part.rsplit(":", 1)
            try:
                parsed[key.strip()] = float(value)
            except ValueError:
                pass
    out = {"init_ms": parsed.get("Init", 0) / 1e3 if "Init" in parsed else None,
           "first_ms": parsed["First inference"] / 1e3 if "First inference" in parsed else None,
           "warmup_mean_ms": parsed["Warmup (avg)"] / 1e3 if "Warmup (avg)" in parsed else None,
           "mean_ms": parsed["Inference (avg)"] / 1e3 if "Inference (avg)" in parsed else None,
           "median_ms": None, "p90_ms": None, "min_ms": None, "max_ms": None, "stdev_ms": None, "runs": None}
    counts = _COUNT.findall(text)
    if counts:
        runs, rest = counts[-1]
        values = {k: float(v) for k, v in _KV.findall(rest)}
        out["runs"] = int(runs)
        for key, name in (("min", "min_ms"), ("max", "max_ms"), ("std", "stdev_ms"), ("median", "median_ms"),
                          ("p50", "median_ms"), ("p90", "p90_ms")):
            if key in values:
                out[name] = values[key] / 1e3
        if out["mean_ms"] is None and "avg" in values:
            out["mean_ms"] = values["avg"] / 1e3
    replaced = _REPLACED.search(text)
    if replaced:  # the phone's own XNNPACK: which ops it takes can differ from the host's version
        out["delegated_nodes"], out["total_nodes"] = int(replaced.group(1)), int(replaced.group(2))
        out["delegate"], out["partitions"] = replaced.group(3), int(replaced.group(4))
    peak = re.search(r"Overall peak memory footprint \(MB\)[^:]*:\s*([0-9.]+)", text)
    out["peak_mem_mb"] = float(peak.group(1)) if peak else None
    delta = re.search(r"Memory footprint delta from the start of the tool \(MB\):\s*init=([0-9.]+)\s+overall=([0-9.]+)", text)
    if delta:
        out["mem_delta_init_mb"], out["mem_delta_overall_mb"] = float(delta.group(1)), float(delta.group(2))
    return out


def _adb(serial: str | None, *args: str, timeout: int = 600) -> str:
    command = ["adb"] + (["-s", serial] if serial else []) + list(args)
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        raise MobileKDError(f"adb timed out: {' '.join(command)}") from None
    if done.returncode != 0:
        raise MobileKDError(f"adb failed ({' '.join(command)}): {(done.stderr or done.stdout).strip()[:300]}")
    return done.stdout + done.stderr


def benchmark_adb(specs: list[str], threads: list[int], serial: str | None, runs: int, warmup: int,
                  binary: str | None = None, gpu: bool = False, remote_dir: str = "/data/local/tmp/mobilekd") -> dict:
    """Run TFLite's benchmark_model on an Android device for every .tflite in ``specs``."""
    if shutil.which("adb") is None:
        raise MobileKDError("adb not found on PATH: install Android platform-tools to use --adb")
    serial = serial or None
    device = {k: _adb(serial, "shell", "getprop", prop).strip() for k, prop in
              (("model", "ro.product.model"), ("board", "ro.board.platform"), ("abi", "ro.product.cpu.abi"),
               ("android", "ro.build.version.release"))}
    device["simd"] = simd_features(_adb(serial, "shell", "cat", "/proc/cpuinfo"), "phone")
    _adb(serial, "shell", "mkdir", "-p", remote_dir)
    remote_binary = f"{remote_dir}/benchmark_model"
    if binary:
        _adb(serial, "push", binary, remote_binary)
        _adb(serial, "shell", "chmod", "+x", remote_binary)
    result = {"format": RESULT_FORMAT, "kind": "latency", "machine": describe(),
              "android_device": {**device, "serial": serial},
              "settings": {"threads": threads, "runs": runs, "warmup": warmup, "adb": True, "gpu": gpu},
              "models": [], "results": [], "not_runnable": [], "errors": []}
    for spec in specs:
        path = Path(spec)
        if path.suffix.lower() != ".tflite" or not path.is_file():
            result["not_runnable"].append({"model": spec, "runtime": "benchmark_model",
                                           "reason": "--adb runs .tflite files only"})
            continue
        target = load_target(spec)
        result["models"].append({**target.describe(), **file_facts(target)})
        remote_model = f"{remote_dir}/{path.name}"
        _adb(serial, "push", str(path), remote_model)
        delegates = [("xnnpack", ["--use_xnnpack=true"])] + ([("gpu", ["--use_gpu=true"])] if gpu else [])
        for name, flags in delegates:
            for th in threads:
                text = _adb(serial, "shell", remote_binary, f"--graph={remote_model}", f"--num_threads={th}",
                            f"--num_runs={runs}", f"--warmup_runs={warmup}", *flags)
                try:
                    parsed = parse_benchmark_model_output(text)
                except MobileKDError as error:
                    result["errors"].append({"model": target.label, "runtime": f"benchmark_model-{name}",
                                             "threads": th, "error": str(error)})
                    continue
                result["results"].append({"model": target.label, "runtime": f"benchmark_model-{name}",
                                          "device": f"android:{device['model']}", "threads": th,
                                          "precision": target.precision, **parsed})
    result["precision_ratios"] = precision_ratios(result)
    return result


# --------------------------------------------------------------------------------------------------- CLI


def format_results(result: dict) -> str:
    fmt = lambda v, d=2: "-" if v is None else f"{v:.{d}f}"  # noqa: E731
    lines = ["| model | runtime | threads | median ms | p90 ms | min ms | stdev ms | floor ratio | peak MB |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in result["results"]:
        lines.append(f"| {r['model']} | {r['runtime']} | {r['threads']} | {fmt(r.get('median_ms') or r.get('mean_ms'), 3)} "
                     f"| {fmt(r.get('p90_ms'), 3)} | {fmt(r.get('min_ms'), 3)} | {fmt(r.get('stdev_ms'), 3)} "
                     f"| {fmt(r.get('floor_ratio'), 1)} | {fmt(r.get('peak_mem_mb'), 1)} |")
    for item in result["not_runnable"]:
        lines.append(f"\nnot runnable here: {item['model']} [{item['runtime']}]: {item['reason']}")
    for note in dict.fromkeys(r["floor_note"] for r in result["results"] if r.get("floor_note")):
        lines.append(f"\n{note}")
    lines += explain_lines(result)
    return "\n".join(lines)


def explain_lines(result: dict) -> list[str]:
    """The lines under the table that say why a quantized file is as fast as it is: XNNPACK delegation per
    ``.tflite`` file, the CPU's int8 dot-product instructions (host, and the phone with --adb), and the
    quantized/fp32 ratio of each file measured with its fp32 sibling."""
    lines = []
    for m in result["models"]:
        report = m.get("xnnpack")
        if report:
            lines.append(f"\nXNNPACK: {m['label']}: {report['error']}" if "error" in report
                         else "\nXNNPACK " + format_delegation(m["label"], report))
    for machine in (result.get("machine", {}).get("simd"), result.get("android_device", {}).get("simd")):
        if machine and machine.get("isa"):
            present = [name for name, has in machine["features"].items() if has]
            lines.append(f"\n{machine['where']} CPU ({machine['isa']}): {', '.join(present) or 'no listed SIMD'}; "
                         f"int8 dot product: {', '.join(machine['int8_dot']) or 'none'}")
    for r in result.get("precision_ratios", []):
        lines.append(f"\n{r['precision']}/fp32 [{r['where']}, {r['runtime']}, {r['threads']} thread(s)]: "
                     f"{r['model']} {r['ms']:.3f} ms / {r['fp32_model']} {r['fp32_ms']:.3f} ms = {r['ratio']:.2f}")
    return lines


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.latency", description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("models", nargs="+", metavar="MODEL",
                        help="checkpoint folder, model name (e.g. efficientnet_lite0), .onnx, .tflite or .mlpackage")
    parser.add_argument("--threads", default="1", help="comma-separated thread counts (default 1)")
    parser.add_argument("--runs", type=int, default=30, help="timed runs per runtime x threads (default 30)")
    parser.add_argument("--warmup", type=int, default=5, help="warm-up runs (default 5)")
    parser.add_argument("--size", type=int, nargs=2, metavar=("H", "W"),
                        help="input size for checkpoints (exported files keep their fixed shape)")
    parser.add_argument("--labels", help="comma-separated names for the models in the tables")
    parser.add_argument("--no-compile", dest="compile", action="store_false", help="skip torch.compile")
    parser.add_argument("--out", help="write the result JSON here")
    parser.add_argument("--adb", nargs="?", const="", metavar="SERIAL",
                        help="run TFLite benchmark_model on a connected Android device instead (optional serial)")
    parser.add_argument("--adb-binary", help="local benchmark_model binary to push (default: already on the device)")
    parser.add_argument("--adb-gpu", action="store_true", help="also run with --use_gpu=true")
    parser.add_argument("--quiet", action="store_true")
    return parser


@cli_entry
def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.out:
        check_writable_file(args.out)  # before the measurement, not after it
    if args.adb is not None:
        threads = [int(v) for v in args.threads.split(",")]
        result = benchmark_adb(args.models, threads, args.adb, args.runs, args.warmup, args.adb_binary, args.adb_gpu)
    else:
        if args.size and min(args.size) < 1:
            raise MobileKDError(f"--size H W must be positive pixel counts, got {args.size[0]} {args.size[1]}")
        if args.size and (args.size[0] != args.size[1]):
            raise MobileKDError("--size H W: mobilekd models take square inputs; give H == W")
        threads = parse_threads(args.threads)
        labels = args.labels.split(",") if args.labels else None
        result = benchmark(args.models, threads, args.runs, args.warmup, tuple(args.size) if args.size else None,
                           args.compile, labels, progress=not args.quiet)
    if not result["results"]:
        problems = [f"{e['model']}: {e['error']}" for e in result["errors"]]
        problems += [f"{e['model']} [{e['runtime']}]: {e['reason']}" for e in result["not_runnable"]]
        raise MobileKDError("nothing could be measured: " + "; ".join(problems or ["no runnable model"]))
    for e in result["errors"]:
        warn(f"{e['model']}{' [' + e['runtime'] + ']' if 'runtime' in e else ''}: {e['error']}")
    if args.out:
        write_result(args.out, result)
    print(format_results(result))
    load = result.get("load_average", {})
    print(f"\nload average before/after: {load.get('before')} / {load.get('after')} "
          f"({result['machine']['usable_cores']} usable cores)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
