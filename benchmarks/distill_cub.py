"""The seed's experiment on real data: which distillation method helps a MobileNet-0.25 most on CUB-100?

    python -m benchmarks.distill_cub --data ../shared/data/cub100-227 --out runs/cub-kd \\
        [--epochs 90] [--teacher efficientnet_lite2] [--teacher-size 224] [--arms alone,absolute,...]

Classes 0-49 train, 50-99 test (leave-one-out retrieval). Teacher: EfficientNet-Lite2 with ImageNet weights
(pooled 1280-d features). Every arm trains the same MobileNetV1-0.25 student (same seed, views, schedule):

  alone        metric loss only (normalised softmax)            absolute   + absolute teacher loss
  relative     + relative teacher loss                          rkd        + RKD distance and angle
  kl           + distance-distribution KL                       hint_at    + hint and attention (live teacher)
  semi         + absolute on unlabeled images (transductive: the test images *without labels*; see below)

The teacher targets of every cached arm come from one teacher-embedding cache (``OUT/teacher_cache``) of
``--views`` views per image. Arms resume after a kill (re-run the same command). The table (R@1/2/4/8, MAP@R
for the teacher and each arm, the fraction of the student->teacher R@1 gap closed) goes to
``benchmarks/results/distill_cub.md`` with the command and the machine.

The ``semi`` arm is transductive: the seed paper's extra unlabeled bird images are not available offline, so
it uses the unlabeled test images -- the only in-domain unlabeled birds here. It is reported separately
and is not comparable to inductive arms.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from benchmarks import comma_choices
from mobilekd.config import Config
from mobilekd.errors import MobileKDError, cli_entry
from mobilekd.io import write_json
from mobilekd.metrics import format_table

# Weights: the normalised-softmax metric loss has gradients tens of times larger than a teacher loss at
# weight 1 (measured on Omniglot, see mobilekd/demo.py), so the absolute and KL losses get weight 30 / 10.
ARMS = {
    "alone": {},
    "absolute": {"absolute_weight": 30.0},
    "relative": {"relative_weight": 0.3},
    "rkd": {"rkd_distance_weight": 1.0, "rkd_angle_weight": 2.0},
    "kl": {"kl_weight": 10.0},
    "hint_at": {"absolute_weight": 30.0, "hint_weight": 1.0, "attention_weight": 100.0},
    "semi": {"absolute_weight": 30.0, "unlabeled": "TEST_IMAGES"},
}


def arm_config(args, arm: str) -> Config:
    extra = dict(ARMS[arm])
    if extra.get("unlabeled") == "TEST_IMAGES":
        extra["unlabeled"] = str(Path(args.data) / "images")  # read as a plain folder of images, labels dropped
    uses_teacher = any(k.endswith("_weight") for k in extra)
    return Config(data=args.data, student="mobilenetv1_025", student_size=args.student_size, embed_dim=128,
                  teacher=args.teacher, teacher_size=args.teacher_size, views=args.views, crop_scale=0.35,
                  epochs=args.epochs, batch_classes=16, images_per_class=4, lr=2e-3, eval_every=args.eval_every,
                  seed=args.seed, threads=args.threads, device=args.device, resume=True, progress=not args.quiet,
                  out=str(Path(args.out) / arm),
                  teacher_cache=str(Path(args.out) / "teacher_cache") if uses_teacher and arm not in ("hint_at", "semi")
                  else None, **extra)


def finished_summary(config: Config) -> dict | None:
    """The metrics of an arm that already finished with these options (so adding an arm does not re-run or
    re-evaluate the others), else None."""
    from mobilekd.engine import RESUME_KEYS

    out = Path(config.out)
    try:
        summary = json.loads((out / "metrics.json").read_text())
        saved = json.loads((out / "config.json").read_text())
    except (OSError, ValueError):
        return None
    weights = [k for k in saved if k.endswith("_weight")]
    same = all(saved.get(k) == getattr(config, k) for k in (*RESUME_KEYS, *weights, "epochs", "lr", "crop_scale"))
    return summary if same and summary.get("epochs") == config.epochs else None


@cli_entry
def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.distill_cub", description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", default="../shared/data/cub100-227")
    parser.add_argument("--out", default="runs/cub-kd")
    parser.add_argument("--arms", default=",".join(ARMS))
    parser.add_argument("--epochs", type=int, default=90)
    parser.add_argument("--teacher", default="efficientnet_lite2")
    parser.add_argument("--teacher-size", type=int, default=224)
    parser.add_argument("--student-size", type=int, default=128)
    parser.add_argument("--views", type=int, default=4)
    parser.add_argument("--eval-every", type=int, default=10)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=0)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--results", default="benchmarks/results/distill_cub")
    parser.add_argument("--quiet", action="store_true")
    args = parser.parse_args(argv)
    arms = comma_choices(args.arms, ARMS, "arm")

    from benchmarks.machine import describe
    from mobilekd.cache import TeacherCache
    from mobilekd.data import ViewDataset, load_image_set
    from mobilekd.engine import train
    from mobilekd.teachers import resolve_teacher

    started = time.time()
    base = arm_config(args, "absolute")
    cache_dir = Path(base.teacher_cache)
    if any(arm_config(args, a).teacher_cache for a in arms):  # one teacher pass shared by the cached arms
        teacher = resolve_teacher(args.teacher, args.teacher_size, args.threads or None)
        images = load_image_set(args.data, "train")
        dataset = ViewDataset(images, {"teacher": teacher.preprocess}, base.view_sampler(), preload_side=base.preload,
                              progress=not args.quiet)
        TeacherCache.build(cache_dir, teacher, dataset, base.effective_views, base.data_identity("train"),
                           args.device, progress=not args.quiet)

    results, teacher_metrics = {}, None
    for arm in arms:
        config = arm_config(args, arm)
        summary = finished_summary(config)
        print(f"== {arm}" + (" (finished earlier: reusing its metrics.json)" if summary else ""), flush=True)
        summary = summary or train(config)
        results[arm] = summary["test"]
        teacher_metrics = teacher_metrics or summary.get("teacher")
    rows = {}
    if teacher_metrics:
        rows[f"teacher {args.teacher} (ImageNet, {args.teacher_size} px)"] = teacher_metrics
    rows.update({f"MobileNetV1-0.25 {arm}": metrics for arm, metrics in results.items()})
    lines = [format_table(rows)]
    if teacher_metrics and "alone" in results:
        gap = teacher_metrics["R@1"] - results["alone"]["R@1"]
        closed = {arm: (m["R@1"] - results["alone"]["R@1"]) / gap for arm, m in results.items() if arm != "alone"}
        lines.append("\nFraction of the student-alone -> teacher R@1 gap closed: " +
                     ", ".join(f"{arm} {100 * f:.1f}%" for arm, f in closed.items()))
    command = "python -m benchmarks.distill_cub " + " ".join(argv if argv is not None else sys.argv[1:])
    minutes = (time.time() - started) / 60
    report = (f"# Distillation on CUB-100 (classes 50-99 unseen)\n\nCommand: `{command}`\n\n"
              f"Wall time of this invocation: {minutes:.1f} min\n\n" + "\n".join(lines) + "\n")
    Path(args.results).parent.mkdir(parents=True, exist_ok=True)
    Path(args.results + ".md").write_text(report)
    write_json(args.results + ".json", {"command": command, "machine": describe(), "rows": rows,
                                        "args": vars(args)})
    print(report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
