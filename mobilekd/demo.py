"""``python -m mobilekd.demo`` (``make demo``): the whole path on real data that ships with mobilekd.

Data: Omniglot ``images_background_small1`` (bundled, 1.3 MB, MIT licence in ``assets/OMNIGLOT_LICENSE``):
136 handwritten characters x 20 drawings; the first 68 characters train, the other 68 are the retrieval
test set. Teacher: EfficientNet-Lite0 with real ImageNet weights (its pooled 1280-d features, no training),
at 128 px, embedding 2 views of every training image once (the teacher cache). Student: the shipped ImageNet
MobileNetV1-0.25 (``--student mobilenetv1_025 --pretrained``; its folded BatchNorm is unfolded from training
images before the first step) at 64 px, its pooled 256-d features as the embedding, lr 5e-4, 12 epochs.

Rows: the teacher; the student's zero-shot ImageNet features (the untrained student through the Trainer's own
evaluation: nothing is trained); the student fine-tuned alone with its metric loss (normalised softmax); the
student distilled: distance-distribution KL to the teacher (weight 1, tau 0.1) plus the metric loss at 0.1.
All are evaluated leave-one-out on the test characters. Re-running resumes finished or interrupted runs
from ``runs/demo`` (the zero-shot row is only evaluated again, in seconds).

The recipe is ``mobilekd/configs/demo.yaml`` (the distilled arm; the other arms drop its loss keys), read
here, so ``python -m mobilekd.distill --config demo`` trains exactly the demo's distilled student.

Each choice of the recipe (64 px, pooled features, lr 5e-4, KL + metric x 0.1, 2 views, 12 epochs) was measured
against its alternatives with ``python -m benchmarks.demo_recipe``: ``benchmarks/results/demo_recipe/``.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from mobilekd.config import PACKAGED_CONFIGS, Config, coerce
from mobilekd.errors import cli_entry
from mobilekd.io import write_json
from mobilekd.metrics import format_table

BUNDLED_DATA = str(Path(__file__).parent / "assets" / "omniglot_images_background_small1.zip")
RECIPE = PACKAGED_CONFIGS / "demo.yaml"  # the demo's recipe, in one place: its distilled arm


def load_recipe(path: str | Path = RECIPE) -> tuple[dict, dict]:
    """The demo's two arms from its recipe file: (run options, the distilled arm's loss keys). The student-alone
    arm is the run options alone (default losses: the metric loss only); its ``out`` is the demo's own. The
    recipe's ``data`` is relative to the folder holding the ``mobilekd`` package (the repository root)."""
    types = Config.key_types()
    keys = {key: coerce(key, value, types[key]) for key, value in Config.from_file(path).items()}
    loss_keys = {key.name for key in Config.keys() if key.loss}
    run = {key: value for key, value in keys.items() if key not in loss_keys and key != "out"}
    if not Path(run["data"]).is_absolute():
        run["data"] = str(Path(__file__).parent.parent / run["data"])
    return run, {key: value for key, value in keys.items() if key in loss_keys}


DEMO, DISTILL_WEIGHTS = load_recipe()


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
    from mobilekd.engine import evaluate_untrained, train

    size = common["student_size"]
    alone_config = Config(**common, out=f"{args.out}/student_alone")
    print(f"[1/3] zero-shot: ImageNet {common['student']} @ {size} px, pooled features, no training", flush=True)
    zero_shot = evaluate_untrained(alone_config)
    print("[2/3] student alone: fine-tuned with its metric loss only", flush=True)
    alone = train(alone_config)
    weighted = {key: value for key, value in DISTILL_WEIGHTS.items() if not (key.endswith("_weight") and value == 0)}
    print(f"[3/3] distilled: teacher {common['teacher']} (ImageNet) {weighted}", flush=True)
    distilled = train(Config(**common, out=f"{args.out}/distilled", **DISTILL_WEIGHTS))

    rows = {"teacher EfficientNet-Lite0 (ImageNet, 128 px, 1280-d)": distilled["teacher"],
            f"student zero-shot (ImageNet MobileNetV1-0.25, {size} px, 256-d)": zero_shot,
            "student alone (same, fine-tuned: metric loss)": alone["test"],
            "distilled student (same, fine-tuned: KL to the teacher + metric loss x 0.1)": distilled["test"]}
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
