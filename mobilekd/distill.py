"""``python -m mobilekd.distill``: distil a teacher into a small student.

Example (CUB-100, MobileNetV1-0.25 student, EfficientNet-Lite0 ImageNet teacher, 8 cached teacher views):

    python -m mobilekd.distill --data ../shared/data/cub100-227 --student mobilenetv1_025 \\
        --teacher efficientnet_lite0 --absolute-weight 1 --relative-weight 0.3 --epochs 90 --out runs/cub

The total loss is the sum of weight x loss over every registered loss (``mobilekd.losses``): ``--help`` lists
each one's ``--NAME-weight`` flag and options. The defaults are ``Config``'s, the same for the command line,
YAML files and the Python API: the metric loss at weight 1, every teacher loss at 0 (a distillation run names
the teacher losses it trains). The run prints the active losses and their weights when it starts.
"""

from __future__ import annotations

import sys

from mobilekd.config import Config
from mobilekd.errors import cli_entry
from mobilekd.losses import loss_specs
from mobilekd.metrics import format_table


def description() -> str:
    """The --help description, its loss formula generated from the loss registry (so it names every loss)."""
    total = " + ".join(f"{spec.weight_key}*{spec.name}" for spec in loss_specs())
    return ("Distil a teacher (name, checkpoint, ONNX file or precomputed embeddings) into a student. "
            f"Total loss = {total}.")


def summary_table(summary: dict, student_name: str) -> str:
    """The run's final table: teacher, the student before training (when it started from weights) and after,
    student queries against the teacher's gallery; a last line when training made the student worse."""
    rows = {}
    if summary.get("teacher"):
        rows["teacher"] = summary["teacher"]
    if summary.get("untrained"):
        rows[f"{student_name} before training"] = summary["untrained"]
    if summary.get("test"):
        rows[student_name] = summary["test"]
    if summary.get("student_to_teacher"):
        rows[f"{student_name} queries -> teacher gallery"] = summary["student_to_teacher"]
    table = format_table(rows)
    if summary.get("below_untrained"):
        table += (f"\nWARNING: the trained {student_name} is below the one it started from (R@1 "
                  f"{summary['test']['R@1']:.2f} < {summary['untrained']['R@1']:.2f}): do not ship this checkpoint")
    return table


@cli_entry
def main(argv=None) -> int:
    config = Config.from_args(argv, "python -m mobilekd.distill", description(),
                              overrides={"out": "runs/distill"})
    from mobilekd.engine import train

    summary = train(config)
    print(summary_table(summary, "student"))
    print(f"checkpoint: {config.out}/model.safetensors (+ model.json)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
