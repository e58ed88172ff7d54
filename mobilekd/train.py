"""``python -m mobilekd.train``: metric-learning fine-tuning of a model (e.g. a teacher) on the train classes.

Uses pytorch-metric-learning's losses and miners (``--metric-loss triplet | multi_similarity | proxy_anchor |
normalized_softmax``). Example, fine-tune the EfficientNet-Lite0 ImageNet teacher on CUB-100:

    python -m mobilekd.train --data ../shared/data/cub100-227 --model efficientnet_lite0 --pretrained \\
        --embed-dim 512 --metric-loss multi_similarity --lr 1e-4 --epochs 20 --out runs/teacher-cub
"""

from __future__ import annotations

import sys

from mobilekd.config import Config
from mobilekd.distill import summary_table
from mobilekd.errors import cli_entry


@cli_entry
def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    argv = ["--student" if a == "--model" else a for a in argv]  # --model reads better for fine-tuning
    config = Config.from_args(argv, "python -m mobilekd.train",
                              "Metric-learning training of one model on the train classes (--model NAME).",
                              overrides={"teacher": None, "out": "runs/train"})
    from mobilekd.engine import train

    summary = train(config)
    print(summary_table(summary, config.student))
    print(f"checkpoint: {config.out}/model.safetensors (+ model.json)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
