"""Steps per second of distillation with the teacher-embedding cache vs the teacher in the loop.

    python -m benchmarks.cache_speed --data DATA [--teacher efficientnet_lite0 --teacher-size 128]
        [--student-size 32] [--steps 20] [--threads N] [--out benchmarks/results/cache_speed/cache_speed.json]

Same data, student, batches and losses; the only difference is where the teacher targets come from:
``--views 4`` reads them from a prebuilt cache (its build time is reported separately, once per data set and
teacher), ``--views 0`` runs the teacher on every batch. Timing covers the training steps only, after one
warm-up step, measured in one run so machine load affects both alike.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

from benchmarks import write_result
from mobilekd.config import Config
from mobilekd.errors import cli_entry


def steps_per_second(config: Config, steps: int) -> tuple[float, float]:
    """(steps per second over ``steps`` training steps, seconds the set-up took)."""
    from mobilekd.engine import Trainer

    started = time.perf_counter()
    trainer = Trainer(config)
    setup = time.perf_counter() - started
    batches = trainer._epoch_batches()
    domain, batch = next(batches)
    trainer.train_step(domain, batch)  # warm-up
    done, started = 0, time.perf_counter()
    while done < steps:
        try:
            domain, batch = next(batches)
        except StopIteration:
            batches = trainer._epoch_batches()
            continue
        trainer.train_step(domain, batch)
        done += 1
    return done / (time.perf_counter() - started), setup


@cli_entry
def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.cache_speed", description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", required=True)
    parser.add_argument("--teacher", default="efficientnet_lite0")
    parser.add_argument("--teacher-size", type=int, default=128)
    parser.add_argument("--student-size", type=int, default=32)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--views", type=int, default=4)
    parser.add_argument("--threads", type=int, default=0)
    parser.add_argument("--out", default="benchmarks/results/cache_speed/cache_speed.json")
    args = parser.parse_args(argv)
    from benchmarks.machine import describe

    with tempfile.TemporaryDirectory() as tmp:
        base = dict(data=args.data, teacher=args.teacher, teacher_size=args.teacher_size,
                    student_size=args.student_size, absolute_weight=30.0, epochs=1, progress=False,
                    threads=args.threads, crop_scale=0.5)
        cached, cache_build = steps_per_second(Config(**base, views=args.views, out=f"{tmp}/cached"), args.steps)
        live, _ = steps_per_second(Config(**base, views=0, out=f"{tmp}/live"), args.steps)
    result = {"command": "python -m benchmarks.cache_speed " + " ".join(argv if argv is not None else sys.argv[1:]),
              "machine": describe(), "steps": args.steps, "steps_per_s_cached": cached,
              "steps_per_s_live_teacher": live, "speedup": cached / live,
              "cache_build_and_setup_s": cache_build, "views": args.views}
    write_result(Path(args.out), result)
    print(f"cached teacher: {cached:.2f} steps/s | teacher in the loop: {live:.2f} steps/s | "
          f"speed-up {cached / live:.1f}x (cache built once in {cache_build:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
