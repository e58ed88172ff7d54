"""``python -m mobilekd.evaluate``: retrieval metrics of a model on a data set's test split, without training.

MODEL is a mobilekd checkpoint folder, a model name (``mobilenetv1_025 --pretrained``: its pooled ImageNet
features, the zero-shot arm of a distillation), or an exported ``.onnx`` / ``.tflite`` file (run by
``mobilekd.runtime``). The metrics are the training runs' own (R@1/2/4/8 and MAP@R, leave-one-out on the
test classes of ``--data``), printed as the table ``mobilekd.distill`` prints:

    python -m mobilekd.evaluate runs/cub --data ../shared/data/cub100-227 --out metrics.json
    python -m mobilekd.evaluate mobilenetv1_025 --pretrained --size 128 --data ../shared/data/cub100-227
    python -m mobilekd.evaluate runs/cub/export/tflite-int8/model.tflite --data ../shared/data/cub100-227
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

from mobilekd.config import Config
from mobilekd.errors import MobileKDError, cli_entry
from mobilekd.io import check_writable_dir, write_json
from mobilekd.metrics import format_table
from mobilekd.runtime.file_embedder import BLACK_BOX_SUFFIXES


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m mobilekd.evaluate", description=__doc__.split("\n\n")[0])
    p.add_argument("model", help="checkpoint folder, model name, or exported .onnx / .tflite file")
    p.add_argument("--data", required=True, help="data set whose test split is evaluated (see docs/data.md)")
    p.add_argument("--pretrained", action="store_true", help="a model name: its ImageNet weights")
    p.add_argument("--size", type=int, help="input resolution (default: the checkpoint's or the model's own)")
    p.add_argument("--layout", default="auto", help="data layout: auto | folder | cub | cars | sop | zip")
    p.add_argument("--train-fraction", type=float, default=0.5, help="first fraction of the classes trains")
    p.add_argument("--preload", type=int, default=320, help="decode the test images, longer side capped (0: off)")
    p.add_argument("--seed", type=int, default=0, help="seed of a folded-BatchNorm model's unfolding")
    p.add_argument("--threads", type=int, default=0, help="CPU threads (0: the cores idle at the start)")
    p.add_argument("--device", default="cpu", help="cpu | cuda | cuda:N")
    p.add_argument("--out", help="write the metrics to this JSON file")
    p.add_argument("--no-progress", action="store_true")
    return p


def evaluate(args: argparse.Namespace, work: str) -> dict:
    """The test metrics of ``args.model``; ``work`` is a scratch folder (data reports, the folder lock)."""
    from mobilekd.engine import evaluate_embedder, evaluate_untrained
    from mobilekd.models.checkpoint import is_checkpoint, load_model

    if args.size is not None and args.size < 1:
        raise MobileKDError("--size must be >= 1")
    path = Path(args.model)
    is_file = path.suffix.lower() in BLACK_BOX_SUFFIXES
    if is_file and not path.is_file():
        raise MobileKDError(f"model file not found: {path}")
    size = args.size or (load_model(path).preprocess.size if path.exists() and is_checkpoint(path) else None)
    values = dict(data=args.data, layout=args.layout, train_fraction=args.train_fraction, preload=args.preload,
                  seed=args.seed, threads=args.threads, device=args.device, progress=not args.no_progress,
                  teacher=None, out=work, **({"student_size": size} if size else {}))
    if is_file:
        from mobilekd.runtime.file_embedder import FileEmbedder
        from mobilekd.threads import set_threads

        return evaluate_embedder(FileEmbedder(path, set_threads(args.threads)), Config(**values))
    return evaluate_untrained(Config(student=args.model, pretrained=args.pretrained, **values))


@cli_entry
def main(argv=None) -> int:
    args = parser().parse_args(argv)
    if args.out:
        check_writable_dir(Path(args.out).parent or ".", "--out")
    with tempfile.TemporaryDirectory(prefix="mobilekd-evaluate-") as work:
        metrics = evaluate(args, work)
    print(format_table({args.model: metrics}))
    if args.out:
        write_json(args.out, {"model": args.model, "data": args.data, "test": metrics})
        print(f"metrics: {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
