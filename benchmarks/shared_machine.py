"""Training speed when another process takes part of the machine: thread counts x OpenMP wait policies.

    python -m benchmarks.shared_machine --threads 0,1,2 --wait-policies default,passive \\
        --out benchmarks/results/shared_machine/shared_machine

The workload is a distillation run on the bundled Omniglot data (MobileNetV1-0.25 at 32 px, absolute teacher
loss on a cached EfficientNet-Lite0 teacher: the demo's recipe before it moved to an ImageNet student), ``--epochs`` epochs in a fresh process per case; the teacher
cache is built once beforehand and reused, so a case times the student's training steps only (the
``seconds`` of each epoch in ``history.json``; the first epoch is dropped as warm-up). Each case runs on a
quiet machine and beside ``--busy N`` processes that spin (``while True: pass``), the situation of a
shared CI runner or a laptop with a browser open. ``--threads 0`` is mobilekd's default (idle cores at start,
``mobilekd.threads``); the wait policy is the ``OMP_WAIT_POLICY`` of the training process (``default``: unset).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchmarks import comma_choices, command_line, markdown_table, publish
from mobilekd.errors import MobileKDError, cli_entry

POLICIES = {"default": None, "passive": "PASSIVE", "active": "ACTIVE"}


def workload(out: Path, cache: Path, threads: int, epochs: int) -> list[str]:
    """The demo's first recipe (random-init MobileNetV1-0.25 at 32 px, absolute loss on a cached
    EfficientNet-Lite0 at 128 px), fixed here so the measurement does not move when the demo does."""
    from mobilekd.demo import BUNDLED_DATA

    return [sys.executable, "-m", "mobilekd.distill", "--data", BUNDLED_DATA, "--student", "mobilenetv1_025",
            "--student-size", "32", "--teacher", "efficientnet_lite0", "--teacher-size", "128", "--views", "4",
            "--crop-scale", "0.5", "--absolute-weight", "30", "--epochs", str(epochs),
            "--eval-every", str(epochs + 1), "--teacher-cache", str(cache), "--threads", str(threads),
            "--out", str(out), "--no-progress"]


def epoch_seconds(out: Path) -> list[float]:
    history = json.loads((out / "history.json").read_text())
    return [record["seconds"] for record in history]


def run_case(root: Path, cache: Path, threads: int, policy: str, busy: int, epochs: int) -> dict:
    env = dict(os.environ)
    env.pop("OMP_WAIT_POLICY", None)
    if POLICIES[policy]:
        env["OMP_WAIT_POLICY"] = POLICIES[policy]
    spinners = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(busy)]
    try:
        time.sleep(1.0 if busy else 0.0)  # let the spinners take their cores before the run samples idleness
        out = Path(tempfile.mkdtemp(dir=root))
        started = time.time()
        result = subprocess.run(workload(out, cache, threads, epochs), env=env, capture_output=True, text=True)
        wall = time.time() - started
    finally:
        for spinner in spinners:
            spinner.kill()
            spinner.wait()
    if result.returncode != 0:
        raise MobileKDError(f"workload failed ({threads} threads, {policy}, busy {busy}): "
                            f"{result.stderr.strip().splitlines()[-1:]}")
    seconds = epoch_seconds(out)[1:] or epoch_seconds(out)
    return {"threads": threads, "wait_policy": policy, "busy": busy, "epoch_s_median": round(statistics.median(seconds), 2),
            "epoch_s": seconds, "wall_s": round(wall, 1)}


@cli_entry
def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.shared_machine", description=__doc__.split("\n\n")[0])
    parser.add_argument("--threads", default="0,1,2", help="comma list; 0 = mobilekd's default (idle cores)")
    parser.add_argument("--wait-policies", default="default,passive")
    parser.add_argument("--busy", type=int, default=1, help="spinning processes beside the run (besides quiet)")
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--out", help="write OUT.json and OUT.md")
    args = parser.parse_args(argv)
    policies = comma_choices(args.wait_policies, POLICIES, "wait policy")
    try:
        threads = [int(t) for t in args.threads.split(",")]
    except ValueError:
        raise MobileKDError("--threads takes comma-separated integers") from None
    if min(threads) < 0 or args.busy < 1 or args.epochs < 2:
        raise MobileKDError("--threads must be >= 0, --busy >= 1, --epochs >= 2")

    from benchmarks.machine import describe

    rows = []
    with tempfile.TemporaryDirectory(prefix="mobilekd-shared-") as tmp:
        root = Path(tmp)
        cache = root / "teacher_cache"
        print("building the teacher cache once ...", file=sys.stderr, flush=True)
        build = workload(root / "cache-run", cache, 0, 1)
        build[build.index("mobilekd.distill")] = "mobilekd.embed"
        result = subprocess.run(build, capture_output=True, text=True)
        if result.returncode != 0:
            raise MobileKDError(f"teacher cache build failed: {result.stderr.strip().splitlines()[-1:]}")
        for busy in (0, args.busy):
            for policy in policies:
                for count in threads:
                    row = run_case(root, cache, count, policy, busy, args.epochs)
                    rows.append(row)
                    print(json.dumps(row), file=sys.stderr, flush=True)
    quiet_best = min(r["epoch_s_median"] for r in rows if r["busy"] == 0)
    command = command_line("benchmarks.shared_machine", argv)
    table = markdown_table(
        ["busy processes", "OMP_WAIT_POLICY", "--threads", "s/epoch (median)", "vs best quiet"],
        [[row["busy"], row["wait_policy"], "0 (auto)" if row["threads"] == 0 else row["threads"],
          row["epoch_s_median"], f"{row['epoch_s_median'] / quiet_best:.2f}x"] for row in rows])
    report = "\n".join(["# Student training beside busy processes (demo workload, s per epoch)", "",
                        f"Command: `{command}`", "", *table]) + "\n"
    publish(args.out, report, {"command": command, "machine": describe(), "args": vars(args), "rows": rows})
    return 0


if __name__ == "__main__":
    sys.exit(main())
