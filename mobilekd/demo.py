"""``python -m mobilekd.demo`` (``make demo``): the whole path on real data that ships with mobilekd.

Data: Omniglot ``images_background_small1`` (bundled, 1.3 MB, MIT licence in ``assets/OMNIGLOT_LICENSE``):
136 handwritten characters x 20 drawings; the first 68 characters train, the other 68 are the retrieval
test set. Teacher: EfficientNet-Lite0 with real ImageNet weights (its pooled 1280-d features, no training),
at 128 px, embedding 4 views of every training image once (the teacher cache). Student: the shipped ImageNet
MobileNetV1-0.25 (``--student mobilenetv1_025 --pretrained``; its folded BatchNorm is unfolded from training
images before the first step), RECIPE_TBD.

Rows: the teacher; the student's zero-shot ImageNet features (the untrained student through the Trainer's own
evaluation: nothing is trained); the student fine-tuned alone with its metric loss; the student distilled.
All are evaluated leave-one-out on the test characters. Re-running resumes finished or interrupted runs
from ``runs/demo``. How the recipe was chosen: ``benchmarks/results/demo_recipe.md``.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import time
from pathlib import Path

from mobilekd.config import Config
from mobilekd.errors import cli_entry
from mobilekd.io import write_json
from mobilekd.metrics import format_table

BUNDLED_DATA = str(Path(__file__).parent / "assets" / "omniglot_images_background_small1.zip")

DEMO = dict(data=BUNDLED_DATA, student="mobilenetv1_025", pretrained=True, student_size=64, embed_dim=0,
            teacher="efficientnet_lite0", teacher_size=128, views=4, crop_scale=0.5, epochs=10,
            batch_classes=16, images_per_class=4, lr=5e-4, eval_every=10, seed=0, resume=True)
DISTILL_WEIGHTS = dict(metric_loss="none", kl_weight=1.0, kl_temperature=0.1)


def zero_shot_metrics(config: Config) -> dict:
    """Test metrics of ``config``'s student before any training: its pooled ImageNet features (a new head
    would be random) through the Trainer's own evaluation, so the protocol is the trained rows'. BatchNorm
    unfolding leaves the eval-mode function unchanged; nothing is trained or saved (the Trainer's folder lock on
    ``config.out`` is released again)."""
    from mobilekd.engine import Trainer
    from mobilekd.io import unlock_folder

    trainer = Trainer(dataclasses.replace(config, embed_dim=0, resume=False))
    try:
        return trainer.evaluate()["test"]
    finally:
        unlock_folder(trainer.out)


@cli_entry
def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m mobilekd.demo", description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default="runs/demo", help="run folder (re-running resumes)")
    parser.add_argument("--epochs", type=int, default=DEMO["epochs"])
    parser.add_argument("--threads", type=int, default=0, help="CPU threads (0: the cores idle at the start)")
    parser.add_argument("--no-progress", action="store_true")
    args = parser.parse_args(argv)
    started = time.time()
    common = {**DEMO, "epochs": args.epochs, "eval_every": min(DEMO["eval_every"], args.epochs),
              "threads": args.threads, "progress": not args.no_progress}
    from mobilekd.engine import train

    size = common["student_size"]
    alone_config = Config(**common, out=f"{args.out}/student_alone")
    print(f"[1/3] zero-shot: ImageNet {common['student']} @ {size} px, pooled features, no training", flush=True)
    zero_shot = zero_shot_metrics(alone_config)
    print(f"[2/3] student alone: fine-tuned with its metric loss only", flush=True)
    alone = train(alone_config)
    print(f"[3/3] distilled: teacher {common['teacher']} (ImageNet) {DISTILL_WEIGHTS}", flush=True)
    distilled = train(Config(**common, out=f"{args.out}/distilled", **DISTILL_WEIGHTS))

    rows = {"teacher EfficientNet-Lite0 (ImageNet, 128 px, 1280-d)": distilled["teacher"],
            f"student zero-shot (ImageNet MobileNetV1-0.25, {size} px, 256-d)": zero_shot,
            "student alone (same, fine-tuned: metric loss)": alone["test"],
            "distilled student (same, fine-tuned: KL to the teacher)": distilled["test"]}
    table = format_table(rows)
    minutes = (time.time() - started) / 60
    print(f"\nOmniglot small1, 68 unseen test characters (1360 images), leave-one-out retrieval:\n{table}")
    for name, base in (("zero-shot", zero_shot), ("alone", alone["test"])):
        print(f"distilled vs {name}: {distilled['test']['R@1'] - base['R@1']:+.2f} R@1, "
              f"{distilled['test']['MAP@R'] - base['MAP@R']:+.2f} MAP@R")
    print(f"({minutes:.1f} min)")
    write_json(Path(args.out) / "results.json",
               {"rows": rows, "r1_gain": distilled["test"]["R@1"] - alone["test"]["R@1"], "minutes": minutes})
    (Path(args.out) / "results.md").write_text(table + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
