"""``python -m mobilekd.distill``: distil a teacher into a small student.

Example (CUB-100, MobileNetV1-0.25 student, EfficientNet-Lite0 ImageNet teacher, 8 cached teacher views):

    python -m mobilekd.distill --data ../shared/data/cub100-227 --student mobilenetv1_025 \\
        --teacher efficientnet_lite0 --absolute-weight 1 --relative-weight 0.3 --epochs 90 --out runs/cub
"""

from __future__ import annotations

import sys

from mobilekd.config import Config
from mobilekd.errors import cli_entry
from mobilekd.metrics import format_table

DESCRIPTION = ("Distil a teacher (name, checkpoint, ONNX file or precomputed embeddings) into a student. "
               "Total loss = metric_weight*metric + absolute_weight*absolute + relative_weight*relative.")


def summary_table(summary: dict, student_name: str) -> str:
    rows = {}
    if summary.get("teacher"):
        rows["teacher"] = summary["teacher"]
    if summary.get("test"):
        rows[student_name] = summary["test"]
    if summary.get("student_to_teacher"):
        rows[f"{student_name} queries -> teacher gallery"] = summary["student_to_teacher"]
    return format_table(rows)


@cli_entry
def main(argv=None) -> int:
    config = Config.from_args(argv, "python -m mobilekd.distill", DESCRIPTION,
                              overrides={"absolute_weight": 1.0, "out": "runs/distill"})
    from mobilekd.engine import train

    summary = train(config)
    print(summary_table(summary, "student"))
    print(f"checkpoint: {config.out}/model.safetensors (+ model.json)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
